"""NFLOG on real kernel traffic: the netlink reader (pylogd.nflog) and the daemon's NFLOG input.

Packets go from namespace b to namespace a over a veth pair; nft rules in a log them to an
NFLOG group.  Decoded fields are checked against what was sent, against scapy's reading of
the payload, and against pyroute2's generic netlink decoder given an NFLOG attribute map
(pyroute2 has no NFLOG module of its own).
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import struct
import time
from pathlib import Path

import pytest
from feedkit import RecordingFeed
from hypothesis import given, settings
from hypothesis import strategies as st
from pylogd.plugins.inputs.nflog import Nflog
from pyroute2.netlink import nla
from pyroute2.netlink.nfnetlink import nfgen_msg
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg
from rig import (  # noqa: F401 - the *_fixture names register fixtures
    Netns,
    Pair,
    Rig,
    netns_fixture,
    netns_pair_fixture,
    pylogd_command,
    read_text,
    rig_fixture,
    start_pylogd,
    wait_for,
)
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from pylogd.log import Logger
from pylogd.loop import EventLoop
from pylogd.netlink import DEFAULT_RCVBUF
from pylogd.nflog import (
    F_GID,
    F_HWLEN,
    F_HWTYPE,
    F_MARK,
    F_SEQ,
    FIELDS,
    FLAG_CONNTRACK,
    FLAG_SEQ,
    FLAG_SEQ_GLOBAL,
    PACKET_RECORD,
    Const,
    Default,
    Derived,
    NflogBusyError,
    NflogError,
    NflogSocket,
    Packet,
    WithHwHeader,
    bound_groups,
    compile_layout,
    decode_message,
    project,
)
from pylogd.plugin import PluginError

TEST_PLUGINS = Path(__file__).resolve().parent / "plugins" / "testplugins.py"
G = 7  # groups are per namespace, so every test can use the same one

RULES = f"""
table inet t {{
  chain input {{
    type filter hook input priority 0;
    udp dport 5000 meta mark set 0x2a log prefix "IN " group {G}
    udp dport 5001 log group {G}
  }}
  chain output {{
    type filter hook output priority 0;
    udp dport 6000 log prefix "OUT " group {G}
  }}
}}
"""


BRIDGE_RULES = f"""
table bridge t {{
  chain pre {{
    type filter hook prerouting priority 0;
    log prefix "BR " group {G}
  }}
}}
"""


@pytest.fixture
def logged(netns_pair: Pair) -> Pair:
    netns_pair.a.nft(RULES)
    return netns_pair


def receive(sock: NflogSocket, n: int, timeout: float = 5.0) -> list[Packet]:
    got: list[Packet] = []
    for pkt in sock.packets(timeout=timeout):
        got.append(pkt)
        if len(got) == n:
            break
    assert len(got) == n, f"received {len(got)} of {n} packets: {got}"
    return got


def send_as(uid: int, gid: int, dst: str, port: int, data: bytes) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(data, (dst, port))


# ---------------------------------------------------------------------------------------------
# pyroute2 as an independent decoder: its generic nfnetlink message class with NFLOG's attributes


class nflog_msg(nfgen_msg):
    nla_map = (
        ("NFULA_UNSPEC", "none"),
        ("NFULA_PACKET_HDR", "packet_hdr"),
        ("NFULA_MARK", "be32"),
        ("NFULA_TIMESTAMP", "timestamp"),
        ("NFULA_IFINDEX_INDEV", "be32"),
        ("NFULA_IFINDEX_OUTDEV", "be32"),
        ("NFULA_IFINDEX_PHYSINDEV", "be32"),
        ("NFULA_IFINDEX_PHYSOUTDEV", "be32"),
        ("NFULA_HWADDR", "hwaddr"),
        ("NFULA_PAYLOAD", "cdata"),
        ("NFULA_PREFIX", "asciiz"),
        ("NFULA_UID", "be32"),
        ("NFULA_SEQ", "be32"),
        ("NFULA_SEQ_GLOBAL", "be32"),
        ("NFULA_GID", "be32"),
        ("NFULA_HWTYPE", "be16"),
        ("NFULA_HWHEADER", "cdata"),
        ("NFULA_HWLEN", "be16"),
        ("NFULA_CT", "cdata"),
        ("NFULA_CT_INFO", "be32"),
        ("NFULA_VLAN", "vlan"),
        ("NFULA_L2HDR", "cdata"),
    )

    class packet_hdr(nla):
        fields = (("hw_protocol", ">H"), ("hook", "B"), ("pad", "B"))

    class timestamp(nla):
        fields = (("sec", ">Q"), ("usec", ">Q"))

    class hwaddr(nla):
        fields = (("hw_addrlen", ">H"), ("pad", "H"), ("hw_addr", "8s"))

    class vlan(nla):
        nla_map = (("NFULA_VLAN_UNSPEC", "none"), ("NFULA_VLAN_PROTO", "be16"), ("NFULA_VLAN_TCI", "be16"))


def pyroute2_view(msg: bytes) -> dict:
    """The fields of one NFLOG message as pyroute2 decodes them, named like pylogd's Packet."""
    m = nflog_msg(msg)
    m.decode()
    a = m.get_attr
    hdr, ts, hw, vlan = a("NFULA_PACKET_HDR"), a("NFULA_TIMESTAMP"), a("NFULA_HWADDR"), a("NFULA_VLAN")
    return {
        "family": m["nfgen_family"],
        "group": m["res_id"],
        "hook": hdr["hook"] if hdr else None,
        "hw_protocol": hdr["hw_protocol"] if hdr else None,
        "mark": a("NFULA_MARK"),
        "timestamp": (ts["sec"], ts["usec"]) if ts else None,
        "indev": a("NFULA_IFINDEX_INDEV"),
        "outdev": a("NFULA_IFINDEX_OUTDEV"),
        "physindev": a("NFULA_IFINDEX_PHYSINDEV"),
        "physoutdev": a("NFULA_IFINDEX_PHYSOUTDEV"),
        "hwaddr": hw["hw_addr"][: hw["hw_addrlen"]] if hw else None,
        "hwaddrlen": hw["hw_addrlen"] if hw else None,
        "payload": a("NFULA_PAYLOAD"),
        "prefix": a("NFULA_PREFIX"),
        "uid": a("NFULA_UID"),
        "gid": a("NFULA_GID"),
        "seq": a("NFULA_SEQ"),
        "seq_global": a("NFULA_SEQ_GLOBAL"),
        "hwtype": a("NFULA_HWTYPE"),
        "hwheader": a("NFULA_HWHEADER"),
        "hwlen": a("NFULA_HWLEN"),
        "vlan_proto": vlan.get_attr("NFULA_VLAN_PROTO") if vlan else None,
        "vlan_tci": vlan.get_attr("NFULA_VLAN_TCI") if vlan else None,
        "l2hdr": a("NFULA_L2HDR"),
        "ct": a("NFULA_CT"),
        "ct_info": a("NFULA_CT_INFO"),
        "msg": msg,
    }


