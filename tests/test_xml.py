"""XML: the netfilter libraries' XML as ulogd 2.0.8 writes it, in a file that is well-formed at every moment.

Three ways of checking:

* beside the real ulogd 2.0.8 on the same traffic (NFLOG packets, conntrack flows, nfacct counters), the
  files compared byte for byte once the times of writing (``<when>``, a sum's time elements) are
  taken out, and nothing else;
* against the installed libraries themselves (libnetfilter_conntrack, libnetfilter_log,
  libnetfilter_acct, the code ulogd calls) through ctypes, on generated messages: what the kernel
  seldom sends (zones, helpers, GRE keys, 32-bit counters, odd states) is covered there;
* the file itself: parsed after every batch, a failed write undone, a file cut by copytruncate,
  SIGHUP, a restart in the same second, stdout.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import IN_CI
from hypothesis import given
from hypothesis import strategies as st
from pylogd.plugins.outputs import xml as xmlmod
from pylogd.plugins.outputs.xml import Xml, flow_xml, log_xml, sum_xml, text
from rig import Rig, read_text, start_pylogd, wait_for
from test_compat_ulogd import pair as corpus_pair  # noqa: F401 (a fixture)
from test_compat_ulogd import run_both_on_corpus, wait_equal_and_quiet
from test_nfacct import accounting, out_bytes, udp
from test_nfct_compat import CT_RULES, traffic

from pylogd.log import Logger
from pylogd.plugin import PluginError, Slots

ULOGD = "/usr/sbin/ulogd"
WHEN = re.compile(r"<when>.*?</when>")
SUM_TIME = re.compile(
    r"<hour>\d+</hour><min>\d\d</min><sec>\d\d</sec><wday>\d</wday><day>\d+</day><month>\d+</month><year>\d+</year>"
)


def timeless(data: bytes | str) -> str:
    """What must be equal between two writers at different moments: the times of writing taken out."""
    s = data.decode() if isinstance(data, bytes) else data
    return SUM_TIME.sub("<time/>", WHEN.sub("<when/>", s))


def nla(atype: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), atype) + payload + b"\0" * (-len(payload) % 4)


def nest(atype: int, payload: bytes) -> bytes:
    return nla(atype | 0x8000, payload)


def message(mtype: int, family: int, attrs: bytes) -> bytes:
    body = struct.pack("=BBH", family, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), mtype, 0, 1, 0) + body


CT_NEW, NFLOG_PACKET, ACCT_NEW = 0x100, 0x400, 0x700
U16, U32, U64 = (struct.Struct(f">{c}").pack for c in "HIQ")

# ------------------------------------------------------------------------------------------------
# the libraries ulogd calls, through ctypes


class Libraries:
    def __init__(self) -> None:
        self.ct = ctypes.CDLL("libnetfilter_conntrack.so.3")
        self.log = ctypes.CDLL("libnetfilter_log.so.1")
        self.acct = ctypes.CDLL("libnetfilter_acct.so.1")
        ct, log, acct = self.ct, self.log, self.acct
        ct.nfct_new.restype = ctypes.c_void_p
        ct.nfct_destroy.argtypes = [ctypes.c_void_p]
        ct.nfct_nlmsg_parse.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        ct.nfct_payload_parse.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint16, ctypes.c_void_p]
        ct.nfct_snprintf.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_void_p] + [ctypes.c_uint] * 3
        log.nflog_snprintf_xml.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int]
        acct.nfacct_alloc.restype = ctypes.c_void_p
        acct.nfacct_free.argtypes = [ctypes.c_void_p]
        acct.nfacct_nlmsg_parse_payload.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        acct.nfacct_snprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p] + [ctypes.c_uint16] * 2

    def flow(self, msg: bytes | None = None, payload: bytes = b"", family: int = 0) -> bytes:
        """ulogd's xml_output_flow: nfct_snprintf(NFCT_O_XML, NFCT_OF_SHOW_LAYER3 | NFCT_OF_ID | NFCT_OF_TIME)."""
        ct = self.ct.nfct_new()
        try:
            if msg is not None:
                self.ct.nfct_nlmsg_parse(msg, ct)
            else:
                self.ct.nfct_payload_parse(payload, len(payload), family, ct)
            buf = ctypes.create_string_buffer(1 << 16)
            n = self.ct.nfct_snprintf(buf, len(buf), ct, 0, 1, 7)
            return buf.raw[:n]
        finally:
            self.ct.nfct_destroy(ct)

    def packet(self, msg: bytes) -> bytes:
        """ulogd's xml_output_packet: nflog_snprintf_xml(NFLOG_XML_ALL) on libnfnetlink's attribute
        table (a pointer per type, the last of a type winning)."""
        buf = ctypes.create_string_buffer(msg, len(msg))
        table = (ctypes.c_void_p * 64)()
        off = 20
        while off + 4 <= len(msg):
            alen, atype = struct.unpack_from("=HH", msg, off)
            if alen < 4 or off + alen > len(msg):
                break
            if 1 <= atype & 0x7FFF <= 64:
                table[(atype & 0x7FFF) - 1] = ctypes.addressof(buf) + off
            off += (alen + 3) & ~3
        data = ctypes.pointer(table)  # struct nflog_data { struct nfattr **nfa; }
        out = ctypes.create_string_buffer(1 << 17)
        n = self.log.nflog_snprintf_xml(out, len(out), ctypes.byref(data), -1)
        return out.raw[:n]

    def sum(self, msg: bytes) -> bytes:
        """ulogd's xml_output_sum: nfacct_snprintf(NFACCT_SNPRINTF_T_XML, NFACCT_SNPRINTF_F_TIME)."""
        obj = self.acct.nfacct_alloc()
        try:
            self.acct.nfacct_nlmsg_parse_payload(msg, obj)
            out = ctypes.create_string_buffer(4096)
            self.acct.nfacct_snprintf(out, len(out), obj, 1, 2)
            return out.value
        finally:
            self.acct.nfacct_free(obj)


