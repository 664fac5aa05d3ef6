"""The hand-written ctnetlink decoder (pylogd.conntrack.decode) against pyroute2's decoding of
the same bytes, and its behaviour on truncated and garbage messages."""

from __future__ import annotations

import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from pylogd import conntrack as ct
from pylogd.conntrack import FIELDS, NFIELDS, decode

NESTED = 0x8000


def nla(atype: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, atype) + payload + b"\0" * ((-length) % 4)


def tuple_attr(atype: int, family: int, src: bytes, dst: bytes, proto: int, a: int, b: int, icmp: bool) -> bytes:
    ip = (
        nla(1, src) + nla(2, dst) if family == socket.AF_INET else nla(3, src) + nla(4, dst)
    )  # CTA_IP_V4_* / CTA_IP_V6_*
    p = nla(1, bytes([proto]))
    if icmp:
        v6 = family == socket.AF_INET6
        p += (
            nla(7 if v6 else 4, struct.pack(">H", 77))
            + nla(8 if v6 else 5, bytes([a]))
            + nla(9 if v6 else 6, bytes([b]))
        )
    else:
        p += nla(2, struct.pack(">H", a)) + nla(3, struct.pack(">H", b))
    return nla(atype | NESTED, nla(1 | NESTED, ip) + nla(2 | NESTED, p))


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    family = draw(st.sampled_from([socket.AF_INET, socket.AF_INET6]))
    alen = 4 if family == socket.AF_INET else 16
    addr = st.binary(min_size=alen, max_size=alen)
    icmp = draw(st.booleans())
    proto = (1 if family == socket.AF_INET else 58) if icmp else draw(st.sampled_from([6, 17, 132, 33, 136]))
    u16, u8 = st.integers(0, 0xFFFF), st.integers(0, 255)
    lo, hi = (u8, u8) if icmp else (u16, u16)
    attrs = tuple_attr(1, family, draw(addr), draw(addr), proto, draw(lo), draw(hi), icmp)
    attrs += tuple_attr(2, family, draw(addr), draw(addr), proto, draw(lo), draw(hi), icmp)
    u32, u64 = st.integers(0, 0xFFFFFFFF), st.integers(0, 2**64 - 1)
    for atype in (3, 7, 8, 12):  # status, timeout, mark, id: optional
        if draw(st.booleans()):
            attrs += nla(atype, struct.pack(">I", draw(u32)))
    for atype in (9, 10):
        if draw(st.booleans()):
            attrs += nla(atype | NESTED, nla(1, struct.pack(">Q", draw(u64))) + nla(2, struct.pack(">Q", draw(u64))))
    if draw(st.booleans()):
        attrs += nla(18, struct.pack(">H", draw(u16)))
    if draw(st.booleans()):
        attrs += nla(20 | NESTED, nla(1, struct.pack(">Q", draw(u64))) + nla(2, struct.pack(">Q", draw(u64))))
    if draw(st.booleans()):  # an attribute the decoder does not know (CTA_LABELS)
        attrs += nla(22, draw(st.binary(min_size=16, max_size=16)))
    mtype, flags = draw(st.sampled_from([(0x100, 0x600), (0x100, 0), (0x102, 0)]))
    body = struct.pack("=BBH", family, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), mtype, flags, 1, 0) + body


def decoded(msg: bytes, end: int | None = None) -> tuple[bool, dict]:
    """Decode twice: the first may scan and learn the layout, the second may use it; both
    must give the same record."""
    results = []
    for _ in range(2):
        rec: list = [None] * NFIELDS
        ok = decode(memoryview(msg), 0, len(msg) if end is None else end, rec)
        results.append((ok, {name: v for name, v in zip(FIELDS, rec, strict=True) if v is not None and name != "msg"}))
    assert results[0] == results[1]
    return results[0]


def ours(msg: bytes) -> dict:
    ok, fields = decoded(msg)
    assert ok
    return fields