def assert_same_as_pyroute2(pkt: Packet) -> None:
    assert pkt.msg is not None
    theirs = pyroute2_view(pkt.msg)
    ours = pkt._asdict()
    assert set(theirs) == set(FIELDS)
    for name in FIELDS:
        assert ours[name] == theirs[name], f"{name}: pylogd {ours[name]!r}, pyroute2 {theirs[name]!r}"


# ---------------------------------------------------------------------------------------------
# the reader on real traffic


def test_input_packets_ipv4_and_ipv6(logged: Pair) -> None:
    p = logged
    a_mac, b_mac = p.a.mac(p.a_if), p.b.mac(p.b_if)
    ifindex = p.a.ifindex(p.a_if)
    with NflogSocket(G, netns=p.a.name, qthreshold=1, flags=FLAG_SEQ | FLAG_SEQ_GLOBAL) as sock:
        t0 = time.time()
        sport4 = p.b.send_udp(p.a_ip4, 5000, b"four", count=3)
        sport6 = p.b.send_udp(p.a_ip6, 5000, b"six")
        pkts = receive(sock, 4)
        stats = sock.statistics()
    assert sock.slow == 1  # the first message was walked; the others, IPv6 too, fit its layout
    for pkt in pkts:
        assert pkt == walked(pkt.msg)
    assert stats["received"] == 4
    assert stats["lost"] == stats["enobufs"] == stats["errors"] == 0
    last_global = 0
    for i, pkt in enumerate(pkts):
        v6 = i == 3
        assert pkt.family == (socket.AF_INET6 if v6 else socket.AF_INET)
        assert pkt.group == G
        assert pkt.hook == 1  # input
        assert pkt.hw_protocol == (0x86DD if v6 else 0x0800)
        assert pkt.mark == 0x2A
        assert pkt.prefix == "IN "
        assert pkt.indev == ifindex
        assert pkt.outdev is None and pkt.physindev is None and pkt.physoutdev is None
        assert pkt.hwaddr == b_mac and pkt.hwaddrlen == 6
        assert pkt.hwtype == 1 and pkt.hwlen == 14
        assert pkt.hwheader == a_mac + b_mac + (b"\x86\xdd" if v6 else b"\x08\x00")
        assert pkt.timestamp is not None
        assert abs(pkt.timestamp[0] - t0) < 5 and 0 <= pkt.timestamp[1] < 1_000_000
        assert pkt.uid is None and pkt.gid is None  # not a local socket's packet
        assert pkt.seq == i  # the kernel numbers a fresh group from 0
        assert pkt.seq_global is not None and pkt.seq_global > last_global
        last_global = pkt.seq_global
        assert pkt.vlan_proto is None and pkt.l2hdr is None and pkt.ct is None
        ip = IPv6(pkt.payload) if v6 else IP(pkt.payload)
        assert (ip.src, ip.dst) == ((p.b_ip6, p.a_ip6) if v6 else (p.b_ip4, p.a_ip4))
        assert (ip[UDP].sport, ip[UDP].dport) == (sport6 if v6 else sport4, 5000)
        assert bytes(ip[UDP].payload) == (b"six" if v6 else b"four")
        assert_same_as_pyroute2(pkt)


def test_rule_without_prefix_gives_empty_prefix_and_no_mark(logged: Pair) -> None:
    p = logged
    with NflogSocket(G, netns=p.a.name, qthreshold=1) as sock:
        p.b.send_udp(p.a_ip4, 5001, b"plain")
        (pkt,) = receive(sock, 1)
    assert pkt.prefix == ""
    assert pkt.mark is None  # no NFULA_MARK for an unmarked packet (the plugin turns this into 0)
    assert pkt.seq is None and pkt.seq_global is None  # not asked for
    assert_same_as_pyroute2(pkt)


def test_output_hook_has_uid_gid_and_no_link_layer(logged: Pair) -> None:
    p = logged
    with NflogSocket(G, netns=p.a.name, qthreshold=1) as sock:
        p.a.call(send_as, 1234, 4321, p.b_ip4, 6000, b"local")
        (pkt,) = receive(sock, 1)
    assert pkt.hook == 3  # output
    assert pkt.prefix == "OUT "
    assert (pkt.uid, pkt.gid) == (1234, 4321)
    assert pkt.outdev == p.a.ifindex(p.a_if) and pkt.indev is None
    assert pkt.hwaddr is None and pkt.hwheader is None and pkt.hwtype is None
    assert pkt.timestamp is None  # the kernel stamps only prerouting, input and forward
    ip = IP(pkt.payload)
    assert (ip.src, ip.dst, ip[UDP].dport, bytes(ip[UDP].payload)) == (p.a_ip4, p.b_ip4, 6000, b"local")
    assert_same_as_pyroute2(pkt)


