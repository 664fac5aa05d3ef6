"""The on-disk spool: order, restarts, torn and damaged records, its bound; and the runner spilling to it
while an output is down, then writing every entry exactly once and in order."""

from __future__ import annotations

import os
import threading
import time

import pytest
from test_runner import drain

from pylogd import runner as runner_module
from pylogd.log import Logger
from pylogd.plugin import Kind, Output, PluginSpec
from pylogd.runner import OutputRunner
from pylogd.spool import HEADER_BYTES, PROGRESS, RECORD_HEAD, Spool


def spool(path, max_bytes: int = 1 << 30, sink=None) -> Spool:
    return Spool(str(path), max_bytes, Logger("spool", sink) if sink is not None else Logger("spool"))


def rows(start: int, n: int) -> list:
    return [(i, f"10.0.0.{i % 256}", b"\x00" * (i % 7), None) for i in range(start, start + n)]


def take_all(s: Spool, chunk: int = 1 << 30, save: bool = True) -> list:
    """Read everything back as a runner does: a chunk at a time, the position saved after each."""
    got: list = []
    while (entries := s.read()) is not None:
        for i in range(0, len(entries), chunk):
            part = entries[i : i + chunk]
            got.extend(part)
            s.advance(len(part))
            if save:
                s.save_progress(s.progress())
    return got


def segments(path) -> list:
    return sorted(p for p in path.iterdir() if p.name.endswith(".seg"))


def test_records_come_back_in_order_and_a_restart_resumes_at_the_saved_position(tmp_path) -> None:
    s = spool(tmp_path)
    for i in range(5):
        assert s.append(rows(i * 10, 10)) == 10
    assert s.entries == 50
    assert s.read() == rows(0, 10)
    s.advance(10)
    s.save_progress(s.progress())
    assert s.read() == rows(10, 10)  # read but not passed: comes back after a restart
    s.advance(4)  # passed but not saved: comes back too
    s.close()
    again = spool(tmp_path)
    assert again.entries == 40
    assert take_all(again) == rows(10, 40)
    assert again.entries == 0 and not segments(tmp_path)


def test_the_position_is_saved_within_a_record_so_a_crash_repeats_nothing_written(tmp_path) -> None:
    """Issue 22 item 6: the read position moved once a whole record was written, so a kill during the
    write-back of a 30,000-entry record wrote thousands of rows again."""
    s = spool(tmp_path)
    s.append(rows(0, 3000))
    s.append(rows(3000, 10))
    assert s.read() == rows(0, 3000)
    for _ in range(3):
        s.advance(1000 if s.position()[1] < 2000 else 500)
        s.save_progress(s.progress())
    # killed here: 2500 written and saved
    again = spool(tmp_path)
    assert again.entries == 510
    assert again.read() == rows(2500, 500)
    assert take_all(again) == rows(2500, 510)


def test_a_torn_tail_is_passed_over_and_a_damaged_payload_costs_its_record_only(tmp_path, logged) -> None:
    lines, sink = logged
    s = spool(tmp_path)
    for i in range(3):
        s.append(rows(i * 10, 10))
    s.close()
    (seg,) = segments(tmp_path)
    data = bytearray(seg.read_bytes())
    data[RECORD_HEAD + 3] ^= 0x10  # a flipped bit in the first record's payload
    seg.write_bytes(bytes(data) + data[:RECORD_HEAD] + b"half")  # a crash in the middle of an append
    again = spool(tmp_path, sink=sink)
    assert again.entries == 30
    assert take_all(again) == rows(10, 20)  # the damaged first record is passed over, counted as lost
    assert again.lost == 10 and again.damaged == 0 and again.entries == 0
    assert any("its 10 entries are lost" in m for m in lines)
    assert any("record cut short" in m for m in lines)


