"""Append-only log files for outputs: one write() per batch, reopened on SIGHUP, nothing lost on a full disk."""

from __future__ import annotations

import contextlib
import os

from .config import INT_MAX
from .loop import EventLoop
from .plugin import Option, Output, int_option


def open_append(path: str) -> int:
    """An append-only descriptor for a log file: each batch is one write() at the end of the file."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def write_all(fd: int, entries: list[bytes]) -> None:
    """Write the entries; on failure remove the ones written so a retry neither loses nor repeats a line."""
    data = memoryview(b"".join(entries))
    done = 0
    try:
        while done < len(data):
            done += os.write(fd, data[done:])
    except OSError:
        written = 0
        while entries and written + len(entries[0]) <= done:
            written += len(entries.pop(0))
        if entries and done > written:  # half a line is out: keep the other half
            entries[0] = entries[0][done - written :]
        raise


def sync_option(what: str = "lines") -> Option:
    return int_option(
        "sync",
        0,
        f"accepted for ulogd compatibility: pylogd always writes each batch of {what} with one write()",
        min=0,
        max=INT_MAX,
    )


class FileOutput(Output):
    """An output whose entries are bytes appended to the file named by its ``file`` option."""

    fd: int = -1
    created = False  # start() made the file: a refused start-up removes it again while it is empty

    def start(self, loop: EventLoop) -> None:
        self.created = not os.path.exists(self.options["file"])
        self.fd = open_append(self.options["file"])

    def abort(self) -> None:
        fd = self.fd
        self.stop()
        if self.created and fd >= 0:
            path = self.options["file"]
            with contextlib.suppress(OSError):
                if os.path.getsize(path) == 0:
                    os.unlink(path)

    def reopen(self) -> None:
        try:
            fd = open_append(self.options["file"])
        except OSError as exc:
            self.log.error(f"cannot reopen {self.options['file']}: {exc.strerror}; still writing to the old file")
            return
        os.close(self.fd)
        self.fd = fd
        self.log.notice(f"reopened {self.options['file']}")

    def stop(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def write(self, entries: list) -> None:
        write_all(self.fd, entries)
