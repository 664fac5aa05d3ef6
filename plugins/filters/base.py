"""BASE: decode the network packet NFLOG delivers into IPv4/IPv6, TCP, UDP, ICMP, SCTP, IPsec and ARP keys.

The input is ``raw.pkt``: the layer-3 packet, without its link-layer header, of which the first
``raw.pktlen`` bytes are used. ``oob.family`` selects the decoder: 2 IPv4, 10 IPv6, 7 bridge (then
``oob.protocol``, the ethertype, selects IPv4, IPv6 or ARP) and 3 ARP. ``oob.protocol`` is copied to
the output key of the same name for every event. Keys are set only when the bytes they come from are
in the packet; a truncated or malformed packet yields whatever was complete before the damage, and
nothing here ever raises.

IPv4 sets the ``ip.*`` keys as soon as the 20-byte header is there; the layer-4 header starts at
IHL x 4 and its length is taken from the captured bytes, not from the total-length field. IPv6
walks hop-by-hop, routing, destination-options, AH and fragment headers until the upper-layer
protocol, which becomes ``ip.protocol`` and ``ip6.nexthdr``.

Differences from ulogd 2.0.8
----------------------------
ulogd 2.0.8 has bugs in this plugin (reference section 4; section 8 items 4 and 5). pylogd does
the correct thing instead:

* ``tcp.offset`` is the TCP data offset in 32-bit words and ``tcp.reserved`` the four reserved bits
  (ulogd always reports 0 for both).
* ``icmp.csum`` and ``icmpv6.csum`` are in host byte order like every other checksum (ulogd does
  not byte-swap them).
* ``icmp.gateway`` holds the 4 address bytes in network order, like every other IPADDR key (ulogd
  stores it byte-swapped, so its IP2STR prints the octets reversed).
* IPv4 fragments with a nonzero offset get their ``ip.*`` keys but no layer-4 keys: their payload
  does not start with a layer-4 header (ulogd decodes it as one anyway).
* An IPv4 datagram that is only a header (or whose options are cut off) still gets its ``ip.*``
  keys (ulogd sets none). An IHL below 5 cannot be right, so no layer-4 header is read then (ulogd
  reads one from inside the IP header).
* ``arp.saddr`` and ``arp.daddr`` hold the 4-byte protocol addresses and ``arp.shwaddr``/
  ``arp.dhwaddr`` the 6-byte hardware addresses (ulogd stores pointers there). The addresses are
  only set when the header declares 6-byte hardware and 4-byte protocol addresses, because that is
  the only layout their fixed offsets fit.
* ARP is also decoded for family 3 (the ``arp`` table), not only for bridged packets.
* ``ahesp.spi`` is set: for ESP from its first 4 bytes, for AH from bytes 4-7 (ulogd never sets it).
* UDP-Lite (protocol 136) fills the ``udp.*`` keys; its header has the UDP layout, with the checksum
  coverage in the place of ``udp.len``.
* IPv6: SCTP, UDP-Lite and ESP are decoded after the IPv6 header too (ulogd decodes only TCP, UDP and
  ICMPv6 there), and ESP, where nothing more can be read, counts as the upper-layer protocol
  (``ip.protocol`` 50; ulogd leaves it unset).
* IPv6: when an extension header is cut off, ``ip6.nexthdr`` still says where decoding stopped
  (ulogd leaves it unset); ``ip.protocol`` stays unset because the upper layer is unknown. After a
  fragment header with a nonzero offset decoding stops, ``ip6.nexthdr`` is the next header that
  fragment names and ``ip.protocol`` stays unset (as in ulogd).

Everything else follows ulogd: ``ip.fragoff`` is the whole flags+offset field, ``ip6.fragoff`` is the
fragment offset in bytes, the TCP flag keys are always set once a TCP header is decoded,
``tcp.res1`` is the four reserved bits and ``tcp.res2`` CWR x 2 + ECE, ``tcp.urgp`` is set only
when URG is set, ICMP echo id/sequence only for echo request/reply, ``icmp.gateway`` only for
redirect and parameter problem, ``icmp.fragmtu`` only for "fragmentation needed", and a layer-4
header is decoded only when its whole fixed part is there (TCP 20, UDP 8, ICMP 8, SCTP 12 bytes).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pylogd.keys import KeyType
from pylogd.plugin import Filter, Kind, PluginSpec, Slots, key

U8, U16, U32, BOOL, ADDR, RAW = (
    KeyType.UINT8,
    KeyType.UINT16,
    KeyType.UINT32,
    KeyType.BOOL,
    KeyType.IPADDR,
    KeyType.RAW,
)

# version/IHL, TOS, total length, id, flags+offset, TTL, protocol, checksum, source, destination
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
# version/class/flow label, payload length, next header, hop limit, source, destination
_IPV6 = struct.Struct("!IHBB16s16s")
# next header, reserved, offset+flags, identification
_FRAG6 = struct.Struct("!BxHI")
# ports, sequence, acknowledgement, data offset/reserved byte, flag byte, window, checksum, urgent pointer
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")
# type, code, checksum, and the two 16-bit halves of the rest-of-header word (echo id/seq, MTU)
_ICMP = struct.Struct("!BBHHH")
_ICMP_GATEWAY = struct.Struct("!4x4s")
# ports, verification tag (skipped), checksum
_SCTP = struct.Struct("!HH4xI")
_U32 = struct.Struct("!I")
# hardware type, protocol type, address lengths, operation, sender MAC/IP, target MAC/IP
_ARP = struct.Struct("!HHBBH6s4s6s4s")

_ETH_P_IP, _ETH_P_IPV6, _ETH_P_ARP = 0x0800, 0x86DD, 0x0806


class Base(Filter):
    spec = PluginSpec(
        name="BASE",
        kind=Kind.FILTER,
        help="Decodes the packet of raw.pkt (IPv4, IPv6 or ARP, chosen by oob.family and oob.protocol) into "
        "the header fields of IP, TCP, UDP, ICMP, ICMPv6, SCTP, AH/ESP and ARP.",
        inputs=(
            key("raw.pkt", RAW, "the layer-3 packet, without link-layer header"),
            key("raw.pktlen", U32, "how many bytes of raw.pkt to decode"),
            key("oob.family", U8, "protocol family: 2 IPv4, 10 IPv6, 7 bridge, 3 ARP"),
            key("oob.protocol", U16, "the ethertype; selects the decoder for bridged packets"),
        ),
        outputs=(
            key("ip.saddr", ADDR, "source address (4 bytes IPv4, 16 bytes IPv6)"),
            key("ip.daddr", ADDR, "destination address (4 bytes IPv4, 16 bytes IPv6)"),
            key("ip.protocol", U8, "IPv4 protocol, or IPv6 upper-layer protocol after the extension headers"),
            key("ip.tos", U8, "IPv4 type-of-service byte"),
            key("ip.ttl", U8, "IPv4 time to live"),
            key("ip.totlen", U16, "IPv4 total length"),
            key("ip.ihl", U8, "IPv4 header length in 32-bit words"),
            key("ip.csum", U16, "IPv4 header checksum"),
            key("ip.id", U16, "IPv4 identification"),
            key("ip.fragoff", U16, "IPv4 flags and fragment offset, the whole 16-bit field"),
            key("ip6.payloadlen", U16, "IPv6 payload length"),
            key("ip6.priority", U8, "IPv6 traffic class"),
            key("ip6.flowlabel", U32, "IPv6 flow label"),
            key("ip6.hoplimit", U8, "IPv6 hop limit"),
            key("ip6.nexthdr", U8, "IPv6 header type where decoding stopped (normally the upper-layer protocol)"),
            key("ip6.fragoff", U16, "IPv6 fragment offset in bytes"),
            key("ip6.fragid", U32, "IPv6 fragment identification"),
            key("tcp.sport", U16, "TCP source port", cim="src_port"),
            key("tcp.dport", U16, "TCP destination port", cim="dest_port"),
            key("tcp.seq", U32, "TCP sequence number"),
            key("tcp.ackseq", U32, "TCP acknowledgement number"),
            key("tcp.window", U16, "TCP window"),
            key("tcp.offset", U8, "TCP data offset in 32-bit words"),
            key("tcp.reserved", U8, "TCP reserved bits (4 bits)"),
            key("tcp.urg", BOOL, "TCP URG flag"),
            key("tcp.urgp", U16, "TCP urgent pointer, when URG is set"),
            key("tcp.ack", BOOL, "TCP ACK flag"),
            key("tcp.psh", BOOL, "TCP PSH flag"),
            key("tcp.rst", BOOL, "TCP RST flag"),
            key("tcp.syn", BOOL, "TCP SYN flag"),
            key("tcp.fin", BOOL, "TCP FIN flag"),
            key("tcp.res1", BOOL, "TCP reserved bits as a number 0-15 (as ulogd)"),
            key("tcp.res2", BOOL, "TCP CWR x 2 + ECE, 0-3 (as ulogd)"),
            key("tcp.csum", U16, "TCP checksum"),
            key("udp.sport", U16, "UDP (or UDP-Lite) source port", cim="src_port"),
            key("udp.dport", U16, "UDP (or UDP-Lite) destination port", cim="dest_port"),
            key("udp.len", U16, "UDP length (UDP-Lite: checksum coverage)"),
            key("udp.csum", U16, "UDP checksum"),
            key("icmp.type", U8, "ICMP type"),
            key("icmp.code", U8, "ICMP code"),
            key("icmp.echoid", U16, "ICMP echo identifier (echo request and reply)"),
            key("icmp.echoseq", U16, "ICMP echo sequence number (echo request and reply)"),
            key("icmp.gateway", ADDR, "ICMP redirect gateway (redirect and parameter problem)"),
            key("icmp.fragmtu", U16, "next-hop MTU of ICMP fragmentation needed"),
            key("icmp.csum", U16, "ICMP checksum"),
            key("icmpv6.type", U8, "ICMPv6 type"),
            key("icmpv6.code", U8, "ICMPv6 code"),
            key("icmpv6.echoid", U16, "ICMPv6 echo identifier (echo request and reply)"),
            key("icmpv6.echoseq", U16, "ICMPv6 echo sequence number (echo request and reply)"),
            key("icmpv6.csum", U16, "ICMPv6 checksum"),
            key("ahesp.spi", U32, "IPsec security parameter index of AH or ESP"),
            key("oob.protocol", U16, "copy of the input oob.protocol"),
            key("arp.hwtype", U16, "ARP hardware type"),
            key("arp.protocoltype", U16, "ARP protocol type"),
            key("arp.operation", U16, "ARP operation (1 request, 2 reply)"),
            key("arp.shwaddr", RAW, "ARP sender hardware address (6 bytes)"),
            key("arp.saddr", ADDR, "ARP sender protocol address"),
            key("arp.dhwaddr", RAW, "ARP target hardware address (6 bytes)"),
            key("arp.daddr", ADDR, "ARP target protocol address"),
            key("sctp.sport", U16, "SCTP source port", cim="src_port"),
            key("sctp.dport", U16, "SCTP destination port", cim="dest_port"),
            key("sctp.csum", U32, "SCTP checksum"),
        ),
    )

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        i_pkt = slots.inp("raw.pkt")
        i_pktlen = slots.inp("raw.pktlen")
        i_family = slots.inp("oob.family")
        i_proto = slots.inp("oob.protocol")
        o = slots.out
        o_saddr, o_daddr, o_ipproto = o("ip.saddr"), o("ip.daddr"), o("ip.protocol")
        o_tos, o_ttl, o_totlen, o_ihl = o("ip.tos"), o("ip.ttl"), o("ip.totlen"), o("ip.ihl")
        o_ipcsum, o_ipid, o_fragoff = o("ip.csum"), o("ip.id"), o("ip.fragoff")
        o_plen, o_prio, o_flow = o("ip6.payloadlen"), o("ip6.priority"), o("ip6.flowlabel")
        o_hlim, o_nexthdr = o("ip6.hoplimit"), o("ip6.nexthdr")
        o_frag6off, o_frag6id = o("ip6.fragoff"), o("ip6.fragid")
        o_tsport, o_tdport, o_tseq, o_tack = o("tcp.sport"), o("tcp.dport"), o("tcp.seq"), o("tcp.ackseq")
        o_twin, o_toff, o_tres = o("tcp.window"), o("tcp.offset"), o("tcp.reserved")
        o_turg, o_turgp, o_tackf, o_tpsh = o("tcp.urg"), o("tcp.urgp"), o("tcp.ack"), o("tcp.psh")
        o_trst, o_tsyn, o_tfin = o("tcp.rst"), o("tcp.syn"), o("tcp.fin")
        o_tres1, o_tres2, o_tcsum = o("tcp.res1"), o("tcp.res2"), o("tcp.csum")
        o_usport, o_udport, o_ulen, o_ucsum = o("udp.sport"), o("udp.dport"), o("udp.len"), o("udp.csum")
        o_itype, o_icode, o_iid, o_iseq = o("icmp.type"), o("icmp.code"), o("icmp.echoid"), o("icmp.echoseq")
        o_igw, o_imtu, o_icsum = o("icmp.gateway"), o("icmp.fragmtu"), o("icmp.csum")
        o_6type, o_6code, o_6id, o_6seq = o("icmpv6.type"), o("icmpv6.code"), o("icmpv6.echoid"), o("icmpv6.echoseq")
        o_6csum, o_spi, o_oobproto = o("icmpv6.csum"), o("ahesp.spi"), o("oob.protocol")
        o_ahw, o_apro, o_aop = o("arp.hwtype"), o("arp.protocoltype"), o("arp.operation")
        o_asha, o_aspa, o_atha, o_atpa = o("arp.shwaddr"), o("arp.saddr"), o("arp.dhwaddr"), o("arp.daddr")
        o_ssport, o_sdport, o_scsum = o("sctp.sport"), o("sctp.dport"), o("sctp.csum")

        ipv4_from, ipv6_from, frag6_from = _IPV4.unpack_from, _IPV6.unpack_from, _FRAG6.unpack_from
        tcp_from, udp_from, icmp_from = _TCP.unpack_from, _UDP.unpack_from, _ICMP.unpack_from
        gateway_from, sctp_from, u32_from, arp_from = (
            _ICMP_GATEWAY.unpack_from,
            _SCTP.unpack_from,
            _U32.unpack_from,
            _ARP.unpack_from,
        )

        def l4(v: list, pkt: Any, off: int, n: int, proto: int, v6: bool) -> None:
            """The layer-4 header at ``off``; ``n`` is where the captured bytes end."""
            rem = n - off
            if proto == 6:
                if rem < 20:
                    return
                sport, dport, seq, ack, offres, flags, win, csum, urgp = tcp_from(pkt, off)
                v[o_tsport] = sport
                v[o_tdport] = dport
                v[o_tseq] = seq
                v[o_tack] = ack
                v[o_twin] = win
                v[o_toff] = offres >> 4
                v[o_tres] = v[o_tres1] = offres & 0x0F
                urg = (flags >> 5) & 1
                v[o_turg] = urg
                if urg:
                    v[o_turgp] = urgp
                v[o_tackf] = (flags >> 4) & 1
                v[o_tpsh] = (flags >> 3) & 1
                v[o_trst] = (flags >> 2) & 1
                v[o_tsyn] = (flags >> 1) & 1
                v[o_tfin] = flags & 1
                v[o_tres2] = flags >> 6
                v[o_tcsum] = csum
            elif proto == 17 or proto == 136:
                if rem < 8:
                    return
                v[o_usport], v[o_udport], v[o_ulen], v[o_ucsum] = udp_from(pkt, off)
            elif proto == 1:
                if v6 or rem < 8:
                    return
                typ, code, csum, word1, word2 = icmp_from(pkt, off)
                v[o_itype] = typ
                v[o_icode] = code
                v[o_icsum] = csum
                if typ == 0 or typ == 8:
                    v[o_iid] = word1
                    v[o_iseq] = word2
                elif typ == 5 or typ == 12:
                    v[o_igw] = gateway_from(pkt, off)[0]
                elif typ == 3 and code == 4:
                    v[o_imtu] = word2
            elif proto == 58:
                if not v6 or rem < 8:
                    return
                typ, code, csum, word1, word2 = icmp_from(pkt, off)
                v[o_6type] = typ
                v[o_6code] = code
                v[o_6csum] = csum
                if typ == 128 or typ == 129:
                    v[o_6id] = word1
                    v[o_6seq] = word2
            elif proto == 132:
                if rem < 12:
                    return
                v[o_ssport], v[o_sdport], v[o_scsum] = sctp_from(pkt, off)
            elif proto == 50:
                if rem >= 4:
                    v[o_spi] = u32_from(pkt, off)[0]
            elif proto == 51 and rem >= 8:
                v[o_spi] = u32_from(pkt, off + 4)[0]

        def ipv4(v: list, pkt: Any, n: int) -> None:
            if n < 20:
                return
            vihl, tos, totlen, ident, frag, ttl, proto, csum, saddr, daddr = ipv4_from(pkt, 0)
            ihl = vihl & 0x0F
            v[o_saddr] = saddr
            v[o_daddr] = daddr
            v[o_ipproto] = proto
            v[o_tos] = tos
            v[o_ttl] = ttl
            v[o_totlen] = totlen
            v[o_ihl] = ihl
            v[o_ipcsum] = csum
            v[o_ipid] = ident
            v[o_fragoff] = frag
            hlen = ihl << 2
            # a non-first fragment carries the middle of a payload, not a layer-4 header
            if ihl >= 5 and hlen < n and not frag & 0x1FFF:
                l4(v, pkt, hlen, n, proto, False)

        def ipv6(v: list, pkt: Any, n: int) -> None:
            if n < 40:
                return
            flow, plen, nxt, hlim, saddr, daddr = ipv6_from(pkt, 0)
            v[o_saddr] = saddr
            v[o_daddr] = daddr
            v[o_plen] = plen
            v[o_prio] = (flow >> 20) & 0xFF
            v[o_flow] = flow & 0xFFFFF
            v[o_hlim] = hlim
            off = 40
            # each extension header is at least 8 bytes long, so this ends
            while True:
                if nxt == 0 or nxt == 43 or nxt == 60:  # hop-by-hop, routing, destination options
                    if off + 2 > n:
                        break
                    end = off + ((pkt[off + 1] + 1) << 3)
                elif nxt == 51:  # AH: its length counts 32-bit words, minus 2
                    if off + 2 > n:
                        break
                    end = off + ((pkt[off + 1] + 2) << 2)
                    if end <= n:
                        v[o_spi] = u32_from(pkt, off + 4)[0]
                elif nxt == 44:
                    end = off + 8
                    if end > n:
                        break
                    after, offlg, ident = frag6_from(pkt, off)
                    v[o_frag6off] = offlg & 0xFFF8
                    v[o_frag6id] = ident
                    if offlg & 0xFFF8:  # not the first fragment: the rest is payload from the middle
                        v[o_nexthdr] = after
                        return
                else:
                    v[o_nexthdr] = v[o_ipproto] = nxt
                    l4(v, pkt, off, n, nxt, True)
                    return
                if end > n:
                    break
                nxt = pkt[off]
                off = end
            v[o_nexthdr] = nxt  # cut off inside the extension header nxt

        def arp(v: list, pkt: Any, n: int) -> None:
            if n < 28:
                return
            hwtype, ptype, hlen, plen, op, sha, spa, tha, tpa = arp_from(pkt, 0)
            v[o_ahw] = hwtype
            v[o_apro] = ptype
            v[o_aop] = op
            if hlen == 6 and plen == 4:
                v[o_asha] = sha
                v[o_aspa] = spa
                v[o_atha] = tha
                v[o_atpa] = tpa

        def decode(v: list) -> None:
            proto = v[i_proto]
            v[o_oobproto] = proto
            pkt = v[i_pkt]
            if pkt is None:
                return
            n = len(pkt)
            pktlen = v[i_pktlen]
            if pktlen is not None and pktlen < n:
                n = pktlen
            family = v[i_family]
            if family == 2:
                ipv4(v, pkt, n)
            elif family == 10:
                ipv6(v, pkt, n)
            elif family == 7:
                if proto == _ETH_P_IP:
                    ipv4(v, pkt, n)
                elif proto == _ETH_P_IPV6:
                    ipv6(v, pkt, n)
                elif proto == _ETH_P_ARP:
                    arp(v, pkt, n)
            elif family == 3:
                arp(v, pkt, n)

        return decode
