"""XML: flows, packets and counter sums in the XML of libnetfilter_conntrack, libnetfilter_log and
libnetfilter_acct, one file per kind and run in ``directory`` (or on stdout), as ulogd writes them.

::

    <?xml version="1.0" encoding="utf-8"?>
    <conntrack>
    <flow><meta direction="original"><layer3 protonum="2" protoname="ipv4"><src>10.0.0.1</src>...</flow>
    </conntrack>

The kind is the stack's input's: NFCT's flows (key ``ct``, the ctnetlink message) go to
``ulogd-flow-DDMMYYYY-HHMMSS.xml`` under ``<conntrack>``, NFLOG's packets (key ``raw``, the nflog
message; with ``attach_conntrack=1`` the packet's ``<flow>`` follows its ``<log>`` on the line) to
``ulogd-pkt-...`` under ``<packet>``, NFACCT's sums (key ``sum``) to ``ulogd-sum-...`` under
``<sum>`` as ``<obj><name>web</name><pkts>00000000000000000003</pkts>...</obj>``.  The time is the
local time the file was opened; each record's ``<when>`` (or the sum's time elements) is the local
time it was written, as the libraries print it.  One record a line.  SIGHUP starts new files named
with the time of the signal (ulogd's rotation).  ``sync`` is accepted and needs nothing: each batch
is one write().

Differences from ulogd 2.0.8
----------------------------
* The file is well-formed XML at every moment a reader opens it: the closing tag stays at the end
  and each batch of records is written over it, followed by it, in one write (ulogd wrote the
  closing tag at stop only, so a running ulogd's file, or a killed one's, never parses).  A failed
  write is undone.  A file cut to nothing while open (logrotate's copytruncate) starts anew with
  the XML declaration.  As with any file changed in place, a reader whose read overlaps the
  microseconds of a write can get the file's end from before it and the rest from after; the next
  read gets the whole document.
* Text that could hold markup (an NFLOG prefix, a conntrack helper name or security context, an
  accounting object's name) is escaped (``&`` ``<`` ``>`` ``"``, and line ends as ``&#10;``
  ``&#13;`` so that a record stays one line), and bytes that are not UTF-8 or not allowed in XML
  are written as U+FFFD (ulogd wrote them as they came: the prefix ``a<b`` broke the document).
* A record has no length limit (ulogd dropped, with an error, any longer than 4095 bytes: a packet
  with about 1900 bytes of payload or more).
* An SCTP or DCCP flow's state has its own protocol's name (libnetfilter_conntrack printed the
  TCP state of the same number: SCTP ESTABLISHED as FIN_WAIT).
* One instance in stacks of different kinds (ulogd's example config puts xml1 after NFCT, NFLOG
  and NFACCT) writes one file per kind, as ulogd's instance per stack did; stacks of one kind
  share their file (ulogd's instances, started in one second, each appended a document of their
  own to it).
* A file of the same name that exists at start or SIGHUP (both in the same second) is continued
  when pylogd wrote it and no one writes it now (each document is held with flock), else left
  alone for a new name ending ``-2.xml`` (``-3``...); ulogd appended a second XML declaration to
  it, and two of its instances of one kind in one directory wrote into one file.  A SIGHUP in the
  second the file was opened keeps it.
* With ``stdout=1`` SIGHUP changes nothing (ulogd closed the document on stdout and went on in a
  file in ``directory``).
* A stack without any of ``raw``, ``ct`` or ``sum`` (UNIXSOCK's) is refused at start (ulogd ran
  it and failed every event); an event with none of them valid is left out.
* Files are opened as pylogd's other outputs open theirs: a symlink someone else could have
  planted is not followed.  An attribute too short for its value counts as absent
  (libnetfilter_log read past it; libnetfilter_conntrack ends the process on one, ulogd with it).
* New: NFACCT's ``source=nft`` named counters are written as its nfacct objects are.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, ClassVar

from pylogd.config import INT_MAX
from pylogd.files import open_output, sync_option, write_all
from pylogd.keys import KeyType
from pylogd.log import Logger
from pylogd.loop import EventLoop
from pylogd.nfacct import decode as decode_acct
from pylogd.nfacct import decode_nft_counter
from pylogd.plugin import Kind, Output, PluginError, PluginSpec, Slots, int_option, key, path_option

#: each kind of stack (the name's infix) and its document's root element, as ulogd has them
ROOTS = {"flow": "conntrack", "pkt": "packet", "sum": "sum"}
DECLARATION = b'<?xml version="1.0" encoding="utf-8"?>\n'
#: how many names a start tries when the file of its second exists and is not pylogd's
MAX_SUFFIX = 100

_NLA = struct.Struct("=HH")
_NLA_TYPE_MASK = 0x3FFF
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


# ---------------------------------------------------------------------------------------------
# netlink attributes


def attributes(buf: Any, off: int, end: int) -> dict[int, memoryview]:
    """The attributes of ``buf[off:end]`` by type, the last of a type winning (as both libraries
    keep them); the walk stops at the first malformed header."""
    mv = memoryview(buf)
    out: dict[int, memoryview] = {}
    while off + 4 <= end:
        alen, atype = _NLA.unpack_from(mv, off)
        if alen < 4 or off + alen > end:
            break
        out[atype & _NLA_TYPE_MASK] = mv[off + 4 : off + alen]
        off += (alen + 3) & ~3
    return out


def _nested(value: memoryview | None) -> dict[int, memoryview]:
    return {} if value is None else attributes(value, 0, len(value))


def _u8(a: dict[int, memoryview], t: int) -> int | None:
    v = a.get(t)
    return v[0] if v is not None and len(v) >= 1 else None


def _u16(a: dict[int, memoryview], t: int) -> int | None:
    v = a.get(t)
    return _U16.unpack_from(v)[0] if v is not None and len(v) >= 2 else None


def _u32(a: dict[int, memoryview], t: int) -> int | None:
    v = a.get(t)
    return _U32.unpack_from(v)[0] if v is not None and len(v) >= 4 else None


def _u64(a: dict[int, memoryview], t: int) -> int | None:
    v = a.get(t)
    return _U64.unpack_from(v)[0] if v is not None and len(v) >= 8 else None


def _cstring(v: memoryview) -> bytes:
    """A C string attribute as printf's %s reads it: up to the first NUL."""
    return bytes(v).split(b"\0", 1)[0]