def test_second_listener_gets_a_clear_busy_error(logged: Pair) -> None:
    p = logged
    first = NflogSocket(G, netns=p.a.name)
    try:
        assert bound_groups(p.a.name).get(G) == first.portid
        with pytest.raises(NflogBusyError) as info:
            NflogSocket(G, netns=p.a.name)
        err = info.value
        assert err.errno == errno.EBUSY
        text = str(err)
        assert f"NFLOG group {G} is already bound" in text
        assert f"port id {first.portid}" in text
        assert f"pid {os.getpid()}" in text  # the other listener, found by its socket inode
        assert "/proc/net/netfilter/nfnetlink_log" in text
        assert f"ip netns exec {p.a.name}" in text
        # another group is free
        NflogSocket(G + 1, netns=p.a.name).close()
    finally:
        first.close()
    # closing unbinds: the group can be taken again at once
    again = NflogSocket(G, netns=p.a.name, qthreshold=1)
    with again:
        p.b.send_udp(p.a_ip4, 5000, b"again")
        assert receive(again, 1)[0].prefix == "IN "


@pytest.mark.parametrize(
    ("mode", "copy_range", "expected"), [("meta", 0xFFFF, None), ("none", 0xFFFF, None), ("packet", 20, 20)]
)
def test_copy_mode_and_range(logged: Pair, mode: str, copy_range: int, expected: int | None) -> None:
    p = logged
    with NflogSocket(G, netns=p.a.name, qthreshold=1, copy_mode=mode, copy_range=copy_range) as sock:
        p.b.send_udp(p.a_ip4, 5000, b"x" * 100)
        (pkt,) = receive(sock, 1)
    assert pkt.prefix == "IN " and pkt.mark == 0x2A  # the metadata comes in every mode
    if expected is None:
        assert pkt.payload is None
    else:
        assert pkt.payload is not None and len(pkt.payload) == expected
        assert IP(pkt.payload).src == p.b_ip4  # the first bytes of the real packet


def test_bridge_vlan_physdev_and_l2hdr(netns_pair: Pair) -> None:
    p = netns_pair
    p.a.run(f"ip link add br0 type bridge && ip link set {p.a_if} master br0 && ip link set br0 up")
    p.a.nft(BRIDGE_RULES)
    b_mac = p.b.mac(p.b_if)
    dst = bytes.fromhex("020000000001")
    frame = (
        Ether(src=b_mac, dst=dst)
        / Dot1Q(vlan=42, prio=3)
        / IP(src="192.0.2.1", dst="192.0.2.2")
        / UDP(sport=1, dport=2)
        / b"vlan"
    )
    with NflogSocket(G, netns=p.a.name, qthreshold=1) as sock:
        p.b.send_frames([bytes(frame)], p.b_if)
        (pkt,) = receive(sock, 1)
    assert pkt.family == socket.AF_BRIDGE
    assert pkt.prefix == "BR "
    assert pkt.vlan_proto == 0x8100
    assert pkt.vlan_tci == (3 << 13) | 42
    assert pkt.physindev == p.a.ifindex(p.a_if)  # the bridge port ...
    assert pkt.indev == p.a.ifindex("br0")  # ... of this bridge
    # the kernel has taken the tag off: the layer-2 header is the plain Ethernet one
    assert pkt.l2hdr == dst + b_mac + b"\x08\x00"
    assert IP(pkt.payload).dst == "192.0.2.2"
    assert_same_as_pyroute2(pkt)


def test_conntrack_attribute_or_clean_fallback(logged: Pair) -> None:
    p = logged
    p.a.nft("table inet ctt {\n chain c {\n  type filter hook input priority -10;\n  ct state new counter\n }\n}\n")
    try:
        NflogSocket(G, netns=p.a.name, flags=FLAG_CONNTRACK).close()
        supported = True
    except NflogError as exc:
        assert exc.errno in (errno.EOPNOTSUPP, errno.EAGAIN), exc
        supported = False
    with NflogSocket(G, netns=p.a.name, qthreshold=1, flags=FLAG_SEQ | FLAG_CONNTRACK, strict=False) as sock:
        sport = p.b.send_udp(p.a_ip4, 5000, b"ct")
        (pkt,) = receive(sock, 1)
    assert pkt.seq == 0  # the sequence flag survives a refused conntrack flag
    if not supported:
        assert sock.failures["flags"].errno in (errno.EOPNOTSUPP, errno.EAGAIN)
        assert sock.flags == FLAG_SEQ
        assert pkt.ct is None and pkt.ct_info is None
        return
    assert pkt.ct_info == 2  # IP_CT_NEW
    ct = nfct_msg(bytes(20) + pkt.ct)  # a ctnetlink message around the attributes
    ct.decode()
    orig = ct.get_attr("CTA_TUPLE_ORIG")
    assert orig.get_nested("CTA_TUPLE_IP", "CTA_IP_V4_SRC") == p.b_ip4
    assert orig.get_nested("CTA_TUPLE_PROTO", "CTA_PROTO_SRC_PORT") == sport


def test_netns_option_leaves_the_thread_where_it_was(logged: Pair) -> None:
    before = os.stat("/proc/thread-self/ns/net").st_ino
    with NflogSocket(G, netns=logged.a.name) as sock:
        assert os.stat("/proc/thread-self/ns/net").st_ino == before
        assert sock.statistics()["rcvbuf"] > 0
    with NflogSocket(G + 2, netns=f"/run/netns/{logged.a.name}"):  # a path works too
        pass
    with pytest.raises(NflogError, match="not found"):
        NflogSocket(G, netns="pylogd-no-such-namespace")
    assert os.stat("/proc/thread-self/ns/net").st_ino == before


