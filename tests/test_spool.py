"""The on-disk spool: order, restarts, torn and damaged records, its bound; and the runner spilling to it
while an output is down, then writing every entry exactly once and in order."""

from __future__ import annotations

import os
import time

import pytest
from test_runner import drain

from pylogd.log import Logger
from pylogd.plugin import Kind, Output, PluginSpec
from pylogd.runner import OutputRunner
from pylogd.spool import HEADER, Spool


def spool(path, max_bytes: int = 1 << 30) -> Spool:
    return Spool(str(path), max_bytes, Logger("spool"))


def rows(start: int, n: int) -> list:
    return [(i, f"10.0.0.{i % 256}", b"\x00" * (i % 7), None) for i in range(start, start + n)]


def test_records_come_back_in_order_and_a_restart_resumes_at_the_cursor(tmp_path) -> None:
    s = spool(tmp_path)
    for i in range(5):
        assert s.append(rows(i * 10, 10)) == 10
    assert s.entries == 50
    assert s.read() == rows(0, 10)
    s.commit()
    assert s.read() == rows(10, 10)  # read but not committed: comes back after a restart
    s.close()
    again = spool(tmp_path)
    assert again.entries == 30 + 10
    got = []
    while (batch := again.read()) is not None:
        got.extend(batch)
        again.commit()
    assert got == rows(10, 40)
    assert again.entries == 0 and not [n for n in os.listdir(tmp_path) if n.endswith(".seg")]


def test_first_goes_before_everything_stored(tmp_path) -> None:
    s = spool(tmp_path)
    s.append(rows(10, 5))
    s.append(rows(0, 10), first=True)
    s.close()
    again = spool(tmp_path)
    assert again.read() == rows(0, 10)
    again.commit()
    assert again.read() == rows(10, 5)


def test_a_torn_tail_is_cut_off_and_a_damaged_record_skipped(tmp_path) -> None:
    s = spool(tmp_path)
    for i in range(3):
        s.append(rows(i * 10, 10))
    s.close()
    (seg,) = [tmp_path / n for n in os.listdir(tmp_path) if n.endswith(".seg")]
    data = bytearray(seg.read_bytes())
    size = HEADER.unpack_from(data, 0)[0]
    data[HEADER.size + 3] ^= 0xFF  # a flipped bit in the first record
    seg.write_bytes(bytes(data) + HEADER.pack(1000, 0, 10) + b"half")  # a crash in the middle of a write
    again = spool(tmp_path)
    assert again.entries == 30
    assert again.read() == rows(10, 10)  # the damaged first record is skipped, counted as lost
    assert again.lost == 10
    assert seg.stat().st_size == len(data)
    assert size > 0


def test_the_spool_is_bounded(tmp_path) -> None:
    s = spool(tmp_path, max_bytes=2000)
    stored = sum(s.append(rows(i * 10, 10)) for i in range(20))
    assert 0 < stored < 200 and s.bytes <= 2000


class Server(Output):
    """Rows into a list; down while ``down`` is set."""

    spec = PluginSpec(name="SERVER", kind=Kind.OUTPUT, help="test")

    def __init__(self, blocking: bool) -> None:
        super().__init__("db1", {}, Logger("db1"))
        self.blocking = blocking
        self.rows: list = []
        self.down = False

    def write(self, entries: list) -> None:
        if self.down:
            raise ConnectionError("server is down")
        self.rows.extend(entries)


def entry_size(row: tuple) -> int:
    return 64


@pytest.mark.parametrize("blocking", [False, True])
def test_an_outage_longer_than_memory_spills_and_every_row_arrives_once_in_order(tmp_path, logged, blocking) -> None:
    lines, sink = logged
    server = Server(blocking)
    server.entry_size = entry_size  # type: ignore[method-assign]
    runner = OutputRunner(server, "1", Logger("core", sink), max_pending=300, spool=spool(tmp_path))
    runner.start()
    server.down = True
    sent = 0
    for _ in range(40):
        runner.batch.extend(rows(sent, 50))
        sent += 50
        runner.flush()
    assert runner.dropped == 0 and runner.pending() == sent
    assert runner.spool is not None and runner.spool.entries > 0
    server.down = False
    for _ in range(5):  # traffic goes on while the spool is written back
        runner.batch.extend(rows(sent, 50))
        sent += 50
        runner.flush()
    if blocking:
        deadline = time.monotonic() + 10
        while runner.pending() and time.monotonic() < deadline:
            time.sleep(0.01)
    else:
        drain(runner)
    runner.close(time.monotonic() + 5)
    assert server.rows == rows(0, sent)
    assert runner.written == sent and runner.pending() == 0
    assert any("spilling to" in m for m in lines)


@pytest.mark.parametrize("blocking", [False, True])
def test_what_waits_at_exit_is_written_first_by_the_next_start(tmp_path, logged, blocking) -> None:
    _, sink = logged
    first = Server(blocking)
    first.down = True
    runner = OutputRunner(first, "1", Logger("core", sink), max_pending=100, spool=spool(tmp_path))
    runner.start()
    runner.batch.extend(rows(0, 250))  # 100 in memory, 150 spooled
    runner.flush()
    runner.close(time.monotonic() + 0.3)
    assert runner.dropped == 0 and first.rows == []
    second = Server(blocking)
    again = OutputRunner(second, "1", Logger("core", sink), max_pending=100, spool=spool(tmp_path))
    assert again.pending() == 250
    again.start()
    again.batch.extend(rows(250, 10))  # new traffic waits behind the spool
    again.flush()
    if not blocking:
        drain(again)
    again.close(time.monotonic() + 10)
    assert second.rows == rows(0, 260)


def test_a_spill_before_a_half_read_segment_keeps_its_read_position(tmp_path) -> None:
    """At exit the memory backlog goes before everything stored, while the oldest segment is half
    written already: after a restart each entry comes back once."""
    s = spool(tmp_path)
    s.append(rows(10, 10))
    s.append(rows(20, 10))
    assert s.read() == rows(10, 10)
    s.commit()  # rows 10..19 are written
    s.append(rows(0, 5), first=True)  # what waited in memory: older than all of it
    s.close()
    again = spool(tmp_path)
    assert again.entries == 15
    got = []
    while (batch := again.read()) is not None:
        got.extend(batch)
        again.commit()
    assert got == rows(0, 5) + rows(20, 10)