# characters XML 1.0 does not allow (besides the markup ones, escaped below), and the lone
# surrogates a "replace" decode can never give but a str from elsewhere might hold
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# line ends as references: a record stays one line, and a parser gives back the \r it would drop
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\n": "&#10;", "\r": "&#13;"})


def text(raw: bytes | str) -> str:
    """Element content for bytes or text from the kernel or a rule: escaped, and valid XML 1.0."""
    s = raw.decode("utf-8", "replace") if isinstance(raw, bytes | bytearray) else raw
    return _NOT_XML.sub("\ufffd", s).translate(_ESCAPES)


def when_elements(t: time.struct_time) -> str:
    """The libraries' local-time elements (C's tm: Sunday is weekday 1)."""
    return (
        f"<hour>{t.tm_hour}</hour><min>{t.tm_min:02d}</min><sec>{t.tm_sec:02d}</sec>"
        f"<wday>{(t.tm_wday + 1) % 7 + 1}</wday><day>{t.tm_mday}</day><month>{t.tm_mon}</month>"
        f"<year>{t.tm_year}</year>"
    )


class Clock:
    """The time elements of the current second, made once a second."""

    def __init__(self) -> None:
        self.second = -1
        self.elements = ""

    def __call__(self) -> tuple[int, str]:
        now = int(time.time())
        if now != self.second:
            self.second, self.elements = now, when_elements(time.localtime(now))
        return now, self.elements


# ---------------------------------------------------------------------------------------------
# libnetfilter_log's <log> (nflog_snprintf_xml with NFLOG_XML_ALL, libnetfilter_log 1.0.2)

