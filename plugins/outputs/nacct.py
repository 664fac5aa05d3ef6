"""NACCT: one tab-separated accounting line per flow, as ulogd writes it (the format of the nacct tool).

::

    1795388590	6	10.61.0.2	40312	10.62.0.2	443	12	9120

The columns: the flow's end (``flow.end.sec``), the protocol, the original source address and port,
destination address and port, then the packets and bytes of the reply direction (ulogd's choice: "more
interested in download than upload").  For ICMP the port columns hold the type and the code.  Meant
for NFCT in hash mode (``ct1:NFCT,ip2str1:IP2STR,nacct1:NACCT``), where each line is a finished flow.
SIGHUP reopens the file.

Differences from ulogd 2.0.8
----------------------------
* A value the event does not carry is written as 0 (ulogd wrote whatever the key held from an
  earlier event: a NEW event's end time, a flow's ports after an ICMP flow).
* ICMPv6 flows have their type and code in the port columns, as ICMP flows (ulogd wrote ports they
  do not have).
* A line has no length limit (ulogd cut it at 256 bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pylogd.files import FileOutput, sync_option
from pylogd.keys import KeyType
from pylogd.plugin import Kind, PluginSpec, Slots, key, path_option

ICMP, ICMPV6 = 1, 58


class Nacct(FileOutput):
    spec = PluginSpec(
        name="NACCT",
        kind=Kind.OUTPUT,
        help="Writes each flow as a tab-separated accounting line: end time, protocol, source address and "
        "port, destination address and port, packets and bytes of the reply direction.",
        options=(
            path_option("file", "/var/log/ulogd_nacct.log", "file to append the lines to"),
            sync_option(),
        ),
        inputs=(
            key("orig.ip.saddr.str", KeyType.STRING),
            key("orig.ip.daddr.str", KeyType.STRING),
            key("orig.ip.protocol", KeyType.UINT8),
            key("orig.l4.sport", KeyType.UINT16),
            key("orig.l4.dport", KeyType.UINT16),
            key("reply.raw.pktlen", KeyType.UINT64),
            key("reply.raw.pktcount", KeyType.UINT64),
            key("icmp.code", KeyType.UINT8),
            key("icmp.type", KeyType.UINT8),
            key("flow.start.sec", KeyType.UINT32),
            key("flow.end.sec", KeyType.UINT32),
            key("icmpv6.type", KeyType.UINT8, "the type of an ICMPv6 flow", optional=True),
            key("icmpv6.code", KeyType.UINT8, "the code of an ICMPv6 flow", optional=True),
        ),
        section_required=True,
    )

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        saddr, daddr = slots.inp("orig.ip.saddr.str"), slots.inp("orig.ip.daddr.str")
        proto, sport, dport = slots.inp("orig.ip.protocol"), slots.inp("orig.l4.sport"), slots.inp("orig.l4.dport")
        nbytes, packets = slots.inp("reply.raw.pktlen"), slots.inp("reply.raw.pktcount")
        end = slots.inp("flow.end.sec")
        # the port columns of ICMP and ICMPv6 flows: (type, code) slots; None when the stack has none
        icmp = {ICMP: (slots.inp("icmp.type"), slots.inp("icmp.code"))}
        v6_type, v6_code = slots.inp("icmpv6.type"), slots.inp("icmpv6.code")
        if v6_type is not None and v6_code is not None:
            icmp[ICMPV6] = (v6_type, v6_code)

        def number(v: list, i: int | None) -> int:
            value = v[i] if i is not None else None
            return 0 if value is None else value

        def convert(v: list) -> bytes:
            p = number(v, proto)
            first, second = icmp.get(p, (sport, dport))
            line = (
                f"{number(v, end)}\t{p}\t{v[saddr] or ''}\t{number(v, first)}\t{v[daddr] or ''}\t"
                f"{number(v, second)}\t{number(v, packets)}\t{number(v, nbytes)}\n"
            )
            return line.encode("utf-8", "surrogateescape")

        return convert
