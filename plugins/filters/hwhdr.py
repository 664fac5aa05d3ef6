"""HWHDR: the link-layer header as text (MAC addresses, the whole header), and its type.

Per event:

1. oob.protocol is passed through when valid.
2. If raw.mac.saddr (the hardware source address NFLOG reports) is valid, mac.saddr.str is that
   address as ``xx:xx:..`` and raw.type becomes 65535 (ARPHRD_VOID) for now.
3. If raw.mac (the header) is valid, raw.type is set to the input raw.type, or when that is
   missing to 1 (ethernet) for a 14-byte header, else 65535. For ethernet, mac.daddr.str is
   header bytes 0-5, mac.saddr.str header bytes 6-11 (unless step 2 set it already) and
   oob.protocol becomes the header's ethertype. mac.str is the whole header colon-joined.

Loopback (raw.type 772) gets mac.str and, from raw.mac.saddr, mac.saddr.str, but no
mac.daddr.str. Locally generated packets have no header: only oob.protocol is set.

Differences from ulogd 2.0.8
----------------------------
* Headers and addresses longer than 42 bytes are converted; ulogd fails the event because its
  128-byte string buffer would overflow.
* A header without raw.mac_len (or an address without raw.mac.addrlen) uses the length of the
  value itself; ulogd fails the event. With a length key, the value is cut to that length.
* An ethernet-typed header shorter than 14 bytes gives mac.str only; ulogd reads past its end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pylogd.keys import KeyType
from pylogd.plugin import Filter, Kind, PluginSpec, Slots, key

ARPHRD_ETHER = 1
ARPHRD_VOID = 65535
ETH_HLEN = 14


class HwHdr(Filter):
    spec = PluginSpec(
        name="HWHDR",
        kind=Kind.FILTER,
        help="Converts the hardware header to text: source and destination MAC addresses of ethernet frames and "
        "the whole header, and sets raw.type and oob.protocol from it.",
        inputs=(
            key("raw.type", KeyType.UINT16, "hardware type (ARPHRD_*)", optional=True),
            key("oob.protocol", KeyType.UINT16, "ethertype reported by the kernel"),
            key("raw.mac", KeyType.RAW, "the link-layer header", optional=True),
            key("raw.mac_len", KeyType.UINT16, "length of the link-layer header", optional=True),
            key("raw.mac.saddr", KeyType.RAW, "hardware source address", optional=True),
            key("raw.mac.addrlen", KeyType.UINT16, "length of the hardware source address", optional=True),
        ),
        outputs=(
            key("raw.type", KeyType.UINT16, "hardware type: 1 ethernet, 772 loopback, 65535 unknown"),
            key("oob.protocol", KeyType.UINT16, "ethertype, from the ethernet header when there is one"),
            key("mac.saddr.str", KeyType.STRING, "source MAC address, xx:xx:xx:xx:xx:xx"),
            key("mac.daddr.str", KeyType.STRING, "destination MAC address (ethernet only)"),
            key("mac.str", KeyType.STRING, "the whole link-layer header, colon-separated hex bytes"),
        ),
    )

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        i_type, i_proto, i_mac, i_maclen, i_saddr, i_addrlen = (slots.inp(k.name) for k in self.spec.inputs)
        o_type, o_proto, o_saddr, o_daddr, o_mac = (slots.out(k.name) for k in self.spec.outputs)

        # unresolved optional inputs read as None, resolved ones from their slot
        has_type, has_mac, has_maclen = i_type is not None, i_mac is not None, i_maclen is not None
        has_saddr, has_addrlen = i_saddr is not None, i_addrlen is not None

        def hwhdr(v: list) -> None:
            proto = v[i_proto]
            if proto is not None:
                v[o_proto] = proto
            saddr = v[i_saddr] if has_saddr else None
            if saddr is not None:
                addrlen = v[i_addrlen] if has_addrlen else None
                if addrlen is not None and addrlen != len(saddr):
                    saddr = saddr[:addrlen]
                v[o_saddr] = saddr.hex(":")
                v[o_type] = ARPHRD_VOID
            mac = v[i_mac] if has_mac else None
            if mac is None:
                return
            maclen = v[i_maclen] if has_maclen else None
            if maclen is None:
                maclen = len(mac)
            elif maclen != len(mac):
                mac = mac[:maclen]
            hwtype = v[i_type] if has_type else None
            if hwtype is None:
                hwtype = ARPHRD_ETHER if maclen == ETH_HLEN else ARPHRD_VOID
            v[o_type] = hwtype
            if hwtype == ARPHRD_ETHER and len(mac) >= ETH_HLEN:
                if saddr is None:
                    v[o_saddr] = mac[6:12].hex(":")
                v[o_daddr] = mac[:6].hex(":")
                v[o_proto] = (mac[12] << 8) | mac[13]
            v[o_mac] = mac.hex(":")

        return hwhdr
