"""An output's on-disk spool: what waits while writes fail, kept in order, surviving kill -9 and damage.

A spool is a directory of segment files named ``<16 digits>.seg``.  Each record is one batch of
entries serialised with :mod:`marshal` (entries are bytes, str, or tuples of plain values; marshal
reads them faster than pickle and cannot run code), behind a header that is written twice: magic,
payload length, entry count, a random 64-bit record id, the payload's CRC-32, and a CRC-32 of the
header itself.  A flipped bit in one header copy leaves the other; the CRCs tell which is intact.
Where neither is (a damaged region), the reader looks for the next intact header and goes on from
there: damage costs the damaged record(s) only, never the records after them, and every loss is
counted (``lost``: entries of damaged records; ``damaged``: unreadable regions, whose entry count
is unknown) and logged.

Records are appended to the newest segment; the reader takes entries back from the oldest, and a
segment is deleted once all its entries are written.  The read position (the progress) names the
next entry to write: segment, record offset, index within the record and the record's id.  It is
saved after every chunk the output writes (not once per record), each time to the other of two
slots (``progress.0``, ``progress.1``: written whole to a temporary file, synced, renamed), with a
CRC and a sequence number: the newest intact slot wins, so a damaged slot costs one step back.
The progress may also hold the record of a database transaction in doubt (its COMMIT under way),
keyed by the position of its first entry, which the output settles at the next start.

Why segment files and not SQLite: appending a record is one write() of bytes that are already
serialised, and reading one back is one read(); a record is never updated in place, so there is
nothing for a database to do, and a half-written tail after a crash is found by its length and
CRCs and passed over.
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import random
import re
import struct
import zlib
from typing import Any

from .log import Logger

_HEAD = struct.Struct("<4sIIQI")  # magic, payload bytes, entries, record id, CRC-32 of the payload
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEAD.size + _CRC.size
RECORD_HEAD = 2 * HEADER_BYTES  # the header, then its copy (another magic, so a copy found alone is known as one)
MAGIC = b"PLS2"
MAGIC_COPY = b"PLSc"
SEGMENT_BYTES = 16 << 20  # a new segment after this much: consumed ones are deleted whole
_FIRST = 1 << 40  # the first segment's number (16 digits: names sort as numbers)
_SEGMENT = re.compile(r"^(\d{16})\.seg$")
PROGRESS = ("progress.0", "progress.1")
_OWN_FILES = frozenset((*PROGRESS, "progress.tmp"))


def _name(number: int) -> str:
    return f"{number:016d}.seg"


def _header(magic: bytes, size: int, count: int, record_id: int, crc: int) -> bytes:
    head = _HEAD.pack(magic, size, count, record_id, crc)
    return head + _CRC.pack(zlib.crc32(head))


def _parse(buf: bytes, at: int, magic: bytes) -> tuple[int, int, int, int] | None:
    """(payload bytes, entries, record id, payload CRC) of the header at ``at``, when it is intact."""
    if at + HEADER_BYTES > len(buf) or buf[at : at + 4] != magic:
        return None
    if zlib.crc32(buf[at : at + _HEAD.size]) != _CRC.unpack_from(buf, at + _HEAD.size)[0]:
        return None
    _, size, count, record_id, crc = _HEAD.unpack_from(buf, at)
    return size, count, record_id, crc


class SpoolError(Exception):
    """The spool cannot be used (its directory cannot be made or read)."""


class Spool:
    """Batches of entries on disk, first in, first out, bounded by ``max_bytes``."""

    def __init__(self, directory: str, max_bytes: int, log: Logger) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.log = log
        self.made_dirs: list[str] = []  # the directories this spool created (handed over with -u)
        try:
            self.made_dirs = make_private_dirs(directory)
            names = os.listdir(directory)
        except OSError as exc:
            raise SpoolError(f"cannot use spool directory {directory}: {exc.strerror}") from None
        self.segments: list[int] = []  # oldest first
        for name in sorted(names):
            m = _SEGMENT.match(name)
            if m:
                self.segments.append(int(m.group(1)))
            elif name not in _OWN_FILES:
                log.notice(f"spool: {os.path.join(directory, name)} is not a spool file; leaving it alone")
        self.entries = 0  # entries stored and not yet written
        self.bytes = 0  # bytes on disk
        self.lost = 0  # entries of damaged records, passed over
        self.damaged = 0  # unreadable regions (records whose entry count is unknown), passed over
        self.doubt: dict[str, Any] | None = None  # a transaction in doubt at the last stop (an SQL output's)
        self._ends: dict[int, int] = {}  # where each segment's records end (a torn tail is past it)
        self._tail_fd = -1
        self._dirty = False
        self._read_fd = -1
        self._read_segment = -1
        self._record: tuple[int, int, int] | None = None  # (id, entries, payload bytes) of the record at the cursor
        self._progress_seq = 0
        self._saved_state: tuple = ()
        # the next entry to write: segment, offset of its record, index in it
        self._cursor = [-1, 0, 0]
        self._cursor_id = 0
        self._load_progress()
        if self._cursor[0] not in self.segments:
            # its segment was consumed: the position names nothing, and must not name a new one of that number
            self._cursor, self._cursor_id = [-1, 0, 0], 0
        self._highest = max(self.segments, default=_FIRST - 1)  # segment numbers are never used twice
        for number in list(self.segments):
            self._scan(number)

    # -- opening: find what is there, count it ------------------------------------------------

    def _path(self, number: int) -> str:
        return os.path.join(self.directory, _name(number))

    def _load_progress(self) -> None:
        best: dict[str, Any] | None = None
        for slot in PROGRESS:
            path = os.path.join(self.directory, slot)
            try:
                with open(path, "rb") as f:
                    data = f.read(1 << 20)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self.log.error(f"spool: cannot read {path}: {exc.strerror}")
                continue
            record = _decode_progress(data)
            if record is None:
                self.log.error(
                    f"spool: {path} is damaged; using the other copy of the read position "
                    "(the chunk written last before the stop may be written again)"
                )
                continue
            if best is None or record["seq"] > best["seq"]:
                best = record
        if best is not None:
            self._progress_seq = best["seq"]
            self._cursor = [best["segment"], best["offset"], best["index"]]
            self._cursor_id = best["record"]
            self.doubt = best.get("doubt")
            self._saved_state = self._state(self.doubt)

    def _scan(self, number: int) -> None:
        """Count the entries waiting in a segment, from the cursor when it is in this one, walking the
        records exactly as the reader will (so the count can never go wrong)."""
        path = self._path(number)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            self.log.error(f"spool: cannot read {path}: {exc.strerror}; skipping it")
            self.segments.remove(number)
            return
        self.bytes += len(data)
        offset = 0
        if number == self._cursor[0]:
            offset = min(self._cursor[1], len(data))
        end = len(data)
        first = True
        while offset < end:
            found = _record_at(data, offset)
            if found is None:
                nxt = _find_record(data, offset + 1)
                if nxt is None:  # nothing intact after it: a record cut short by a crash while it was appended
                    end = offset
                    break
                offset = nxt
                first = False
                continue
            size, count, record_id, _ = found
            if first and number == self._cursor[0] and record_id == self._cursor_id:
                count = max(0, count - self._cursor[2])
            first = False
            self.entries += count
            offset += RECORD_HEAD + size
        if end < len(data):
            self.log.error(
                f"spool: {path} ends in {len(data) - end} bytes of a record cut short (a crash while it was "
                "stored); passing over them"
            )
        self._ends[number] = end

    # -- writing -------------------------------------------------------------------------------

    def append(self, entries: list) -> int:
        """Store ``entries`` as one record at the end.  Returns how many were stored: 0 when the spool
        is full or the disk refuses; the caller keeps those or counts them as dropped."""
        if not entries:
            return 0
        try:
            payload = marshal.dumps(entries)
        except ValueError as exc:
            self.log.error(f"spool: cannot store entries of this output ({exc})")
            return 0
        record_id = random.getrandbits(64)
        crc = zlib.crc32(payload)
        record = (
            _header(MAGIC, len(payload), len(entries), record_id, crc)
            + _header(MAGIC_COPY, len(payload), len(entries), record_id, crc)
            + payload
        )
        if self.bytes + len(record) > self.max_bytes:
            return 0
        try:
            self._write_tail(record)
        except OSError as exc:
            self.log.every(10, 7, "spool", f"spool: cannot write to {self.directory}: {exc.strerror}")
            return 0
        self.bytes += len(record)
        self.entries += len(entries)
        return len(entries)

    def _write_tail(self, record: bytes) -> None:
        if self._tail_fd < 0 or self._ends[self.segments[-1]] >= SEGMENT_BYTES:
            self._close_tail()
            number = self._highest + 1
            fd = os.open(self._path(number), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            self._tail_fd = fd
            self._highest = number
            self.segments.append(number)
            self._ends[number] = 0
        number = self.segments[-1]
        try:
            _write_whole(self._tail_fd, record)
        except OSError:
            # a record cut short by a full disk: cut it off, so the next one starts where it began
            with contextlib.suppress(OSError):
                os.ftruncate(self._tail_fd, self._ends[number])
            raise
        self._ends[number] += len(record)
        self._dirty = True

    def sync(self) -> None:
        """Make what was appended survive a power loss (called at most a few times a second)."""
        if self._dirty and self._tail_fd >= 0:
            with contextlib.suppress(OSError):
                os.fsync(self._tail_fd)
            self._dirty = False

    def _close_tail(self) -> None:
        if self._tail_fd >= 0:
            self.sync()
            os.close(self._tail_fd)
            self._tail_fd = -1

    # -- reading back --------------------------------------------------------------------------

    def read(self, load: bool = True) -> list | None:
        """The entries from the read position to the end of its record (the oldest not yet written),
        or None when nothing waits.  They stay stored until :meth:`advance` passes them.  ``load``
        False: only move to that record (one just appended, whose entries the caller holds); returns []."""
        entries = self._current(load)
        if entries is None:
            if self.entries:
                self.log.error(f"spool: counted {self.entries} entries that are not there; counting 0")
                self.entries = 0
            return None
        return entries[self._cursor[2] :]

    def position(self) -> list[int] | None:
        """The next entry to write as [record id, index], or None when it is not one read back."""
        record = self._record
        return None if record is None else [record[0], self._cursor[2]]

    def advance(self, n: int) -> None:
        """``n`` entries from the read position are written: pass them (not saved until :meth:`save_progress`)."""
        if n <= 0:
            return
        record = self._record
        assert record is not None and self._cursor[2] + n <= record[1]
        self._cursor[2] += n
        self.entries -= n
        if self._cursor[2] >= record[1]:
            self._next_record()

    def _state(self, doubt: dict[str, Any] | None) -> tuple:
        return (*self._cursor, self._record[0] if self._record is not None else self._cursor_id, repr(doubt))

    def progress_saved(self, doubt: dict[str, Any] | None) -> bool:
        """Whether the progress on disk already says this (the read position has not moved)."""
        return self._state(doubt) == self._saved_state

    def progress(self, doubt: dict[str, Any] | None = None) -> tuple[int, bytes]:
        """The read position and ``doubt`` (a transaction in doubt, or None) as the next progress slot
        holds them: taken while the cursor cannot move, written by :meth:`save_progress` after."""
        self._progress_seq += 1
        self._saved_state = self._state(doubt)
        body = json.dumps(
            {
                "seq": self._progress_seq,
                "segment": self._cursor[0],
                "offset": self._cursor[1],
                "index": self._cursor[2],
                "record": self._record[0] if self._record is not None else self._cursor_id,
                "doubt": doubt,
            }
        ).encode()
        self.doubt = doubt
        return self._progress_seq, body + b"\n" + f"{zlib.crc32(body):08x}\n".encode()

    def save_progress(self, progress: tuple[int, bytes]) -> None:
        """Keep a :meth:`progress` across a crash: its slot is written whole to a temporary file,
        synced, then renamed into place.  Raises OSError."""
        seq, data = progress
        tmp = os.path.join(self.directory, "progress.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                _write_whole(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, os.path.join(self.directory, PROGRESS[seq % 2]))
        except OSError:
            self._saved_state = ()  # not on disk: the next save must not be skipped
            raise

    def _current(self, load: bool) -> list | None:
        """The entries of the record at the cursor, read and checked; damaged records and consumed
        segments are passed over.  None: nothing waits."""
        while True:
            if not self.segments:
                return None
            head = self.segments[0]
            if self._cursor[0] != head:
                self._cursor = [head, 0, 0]
                self._cursor_id = 0
            if self._read_segment != head:
                self._close_reader()
                try:
                    self._read_fd = os.open(self._path(head), os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    self.log.error(f"spool: cannot read {self._path(head)}: {exc.strerror}; skipping it")
                    self._drop_head()
                    continue
                self._read_segment = head
            end = self._ends[head]
            offset = self._cursor[1]
            if offset >= end:
                # consumed, the segment being appended to too: the next append starts a new one, so an
                # empty spool holds no segment
                self._drop_head()
                continue
            entries = self._read_at(head, offset, end, load)
            if entries is not None:
                return entries

    def _read_at(self, head: int, offset: int, end: int, load: bool) -> list | None:
        data = os.pread(self._read_fd, RECORD_HEAD, offset)
        found = _record_at(data, 0, end - offset)
        path = self._path(head)
        if found is None:
            rest = os.pread(self._read_fd, end - offset, offset)
            nxt = _find_record(rest, 1)
            skipped = nxt if nxt is not None else len(rest)
            self.damaged += 1
            self.log.error(
                f"spool: {skipped} unreadable bytes in {path} at byte {offset} (a damaged record: at least "
                f"one, its entries unknown); going on after them ({self.damaged} such since start)"
            )
            self._cursor[1:] = [offset + skipped, 0]
            self._record = None
            return None
        size, count, record_id, crc = found
        index = self._cursor[2] if record_id == self._cursor_id else 0
        if not load:
            self._cursor[2] = index
            self._cursor_id = record_id
            self._record = (record_id, count, size)
            return []
        payload = os.pread(self._read_fd, size, offset + RECORD_HEAD)
        entries = None
        if len(payload) == size and zlib.crc32(payload) == crc:
            with contextlib.suppress(ValueError, EOFError, TypeError):
                entries = marshal.loads(payload)
        if not isinstance(entries, list) or len(entries) != count:
            lost = count - index
            self.lost += lost
            self.entries -= lost
            self.log.error(
                f"spool: damaged record in {path} at byte {offset}; its {lost} entries are lost "
                f"({self.lost} since start)"
            )
            self._cursor[1:] = [offset + RECORD_HEAD + size, 0]
            self._record = None
            return None
        self._cursor[2] = index
        self._cursor_id = record_id
        self._record = (record_id, count, size)
        return entries

    def _next_record(self) -> None:
        """The cursor's record is written: the cursor moves to the record after it."""
        record = self._record
        assert record is not None
        self._record = None
        self._cursor[1:] = [self._cursor[1] + RECORD_HEAD + record[2], 0]
        self._cursor_id = 0

    def _drop_head(self) -> None:
        head = self.segments.pop(0)
        self._close_reader()
        if not self.segments or self.segments[-1] < head:
            self._close_tail()
        path = self._path(head)
        with contextlib.suppress(OSError):
            self.bytes -= os.path.getsize(path)
            os.unlink(path)
        self._ends.pop(head, None)
        if self._cursor[0] == head:
            self._cursor, self._cursor_id = [-1, 0, 0], 0
        if not self.segments:
            self.bytes = 0

    def _close_reader(self) -> None:
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1
        self._read_segment = -1

    def hand_over(self, uid: int, gid: int) -> None:
        """The daemon is about to run as ``uid``: the spool's directories it made and its files become its."""
        paths = [*self.made_dirs, self.directory]
        with contextlib.suppress(OSError):
            paths += [os.path.join(self.directory, n) for n in os.listdir(self.directory)]
        for path in dict.fromkeys(paths):
            with contextlib.suppress(FileNotFoundError):
                os.chown(path, uid, gid, follow_symlinks=False)

    def move(self, directory: str) -> None:
        """Go on in ``directory`` (a reload renamed the stack that owns the spool): the directory is
        renamed, files open stay open.  Raises OSError when it cannot be (one there already, say)."""
        if os.path.lexists(directory):
            raise FileExistsError(17, "a spool directory of that name exists", directory)
        os.rename(self.directory, directory)
        self.directory = directory

    def close(self) -> None:
        self._close_tail()
        self._close_reader()


