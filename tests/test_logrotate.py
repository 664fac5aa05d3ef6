"""logrotate with the shipped file's method (rename, then SIGHUP) under steady traffic: every output file and
the daemon's log rotated 100 times, no line lost, split or written twice."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time

import pytest
from conftest import IN_CI, ROOT
from daemonkit import Daemon, read, wait_for


def rotated_in_order(path) -> list[str]:
    """The lines of ``path`` and its rotations, oldest first."""
    numbered = sorted(
        (int(p.name.rsplit(".", 1)[1]), p) for p in path.parent.glob(path.name + ".*") if p.name[-1].isdigit()
    )
    lines: list[str] = []
    for _, p in reversed(numbered):
        lines += p.read_text().splitlines()
    return lines + read(path).splitlines()


def test_hundred_rotations_under_traffic_lose_split_and_repeat_nothing(tmp_path) -> None:
    if shutil.which("logrotate") is None:
        if IN_CI:
            pytest.fail("CI=true but logrotate is missing", pytrace=False)
        pytest.skip("needs logrotate")
    shipped = (ROOT / "etc/logrotate.d/pylogd").read_text()
    assert "copytruncate" not in shipped.split("#")[-1] and "--signal=HUP pylogd.service" in shipped
    emu, out = tmp_path / "emu.log", tmp_path / "out.json"
    d = Daemon(
        tmp_path,
        ["in1:PIPEIN,emu1:LOGEMU", "in1:PIPEIN,json1:JSON"],
        f'[emu1]\nfile="{emu}"\n[json1]\nfile="{out}"\n',
    )
    d.start()
    # the shipped file's method, pointed at this daemon: rename, then SIGHUP
    conf = tmp_path / "logrotate.conf"
    conf.write_text(
        f"{emu} {out} {d.log} {{\n rotate 1000\n nocompress\n sharedscripts\n"
        f" postrotate\n  kill -HUP {d.proc.pid}\n endscript\n}}\n"
    )
    sent = [0]
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            n = sent[0]
            d.send(*({"test.n": i, "print": f"event {i:07d} {'x' * 50}\n"} for i in range(n, n + 20)))
            sent[0] = n + 20
            time.sleep(0.002)

    feeder = threading.Thread(target=traffic)
    feeder.start()
    try:
        for _ in range(100):
            subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "state"), str(conf)], check=True, timeout=30)
            time.sleep(0.01)
    finally:
        stop.set()
        feeder.join()
    total = sent[0]
    wait_for(lambda: _count(emu) >= total, timeout=30, what="the last lines")
    assert d.stop() == 0
    assert len(list(tmp_path.glob("emu.log.*"))) == 100
    emu_numbers = []
    for line in rotated_in_order(emu):
        m = re.search(r" event (\d{7}) x{50}$", line)
        assert m and line.count(" event ") == 1, f"split or glued line: {line[:200]!r}"
        emu_numbers.append(int(m.group(1)))
    assert emu_numbers == list(range(total)), "LOGEMU lines lost, repeated or reordered"
    json_numbers = [json.loads(line)["test.n"] for line in rotated_in_order(out)]
    assert json_numbers == list(range(total)), "JSON lines lost, repeated or reordered"
    log = rotated_in_order(d.log)
    assert sum("SIGHUP received" in line for line in log) > 50  # two close together are handled once
    assert all(re.match(r"\w{3} \w{3} [ \d]\d ", line) for line in log), "a split line in the daemon's log"
    print(f"{total} events, 100 rotations of 3 files")


def _count(path) -> int:
    """Lines in ``path`` and its rotations."""
    return sum(len(p.read_text().splitlines()) for p in path.parent.glob(path.name + "*"))
