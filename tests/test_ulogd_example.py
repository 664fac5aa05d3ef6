"""ulogd's own example config with every stack enabled whose plugins pylogd has: it passes --check and runs.

In ulogd an id used by several stacks is an instance per stack configured from one section, so the
example's print1 is a PRINTPKT in one stack and a PRINTFLOW in another; pylogd accepts that."""

from __future__ import annotations

import re
import signal
import sqlite3
from pathlib import Path

import pytest
from conftest import IN_CI
from rig import Netns, pylogd_command, read_text, wait_for

from pylogd.cli import main
from pylogd.registry import Registry

EXAMPLE = Path("/usr/share/doc/ulogd2/examples/ulogd.conf")


def every_stack_enabled(tmp_path: Path) -> tuple[Path, list[str]]:
    """The example with each commented-out stack= line enabled when pylogd has all its plugins, its
    files moved under ``tmp_path``."""
    if not EXAMPLE.exists():
        if IN_CI:
            pytest.fail(f"CI=true but {EXAMPLE} is missing (Debian's ulogd2)", pytrace=False)
        pytest.skip(f"{EXAMPLE} missing: install Debian's ulogd2")
    registry = Registry()
    lines, enabled = [], []
    for line in EXAMPLE.read_text().splitlines():
        m = re.match(r"#(stack=(\S+))$", line)
        if m and all(registry.get(token.split(":")[1]) for token in m.group(2).split(",")):
            line = m.group(1)
        if line.startswith("stack="):
            enabled.append(line[6:])
        lines.append(line)
    text = "\n".join(lines) + "\n"
    text = text.replace('logfile="syslog"', f'logfile="{tmp_path}/pylogd.log"').replace(
        "/var/log/ulog/", f"{tmp_path}/"
    )
    conf = tmp_path / "ulogd.conf"
    conf.write_text(text.replace("/var/log/ulogd", f"{tmp_path}/ulogd"))
    return conf, enabled


def test_every_stack_pylogd_can_run_passes_check(tmp_path, capsys) -> None:
    conf, enabled = every_stack_enabled(tmp_path)
    assert len(enabled) >= 14
    assert "ct1:NFCT,ip2str1:IP2STR,print1:PRINTFLOW,emu1:LOGEMU" in enabled
    assert main(["--check", "-c", str(conf)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"{len(enabled)} stack(s)" in out and "configuration OK" in out
    assert "print1:PRINTPKT (filter)" in out and "print1:PRINTFLOW (filter)" in out


def test_every_stack_pylogd_can_run_runs(tmp_path: Path, netns: Netns) -> None:
    conf, _ = every_stack_enabled(tmp_path)
    # the example's databases (user nupik) exist nowhere; a server that does not answer lets rows wait
    # (one that refuses the user fails the start, as in ulogd): port 1 of the namespace answers nothing
    conf.write_text(conf.read_text().replace('host="localhost"', 'host="127.0.0.1"\nport=1'))
    with sqlite3.connect(tmp_path / "ulogd.sqlite3db") as db:  # as ulogd, the table must exist
        db.executescript(Path("/usr/share/doc/ulogd2/sqlite3.table").read_text())
    log = tmp_path / "pylogd.log"
    proc = netns.spawn([*pylogd_command(), "-c", str(conf)], name="pylogd")
    wait_for(lambda: "entering main loop" in read_text(log) or not proc.alive(), timeout=30, what="start-up")
    assert proc.alive(), read_text(log) + proc.output()
    said = read_text(log)
    assert "database not reachable at start" in said
    proc.signal(signal.SIGTERM)
    assert proc.stop(timeout=60) == 0, read_text(log)[-3000:]
    assert "Traceback" not in read_text(log) + proc.output()