def libraries() -> Libraries:
    try:
        return Libraries()
    except OSError as exc:
        if IN_CI:
            pytest.fail(f"the netfilter libraries are missing under CI=true: {exc}")
        pytest.skip(f"the netfilter libraries are not installed (apt-get install ulogd2): {exc}")


# strategies for well-formed messages: the libraries exit the process on a malformed one (ctnetlink
# "ABI breakage"), so the generated attributes always have their type's size
NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789_- .", min_size=1, max_size=20)


def opt(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | strategy


@st.composite
def ct_tuple(draw: st.DrawFn, family: int) -> bytes:
    ip = b""
    if family == 10 or (family != 2 and draw(st.booleans())):
        for t in (3, 4):
            if draw(st.booleans()) or family == 10:
                ip += nla(t, draw(st.binary(min_size=16, max_size=16)))
    else:
        for t in (1, 2):
            if draw(st.booleans()) or family == 2:
                ip += nla(t, draw(st.binary(min_size=4, max_size=4)))
    proto = b""
    num = draw(opt(st.sampled_from([6, 17, 136, 132, 33, 47, 1, 58, 2, 255])))
    if num is not None:
        proto += nla(1, bytes([num]))
    for t in (2, 3, 4, 7):  # ports, ICMP ids
        if (v := draw(opt(st.integers(0, 0xFFFF)))) is not None:
            proto += nla(t, U16(v))
    for t in (5, 6, 8, 9):  # ICMP types and codes
        if (v := draw(opt(st.integers(0, 255)))) is not None:
            proto += nla(t, bytes([v]))
    body = nest(1, ip) + nest(2, proto)
    if (zone := draw(opt(st.integers(0, 0xFFFF)))) is not None:
        body += nla(3, U16(zone))
    return body


@st.composite
def ct_attributes(draw: st.DrawFn, family: int) -> bytes:
    attrs = []
    for t in (1, 2):
        if draw(st.integers(0, 5)):
            attrs.append(nest(t, draw(ct_tuple(family))))
    for t in (3, 7, 8, 11, 12, 17):  # status, timeout, mark, use, id, secmark
        if (v := draw(opt(st.integers(0, 0xFFFFFFFF)))) is not None:
            attrs.append(nla(t, U32(v)))
    if (zone := draw(opt(st.integers(0, 0xFFFF)))) is not None:
        attrs.append(nla(18, U16(zone)))
    for t in (9, 10):  # counters: 64-bit, 32-bit, or either alone
        fields = b""
        for ft, size in draw(st.lists(st.sampled_from([(1, 8), (2, 8), (3, 4), (4, 4)]), max_size=3, unique=True)):
            fields += nla(ft, draw(st.integers(0, (1 << (8 * size)) - 1)).to_bytes(size, "big"))
        if fields or draw(st.booleans()):
            attrs.append(nest(t, fields))
    if (state := draw(opt(st.integers(0, 12)))) is not None:  # TCP: the states past the table print NONE
        attrs.append(nest(4, nest(1, nla(1, bytes([state])))))
    stamps = b""
    for t in (1, 2):
        if (
            v := draw(
                opt(st.integers(0, (1 << 64) - 1) | st.integers(1_600_000_000, 1_900_000_000).map(lambda s: s * 10**9))
            )
        ) is not None:
            stamps += nla(t, U64(v))
    if stamps:
        attrs.append(nest(20, stamps))
    if (helper := draw(opt(NAMES))) is not None:  # longer than 15 characters: cut as the library cuts it
        attrs.append(nest(5, nla(1, helper.encode() + b"\0")))
    if (ctx := draw(opt(NAMES))) is not None:
        attrs.append(nest(19, nla(1, ctx.encode() + b"\0")))
    if (labels := draw(opt(st.binary(min_size=4, max_size=16)))) is not None:
        attrs.append(nla(22, labels))
    return b"".join(draw(st.permutations(attrs)))


@st.composite
def flows(draw: st.DrawFn) -> tuple[int, bytes]:
    family = draw(st.sampled_from([2, 10]) | st.integers(0, 255))
    return family, draw(ct_attributes(family))


def deltatime_now_variants(mine: Callable[[int], str]) -> set[str]:
    """A flow with a start and no stop counts its <deltatime> to now: the second may turn between calls."""
    return {timeless(mine(int(time.time()) + d)) for d in (-1, 0, 1)}


def now_when() -> tuple[int, str]:
    return xmlmod.Clock()()


@given(flows())
def test_flows_as_libnetfilter_conntrack_prints_them(flow: tuple[int, bytes]) -> None:
    libs = libraries()
    family, attrs = flow
    msg = message(CT_NEW, family, attrs)
    _, when = now_when()
    theirs = timeless(libs.flow(msg))
    assert theirs in deltatime_now_variants(lambda now: flow_xml(msg, 20, len(msg), family, now, when))
    # NFLOG's NFULA_CT: the same attributes, the family from the nflog message
    theirs = timeless(libs.flow(payload=attrs, family=family))
    assert theirs in deltatime_now_variants(lambda now: flow_xml(attrs, 0, len(attrs), family, now, when))


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    attrs = []
    if draw(st.integers(0, 5)):
        attrs.append(nla(1, U16(draw(st.integers(0, 0xFFFF))) + bytes([draw(st.integers(0, 255)), 0])))
    for t in (2, 4, 5, 6, 7, 11, 12, 14):  # mark, devices, uid, seq, gid
        if (v := draw(opt(st.integers(0, 0xFFFFFFFF) | st.just(0)))) is not None:
            attrs.append(nla(t, U32(v)))
    if draw(st.booleans()):
        attrs.append(nla(8, U16(draw(st.integers(0, 8))) + b"\0\0" + draw(st.binary(min_size=8, max_size=8))))
    if (payload := draw(opt(st.binary(max_size=80)))) is not None:
        attrs.append(nla(9, payload))
    if (prefix := draw(opt(NAMES | st.just("")))) is not None:
        attrs.append(nla(10, prefix.encode() + b"\0"))
    if draw(st.booleans()):
        inner = [nla(3, U32(draw(st.integers(0, 0xFFFFFFFF))))]
        if (ctid := draw(opt(st.integers(0, 0xFFFFFFFF)))) is not None:
            inner.append(nla(12, U32(ctid)))
        if draw(st.booleans()):
            inner.append(nla(12, U16(7)))  # a CTA_ID of the wrong size: no <ctid> (the first one counts)
        attrs.append(nest(18, b"".join(draw(st.permutations(inner)))))
    return message(NFLOG_PACKET, draw(st.sampled_from([2, 10, 7])), b"".join(draw(st.permutations(attrs))))


@given(packets())
def test_packets_as_libnetfilter_log_prints_them(msg: bytes) -> None:
    libs = libraries()
    _, when = now_when()
    assert timeless(log_xml(msg, when)) == timeless(libs.packet(msg))


@given(NAMES.filter(lambda s: len(s) < 32), st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1))
def test_sums_as_libnetfilter_acct_prints_them(name: str, pkts: int, nbytes: int) -> None:
    libs = libraries()
    msg = message(ACCT_NEW, 0, nla(1, name.encode() + b"\0") + nla(2, U64(pkts)) + nla(3, U64(nbytes)))
    _, when = now_when()
    ours = sum_xml(msg, when)
    assert ours is not None and timeless(ours) == timeless(libs.sum(msg))