def make_private_dirs(directory: str) -> list[str]:
    """Make ``directory`` and its missing parents mode 0700, whatever the umask; returns those made."""
    made = []
    path = os.path.abspath(directory)
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        os.chmod(path, 0o700)  # mkdir's mode passes through the umask
        made.append(path)
    return made


def _record_at(buf: bytes, at: int, limit: int | None = None) -> tuple[int, int, int, int] | None:
    """The record whose headers start at ``at``, from its header or, if that is damaged, its copy;
    None when neither is intact or the record would end past ``limit`` bytes from ``at``."""
    found = _parse(buf, at, MAGIC) or _parse(buf, at + HEADER_BYTES, MAGIC_COPY)
    if found is None:
        return None
    if limit is None:
        limit = len(buf) - at
    return found if RECORD_HEAD + found[0] <= limit else None


def _find_record(buf: bytes, start: int) -> int | None:
    """Where the next record with an intact header (or header copy) begins at or after ``start``."""
    at = start
    while True:
        a = buf.find(MAGIC, at)
        c = buf.find(MAGIC_COPY, max(at, start + HEADER_BYTES))
        candidates = [(a, 0)] if a >= 0 else []
        if c >= 0:
            candidates.append((c - HEADER_BYTES, 1))
        if not candidates:
            return None
        begin, which = min(candidates)
        magic = MAGIC if which == 0 else MAGIC_COPY
        if begin >= start and _parse(buf, begin + which * HEADER_BYTES, magic) is not None:
            return begin
        at = begin + which * HEADER_BYTES + 1


def _decode_progress(data: bytes) -> dict[str, Any] | None:
    """A progress slot's record, or None when it is damaged (its CRC, its fields)."""
    body, _, rest = data.partition(b"\n")
    try:
        if int(rest.strip(), 16) != zlib.crc32(body):
            return None
        record = json.loads(body)
    except ValueError:
        return None
    fields = ("seq", "segment", "offset", "index", "record")
    if not isinstance(record, dict) or not all(type(record.get(k)) is int and record[k] >= -1 for k in fields):
        return None
    doubt = record.get("doubt")
    if doubt is not None and not isinstance(doubt, dict):
        return None
    return record


def _write_whole(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
