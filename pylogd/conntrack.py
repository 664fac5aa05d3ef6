"""Reading conntrack (ctnetlink) events and table dumps, and decoding them by hand.

* :func:`decode` turns one ctnetlink message into a record, a list indexed by the ``F_*``
  constants (``None`` = absent).  It never raises: a truncated or garbled message yields
  what could be read.  ctnetlink attribute payloads are big-endian.
* :class:`CtSocket` subscribes to the NEW / UPDATE / DESTROY multicast groups of a network
  namespace and decodes what arrives (:meth:`CtSocket.drain`).
* :func:`dump_each` reads the whole table over a short-lived socket (optionally resetting the
  counters, as ``conntrack -L -z`` does), handing each entry on as it is decoded;
  :func:`dump` collects them in a list.
* :func:`compile_filter` turns address and protocol filters into a classic BPF program that
  :meth:`CtSocket.attach_filter` installs, so rejected flows never leave the kernel.

Example::

    with CtSocket(EVENT_NEW | EVENT_DESTROY, netns="blue") as ct:
        for rec in ct.events(timeout=5):
            print(rec[F_EVENT], socket.inet_ntop(FAMILY[rec[F_FAMILY]], rec[F_ORIG_SRC]))
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import select
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from operator import itemgetter

from .netlink import (
    BACKLOG_SIZE,
    NETLINK_BROADCAST_ERROR,
    NETLINK_NO_ENOBUFS,
    NLA,
    NLA_TYPE_MASK,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_FULL,
    SOL_NETLINK,
    NetlinkError,
    NetlinkSocket,
    iter_messages,
    nlmsg_error,
    open_netfilter,
    set_rcvbuf,
)

__all__ = [
    "EVENT_DESTROY",
    "EVENT_NEW",
    "EVENT_UPDATE",
    "FIELDS",
    "CtSocket",
    "compile_filter",
    "decode",
    "decode_bytes",
    "dump",
    "dump_each",
    "learned_layout",
    "owned",
]

EVENT_NEW, EVENT_UPDATE, EVENT_DESTROY = 1, 2, 4  # ct.event values = the multicast group bits
IPS_SRC_NAT, IPS_DST_NAT = 0x10, 0x20

NFNL_SUBSYS_CTNETLINK = 1
MSG_CT_NEW = NFNL_SUBSYS_CTNETLINK << 8
MSG_CT_GET = MSG_CT_NEW | 1
MSG_CT_DELETE = MSG_CT_NEW | 2
MSG_CT_GET_CTRZERO = MSG_CT_NEW | 3
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
MAX_DATAGRAM = 65536  # room kept free for the next datagram (events fit in one page)

#: protocols whose tuples carry ports (ulogd's list)
PORT_PROTOCOLS = frozenset((6, 17, 33, 132, 136))

#: Field order of a decoded record.  The first 19 are in the order of the NFCT plugin's first
#: keys (ulogd's), so that the plugin copies them with one slice.
FIELDS = (
    "orig_src",
    "orig_dst",
    "orig_proto",
    "orig_sport",
    "orig_dport",
    "orig_bytes",
    "orig_pkts",
    "reply_src",
    "reply_dst",
    "reply_proto",
    "reply_sport",
    "reply_dport",
    "reply_bytes",
    "reply_pkts",
    "icmp_code",  # from the original tuple, ICMP or ICMPv6
    "icmp_type",
    "mark",
    "id",
    "event",  # EVENT_NEW / EVENT_UPDATE / EVENT_DESTROY (dumps: EVENT_UPDATE)
    "family",  # nfgenmsg family: 2 or 10
    "icmp_id",
    "status",
    "timeout",
    "zone",
    "start",  # CTA_TIMESTAMP_START, ns since the epoch
    "stop",  # CTA_TIMESTAMP_STOP
    "msg",  # the whole netlink message (memoryview into the receive buffer, or bytes)
)
NFIELDS = len(FIELDS)
(
    F_ORIG_SRC, F_ORIG_DST, F_ORIG_PROTO, F_ORIG_SPORT, F_ORIG_DPORT, F_ORIG_BYTES, F_ORIG_PKTS,
    F_REPLY_SRC, F_REPLY_DST, F_REPLY_PROTO, F_REPLY_SPORT, F_REPLY_DPORT, F_REPLY_BYTES, F_REPLY_PKTS,
    F_ICMP_CODE, F_ICMP_TYPE, F_MARK, F_ID, F_EVENT,
    F_FAMILY, F_ICMP_ID, F_STATUS, F_TIMEOUT, F_ZONE, F_START, F_STOP, F_MSG,
) = range(NFIELDS)  # fmt: skip
FAMILY = {2: socket.AF_INET, 10: socket.AF_INET6}

_NFGEN = struct.Struct("=B")

# top-level attributes (linux/netfilter/nfnetlink_conntrack.h)
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_TIMEOUT, CTA_MARK = 1, 2, 3, 7, 8
CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY, CTA_ID, CTA_ZONE, CTA_TIMESTAMP = 9, 10, 12, 18, 20


_U32_ATTRS = {CTA_STATUS: F_STATUS, CTA_TIMEOUT: F_TIMEOUT, CTA_MARK: F_MARK, CTA_ID: F_ID}
#: CTA_COUNTERS_* -> (packets field, bytes field)
_COUNTER_ATTRS = {CTA_COUNTERS_ORIG: (F_ORIG_PKTS, F_ORIG_BYTES), CTA_COUNTERS_REPLY: (F_REPLY_PKTS, F_REPLY_BYTES)}
_HEADER = None  # the field of an attribute header word in a layout: compared, never decoded


def _attributes(mv: memoryview, start: int, lo: int, hi: int, items: list) -> Iterator[tuple[int, int, int, int]]:
    """The attributes in ``[lo, hi)`` (offsets relative to ``start``) as (payload offset, payload
    end, type, payload size); every header read goes into ``items``.  A damaged header ends the
    walk at its level: its word is in ``items``, so a layout reproduces the stop exactly."""
    off = lo
    while off + 4 <= hi:
        alen, atype = NLA.unpack_from(mv, start + off)
        items.append((off, "I", _HEADER))
        if alen < 4 or off + alen > hi:
            items.append((-1, "", _HEADER))  # marks the message as damaged
            return
        yield off + 4, off + alen, atype & NLA_TYPE_MASK, alen - 4
        off = (off + alen + 3) & ~3


def _scan(mv: memoryview, start: int, end: int) -> tuple[list[tuple[int, str, int | None]], bool]:
    """Where each field of the message at ``mv[start:end]`` lies, as (offset, struct code, field)
    in message order, header words included; and whether every header was sound.

    This is the one statement of which attributes pylogd reads; :func:`_compile` turns it into
    a layout that decodes every message of the same shape with one unpack.
    """
    items: list[tuple[int, str, int | None]] = []

    def walk(lo: int, hi: int) -> Iterator[tuple[int, int, int, int]]:
        return _attributes(mv, start, lo, hi, items)

    for p, q, atype, size in walk(20, end - start):
        if atype in (CTA_TUPLE_ORIG, CTA_TUPLE_REPLY):
            base = F_ORIG_SRC if atype == CTA_TUPLE_ORIG else F_REPLY_SRC
            for p2, q2, t2, _s2 in walk(p, q):
                if t2 == 1:  # CTA_TUPLE_IP
                    for p3, _q3, t3, s3 in walk(p2, q2):
                        if t3 in (1, 2) and s3 >= 4:  # CTA_IP_V4_SRC / DST
                            items.append((p3, "4s", base + t3 - 1))
                        elif t3 in (3, 4) and s3 >= 16:  # CTA_IP_V6_SRC / DST
                            items.append((p3, "16s", base + t3 - 3))
                elif t2 == 2:  # CTA_TUPLE_PROTO
                    for p3, _q3, t3, s3 in walk(p2, q2):
                        if t3 == 1 and s3 >= 1:  # CTA_PROTO_NUM
                            items.append((p3, "B", base + 2))
                        elif t3 in (2, 3) and s3 >= 2:  # CTA_PROTO_SRC_PORT / DST_PORT
                            items.append((p3, "H", base + 1 + t3))
                        elif base == F_ORIG_SRC:  # the reply tuple's ICMP fields (echo reply) are not kept
                            if t3 in (5, 8) and s3 >= 1:  # CTA_PROTO_ICMP(V6)_TYPE
                                items.append((p3, "B", F_ICMP_TYPE))
                            elif t3 in (6, 9) and s3 >= 1:  # ..._CODE
                                items.append((p3, "B", F_ICMP_CODE))
                            elif t3 in (4, 7) and s3 >= 2:  # ..._ID
                                items.append((p3, "H", F_ICMP_ID))
        elif atype in _U32_ATTRS:
            if size >= 4:
                items.append((p, "I", _U32_ATTRS[atype]))
        elif atype in _COUNTER_ATTRS:
            fields = _COUNTER_ATTRS[atype]
            for p2, _q2, t2, s2 in walk(p, q):
                if t2 in (1, 2) and s2 >= 8:  # CTA_COUNTERS_PACKETS / BYTES (u64)
                    items.append((p2, "Q", fields[t2 - 1]))
                elif t2 in (3, 4) and s2 >= 4:  # the old 32-bit forms
                    items.append((p2, "I", fields[t2 - 3]))
        elif atype == CTA_ZONE:
            if size >= 2:
                items.append((p, "H", F_ZONE))
        elif atype == CTA_TIMESTAMP:
            for p2, _q2, t2, s2 in walk(p, q):
                if t2 in (1, 2) and s2 >= 8:  # CTA_TIMESTAMP_START / STOP
                    items.append((p2, "Q", F_START + t2 - 1))
    sound = all(off >= 0 for off, _code, _field in items)
    return [item for item in items if item[0] >= 0], sound


#: (unpack, headers, expected, gather, fields) for messages of one length: ``headers(mv, start)``
#: reads the message's attribute header words (each run of adjacent words as one bytes value) and
#: equals ``expected`` exactly when the message has the shape; ``unpack(mv, start)`` reads the
#: message type and flags (at AT_TYPE and AT_FLAGS, read big-endian: compare them with READ_*) and
#: the values, and ``gather(values + extras)`` is the whole record, extras = (event, message, None);
#: ``fields`` maps each F_* field the shape has (F_FAMILY always) to its place in what ``unpack`` returns.
#: Why not the message as one integer, masked to its header words: converting and masking 148 bytes
#: cost 6,300 instructions (callgrind), a dozen small integers compared a third of that.
Layout = tuple[Callable, Callable, tuple, Callable, dict[int, int]]


#: the places of nlmsg_type and nlmsg_flags in what a layout's unpack returns, and what they are
#: there: a layout reads everything big-endian, these two are in host order, so the constants are
#: their host-order bytes read big-endian (a flag test is the same on both byte orders)
AT_TYPE, AT_FLAGS = 0, 1
READ_CT_NEW, READ_CT_DELETE, READ_NEW_FLAGS = (
    int.from_bytes(value.to_bytes(2, sys.byteorder), "big")
    for value in (MSG_CT_NEW, MSG_CT_DELETE, NLM_F_CREATE | NLM_F_EXCL)
)
_TYPE_AND_FLAGS_READ = struct.Struct(">HH").unpack_from
_UNNAMED = -1  # a value a layout reads that is no field of the record
#: nlmsghdr's type and flags, then nfgenmsg's family: read by every layout before its values
_MESSAGE_HEADER = ((4, "H", _UNNAMED), (6, "H", _UNNAMED), (16, "B", F_FAMILY))


def _event_read(mtype: int, mflags: int) -> int:
    """ct.event of nlmsg_type and nlmsg_flags as a layout reads them (0: not an entry message)."""
    if mtype == READ_CT_NEW:
        return EVENT_NEW if mflags & READ_NEW_FLAGS else EVENT_UPDATE
    if mtype == READ_CT_DELETE:
        return EVENT_DESTROY
    return 0


def _compile(mv: memoryview, start: int, end: int, items: list[tuple[int, str, int | None]]) -> Layout:
    fmt, pos, fields, nvals = [">"], 0, {}, 0
    runs: list[list[int]] = []  # [offset, length] of adjacent header words
    for off, code, field in (*_MESSAGE_HEADER, *items):
        if field is _HEADER:
            if runs and runs[-1][0] + runs[-1][1] == off:
                runs[-1][1] += 4
            else:
                runs.append([off, 4])
            continue
        if off > pos:
            fmt.append(f"{off - pos}x")
        fmt.append(code)
        pos = off + struct.calcsize(">" + code)
        if field != _UNNAMED:
            fields[field] = nvals  # a repeated attribute: the last one wins, as a walk would have it
        nvals += 1
    extra = {F_EVENT: nvals, F_MSG: nvals + 1}
    gather = itemgetter(*(fields.get(f, extra.get(f, nvals + 2)) for f in range(NFIELDS)))
    header_fmt, pos = [">"], 0
    for off, length in sorted(runs):
        if off > pos:
            header_fmt.append(f"{off - pos}x")
        header_fmt.append(f"{length}s")
        pos = off + length
    headers = struct.Struct("".join(header_fmt)).unpack_from
    return struct.Struct("".join(fmt)).unpack_from, headers, headers(mv, start), gather, fields


#: message length -> the layouts learned at that length; bounded, so a flood of odd shapes is
#: scanned message by message instead of growing memory
_LAYOUTS: dict[int, list[Layout]] = {}
_MAX_LENGTHS, _MAX_PER_LENGTH = 512, 4


def learned_layout(mv: memoryview, start: int, end: int) -> Layout | None:
    """The layout :func:`decode` learned for the shape of the message at ``mv[start:end]``, or
    None (a damaged message, or more shapes than the cache keeps): for code that specialises
    what follows the decoding per shape, as NFCT's event mode does."""
    for layout in _LAYOUTS.get(end - start, ()):
        if layout[1](mv, start) == layout[2]:
            return layout
    return None