def test_sctp_states_have_sctp_names_where_the_library_printed_tcp_ones() -> None:
    libs = libraries()
    msg = message(CT_NEW, 2, nest(1, nest(1, b"") + nest(2, nla(1, b"\x84"))) + nest(4, nest(3, nla(1, b"\x04"))))
    _, when = now_when()
    assert "<state>FIN_WAIT</state>" in libs.flow(msg).decode()  # SCTP ESTABLISHED, by the TCP table
    assert "<state>ESTABLISHED</state>" in flow_xml(msg, 20, len(msg), 2, 0, when)


# ------------------------------------------------------------------------------------------------
# text and bad input


def test_text_is_escaped_and_made_valid_xml() -> None:
    assert text(b'a<b&c>"d') == "a&lt;b&amp;c&gt;&quot;d"
    assert text(b"caf\xc3\xa9 \xff\x01") == "caf\u00e9 \ufffd\ufffd"
    assert text("a\r\nb\tc") == "a&#13;&#10;b\tc"
    assert ET.fromstring("<p>" + text("a\r\nb") + "</p>").text == "a\r\nb"
    _, when = now_when()
    msg = message(NFLOG_PACKET, 2, nla(1, b"\x08\x00\x01\x00") + nla(10, b'<&>"x\x02\xfe\0'))
    log = log_xml(msg, when)
    assert "<prefix>&lt;&amp;&gt;&quot;x\ufffd\ufffd</prefix>" in log
    assert ET.fromstring(log).find("prefix").text == '<&>"x\ufffd\ufffd'