@pytest.mark.parametrize("where", ["header", "copy", "length in both"])
def test_a_flipped_bit_in_a_record_header_costs_at_most_that_record(tmp_path, logged, where) -> None:
    """Issue 22 item 9: a flipped bit in a record's length made start-up take every record after it for
    a torn tail and cut them off.  Now the header has a copy and a CRC: one damaged copy costs nothing,
    both damaged cost that record alone (logged), and the records after it are read."""
    lines, sink = logged
    s = spool(tmp_path)
    for i in range(15):
        s.append(rows(i * 10, 10))
    s.close()
    (seg,) = segments(tmp_path)
    data = bytearray(seg.read_bytes())
    size = len(data) // 15  # every record is the same size here
    second = size
    if where in ("header", "length in both"):
        data[second + 5] ^= 0x04  # the payload length, in the header
    if where in ("copy", "length in both"):
        data[second + HEADER_BYTES + 5] ^= 0x04  # and in its copy
    seg.write_bytes(bytes(data))
    again = spool(tmp_path, sink=sink)
    got = take_all(again)
    if where == "length in both":
        assert got == rows(0, 10) + rows(20, 130)
        assert again.damaged == 1 and any("unreadable bytes" in m for m in lines)
    else:
        assert got == rows(0, 150) and again.damaged == 0 and again.lost == 0


def test_a_stray_file_is_left_alone_and_does_not_stop_the_spool(tmp_path, logged) -> None:
    """Issue 22 item 11: a stray backup.seg made start-up fail with a traceback (int() of its name)."""
    lines, sink = logged
    (tmp_path / "backup.seg").write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "0000000000000007.seg").mkdir()  # a directory named like a segment
    s = spool(tmp_path, sink=sink)
    s.append(rows(0, 5))
    assert take_all(s) == rows(0, 5)
    assert (tmp_path / "backup.seg").read_bytes() == b"old"
    assert any("backup.seg is not a spool file" in m for m in lines)


def test_a_cursor_inside_a_record_never_makes_the_count_negative(tmp_path, logged) -> None:
    """Issue 22 item 7: a read position pointing inside a record made the entry count negative, and the
    worker spun at 100 % CPU for ever.  A damaged or misplaced position now costs at most a repeat."""
    _, sink = logged
    s = spool(tmp_path)
    s.append(rows(0, 10))
    s.append(rows(10, 10))
    s.read()
    s.advance(3)
    s.save_progress(s.progress())
    s.close()
    slot = next(tmp_path / n for n in PROGRESS if (tmp_path / n).exists())
    record = slot.read_bytes().split(b"\n")[0]
    import json
    import zlib

    moved = json.loads(record)
    moved["offset"] += 7  # inside the first record
    body = json.dumps(moved).encode()
    slot.write_bytes(body + b"\n" + f"{zlib.crc32(body):08x}\n".encode())
    again = spool(tmp_path, sink=sink)
    got = take_all(again)
    assert again.entries == 0 and got == rows(10, 10)  # what follows the damage is read, and the count holds
    assert again.read() is None and again.entries == 0


def test_a_damaged_progress_slot_falls_back_to_the_other(tmp_path, logged) -> None:
    lines, sink = logged
    s = spool(tmp_path)
    s.append(rows(0, 30))
    s.read()
    for _ in range(3):
        s.advance(10 if s.position()[1] < 20 else 5)
        s.save_progress(s.progress())
    s.close()
    newest = tmp_path / PROGRESS[3 % 2]  # the third save's slot
    data = bytearray(newest.read_bytes())
    data[10] ^= 0x01
    newest.write_bytes(bytes(data))
    again = spool(tmp_path, sink=sink)
    assert take_all(again) == rows(20, 10)  # one step back: the chunk saved last comes again
    assert any("is damaged; using the other copy" in m for m in lines)