def test_enobufs_counted_lost_measured_buffer_grown(logged: Pair) -> None:
    p = logged
    sock = NflogSocket(G, netns=p.a.name, qthreshold=1, flags=FLAG_SEQ, rcvbuf=4096, rcvbuf_max=8 << 20)
    with sock:
        initial = sock.rcvbuf
        p.b.send_udp(p.a_ip4, 5000, b"burst" * 20, count=3000)  # nobody reads meanwhile: the buffer overflows
        time.sleep(0.2)
        got: list[int] = []
        wait_for(lambda: sock.drain(lambda rec: got.append(rec[F_SEQ])) == 0 and got, what="the burst")
        assert sock.enobufs >= 1
        assert sock.grown >= 1 and sock.rcvbuf > initial
        assert got == list(range(len(got)))  # what got through is in order
        # the messages dropped at the end of the burst show as a hole when the next one arrives
        after = []
        for _ in range(3):
            p.b.send_udp(p.a_ip4, 5000, b"after")
            after += receive(sock, 1)
        assert [pk.seq for pk in after] == [3000, 3001, 3002]
        stats = sock.statistics()
        assert stats["received"] == len(got) + 3
        assert stats["lost"] == 3000 - len(got) > 0
        assert stats["enobufs"] == sock.enobufs


def test_reader_speed_on_a_burst(logged: Pair, record_property: pytest.RecordProperty) -> None:
    """Receive + decode cost per packet; printed with -s and recorded as a junit property."""
    p = logged
    n = 20000
    with NflogSocket(G, netns=p.a.name, qthreshold=50, qtimeout=1, rcvbuf=64 << 20, nlbufsiz=65536) as sock:
        p.b.send_udp(p.a_ip4, 5000, b"payload-" * 8, count=n)
        time.sleep(0.3)  # let the kernel flush its last batch into the socket
        count = [0]

        def on_packet(rec: list) -> None:
            count[0] += 1

        cpu0, t0 = time.process_time(), time.perf_counter()
        while count[0] < n and sock.drain(on_packet):
            pass
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        assert count[0] == n and sock.lost == 0 and sock.enobufs == 0
    us = wall / n * 1e6
    record_property("nflog_us_per_packet", round(us, 2))
    print(f"\nNFLOG reader: {n} packets, {us:.2f} us/packet wall, {cpu / n * 1e6:.2f} us/packet CPU")
    assert us < 50  # generous: about 2-4 us on a 2-core VM


# ---------------------------------------------------------------------------------------------
# decoding hand-made and damaged messages


def nla_bytes(atype: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, atype) + payload + bytes(-length % 4)


def synthetic_message(
    mark: int = 0xDEADBEEF, seq: int = 77, payload: bytes = b"\x45" + bytes(27), prefix: str = "ALL "
) -> tuple[bytes, dict]:
    """Every NFLOG attribute, encoded here independently of pylogd's decoder."""
    want = {
        "family": 7,
        "group": 513,
        "hook": 2,
        "hw_protocol": 0x8100,
        "mark": mark,
        "timestamp": (1_700_000_000, 123456),
        "indev": 3,
        "outdev": 4,
        "physindev": 5,
        "physoutdev": 6,
        "hwaddr": bytes.fromhex("0a0b0c0d0e0f"),
        "hwaddrlen": 6,
        "payload": payload,
        "prefix": prefix,
        "uid": 1000,
        "gid": 100,
        "seq": seq,
        "seq_global": 88,
        "hwtype": 1,
        "hwheader": bytes(range(14)),
        "hwlen": 14,
        "vlan_proto": 0x88A8,
        "vlan_tci": 0x2005,
        "l2hdr": bytes(range(18)),
        "ct": nla_bytes(12, struct.pack(">I", 99)),  # CTA_ID, as a sample nested attribute
        "ct_info": 3,
    }
    attrs = b"".join(
        [
            nla_bytes(1, struct.pack(">HBx", want["hw_protocol"], want["hook"])),
            nla_bytes(10, prefix.encode() + b"\0"),
            nla_bytes(4, struct.pack(">I", 3)),
            nla_bytes(5, struct.pack(">I", 4)),
            nla_bytes(6, struct.pack(">I", 5)),
            nla_bytes(7, struct.pack(">I", 6)),
            nla_bytes(2, struct.pack(">I", mark)),
            nla_bytes(8, struct.pack(">H2x8s", 6, want["hwaddr"])),
            nla_bytes(15, struct.pack(">H", 1)),
            nla_bytes(17, struct.pack(">H", 14)),
            nla_bytes(16, want["hwheader"]),
            nla_bytes(3, struct.pack(">QQ", *want["timestamp"])),
            nla_bytes(11, struct.pack(">I", 1000)),
            nla_bytes(14, struct.pack(">I", 100)),
            nla_bytes(12, struct.pack(">I", seq)),
            nla_bytes(13, struct.pack(">I", 88)),
            nla_bytes(18 | 0x8000, want["ct"]),
            nla_bytes(19, struct.pack(">I", 3)),
            nla_bytes(20 | 0x8000, nla_bytes(1, struct.pack(">H", 0x88A8)) + nla_bytes(2, struct.pack(">H", 0x2005))),
            nla_bytes(21, want["l2hdr"]),
            nla_bytes(99, b"unknown attributes are skipped"),
            nla_bytes(9, want["payload"]),
        ]
    )
    body = struct.pack(">BBH", 7, 0, 513) + attrs
    msg = struct.pack("=IHHII", 16 + len(body), 0x0400, 0, 0, 0) + body
    want["msg"] = msg
    return msg, want


def owned(rec: object) -> Packet:
    return Packet._make(bytes(v) if isinstance(v, memoryview) else v for v in rec)  # type: ignore[attr-defined]


def walked(msg: bytes) -> Packet:
    """The attribute walk's reading of a message, for comparison with the compiled path."""
    return owned(decode_message(memoryview(msg), 0, len(msg)))


CLOCK = (1700000000, 123456)  # the receive time a record spec falls back to
#: a record spec with an item of every kind (the NFLOG input's is made of these)
MIXED = (
    *PACKET_RECORD,
    Const("label"),
    Const(None),
    Default(F_MARK, 0),
    Default(F_GID, -1),
    WithHwHeader(F_HWTYPE),
    WithHwHeader(F_HWLEN),
    *Derived,
)