@given(st.binary(max_size=300), st.integers(0, 255))
def test_no_input_crashes_and_every_record_parses(data: bytes, family: int) -> None:
    now, when = now_when()
    header = message(CT_NEW, family, b"")[:20]
    for msg in (data, header + data):
        lines = [log_xml(msg, when), flow_xml(msg, 20, len(msg), family, now, when)]
        lines.append(flow_xml(msg, 0, len(msg), family, now, when))
        lines.append(sum_xml(msg, when) or "<obj/>")
        for line in lines:
            ET.fromstring(line)


@given(st.lists(st.tuples(st.integers(1, 30), st.binary(max_size=24)), max_size=12))
def test_random_attributes_make_parseable_records(attrs: list[tuple[int, bytes]]) -> None:
    now, when = now_when()
    body = b"".join(nla(t | (0x8000 if len(p) >= 4 else 0), p) for t, p in attrs)
    for mtype in (CT_NEW, NFLOG_PACKET, ACCT_NEW):
        msg = message(mtype, 2, body)
        ET.fromstring(log_xml(msg, when))
        ET.fromstring(flow_xml(msg, 20, len(msg), 2, now, when))
        ET.fromstring(sum_xml(msg, when) or "<obj/>")


# ------------------------------------------------------------------------------------------------
# the plugin and its files, without the kernel


def plugin(tmp: Path, **options: object) -> Xml:
    values = {o.name: o.default for o in Xml.spec.options} | {"directory": str(tmp)} | options
    return Xml("xml1", values, Logger("xml1"))


def slots(**present: int) -> Slots:
    return Slots({name: present.get(name) for name in ("ct", "raw", "sum")}, {})


def packet_message(prefix: bytes = b"X ", payload: bytes = b"\x45\x00") -> bytes:
    return message(
        NFLOG_PACKET, 2, nla(1, b"\x08\x00\x01\x00") + nla(4, U32(2)) + nla(9, payload) + nla(10, prefix + b"\0")
    )


def files(tmp: Path, kind: str) -> list[Path]:
    return sorted(tmp.glob(f"ulogd-{kind}-*.xml"))


