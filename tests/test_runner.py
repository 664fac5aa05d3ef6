"""The output runner: a failing output loses nothing it can keep, drops only whole entries, counts and logs
every drop, and retries cheaply; in-process, with outputs that fail on purpose."""

from __future__ import annotations

import errno
import os
import re
import time

import pytest

from pylogd import files
from pylogd.log import Logger
from pylogd.plugin import Kind, Output, PluginSpec, RejectedEntries
from pylogd.runner import CHUNK, OutputRunner


class Disk(Output):
    """A file on a disk whose free space the test sets; writes go through files.write_all."""

    spec = PluginSpec(name="DISK", kind=Kind.OUTPUT, help="test")

    def __init__(self, path, blocking: bool = False) -> None:
        super().__init__("disk1", {}, Logger("disk1"))
        self.fd = files.open_append(str(path))
        self.free: int | None = None  # None: unlimited
        self.calls: list[int] = []  # entries per write call
        self.blocking = blocking

    def write(self, entries: list) -> None:
        self.calls.append(len(entries))
        files.write_all(self.fd, entries)


@pytest.fixture
def disk(tmp_path, monkeypatch):
    real_write = os.write

    def limited(fd: int, data) -> int:
        out = outputs[0]
        if fd != out.fd or out.free is None:
            return real_write(fd, data)
        if out.free == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_write(fd, bytes(data[: out.free]))
        out.free -= n
        return n

    outputs: list[Disk] = []
    monkeypatch.setattr(files.os, "write", limited)

    def make(blocking: bool = False) -> Disk:
        outputs.append(Disk(tmp_path / "out.log", blocking))
        return outputs[0]

    yield make
    for out in outputs:
        os.close(out.fd)


def line(i: int) -> bytes:
    return f"line {i:06d} {'x' * 40}\n".encode()


WHOLE = re.compile(rb"line (\d{6}) x{40}")


def numbers(path) -> list[int]:
    got = []
    for text in path.read_bytes().splitlines():
        m = WHOLE.fullmatch(text)
        assert m, f"torn or glued line: {text[:120]!r}"
        got.append(int(m.group(1)))
    return got


def feed(runner: OutputRunner, start: int, count: int, per_batch: int = 100) -> int:
    for i in range(start, start + count, per_batch):
        runner.batch.extend(line(n) for n in range(i, min(i + per_batch, start + count)))
        runner.flush()
    return start + count