def decode(mv: memoryview, start: int, end: int, rec: list) -> bool:
    """Decode the ctnetlink message at ``mv[start:end]`` into ``rec`` (a list of NFIELDS).

    Sets F_EVENT from the message type and flags, F_MSG to the message, every other field
    from its attribute (None when absent).  Returns False when it is not a conntrack entry
    message (nothing useful was decoded).  Never raises.
    """
    if end - start < 20 or end > len(mv):
        return False
    size = end - start
    layouts = _LAYOUTS.get(size)
    if layouts is not None:
        for unpack, headers, expected, gather, _fields in layouts:
            if headers(mv, start) == expected:
                values = unpack(mv, start)
                event = _event_read(values[AT_TYPE], values[AT_FLAGS])
                if not event:
                    return False
                extras = (event, mv[start:end], None)
                rec[:] = gather(values + extras)
                return True
    event = _event_read(*_TYPE_AND_FLAGS_READ(mv, start + 4))
    if not event:
        return False
    items, sound = _scan(mv, start, end)
    layout = _compile(mv, start, end, items)
    if sound:
        if layouts is None and len(_LAYOUTS) < _MAX_LENGTHS:
            layouts = _LAYOUTS[size] = []
        if layouts is not None and len(layouts) < _MAX_PER_LENGTH:
            layouts.append(layout)
    extras = (event, mv[start:end], None)
    rec[:] = layout[3](layout[0](mv, start) + extras)
    return True