def copied(rec: object) -> tuple:
    return tuple(bytes(v) if isinstance(v, memoryview) else v for v in rec)  # type: ignore[attr-defined]


def assert_compiled_like_walk(msg: bytes, learned_from: bytes | None = None) -> None:
    """A layout compiled from ``learned_from`` (default: the message itself) reads ``msg`` as the
    walk does, or declines it; with the plain spec and with MIXED."""
    base = memoryview(learned_from or msg)
    for spec in (PACKET_RECORD, MIXED):
        layout = compile_layout(base, 0, len(base), spec)
        if learned_from is None:
            assert layout is not None
        if layout is None:
            continue
        fast = layout(memoryview(msg), 0, len(msg), CLOCK) if len(msg) >= 20 else None
        if learned_from is None:
            assert fast is not None
        if fast is not None:
            want = project(decode_message(memoryview(msg), 0, len(msg)), spec, CLOCK)
            assert copied(fast) == copied(want)


def test_synthetic_message_with_every_attribute() -> None:
    msg, want = synthetic_message()
    rec = decode_message(memoryview(msg), 0, len(msg))
    pkt = Packet._make(bytes(v) if isinstance(v, memoryview) else v for v in rec)
    assert pkt._asdict() == want
    assert_same_as_pyroute2(pkt)


def variants() -> list[bytes]:
    """Messages of several layouts: every attribute; no payload; a short one; odd padding."""
    full, _ = synthetic_message()
    out = [full]
    body = struct.pack(">BBH", 2, 0, 1) + nla_bytes(1, struct.pack(">HBx", 0x800, 3)) + nla_bytes(10, b"P\0")
    out.append(struct.pack("=IHHII", 16 + len(body), 0x0400, 0, 0, 0) + body)  # meta: no payload
    body += nla_bytes(11, struct.pack(">I", 5)) + nla_bytes(9, b"\x45ab")  # 7 bytes: one of padding
    out.append(struct.pack("=IHHII", 16 + len(body), 0x0400, 0, 0, 0) + body)
    unpadded = body[:-1]  # the payload's padding left out of nlmsg_len
    out.append(struct.pack("=IHHII", 16 + len(unpadded), 0x0400, 0, 0, 0) + unpadded)
    return out


def test_compiled_layout_decodes_like_the_walk() -> None:
    for msg in variants():
        assert_compiled_like_walk(msg)
        layout = compile_layout(memoryview(msg), 0, len(msg))
        assert owned(layout(memoryview(msg), 0, len(msg), CLOCK)) == walked(msg)
    # same layout, other values: the compiled layout reads them, the payload at any length
    first, _ = synthetic_message()
    layout = compile_layout(memoryview(first), 0, len(first))
    for size in (0, 1, 2, 3, 4, 5, 1500):
        msg, _ = synthetic_message(mark=size + 1, seq=size * 1000, payload=(bytes(range(256)) * 6)[:size])
        fast = layout(memoryview(msg), 0, len(msg), CLOCK)
        assert fast is not None and owned(fast) == walked(msg)
        assert owned(fast).mark == size + 1 and len(owned(fast).payload) == size
        assert_compiled_like_walk(msg, learned_from=first)


def test_record_spec_items() -> None:
    msg, want = synthetic_message()
    rec = compile_layout(memoryview(msg), 0, len(msg), MIXED)(memoryview(msg), 0, len(msg), CLOCK)
    extra = copied(rec[len(PACKET_RECORD) :])
    ts = want["timestamp"]
    assert extra == (
        "label",
        None,
        want["mark"],
        want["gid"],
        want["hwtype"],
        want["hwlen"],
        len(want["payload"]),
        ts[0],
        ts[1],
        want["vlan_tci"] & 0x0FFF,
    )
    # a message without mark, gid, hardware header, payload, timestamp or VLAN
    body = struct.pack(">BBH", 2, 0, 1) + nla_bytes(1, struct.pack(">HBx", 0x800, 3))
    bare = struct.pack("=IHHII", 16 + len(body), 0x0400, 0, 0, 0) + body
    rec = compile_layout(memoryview(bare), 0, len(bare), MIXED)(memoryview(bare), 0, len(bare), CLOCK)
    assert copied(rec[len(PACKET_RECORD) :]) == ("label", None, 0, -1, None, None, None, *CLOCK, None)
    with pytest.raises(ValueError, match="record spec"):
        NflogSocket(G, record=(F_SEQ, "oob.seq"))


@settings(max_examples=1500, deadline=None)
@given(
    st.sampled_from(variants()),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=3),
    st.integers(-12, 12),
    st.one_of(st.binary(max_size=12), st.builds(nla_bytes, st.integers(0, 30), st.binary(max_size=8))),
)
def test_compiled_path_never_disagrees_with_the_walk(
    base: bytes, flips: list[tuple[int, int]], cut: int, tail: bytes
) -> None:
    msg = bytearray(base)
    for i, v in flips:
        msg[i % len(msg)] = v
    if cut < 0:
        del msg[cut:]
    elif cut > 0:
        msg += tail  # garbage, or one more attribute after the payload
    if len(msg) >= 4:
        msg[0:4] = struct.pack("=I", len(msg))  # the message claims what it has
    data = bytes(msg)
    assert_compiled_like_walk(data, learned_from=base)
    # a layout learned from the damaged message must read that message like the walk, and the
    # undamaged one too (or decline it)
    if len(data) >= 20:
        assert_compiled_like_walk(base, learned_from=data)
        if compile_layout(memoryview(data), 0, len(data)) is not None:
            assert_compiled_like_walk(data, learned_from=data)


def test_truncated_messages_decode_a_consistent_prefix() -> None:
    msg, want = synthetic_message()
    for cut in range(len(msg) + 1):
        rec = decode_message(memoryview(msg[:cut]), 0, cut)
        for name, value in zip(FIELDS, rec, strict=True):
            if name != "msg" and value is not None:
                value = bytes(value) if isinstance(value, memoryview) else value
                assert value == want[name], (cut, name)


