"""Paths the config and the command line name: a relative one is resolved once, at start, against the
directory pylogd was started in, so that it names the same file after ``-d`` moves the daemon to /."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import PYLOGD, TEST_PLUGINS
from daemonkit import read, wait_for

from pylogd.config import ConfigError, Entry, Loc, typed_value
from pylogd.plugin import path_option


def test_a_relative_path_option_is_made_absolute_against_the_working_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    opt = path_option("file", None, "a file", not_paths=("syslog",))

    def typed(text: str) -> str:
        return typed_value(opt, Entry("file", text, Loc("x.conf", 3)), "[emu1] (LOGEMU)")

    assert typed("emu.log") == f"{tmp_path}/emu.log"
    assert typed("./logs//emu.log") == f"{tmp_path}/logs/emu.log"
    assert typed("../x/emu.log") == f"{tmp_path}/../x/emu.log"  # the kernel decides where .. leads
    assert typed("/var/log/emu.log") == "/var/log/emu.log"
    assert typed("syslog") == "syslog" and typed("") == ""


def test_a_relative_path_in_a_removed_working_directory_is_a_config_error(tmp_path, monkeypatch) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    opt = path_option("file", None, "a file")
    with pytest.raises(ConfigError, match=r'x.conf:3: option "file" in \[emu1\] \(LOGEMU\): the relative path "e'):
        typed_value(opt, Entry("file", "emu.log", Loc("x.conf", 3)), "[emu1] (LOGEMU)")


def test_check_prints_the_absolute_paths_and_info_marks_path_options(tmp_path) -> None:
    conf = tmp_path / "rel.conf"
    conf.write_text(
        f'[global]\nplugin="{TEST_PLUGINS}"\nstack=in1:PIPEIN,emu1:LOGEMU\nstack=in1:PIPEIN,json1:JSON\n'
        f'[in1]\npath="{tmp_path}/fifo"\n[emu1]\nfile="emu.log"\n[json1]\nfile="out/x.json"\n'
    )
    done = subprocess.run([*PYLOGD, "--check", "-c", "rel.conf"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f'file="{tmp_path}/emu.log"' in done.stdout and f'file="{tmp_path}/out/x.json"' in done.stdout
    info = subprocess.run([*PYLOGD, "-i", "LOGEMU"], capture_output=True, text=True, check=True).stdout
    assert "a relative path is taken from the working directory at start" in info
    described = json.loads(subprocess.run([*PYLOGD, "-i", "LOGEMU", "--json"], capture_output=True, check=True).stdout)
    assert [o["name"] for o in described["options"] if o.get("path")] == ["file"]


def test_a_detached_daemon_keeps_writing_its_relative_paths_in_its_start_directory(tmp_path) -> None:
    """-d moves to /: before paths were resolved at start, SIGHUP reopened the file at /rel-..."""
    tag = f"rel-{tmp_path.name}"  # names no other test or run uses, also at /
    emu, pidfile = tmp_path / f"{tag}-packets.log", tmp_path / f"{tag}.pid"
    fifo, log = tmp_path / "fifo", tmp_path / "pylogd.log"
    at_root = [Path("/", p.name) for p in (emu, pidfile)]
    assert not any(p.exists() for p in at_root)
    (tmp_path / "pylogd.conf").write_text(
        f'[global]\nlogfile="{log}"\nplugin="{TEST_PLUGINS}"\nstack=in1:PIPEIN,emu1:LOGEMU\n'
        f'[in1]\npath="{fifo}"\n[emu1]\nfile="{emu.name}"\n'
    )
    started = subprocess.run(
        [*PYLOGD, "-d", "-c", "pylogd.conf", "-p", pidfile.name], cwd=tmp_path, capture_output=True, text=True
    )
    assert started.returncode == 0, started.stderr
    pid = 0
    try:
        written = wait_for(lambda: [p for p in (pidfile, at_root[1]) if p.exists() and p.read_text().strip()])
        pid = int(written[0].read_text())  # wherever it is: the daemon is stopped at the end in any case
        assert written == [pidfile]
        _send(fifo, "before\n")
        wait_for(lambda: "before" in read(emu), what="a line")
        emu.rename(tmp_path / f"{emu.name}.1")  # logrotate's way: rename, then SIGHUP
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: f"reopened {emu}" in read(log), what="the reopen")
        _send(fifo, "after\n")
        wait_for(lambda: "after" in read(emu), what="a line in the new file")
        assert "before" not in read(emu) and "after" not in read(tmp_path / f"{emu.name}.1")
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)
        strays = [p for p in at_root if p.exists()]
        for stray in strays:
            stray.unlink()  # leave / clean, also when the test fails
        assert not strays, "the daemon wrote at /"
    wait_for(lambda: not pidfile.exists(), what="the pidfile removed at exit")


def _send(fifo: Path, line: str) -> None:
    fd = os.open(fifo, os.O_WRONLY)
    try:
        os.write(fd, (json.dumps({"print": line}) + "\n").encode())
    finally:
        os.close(fd)


def test_a_detached_daemon_keeps_its_relative_logfile_and_spool_dir_in_its_start_directory(tmp_path) -> None:
    """The output fails until the backlog spills to spool_dir, the daemon's log is rotated: both stay
    where the daemon was started (before, the spool went to /rel-spool-... and the log to /rel-daemon...)."""
    tag = f"rel-{tmp_path.name}"
    log, spool = tmp_path / f"{tag}-daemon.log", tmp_path / f"{tag}-spool"
    fifo, cap, marker, pidfile = tmp_path / "fifo", tmp_path / "cap.json", tmp_path / "down", tmp_path / "pylogd.pid"
    at_root = [Path("/", p.name) for p in (log, spool)]
    assert not any(p.exists() for p in at_root)
    marker.touch()
    (tmp_path / "pylogd.conf").write_text(
        f'[global]\nlogfile="{log.name}"\nspool_dir="{spool.name}"\nplugin="{TEST_PLUGINS}"\n'
        f'stack=in1:PIPEIN,cap1:CAPTURE\n[in1]\npath="{fifo}"\n'
        f'[cap1]\nfile="{cap}"\nfail_while="{marker}"\nbacklog=100\n'
    )
    checked = subprocess.run([*PYLOGD, "--check", "-c", "pylogd.conf"], cwd=tmp_path, capture_output=True, text=True)
    assert f"global: logfile={log} " in checked.stdout, checked.stderr
    started = subprocess.run([*PYLOGD, "-d", "-c", "pylogd.conf", "-p", pidfile], cwd=tmp_path, capture_output=True)
    assert started.returncode == 0, started.stderr
    pid = 0
    try:
        pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the pidfile"))
        fd = os.open(fifo, os.O_WRONLY)
        try:
            os.write(fd, "".join(json.dumps({"test.n": i}) + "\n" for i in range(300)).encode())
        finally:
            os.close(fd)
        wait_for(lambda: spool.is_dir() and any(p.is_file() for p in spool.rglob("*")), what="the spill to disk")
        log.rename(tmp_path / f"{log.name}.1")
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: "SIGHUP received" in read(tmp_path / f"{log.name}.1"), what="the SIGHUP")
        marker.unlink()
        wait_for(lambda: len(read(cap).splitlines()) >= 300, what="every entry written")
        assert [json.loads(line)["test.n"] for line in read(cap).splitlines()] == list(range(300))
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)
        strays = [p for p in at_root if p.exists()]
        for stray in strays:
            subprocess.run(["rm", "-rf", str(stray)], check=True)  # leave / clean, also when the test fails
        assert not strays, "the daemon wrote at /"
    wait_for(lambda: not pidfile.exists(), what="the daemon's exit")
    assert "SIGTERM received" in read(log)  # in the log reopened in the start directory
