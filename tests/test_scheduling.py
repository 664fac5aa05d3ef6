"""The reader runs under SCHED_RR at the highest priority as ulogd's loop does (`realtime=1`, the default),
its output workers under the normal scheduler; `realtime=0` leaves it all normal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import IN_CI
from daemonkit import Daemon

# a JSON output in socket mode writes from a worker thread; nothing listens on port 9 of loopback
JSON_SOCKET = '[j1]\nmode="tcp"\nhost="127.0.0.1"\nport="9"\n'


def policies(pid: int) -> tuple[int, list[int]]:
    """(the main thread's policy, the other threads' policies)."""
    others = [os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid]
    return os.sched_getscheduler(pid), others


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI=true but not root: SCHED_RR needs it", pytrace=False)
        pytest.skip("needs root (SCHED_RR)")


@pytest.mark.parametrize("realtime", ["", "realtime=1\n"])
def test_the_reader_runs_real_time_and_the_writer_does_not(tmp_path: Path, realtime: str):
    d = Daemon(tmp_path, ["in1:PIPEIN,j1:JSON"], JSON_SOCKET)
    d.conf.write_text(d.conf.read_text().replace("[global]\n", f"[global]\n{realtime}"))
    d.start()
    try:
        main, others = policies(d.proc.pid)
        assert main == os.SCHED_RR
        assert os.sched_getparam(d.proc.pid).sched_priority == os.sched_get_priority_max(os.SCHED_RR)
        assert others and all(p == os.SCHED_OTHER for p in others), others
    finally:
        d.stop()
        d.kill()


def test_realtime_0_keeps_the_normal_scheduler(tmp_path: Path):
    d = Daemon(tmp_path, ["in1:PIPEIN,j1:JSON"], JSON_SOCKET)
    d.conf.write_text(d.conf.read_text().replace("[global]\n", "[global]\nrealtime=0\n"))
    d.start()
    try:
        main, others = policies(d.proc.pid)
        assert main == os.SCHED_OTHER and all(p == os.SCHED_OTHER for p in others)
    finally:
        d.stop()
        d.kill()
