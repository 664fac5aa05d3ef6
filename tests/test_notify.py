"""systemd's notify protocol on a real daemon: READY, STATUS, WATCHDOG, RELOADING and STOPPING arrive in
order and at the right moments, and a stuck event loop stops feeding the watchdog."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import sys
import time

import pytest
from daemonkit import Daemon, read, wait_for

from pylogd import notify


class NotifySocket:
    """What systemd listens on: each datagram is one notification, kept with its arrival time."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.got: list[tuple[float, list[str]]] = []

    def pump(self, seconds: float = 0.0) -> list[tuple[float, list[str]]]:
        end = time.monotonic() + seconds
        while True:
            try:
                data = self.sock.recv(4096)
                self.got.append((time.monotonic(), data.decode().split("\n")))
            except TimeoutError:
                if time.monotonic() >= end:
                    return self.got

    def first(self, line: str, after: int = 0) -> int:
        """The index of the first notification from ``after`` on holding ``line`` (waiting for it)."""

        def find() -> int | None:
            self.pump()
            for i in range(after, len(self.got)):
                if line in self.got[i][1]:
                    return i + 1  # truthy even for index 0
            return None

        return int(wait_for(find, what=line)) - 1


@pytest.fixture
def notified(tmp_path):
    ns = NotifySocket(tmp_path / "notify")
    yield ns
    ns.sock.close()


def test_ready_status_watchdog_reloading_stopping(tmp_path, notified) -> None:
    d = Daemon(tmp_path, ["in1:PIPEIN,emu1:LOGEMU"], f'[emu1]\nfile="{tmp_path}/emu.log"\n')
    env = os.environ | {"NOTIFY_SOCKET": notified.path, "WATCHDOG_USEC": "200000"}
    try:
        d.start(wait=False, env=env)
        ready = notified.first("READY=1")
        lines = notified.got[ready][1]
        assert "entering main loop" in read(d.log)  # not before every stack is up
        assert f"MAINPID={d.proc.pid}" in lines
        assert any(line.startswith("STATUS=1 stacks; events 0") for line in lines), lines
        notified.pump(1.0)
        dogs = [t for t, lines in notified.got[ready:] if "WATCHDOG=1" in lines]
        assert len(dogs) >= 5  # every 0.1 s: half of WATCHDOG_USEC

        d.signal(signal.SIGHUP)
        reloading = notified.first("RELOADING=1", ready + 1)
        assert any(line.startswith("MONOTONIC_USEC=") for line in notified.got[reloading][1])
        again = notified.first("READY=1", reloading + 1)
        assert again > reloading

        d.send({"block_loop_for": 1.5})  # the loop is stuck: the watchdog must starve
        time.sleep(0.3)
        mark = len(notified.pump(2.5))
        dogs = [t for t, lines in notified.got[again:mark] if "WATCHDOG=1" in lines]
        assert max(b - a for a, b in itertools.pairwise(dogs)) > 1.2, "WATCHDOG=1 sent while the loop was stuck"
        assert dogs[-1] > time.monotonic() - 0.6, "the watchdog did not come back"

        d.signal(signal.SIGTERM)
        assert d.proc.wait(30) == 0
        stopping = notified.first("STOPPING=1", mark)
        assert stopping >= mark
    finally:
        d.kill()


def test_plain_socket_fallback_without_systemd_python(tmp_path, notified, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "systemd", None)  # import systemd raises ImportError
    monkeypatch.setenv("NOTIFY_SOCKET", notified.path)
    monkeypatch.setenv("WATCHDOG_USEC", "5000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    n = notify.Notifier()
    assert n.enabled and n.watchdog_interval is None
    n.ready("up")
    n.stopping()
    got = [lines for _, lines in notified.pump(0.2)]
    assert got[0][:2] == ["READY=1", "STATUS=up"] and got[1][0] == "STOPPING=1"


def test_abstract_socket_name_and_no_socket(monkeypatch) -> None:
    name = f"@pylogd-test-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name[1:])
    listener.settimeout(2)
    monkeypatch.setitem(sys.modules, "systemd", None)
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    notify.Notifier().watchdog()
    assert listener.recv(100) == b"WATCHDOG=1"
    listener.close()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not notify.Notifier().enabled