def pyroute2_view(msg: bytes) -> dict:
    """What pyroute2 reads from the message, in the decoder's field names."""
    m = nfct_msg(msg)
    m.decode()
    out: dict = {"family": m["nfgen_family"]}
    mtype, flags = m["header"]["type"], m["header"]["flags"]
    out["event"] = 4 if mtype == 0x102 else (1 if flags & 0x600 else 2)
    fam = socket.AF_INET if out["family"] == socket.AF_INET else socket.AF_INET6
    for attr, side in (("CTA_TUPLE_ORIG", "orig"), ("CTA_TUPLE_REPLY", "reply")):
        t = m.get_attr(attr)
        ip, proto = t.get_attr("CTA_TUPLE_IP"), t.get_attr("CTA_TUPLE_PROTO")
        v = "V4" if fam == socket.AF_INET else "V6"
        out[f"{side}_src"] = socket.inet_pton(fam, ip.get_attr(f"CTA_IP_{v}_SRC"))
        out[f"{side}_dst"] = socket.inet_pton(fam, ip.get_attr(f"CTA_IP_{v}_DST"))
        out[f"{side}_proto"] = proto.get_attr("CTA_PROTO_NUM")
        for name, field in (("SRC_PORT", "sport"), ("DST_PORT", "dport")):
            if proto.get_attr(f"CTA_PROTO_{name}") is not None:
                out[f"{side}_{field}"] = proto.get_attr(f"CTA_PROTO_{name}")
        if side == "orig":
            for pre in ("CTA_PROTO_ICMP_", "CTA_PROTO_ICMPV6_"):
                for name in ("TYPE", "CODE", "ID"):
                    if proto.get_attr(pre + name) is not None:
                        out[f"icmp_{name.lower()}"] = proto.get_attr(pre + name)
    for attr, field in (("CTA_STATUS", "status"), ("CTA_TIMEOUT", "timeout"), ("CTA_MARK", "mark"), ("CTA_ID", "id")):
        if m.get_attr(attr) is not None:
            out[field] = m.get_attr(attr)
    if m.get_attr("CTA_ZONE") is not None:
        out["zone"] = m.get_attr("CTA_ZONE")
    for attr, side in (("CTA_COUNTERS_ORIG", "orig"), ("CTA_COUNTERS_REPLY", "reply")):
        c = m.get_attr(attr)
        if c is not None:
            out[f"{side}_pkts"] = c.get_attr("CTA_COUNTERS_PACKETS")
            out[f"{side}_bytes"] = c.get_attr("CTA_COUNTERS_BYTES")
    ts = m.get_attr("CTA_TIMESTAMP")
    if ts is not None:
        out["start"] = ts.get_attr("CTA_TIMESTAMP_START")
        out["stop"] = ts.get_attr("CTA_TIMESTAMP_STOP")
    return out


@settings(max_examples=300, deadline=None)
@given(messages())
def test_decoder_agrees_with_pyroute2(msg: bytes) -> None:
    assert ours(msg) == pyroute2_view(msg)


@settings(max_examples=150, deadline=None)
@given(messages(), st.data())
def test_truncated_and_garbled_messages_never_raise(msg: bytes, data: st.DataObject) -> None:
    full = ours(msg)
    cut = data.draw(st.integers(0, len(msg)))
    # a message whose buffer ends early (the nlmsghdr still claims the full length)
    _ok, got = decoded(msg[:cut])
    # whatever was read from the prefix is what the whole message says
    assert all(full[k] == v for k, v in got.items() if k in full), (got, full)
    # random corruption of the attribute bytes
    pos = data.draw(st.integers(20, len(msg) - 1))
    garbled = bytearray(msg)
    garbled[pos] = data.draw(st.integers(0, 255))
    decoded(bytes(garbled))


@given(st.binary(max_size=200))
def test_garbage_never_raises(blob: bytes) -> None:
    decoded(blob)
    decoded(blob, len(blob) + 50)  # an end beyond the buffer


def test_shapes_of_one_length_never_share_a_layout() -> None:
    tuples = tuple_attr(1, socket.AF_INET, b"\x0a\0\0\x01", b"\x0a\0\0\x02", 6, 1, 2, False)
    tuples += tuple_attr(2, socket.AF_INET, b"\x0a\0\0\x02", b"\x0a\0\0\x01", 6, 2, 1, False)
    msgs = []
    for atype, value in ((8, 7), (12, 9), (3, 5)):  # mark, id, status: same length, other meaning
        body = struct.pack("=BBH", 2, 0, 0) + tuples + nla(atype, struct.pack(">I", value))
        msgs.append(struct.pack("=IHHII", 16 + len(body), 0x100, 0, 0, 0) + body)
    assert len({len(m) for m in msgs}) == 1
    for msg in msgs * 2:
        assert ours(msg) == pyroute2_view(msg)
    assert [ours(m).get(k) for m, k in zip(msgs, ("mark", "id", "status"), strict=True)] == [7, 9, 5]


def test_event_kind_from_type_and_flags() -> None:
    base = tuple_attr(1, socket.AF_INET, b"\x0a\0\0\x01", b"\x0a\0\0\x02", 6, 1, 2, False)
    body = struct.pack("=BBH", 2, 0, 0) + base
    for mtype, flags, event in ((0x100, 0x400 | 0x200, ct.EVENT_NEW), (0x100, 0, ct.EVENT_UPDATE), (0x102, 0, 4)):
        msg = struct.pack("=IHHII", 16 + len(body), mtype, flags, 0, 0) + body
        assert ours(msg)["event"] == event
    other = struct.pack("=IHHII", 16 + len(body), 0x400, 0, 0, 0) + body  # an NFLOG packet type
    assert not decode(memoryview(other), 0, len(other), [None] * NFIELDS)
