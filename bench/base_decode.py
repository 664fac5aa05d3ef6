"""Micro-benchmark of BASE: microseconds per decoded packet, the handler alone.

The record is laid out as a stack lays it out (NFLOG's four keys first, BASE's outputs after) and
raw.pkt is a memoryview into a larger receive buffer, as the NFLOG input hands it over.
Run: .venv/bin/python bench/base_decode.py
"""

from __future__ import annotations

import timeit

from pylogd.plugins.filters.base import Base

from pylogd.log import Logger
from pylogd.plugin import Slots

PACKETS = {
    # 10.77.0.2:34358 -> 10.77.0.1:2222, SYN with MSS, SACK-permitted, timestamps, NOP, window scale
    "IPv4 TCP SYN": (
        2,
        0x0800,
        "4500003cd4314000400651ee0a4d00020a4d0001863608ae1234567800000000a002faf040e10000020405b40402080a"
        "000000010000000001030307",
    ),
    # 10.77.0.2:40000 -> 10.77.0.1:53, 32 bytes of payload
    "IPv4 UDP": (
        2,
        0x0800,
        "4500003c10920000401155830a4d00020a4d00019c400035002837757171717171717171717171717171717171717171"
        "717171717171717171717171",
    ),
    # fd77::2 -> fd77::1, SYN with MSS
    "IPv6 TCP SYN": (
        10,
        0x86DD,
        "6000000000180640fd770000000000000000000000000002fd770000000000000000000000000001863608ae00000000"
        "0000000060022000ee630000020405a0",
    ),
}


def make_decoder() -> tuple[list, object]:
    spec = Base.spec
    inputs = {k.name: i for i, k in enumerate(spec.inputs)}
    outputs = {k.name: len(inputs) + i for i, k in enumerate(spec.outputs)}
    size = len(inputs) + len(outputs)
    handler = Base("base1", {}, Logger("bench")).handler(Slots(inputs, outputs, size=size))
    return [None] * size, handler


def main() -> None:
    record, handler = make_decoder()
    blank = [None] * len(record)
    number = 200_000
    for name, (family, proto, hexdata) in PACKETS.items():
        data = bytes.fromhex(hexdata)
        buffer = bytearray(64) + data + bytearray(64)
        record[:4] = [memoryview(buffer)[64 : 64 + len(data)], len(data), family, proto]
        env = {"handler": handler, "record": record, "blank": blank}
        best = min(timeit.repeat("handler(record)", number=number, repeat=5, globals=env))
        keys = sum(v is not None for v in record[4:])
        # the core clears the whole record after each event; the inputs are put back here
        clear = "handler(record); inputs = record[:4]; record[:] = blank; record[:4] = inputs"
        best_clear = min(timeit.repeat(clear, number=number, repeat=5, globals=env))
        print(
            f"{name:14s} {best / number * 1e6:6.2f} us/decode ({keys} keys set); "
            f"{best_clear / number * 1e6:6.2f} us with the record cleared and refilled"
        )


if __name__ == "__main__":
    main()