NFULA_PACKET_HDR, NFULA_MARK, NFULA_IFINDEX_INDEV, NFULA_IFINDEX_OUTDEV = 1, 2, 4, 5
NFULA_IFINDEX_PHYSINDEV, NFULA_IFINDEX_PHYSOUTDEV, NFULA_HWADDR, NFULA_PAYLOAD = 6, 7, 8, 9
NFULA_PREFIX, NFULA_CT = 10, 18
_DEVICES = (
    (NFULA_IFINDEX_INDEV, "indev"),
    (NFULA_IFINDEX_OUTDEV, "outdev"),
    (NFULA_IFINDEX_PHYSINDEV, "physindev"),
    (NFULA_IFINDEX_PHYSOUTDEV, "physoutdev"),
)


def log_xml(msg: Any, when: str) -> str:
    """One nflog message (nlmsghdr, nfgenmsg, attributes) as libnetfilter_log's ``<log>``."""
    a = attributes(msg, 20, len(msg))
    out = ["<log><when>", when, "</when>"]
    prefix = a.get(NFULA_PREFIX)
    if prefix is not None:
        out += ("<prefix>", text(_cstring(prefix)), "</prefix>")
    hdr = a.get(NFULA_PACKET_HDR)
    if hdr is not None and len(hdr) >= 3:
        hw_protocol = _U16.unpack_from(hdr)[0]
        out.append(f"<hook>{hdr[2]}</hook><hw><proto>{hw_protocol:04x}</proto>")
        hw = a.get(NFULA_HWADDR)
        if hw is not None and len(hw) >= 4:
            out += ("<src>", bytes(hw[4 : 4 + _U16.unpack_from(hw)[0]]).hex(), "</src>")
        out.append("</hw>")
    mark = _u32(a, NFULA_MARK)
    if mark:
        out.append(f"<mark>{mark}</mark>")
    for t, tag in _DEVICES:
        ifindex = _u32(a, t)
        if ifindex:
            out.append(f"<{tag}>{ifindex}</{tag}>")
    ct = a.get(NFULA_CT)
    if ct is not None:
        ctid = _first_ctid(ct)
        if ctid is not None:
            out.append(f"<ctid>{ctid}</ctid>")
    payload = a.get(NFULA_PAYLOAD)
    if payload is not None:
        out += ("<payload>", payload.hex(), "</payload>")
    out.append("</log>")
    return "".join(out)


def _first_ctid(ct: memoryview) -> int | None:
    """The conntrack id as nflog_get_ctid reads it: the first CTA_ID, when it is exactly a u32."""
    off, end = 0, len(ct)
    while off + 4 <= end:
        alen, atype = _NLA.unpack_from(ct, off)
        if alen < 4 or off + alen > end:
            return None
        if atype & _NLA_TYPE_MASK == CTA_ID:
            return _U32.unpack_from(ct, off + 4)[0] if alen == 8 else None
        off += (alen + 3) & ~3
    return None


# ---------------------------------------------------------------------------------------------
# libnetfilter_conntrack's <flow> (nfct_snprintf, NFCT_O_XML, as ulogd calls it; 1.0.9)

CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO, CTA_HELP = 1, 2, 3, 4, 5
CTA_TIMEOUT, CTA_MARK, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY, CTA_USE, CTA_ID = 7, 8, 9, 10, 11, 12
CTA_SECMARK, CTA_ZONE, CTA_SECCTX, CTA_TIMESTAMP, CTA_LABELS = 17, 18, 19, 20, 22
IPS_SEEN_REPLY, IPS_ASSURED = 0x2, 0x4

L3_NAMES = {2: "ipv4", 10: "ipv6"}
L4_NAMES = {6: "tcp", 17: "udp", 136: "udplite", 1: "icmp", 58: "icmpv6", 132: "sctp", 47: "gre", 33: "dccp"}
PORT_PROTOCOLS = frozenset((6, 17, 136, 132, 33))
GRE = 47
TCP_STATES = (
    *("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT"),
    *("CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"),
)
SCTP_STATES = (
    *("NONE", "CLOSED", "COOKIE_WAIT", "COOKIE_ECHOED", "ESTABLISHED"),
    *("SHUTDOWN_SENT", "SHUTDOWN_RECD", "SHUTDOWN_ACK_SENT", "HEARTBEAT_SENT", "HEARTBEAT_ACKED"),
)
DCCP_STATES = (
    *("NONE", "REQUEST", "RESPOND", "PARTOPEN", "OPEN"),
    *("CLOSEREQ", "CLOSING", "TIMEWAIT", "IGNORE", "INVALID"),
)
#: CTA_PROTOINFO's nests: (type, the names of its states)
_PROTOINFO = ((1, TCP_STATES), (3, SCTP_STATES), (2, DCCP_STATES))
#: the longest helper name libnetfilter_conntrack keeps (NFCT_HELPER_NAME_MAX less its NUL)
HELPER_NAME_MAX = 15
_INDEPENDENT = (CTA_STATUS, CTA_TIMEOUT, CTA_MARK, CTA_SECMARK, CTA_ZONE, CTA_USE, CTA_ID)


