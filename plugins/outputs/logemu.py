"""LOGEMU: syslog-style text lines in a file, as ulogd writes them."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from pylogd.keys import KeyType
from pylogd.loop import EventLoop
from pylogd.plugin import Kind, Output, PluginSpec, Slots, int_option, key, str_option


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


class LogEmu(Output):
    spec = PluginSpec(
        name="LOGEMU",
        kind=Kind.OUTPUT,
        help="Writes the `print` line of PRINTPKT or PRINTFLOW to a file, prefixed with the date and host name "
        "like syslog does (ulogd's syslog emulator).",
        options=(
            str_option("file", "/var/log/ulogd_syslogemu.log", "file to append the lines to"),
            int_option(
                "sync",
                0,
                "accepted for ulogd compatibility: pylogd always writes each batch of lines with one write()",
                min=0,
            ),
        ),
        inputs=(
            key("print", KeyType.STRING, "the line to write"),
            key("oob.time.sec", KeyType.UINT32, "packet time; the current time when absent", optional=True),
        ),
        section_required=True,
    )

    fd: int = -1

    def start(self, loop: EventLoop) -> None:
        self.hostname = socket.gethostname().split(".")[0]
        self.fd = open_append(self.options["file"])

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

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        i_print = slots.inp("print")
        i_sec = slots.inp("oob.time.sec")
        host = f" {self.hostname} "
        localtime, strftime, now = time.localtime, time.strftime, time.time
        cache = [-1, ""]  # the date prefix changes once a second

        def convert(v: list) -> bytes | None:
            line = v[i_print]
            if line is None:
                return None
            sec = v[i_sec] if i_sec is not None else None
            if sec is None:
                sec = int(now())
            if sec != cache[0]:
                cache[0], cache[1] = sec, strftime("%b %e %H:%M:%S", localtime(sec)) + host
            return (cache[1] + line).encode("utf-8", "surrogateescape")

        return convert

    def write(self, entries: list) -> None:
        write_all(self.fd, entries)