def parsed(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def test_each_batch_leaves_a_well_formed_file(tmp_path: Path) -> None:
    xml = plugin(tmp_path)
    xml.start(None)
    convert = xml.handler(slots(raw=0))
    (path,) = files(tmp_path, "pkt")
    assert re.fullmatch(r"ulogd-pkt-\d{8}-\d{6}\.xml", path.name)
    assert path.read_bytes() == b'<?xml version="1.0" encoding="utf-8"?>\n<packet>\n</packet>\n'
    for n in range(1, 4):
        xml.write([convert([packet_message(b"n%d" % i)]) for i in range(n)])
        root = parsed(path)
        assert root.tag == "packet" and len(root) == n * (n + 1) // 2
    lines = path.read_text().splitlines()
    assert lines[2].startswith("<log><when><hour>") and lines[2].endswith("<payload>4500</payload></log>")
    xml.stop()
    assert parsed(path).tag == "packet"


def test_a_failed_write_is_undone_and_the_records_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    xml = plugin(tmp_path)
    xml.start(None)
    convert = xml.handler(slots(raw=0))
    xml.write([convert([packet_message()])])
    (path,) = files(tmp_path, "pkt")
    before = path.read_bytes()
    real = os.pwrite

    def half_then_full(fd: int, data: bytes, offset: int) -> int:
        if len(data) > 20:
            real(fd, bytes(data)[:20], offset)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(xmlmod.os, "pwrite", half_then_full)
    entries = [convert([packet_message(b"late")])]
    kept = list(entries)
    with pytest.raises(OSError):
        xml.write(entries)
    assert entries == kept and path.read_bytes() == before
    monkeypatch.setattr(xmlmod.os, "pwrite", real)
    xml.write(entries)
    assert entries == [] and len(parsed(path)) == 2
    xml.stop()


def test_a_file_cut_to_nothing_starts_a_new_document(tmp_path: Path) -> None:
    xml = plugin(tmp_path)
    xml.start(None)
    convert = xml.handler(slots(raw=0))
    xml.write([convert([packet_message()])])
    (path,) = files(tmp_path, "pkt")
    os.truncate(path, 0)  # logrotate's copytruncate
    xml.write([convert([packet_message(b"after")])])
    root = parsed(path)
    assert len(root) == 1 and root[0].find("prefix").text == "after"
    xml.stop()


def test_one_instance_writes_a_file_per_kind_and_stacks_of_a_kind_share_it(tmp_path: Path) -> None:
    xml = plugin(tmp_path)
    xml.start(None)
    packet, flow, acct = xml.handler(slots(raw=0, ct=1)), xml.handler(slots(ct=0)), xml.handler(slots(sum=0))
    packet2 = xml.handler(slots(raw=0))
    ct_msg = message(CT_NEW, 2, nest(1, nest(1, nla(1, b"\x0a\0\0\1") + nla(2, b"\x0a\0\0\2"))) + nla(12, U32(9)))
    sum_msg = message(ACCT_NEW, 0, nla(1, b"web\0") + nla(2, U64(3)) + nla(3, U64(180)))
    xml.write([packet([packet_message(), None]), packet2([packet_message()]), flow([ct_msg])])
    xml.write([acct([sum_msg])])
    assert packet([None, None]) is None  # an event with nothing to write is left out
    roots = {kind: parsed(files(tmp_path, kind)[0]) for kind in ("pkt", "flow", "sum")}
    assert [r.tag for r in roots.values()] == ["packet", "conntrack", "sum"]
    assert [len(r) for r in roots.values()] == [2, 1, 1]
    assert roots["flow"][0].find("meta/layer3/src").text == "10.0.0.1"
    assert roots["sum"][0].find("pkts").text == "00000000000000000003"
    with pytest.raises(PluginError, match="none of them"):
        xml.handler(slots())
    xml.stop()


def test_a_packet_with_its_conntrack_entry_is_one_line(tmp_path: Path) -> None:
    """NFLOG with attach_conntrack=1: NFLOG's ct is the NFULA_CT payload; ulogd printed the <flow> after the <log>."""
    xml = plugin(tmp_path)
    xml.start(None)
    convert = xml.handler(slots(raw=0, ct=1))
    ct = nest(1, nest(1, nla(3, bytes(15) + b"\1") + nla(4, bytes(15) + b"\2"))) + nla(12, U32(5))
    msg = message(NFLOG_PACKET, 10, nla(1, b"\x86\xdd\x01\x00") + nest(18, ct))
    kind, line = convert([msg, ct])
    assert kind == "pkt" and line.count(b"\n") == 1
    assert b'<ctid>5</ctid></log><flow><meta direction="original"><layer3 protonum="10" protoname="ipv6">' in line
    assert b"<src>::1</src><dst>::2</dst>" in line
    xml.stop()


def test_records_have_no_length_limit(tmp_path: Path) -> None:
    xml = plugin(tmp_path)
    xml.start(None)
    convert = xml.handler(slots(raw=0))
    xml.write([convert([packet_message(payload=b"\xab" * 60000)])])
    assert parsed(files(tmp_path, "pkt")[0])[0].find("payload").text == "ab" * 60000
    xml.stop()


LOCALTIME = time.localtime


class FixedClock:
    """time.localtime for open_document: the second a test chooses."""

    def __init__(self, when: float) -> None:
        self.when = when

    def __call__(self, secs: float | None = None) -> time.struct_time:
        return LOCALTIME(self.when if secs is None else secs)


def test_same_second_restart_continues_its_file_and_spares_a_foreign_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(xmlmod.time, "localtime", FixedClock(1_800_000_000))
    name = time.strftime("ulogd-pkt-%d%m%Y-%H%M%S", LOCALTIME(1_800_000_000))
    first = plugin(tmp_path)
    first.start(None)
    first.write([first.handler(slots(raw=0))([packet_message(b"one")])])
    first.stop()
    second = plugin(tmp_path)
    second.start(None)
    second.write([second.handler(slots(raw=0))([packet_message(b"two")])])
    second.stop()
    assert [p.name for p in files(tmp_path, "pkt")] == [f"{name}.xml"]
    assert [e.find("prefix").text for e in parsed(tmp_path / f"{name}.xml")] == ["one", "two"]
    # a file of that name that is not pylogd's (ulogd's, unfinished) is left as it is
    foreign = b'<?xml version="1.0" encoding="utf-8"?>\n<packet>\n<log></log>\n'
    (tmp_path / f"{name}.xml").write_bytes(foreign)
    third = plugin(tmp_path)
    third.start(None)
    third.handler(slots(raw=0))
    third.stop()
    assert (tmp_path / f"{name}.xml").read_bytes() == foreign
    assert len(parsed(tmp_path / f"{name}-2.xml")) == 0


def test_two_instances_in_one_second_and_directory_write_two_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(xmlmod.time, "localtime", FixedClock(1_800_000_000))
    one, two = plugin(tmp_path), Xml("xml2", plugin(tmp_path).options, Logger("xml2"))
    one.start(None)
    two.start(None)
    first, second = one.handler(slots(raw=0)), two.handler(slots(raw=0))
    for _ in range(3):
        one.write([first([packet_message(b"one")])])
        two.write([second([packet_message(b"two")])])
    one.stop()
    two.stop()
    b, a = files(tmp_path, "pkt")  # "-2.xml" sorts first
    assert b.name == a.name.replace(".xml", "-2.xml")
    assert [{e.find("prefix").text for e in parsed(p)} for p in (a, b)] == [{"one"}, {"two"}]
    assert [len(parsed(p)) for p in (a, b)] == [3, 3]


def test_sighup_starts_new_files_but_not_in_the_same_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FixedClock(1_800_000_000)
    monkeypatch.setattr(xmlmod.time, "localtime", clock)
    xml = plugin(tmp_path)
    xml.start(None)
    convert = xml.handler(slots(raw=0))
    xml.write([convert([packet_message(b"a")])])
    xml.reopen()  # the same second: the same file
    xml.write([convert([packet_message(b"b")])])
    assert len(files(tmp_path, "pkt")) == 1
    clock.when += 61
    xml.reopen()
    xml.write([convert([packet_message(b"c")])])
    old, new = files(tmp_path, "pkt")
    assert [e.find("prefix").text for e in parsed(old)] == ["a", "b"]
    assert [e.find("prefix").text for e in parsed(new)] == ["c"]
    xml.stop()


def test_stdout_gets_the_document_and_its_closing_tag_at_stop(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    xml = plugin(tmp_path, stdout=1)
    xml.start(None)
    convert = xml.handler(slots(ct=0))
    msg = message(CT_NEW, 2, nla(12, U32(3)))
    xml.write([convert([msg])])
    xml.reopen()  # changes nothing on stdout
    xml.stop()
    out = capfd.readouterr().out
    assert out.startswith('<?xml version="1.0" encoding="utf-8"?>\n<conntrack>\n<flow>')
    assert out.endswith("</flow>\n</conntrack>\n") and len(ET.fromstring(out.split("\n", 1)[1])) == 1
    assert not list(tmp_path.iterdir())


def test_an_aborted_start_removes_the_empty_files_it_made(tmp_path: Path) -> None:
    xml = plugin(tmp_path)
    xml.start(None)
    xml.handler(slots(sum=0))
    assert files(tmp_path, "sum")
    xml.abort()
    assert not list(tmp_path.iterdir())


def test_a_missing_directory_fails_the_start_naming_the_file(tmp_path: Path) -> None:
    xml = plugin(tmp_path / "nope")
    xml.start(None)
    with pytest.raises(PluginError, match=r"can't open XML file .*/nope/ulogd-flow-.*: No such file"):
        xml.handler(slots(ct=0))


def test_ulogds_example_config_with_its_xml_stacks_passes_check(tmp_path: Path) -> None:
    conf = tmp_path / "ulogd.conf"
    conf.write_text(
        "[global]\nstack=ct1:NFCT,xml1:XML\nstack=log1:NFLOG,xml1:XML\nstack=acct1:NFACCT,xml1:XML\n"
        f'[ct1]\n[log1]\ngroup=0\n[acct1]\npollinterval=10\n[xml1]\ndirectory="{tmp_path}"\nsync=1\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "pylogd", "--check", "-c", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr + out.stdout


# ------------------------------------------------------------------------------------------------
# beside ulogd 2.0.8, on the kernel's events


def need_ulogd() -> None:
    if not Path(ULOGD).exists():
        if IN_CI:
            pytest.fail("ulogd 2.0.8 is not installed under CI=true")
        pytest.skip("ulogd 2.0.8 is not installed (apt-get install ulogd2)")


def only_file(directory: Path, kind: str) -> Path:
    found = wait_for(lambda: files(directory, kind), what=f"the {kind} XML file in {directory}")
    assert len(found) == 1, found
    return found[0]


def records(path: Path) -> list[str]:
    """The record lines of a document (ulogd's, without its closing tag until it stops)."""
    lines = read_text(path).splitlines()
    return [line for line in lines[2:] if not line.startswith("</")]


def xml_configs(tmp: Path, stack: str, sections: str, ulogd_sections: str = "", pylogd_sections: str = "") -> None:
    for name, extra in (("ulogd", ulogd_sections), ("pylogd", pylogd_sections)):
        (tmp / name).mkdir()
        (tmp / f"{name}.conf").write_text(
            f'[global]\nlogfile="{tmp}/{name}.daemon.log"\nloglevel=3\nstack={stack}\n{sections}{extra}'
            f'[xml1]\ndirectory="{tmp}/{name}"\nsync=1\n'
        )


def test_packets_as_ulogd_writes_them(corpus_pair, tmp_path: Path) -> None:  # noqa: F811
    """The compatibility corpus (TCP, UDP, ICMP, IPv6, fragments, a mark) through NFLOG,XML in both
    daemons: the same records, byte for byte once <when> is out; pylogd's file parses while it runs,
    ulogd's does not.  (attach_conntrack=1, whose <flow> follows the <log>, needs a kernel with
    nfnetlink_log's conntrack glue: test_a_packet_with_its_conntrack_entry_is_one_line and the
    library comparison cover it.)"""
    need_ulogd()
    xml_configs(tmp_path, "log1:NFLOG,xml1:XML", "", "[log1]\ngroup=5\n", "[log1]\ngroup=6\n")
    run_both_on_corpus(corpus_pair, tmp_path)
    ulogd_file, pylogd_file = only_file(tmp_path / "ulogd", "pkt"), only_file(tmp_path / "pylogd", "pkt")
    wait_for(lambda: len(records(ulogd_file)) >= 20, what="ulogd's records")
    wait_equal_and_quiet(lambda: [len(records(ulogd_file)), len(records(pylogd_file))], "records", timeout=30)
    u, p = records(ulogd_file), records(pylogd_file)
    assert [timeless(x) for x in p] == [timeless(x) for x in u]
    assert sum("<prefix>X6 </prefix>" in x for x in p) >= 3 and any("<mark>42</mark>" in x for x in p)
    assert read_text(pylogd_file).startswith('<?xml version="1.0" encoding="utf-8"?>\n<packet>\n')
    assert len(parsed(pylogd_file)) == len(p)
    with pytest.raises(ET.ParseError):  # ulogd's closing tag comes at its stop
        parsed(ulogd_file)
    for proc in corpus_pair[2]:
        proc.terminate()
        proc.wait(10)
    assert timeless(read_text(pylogd_file)) == timeless(read_text(ulogd_file))  # the whole files, once stopped


@pytest.mark.parametrize("ct_options", ["hash_enable=0", ""], ids=["event", "hash"])
def test_flows_as_ulogd_writes_them(rig: Rig, tmp_path: Path, ct_options: str) -> None:
    """NFCT,XML in both daemons on the same conntrack events: NEW and DESTROY (hash mode: DESTROY only)
    of TCP, UDP, IPv6 UDP and ICMP flows with counters and kernel time stamps, byte for byte once <when>
    is out."""
    need_ulogd()
    ns = rig.netns("xct")
    ns.nft(CT_RULES)
    ns.run("sysctl -qw net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_timestamp=1")
    xml_configs(tmp_path, "ct1:NFCT,xml1:XML", f"[ct1]\n{ct_options}\n")
    ns.spawn([ULOGD, "-c", str(tmp_path / "ulogd.conf")], name="ulogd")
    start_pylogd(ns, tmp_path / "pylogd.conf", tmp_path / "pylogd.daemon.log")
    wait_for(lambda: "working in event mode" in read_text(tmp_path / "ulogd.daemon.log"), what="ulogd start")
    ns.call(traffic)
    ns.run(["conntrack", "-F"])
    ulogd_file, pylogd_file = only_file(tmp_path / "ulogd", "flow"), only_file(tmp_path / "pylogd", "flow")
    want = 8 if ct_options else 4
    wait_for(lambda: min(len(records(ulogd_file)), len(records(pylogd_file))) >= want, what=f"{want} records each")
    time.sleep(0.3)  # nothing more may come
    u, p = records(ulogd_file), records(pylogd_file)
    assert [timeless(x) for x in p] == [timeless(x) for x in u]
    assert any("<counters><packets>" in x and "<deltatime>" in x for x in p)
    assert {x.count("<flow>") for x in p} == {1} and any('protoname="ipv6"' in x for x in p)
    assert parsed(pylogd_file).tag == "conntrack"


def test_sums_as_ulogd_writes_them_and_sighup_starts_a_new_file(rig: Rig, tmp_path: Path) -> None:
    """NFACCT,XML in both daemons on the same nfacct objects (zerocounter=0: neither resets the other)."""
    need_ulogd()
    ns = rig.netns("xacct")
    accounting(ns, "out1", "in1")
    ns.call(udp, 3)
    xml_configs(tmp_path, "acct1:NFACCT,xml1:XML", "[acct1]\npollinterval=1\nzerocounter=0\n")
    ns.spawn([ULOGD, "-c", str(tmp_path / "ulogd.conf")], name="ulogd")
    proc = start_pylogd(ns, tmp_path / "pylogd.conf", tmp_path / "pylogd.daemon.log")
    ulogd_file, pylogd_file = only_file(tmp_path / "ulogd", "sum"), only_file(tmp_path / "pylogd", "sum")
    wait_for(lambda: min(len(records(ulogd_file)), len(records(pylogd_file))) >= 2, what="a poll of each")
    u, p = records(ulogd_file)[:2], records(pylogd_file)[:2]
    assert [timeless(x) for x in p] == [timeless(x) for x in u]
    assert (
        timeless(p[0]) == f"<obj><name>out1</name><pkts>{6:020d}</pkts><bytes>{out_bytes(3):020d}</bytes><time/></obj>"
    )
    time.sleep(1.1)  # the new file's name has another second
    proc.signal(signal.SIGHUP)
    wait_for(lambda: len(files(tmp_path / "pylogd", "sum")) == 2, what="the file SIGHUP starts")
    old, new = files(tmp_path / "pylogd", "sum")
    wait_for(lambda: len(records(new)) >= 2, what="records in the new file")
    assert len(parsed(old)) >= 2 and parsed(new).tag == "sum"


PREFIX_RULES = """
table inet t {
    chain input { type filter hook input priority 0; udp dport 9 log prefix "<a&b> 'q' " group 7; }
}
"""


def test_a_prefix_with_markup_is_escaped_and_a_reader_parses_the_file_while_it_grows(rig: Rig, tmp_path: Path) -> None:
    ns = rig.netns("xpfx")
    ns.nft(PREFIX_RULES)
    (tmp_path / "out").mkdir()
    conf = tmp_path / "pylogd.conf"
    conf.write_text(
        f'[global]\nlogfile="{tmp_path}/pylogd.daemon.log"\nloglevel=3\nstack=log1:NFLOG,xml1:XML\n'
        f'[log1]\ngroup=7\n[xml1]\ndirectory="{tmp_path}/out"\n'
    )
    start_pylogd(ns, conf, tmp_path / "pylogd.daemon.log")
    path = only_file(tmp_path / "out", "pkt")
    seen: list[int] = []
    problems: list[str] = []
    torn: list[int] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                seen.append(len(parsed(path)))
            except ET.ParseError:
                # read in the microseconds of a write: the end of it from before, the rest from
                # after; by the next moment the file is whole again
                time.sleep(0.05)
                torn.append(1)
                try:
                    seen.append(len(parsed(path)))
                except ET.ParseError as exc:
                    problems.append(str(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(20):
            ns.call(send_udp, 10)
    finally:
        done.set()
        thread.join()
    wait_for(lambda: len(parsed(path)) == 200, what="200 records")
    assert problems == [] and len(seen) > 20 and seen == sorted(seen)
    assert len(torn) < len(seen) / 10
    prefixes = {e.find("prefix").text for e in parsed(path)}
    assert prefixes == {"<a&b> 'q' "}
    assert "<prefix>&lt;a&amp;b&gt; 'q' </prefix>" in read_text(path)


def send_udp(count: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(count):
            s.sendto(b"x", ("127.0.0.1", 9))


EXAMPLE_RULES = """
table inet t {
    chain input { type filter hook input priority 0; udp dport 9 log prefix "in " group 8; }
    chain out { type filter hook output priority 0; ct state new accept; }
}
"""


def test_ulogds_example_stacks_run_into_one_file_per_kind(rig: Rig, tmp_path: Path) -> None:
    """ulogd's example config puts xml1 after NFCT, NFLOG and NFACCT: one instance, three documents."""
    ns = rig.netns("xall")
    ns.nft(EXAMPLE_RULES)
    accounting(ns, "out1")
    (tmp_path / "out").mkdir()
    conf = tmp_path / "pylogd.conf"
    conf.write_text(
        f'[global]\nlogfile="{tmp_path}/pylogd.daemon.log"\nloglevel=3\n'
        "stack=ct1:NFCT,xml1:XML\nstack=log1:NFLOG,xml1:XML\nstack=acct1:NFACCT,xml1:XML\n"
        f'[ct1]\nhash_enable=0\n[log1]\ngroup=8\n[acct1]\npollinterval=1\n[xml1]\ndirectory="{tmp_path}/out"\nsync=1\n'
    )
    proc = start_pylogd(ns, conf, tmp_path / "pylogd.daemon.log")
    ns.call(send_udp, 3)
    paths = {kind: only_file(tmp_path / "out", kind) for kind in ("flow", "pkt", "sum")}
    wait_for(lambda: all(len(records(p)) >= 1 for p in paths.values()), what="a record of each kind")
    wait_for(lambda: len(records(paths["pkt"])) == 3, what="the three packets")
    proc.stop()
    roots = {kind: parsed(p) for kind, p in paths.items()}
    assert {kind: r.tag for kind, r in roots.items()} == {"flow": "conntrack", "pkt": "packet", "sum": "sum"}
    assert {e.find("prefix").text for e in roots["pkt"]} == {"in "}
    assert any(e.find("meta/layer4/dport").text == "9" for e in roots["flow"])
    assert {e.find("name").text for e in roots["sum"]} == {"out1"}