def _tuple_xml(value: memoryview | None, family: int, direction: str, counters: tuple[int, int] | None) -> str:
    """One direction's ``<meta>``; ``counters`` None when the flow has no original counters."""
    l3 = family if value is not None else 0  # the library takes the family only with the tuple
    t = _nested(value)
    ip, proto = _nested(t.get(1)), _nested(t.get(2))
    src, dst = bytearray(16), bytearray(16)  # a union of the IPv4 and the IPv6 address
    for addr, v4, v6 in ((src, 1, 3), (dst, 2, 4)):
        if (v := ip.get(v4)) is not None and len(v) >= 4:
            addr[:4] = v[:4]
        if (v := ip.get(v6)) is not None and len(v) >= 16:
            addr[:] = v[:16]
    l4 = _u8(proto, 1) or 0
    # the ports' unions: the ICMP id shares the source port's bytes, type and code the destination's
    l4src, l4dst = bytearray(2), bytearray(2)
    if (v := proto.get(2)) is not None and len(v) >= 2:
        l4src[:] = v[:2]
    if (v := proto.get(3)) is not None and len(v) >= 2:
        l4dst[:] = v[:2]
    for t_type, t_code, t_id in ((5, 6, 4), (8, 9, 7)):
        if (v := proto.get(t_type)) is not None and len(v) >= 1:
            l4dst[0] = v[0]
        if (v := proto.get(t_code)) is not None and len(v) >= 1:
            l4dst[1] = v[0]
        if (v := proto.get(t_id)) is not None and len(v) >= 2:
            l4src[:] = v[:2]
    out = [
        f'<meta direction="{direction}"><layer3 protonum="{l3}" protoname="{L3_NAMES.get(l3, "unknown")}">',
    ]
    if l3 == 2:
        out.append(f"<src>{'.'.join(map(str, src[:4]))}</src><dst>{'.'.join(map(str, dst[:4]))}</dst>")
    elif l3 == 10:
        out.append(f"<src>{_ipv6(src)}</src><dst>{_ipv6(dst)}</dst>")
    else:
        out.append("<src></src><dst></dst>")
    out.append(f'</layer3><layer4 protonum="{l4}" protoname="{L4_NAMES.get(l4, "unknown")}">')
    if l4 in PORT_PROTOCOLS:
        out.append(f"<sport>{_U16.unpack(l4src)[0]}</sport><dport>{_U16.unpack(l4dst)[0]}</dport>")
    elif l4 == GRE:
        out.append(f"<srckey>0x{_U16.unpack(l4src)[0]:x}</srckey><dstkey>0x{_U16.unpack(l4dst)[0]:x}</dstkey>")
    out.append("</layer4>")
    zone = _u16(t, 3)
    if zone is not None:
        out.append(f"<zone>{zone}</zone>")
    if counters is not None:
        out.append(f"<counters><packets>{counters[0]}</packets><bytes>{counters[1]}</bytes></counters>")
    out.append("</meta>")
    return "".join(out)


def _ipv6(addr: bytearray) -> str:
    return socket.inet_ntop(socket.AF_INET6, bytes(addr))


def _counters(value: memoryview | None) -> tuple[int | None, int | None]:
    """(packets, bytes) of a CTA_COUNTERS nest, each None when absent; 64 bits over 32."""
    c = _nested(value)
    packets = _u64(c, 1)
    if packets is None:
        packets = _u32(c, 3)
    nbytes = _u64(c, 2)
    if nbytes is None:
        nbytes = _u32(c, 4)
    return packets, nbytes


