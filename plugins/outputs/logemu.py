"""LOGEMU: syslog-style text lines in a file, as ulogd writes them.

Each line is the date (``%b %e %H:%M:%S`` of ``oob.time.sec``, else of now), the host name up to its
first dot, and PRINTPKT's or PRINTFLOW's ``print``, as ulogd 2.0.8 writes it.

Differences from ulogd 2.0.8
----------------------------
* Lines are written a batch at a time, one write() each, whatever ``sync`` says (accepted for
  compatibility); ulogd went through stdio, so without ``sync=1`` its last lines waited in a buffer.
* A failed write (a full disk) loses nothing: the lines wait in the stack's bounded backlog and the
  write is retried; ulogd dropped them without a word.
* A symlink in place of the file is followed only when it is trusted (owned by root, by the daemon's
  user, or by the directory's owner where no one else could have replaced it); ulogd followed any, so
  a link planted in a shared directory made it append to any file.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from pylogd.files import FileOutput, sync_option
from pylogd.keys import KeyType
from pylogd.loop import EventLoop
from pylogd.plugin import Kind, PluginSpec, Slots, key, path_option


class LogEmu(FileOutput):
    spec = PluginSpec(
        name="LOGEMU",
        kind=Kind.OUTPUT,
        help="Writes the `print` line of PRINTPKT or PRINTFLOW to a file, prefixed with the date and host name "
        "like syslog does (ulogd's syslog emulator).",
        options=(
            path_option("file", "/var/log/ulogd_syslogemu.log", "file to append the lines to"),
            sync_option(),
        ),
        inputs=(
            key("print", KeyType.STRING, "the line to write"),
            key("oob.time.sec", KeyType.UINT32, "packet time; the current time when absent", optional=True),
        ),
        section_required=True,
    )

    def start(self, loop: EventLoop) -> None:
        self.hostname = socket.gethostname().split(".")[0]
        super().start(loop)

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
            text = cache[1] + line
            try:
                return text.encode()  # without arguments: measurably faster
            except UnicodeEncodeError:  # a prefix that was not UTF-8, kept as surrogate escapes
                return text.encode("utf-8", "surrogateescape")

        return convert
