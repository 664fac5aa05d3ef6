"""pylogd.files.write_all: one write per batch, nothing lost or repeated when a write fails."""

from __future__ import annotations

import errno
import os

import pytest

from pylogd import files


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