def decode_bytes(msg: bytes) -> list:
    """A fresh record decoded from one whole message (for messages kept as bytes)."""
    rec: list = [None] * NFIELDS
    decode(memoryview(msg), 0, len(msg), rec)
    return rec


def owned(rec: list) -> tuple:
    """A copy of a record that stays valid after the receive buffer is reused."""
    msg = rec[F_MSG]
    out = list(rec)
    if type(msg) is memoryview:
        out[F_MSG] = msg.tobytes()
    return tuple(out)


def _request(mtype: int, flags: int, family: int = 0, seq: int = 0) -> bytes:
    body = _NFGEN.pack(family) + b"\0\0\0"  # family, version 0, res_id 0
    return NLMSG_FULL.pack(16 + len(body), mtype, flags | NLM_F_REQUEST, seq, 0) + body


def _open(netns: str | None, groups: int = 0) -> socket.socket:
    return open_netfilter(netns, groups, "subscribe to conntrack events")


def dump_each(
    on_record: Callable[[list], object],
    netns: str | None = None,
    reset_counters: bool = False,
    timeout: float = 30.0,
) -> int:
    """Read the whole conntrack table (both families), calling ``on_record(rec)`` per entry.

    ``rec`` is one reused record with F_EVENT = EVENT_UPDATE and F_MSG a memoryview into the
    receive buffer, valid only during the call (as :meth:`CtSocket.drain` hands them on).  Each
    datagram is decoded and handed on before the next is read, so a table of any size never
    exists here as a list: a caller keeping what it needs (NFCT's table keeps the message
    bytes) costs per entry what the event path costs.  ``reset_counters`` zeroes the counters
    as they are read (IPCTNL_MSG_CT_GET_CTRZERO).  Returns the entries handed on.  Raises
    :class:`NetlinkError` when the kernel refuses the dump or stops answering; the entries
    handed on until then stay handed on.
    """
    sock = _open(netns)
    count = 0
    rec: list = [None] * NFIELDS
    try:
        set_rcvbuf(sock, 4 << 20)
        seq = int(time.time()) & 0xFFFFFF
        mtype = MSG_CT_GET_CTRZERO if reset_counters else MSG_CT_GET
        sock.send(_request(mtype, NLM_F_DUMP | NLM_F_ACK, 0, seq))
        buf = bytearray(1 << 17)
        mv = memoryview(buf)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
                raise NetlinkError(errno.ETIMEDOUT, "conntrack dump: no answer")
            try:
                n = sock.recv_into(buf, len(buf), socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            for mtype, _flags, start, end in iter_messages(mv, n):
                if mtype == NLMSG_DONE:
                    return count
                if mtype == NLMSG_ERROR:
                    err = nlmsg_error(mv, start, end)
                    if err is None:
                        err = errno.EIO
                    if err:
                        raise NetlinkError(err, f"conntrack dump refused: {errno.errorcode.get(err, err)}")
                    return count
                if decode(mv, start, end, rec):
                    rec[F_EVENT] = EVENT_UPDATE
                    count += 1
                    on_record(rec)
    finally:
        rec[F_MSG] = None  # no view into the buffer outlives the dump
        sock.close()


def dump(netns: str | None = None, reset_counters: bool = False, timeout: float = 30.0) -> list[tuple]:
    """The whole conntrack table as a list of owned records (:func:`dump_each` keeping every
    one): for tools and tests; a daemon walks a table of unknown size with :func:`dump_each`."""
    out: list[tuple] = []
    dump_each(lambda rec: out.append(owned(rec)), netns, reset_counters, timeout)
    return out


# ---------------------------------------------------------------------------------------------
# kernel-side filtering: classic BPF over the ctnetlink message

#: (negated, IP version, network as int, netmask as int)
NetRule = tuple[bool, int, int, int]
#: (negated, protocol number)
ProtoRule = tuple[bool, int]

SO_ATTACH_FILTER = 26
BPF_MAXINSNS = 4096
_SOCK_FILTER = struct.Struct("=HBBI")  # code, jt, jf, k
_SOCK_FPROG = struct.Struct("@HP")  # len, pointer to the instructions
_LD_W_ABS, _LD_B_ABS, _LD_W_IND, _LD_B_IND, _LD_IMM = 0x20, 0x30, 0x40, 0x50, 0x00
_LDX_IMM, _ALU_AND_K, _JEQ_K, _JA, _RET_K, _TAX = 0x01, 0x54, 0x15, 0x05, 0x06, 0x07
# ancillary loads: A = offset of the attribute of type X, searched from offset A (0: none)
_AD_NLATTR, _AD_NLATTR_NEST = (0xFFFFF000 + 12, 0xFFFFF000 + 16)
_ACCEPT, _REJECT = 0xFFFFFFFF, 0
_NFGEN_FAMILY_OFF, _ATTRS_OFF = 16, 20


def compile_filter(
    src: list[NetRule], dst: list[NetRule], protos: list[ProtoRule]
) -> list[tuple[int, int, int, int]] | None:
    """A BPF program (a list of (code, jt, jf, k)) that lets a conntrack event through exactly
    when its original tuple passes all three lists, or None when nothing is filtered.

    Per list a flow passes when no negated entry matches and, if the list has positive
    entries, one of them matches; entries of the other IP version never match.  A message
    the program cannot read (no original tuple, a family other than IPv4 and IPv6) is let
    through: userspace applies the same test and has the last word.  Raises ValueError when
    the lists need more than the kernel's BPF_MAXINSNS instructions.
    """
    if not (src or dst or protos):
        return None
    prog: list[list[int]] = []  # [code, jt, jf, k, ja target label or -1]
    labels: dict[int, int] = {}
    label_ids = itertools.count()

    def op(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> None:
        prog.append([code, jt, jf, k & 0xFFFFFFFF, -1])

    def jump(label: int) -> None:
        prog.append([_JA, 0, 0, 0, label])

    def find(path: tuple[int, ...]) -> None:
        """X = offset of the nested attribute at ``path``; a missing one lets the message through."""
        op(_LD_IMM, _ATTRS_OFF)
        for depth, atype in enumerate(path):
            op(_LDX_IMM, atype)
            op(_LD_W_ABS, _AD_NLATTR if depth == 0 else _AD_NLATTR_NEST)
            op(_JEQ_K, 0, 0, 1)
            op(_RET_K, _ACCEPT)
        op(_TAX)

    def match(words: list[tuple[int, int]], width: int) -> None:
        """Falls through to the next instruction (the action) when the value at X+4 matches
        every (mask, value) word, else jumps past it."""
        full = 0xFF if width == 1 else 0xFFFFFFFF
        tests = [(i, m, v) for i, (m, v) in enumerate(words) if m]  # a /0 word matches anything
        sizes = [2 + (m != full) for _i, m, _v in tests]
        for pos, (i, mask, value) in enumerate(tests):
            op(_LD_B_IND if width == 1 else _LD_W_IND, 4 + 4 * i)
            if mask != full:
                op(_ALU_AND_K, mask)
            op(_JEQ_K, value, 0, sum(sizes[pos + 1 :]) + 1)

    def rules(entries: list[tuple[bool, list[tuple[int, int]]]], width: int, require_positive: bool) -> None:
        for neg, words in entries:
            if neg:
                match(words, width)
                op(_RET_K, _REJECT)
        if require_positive:
            passed = next(label_ids)
            for neg, words in entries:
                if not neg:
                    match(words, width)
                    jump(passed)
            op(_RET_K, _REJECT)
            labels[passed] = len(prog)

    def words_of(version: int, net: int, mask: int) -> list[tuple[int, int]]:
        count = 1 if version == 4 else 4
        return [((mask >> (32 * (count - 1 - i))) & 0xFFFFFFFF, (net >> (32 * (count - 1 - i))) & 0xFFFFFFFF)
                for i in range(count)]  # fmt: skip

    families = [(2, 4, 1, next(label_ids)), (10, 6, 3, next(label_ids))]  # family, version, CTA_IP_*_SRC
    op(_LD_B_ABS, _NFGEN_FAMILY_OFF)
    for family, _version, _src_attr, label in families:
        op(_JEQ_K, family, 0, 1)
        jump(label)
    op(_RET_K, _ACCEPT)
    for _family, version, src_attr, label in families:
        labels[label] = len(prog)
        for rule_list, addr_attr in ((src, src_attr), (dst, src_attr + 1)):
            if not rule_list:
                continue
            entries = [(neg, words_of(ver, net, mask)) for neg, ver, net, mask in rule_list if ver == version]
            require_positive = any(not neg for neg, *_ in rule_list)
            if not entries:
                if require_positive:  # only entries of the other version: nothing of this one passes
                    op(_RET_K, _REJECT)
                    break
                continue
            find((CTA_TUPLE_ORIG, 1, addr_attr))  # CTA_TUPLE_IP, CTA_IP_V*_SRC / _DST
            rules(entries, 4, require_positive)
        else:
            if protos:
                find((CTA_TUPLE_ORIG, 2, 1))  # CTA_TUPLE_PROTO, CTA_PROTO_NUM
                rules([(neg, [(0xFF, num)]) for neg, num in protos], 1, any(not neg for neg, _ in protos))
            op(_RET_K, _ACCEPT)

    if len(prog) > BPF_MAXINSNS:
        raise ValueError(f"the filter needs {len(prog)} BPF instructions, more than the kernel's {BPF_MAXINSNS}")
    out = []
    for index, (code, jt, jf, k, label) in enumerate(prog):
        if label >= 0:
            k = labels[label] - index - 1
        out.append((code, jt, jf, k))
    return out


class CtSocket(NetlinkSocket):
    """A netlink socket subscribed to conntrack events of one network namespace.

    Arguments:
        events: EVENT_NEW | EVENT_UPDATE | EVENT_DESTROY (bit i = multicast group i + 1).
        netns: a name under /run/netns or a path; the socket is created inside it.
        rcvbuf: receive buffer in bytes (0: system default); SO_RCVBUFFORCE first.
        rcvbuf_max: on ENOBUFS double the buffer up to this (0: never grows).
        reliable: set NETLINK_BROADCAST_ERROR and NETLINK_NO_ENOBUFS, so that the kernel
            reports delivery failures to ctnetlink (which then keeps DESTROY events for
            retransmission) and this socket never sees ENOBUFS.
        backlog_size: bytes of the read-ahead ring (:class:`pylogd.netlink.DatagramRing`):
            a table flush or a garbage-collection pass sends tens of thousands of events at
            once, and the ring takes them off the kernel's hands at recv() speed.
    """

    def __init__(
        self,
        events: int = EVENT_NEW | EVENT_DESTROY,
        netns: str | None = None,
        rcvbuf: int = 0,
        rcvbuf_max: int = 0,
        reliable: bool = False,
        backlog_size: int = BACKLOG_SIZE,
    ) -> None:
        if not 0 < events <= 7:
            raise ValueError(f"events {events}: a nonzero combination of 1 (NEW), 2 (UPDATE), 4 (DESTROY)")
        self.netns = netns
        self.received = 0
        self.errors = 0
        self.last_error: OSError | None = None
        self._sock = _open(netns, events)
        self._sock.setblocking(False)
        self._init_rcvbuf(rcvbuf, rcvbuf_max)
        if reliable:
            self._sock.setsockopt(SOL_NETLINK, NETLINK_BROADCAST_ERROR, 1)
            self._sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        self._init_ring(backlog_size, MAX_DATAGRAM)
        self._rec: list = [None] * NFIELDS

    def attach_filter(self, prog: list[tuple[int, int, int, int]]) -> None:
        """Install a BPF program from :func:`compile_filter`: events it rejects are dropped in
        the kernel and never reach this socket (nor count as received)."""
        insns = ctypes.create_string_buffer(b"".join(_SOCK_FILTER.pack(*insn) for insn in prog))
        fprog = _SOCK_FPROG.pack(len(prog), ctypes.addressof(insns))
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        except OSError as exc:
            raise NetlinkError(exc.errno, f"the kernel refused the conntrack event filter: {exc.strerror}") from None

    def drain(self, on_event: Callable[[list], object], limit: int | None = None) -> int:
        """Decode what the kernel and the ring hold (:meth:`NetlinkSocket._drain_ring`):
        ``on_event(rec)`` runs per conntrack message with a reused record, valid only during
        the call; at most ``limit`` messages (None: :attr:`drain_limit`).  Returns the messages
        handled."""
        rec = self._rec

        def decode_then(mv: memoryview, start: int, end: int) -> bool:
            if decode(mv, start, end, rec):
                on_event(rec)
                return True
            return False

        return self.drain_messages(decode_then, limit)

    def drain_messages(self, on_message: Callable[[memoryview, int, int], bool], limit: int | None = None) -> int:
        """As :meth:`drain`, but ``on_message(mv, start, end)`` gets each message undecoded and
        returns whether it was a conntrack entry message (counted in ``received``): for a
        caller that decodes by itself."""
        return self._drain_ring(on_message, self.drain_limit if limit is None else limit)

    def _walk(self, mv: memoryview, start: int, stop: int, on_message: Callable) -> int:
        unpack_hdr = NLMSG_FULL.unpack_from
        count, off = 0, start
        while off + 16 <= stop:
            end = off + unpack_hdr(mv, off)[0]
            if end < off + 16 or end > stop:
                self.errors += 1
                break
            count += 1
            if on_message(mv, off, end):
                self.received += 1
            off = (end + 3) & ~3
        return count

    def events(self, timeout: float | None = None) -> Iterator[tuple]:
        """Yield owned records as they arrive; stop after ``timeout`` s without one (None: never)."""
        pending: list[tuple] = []
        while True:
            self.drain(lambda rec: pending.append(owned(rec)))
            if pending:
                yield from pending
                pending.clear()
                continue
            if not select.select([self._sock], [], [], timeout)[0]:
                return

    def statistics(self) -> dict[str, int]:
        return {"received": self.received, "enobufs": self.enobufs, "errors": self.errors, "rcvbuf": self.rcvbuf}
