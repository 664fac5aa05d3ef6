"""Running pylogd as a real process in tests: start, feed its PIPEIN FIFO, wait for files, stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import PYLOGD, ROOT, TEST_PLUGINS


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


class Daemon:
    def __init__(self, tmp: Path, stacks: list[str], sections: str, args: list[str] | None = None) -> None:
        self.tmp = tmp
        self.log = tmp / "pylogd.log"
        self.fifo = tmp / "fifo"
        self.conf = tmp / "pylogd.conf"
        lines = "\n".join(f"stack={s}" for s in stacks)
        self.conf.write_text(
            f'[global]\nlogfile="{self.log}"\nloglevel=1\nplugin="{TEST_PLUGINS}"\n{lines}\n'
            f'[in1]\npath="{self.fifo}"\n{sections}'
        )
        self.args = args or []
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True, env: dict[str, str] | None = None) -> Daemon:
        self.proc = subprocess.Popen(
            [*PYLOGD, "-c", str(self.conf), *self.args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if wait:
            wait_for(lambda: "entering main loop" in read(self.log) or self.proc.poll() is not None, what="start-up")
            assert self.proc.poll() is None, self.proc.communicate()
        return self

    def send(self, *events: dict) -> None:
        fd = os.open(self.fifo, os.O_WRONLY)
        try:
            os.write(fd, "".join(json.dumps(e) + "\n" for e in events).encode())
        finally:
            os.close(fd)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(name="daemons")
def daemons_fixture() -> Iterator[list[Daemon]]:
    """Daemons a test starts, killed at its end whatever happened."""
    started: list[Daemon] = []
    yield started
    for d in started:
        d.kill()