def test_short_attributes_are_skipped_not_misread() -> None:
    body = struct.pack(">BBH", 2, 0, 1) + nla_bytes(2, b"\x01") + nla_bytes(4, struct.pack(">I", 9))
    msg = struct.pack("=IHHII", 16 + len(body), 0x0400, 0, 0, 0) + body
    rec = decode_message(memoryview(msg), 0, len(msg))
    assert rec[FIELDS.index("mark")] is None  # a 1-byte NFULA_MARK
    assert rec[FIELDS.index("indev")] == 9  # the walk goes on after it


def test_receive_path_survives_garbage_datagrams(netns: Netns) -> None:
    sock = NflogSocket(G, netns=netns.name)
    seen: list[list] = []
    msg, _ = synthetic_message()

    @settings(max_examples=300, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=300),
            st.tuples(st.integers(0, len(msg) - 1), st.integers(0, 255)).map(
                lambda t: msg[: t[0]] + bytes([t[1]]) + msg[t[0] + 1 :]
            ),
            st.integers(0, len(msg)).map(lambda n: msg[:n]),
        )
    )
    def feed(data: bytes) -> None:
        sock._raced.append(data)  # the path datagrams that race an ACK take: the same walker
        sock.drain(lambda rec: seen.append(list(rec)))

    with sock:
        feed()
        assert sock.received == len(seen)
        assert sock.truncated > 0  # some of the damage was noticed


def test_layout_churn_is_learnt_at_a_bounded_rate_and_decodes_like_the_walk(netns: Netns) -> None:
    """More layouts than the cache holds, in turns (one rule per prefix): every record is still the
    walk's, and no more layouts are compiled than the budget allows."""
    msgs = [synthetic_message(prefix=f"RULE{i:03d} ")[0] for i in range(120)]  # one key, 120 layouts
    got: list[Packet] = []
    sock = NflogSocket(G, netns=netns.name)
    with sock:
        start = time.monotonic()
        for _ in range(3):
            sock._raced.extend(msgs)  # the path datagrams that race an ACK take: the same walker
            while sock._raced:
                sock.drain(lambda rec: got.append(owned(rec)))
        elapsed = time.monotonic() - start
    assert got == [walked(m) for m in msgs] * 3
    assert 0 < sock.compiled <= 50 * (int(elapsed) + 1)  # _COMPILES_PER_SECOND
    assert sock.slow >= len(got) - 2 * 8  # only the 8 layouts a key keeps are found again


# ---------------------------------------------------------------------------------------------
# the input plugin in this process, with a feed that records every event


def nflog_plugin(**options: object) -> Nflog:
    values = {o.name: o.default for o in Nflog.spec.options}
    values.update(options)
    plugin = Nflog("log1", values, Logger("log1"))
    plugin.configure()
    return plugin


class PartlyReadFeed(RecordingFeed):
    """A feed whose stacks read none of ``unread``."""

    def __init__(self, outputs: tuple, unread: frozenset[str]) -> None:
        super().__init__(outputs)
        self.unread = unread

    def used(self, name: str) -> bool:
        return name not in self.unread


@pytest.mark.parametrize("unread", [frozenset(), frozenset({"raw", "raw.mac.saddr", "oob.seq.local"})])
def test_plugin_key_validity_follows_ulogd(logged: Pair, unread: frozenset[str]) -> None:
    p = logged
    plugin = nflog_plugin(group=G, netns=p.a.name, seq_local=1, numeric_label=9, netlink_qthreshold=1)
    feed = PartlyReadFeed(Nflog.spec.outputs, unread)
    plugin.feed = feed
    loop = EventLoop()
    plugin.start(loop)
    try:
        p.b.send_udp(p.a_ip4, 5001, b"in")  # no prefix, no mark
        p.a.call(send_as, 1234, 4321, p.b_ip4, 6000, b"out")

        def pump() -> bool:
            loop.call_later(0.05, loop.stop)
            loop.run()
            return len(feed.events) >= 2

        wait_for(pump, what="two events")
    finally:
        plugin.stop()
        loop.close()
    incoming, outgoing = feed.events
    always = {"raw.pkt", "raw.pktlen", "raw.pktcount", "oob.prefix", "oob.time.sec", "oob.time.usec", "oob.mark"}
    always |= {"oob.hook", "oob.seq.local", "oob.family", "oob.protocol", "raw.label", "raw", "oob.netns"}
    link = {"raw.mac", "raw.mac_len", "raw.type", "raw.mac.saddr", "raw.mac.addrlen"}
    skipped = unread - {"oob.seq.local"}  # made all the same: the socket counts losses from it
    assert set(incoming) == (always | link | {"oob.ifindex_in"}) - skipped
    assert set(outgoing) == (always | {"oob.ifindex_out", "oob.uid", "oob.gid"}) - skipped
    if unread:
        return
    assert incoming["oob.prefix"] == "" and incoming["oob.mark"] == 0
    assert incoming["raw.pktcount"] == 1 and incoming["raw.label"] == 9
    assert incoming["oob.netns"] == p.a.name
    assert incoming["raw.mac.saddr"] == p.b.mac(p.b_if) and incoming["raw.mac.addrlen"] == 6
    assert incoming["raw.mac"][6:12] == p.b.mac(p.b_if) and incoming["raw.mac_len"] == 14
    assert incoming["raw.pktlen"] == len(incoming["raw.pkt"]) and IP(incoming["raw.pkt"]).dst == p.a_ip4
    assert walked(incoming["raw"]).payload == incoming["raw.pkt"]
    assert (outgoing["oob.uid"], outgoing["oob.gid"], outgoing["oob.hook"]) == (1234, 4321, 3)
    assert [incoming["oob.seq.local"], outgoing["oob.seq.local"]] == [0, 1]
    assert feed.flushes >= 1
    stats = plugin.statistics()  # still readable after stop
    assert (stats["received"], stats["lost"], stats["enobufs"]) == (2, 0, 0)
    assert G not in bound_groups(p.a.name)  # stop() gave the group back


