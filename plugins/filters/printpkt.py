"""PRINTPKT: one line per packet in the kernel LOG target's format, for LOGEMU and SYSLOG.

Layout (every field carries its own trailing space; the line ends with ``\\n``)::

    <prefix> IN=<in> OUT=<out> MAC=<header> <layer 3 part> UID=<uid> GID=<gid> MARK=0x<mark>

* ``<prefix> `` when oob.prefix is valid (so an empty prefix still gives a leading space, and
  ``"TCPIN: "`` gives ``TCPIN:  IN=``); ``IN= OUT= `` when both names are valid; ``MAC=`` and the
  header bytes as ``xx:xx:..`` (``MAC= `` without a header).
* the layer 3 part by oob.family: 2 IPv4, 10 IPv6, 7 (bridge) by oob.protocol: 0x0800 IPv4,
  0x86DD IPv6, 0x0806 ARP, anything else ``PROTO=<ethertype> ``; other families print nothing.
* IPv4: ``SRC= DST= `` when valid, then always ``LEN= TOS= PREC= TTL= ID= `` (0 for missing
  values: a packet BASE could not parse prints ``LEN=0 ... PROTO=0``), the flags ``CE DF MF``
  and ``FRAG:<offset>``, then the transport part chosen by ip.protocol.
* IPv6: each of ``SRC= DST= LEN= TC= HOPLIMIT= FLOWLBL=`` when valid (LEN counts the 40-byte
  header), ``FRAG: <off> ID: <id> `` for fragments, then the transport part chosen by
  ip6.nexthdr.
* Transport: ``PROTO=TCP SPT= DPT= SEQ= ACK= WINDOW= <flags> URGP= ``,
  ``PROTO=UDP SPT= DPT= LEN= ``, ``PROTO=UDPLITE`` (same fields), ``PROTO=SCTP SPT= DPT= ``,
  ``PROTO=ESP``/``PROTO=AH`` (``SPI=0x..`` if known), ``PROTO=ICMP TYPE= CODE= `` + type details,
  ``PROTO=ICMPv6 TYPE= CODE= `` (+ ``ID= SEQ=`` for echo), else ``PROTO=<number> ``. When the
  transport header is missing the line says ``INCOMPLETE`` with no trailing space, exactly as
  ulogd (``PROTO=TCP INCOMPLETEMARK=0x0``), since that is what existing log parsers see.

Differences from ulogd 2.0.8
----------------------------
* ICMP details follow the ICMP *type* (ulogd switches on the code): ``ID= SEQ=`` for echo
  request/reply (types 8 and 0), ``GATEWAY=<address> `` for redirects (5), ``PARAMETER=<pointer> ``
  for parameter problems (12) and ``MTU=<mtu> `` for "fragmentation needed" (type 3 code 4).
  ulogd printed a spurious ``ID=0 SEQ=0`` for every code-0 message (e.g. ``TYPE=3 CODE=0``,
  ``TYPE=11 CODE=0``), a gateway for code 5 and never the MTU.
* UDP-Lite (protocol 136) prints ``PROTO=UDPLITE`` with the UDP fields (the udp.* keys); ulogd
  printed ``PROTO=136``.
* ARP is printed for the arp family (3) too, not only inside bridge frames.
* A non-first fragment (IPv4 or IPv6) prints only ``PROTO=<name> ``, as the kernel's LOG target does:
  it has no transport header. ulogd read the fragment's payload as one
  (``SPT=16962 DPT=16962 LEN=16962`` from the data bytes).
* The gateway of a redirect is printed in the right octet order (ulogd's BASE kept it in host
  order and PRINTPKT printed it reversed).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from pylogd.keys import KeyType
from pylogd.plugin import Filter, Kind, PluginSpec, Slots, key

FRAGMENT_NAMES = {6: "TCP", 17: "UDP", 1: "ICMP", 132: "SCTP", 50: "ESP", 51: "AH", 136: "UDPLITE", 58: "ICMPv6"}

# ulogd's key-array order (what ``-i`` shows); all untyped, all mandatory but oob.uid/oob.gid
INPUT_NAMES = (
    "oob.family", "oob.prefix", "oob.in", "oob.out", "oob.uid", "oob.gid", "oob.mark", "raw.mac", "raw.mac_len",
    "ip.saddr.str", "ip.daddr.str", "ip.totlen", "ip.tos", "ip.ttl", "ip.id", "ip.fragoff", "ip.protocol",
    "ip6.payloadlen", "ip6.priority", "ip6.hoplimit", "ip6.flowlabel", "ip6.nexthdr", "ip6.fragoff", "ip6.fragid",
    "tcp.sport", "tcp.dport", "tcp.seq", "tcp.ackseq", "tcp.window", "tcp.syn", "tcp.ack", "tcp.psh", "tcp.rst",
    "tcp.fin", "tcp.urg", "tcp.urgp", "udp.sport", "udp.dport", "udp.len", "icmp.type", "icmp.code", "icmp.echoid",
    "icmp.echoseq", "icmp.gateway", "icmp.fragmtu", "icmpv6.type", "icmpv6.code", "icmpv6.echoid",
    "icmpv6.echoseq", "ahesp.spi", "oob.protocol", "arp.hwtype", "arp.protocoltype", "arp.operation",
    "arp.shwaddr", "arp.saddr.str", "arp.dhwaddr", "arp.daddr.str", "sctp.sport", "sctp.dport",
)  # fmt: skip
_OPTIONAL = frozenset({"oob.uid", "oob.gid"})

# "TOS=xx PREC=0xyy " for every TOS byte
_TOS = tuple(f"TOS={t & 0x1E:02X} PREC=0x{t & 0xE0:02X} " for t in range(256))
# CE/DF/MF from the top three bits of ip.fragoff
_FLAGS = tuple(("CE " if f & 4 else "") + ("DF " if f & 2 else "") + ("MF " if f & 1 else "") for f in range(8))
_ARP_OPS = {1: "REQUEST ", 2: "REPLY ", 10: "NAK "}

IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ESP, IPPROTO_AH = 1, 6, 17, 50, 51
IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_UDPLITE = 58, 132, 136
ETH_P_IP, ETH_P_ARP, ETH_P_IPV6 = 0x0800, 0x0806, 0x86DD


class PrintPkt(Filter):
    spec = PluginSpec(
        name="PRINTPKT",
        kind=Kind.FILTER,
        help="Formats each packet as a line in the kernel LOG target's format (IN= OUT= MAC= SRC= DST= ...), "
        "for LOGEMU or SYSLOG. Needs BASE, IFINDEX and IP2STR before it.",
        inputs=tuple(key(n, KeyType.NONE, optional=n in _OPTIONAL) for n in INPUT_NAMES),
        outputs=(key("print", KeyType.STRING, "the formatted line, ending with a newline"),),
    )

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        s = {n: slots.inp(n) for n in INPUT_NAMES}
        o_print = slots.out("print")
        ntop, af4 = socket.inet_ntop, socket.AF_INET
        tos_table, flag_table = _TOS, _FLAGS
        i_family, i_prefix, i_in, i_out, i_mark = (
            s["oob.family"], s["oob.prefix"], s["oob.in"], s["oob.out"], s["oob.mark"]
        )  # fmt: skip
        i_uid, i_gid = s["oob.uid"], s["oob.gid"]
        has_uid, has_gid = i_uid is not None, i_gid is not None
        i_mac, i_maclen = s["raw.mac"], s["raw.mac_len"]
        i_saddr, i_daddr = s["ip.saddr.str"], s["ip.daddr.str"]
        i_totlen, i_tos, i_ttl, i_id, i_frag, i_proto = (
            s["ip.totlen"], s["ip.tos"], s["ip.ttl"], s["ip.id"], s["ip.fragoff"], s["ip.protocol"]
        )  # fmt: skip
        i_plen, i_prio, i_hop, i_flow, i_next, i_foff, i_fid = (
            s["ip6.payloadlen"], s["ip6.priority"], s["ip6.hoplimit"], s["ip6.flowlabel"], s["ip6.nexthdr"],
            s["ip6.fragoff"], s["ip6.fragid"],
        )  # fmt: skip
        i_tsport, i_tdport, i_seq, i_ack, i_win = (
            s["tcp.sport"], s["tcp.dport"], s["tcp.seq"], s["tcp.ackseq"], s["tcp.window"]
        )  # fmt: skip
        i_fsyn, i_fack, i_fpsh, i_frst, i_ffin, i_furg, i_urgp = (
            s["tcp.syn"], s["tcp.ack"], s["tcp.psh"], s["tcp.rst"], s["tcp.fin"], s["tcp.urg"], s["tcp.urgp"]
        )  # fmt: skip
        i_usport, i_udport, i_ulen = s["udp.sport"], s["udp.dport"], s["udp.len"]
        i_itype, i_icode, i_iid, i_iseq, i_igw, i_imtu = (
            s["icmp.type"], s["icmp.code"], s["icmp.echoid"], s["icmp.echoseq"], s["icmp.gateway"], s["icmp.fragmtu"]
        )  # fmt: skip
        i_6type, i_6code, i_6id, i_6seq = s["icmpv6.type"], s["icmpv6.code"], s["icmpv6.echoid"], s["icmpv6.echoseq"]
        i_spi, i_oproto = s["ahesp.spi"], s["oob.protocol"]
        i_arpop, i_sha = s["arp.operation"], s["arp.shwaddr"]
        i_asaddr, i_adaddr = s["arp.saddr.str"], s["arp.daddr.str"]
        i_ssport, i_sdport = s["sctp.sport"], s["sctp.dport"]

        def tcp(v: list) -> str:
            sport = v[i_tsport]
            if sport is None:
                return "PROTO=TCP INCOMPLETE"
            return (
                f"PROTO=TCP SPT={sport} DPT={v[i_tdport] or 0} SEQ={v[i_seq] or 0} ACK={v[i_ack] or 0} "
                f"WINDOW={v[i_win] or 0} {'URG ' if v[i_furg] else ''}{'ACK ' if v[i_fack] else ''}"
                f"{'PSH ' if v[i_fpsh] else ''}{'RST ' if v[i_frst] else ''}{'SYN ' if v[i_fsyn] else ''}"
                f"{'FIN ' if v[i_ffin] else ''}URGP={v[i_urgp] or 0} "
            )

        def udp(v: list) -> str:
            sport = v[i_usport]
            if sport is None:
                return "PROTO=UDP INCOMPLETE"
            return f"PROTO=UDP SPT={sport} DPT={v[i_udport] or 0} LEN={v[i_ulen] or 0} "

        def udplite(v: list) -> str:
            sport = v[i_usport]
            if sport is None:
                return "PROTO=UDPLITE INCOMPLETE"
            return f"PROTO=UDPLITE SPT={sport} DPT={v[i_udport] or 0} LEN={v[i_ulen] or 0} "

        def sctp(v: list) -> str:
            sport = v[i_ssport]
            if sport is None:
                return "PROTO=SCTP INCOMPLETE"
            return f"PROTO=SCTP SPT={sport} DPT={v[i_sdport] or 0} "

        def esp(v: list) -> str:
            spi = v[i_spi]
            return "PROTO=ESP INCOMPLETE" if spi is None else f"PROTO=ESP SPI=0x{spi:x} "

        def ah(v: list) -> str:
            spi = v[i_spi]
            return "PROTO=AH INCOMPLETE" if spi is None else f"PROTO=AH SPI=0x{spi:x} "

        def icmp(v: list) -> str:
            itype = v[i_itype]
            if itype is None:
                return "PROTO=ICMP INCOMPLETE"
            code = v[i_icode] or 0
            if itype == 8 or itype == 0:
                return f"PROTO=ICMP TYPE={itype} CODE={code} ID={v[i_iid] or 0} SEQ={v[i_iseq] or 0} "
            if itype == 5:
                gw = v[i_igw]
                gateway = ntop(af4, gw) if gw is not None and len(gw) == 4 else "0.0.0.0"
                return f"PROTO=ICMP TYPE=5 CODE={code} GATEWAY={gateway} "
            if itype == 12:
                gw = v[i_igw]
                return f"PROTO=ICMP TYPE=12 CODE={code} PARAMETER={gw[0] if gw else 0} "
            if itype == 3 and code == 4:
                return f"PROTO=ICMP TYPE=3 CODE=4 MTU={v[i_imtu] or 0} "
            return f"PROTO=ICMP TYPE={itype} CODE={code} "

        def icmpv6(v: list) -> str:
            itype = v[i_6type]
            if itype is None:
                return "PROTO=ICMPv6 INCOMPLETE"
            code = v[i_6code]
            if code is None:
                return "PROTO=ICMPv6 TRUNCATED"
            if itype == 128 or itype == 129:
                return f"PROTO=ICMPv6 TYPE={itype} CODE={code} ID={v[i_6id] or 0} SEQ={v[i_6seq] or 0} "
            return f"PROTO=ICMPv6 TYPE={itype} CODE={code} "

        transport4 = {
            IPPROTO_TCP: tcp, IPPROTO_UDP: udp, IPPROTO_ICMP: icmp, IPPROTO_SCTP: sctp,
            IPPROTO_ESP: esp, IPPROTO_AH: ah, IPPROTO_UDPLITE: udplite,
        }  # fmt: skip
        transport6 = {**transport4, IPPROTO_ICMPV6: icmpv6}
        del transport6[IPPROTO_ICMP]
        get4, get6 = transport4.get, transport6.get

        def later_fragment(proto: int) -> str:
            # a non-first fragment carries no transport header: name the protocol, as the kernel's LOG does
            return f"PROTO={FRAGMENT_NAMES.get(proto, proto)} "

        def ipv4(v: list) -> str:
            saddr, daddr = v[i_saddr], v[i_daddr]
            frag = v[i_frag] or 0
            proto = v[i_proto] or 0
            part = later_fragment if frag & 0x1FFF else get4(proto)
            return (
                f"{f'SRC={saddr} ' if saddr is not None else ''}{f'DST={daddr} ' if daddr is not None else ''}"
                f"LEN={v[i_totlen] or 0} {tos_table[v[i_tos] or 0]}TTL={v[i_ttl] or 0} ID={v[i_id] or 0} "
                f"{flag_table[frag >> 13]}{f'FRAG:{frag & 0x1FFF} ' if frag & 0x1FFF else ''}"
                f"{part(proto if part is later_fragment else v) if part is not None else f'PROTO={proto} '}"
            )

        def ipv6(v: list) -> str:
            saddr, daddr, plen, prio, hop, flow = v[i_saddr], v[i_daddr], v[i_plen], v[i_prio], v[i_hop], v[i_flow]
            foff, fid = v[i_foff], v[i_fid]
            nexthdr = v[i_next] or 0
            part = later_fragment if foff else get6(nexthdr)
            return (
                f"{f'SRC={saddr} ' if saddr is not None else ''}{f'DST={daddr} ' if daddr is not None else ''}"
                f"{f'LEN={plen + 40} ' if plen is not None else ''}{f'TC={prio} ' if prio is not None else ''}"
                f"{f'HOPLIMIT={hop} ' if hop is not None else ''}{f'FLOWLBL={flow} ' if flow is not None else ''}"
                f"{f'FRAG: {foff} ID: {fid:08x} ' if foff is not None and fid is not None else ''}"
                f"{part(nexthdr if part is later_fragment else v) if part is not None else f'PROTO={nexthdr} '}"
            )

        def arp(v: list) -> str:
            saddr, daddr, op = v[i_asaddr], v[i_adaddr], v[i_arpop]
            text = (f"SRC={saddr} " if saddr is not None else "") + (f"DST={daddr} " if daddr is not None else "")
            text += "PROTO=ARP "
            if op is not None:
                text += _ARP_OPS.get(op) or f"CODE={op} "
                sha = v[i_sha]
                if op == 2 and sha is not None:
                    text += f"REPLY_MAC={sha[:6].hex(':')} "
            return text

        def bridge(v: list) -> str:
            ethertype = v[i_oproto] or 0
            if ethertype == ETH_P_IP:
                return ipv4(v)
            if ethertype == ETH_P_IPV6:
                return ipv6(v)
            if ethertype == ETH_P_ARP:
                return arp(v)
            return f"PROTO={ethertype} "

        def head_of(prefix: str | None, inname: str | None, outname: str | None, mac: Any, maclen: Any) -> str:
            if mac is None:
                mac = ""
            else:
                if maclen is not None and maclen != len(mac):
                    mac = mac[:maclen]
                mac = mac.hex(":")
            return (
                f"{f'{prefix} ' if prefix is not None else ''}"
                f"{f'IN={inname} OUT={outname} ' if inname is not None and outname is not None else ''}MAC={mac} "
            )

        # the start of the line repeats: one rule, one pair of interfaces, one pair of hosts on the link
        heads: dict[tuple, str] = {}

        def printpkt(v: list) -> None:
            prefix, inname, outname, mac, maclen = v[i_prefix], v[i_in], v[i_out], v[i_mac], v[i_maclen]
            if type(mac) is memoryview:  # not hashable: no cache
                head = head_of(prefix, inname, outname, mac, maclen)
            else:
                key = (prefix, inname, outname, mac, maclen)
                head = heads.get(key)
                if head is None:
                    if len(heads) >= 1024:
                        heads.clear()
                    head = heads[key] = head_of(prefix, inname, outname, mac, maclen)
            family = v[i_family]
            if family == 2:
                body = ipv4(v)
            elif family == 10:
                body = ipv6(v)
            elif family == 7:
                body = bridge(v)
            elif family == 3:  # NFPROTO_ARP: arptables-style logging and ARP read from captures
                body = arp(v)
            else:
                body = ""
            uid = v[i_uid] if has_uid else None
            gid = v[i_gid] if has_gid else None
            mark = v[i_mark]
            v[o_print] = (
                f"{head}{body}{f'UID={uid} ' if uid is not None else ''}{f'GID={gid} ' if gid is not None else ''}"
                f"{('MARK=0x0 ' if mark == 0 else f'MARK=0x{mark:x} ') if mark is not None else ''}\n"
            )

        return printpkt