def flow_xml(buf: Any, off: int, end: int, family: int, now: int, when: str) -> str:
    """The ctnetlink attributes at ``buf[off:end]`` of a flow of ``family`` as libnetfilter_conntrack's
    ``<flow>`` (``now``: the time in seconds its ``<deltatime>`` of a running flow counts to)."""
    a = attributes(buf, off, end)
    orig_packets, orig_bytes = _counters(a.get(CTA_COUNTERS_ORIG))
    reply_packets, reply_bytes = _counters(a.get(CTA_COUNTERS_REPLY))
    with_counters = orig_packets is not None and orig_bytes is not None
    out = [
        "<flow>",
        _tuple_xml(a.get(CTA_TUPLE_ORIG), family, "original", (orig_packets, orig_bytes) if with_counters else None),
        _tuple_xml(
            a.get(CTA_TUPLE_REPLY), family, "reply", (reply_packets or 0, reply_bytes or 0) if with_counters else None
        ),
    ]
    protoinfo = _nested(a.get(CTA_PROTOINFO))
    states = []
    for t, names in _PROTOINFO:
        state = _u8(_nested(protoinfo.get(t)), 1)
        if state is not None:
            states.append(names[state] if state < len(names) else names[0])
    timestamps = _nested(a.get(CTA_TIMESTAMP))
    start, stop = _u64(timestamps, 1), _u64(timestamps, 2)
    labels = a.get(CTA_LABELS)
    independent = (
        bool(states)
        or any(_valid_number(a, t) for t in _INDEPENDENT)
        or (labels is not None and len(labels) > 0)
        or start is not None
        or stop is not None
    )
    if independent:
        out.append('<meta direction="independent">')
    out.extend(f"<state>{s}</state>" for s in states)
    for t, tag in ((CTA_TIMEOUT, "timeout"), (CTA_MARK, "mark"), (CTA_SECMARK, "secmark")):
        v = _u32(a, t)
        if v is not None:
            out.append(f"<{tag}>{v}</{tag}>")
    secctx = _nested(a.get(CTA_SECCTX)).get(1)
    if secctx is not None:
        out.append(f"<secctx>{text(_cstring(secctx))}</secctx>")
    zone = _u16(a, CTA_ZONE)
    if zone is not None:
        out.append(f"<zone>{zone}</zone>")
    for t, tag in ((CTA_USE, "use"), (CTA_ID, "id")):
        v = _u32(a, t)
        if v is not None:
            out.append(f"<{tag}>{v}</{tag}>")
    status = _u32(a, CTA_STATUS)
    if status is not None:
        if status & IPS_ASSURED:
            out.append("<assured/>")
        if not status & IPS_SEEN_REPLY:
            out.append("<unreplied/>")
    # seconds as C computes them: unsigned differences, printed as unsigned 64-bit numbers
    if start is not None and stop is not None:
        out.append(f"<deltatime>{((stop - start) % (1 << 64)) // 1_000_000_000}</deltatime>")
    elif start is not None:
        out.append(f"<deltatime>{(now - start // 1_000_000_000) % (1 << 64)}</deltatime>")
    if independent:
        out.append("</meta>")
    out += ("<when>", when, "</when>")
    helper = _nested(a.get(CTA_HELP)).get(1)
    if helper is not None:
        out.append(f"<helper>{text(_cstring(helper)[:HELPER_NAME_MAX])}</helper>")
    out.append("</flow>")
    return "".join(out)


def _valid_number(a: dict[int, memoryview], t: int) -> bool:
    v = a.get(t)
    return v is not None and len(v) >= (2 if t == CTA_ZONE else 4)


# ---------------------------------------------------------------------------------------------
# libnetfilter_acct's <obj> (nfacct_snprintf, NFACCT_SNPRINTF_T_XML with NFACCT_SNPRINTF_F_TIME)


def sum_xml(msg: Any, when: str) -> str | None:
    """An nfacct object's message (or an nft named counter's) as libnetfilter_acct's ``<obj>``."""
    mv = memoryview(msg)
    if len(mv) < 20:
        return None
    obj = decode_acct(mv, 0, len(mv)) or decode_nft_counter(mv, 0, len(mv))
    if obj is None:
        return None
    return f"<obj><name>{text(obj.name)}</name><pkts>{obj.pkts:020d}</pkts><bytes>{obj.bytes:020d}</bytes>{when}</obj>"