def test_plugin_start_fails_clearly_on_a_busy_group(logged: Pair) -> None:
    with NflogSocket(G, netns=logged.a.name):
        plugin = nflog_plugin(group=G, netns=logged.a.name)
        plugin.feed = RecordingFeed(Nflog.spec.outputs)
        loop = EventLoop()
        try:
            with pytest.raises(PluginError, match=f"NFLOG group {G} is already bound"):
                plugin.start(loop)
        finally:
            loop.close()


# ---------------------------------------------------------------------------------------------
# the daemon


def daemon_conf(tmp: Path, stacks: list[str], log1: str, extra: str = "") -> tuple[Path, Path]:
    conf, logfile = tmp / "pylogd.conf", tmp / "pylogd.log"
    lines = "\n".join(f"stack={s}" for s in stacks)
    conf.write_text(
        f'[global]\nlogfile="{logfile}"\nloglevel=1\nplugin="{TEST_PLUGINS}"\n{lines}\n'
        f'[log1]\ngroup={G}\n{log1}\n[cap1]\nfile="{tmp}/cap1.json"\n[cap2]\nfile="{tmp}/cap2.json"\n{extra}'
    )
    return conf, logfile


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in read_text(path).splitlines()]


def wait_records(path: Path, n: int, timeout: float = 10) -> list[dict]:
    """The capture file's records once there are ``n``; fails at once if the daemon logs an event error."""
    logfile = path.parent / "pylogd.log"

    def enough() -> bool:
        log = read_text(logfile)
        assert "failed on an event" not in log, f"the daemon could not handle an event:\n{log}"
        return len(records(path)) >= n

    wait_for(enough, timeout=timeout, what=f"{n} records in {path.name}")
    return records(path)


def test_daemon_end_to_end(logged: Pair, tmp_path: Path) -> None:
    p = logged
    conf, logfile = daemon_conf(
        tmp_path,
        ["log1:NFLOG,cap1:CAPTURE", "log1:NFLOG,cap2:CAPTURE"],
        "seq_local=1\nnumeric_label=7\nnetlink_qthreshold=1",
    )
    daemon = start_pylogd(p.a, conf, logfile)
    sport = p.b.send_udp(p.a_ip4, 5000, b"e2e", count=20)
    p.a.call(send_as, 1234, 4321, p.b_ip4, 6000, b"local")
    recs = wait_records(tmp_path / "cap1.json", 21)
    ifindex, b_mac = p.a.ifindex(p.a_if), p.b.mac(p.b_if)
    assert [r["oob.seq.local"] for r in recs] == list(range(21))  # no gap
    for r in recs[:20]:
        assert r["oob.prefix"] == "IN " and r["oob.mark"] == 0x2A
        assert r["oob.hook"] == 1 and r["oob.ifindex_in"] == ifindex and "oob.ifindex_out" not in r
        assert r["oob.family"] == 2 and r["oob.protocol"] == 0x0800
        assert r["raw.pktcount"] == 1 and r["raw.label"] == 7
        assert r["raw.mac.saddr"] == b_mac.hex() and r["raw.mac.addrlen"] == 6
        assert r["raw.type"] == 1 and r["raw.mac_len"] == 14 and len(r["raw.mac"]) == 28
        pkt = bytes.fromhex(r["raw.pkt"])
        assert r["raw.pktlen"] == len(pkt)
        ip = IP(pkt)
        assert (ip.src, ip[UDP].sport, bytes(ip[UDP].payload)) == (p.b_ip4, sport, b"e2e")
        raw = bytes.fromhex(r["raw"])  # the whole netlink message
        assert struct.unpack_from("=IH", raw) == (len(raw), 0x0400) and pkt in raw
        assert "oob.uid" not in r and "oob.netns" not in r and "ct" not in r
    out = recs[20]
    assert out["oob.hook"] == 3 and out["oob.prefix"] == "OUT "
    assert (out["oob.uid"], out["oob.gid"]) == (1234, 4321)
    assert out["oob.ifindex_out"] == ifindex and "oob.ifindex_in" not in out
    assert "raw.mac" not in out and "raw.mac.saddr" not in out and "raw.type" not in out
    assert out["oob.mark"] == 0  # valid and 0 when the packet has no mark
    assert abs(out["oob.time.sec"] - time.time()) < 10  # no kernel timestamp: the receive time
    # both stacks got the same values, including the receive time of the OUTPUT packet
    other = wait_records(tmp_path / "cap2.json", 21)
    assert other == recs
    daemon.signal(signal.SIGUSR1)
    line = wait_for(
        lambda: next((x for x in read_text(logfile).splitlines() if "(NFLOG): received=" in x), None),
        what="the statistics line",
    )
    assert "received=21 enobufs=0 lost=0" in line
    assert daemon.stop() == 0


def test_daemon_copy_mode_meta_has_no_packet(logged: Pair, tmp_path: Path) -> None:
    p = logged
    conf, logfile = daemon_conf(tmp_path, ["log1:NFLOG,cap1:CAPTURE"], "copy_mode=meta\nnetlink_qthreshold=1")
    start_pylogd(p.a, conf, logfile)
    p.b.send_udp(p.a_ip4, 5000, b"meta")
    (r,) = wait_records(tmp_path / "cap1.json", 1)
    assert "raw.pkt" not in r and "raw.pktlen" not in r
    assert r["oob.prefix"] == "IN " and r["oob.ifindex_in"] == p.a.ifindex(p.a_if)


def test_daemon_in_root_namespace_reads_a_namespace(rig: Rig, logged: Pair, tmp_path: Path) -> None:
    p = logged
    conf, logfile = daemon_conf(
        tmp_path, ["log1:NFLOG,ifi1:IFINDEX,cap1:CAPTURE"], f"netns={p.a.name}\nnetlink_qthreshold=1"
    )
    start_pylogd(rig, conf, logfile)  # the rig's spawn runs in the root namespace
    p.b.send_udp(p.a_ip4, 5000, b"from-outside")
    (r,) = wait_records(tmp_path / "cap1.json", 1)
    assert r["oob.netns"] == p.a.name
    assert r["oob.ifindex_in"] == p.a.ifindex(p.a_if)
    # IFINDEX names the index in the packet's namespace, not in the daemon's
    assert r["oob.in"] == p.a_if and r["oob.out"] == ""
    assert IP(bytes.fromhex(r["raw.pkt"])).src == p.b_ip4