def test_a_spool_emptied_and_filled_again_never_reads_a_new_segment_at_an_old_position(tmp_path, logged) -> None:
    """The reader writes back the segment being appended to, the spool is empty, and the next entries
    start a new segment: read from its start, here and after a restart (the old position named a
    segment number that a new segment took, and 100 entries were taken for damage)."""
    lines, sink = logged
    s = spool(tmp_path, sink=sink)
    s.append(rows(0, 10))
    assert take_all(s) == rows(0, 10) and not segments(tmp_path)
    s.append(rows(10, 20))
    assert take_all(s) == rows(10, 20)
    s.close()
    again = spool(tmp_path, sink=sink)
    again.append(rows(30, 5))
    assert take_all(again) == rows(30, 5)
    assert again.damaged == 0 and not any("unreadable" in m for m in lines)


def test_the_spool_is_bounded(tmp_path) -> None:
    s = spool(tmp_path, max_bytes=2000)
    stored = sum(s.append(rows(i * 10, 10)) for i in range(20))
    assert 0 < stored < 200 and s.bytes <= 2000


def test_directories_are_made_private_whatever_the_umask(tmp_path) -> None:
    """Issue 22 item 13: with umask 000 the spool's parent was made 0777."""
    old = os.umask(0)
    try:
        spool(tmp_path / "parent" / "out1")
    finally:
        os.umask(old)
    assert (tmp_path / "parent").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "parent" / "out1").stat().st_mode & 0o777 == 0o700