# ---------------------------------------------------------------------------------------------
# the files


class Document:
    """One kind's XML document: a file whose closing tag stays at its end, or stdout."""

    def __init__(self, kind: str, path: str | None, fd: int, end: int, created: bool) -> None:
        root = ROOTS[kind]
        self.kind = kind
        self.path = path  # None: stdout
        self.fd = fd
        self.header = DECLARATION + f"<{root}>\n".encode()
        self.closing = f"</{root}>\n".encode()
        self.end = end  # where the closing tag begins: the next record goes there
        self.created = created
        self.records = 0

    def append(self, records: list[bytes]) -> None:
        """Write the records before the closing tag, and it after them, in one write; on failure
        the file is as it was and ``records`` untouched (on stdout: what was written is removed)."""
        if self.path is None:
            write_all(self.fd, records)
            return
        data = b"".join(records)
        offset = self.end
        if offset > 0 and os.fstat(self.fd).st_size == 0:  # cut to nothing (copytruncate): a new document
            data, offset = self.header + data, 0
        try:
            _pwrite_all(self.fd, data + self.closing, offset)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, offset)
                if offset:
                    _pwrite_all(self.fd, self.closing, offset)
            raise
        self.end = offset + len(data)
        self.records += len(records)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view, done = memoryview(data), 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        done += n


def open_document(kind: str, directory: str, keep: Document | None = None) -> Document:
    """``ulogd-KIND-DDMMYYYY-HHMMSS.xml`` for now in ``directory``, with its declaration and root;
    ``keep`` when that is its own name (a SIGHUP in the second it was opened).  A file of the name
    that pylogd wrote and no one holds is continued; another is left alone for the next ``-N`` name."""
    base = os.path.join(directory, time.strftime(f"ulogd-{kind}-%d%m%Y-%H%M%S", time.localtime()))
    probe = Document(kind, None, -1, 0, False)
    header, closing = probe.header, probe.closing
    for n in range(1, MAX_SUFFIX + 1):
        path = f"{base}.xml" if n == 1 else f"{base}-{n}.xml"
        if keep is not None and keep.path == path:
            return keep
        existed = os.path.lexists(path)
        fd = open_output(path, os.O_RDWR | os.O_CREAT)
        try:
            try:  # another instance (or daemon) writing it now would overwrite what this one writes
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            size = os.fstat(fd).st_size
            if size == 0:
                _pwrite_all(fd, header + closing, 0)
                return Document(kind, path, fd, len(header), not existed)
            if (
                size >= len(header) + len(closing)
                and os.pread(fd, len(header), 0) == header
                and os.pread(fd, len(closing), size - len(closing)) == closing
            ):
                return Document(kind, path, fd, size - len(closing), False)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise OSError(errno.EEXIST, f"{base}.xml to -{MAX_SUFFIX}.xml exist and are not pylogd's XML", f"{base}.xml")


def _entry_size(entry: tuple[str, bytes]) -> int:
    return len(entry[1])


