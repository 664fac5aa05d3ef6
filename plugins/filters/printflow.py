"""PRINTFLOW: one line per conntrack event, for LOGEMU or SYSLOG.

Layout (every field carries its own trailing space; the line ends with ``\\n``)::

    [NEW] ORIG: SRC=.. DST=.. PROTO=TCP SPT=.. DPT=.. PKTS=.. BYTES=.. , REPLY: SRC=.. ... BYTES=..

* ``[NEW] ``, ``[UPDATE] `` or ``[DESTROY] `` for ct.event 1, 2, 4 (nothing for other values).
* per direction: ``SRC=`` and ``DST=`` when valid; the protocol part when the protocol is valid:
  ``PROTO=TCP``/``PROTO=UDP`` with ``SPT=``/``DPT=`` (each when valid), ``PROTO=ICMP`` with
  ``TYPE=``/``CODE=`` (each when valid), ``PROTO=ESP``, ``PROTO=AH``, else ``PROTO=<number>``
  (ICMPv6 is ``PROTO=58``); then ``PKTS=`` and ``BYTES=`` when valid.

Differences from ulogd 2.0.8
----------------------------
* ICMP prints ``TYPE=<icmp.type> CODE=<icmp.code>``; ulogd swapped them (an echo request read
  ``TYPE=0 CODE=8``).
* The address inputs are declared as strings (what IP2STR provides): ulogd's key table calls them
  IP addresses, which its ``-i`` shows, but it reads them as text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pylogd.keys import KeyType
from pylogd.plugin import Filter, Kind, PluginSpec, Slots, key

_EVENTS = {1: "[NEW] ", 2: "[UPDATE] ", 4: "[DESTROY] "}


def _direction_keys(side: str) -> tuple:
    return (
        key(f"{side}.ip.saddr.str", KeyType.STRING, f"{side} source address (IP2STR)"),
        key(f"{side}.ip.daddr.str", KeyType.STRING, f"{side} destination address (IP2STR)"),
        key(f"{side}.ip.protocol", KeyType.UINT8, f"{side} layer 4 protocol"),
        key(f"{side}.l4.sport", KeyType.UINT16, f"{side} source port"),
        key(f"{side}.l4.dport", KeyType.UINT16, f"{side} destination port"),
        key(f"{side}.raw.pktlen", KeyType.UINT64, f"{side} byte counter"),
        key(f"{side}.raw.pktcount", KeyType.UINT64, f"{side} packet counter"),
    )


class PrintFlow(Filter):
    spec = PluginSpec(
        name="PRINTFLOW",
        kind=Kind.FILTER,
        help="Formats each conntrack event as a line ([NEW] ORIG: SRC= DST= PROTO= ... , REPLY: ...), "
        "for LOGEMU or SYSLOG. Needs IP2STR before it.",
        inputs=(
            *_direction_keys("orig"),
            *_direction_keys("reply"),
            key("icmp.code", KeyType.UINT8, "ICMP code"),
            key("icmp.type", KeyType.UINT8, "ICMP type"),
            key("ct.event", KeyType.UINT32, "1 new, 2 update, 4 destroy"),
        ),
        outputs=(key("print", KeyType.STRING, "the formatted line, ending with a newline"),),
    )

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        i_type, i_code, i_event = slots.inp("icmp.type"), slots.inp("icmp.code"), slots.inp("ct.event")
        o_print = slots.out("print")
        events = _EVENTS
        port_protocols = {6: "TCP", 17: "UDP"}

        def direction(side: str) -> Callable[[list], str]:
            i_src, i_dst, i_proto, i_sport, i_dport, i_bytes, i_pkts = (
                slots.inp(k.name) for k in _direction_keys(side)
            )

            def ports(v: list) -> str:
                sport, dport = v[i_sport], v[i_dport]
                return (f"SPT={sport} " if sport is not None else "") + (f"DPT={dport} " if dport is not None else "")

            def fmt(v: list) -> str:
                src, dst, proto, pkts, nbytes = v[i_src], v[i_dst], v[i_proto], v[i_pkts], v[i_bytes]
                if proto is None:
                    part = ""
                elif proto == 6:
                    part = "PROTO=TCP " + ports(v)
                elif proto == 17:
                    part = "PROTO=UDP " + ports(v)
                elif proto == 1:
                    itype, icode = v[i_type], v[i_code]
                    part = (
                        f"PROTO=ICMP {f'TYPE={itype} ' if itype is not None else ''}"
                        f"{f'CODE={icode} ' if icode is not None else ''}"
                    )
                elif proto == 50:
                    part = "PROTO=ESP "
                elif proto == 51:
                    part = "PROTO=AH "
                else:
                    part = f"PROTO={proto} "
                return (
                    f"{f'SRC={src} ' if src is not None else ''}{f'DST={dst} ' if dst is not None else ''}{part}"
                    f"{f'PKTS={pkts} ' if pkts is not None else ''}{f'BYTES={nbytes} ' if nbytes is not None else ''}"
                )

            return fmt

        orig, reply = direction("orig"), direction("reply")
        o_src, o_dst, o_proto, o_sport, o_dport, o_bytes, o_pkts = (slots.inp(k.name) for k in _direction_keys("orig"))
        r_src, r_dst, r_proto, r_sport, r_dport, r_bytes, r_pkts = (slots.inp(k.name) for k in _direction_keys("reply"))

        def printflow(v: list) -> None:
            # nearly every flow is TCP or UDP both ways with every field valid: one format for the
            # whole line (two directions formatted apart, then joined, cost a fifth more)
            name, reply_name = port_protocols.get(v[o_proto]), port_protocols.get(v[r_proto])
            if name is not None and reply_name is not None:
                src, dst, sport, dport, pkts, nbytes = v[o_src], v[o_dst], v[o_sport], v[o_dport], v[o_pkts], v[o_bytes]
                rsrc, rdst, rsport, rdport, rpkts, rbytes = (
                    v[r_src],
                    v[r_dst],
                    v[r_sport],
                    v[r_dport],
                    v[r_pkts],
                    v[r_bytes],
                )
                if (
                    src is not None
                    and dst is not None
                    and sport is not None
                    and dport is not None
                    and pkts is not None
                    and nbytes is not None
                    and rsrc is not None
                    and rdst is not None
                    and rsport is not None
                    and rdport is not None
                    and rpkts is not None
                    and rbytes is not None
                ):
                    v[o_print] = (
                        f"{events.get(v[i_event], '')}ORIG: SRC={src} DST={dst} PROTO={name} SPT={sport} DPT={dport} "
                        f"PKTS={pkts} BYTES={nbytes} , REPLY: SRC={rsrc} DST={rdst} PROTO={reply_name} SPT={rsport} "
                        f"DPT={rdport} PKTS={rpkts} BYTES={rbytes} \n"
                    )
                    return
            v[o_print] = f"{events.get(v[i_event], '')}ORIG: {orig(v)}, REPLY: {reply(v)}\n"

        return printflow