def test_damage_anywhere_costs_only_the_damaged_records_and_every_loss_is_counted(tmp_path) -> None:
    """Fault injection, seeded: spools of random records, their segments, progress slots and stray files
    damaged at random (bit flips, truncations, garbage, deleted slots).  Every record left intact comes
    back exactly once and in order, nothing raises, and every record that does not come back is
    counted: in ``lost`` with its entries when its header survived, in ``damaged`` when it did not."""
    import random

    rng = random.Random(22)
    for trial in range(60):
        d = tmp_path / f"t{trial}"
        s = spool(d)
        records = []
        n = 0
        for _ in range(rng.randint(1, 25)):
            k = rng.randint(1, 40)
            records.append(rows(n, k))
            s.append(records[-1])
            n += k
        consumed = rng.randint(0, n // 2)  # some written back already, the position saved
        take, taken = [], 0
        while taken < consumed and (entries := s.read()) is not None:
            step = min(len(entries), consumed - taken, rng.randint(1, 30))
            take.extend(entries[:step])
            s.advance(step)
            s.save_progress(s.progress())
            taken += step
        s.close()
        (seg,) = segments(d)
        data = bytearray(seg.read_bytes())
        damaged_at = []
        for _ in range(rng.randint(1, 3)):
            kind = rng.choice(["flip", "flip", "flip", "truncate", "garbage", "progress", "stray"])
            if kind == "flip" and data:
                at = rng.randrange(len(data))
                data[at] ^= 1 << rng.randrange(8)
                damaged_at.append(at)
            elif kind == "truncate":
                cut = rng.randrange(len(data) + 1)
                damaged_at.append(cut)
                del data[cut:]
            elif kind == "garbage" and data:
                at = rng.randrange(len(data))
                data[at : at + 16] = rng.randbytes(16)
                damaged_at.append(at)
            elif kind == "progress":
                slot = d / rng.choice(PROGRESS)
                if slot.exists():
                    raw = bytearray(slot.read_bytes())
                    raw[rng.randrange(len(raw))] ^= 0xFF
                    slot.write_bytes(bytes(raw))
            else:
                (d / rng.choice(["x.seg", "cursor.bak", "0.seg"])).write_bytes(rng.randbytes(20))
        seg.write_bytes(bytes(data))
        again = spool(d)
        got = take_all(again)
        assert again.entries == 0 and again.read() is None, trial
        # order and no repeats, except one step back when a progress slot was hit
        numbers = [r[0] for r in got]
        assert numbers == sorted(numbers), trial
        assert len(set(numbers)) == len(numbers), trial
        # every record whose bytes were not touched comes back whole (after what was written before)
        offset = 0
        for record in records:
            size = RECORD_HEAD + len(__import__("marshal").dumps(record))
            untouched = all(not (offset <= at < offset + size) for at in damaged_at) and offset + size <= len(data)
            unwritten = [r for r in record if r[0] >= consumed]
            if untouched and unwritten:
                assert all(r in got for r in unwritten), (trial, record[0][0])
            offset += size
        # every entry is written before, read back now, or counted lost (or in a region counted damaged)
        missing = {i for i in range(consumed, n)} - set(numbers)
        assert not missing or again.lost or again.damaged or len(data) < offset, trial
        assert again.lost <= len(missing), trial


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
    assert any("keeping what waits in" in m for m in lines)


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


class Frozen(Output):
    """A server whose write blocks until ``answer`` is set (a database that froze), then succeeds."""

    spec = PluginSpec(name="FROZEN", kind=Kind.OUTPUT, help="test")
    blocking = True

    def __init__(self) -> None:
        super().__init__("db1", {}, Logger("db1"))
        self.rows: list = []
        self.answer = threading.Event()
        self.writing = threading.Event()

    def write(self, entries: list) -> None:
        self.writing.set()
        self.answer.wait(30)
        self.rows.extend(entries)


def test_what_waits_behind_a_frozen_write_reaches_the_disk_and_the_freeze_shows(tmp_path, logged, monkeypatch) -> None:
    """Issue 22 items 5 and 13: a database that froze held every accepted entry in memory only (a kill
    -9 lost them all) and showed no error for its first 60 s.  Now what has waited SPILL_AFTER goes to
    the spool (what a kill would cost), and the unanswered write shows in the statistics."""
    monkeypatch.setattr(runner_module, "SPILL_AFTER", 0.05)
    monkeypatch.setattr(runner_module, "STALLED_AFTER", 0.05)
    _, sink = logged
    server = Frozen()
    runner = OutputRunner(server, "1", Logger("core", sink), spool=spool(tmp_path))
    runner.start()
    runner.batch.extend(rows(0, 10))
    runner.flush()
    assert server.writing.wait(10)
    sent = 10
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # traffic goes on, the loop's timer ticks
        runner.batch.extend(rows(sent, 10))
        sent += 10
        runner.flush()
        runner.retry()
        if spool(tmp_path).entries == sent:  # a new process (after kill -9) would find all of it
            break
        time.sleep(0.01)
    assert spool(tmp_path).entries == sent
    assert "no answer" in runner.current_error() and runner.failing_seconds() > 0
    server.answer.set()
    deadline = time.monotonic() + 10
    while runner.pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    runner.close(time.monotonic() + 5)
    assert server.rows == rows(0, sent) and runner.written == sent
    assert spool(tmp_path).entries == 0 and runner.current_error() == ""


@pytest.mark.parametrize("blocking", [False, True])
def test_a_failing_output_has_every_accepted_entry_on_disk_at_once(tmp_path, logged, blocking) -> None:
    """Issue 22 item 5: while writes fail, what was accepted waited in memory up to 200,000 entries
    before anything reached the spool, and a kill -9 lost it.  Now, once a write has failed, every
    accepted entry is on disk before flush() returns."""
    _, sink = logged
    server = Server(blocking)
    server.down = True
    runner = OutputRunner(server, "1", Logger("core", sink), spool=spool(tmp_path))
    runner.start()
    runner.batch.extend(rows(0, 5))
    runner.flush()
    deadline = time.monotonic() + 10
    while not runner.write_errors and time.monotonic() < deadline:
        runner.retry()
        time.sleep(0.01)
    assert runner.write_errors
    sent = 5
    for _ in range(20):
        runner.batch.extend(rows(sent, 7))
        sent += 7
        runner.flush()
        assert spool(tmp_path).entries == sent  # what a kill -9 now would leave: everything
    server.down = False
    runner.close(time.monotonic() + 10)
    assert server.rows == rows(0, sent)
