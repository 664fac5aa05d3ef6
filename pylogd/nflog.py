"""NFLOG over netlink: a small reader for netfilter's packet log, without C libraries.

Python has no maintained NFLOG library, so this module speaks nfnetlink_log directly:
it opens an ``AF_NETLINK``/``NETLINK_NETFILTER`` socket, binds an NFLOG group with
``NFULNL_MSG_CONFIG`` requests (each one acknowledged and checked), and decodes the
``NFULNL_MSG_PACKET`` messages the kernel sends.

Library use::

    from pylogd.nflog import FLAG_SEQ, NflogSocket

    with NflogSocket(5, flags=FLAG_SEQ) as log:          # nft: ... log group 5
        for pkt in log.packets(timeout=1.0):
            print(pkt.prefix, pkt.hook, pkt.indev, len(pkt.payload or b""))

In an event loop, register :meth:`NflogSocket.fileno` for reading and call
:meth:`NflogSocket.drain` with a callback; the callback gets a record per packet (a
sequence indexed by the ``F_*`` constants), whose memoryviews point into the receive
buffer and are only valid until the callback returns.  That is the path the pylogd
NFLOG input uses.

Decoding has two paths that give the same records.  The first message of each layout
(same attributes, same lengths, same order: one rule, one kind of packet) is walked
attribute by attribute (:func:`parse_attributes`) and its layout compiled
(:func:`compile_layout`) into a function that reads later messages of that layout with one
struct call, after checking that every attribute header matches.  A socket may be given a
record spec (``record=``): then its records hold, in the spec's order, the fields and values
a consumer wants (an input plugin's keys), built in one step by the compiled layouts.

Decoding never raises on bad input: a truncated message or attribute ends the walk,
attributes too short for their type are skipped, and the fields not found stay None.

Kernel behaviour worth knowing:

* Without ``qthreshold``/``qtimeout`` the kernel batches up to 100 messages and flushes
  a batch after one second at the latest; ``qthreshold=1`` sends each packet at once.
* A group bound by another socket answers BIND with EPERM (EBUSY only when the same
  socket binds twice); :class:`NflogBusyError` covers both and names the other listener.
* ``FLAG_CONNTRACK`` needs ctnetlink in the kernel; without it the flags are refused with
  EOPNOTSUPP (``strict=False`` then keeps the other flags).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import select
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from types import CodeType
from typing import NamedTuple

from .netlink import (
    BACKLOG_SIZE,
    NETLINK_NETFILTER,
    NLA,
    NLA_TYPE_MASK,
    NLERR,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG,
    NLMSG_ERROR,
    NLMSG_FULL,
    NLMSG_OVERRUN,
    NetlinkError,
    NetlinkSocket,
    iter_messages,
    netns_context,
    nla,
    nlmsg_error,
)

__all__ = [
    "COPY_MODES",
    "FIELDS",
    "FLAG_CONNTRACK",
    "FLAG_SEQ",
    "FLAG_SEQ_GLOBAL",
    "PACKET_RECORD",
    "Const",
    "Default",
    "Derived",
    "NflogBusyError",
    "NflogError",
    "NflogSocket",
    "Packet",
    "WithHwHeader",
    "bound_groups",
    "compile_layout",
    "decode_message",
    "find_netlink_owner",
    "iter_messages",
    "netns_context",
    "parse_attributes",
    "project",
]

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = NFNL_SUBSYS_ULOG << 8
NFULNL_MSG_CONFIG = (NFNL_SUBSYS_ULOG << 8) | 1

# config attributes and commands (linux/netfilter/nfnetlink_log.h)
CFG_CMD, CFG_MODE, CFG_NLBUFSIZ, CFG_TIMEOUT, CFG_QTHRESH, CFG_FLAGS = 1, 2, 3, 4, 5, 6
CMD_BIND, CMD_UNBIND, CMD_PF_BIND, CMD_PF_UNBIND = 1, 2, 3, 4

#: copy modes by name, as the ``copy_mode`` argument takes them
COPY_MODES = {"none": 0, "meta": 1, "packet": 2}
FLAG_SEQ = 0x1  # NFULA_SEQ: per-group sequence number (gaps = lost messages)
FLAG_SEQ_GLOBAL = 0x2  # NFULA_SEQ_GLOBAL: sequence shared by all groups of the namespace
FLAG_CONNTRACK = 0x4  # NFULA_CT + NFULA_CT_INFO

#: the families ulogd (un)binds nfnetlink_log for: IPv4, IPv6, bridge
PF_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_BRIDGE)

NLBUFSIZ_MAX = 131072  # the kernel refuses larger NFULA_CFG_NLBUFSIZ values

#: Field order of a decoded packet record (and of :class:`Packet`).
FIELDS = (
    "family",  # nfgenmsg.nfgen_family: 2 IPv4, 10 IPv6, 7 bridge, 3 ARP, 5 netdev
    "group",  # nfgenmsg.res_id: the NFLOG group
    "hook",  # NFULA_PACKET_HDR.hook: 0 prerouting .. 4 postrouting
    "hw_protocol",  # NFULA_PACKET_HDR.hw_protocol, host order (the ethertype)
    "mark",  # NFULA_MARK
    "timestamp",  # NFULA_TIMESTAMP as (sec, usec)
    "indev",  # NFULA_IFINDEX_INDEV
    "outdev",  # NFULA_IFINDEX_OUTDEV
    "physindev",  # NFULA_IFINDEX_PHYSINDEV
    "physoutdev",  # NFULA_IFINDEX_PHYSOUTDEV
    "hwaddr",  # NFULA_HWADDR.hw_addr, hwaddrlen bytes
    "hwaddrlen",  # NFULA_HWADDR.hw_addrlen
    "payload",  # NFULA_PAYLOAD: the layer-3 packet (or its first copy_range bytes)
    "prefix",  # NFULA_PREFIX as str (up to the first NUL)
    "uid",  # NFULA_UID
    "gid",  # NFULA_GID
    "seq",  # NFULA_SEQ
    "seq_global",  # NFULA_SEQ_GLOBAL
    "hwtype",  # NFULA_HWTYPE (ARPHRD_*: 1 ethernet, 772 loopback)
    "hwheader",  # NFULA_HWHEADER: the link-layer header
    "hwlen",  # NFULA_HWLEN
    "vlan_proto",  # NFULA_VLAN / NFULA_VLAN_PROTO, host order
    "vlan_tci",  # NFULA_VLAN / NFULA_VLAN_TCI, host order
    "l2hdr",  # NFULA_L2HDR: the full layer-2 header (bridge family)
    "ct",  # NFULA_CT: the nested ctnetlink attributes, undecoded
    "ct_info",  # NFULA_CT_INFO: enum ip_conntrack_info
    "msg",  # the whole netlink message
)
(
    F_FAMILY,
    F_GROUP,
    F_HOOK,
    F_HW_PROTOCOL,
    F_MARK,
    F_TIMESTAMP,
    F_INDEV,
    F_OUTDEV,
    F_PHYSINDEV,
    F_PHYSOUTDEV,
    F_HWADDR,
    F_HWADDRLEN,
    F_PAYLOAD,
    F_PREFIX,
    F_UID,
    F_GID,
    F_SEQ,
    F_SEQ_GLOBAL,
    F_HWTYPE,
    F_HWHEADER,
    F_HWLEN,
    F_VLAN_PROTO,
    F_VLAN_TCI,
    F_L2HDR,
    F_CT,
    F_CT_INFO,
    F_MSG,
) = range(len(FIELDS))
NFIELDS = len(FIELDS)


class Packet(NamedTuple):
    """One logged packet, as :meth:`NflogSocket.packets` yields it; absent attributes are None."""

    family: int | None
    group: int | None
    hook: int | None
    hw_protocol: int | None
    mark: int | None
    timestamp: tuple[int, int] | None
    indev: int | None
    outdev: int | None
    physindev: int | None
    physoutdev: int | None
    hwaddr: bytes | None
    hwaddrlen: int | None
    payload: bytes | None
    prefix: str | None
    uid: int | None
    gid: int | None
    seq: int | None
    seq_global: int | None
    hwtype: int | None
    hwheader: bytes | None
    hwlen: int | None
    vlan_proto: int | None
    vlan_tci: int | None
    l2hdr: bytes | None
    ct: bytes | None
    ct_info: int | None
    msg: bytes | None


#: opening or configuring an NFLOG socket failed (the generic netlink error; kept under its old name)
NflogError = NetlinkError


class NflogBusyError(NflogError):
    """The group is already bound by another socket in that network namespace."""


# ---------------------------------------------------------------------------------------------
# decoding

_NFGEN = struct.Struct(">BxH")  # nfgenmsg: family, version (skipped), res_id
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_PKT_HDR = struct.Struct(">HB")  # hw_protocol, hook
_TIMESTAMP = struct.Struct(">QQ")

# Per attribute type: how to decode it (kind), into which field, and its minimum nla_len.
_K_SKIP, _K_U32, _K_U16, _K_RAW, _K_HDR, _K_PREFIX, _K_TS, _K_HWADDR, _K_VLAN = range(9)
_ATTRS = {
    1: (_K_HDR, F_HOOK, 4 + 3),
    2: (_K_U32, F_MARK, 8),
    3: (_K_TS, F_TIMESTAMP, 4 + 16),
    4: (_K_U32, F_INDEV, 8),
    5: (_K_U32, F_OUTDEV, 8),
    6: (_K_U32, F_PHYSINDEV, 8),
    7: (_K_U32, F_PHYSOUTDEV, 8),
    8: (_K_HWADDR, F_HWADDR, 4 + 4),
    9: (_K_RAW, F_PAYLOAD, 4),
    10: (_K_PREFIX, F_PREFIX, 4),
    11: (_K_U32, F_UID, 8),
    12: (_K_U32, F_SEQ, 8),
    13: (_K_U32, F_SEQ_GLOBAL, 8),
    14: (_K_U32, F_GID, 8),
    15: (_K_U16, F_HWTYPE, 6),
    16: (_K_RAW, F_HWHEADER, 4),
    17: (_K_U16, F_HWLEN, 6),
    18: (_K_RAW, F_CT, 4),
    19: (_K_U32, F_CT_INFO, 8),
    20: (_K_VLAN, F_VLAN_PROTO, 4),
    21: (_K_RAW, F_L2HDR, 4),
}
_NTYPES = 22
_KIND = tuple(_ATTRS.get(t, (_K_SKIP, 0, 0))[0] for t in range(_NTYPES))
_FIELD = tuple(_ATTRS.get(t, (_K_SKIP, 0, 0))[1] for t in range(_NTYPES))
_MINLEN = tuple(_ATTRS.get(t, (_K_SKIP, 0, 0))[2] for t in range(_NTYPES))


def parse_attributes(mv: memoryview, off: int, end: int, rec: list) -> None:
    """Decode the NFULA_* attributes found in ``mv[off:end]`` into ``rec`` (indexed by ``F_*``).

    ``rec`` must hold ``NFIELDS`` items; fields whose attribute is absent are left alone,
    so the caller resets it between packets.  Byte fields are memoryviews into ``mv``.
    """
    unpack_nla, be32, be16 = NLA.unpack_from, _BE32.unpack_from, _BE16.unpack_from
    kinds, fields, minlen = _KIND, _FIELD, _MINLEN
    while off + 4 <= end:
        alen, atype = unpack_nla(mv, off)
        nxt = off + alen
        if alen < 4 or nxt > end:
            return  # truncated: keep what was decoded so far
        atype &= NLA_TYPE_MASK
        if atype < _NTYPES and alen >= minlen[atype]:
            kind = kinds[atype]
            p = off + 4
            if kind == _K_U32:
                rec[fields[atype]] = be32(mv, p)[0]
            elif kind == _K_RAW:
                rec[fields[atype]] = mv[p:nxt]
            elif kind == _K_HDR:
                proto, hook = _PKT_HDR.unpack_from(mv, p)
                rec[F_HW_PROTOCOL] = proto
                rec[F_HOOK] = hook
            elif kind == _K_PREFIX:
                rec[F_PREFIX] = str(mv[p:nxt], "utf-8", "surrogateescape").partition("\0")[0]
            elif kind == _K_U16:
                rec[fields[atype]] = be16(mv, p)[0]
            elif kind == _K_TS:
                rec[F_TIMESTAMP] = _TIMESTAMP.unpack_from(mv, p)
            elif kind == _K_HWADDR:
                addrlen = be16(mv, p)[0]
                rec[F_HWADDRLEN] = addrlen
                rec[F_HWADDR] = mv[p + 4 : min(p + 4 + addrlen, p + 12, nxt)]
            elif kind == _K_VLAN:
                _parse_vlan(mv, p, nxt, rec)
        off = (nxt + 3) & ~3


def _parse_vlan(mv: memoryview, off: int, end: int, rec: list) -> None:
    while off + 4 <= end:
        alen, atype = NLA.unpack_from(mv, off)
        if alen < 4 or off + alen > end:
            return
        atype &= NLA_TYPE_MASK
        if alen >= 6 and atype in (1, 2):  # NFULA_VLAN_PROTO, NFULA_VLAN_TCI
            rec[F_VLAN_PROTO if atype == 1 else F_VLAN_TCI] = _BE16.unpack_from(mv, off + 4)[0]
        off = (off + alen + 3) & ~3


# ---------------------------------------------------------------------------------------------
# record specs: what each position of a decoded record holds


class Const(NamedTuple):
    """A record position that always holds ``value``."""

    value: object


class Default(NamedTuple):
    """The ``F_*`` field ``field``, or ``value`` when the message lacks its attribute."""

    field: int
    value: object


class WithHwHeader(NamedTuple):
    """The ``F_*`` field ``field``, but None when the message has no (or an empty) NFULA_HWHEADER."""

    field: int


class Derived(enum.Enum):
    """Record positions computed from the message."""

    PAYLOAD_LEN = "payload_len"  # len(payload), None without a payload
    TIME_SEC = "time_sec"  # the kernel's timestamp when it has one (nonzero), else the receive time
    TIME_USEC = "time_usec"
    VLAN_ID = "vlan_id"  # vlan_tci & 0x0FFF


#: A record spec is a sequence whose items are ``F_*`` field numbers (the field as decoded,
#: None when absent), :class:`Const`, :class:`Default`, :class:`WithHwHeader` or
#: :class:`Derived` members.  This one is the plain decoded packet, :class:`Packet`'s order.
PACKET_RECORD: tuple = tuple(range(NFIELDS))
_BLANK_RECORD = (None,) * NFIELDS


def project(rec: Sequence, spec: Sequence, clock: tuple[int, int]) -> tuple:
    """The record ``spec`` describes, made from a decoded record (indexed by ``F_*``);
    ``clock`` is (seconds, microseconds) for packets without a kernel timestamp."""
    out = []
    for item in spec:
        if type(item) is int:
            out.append(rec[item])
        elif type(item) is Const:
            out.append(item.value)
        elif type(item) is Default:
            value = rec[item.field]
            out.append(item.value if value is None else value)
        elif type(item) is WithHwHeader:
            out.append(rec[item.field] if rec[F_HWHEADER] else None)
        elif item is Derived.PAYLOAD_LEN:
            payload = rec[F_PAYLOAD]
            out.append(None if payload is None else len(payload))
        elif item is Derived.TIME_SEC or item is Derived.TIME_USEC:
            ts = rec[F_TIMESTAMP]
            if ts is None or not ts[0]:
                ts = clock
            out.append(ts[0] if item is Derived.TIME_SEC else ts[1])
        elif item is Derived.VLAN_ID:
            tci = rec[F_VLAN_TCI]
            out.append(None if tci is None else tci & 0x0FFF)
        else:
            raise ValueError(f"not a record spec item: {item!r}")
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# the fast path: compiled message layouts
#
# Messages logged by one rule for one kind of packet have the same attributes with the same
# lengths in the same order; only the values and the payload (always last) change.  For each
# such layout one Struct reads every attribute header (and the prefix) and another every
# fixed-size value; a message takes the fast path only if its headers equal the layout's
# (checked in one tuple comparison), so it decodes exactly as parse_attributes() would.
# Anything else -- a new layout, damage, a nested attribute out of the ordinary -- takes the walk.
#
# A layout becomes a small generated function that builds the record of a record spec in one
# tuple display: every field's place in the message is known when the layout is compiled, so
# per packet there is no lookup, no branch on absent attributes and no second copy.  Only
# numbers go into the generated source; values (the prefix, constants) are bound as names.

_LITTLE = sys.byteorder == "little"
_LAYOUT_KEY = 12  # bytes after nfgenmsg that select the candidate layouts: packet header + next header
_LAYOUTS_PER_KEY = 8  # trying one that does not fit costs ~0.3 us, learning one 0.1-0.3 ms
_LAYOUTS_MAX = 256
# a layout costs ~0.1 ms to learn, ~0.3 ms when its code is new: when layouts churn (more of
# them than the cache holds), at most this many a second are learnt and the others are walked
_COMPILES_PER_SECOND = 50

_CODE: dict[str, CodeType] = {}  # generated source -> its code: compile() is most of a layout's cost

#: a compiled layout: decode(mv, off, mlen, clock) -> the record, or None if the message does not fit
Layout = Callable[[memoryview, int, int, tuple[int, int]], "tuple | None"]


def _fields_read(spec: Sequence) -> set[int]:
    """The F_* fields the records of ``spec`` are made from."""
    wanted = set()
    for item in spec:
        if type(item) is int:
            wanted.add(item)
        elif type(item) in (Default, WithHwHeader):
            wanted.add(item.field)
        elif item is Derived.TIME_SEC or item is Derived.TIME_USEC:
            wanted.add(F_TIMESTAMP)
        elif item is Derived.VLAN_ID:
            wanted.add(F_VLAN_TCI)
    return wanted


class _Formats:
    """Two struct formats over the same bytes of a message: the bytes a layout fixes (attribute
    headers in host order, the prefix; compared as one tuple) and the values (big-endian)."""

    def __init__(self) -> None:
        self.fixed = ["="]
        self.values = [">"]
        self.nvalues = 0

    def add(self, size: int, fixed: str | None = None, value: str | None = None, count: int = 1) -> int:
        """``size`` bytes, read by the fixed format as ``fixed`` and by the value format as
        ``value`` (each skips them when None); returns the index of the first value."""
        self.fixed.append(fixed or f"{size}x")
        self.values.append(value or f"{size}x")
        first = self.nvalues
        if value:
            self.nvalues += count
        return first


def _no_layout(mv: memoryview, off: int, mlen: int, clock: tuple[int, int]) -> None:
    """The layout a socket tries before it has learnt one: it fits no message."""
    return None


def compile_layout(mv: memoryview, start: int, end: int, spec: Sequence = PACKET_RECORD) -> Layout | None:
    """A decoder for messages of the layout of the NFULNL_MSG_PACKET message at ``mv[start:end]``,
    giving records of ``spec``; None if the message has no layout the fast path can take
    (damaged, payload not last, unusual nesting)."""
    wanted = _fields_read(spec)
    fm = _Formats()
    fm.add(16)  # nlmsghdr: its length and type were read by the walk
    field = {F_FAMILY: f"v[{fm.add(1, value='B')}]"}  # F_* -> its expression in the generated code
    fm.add(1)  # nfgenmsg version
    field[F_GROUP] = f"v[{fm.add(2, value='H')}]"
    names: dict[str, object] = {}
    ts = pay = pay_len = hwheader_len = None
    rel = 20
    while rel + 4 <= end - start:
        alen, atype = NLA.unpack_from(mv, start + rel)
        nxt = rel + alen
        if alen < 4 or start + nxt > end:
            return None
        padded = (nxt + 3) & ~3
        t = atype & NLA_TYPE_MASK
        p = rel + 4
        if t == 9 and alen >= _MINLEN[9]:
            if padded + 4 <= end - start:
                return None  # attributes after the payload: leave it to the walk
            pay_len = fm.add(2, value="H")  # the length is the payload's own; the type is fixed
            fm.add(2, fixed="H")
            pay = p
            break
        fm.add(4, fixed="HH")  # length and type: small numbers in host order, only compared
        kind = _KIND[t] if t < _NTYPES and alen >= _MINLEN[t] else _K_SKIP
        f = _FIELD[t] if kind != _K_SKIP else -1
        if kind == _K_RAW and f == F_HWHEADER:
            hwheader_len = alen - 4  # WithHwHeader items depend on it
        if kind in (_K_U32, _K_U16, _K_TS, _K_RAW) and f not in wanted:
            kind = _K_SKIP  # nobody reads it: no value is made
        used = 0
        if kind == _K_U32:
            field[f], used = f"v[{fm.add(4, value='I')}]", 4
        elif kind == _K_U16:
            field[f], used = f"v[{fm.add(2, value='H')}]", 2
        elif kind == _K_HDR:
            i = fm.add(3, value="HB", count=2)
            field[F_HW_PROTOCOL], field[F_HOOK], used = f"v[{i}]", f"v[{i + 1}]", 3
        elif kind == _K_TS:
            ts, used = fm.add(16, value="QQ", count=2), 16
            field[F_TIMESTAMP] = f"(v[{ts}], v[{ts + 1}])"
        elif kind == _K_HWADDR:
            addrlen = _BE16.unpack_from(mv, start + p)[0]
            # the address's length is fixed: the slice depends on it
            i = fm.add(2, fixed="H", value="H" if F_HWADDRLEN in wanted else None)
            field[F_HWADDRLEN], used = f"v[{i}]" if F_HWADDRLEN in wanted else "None", 2
            size = max(0, min(addrlen, 8, alen - 8))
            if F_HWADDR in wanted:
                fm.add(2)
                field[F_HWADDR], used = f"v[{fm.add(size, value=f'{size}s')}]", 4 + size
        elif kind == _K_PREFIX:
            fm.add(alen - 4, fixed=f"{alen - 4}s")  # the text is part of the layout, decoded once
            used = alen - 4
            names["prefix"] = str(mv[start + p : start + nxt], "utf-8", "surrogateescape").partition("\0")[0]
            field[F_PREFIX] = "prefix"
        elif kind == _K_RAW:  # its length is the layout's: bytes from the same unpack
            field[f], used = f"v[{fm.add(alen - 4, value=f'{alen - 4}s')}]", alen - 4
        elif kind == _K_VLAN:
            inner = p
            while inner + 4 <= nxt:
                ilen, itype = NLA.unpack_from(mv, start + inner)
                if ilen < 4 or inner + ilen > nxt:
                    return None
                fm.add(4, fixed="HH")
                iused = 0
                if ilen >= 6 and itype & NLA_TYPE_MASK in (1, 2):
                    vlan_field = F_VLAN_PROTO if itype & NLA_TYPE_MASK == 1 else F_VLAN_TCI
                    field[vlan_field], iused = f"v[{fm.add(2, value='H')}]", 2
                ipadded = (inner + ilen + 3) & ~3
                fm.add(min(ipadded, nxt) - inner - 4 - iused)
                inner = ipadded
            used = min(inner, nxt) - p
        fm.add(min(padded, end - start) - p - used)
        rel = padded
    else:
        if rel < end - start:  # a few trailing bytes: rare enough to leave to the walk
            return None
    fixed, values = struct.Struct("".join(fm.fixed)), struct.Struct("".join(fm.values))
    if not fixed.size == values.size <= end - start:
        return None
    names.update(fixed=fixed.unpack_from, expected=fixed.unpack_from(mv, start), unpack=values.unpack_from)
    field[F_MSG] = "mv[off:end]"
    code = [
        "def decode(mv, off, mlen, clock):",
        f"    if mlen < {values.size} or fixed(mv, off) != expected:",
        "        return None",
        "    v = unpack(mv, off)",
        "    end = off + mlen",
    ]
    if pay is not None:
        field[F_PAYLOAD] = "mv[a:b]"
        swap = "    n = ((n & 0xFF) << 8) | (n >> 8)" if _LITTLE else ""  # nla_len is in host order
        code += [f"    n = v[{pay_len}]", swap, f"    a = off + {pay}", "    b = a + n - 4"]
        code += ["    if n < 4 or b > end or ((b + 3) & ~3) + 4 <= end:", "        return None"]
    else:
        code += [f"    if ((off + {values.size} + 3) & ~3) + 4 <= end:", "        return None"]

    def expression(item: object) -> str:
        if type(item) is int:
            return field.get(item, "None")
        if type(item) is Const:
            if item.value is None:
                return "None"
            name = f"c{len(names)}"
            names[name] = item.value
            return name
        if type(item) is Default:
            return field.get(item.field) or expression(Const(item.value))
        if type(item) is WithHwHeader:
            return field.get(item.field, "None") if hwheader_len else "None"
        if item is Derived.PAYLOAD_LEN:
            return "(b - a)" if pay is not None else "None"
        if item is Derived.TIME_SEC:
            return f"(v[{ts}] if v[{ts}] else clock[0])" if ts is not None else "clock[0]"
        if item is Derived.TIME_USEC:
            return f"(v[{ts + 1}] if v[{ts}] else clock[1])" if ts is not None else "clock[1]"
        if item is Derived.VLAN_ID:
            return f"({field[F_VLAN_TCI]} & 0x0FFF)" if F_VLAN_TCI in field else "None"
        raise ValueError(f"not a record spec item: {item!r}")

    code.append(f"    return ({', '.join(map(expression, spec))},)")
    source = "\n".join(line for line in code if line)
    compiled = _CODE.get(source)
    if compiled is None:  # layouts that differ only in their fixed bytes (a prefix) share their code
        if len(_CODE) >= _LAYOUTS_MAX:
            _CODE.clear()
        compiled = _CODE[source] = compile(source, "<nflog layout>", "exec")
    exec(compiled, names)  # only numbers were formatted into the source; values are bound as names
    decode = names["decode"]
    decode.source = source  # for debugging: what a layout does
    return decode


def decode_message(mv: memoryview, start: int, end: int) -> list:
    """Decode one NFULNL_MSG_PACKET message at ``mv[start:end]`` into a fresh record."""
    rec: list = [None] * NFIELDS
    if end - start >= 20:
        rec[F_FAMILY], rec[F_GROUP] = _NFGEN.unpack_from(mv, start + 16)
        parse_attributes(mv, start + 20, end, rec)
    rec[F_MSG] = mv[start:end]
    return rec


def _owned(rec: Sequence) -> Packet:
    """A Packet whose byte fields are copies, safe to keep after the receive buffer is reused."""
    return Packet._make(bytes(v) if type(v) is memoryview else v for v in rec)


# ---------------------------------------------------------------------------------------------
# network namespaces

# the calling thread's namespace: /proc/net would show the main thread's
_NFLOG_PROC = "/proc/thread-self/net/netfilter/nfnetlink_log"


def bound_groups(netns: str | None = None) -> dict[int, int]:
    """The NFLOG groups bound in a namespace: group -> netlink port id of the listener."""
    groups = {}
    with netns_context(netns), contextlib.suppress(OSError), open(_NFLOG_PROC) as f:
        for line in f:
            cols = line.split()
            if len(cols) >= 2 and cols[0].isdigit() and cols[1].isdigit():
                groups[int(cols[0])] = int(cols[1])
    return groups


def find_netlink_owner(portid: int, netns: str | None = None) -> str | None:
    """Best effort: 'pid N (comm)' of the process holding the NETLINK_NETFILTER socket with this port id."""
    inode = None
    with netns_context(netns), contextlib.suppress(OSError), open("/proc/thread-self/net/netlink") as f:
        next(f, None)
        for line in f:
            cols = line.split()
            if len(cols) >= 10 and cols[1] == str(NETLINK_NETFILTER) and cols[2] == str(portid & 0xFFFFFFFF):
                inode = cols[-1]
                break
    if inode is None:
        return None
    wanted = f"socket:[{inode}]"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") != wanted:
                    continue
                with open(f"/proc/{pid}/comm") as c:
                    return f"pid {pid} ({c.read().strip()})"
            except OSError:  # fds come and go while we look
                continue
    return None


# ---------------------------------------------------------------------------------------------
# the socket


class NflogSocket(NetlinkSocket):
    """A netlink socket bound to one NFLOG group.

    Arguments:
        group: the NFLOG group (nft ``log group N``, iptables ``-j NFLOG --nflog-group N``).
        netns: open the socket in this network namespace (a name under /run/netns or a
            path); the calling thread enters it only while the socket is created.
        copy_mode: ``"none"``, ``"meta"`` (no payload) or ``"packet"``.
        copy_range: bytes of payload to copy in packet mode (the rule's snaplen may lower it).
        qthreshold: messages the kernel batches before sending (0: kernel default, 1).
        qtimeout: how long the kernel holds a batch, in 1/100 s (0: kernel default).
        flags: ``FLAG_SEQ | FLAG_SEQ_GLOBAL | FLAG_CONNTRACK``.
        rcvbuf: socket receive buffer in bytes (0: the system default); SO_RCVBUFFORCE
            is tried first, so root may exceed net.core.rmem_max.
        rcvbuf_max: on ENOBUFS the receive buffer doubles, up to this (0: never grows).
        bufsize: the most bytes of one datagram that are kept (a longer one is cut and
            counted in ``truncated``).
        backlog_size: bytes of the read-ahead ring datagrams are received into
            (:class:`pylogd.netlink.DatagramRing`): a burst leaves the kernel at recv() speed.
        nlbufsiz: the kernel's batch buffer (NFULA_CFG_NLBUFSIZ, 0: kernel default);
            the kernel accepts about 4 KiB to 128 KiB.
        pf_unbind, pf_bind: first unbind, then bind nfnetlink_log as the logger of
            IPv4, IPv6 and bridge (what ulogd does for group 0; a no-op on modern kernels).
        strict: raise when qthreshold, qtimeout, flags or nlbufsiz are refused; when False
            the refusal is kept in :attr:`failures` and the socket works without it.
        record: the record spec of what :meth:`drain` hands out (default
            :data:`PACKET_RECORD`); sequence gaps are counted when it holds ``F_SEQ``.

    Raises :class:`NflogBusyError` when the group already has a listener in the namespace,
    :class:`NflogError` for other failures.
    """

    def __init__(
        self,
        group: int,
        netns: str | None = None,
        copy_mode: str = "packet",
        copy_range: int = 0xFFFF,
        qthreshold: int = 0,
        qtimeout: int = 0,
        flags: int = 0,
        rcvbuf: int = 0,
        *,
        rcvbuf_max: int = 0,
        bufsize: int = 150000,
        nlbufsiz: int = 0,
        pf_unbind: bool = False,
        pf_bind: bool = False,
        strict: bool = True,
        backlog_size: int = BACKLOG_SIZE,
        record: Sequence = PACKET_RECORD,
    ) -> None:
        if not 0 <= group <= 0xFFFF:
            raise ValueError(f"NFLOG group {group} out of range 0..65535")
        if bufsize < 1:
            raise ValueError(f"bufsize {bufsize} must be positive")
        if copy_mode not in COPY_MODES:
            raise ValueError(f"copy_mode {copy_mode!r}: use one of {', '.join(COPY_MODES)}")
        self.group = group
        self.netns = netns
        self.flags = flags
        self.bufsize = bufsize
        #: configuration steps the kernel refused (strict=False): name -> error
        self.failures: dict[str, OSError] = {}
        # counters
        self.received = 0  # NFULNL_MSG_PACKET messages decoded
        self.lost = 0  # messages missing from the NFULA_SEQ sequence
        self.truncated = 0  # datagrams larger than bufsize
        self.errors = 0  # NLMSG_ERROR with an error, other recv errors
        self.last_error: OSError | None = None
        self._expect: int | None = None
        self.slow = 0  # messages decoded by the attribute walk instead of a compiled layout
        self.compiled = 0  # layouts learnt
        self.set_record(record)
        self._compiles = _COMPILES_PER_SECOND
        self._compiles_refill = 0.0  # when the compile budget is next refilled (monotonic time)
        self._raced: deque[bytes] = deque()
        self._seq = int(time.time()) & 0xFFFF
        # packets are received into the first bufsize bytes; acknowledgements may use all of it
        self._buf = bytearray(max(bufsize, 8192))
        self._mv = memoryview(self._buf)
        self._rec: list = [None] * NFIELDS
        self._recv_flags = socket.MSG_DONTWAIT | socket.MSG_TRUNC
        self._init_ring(backlog_size, bufsize)
        self._bound = False

        with netns_context(netns):
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        try:
            self._sock.bind((0, 0))
            self.portid: int = self._sock.getsockname()[0]
            self._sock.setblocking(False)
            self._init_rcvbuf(rcvbuf, rcvbuf_max)
            self._configure(copy_mode, copy_range, qthreshold, qtimeout, flags, nlbufsiz, pf_unbind, pf_bind, strict)
        except BaseException:
            self._sock.close()
            raise

    # -- configuration --------------------------------------------------------------------------

    def _configure(
        self,
        copy_mode: str,
        copy_range: int,
        qthreshold: int,
        qtimeout: int,
        flags: int,
        nlbufsiz: int,
        pf_unbind: bool,
        pf_bind: bool,
        strict: bool,
    ) -> None:
        for cmd, wanted, what in ((CMD_PF_UNBIND, pf_unbind, "unbind"), (CMD_PF_BIND, pf_bind, "bind")):
            if not wanted:
                continue
            for pf in PF_FAMILIES:
                try:
                    self._request(pf, 0, nla(CFG_CMD, bytes((cmd,))))
                except OSError as exc:
                    raise NflogError(
                        exc.errno, f"cannot {what} nfnetlink_log for protocol family {pf}: {os.strerror(exc.errno)}"
                    ) from None
        try:
            self._request(socket.AF_UNSPEC, self.group, nla(CFG_CMD, bytes((CMD_BIND,))))
        except OSError as exc:
            raise self._bind_error(exc.errno) from None
        self._bound = True
        mode = struct.pack(">IBx", copy_range & 0xFFFFFFFF, COPY_MODES[copy_mode])
        try:
            self._request(socket.AF_UNSPEC, self.group, nla(CFG_MODE, mode))
        except OSError as exc:
            raise NflogError(
                exc.errno, f"NFLOG group {self.group}: copy mode {copy_mode} refused: {exc.strerror}"
            ) from None
        steps = (
            ("qthreshold", qthreshold, CFG_QTHRESH, _BE32),
            ("qtimeout", qtimeout, CFG_TIMEOUT, _BE32),
            ("nlbufsiz", nlbufsiz, CFG_NLBUFSIZ, _BE32),
            ("flags", flags, CFG_FLAGS, _BE16),
        )
        for name, value, attr, fmt in steps:
            if not value:
                continue
            try:
                self._set(attr, fmt.pack(value))
            except OSError as exc:
                if strict:
                    raise NflogError(
                        exc.errno, f"NFLOG group {self.group}: {name}={value} refused: {exc.strerror}"
                    ) from None
                self.failures[name] = exc
                if name == "flags":
                    self.flags = 0
                    # the flags are set as a whole: without conntrack support, keep the sequence numbers
                    if value & FLAG_CONNTRACK and value & ~FLAG_CONNTRACK:
                        with contextlib.suppress(OSError):
                            self._set(attr, fmt.pack(value & ~FLAG_CONNTRACK))
                            self.flags = value & ~FLAG_CONNTRACK

    def _set(self, attr: int, payload: bytes) -> None:
        for _attempt in range(3):
            try:
                self._request(socket.AF_UNSPEC, self.group, nla(attr, payload))
                return
            except OSError as exc:
                # EAGAIN: the kernel has just loaded the conntrack glue and wants the request again
                if exc.errno != errno.EAGAIN:
                    raise
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    def _bind_error(self, err: int) -> NflogError:
        owner_port = bound_groups(self.netns).get(self.group)
        where = f"network namespace {self.netns!r}" if self.netns else "this network namespace"
        if err in (errno.EBUSY, errno.EPERM) and owner_port is not None and owner_port != self.portid:
            owner = find_netlink_owner(owner_port, self.netns)
            who = f"netlink port id {owner_port}" + (f", {owner}" if owner else "")
            prefix = f"ip netns exec {self.netns} " if self.netns and "/" not in self.netns else ""
            return NflogBusyError(
                errno.EBUSY,
                f"NFLOG group {self.group} is already bound by another listener in {where} ({who}; "
                f"the kernel answered {errno.errorcode.get(err, err)}). "
                f"Only one socket per group and namespace gets the packets: stop the other listener "
                f"(another pylogd or ulogd, a NFLOG-reading tool) or use another group. "
                f"`{prefix}cat /proc/net/netfilter/nfnetlink_log` lists the bound groups (first column) "
                f"and their port ids (second column); `{prefix}ss -f netlink -p` names the process of a port id.",
            )
        return NflogError(err, f"cannot bind NFLOG group {self.group} in {where}: {os.strerror(err)}")

    def _request(self, family: int, group: int, attrs: bytes, timeout: float = 5.0) -> None:
        """Send one NFULNL_MSG_CONFIG request and wait for its acknowledgement; raise OSError on a NACK."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        body = _NFGEN.pack(family, group) + attrs
        msg = NLMSG_FULL.pack(16 + len(body), NFULNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body
        # struct _NFGEN skips the version byte, which must be NFNETLINK_V0 (0): pack wrote 0 there
        self._sock.sendto(msg, (0, 0))
        deadline = time.monotonic() + timeout
        mv = self._mv
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._sock], [], [], remaining)[0]:
                raise OSError(errno.ETIMEDOUT, "no answer from nfnetlink_log")
            try:
                n = self._sock.recv_into(self._buf, len(self._buf), self._recv_flags)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.enobufs += 1
                    continue
                raise
            n = min(n, len(self._buf))
            answer = None
            has_data = False
            for mtype, _flags, start, end in iter_messages(mv, n):
                if mtype == NLMSG_ERROR and end - start >= 20:
                    if NLMSG_FULL.unpack_from(mv, start)[3] == seq:
                        answer = nlmsg_error(mv, start, end)
                        continue
                elif mtype == NFULNL_MSG_PACKET:
                    has_data = True
            if has_data:  # packets that raced the acknowledgement: keep them for drain()
                self._raced.append(bytes(mv[:n]))
            if answer is not None:
                if answer:
                    raise OSError(answer, os.strerror(answer))
                return

    # -- receiving ------------------------------------------------------------------------------

    def drain(self, on_packet: Callable[[Sequence], object], limit: int | None = None) -> int:
        """Decode what the kernel and the ring hold (:meth:`NetlinkSocket._drain_ring`), first any
        packets that raced a configuration acknowledgement; at most ``limit`` messages (None:
        :attr:`drain_limit`).

        ``on_packet(rec)`` runs per packet with the record of :attr:`record` (a tuple, or with
        the default spec a list indexed by ``F_*`` that is reused); its memoryviews point into
        the receive buffer and are only valid during the call.  Returns the number of messages.
        Never raises for receive errors: ENOBUFS is counted (and grows the buffer when
        ``rcvbuf_max`` allows), other errors are counted in ``errors``/``last_error``.
        """
        if limit is None:
            limit = self.drain_limit
        count = 0
        now = time.monotonic()
        if now >= self._compiles_refill:
            self._compiles, self._compiles_refill = _COMPILES_PER_SECOND, now + 1.0
        while self._raced and count < limit:
            data = self._raced.popleft()
            self.arrived = time.time_ns()
            count += self._walk(memoryview(data), 0, len(data), on_packet)
        return count + self._drain_ring(on_packet, limit - count)

    def _walk(self, mv: memoryview, start: int, stop: int, on_packet: Callable[[Sequence], object]) -> int:
        """Handle the messages of the datagram at ``mv[start:stop]``; returns how many there were."""
        unpack_hdr, packet = NLMSG.unpack_from, NFULNL_MSG_PACKET
        decode, seq_at = self._last, self._seq_at
        clock = divmod(self.arrived // 1000, 1_000_000)
        expect, lost = self._expect, self.lost
        count = packets = 0
        off = start
        while off + 16 <= stop:
            mlen, mtype = unpack_hdr(mv, off)
            end = off + mlen
            if mlen < 16 or end > stop:
                self.truncated += 1
                break
            count += 1
            if mtype == packet and mlen >= 20:
                rec = decode(mv, off, mlen, clock)
                if rec is None:
                    rec, decode = self._decode_other(mv, off, end, clock, decode)
                if seq_at is not None:
                    seq = rec[seq_at]
                    if seq is not None:
                        if expect is not None and seq != expect:
                            gap = (seq - expect) & 0xFFFFFFFF
                            if gap < 0x80000000:  # a backwards jump is a rebind, not a loss
                                lost += gap
                        expect = (seq + 1) & 0xFFFFFFFF
                packets += 1
                on_packet(rec)
            elif mtype == NLMSG_ERROR:
                if mlen >= 20 and NLERR.unpack_from(mv, off + 16)[0] != 0:
                    self.errors += 1
            elif mtype == NLMSG_OVERRUN:
                self.errors += 1
            off = (end + 3) & ~3
        self._last = decode
        self._expect, self.lost = expect, lost
        self.received += packets
        return count

    def _decode_other(self, mv: memoryview, off: int, end: int, clock: tuple[int, int], previous: Layout) -> tuple:
        """Decode a message the ``previous`` message's layout does not fit: with a known layout of
        the same start, else by walking its attributes (and learning its layout).  Returns the
        record and the layout to try first on the next message."""
        key = None
        if end - off >= 20 + _LAYOUT_KEY:
            key = mv[off + 20 : off + 20 + _LAYOUT_KEY].tobytes()
            for layout in self._layouts.get(key, ()):
                if layout is previous:
                    continue
                rec = layout(mv, off, end - off, clock)
                if rec is not None:
                    return rec, layout
        rec = self._rec
        rec[:] = _BLANK_RECORD
        rec[F_FAMILY], rec[F_GROUP] = _NFGEN.unpack_from(mv, off + 16)
        parse_attributes(mv, off + 20, end, rec)
        rec[F_MSG] = mv[off:end]
        self.slow += 1
        layout = None
        if key is not None and self._compiles > 0:
            self._compiles -= 1
            layout = compile_layout(mv, off, end, self.record)
            if layout is not None:
                self.compiled += 1
                if len(self._layouts) >= _LAYOUTS_MAX and key not in self._layouts:
                    self._layouts.clear()  # shapes come and go: start over rather than grow
                candidates = self._layouts.setdefault(key, [])
                candidates.insert(0, layout)
                del candidates[_LAYOUTS_PER_KEY:]
        return (rec if self._identity else project(rec, self.record, clock)), layout or previous

    def set_record(self, record: Sequence) -> None:
        """What :meth:`drain` hands out from now on (a record spec); the layouts learnt are forgotten."""
        self.record = tuple(record)
        project((None,) * NFIELDS, self.record, (0, 0))  # a bad spec fails here, not on a packet
        self._identity = self.record == PACKET_RECORD
        self._seq_at = self.record.index(F_SEQ) if F_SEQ in self.record else None
        self._layouts: dict[bytes, list[Layout]] = {}
        self._last: Layout = _no_layout  # the layout of the previous message: a burst is mostly one

    def packets(self, timeout: float | None = None, copy: bool = True) -> Iterator[Packet]:
        """Yield packets as they arrive; stop after ``timeout`` seconds without one (None: never).

        With ``copy`` (the default) byte fields are bytes you may keep; without it they
        are memoryviews valid only until the next packet is read.  Needs the default record spec.
        """
        if not self._identity:
            raise ValueError("packets() needs a socket with the default record spec (PACKET_RECORD)")
        pending: deque[Packet] = deque()
        if copy:

            def collect(rec: Sequence) -> None:
                pending.append(_owned(rec))
        else:

            def collect(rec: Sequence) -> None:
                pending.append(Packet._make(rec))

        while True:
            if not pending:
                self.drain(collect)
            if not pending:
                if not select.select([self._sock], [], [], timeout)[0]:
                    return
                continue
            while pending:
                yield pending.popleft()

    def statistics(self) -> dict[str, int]:
        return {
            "received": self.received,
            "enobufs": self.enobufs,
            "lost": self.lost,
            "rcvbuf": self.rcvbuf,
            "truncated": self.truncated,
            "errors": self.errors,
        }

    # -- closing --------------------------------------------------------------------------------

    def close(self) -> None:
        """Unbind the group (so another listener may take it at once) and close the socket."""
        if self.closed:
            return
        if self._bound:
            with contextlib.suppress(OSError):
                self._request(socket.AF_UNSPEC, self.group, nla(CFG_CMD, bytes((CMD_UNBIND,))), timeout=1.0)
            self._bound = False
        self._raced.clear()
        self._sock.close()