def test_daemon_second_instance_on_the_group_fails_clearly(logged: Pair, tmp_path: Path) -> None:
    p = logged
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    conf1, log1 = daemon_conf(one, ["log1:NFLOG,cap1:CAPTURE"], "")
    conf2, log2 = daemon_conf(two, ["log1:NFLOG,cap1:CAPTURE"], "")
    first = start_pylogd(p.a, conf1, log1)
    second = p.a.spawn([*pylogd_command(), "-c", str(conf2)])
    wait_for(lambda: not second.alive(), what="the second daemon to give up")
    assert second.popen.returncode == 1
    text = read_text(log2) + second.output()
    assert f"NFLOG group {G} is already bound by another listener" in text
    assert "nfnetlink_log" in text
    assert first.alive()


def test_daemon_losing_events_is_logged_and_counted(logged: Pair, tmp_path: Path) -> None:
    p = logged
    conf, logfile = daemon_conf(
        tmp_path,
        ["log1:NFLOG,cap1:CAPTURE"],
        "seq_local=1\nnetlink_qthreshold=1\nnetlink_socket_buffer_size=4096",
    )
    daemon = start_pylogd(p.a, conf, logfile)
    # ulogd would not apply the size without a larger maxsize; the kernel reports double the request
    assert "NFLOG netlink buffer size has been set to 8192" in read_text(logfile)
    daemon.signal(signal.SIGSTOP)
    try:
        p.b.send_udp(p.a_ip4, 5000, b"lost?" * 20, count=2000)
    finally:
        daemon.signal(signal.SIGCONT)
    p.b.send_udp(p.a_ip4, 5000, b"marker", count=1)
    wait_records(tmp_path / "cap1.json", 1)
    wait_for(lambda: any(r["oob.seq.local"] == 2000 for r in records(tmp_path / "cap1.json")), what="the marker")
    daemon.signal(signal.SIGUSR1)
    line = wait_for(
        lambda: next((x for x in read_text(logfile).splitlines() if "(NFLOG): received=" in x), None),
        what="the statistics line",
    )
    got = len(records(tmp_path / "cap1.json"))
    assert f"received={got} " in line
    enobufs = int(line.split("enobufs=")[1].split()[0])
    lost = int(line.split("lost=")[1].split()[0])
    assert enobufs >= 1 and lost >= 1 and got + lost == 2001  # the marker closes every gap
    assert read_text(logfile).count("We are losing events") == 1  # rate-limited


def test_daemon_exit_statistics_count_the_last_drain(logged: Pair, tmp_path: Path) -> None:
    """SIGTERM with a burst still in the socket: every packet is written, and the input's final
    counters include the ones read by the last drain."""
    p = logged
    conf, logfile = daemon_conf(
        tmp_path,
        ["log1:NFLOG,cap1:CAPTURE"],
        "netlink_socket_buffer_size=16777216\nnetlink_socket_buffer_maxsize=16777216",
    )
    daemon = start_pylogd(p.a, conf, logfile)
    daemon.signal(signal.SIGSTOP)
    try:
        p.b.send_udp(p.a_ip4, 5000, b"burst", count=5000)
    finally:
        daemon.signal(signal.SIGTERM)
        daemon.signal(signal.SIGCONT)
    assert daemon.stop(timeout=60) == 0
    log = read_text(logfile)
    written = int(re.findall(r"stack 1 \[[^\]]*\]: .*written=(\d+)", log)[-1])
    received = int(re.findall(r"\(NFLOG\): received=(\d+)", log)[-1])
    assert written == len(records(tmp_path / "cap1.json")) == 5000
    assert received == 5000


def test_daemon_refused_start_leaves_the_running_daemons_files_alone(logged: Pair, tmp_path: Path) -> None:
    """A second daemon on the same config (same log file) whose group is taken: it says why on stderr,
    writes nothing into the first daemon's log and leaves no empty output file behind."""
    p = logged
    conf, logfile = daemon_conf(tmp_path, ["log1:NFLOG,op1:OPRINT"], "", f'[op1]\nfile="{tmp_path}/first.txt"\n')
    first = start_pylogd(p.a, conf, logfile)
    before = logfile.read_bytes()
    conf2 = tmp_path / "second.conf"
    conf2.write_text(conf.read_text().replace(f"{tmp_path}/first.txt", f"{tmp_path}/second.json"))
    second = p.a.spawn([*pylogd_command(), "-c", str(conf2)])
    wait_for(lambda: not second.alive(), what="the second daemon to give up")
    assert second.popen.returncode == 1
    said = second.output()
    assert f"NFLOG group {G} is already bound by another listener" in said
    assert "[Errno" not in said  # one errno only: what the kernel answered
    assert said.count("is already bound") == 1
    assert logfile.read_bytes() == before
    assert not (tmp_path / "second.json").exists()
    assert first.alive()


@pytest.mark.parametrize(("option", "expected"), [(0, DEFAULT_RCVBUF), (1 << 20, 1 << 20)])
def test_plugin_receive_buffer_defaults_to_pylogds_not_the_kernels(logged: Pair, option: int, expected: int) -> None:
    plugin = nflog_plugin(group=G, netns=logged.a.name, netlink_socket_buffer_size=option)
    plugin.feed = RecordingFeed(Nflog.spec.outputs)
    loop = EventLoop()
    try:
        plugin.start(loop)
        assert plugin.statistics()["rcvbuf"] == 2 * expected  # the kernel reports twice what was set
    finally:
        plugin.stop()
        loop.close()
