"""The optional compiled build: the hot modules compiled from their source, pure Python when asked or
when no compiler is there.  `make test` runs the whole suite on both builds; this file checks that each
run really is the build it claims to be, and that a failed compile never fails an install."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import IN_CI, PYLOGD, ROOT

from pylogd import compiled

IMPORT_ALL = "import importlib, sys\nfor name in sys.argv[1:]:\n    print(importlib.import_module(name).__file__)"


def imported_files(env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, *compiled.HOT_MODULES],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.split()


def test_pure_python_is_used_when_asked_even_with_compiled_modules_installed():
    env = {**os.environ, compiled.PURE_ENV: "1"}
    files = imported_files(env)
    assert len(files) == len(compiled.HOT_MODULES)
    assert all(f.endswith(".py") for f in files), files
    version = subprocess.run([*PYLOGD, "-V"], env=env, capture_output=True, text=True, check=True, timeout=60)
    assert "pure Python: PYLOGD_PURE_PYTHON is set" in version.stdout


def test_every_hot_module_is_compiled_in_the_compiled_run():
    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    files = imported_files(env)
    built = [f for f in files if not f.endswith(".py")]
    if not built and not IN_CI:
        pytest.skip("no compiled modules here (no C compiler?): `make compiled` builds them")
    assert built == files, f"not compiled: {[f for f in files if f.endswith('.py')]}"
    version = subprocess.run([*PYLOGD, "-V"], env=env, capture_output=True, text=True, check=True, timeout=60)
    assert f"compiled: all {len(compiled.HOT_MODULES)} hot modules" in version.stdout
    # the plugins are found in compiled modules too (their classes name the installed module)
    listed = subprocess.run([*PYLOGD, "-i", "BASE"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "Name: BASE" in listed.stdout, listed.stderr


def source_copy(dest: Path) -> Path:
    """A copy of the source tree without what earlier builds left (in-place modules, build/)."""
    shutil.copytree(
        ROOT,
        dest,
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.so", "*.egg-info", "__pycache__", ".*cache"),
    )
    return dest


def test_a_failing_compiler_leaves_a_pure_python_wheel(tmp_path: Path):
    pytest.importorskip("Cython", reason="the dev extras install Cython")
    source = source_copy(tmp_path / "src")
    env = {**os.environ, "CC": "false", "LDSHARED": "false"}
    env.pop("PYLOGD_NO_EXTENSIONS", None)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-v",
            "-w",
            str(tmp_path),
            str(source),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("pylogd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith(".so")], names
    assert all(f"{path.replace('plugins/', 'pylogd/plugins/')}" in names for path in compiled.HOT_MODULES.values())
    assert "not compiled" in build.stdout + build.stderr and "runs as pure Python" in build.stdout + build.stderr


# ---------------------------------------------------------------------------------------------
# issue 20: the build dependencies are pinned to the range that is tested, and both ends are built


def build_requires() -> dict[str, str]:
    """pyproject.toml's [build-system] requires: project name -> its requirement."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        requires = tomllib.load(f)["build-system"]["requires"]
    return {project(r).lower(): r for r in requires}


def project(requirement: str) -> str:
    return re.match(r"[\w.-]+", requirement).group()  # type: ignore[union-attr]


def range_ends(requirement: str) -> tuple[str, str]:
    """The oldest (>=) and the newest (<=) version a requirement allows."""
    (oldest,) = re.findall(r">=\s*([\w.]+)", requirement)
    (newest,) = re.findall(r"<=\s*([\w.]+)", requirement)
    return oldest, newest


def test_every_build_dependency_is_pinned_to_both_ends_of_the_range_tested():
    requires = build_requires()
    assert set(requires) >= {"cython", "setuptools"}, requires
    with open(ROOT / "pyproject.toml", "rb") as f:
        dev = tomllib.load(f)["project"]["optional-dependencies"]["dev"]
    for requirement in requires.values():
        oldest, newest = range_ends(requirement)
        assert [int(n) for n in oldest.split(".")] <= [int(n) for n in newest.split(".")], requirement
        # the dev environment (.venv) may hold only what a build may use
        assert requirement in dev, f"the dev extras must state {requirement} as [build-system] does"
    # 3.3.0 types dict.get() from an annotation and miscompiles it (None taken as a str)
    assert "!=3.3.0" in requires["cython"].replace(" ", "")
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    # `make compiled` (the suite's build) takes the newest, `make test-build-oldest` the oldest
    for target, end in (("compiled", 1), ("test-build-oldest", 0)):
        plan = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
        for requirement in requires.values():
            pin = f"{project(requirement)}=={range_ends(requirement)[end]}"
            assert pin in plan.stdout, f"make {target} does not install {pin}:\n{plan.stdout}"


