"""An output's on-disk spool: what does not fit the memory backlog while writes fail, kept in order.

A spool is a directory of segment files.  Each record is one batch of entries: a header
(payload length, CRC-32 of the payload, entry count) and the entries serialised with
:mod:`marshal` (entries are bytes, str, or tuples of plain values; marshal reads them faster
than pickle and cannot run code).  Records are appended to the newest segment; the reader
takes them back from the oldest, and a segment is deleted once all its entries are written.
The read position is kept in a small cursor file, replaced atomically, so a restart resumes
where the output stopped: across a clean restart every entry is written once; after a crash at
most the record being written at that moment is written again.

Why segment files and not SQLite: appending a record is one write() of bytes that are already
serialised, and reading one back is one read(); a record is never updated in place, so there is
nothing for a database to do, and a half-written tail after a crash is found by its length and
CRC and cut off.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import struct
import zlib

from .log import Logger

HEADER = struct.Struct("<III")  # payload bytes, CRC-32 of the payload, entries
SEGMENT_BYTES = 16 << 20  # a new segment after this much: consumed ones are deleted whole
_FIRST = 1 << 40  # segment numbers start high, so a spill at exit can go before the oldest
_CURSOR = "cursor"


def _name(number: int) -> str:
    return f"{number:016d}.seg"


class SpoolError(Exception):
    """The spool cannot be used (its directory cannot be made or read)."""


class Spool:
    """Batches of entries on disk, first in, first out, bounded by ``max_bytes``."""

    def __init__(self, directory: str, max_bytes: int, log: Logger) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.log = log
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            names = sorted(n for n in os.listdir(directory) if n.endswith(".seg"))
        except OSError as exc:
            raise SpoolError(f"cannot use spool directory {directory}: {exc.strerror}") from None
        self.segments: list[int] = [int(n[:-4]) for n in names]  # oldest first
        self.entries = 0  # entries stored and not yet taken back
        self.bytes = 0  # bytes on disk
        self.lost = 0  # entries in damaged records, skipped
        self._tail_fd = -1
        self._dirty = False
        self._read_fd = -1
        self._read_segment = -1
        self._read_offset = 0
        self._taken: tuple[int, int] | None = None  # the position after the last record read()
        # where reading resumes in the segment it names: records before it there are written already.
        # Kept by segment, not as "the head": a spill at exit may put a new segment before it.
        self._cursor = self._load_cursor()
        for number in list(self.segments):
            self._scan(number, self._cursor[1] if number == self._cursor[0] else 0)

    # -- opening: count what is there, cut a torn tail ---------------------------------------

    def _path(self, number: int) -> str:
        return os.path.join(self.directory, _name(number))

    def _load_cursor(self) -> tuple[int, int]:
        try:
            with open(os.path.join(self.directory, _CURSOR)) as f:
                segment, offset = f.read().split()
            return int(segment), int(offset)
        except (OSError, ValueError):
            return -1, 0

    def _scan(self, number: int, start: int) -> None:
        path = self._path(number)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            self.log.error(f"spool: cannot read {path}: {exc.strerror}; skipping it")
            self.segments.remove(number)
            return
        offset = 0
        while offset + HEADER.size <= len(data):
            size, _crc, count = HEADER.unpack_from(data, offset)
            if offset + HEADER.size + size > len(data):
                break
            if offset >= start:
                self.entries += count
            offset += HEADER.size + size
        if offset < len(data):  # a record cut short by a crash: its entries were never complete
            self.log.error(f"spool: {path} ends in a torn record at byte {offset}; cutting it off")
            with open(path, "r+b") as f:
                f.truncate(offset)
        self.bytes += offset

    # -- writing -------------------------------------------------------------------------------

    def append(self, entries: list, first: bool = False) -> int:
        """Store ``entries`` as one record at the end (``first``: before everything stored, for the
        memory backlog at exit).  Returns how many were stored: 0 when the spool is full or the
        disk refuses; the caller counts those as dropped."""
        if not entries:
            return 0
        try:
            payload = marshal.dumps(entries)
        except ValueError as exc:
            self.log.error(f"spool: cannot store entries of this output ({exc})")
            return 0
        record = HEADER.pack(len(payload), zlib.crc32(payload), len(entries)) + payload
        if self.bytes + len(record) > self.max_bytes:
            return 0
        try:
            if first:
                self._write_first(record)
            else:
                self._write_tail(record)
        except OSError as exc:
            self.log.every(10, 7, "spool", f"spool: cannot write to {self.directory}: {exc.strerror}")
            return 0
        self.bytes += len(record)
        self.entries += len(entries)
        return len(entries)

    def _write_tail(self, record: bytes) -> None:
        if self._tail_fd < 0 or os.fstat(self._tail_fd).st_size >= SEGMENT_BYTES:
            self._close_tail()
            number = self.segments[-1] + 1 if self.segments else _FIRST
            self._tail_fd = os.open(self._path(number), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self.segments.append(number)
        _write_whole(self._tail_fd, record)
        self._dirty = True

    def _write_first(self, record: bytes) -> None:
        number = self.segments[0] - 1 if self.segments else _FIRST
        fd = os.open(self._path(number), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _write_whole(fd, record)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.segments.insert(0, number)

    def sync(self) -> None:
        """Make what was appended survive a crash (called at batch boundaries, at most a few times a second)."""
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

    def read(self) -> list | None:
        """The oldest record's entries, or None when nothing is stored.  They stay stored until
        :meth:`commit`: read() again without a commit gives the next record."""
        while self.segments:
            head = self.segments[0]
            if self._read_segment != head:
                self._close_reader()
                self._read_segment = head
                self._read_offset = self._cursor[1] if self._cursor[0] == head else 0
            if self._read_fd < 0:
                try:
                    self._read_fd = os.open(self._path(head), os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    self.log.error(f"spool: cannot read {self._path(head)}: {exc.strerror}; skipping it")
                    self._drop_head()
                    continue
            header = os.pread(self._read_fd, HEADER.size, self._read_offset)
            if len(header) < HEADER.size:
                if head == self.segments[-1] and self._tail_fd >= 0:
                    return None  # the tail being written: nothing more yet
                self._drop_head()
                continue
            size, crc, count = HEADER.unpack(header)
            payload = os.pread(self._read_fd, size, self._read_offset + HEADER.size)
            self._read_offset += HEADER.size + size
            if len(payload) == size and zlib.crc32(payload) == crc:
                with contextlib.suppress(ValueError, EOFError, TypeError):
                    entries = marshal.loads(payload)
                    self._taken = (head, self._read_offset)
                    self.entries -= count
                    return entries
            self.lost += count
            self.entries -= count
            self.log.error(
                f"spool: damaged record in {self._path(head)} at byte {self._read_offset - HEADER.size - size}; "
                f"its {count} entries are lost"
            )
            if len(payload) < size:
                self._drop_head()
        return None

    def commit(self) -> None:
        """The entries of the last read() are written: remember that across a restart."""
        if self._taken is None:
            return
        segment, offset = self._taken
        self._taken = None
        size = os.fstat(self._read_fd).st_size if self._read_fd >= 0 else 0
        if offset >= size:  # the segment is consumed; if it is the one being appended to, the next append starts anew
            if segment == self.segments[-1]:
                self._close_tail()
            self._drop_head()
            return
        self._cursor = (segment, offset)
        tmp = os.path.join(self.directory, _CURSOR + ".tmp")
        with contextlib.suppress(OSError):
            with open(tmp, "w") as f:
                f.write(f"{segment} {offset}\n")
            os.replace(tmp, os.path.join(self.directory, _CURSOR))

    def _drop_head(self) -> None:
        head = self.segments.pop(0)
        self._close_reader()
        if not self.segments or self.segments[-1] < head:
            self._close_tail()
        path = self._path(head)
        with contextlib.suppress(OSError):
            self.bytes -= os.path.getsize(path)
            os.unlink(path)
        if self._cursor[0] == head:
            self._cursor = (-1, 0)
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.directory, _CURSOR))
        if not self.segments:
            self.bytes = 0

    def _close_reader(self) -> None:
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1
        self._read_segment, self._read_offset = -1, 0

    def close(self) -> None:
        self._close_tail()
        self._close_reader()


def _write_whole(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
