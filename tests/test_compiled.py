"""The optional compiled build: the hot modules compiled from their source, pure Python when asked or
when no compiler is there.  `make test` runs the whole suite on both builds; this file checks that each
run really is the build it claims to be, and that a failed compile never fails an install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


def test_a_failing_compiler_leaves_a_pure_python_wheel(tmp_path: Path):
    pytest.importorskip("Cython", reason="the dev extras install Cython")
    # a copy without what earlier builds left (in-place modules, build/)
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.so", "*.egg-info", "__pycache__", ".*cache"),
    )
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