def test_every_dependency_is_pinned_to_the_range_tested_and_its_oldest_end_is_installed_by_test_build_oldest():
    from packaging.version import Version

    with open(ROOT / "pyproject.toml", "rb") as f:
        project_table = tomllib.load(f)["project"]
    extras = project_table["optional-dependencies"].values()
    requires = project_table["dependencies"] + [requirement for extra in extras for requirement in extra]
    named: dict[str, str] = {}
    for requirement in requires:
        # one project, one range (the dev extras repeat the runtime extras)
        assert named.setdefault(project(requirement).lower(), requirement) == requirement, requirement
    assert set(named) >= {"pyyaml", "psycopg", "pymysql", "systemd-python", "pytest", "hypothesis", "scapy", "pyroute2"}
    ranges = {name: r for name, r in named.items() if "==" not in r}  # ruff is pinned to one version
    for requirement in ranges.values():
        oldest, newest = range_ends(requirement)
        assert Version(oldest) <= Version(newest), requirement
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    plan = subprocess.run(
        ["make", "-n", "test-build-oldest"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    pkg_config = shutil.which("pkg-config")
    builds_systemd = pkg_config and subprocess.run([pkg_config, "--exists", "libsystemd"], timeout=60).returncode == 0
    for name, requirement in ranges.items():
        if name in build_requires() or (name == "systemd-python" and not builds_systemd):
            continue  # the build dependencies: the test above
        with_extras = re.match(r"[\w.\[\]-]+", requirement).group()  # type: ignore[union-attr]
        pin = f"{with_extras}=={range_ends(requirement)[0]}"
        assert pin in plan.stdout, f"make test-build-oldest does not install {pin}:\n{plan.stdout}"


def test_the_installed_cython_is_in_the_range_tested():
    cython = pytest.importorskip("Cython", reason="the dev extras install Cython")
    from packaging.requirements import Requirement

    requirement = Requirement(build_requires()["cython"])
    assert requirement.specifier.contains(cython.__version__), f"Cython {cython.__version__}, not {requirement}"


def fake_cython(where: Path, version: str) -> Path:
    """A Cython package that only says its version and that it was asked to compile."""
    (where / "Cython" / "Build").mkdir(parents=True)
    (where / "Cython" / "__init__.py").write_text(f"__version__ = {version!r}\n")
    (where / "Cython" / "Build" / "__init__.py").write_text(
        "def cythonize(modules, **options):\n    print('cythonize: asked to compile')\n    return []\n"
    )
    return where


def versions_around_the_range() -> list[tuple[str, bool]]:
    oldest, newest = range_ends(build_requires()["cython"])
    major, minor, patch = (int(n) for n in newest.split("."))
    return [
        ("3.0.0", False),
        ("3.3.0", False),
        (f"{major}.{minor}.{patch + 1}", False),
        (f"{major}.{minor + 1}.0b1", False),
        (oldest, True),
        (newest, True),
    ]


@pytest.mark.parametrize(("version", "allowed"), versions_around_the_range())
def test_setup_compiles_nothing_with_a_cython_outside_the_range_tested(tmp_path: Path, version: str, allowed: bool):
    source = source_copy(tmp_path / "src")
    env = {**os.environ, "PYTHONPATH": str(fake_cython(tmp_path / "fake", version))}
    env.pop("PYLOGD_NO_EXTENSIONS", None)
    build = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr
    refused = f"pylogd: Cython {version} is outside the tested range"
    if allowed:
        assert "cythonize: asked to compile" in build.stdout and refused not in build.stderr, build.stderr
    else:
        assert "cythonize: asked to compile" not in build.stdout, build.stdout
        assert refused in build.stderr and "installing the pure-Python modules only" in build.stderr