class Xml(Output):
    spec = PluginSpec(
        name="XML",
        kind=Kind.OUTPUT,
        help="Writes flows (NFCT), packets (NFLOG) and counter sums (NFACCT) as the netfilter libraries' XML, "
        "one file per kind and run in directory.",
        options=(
            path_option("directory", "/var/log/", "directory of the ulogd-{flow,pkt,sum}-DDMMYYYY-HHMMSS.xml files"),
            sync_option("records"),
            int_option("stdout", 0, "non-zero: write the documents to stdout instead of files", min=0, max=INT_MAX),
        ),
        inputs=(
            key("ct", KeyType.RAW, "NFCT's ctnetlink message, or NFLOG's conntrack attributes", optional=True),
            key("raw", KeyType.RAW, "NFLOG's nflog message", optional=True),
            key("sum", KeyType.RAW, "NFACCT's object message", optional=True),
        ),
        section_required=True,
    )

    #: entries are (kind, record line): the instance may serve stacks of several kinds
    entry_size: ClassVar[Callable[[Any], int]] = staticmethod(_entry_size)  # type: ignore[assignment]

    def __init__(self, instance_id: str, options: dict[str, Any], log: Logger) -> None:
        super().__init__(instance_id, options, log)
        self.kinds: list[str] = []  # the kinds of the stacks that end here, in the order they came
        self.documents: dict[str, Document] = {}
        self.started = False
        self.clock = Clock()

    # -- the documents -------------------------------------------------------------------------

    def start(self, loop: EventLoop) -> None:
        # the stacks' handlers come after the outputs' start: a document is opened when a stack
        # of its kind appears (or here, for kinds known already)
        self.started = True
        for kind in self.kinds:
            self._document(kind)

    def _document(self, kind: str) -> Document:
        doc = self.documents.get(kind)
        if doc is not None:
            return doc
        try:
            if self.options["stdout"]:
                doc = Document(kind, None, 1, 0, False)
                write_all(1, [doc.header])
            else:
                doc = open_document(kind, self.options["directory"])
        except OSError as exc:
            where = "stdout" if self.options["stdout"] else f"XML file {exc.filename or ''}"
            raise PluginError(f"can't open {where}: {exc.strerror}") from None
        self.documents[kind] = doc
        return doc

    def reopen(self) -> None:
        if self.options["stdout"]:
            return
        for kind, doc in list(self.documents.items()):
            try:
                new = open_document(kind, self.options["directory"], keep=doc)
            except OSError as exc:
                self.log.error(f"cannot open a new XML file: {exc.strerror}; still writing to {doc.path}")
                continue
            if new is not doc:
                os.close(doc.fd)
                self.documents[kind] = new
                self.log.notice(f"XML: reopening logfile: {new.path} follows {doc.path}")

    def stop(self) -> None:
        for doc in self.documents.values():
            if doc.path is None:
                with contextlib.suppress(OSError):
                    write_all(doc.fd, [doc.closing])
            else:
                os.close(doc.fd)
        self.documents = {}

    def abort(self) -> None:
        made = [d.path for d in self.documents.values() if d.path is not None and d.created and not d.records]
        self.stop()
        for path in made:
            with contextlib.suppress(OSError):
                os.unlink(path)

    # -- records -------------------------------------------------------------------------------

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        raw, ct, acct = slots.inp("raw"), slots.inp("ct"), slots.inp("sum")
        # the kind of ulogd's input: NFLOG has raw (and ct), NFCT ct, NFACCT sum
        kind = "pkt" if raw is not None else "flow" if ct is not None else "sum" if acct is not None else None
        if kind is None:
            raise PluginError(
                f"{self.id}:XML writes what NFLOG (key raw), NFCT (key ct) or NFACCT (key sum) reads; "
                "this stack has none of them"
            )
        if kind not in self.kinds:
            self.kinds.append(kind)
        if self.started:
            self._document(kind)
        clock = self.clock
        # in a packet stack ct is NFLOG's NFULA_CT payload, whose family is the nflog message's
        ct_in_message = kind == "flow"

        def convert(v: list) -> tuple[str, bytes] | None:
            now, when = clock()
            parts = []
            msg = v[raw] if raw is not None else None
            if msg is not None:
                parts.append(log_xml(msg, when))
            flow = v[ct] if ct is not None else None
            if flow is not None:
                if ct_in_message:
                    if len(flow) >= 20:
                        parts.append(flow_xml(flow, 20, len(flow), flow[16], now, when))
                elif msg is not None and len(msg) >= 20:
                    parts.append(flow_xml(flow, 0, len(flow), msg[16], now, when))
            obj = v[acct] if acct is not None else None
            if obj is not None and (line := sum_xml(obj, when)) is not None:
                parts.append(line)
            if not parts:
                return None
            return kind, ("".join(parts) + "\n").encode()

        return convert

    def write(self, entries: list) -> None:
        """Each run of one kind's entries in one write; on failure ``entries`` keeps what is not written."""
        while entries:
            kind = entries[0][0]
            n = 1
            while n < len(entries) and entries[n][0] == kind:
                n += 1
            records = [line for _kind, line in entries[:n]]
            try:
                self._document(kind).append(records)
            except BaseException:
                entries[:n] = [(kind, line) for line in records]  # stdout: the rest of what was not written
                raise
            del entries[:n]