def drain(runner: OutputRunner, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while runner.pending() and time.monotonic() < deadline:
        runner.retry()
        time.sleep(0.01)


def test_overflow_drops_whole_entries_and_every_entry_is_accounted_for(tmp_path, disk, logged) -> None:
    """The disk fills in the middle of a line, more arrives than may wait: the half-written line is
    finished once space returns, only whole new entries are dropped, and the counters add up."""
    lines, sink = logged
    out = disk()
    runner = OutputRunner(out, "1", Logger("core", sink), max_pending=500)
    sent = feed(runner, 0, 200)
    out.free = 30  # the next write stops inside the first line of the next batch
    sent = feed(runner, sent, 1000)
    assert runner.dropped > 0 and runner.pending() == 500
    assert runner.written + runner.dropped + runner.pending() == sent
    out.free = None
    drain(runner)
    assert runner.pending() == 0
    got = numbers(tmp_path / "out.log")
    assert len(got) == runner.written == sent - runner.dropped
    assert got == sorted(set(got)), "reordered or repeated"
    assert got[:201] == list(range(201))  # the torn one (200) is whole
    reported = [int(n) for m in lines for n in re.findall(r"dropped (\d+) new entries", m)]
    assert sum(reported) == runner.dropped, lines  # every drop is in the log, rate-limited
    assert any("writing again after" in m for m in lines)


def test_the_backlog_is_bounded_in_bytes_too(tmp_path, disk, logged) -> None:
    lines, sink = logged
    out = disk()
    out.free = 0
    runner = OutputRunner(out, "1", Logger("core", sink), max_pending=10**6, max_pending_bytes=100_000)
    sent = feed(runner, 0, 5000)
    assert runner.pending_bytes() <= 100_000
    assert 0 < runner.pending() < 5000
    assert runner.written + runner.dropped + runner.pending() == sent
    assert any("dropped" in m and "0.1 MiB" in m for m in lines), lines


def test_while_writes_fail_new_batches_wait_without_a_write_and_retries_back_off(disk, logged) -> None:
    _, sink = logged
    out = disk()
    out.free = 0
    runner = OutputRunner(out, "1", Logger("core", sink))
    feed(runner, 0, 100)
    assert out.calls == [100]
    feed(runner, 100, 20_000)  # 200 more drains at once: none of them tries the disk
    assert out.calls == [100]
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        runner.retry()
        time.sleep(0.005)
    # back-off from 0.25 s doubling: a handful of tries in 3 s, each one chunk, not the whole backlog
    assert 3 <= len(out.calls) - 1 <= 6, out.calls
    assert max(out.calls[1:]) == CHUNK
    out.free = None
    drain(runner)
    assert runner.written == 20_100 and runner.pending() == 0


@pytest.mark.parametrize("blocking", [False, True])
def test_close_writes_what_waits_and_counts_what_it_cannot(tmp_path, disk, logged, blocking) -> None:
    lines, sink = logged
    out = disk(blocking)
    runner = OutputRunner(out, "1", Logger("core", sink))
    runner.start()
    out.free = 0
    sent = feed(runner, 0, 300)
    runner.close(time.monotonic() + 0.5)
    assert runner.dropped == sent and runner.pending() == 0
    assert any("300 entries could not be written at exit" in m for m in lines), lines


def test_a_worker_thread_keeps_order_and_counts(tmp_path, disk, logged) -> None:
    _, sink = logged
    out = disk(blocking=True)
    runner = OutputRunner(out, "1", Logger("core", sink), max_pending=3000)
    runner.start()
    out.free = 1000
    sent = feed(runner, 0, 10_000)
    time.sleep(0.3)
    out.free = None
    deadline = time.monotonic() + 10
    while runner.pending() and time.monotonic() < deadline:  # the worker works the backlog off alone
        time.sleep(0.01)
    assert runner.pending() == 0
    sent = feed(runner, sent, 100)
    runner.close(time.monotonic() + 10)
    got = numbers(tmp_path / "out.log")
    assert len(got) == runner.written and runner.written + runner.dropped == sent
    assert got == sorted(set(got))
    assert got[-100:] == list(range(10_000, 10_100))


class Picky(Output):
    """Refuses entries that start with "bad" for good, and fails now and then as a server going away."""

    spec = PluginSpec(name="PICKY", kind=Kind.OUTPUT, help="test")

    def __init__(self) -> None:
        super().__init__("picky1", {}, Logger("picky1"))
        self.rows: list[str] = []
        self.down = False

    def write(self, entries: list) -> None:
        if self.down:
            raise ConnectionError("server closed the connection")
        refused = [(e, "value out of range") for e in entries if e.startswith("bad")]
        self.rows.extend(e for e in entries if not e.startswith("bad"))
        if refused:
            raise RejectedEntries(refused)


@pytest.mark.parametrize("outage", [False, True])
def test_rejected_entries_are_set_aside_and_never_hold_up_the_rest(logged, outage) -> None:
    lines, sink = logged
    out = Picky()
    runner = OutputRunner(out, "1", Logger("core", sink))
    out.down = outage
    runner.batch.extend(["a", "bad1", "b"])
    runner.flush()
    runner.batch.extend(["c", "bad2", "d"])
    runner.flush()
    out.down = False
    drain(runner)
    assert out.rows == ["a", "b", "c", "d"]
    assert (runner.written, runner.rejected, runner.pending(), runner.dropped) == (4, 2, 0, 0)
    assert any("rejected and set aside" in m and "value out of range: 'bad1'" in m for m in lines), lines
