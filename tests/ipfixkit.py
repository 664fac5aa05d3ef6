"""A small IPFIX / NetFlow v9 reader for the tests: it learns templates from the messages it reads,
as a collector does, and knows nothing of pylogd's templates."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

ADDRESSES = {8, 12, 27, 28, 225, 226, 281, 282}


@dataclass
class Decoded:
    version: int
    domain: int
    sequence: int
    export_time: int
    count: int  # v9's header count; IPFIX: 0
    templates: list[int] = field(default_factory=list)
    records: list[dict[int, object]] = field(default_factory=list)
    #: data sets whose template was not known (yet)
    unknown_sets: list[int] = field(default_factory=list)
    length: int = 0


class Reader:
    def __init__(self) -> None:
        self.templates: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def read(self, data: bytes) -> Decoded:
        version = struct.unpack_from(">H", data)[0]
        if version == 10:
            _, length, when, seq, domain = struct.unpack_from(">HHIII", data)
            assert length == len(data), (length, len(data))
            out = Decoded(10, domain, seq, when, 0, length=length)
            offset = 16
        elif version == 9:
            _, count, _uptime, when, seq, domain = struct.unpack_from(">HHIIII", data)
            out = Decoded(9, domain, seq, when, count, length=len(data))
            offset = 20
        else:
            raise AssertionError(f"version {version}")
        template_set, options_set = (2, 3) if version == 10 else (0, 1)
        while offset < len(data):
            set_id, set_len = struct.unpack_from(">HH", data, offset)
            assert set_len >= 4 and offset + set_len <= len(data), (set_id, set_len, offset, len(data))
            body = data[offset + 4 : offset + set_len]
            offset += set_len
            if set_id == template_set:
                self._templates(domain, body, out, options=False)
            elif set_id == options_set:
                self._templates(domain, body, out, options=True)
            else:
                fields = self.templates.get((domain, set_id))
                if fields is None:
                    out.unknown_sets.append(set_id)
                    continue
                size = sum(length for _, length in fields)
                pos = 0
                while pos + size <= len(body):
                    rec: dict[int, object] = {"template": set_id}  # type: ignore[dict-item]
                    for ie, length in fields:
                        raw = body[pos : pos + length]
                        pos += length
                        rec[ie] = (
                            socket.inet_ntop(socket.AF_INET if length == 4 else socket.AF_INET6, raw)
                            if (ie in ADDRESSES)
                            else int.from_bytes(raw, "big")
                        )
                    out.records.append(rec)
                assert len(body) - pos < 4, f"{len(body) - pos} bytes left over in a set of template {set_id}"
        return out

    def _templates(self, domain: int, body: bytes, out: Decoded, options: bool) -> None:
        pos = 0
        v9 = out.version == 9
        while pos + 4 <= len(body):
            if options and v9:
                tid, scope_len, option_len = struct.unpack_from(">HHH", body, pos)
                pos += 6
                n = (scope_len + option_len) // 4
            elif options:
                tid, n, _scope = struct.unpack_from(">HHH", body, pos)
                pos += 6
            else:
                tid, n = struct.unpack_from(">HH", body, pos)
                pos += 4
            fields = []
            for _ in range(n):
                ie, length = struct.unpack_from(">HH", body, pos)
                pos += 4
                fields.append((ie, length))
            self.templates[(domain, tid)] = fields
            out.templates.append(tid)
