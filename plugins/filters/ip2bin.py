"""IP2BIN: IP addresses as MySQL binary(16) literals, for the shipped MySQL schema.

Each valid address ``X`` gives ``X.bin`` = ``0x`` followed by the 32 lowercase hex digits of
the 16-byte address; an IPv4 address is mapped to ``::ffff:a.b.c.d``
(10.77.0.2 -> ``0x00000000000000000000ffff0a4d0002``). The type is RAWSTR: SQL outputs splice
the value into the statement unquoted.

Differences from ulogd 2.0.8
----------------------------
* reply.ip.daddr.bin is produced (ulogd's loop stops one key early and never sets it).
* The address family is taken from the value (4 or 16 bytes) rather than from
  oob.family/oob.protocol, so an event is never failed for an unknown family; values of any
  other length are left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pylogd.keys import KeyType
from pylogd.plugin import Filter, Kind, PluginSpec, Slots, key

ADDRESS_KEYS = ("ip.saddr", "ip.daddr", "orig.ip.saddr", "orig.ip.daddr", "reply.ip.saddr", "reply.ip.daddr")

_V4_MAPPED = "0x00000000000000000000ffff"


def to_bin(address: bytes) -> str | None:
    """The binary(16) literal of a 4- or 16-byte address, or None for any other length."""
    n = len(address)
    if n == 4:
        return _V4_MAPPED + address.hex()
    if n == 16:
        return "0x" + address.hex()
    return None


class IP2Bin(Filter):
    spec = PluginSpec(
        name="IP2BIN",
        kind=Kind.FILTER,
        help="Converts IP addresses to 0x-prefixed 16-byte hex literals (IPv4 as ::ffff:a.b.c.d) "
        "for binary(16) database columns.",
        inputs=(
            key("oob.family", KeyType.UINT8, "address family of the event"),
            key("oob.protocol", KeyType.UINT16, "ethertype, for bridge-family packets"),
            *(key(name, KeyType.IPADDR, f"address to convert to {name}.bin", optional=True) for name in ADDRESS_KEYS),
        ),
        outputs=tuple(key(f"{name}.bin", KeyType.RAWSTR, f"{name} as a binary(16) literal") for name in ADDRESS_KEYS),
    )

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        pairs = tuple((i, slots.out(f"{name}.bin")) for name in ADDRESS_KEYS if (i := slots.inp(name)) is not None)
        v4 = _V4_MAPPED

        def ip2bin(v: list) -> None:
            for i, o in pairs:
                a = v[i]
                if a is not None:
                    n = len(a)
                    if n == 4:
                        v[o] = v4 + a.hex()
                    elif n == 16:
                        v[o] = "0x" + a.hex()

        return ip2bin
