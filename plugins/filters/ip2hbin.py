"""IP2HBIN: IPv4 addresses in host byte order, the answer to the "MySQL byte order" complaint.

ulogd keeps an IPADDR as a 32-bit integer whose memory holds the address in network order, and
its SQL outputs store that integer as it lies in (little-endian x86) memory: 127.0.0.1 becomes
16777343. IP2HBIN's keys hold the byte-swapped integer, so the same outputs store
a*2^24 + b*2^16 + c*2^8 + d (127.0.0.1 -> 2130706433).

pylogd's IPADDR values are the address's in-memory bytes, so an output that turns an IPADDR into
an integer the way ulogd does (``int.from_bytes(value, "little")``) gives 16777343 for ip.saddr
and 2130706433 for ip.hsaddr: IP2HBIN's value is the 4 address bytes reversed. An IPv6 address
(16 bytes) is passed through unchanged.

Differences from ulogd 2.0.8
----------------------------
* reply.ip.hdaddr is produced (ulogd's loop stops one key early and never sets it).
* IPv6 addresses are passed through as their 16 bytes; ulogd 2.0.8 stored a pointer (garbage
  downstream). Later ulogd releases do the same as pylogd.
* The address family is taken from the value (4 or 16 bytes) rather than from
  oob.family/oob.protocol, so an event is never failed for an unknown family; values of any
  other length are left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pylogd.keys import KeyType
from pylogd.plugin import Filter, Kind, PluginSpec, Slots, key

#: (input key, output key)
ADDRESS_KEYS = (
    ("ip.saddr", "ip.hsaddr"),
    ("ip.daddr", "ip.hdaddr"),
    ("orig.ip.saddr", "orig.ip.hsaddr"),
    ("orig.ip.daddr", "orig.ip.hdaddr"),
    ("reply.ip.saddr", "reply.ip.hsaddr"),
    ("reply.ip.daddr", "reply.ip.hdaddr"),
)


class IP2HBin(Filter):
    spec = PluginSpec(
        name="IP2HBIN",
        kind=Kind.FILTER,
        help="Converts IPv4 addresses to host byte order, so SQL outputs store them as a*2^24+b*2^16+c*2^8+d; "
        "IPv6 addresses pass through unchanged.",
        inputs=(
            key("oob.family", KeyType.UINT8, "address family of the event"),
            key("oob.protocol", KeyType.UINT16, "ethertype, for bridge-family packets"),
            *(key(i, KeyType.IPADDR, f"address to convert to {o}", optional=True) for i, o in ADDRESS_KEYS),
        ),
        outputs=tuple(key(o, KeyType.IPADDR, f"{i} in host byte order") for i, o in ADDRESS_KEYS),
    )

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        pairs = tuple((i, slots.out(o)) for name, o in ADDRESS_KEYS if (i := slots.inp(name)) is not None)

        def ip2hbin(v: list) -> None:
            for i, o in pairs:
                a = v[i]
                if a is not None:
                    n = len(a)
                    if n == 4:
                        v[o] = bytes(a[::-1])
                    elif n == 16:
                        v[o] = bytes(a)

        return ip2hbin
