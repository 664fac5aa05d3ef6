"""Text files: write_all loses or repeats nothing when a write fails; LOGEMU's line bytes."""

from __future__ import annotations

import errno
import os

import pytest
from pylogd.plugins.outputs.logemu import LogEmu

from pylogd import files
from pylogd.log import Logger
from pylogd.plugin import Slots


def test_a_failed_write_keeps_exactly_what_did_not_go_out(tmp_path, monkeypatch) -> None:
    entries = [b"first line\n", "s\u00e9cond\n".encode(), b"third\n"]
    path = tmp_path / "out.log"
    fd = files.open_append(str(path))
    expected = b"".join(entries)
    real_write = os.write
    calls = []

    def disk_fills_up(fd: int, data) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:13]))  # a short write, inside the second line
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "write", disk_fills_up)
    kept = list(entries)
    with pytest.raises(OSError):
        files.write_all(fd, kept)
    monkeypatch.setattr(files.os, "write", real_write)
    assert b"".join(kept) == expected[13:]  # the rest of the second line, and the third
    files.write_all(fd, kept)  # the retry
    os.close(fd)
    assert path.read_bytes() == expected


def test_logemu_line_bytes_keep_undecodable_prefix_bytes() -> None:
    """A prefix that is not UTF-8 reaches PRINTPKT as surrogate escapes; LOGEMU writes the bytes back."""
    plugin = LogEmu("emu1", {o.name: o.default for o in LogEmu.spec.options}, Logger("emu1"))
    plugin.hostname = "fw"
    convert = plugin.handler(Slots({"print": 0, "oob.time.sec": 1}, {}, size=2))
    assert convert(["plain\n", 0]).endswith(b" fw plain\n")
    assert convert(["caf\u00e9 \udcff\n", 0]).endswith(b" fw caf\xc3\xa9 \xff\n")
