"""`make install` into a DESTDIR: the virtual environment runs from where it will live, the unit verifies and
is hardened, nothing a user changed is overwritten, `make uninstall` removes what install added."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import IN_CI, ROOT

from pylogd import compiled
from pylogd.manpage import roff
from pylogd.registry import Registry


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        if IN_CI:
            pytest.fail(f"CI=true but {tool} is missing", pytrace=False)
        pytest.skip(f"needs {tool}")


@pytest.fixture(scope="module")
def dest(tmp_path_factory) -> Path:
    need("make")
    dest = tmp_path_factory.mktemp("dest")
    (dest / "etc").mkdir()
    (dest / "etc/pylogd.conf").write_text("# the operator's own config\n")
    # the install compiles the hot modules as a user's does in the compiled run of the suite; the
    # pure-Python run installs without them (the same compile twice would add minutes to CI)
    env = {**os.environ, "PYLOGD_NO_EXTENSIONS": "1"} if compiled.pure_requested() else None
    done = subprocess.run(
        ["make", "-C", str(ROOT), "install", f"DESTDIR={dest}"], capture_output=True, text=True, timeout=900, env=env
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return dest


def test_the_installed_build_is_the_one_asked_for(dest: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    version = subprocess.run(
        [str(dest / "opt/pylogd/bin/python"), "-m", "pylogd", "-V"],
        cwd=dest,  # not the source tree
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert version.returncode == 0, version.stderr
    if compiled.pure_requested():
        assert "pure Python: no compiled modules installed" in version.stdout
    else:
        assert f"compiled: all {len(compiled.HOT_MODULES)} hot modules" in version.stdout


def test_the_environment_runs_and_names_its_final_place(dest: Path) -> None:
    venv = dest / "opt/pylogd"
    assert (dest / "usr/sbin/pylogd").is_symlink() and os.readlink(dest / "usr/sbin/pylogd") == "/opt/pylogd/bin/pylogd"
    assert (venv / "bin/pylogd").read_text().splitlines()[0] == "#!/opt/pylogd/bin/python3"
    assert str(dest) not in (venv / "pyvenv.cfg").read_text()
    conf = ROOT / "etc/pylogd.conf"
    out = subprocess.run(
        [str(venv / "bin/python"), "-m", "pylogd", "--check", "-c", str(conf)],
        cwd=dest,  # not the source tree: the installed package must be complete
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "configuration OK" in out.stdout, out.stderr
    for module in ("psycopg", "pymysql", "pylogd.plugins.outputs.json"):
        subprocess.run([str(venv / "bin/python"), "-c", f"import {module}"], cwd=dest, check=True, timeout=60)


def test_an_existing_config_is_kept_and_the_rest_is_in_place(dest: Path) -> None:
    assert (dest / "etc/pylogd.conf").read_text() == "# the operator's own config\n"
    assert (dest / "etc/logrotate.d/pylogd").read_text() == (ROOT / "etc/logrotate.d/pylogd").read_text()
    assert "u pylogd " in (dest / "usr/lib/sysusers.d/pylogd.conf").read_text()
    unit = (dest / "lib/systemd/system/pylogd.service").read_text()
    assert "ExecStart=/usr/sbin/pylogd -c /etc/pylogd.conf" in unit and "@SBINDIR@" not in unit
    assert "ExecReload=/usr/sbin/pylogd reload" in unit  # the config read again, its failure reported


def test_the_unit_verifies_and_is_hardened(dest: Path, tmp_path: Path) -> None:
    need("systemd-analyze")
    unit = (dest / "lib/systemd/system/pylogd.service").read_text()
    local = tmp_path / "pylogd.service"  # the same unit, its commands where DESTDIR put the program
    local.write_text(unit.replace("=/usr/sbin/pylogd ", f"={dest}/opt/pylogd/bin/pylogd "))
    # Documentation= names man pages: man finds them where DESTDIR put them
    env = os.environ | {"MANPATH": str(dest / "usr/share/man")}
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60, env=env
    )
    # verify also loads the machine's other units: what it says of them (a package's obsolete setting) is theirs
    ours = [line for line in verify.stderr.splitlines() if "pylogd" in line or not line.startswith("/")]
    assert verify.returncode == 0 and not [line for line in ours if line.strip()], verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(local)], capture_output=True, text=True, timeout=60
    )
    score = float(re.search(r"Overall exposure level for pylogd.service: ([\d.]+)", security.stdout).group(1))
    assert score <= 2.5, security.stdout[-3000:]


def test_uninstall_removes_what_install_added(dest: Path, tmp_path: Path) -> None:
    copy = tmp_path / "dest"
    shutil.copytree(dest, copy, symlinks=True)
    done = subprocess.run(
        ["make", "-C", str(ROOT), "uninstall", f"DESTDIR={copy}"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    left = sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file() or p.is_symlink())
    assert left == ["etc/pylogd.conf"]


def test_man_pages_are_made_from_the_specs_and_render_cleanly(dest: Path) -> None:
    need("groff")
    page5 = dest / "usr/share/man/man5/pylogd.conf.5"
    for page in (dest / "usr/share/man/man8/pylogd.8", page5):
        out = subprocess.run(
            ["groff", "-man", "-Tutf8", "-ww", "-z", str(page)],
            capture_output=True,
            text=True,
            timeout=60,
            env=os.environ | {"LC_ALL": "C.UTF-8"},
        )
        assert out.returncode == 0 and not out.stderr, out.stderr
    text = page5.read_text()
    for name, cls in Registry().builtins().items():
        assert f".SS {name}\n" in text
        for option in cls.spec.options:
            assert "\\fB" + roff(option.name) + "\\fR=" in text, (name, option.name)


MDWE = """
import ctypes, os, sys
# what MemoryDenyWriteExecute=yes asks of the kernel (prctl PR_SET_MDWE, Linux 6.3+)
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(f"PR_SET_MDWE: errno {ctypes.get_errno()}")
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_the_daemon_runs_without_writable_executable_memory(tmp_path: Path, netns) -> None:
    """The unit sets MemoryDenyWriteExecute=yes: pylogd (ctypes, generated decoders) must run under it."""
    import sys

    from rig import pylogd_command, read_text, wait_for

    release = tuple(int(n) for n in re.findall(r"\d+", os.uname().release)[:2])
    if release < (6, 3) and not IN_CI:
        pytest.skip("PR_SET_MDWE needs Linux 6.3")
    conf, log = tmp_path / "pylogd.conf", tmp_path / "pylogd.log"
    conf.write_text(
        f'[global]\nlogfile="{log}"\nloglevel=3\n'
        "stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU\n"
        "stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,mac2str1:HWHDR,json1:JSON\n"
        f"stack=ct1:NFCT,ip2str2:IP2STR,print2:PRINTFLOW,emu2:LOGEMU\n[log1]\ngroup=0\n[ct1]\nhash_enable=0\n"
        f'[emu1]\nfile="{tmp_path}/packets.log"\n[emu2]\nfile="{tmp_path}/flows.log"\n[json1]\nfile="{tmp_path}/p.json"\n'
    )
    proc = netns.spawn([sys.executable, "-c", MDWE, *pylogd_command(), "-c", str(conf)], name="pylogd")
    wait_for(lambda: "entering main loop" in read_text(log) or not proc.alive(), what="start-up")
    assert proc.alive(), read_text(log) + proc.output()
    netns.nft("table inet t {\n chain i {\n  type filter hook input priority 0;\n  ct state new log group 0\n }\n}\n")
    netns.send_udp("127.0.0.1", 9, count=3)
    wait_for(lambda: len(read_text(tmp_path / "p.json").splitlines()) == 3, what="JSON lines")
    wait_for(lambda: "[NEW]" in read_text(tmp_path / "flows.log"), what="a flow line")
    assert len(read_text(tmp_path / "packets.log").splitlines()) == 3
    assert proc.stop() == 0


def test_make_run_says_it_is_compiling_before_the_silent_minutes() -> None:
    """`make run` compiled for two minutes without a word: it says so first (make -n shows the recipe)."""
    need("make")
    shown = subprocess.run(["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    says = shown.find("echo \"compiling pylogd's hot modules with Cython: a few minutes the first time")
    assert 0 <= says < shown.index("setup.py -q build_ext --inplace") < shown.index("pylogd -c"), shown
