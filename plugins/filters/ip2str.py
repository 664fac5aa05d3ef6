"""IP2STR: IP addresses as text (``10.77.0.2``, ``fd77::2``), for PRINTPKT, PRINTFLOW, JSON and SQL.

For each valid address input ``X`` it sets ``X.str``: ``inet_ntop`` formatting, so IPv6 is
compressed and lowercase.

Differences from ulogd 2.0.8
----------------------------
* The address family is taken from the value itself (4 bytes IPv4, 16 bytes IPv6) instead of
  from oob.family/oob.protocol. ulogd fails the whole event ("Unknown protocol family",
  "Unknown protocol inside AF_BRIDGE packet") when it sees a valid address in a family it
  cannot tell; pylogd formats the address. oob.family and oob.protocol stay mandatory inputs
  so that the same stacks resolve (or fail) as in ulogd.
* arp.saddr.str and arp.daddr.str are real addresses (ulogd's BASE stored pointers there, so
  ulogd printed garbage), and there is no shared static buffer to overflow.
* A value of any other length is left out (its ``.str`` key stays invalid) rather than printed.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from pylogd.keys import KeyType
from pylogd.plugin import Filter, Kind, PluginSpec, Slots, key

#: (input key, output key, JSON name)
ADDRESS_KEYS = (
    ("ip.saddr", "ip.saddr.str", "src_ip"),
    ("ip.daddr", "ip.daddr.str", "dest_ip"),
    ("orig.ip.saddr", "orig.ip.saddr.str", "src_ip"),
    ("orig.ip.daddr", "orig.ip.daddr.str", "dest_ip"),
    ("reply.ip.saddr", "reply.ip.saddr.str", None),
    ("reply.ip.daddr", "reply.ip.daddr.str", None),
    ("arp.saddr", "arp.saddr.str", None),
    ("arp.daddr", "arp.daddr.str", None),
)


#: address bytes -> text; traffic repeats a few addresses, and a lookup is 5 times cheaper than inet_ntop
_CACHE: dict[bytes, str] = {}
_CACHE_LIMIT = 4096
_ntop, _AF_INET, _AF_INET6 = socket.inet_ntop, socket.AF_INET, socket.AF_INET6


def address_text(address: bytes) -> str | None:
    """inet_ntop by length (4 IPv4, 16 IPv6), remembered in the cache; None for other lengths."""
    n = len(address)
    if n == 4:
        text = _ntop(_AF_INET, address)
    elif n == 16:
        text = _ntop(_AF_INET6, address)
    else:
        return None
    if type(address) is bytes:  # only immutable keys: a view's buffer may be reused for the next packet
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.clear()
        _CACHE[address] = text
    return text


class IP2Str(Filter):
    spec = PluginSpec(
        name="IP2STR",
        kind=Kind.FILTER,
        help="Converts IPv4 and IPv6 addresses to their text form (dotted quad, compressed IPv6).",
        inputs=(
            key("oob.family", KeyType.UINT8, "address family of the event"),
            key("oob.protocol", KeyType.UINT16, "ethertype, for bridge-family packets"),
            *(key(i, KeyType.IPADDR, f"address to convert to {o}", optional=True) for i, o, _ in ADDRESS_KEYS),
        ),
        outputs=tuple(key(o, KeyType.STRING, f"{i} as text", cim=c) for i, o, c in ADDRESS_KEYS),
    )

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        resolved = [(slots.inp(i), slots.out(o)) for i, o, _ in ADDRESS_KEYS]
        si, so = resolved[0]
        di, do = resolved[1]
        if si is None or di is None:
            pairs = tuple((i, o) for i, o in resolved if i is not None)
            si = di = None
        else:
            pairs = tuple((i, o) for i, o in resolved[2:] if i is not None)
        get = _CACHE.get

        def convert_pairs(v: list) -> None:
            for i, o in pairs:
                a = v[i]
                if a is not None:
                    try:
                        v[o] = get(a) or address_text(a)
                    except (TypeError, ValueError):  # unhashable (a writable memoryview): no cache
                        v[o] = address_text(bytes(a))

        if si is None:
            return convert_pairs

        def ip2str_packet(v: list) -> None:
            # ip.saddr and ip.daddr, valid in nearly every packet, inline; the others in a short loop
            try:
                a = v[si]
                if a is not None:
                    v[so] = get(a) or address_text(a)
                a = v[di]
                if a is not None:
                    v[do] = get(a) or address_text(a)
            except (TypeError, ValueError):
                for i, o in ((si, so), (di, do)):
                    a = v[i]
                    if a is not None:
                        v[o] = address_text(bytes(a))
            if pairs:
                convert_pairs(v)

        return ip2str_packet
