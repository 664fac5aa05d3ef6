"""NFCT: connection-tracking events (the flow path), ulogd 2.0.8's NFCT input.

Options, the first 26 keys (order, names, types) and the three modes are ulogd's:

* event mode (``hash_enable=0``): every event of ``event_mask`` (1 NEW, 2 UPDATE, 4 DESTROY)
  is passed on; ``flow.start`` is the kernel's start stamp or the receive time (NEW),
  ``flow.end`` the kernel's stop stamp or the receive time (DESTROY).
* hash mode (``hash_enable=1``, the default): NEW and UPDATE only fill a table of live flows
  (a dict keyed by the flow's original tuple, ``ct.id`` and ``ct.zone``: see :func:`flow_key`);
  a DESTROY is emitted with ``flow.start`` from the table.
  At start the current conntrack table is loaded into it.
* polling mode (``pollinterval=N``, needs the hash): the table is dumped every N seconds;
  flows gone since the last dump are emitted as DESTROY.

The socket and the decoder are :mod:`pylogd.conntrack`.

Kernel note: since Linux 5.19 a conntrack entry gets event support only when some listener exists
when it is created, so flows that began before pylogd (or any other listener) started never
send DESTROY; in hash mode they stay in the table until a resync or a polling dump finds them
gone.  ulogd 2.0.8 has the same blind spot.

Differences from ulogd 2.0.8
----------------------------
* UPDATE events (``event_mask`` bit 2) are emitted in event mode with ``ct.event=2`` (ulogd
  drops them with "unsupported message type").
* Flows emitted as DESTROY by a polling dump or a resync (gone between two dumps) carry
  ``flow.end`` = the time their absence was noticed; ulogd left flow.end unset.  Their
  counters and ``ct`` are those of the last dump that still showed them.
* In hash mode a DESTROY takes ``flow.start`` from the kernel's start stamp when the message
  has one (``nf_conntrack_timestamp=1``), else from the table; ulogd always took the table's,
  which is the time ulogd received the NEW event (NEW events carry no kernel stamp), and gave
  flows missing from the table no start at all.
* SIGUSR2 dumps the table (counters reset, ``ct.event=2``) in every mode and whatever the
  number of stacks sharing the instance; ulogd crashes with two stacks or without the hash.
* After ENOBUFS the table is re-read after ``netlink_resync_timeout`` seconds by one dump
  compared against the cached flows (ulogd asks for each cached flow separately).
* ``accept_src_filter`` / ``accept_dst_filter`` / ``accept_proto_filter`` work in every
  mode, on the original tuple.  Events are filtered in the kernel by a BPF program on the
  event socket (``kernel_filter=1`` in the statistics), so rejected flows cost no CPU here;
  table dumps, and any message the program cannot read, are filtered in userspace by the
  same test.  (ulogd filtered in the kernel in event mode only, and its family-rejecting
  entry was built from uninitialised memory.)  An entry may start with ``!`` to exclude a
  network or protocol; an address without ``/len`` means the single host; protocols may be
  given by number too.  A flow passes when no ``!`` entry matches and, if there are
  positive entries, one of them matches; an entry never matches the other IP version.
* ``hash_max_entries``: when the table is full new flows are not tracked (as in ulogd);
  each refusal is counted (``hash_full`` in the statistics).  ``hash_buckets`` is accepted
  and only informational (a Python dict sizes itself).
* ``netlink_socket_buffer_size`` is applied whenever it is set (see NFLOG); losses (ENOBUFS)
  and resyncs are counted and logged at most every 10 s, not once.
* Events are read ahead of decoding into a userspace ring (new option ``netlink_backlog_size``,
  64 MiB of address space): a table flush or a garbage-collection pass leaves the kernel buffer at recv()
  speed, where ulogd decodes each event before reading the next.  ``backlog_max`` in the
  statistics is the most events that ever waited there.  At exit everything read is written.
* A time the kernel does not give (``flow.start`` of NEW, ``flow.end`` of DESTROY without
  ``nf_conntrack_timestamp=1``) is the time pylogd read the event from the kernel, not the
  time it was decoded, which in a burst can be later.
* New option ``netns`` and new keys after ulogd's: ``ct.zone``, ``ct.status``, ``ct.timeout``,
  ``icmpv6.type``, ``icmpv6.code`` (ulogd gives ICMPv6 flows no type/code), ``oob.netns``,
  ``nat.snat``, ``nat.dnat``.  ``ct`` is the ctnetlink message itself (ulogd: a pointer).
"""

from __future__ import annotations

import ctypes
import ipaddress
import marshal
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from types import CodeType

from pylogd.config import INT_MAX
from pylogd.conntrack import (
    AT_FLAGS,
    AT_TYPE,
    CTA_TUPLE_ORIG,
    EVENT_DESTROY,
    EVENT_NEW,
    EVENT_UPDATE,
    F_EVENT,
    F_FAMILY,
    F_ICMP_CODE,
    F_ICMP_ID,
    F_ICMP_TYPE,
    F_ID,
    F_MARK,
    F_MSG,
    F_ORIG_BYTES,
    F_ORIG_DPORT,
    F_ORIG_DST,
    F_ORIG_PKTS,
    F_ORIG_PROTO,
    F_ORIG_SPORT,
    F_ORIG_SRC,
    F_REPLY_BYTES,
    F_REPLY_DPORT,
    F_REPLY_DST,
    F_REPLY_PKTS,
    F_REPLY_PROTO,
    F_REPLY_SPORT,
    F_REPLY_SRC,
    F_START,
    F_STATUS,
    F_STOP,
    F_TIMEOUT,
    F_ZONE,
    FIELDS,
    IPS_DST_NAT,
    IPS_SRC_NAT,
    PORT_PROTOCOLS,
    READ_CT_DELETE,
    READ_CT_NEW,
    READ_NEW_FLAGS,
    CtSocket,
    NetRule,
    ProtoRule,
    compile_filter,
    decode,
    decode_bytes,
    dump_each,
    learned_layout,
)
from pylogd.keys import KeyType
from pylogd.log import NOTICE
from pylogd.loop import BacklogReader, EventLoop
from pylogd.netlink import DEFAULT_RCVBUF, NLA, NLA_TYPE_MASK, NetlinkError, NetlinkSocket
from pylogd.netlink_input import NetlinkInput, backlog_option, netns_option, rcvbuf_options
from pylogd.plugin import Feed, Kind, PluginError, PluginSpec, int_option, key, str_option

#: the longest timer, in seconds: the loop's epoll timeout is a C int of milliseconds (24.8 days)
MAX_TIMER = 24 * 86400

_OUTPUTS = (
    key("orig.ip.saddr", KeyType.IPADDR, "original-direction source address"),
    key("orig.ip.daddr", KeyType.IPADDR, "original-direction destination address"),
    key("orig.ip.protocol", KeyType.UINT8, "layer-4 protocol"),
    key("orig.l4.sport", KeyType.UINT16, "original source port (TCP, UDP, UDPLITE, SCTP, DCCP)"),
    key("orig.l4.dport", KeyType.UINT16, "original destination port"),
    key("orig.raw.pktlen", KeyType.UINT64, "bytes in the original direction (0 without nf_conntrack_acct)"),
    key("orig.raw.pktcount", KeyType.UINT64, "packets in the original direction (0 without nf_conntrack_acct)"),
    key("reply.ip.saddr", KeyType.IPADDR, "reply-direction source address"),
    key("reply.ip.daddr", KeyType.IPADDR, "reply-direction destination address (the NAT address after SNAT)"),
    key("reply.ip.protocol", KeyType.UINT8, "layer-4 protocol of the reply tuple"),
    key("reply.l4.sport", KeyType.UINT16, "reply source port"),
    key("reply.l4.dport", KeyType.UINT16, "reply destination port (the translated port after SNAT)"),
    key("reply.raw.pktlen", KeyType.UINT64, "bytes in the reply direction"),
    key("reply.raw.pktcount", KeyType.UINT64, "packets in the reply direction"),
    key("icmp.code", KeyType.UINT8, "ICMP code (IPv4 ICMP flows)"),
    key("icmp.type", KeyType.UINT8, "ICMP type (IPv4 ICMP flows)"),
    key("ct.mark", KeyType.UINT32, "conntrack mark (0 when unset)"),
    key("ct.id", KeyType.UINT32, "conntrack id"),
    key("ct.event", KeyType.UINT32, "1 NEW, 2 UPDATE (and SIGUSR2 dumps), 4 DESTROY"),
    key("flow.start.sec", KeyType.UINT32, "flow start, seconds"),
    key("flow.start.usec", KeyType.UINT32, "flow start, microseconds"),
    key("flow.end.sec", KeyType.UINT32, "flow end, seconds (DESTROY)"),
    key("flow.end.usec", KeyType.UINT32, "flow end, microseconds"),
    key("oob.family", KeyType.UINT8, "2 IPv4, 10 IPv6"),
    key("oob.protocol", KeyType.UINT8, "always 0"),
    key("ct", KeyType.RAW, "the ctnetlink message"),
    # pylogd additions
    key("ct.zone", KeyType.UINT16, "conntrack zone (0 when unset)"),
    key("ct.status", KeyType.UINT32, "conntrack status bits (IPS_*)"),
    key("ct.timeout", KeyType.UINT32, "seconds until the entry expires (not in DESTROY)"),
    key("icmpv6.type", KeyType.UINT8, "ICMPv6 type (ICMPv6 flows)"),
    key("icmpv6.code", KeyType.UINT8, "ICMPv6 code (ICMPv6 flows)"),
    key("oob.netns", KeyType.STRING, "the network namespace of the conntrack table (netns option)"),
    key("nat.snat", KeyType.BOOL, "the flow was source-translated (masquerade, snat)"),
    key("nat.dnat", KeyType.BOOL, "the flow was destination-translated (dnat, redirect)"),
)

_KEY_INDEX = {k.name: i for i, k in enumerate(_OUTPUTS)}

#: decoded fields (pylogd.conntrack.FIELDS) that are the first keys, in the same order
_COPIED = 19
assert [(k.name, FIELDS[i]) for i, k in enumerate(_OUTPUTS[:_COPIED])] == list(
    zip(
        ("orig.ip.saddr", "orig.ip.daddr", "orig.ip.protocol", "orig.l4.sport", "orig.l4.dport", "orig.raw.pktlen",
         "orig.raw.pktcount", "reply.ip.saddr", "reply.ip.daddr", "reply.ip.protocol", "reply.l4.sport",
         "reply.l4.dport", "reply.raw.pktlen", "reply.raw.pktcount", "icmp.code", "icmp.type", "ct.mark", "ct.id",
         "ct.event"),
        ("orig_src", "orig_dst", "orig_proto", "orig_sport", "orig_dport", "orig_bytes", "orig_pkts", "reply_src",
         "reply_dst", "reply_proto", "reply_sport", "reply_dport", "reply_bytes", "reply_pkts", "icmp_code",
         "icmp_type", "mark", "id", "event"),
        strict=True,
    )
), "pylogd.conntrack.FIELDS must begin with the fields of NFCT's first keys, in key order"  # fmt: skip


def _entries(text: str) -> Iterator[tuple[bool, str]]:
    """The entries of a comma list, each as (negated by a leading ``!``, the rest)."""
    for item in text.split(","):
        item = item.strip()
        if item.startswith("!"):
            yield True, item[1:].strip()
        elif item:
            yield False, item


def parse_net_filter(text: str) -> list[NetRule]:
    """``accept_src_filter`` syntax: comma list of ``[!]addr[/len]``; raises ValueError."""
    nets: list[NetRule] = []
    for neg, item in _entries(text):
        net = ipaddress.ip_network(item, strict=False)
        nets.append((neg, net.version, int(net.network_address), int(net.netmask)))
    return nets


def parse_proto_filter(text: str) -> list[ProtoRule]:
    """``accept_proto_filter`` syntax: comma list of ``[!]name`` or number; raises ValueError."""
    out: list[ProtoRule] = []
    for neg, item in _entries(text):
        if item.isdigit():
            num = int(item)
            if num > 255:
                raise ValueError(f"protocol number {num} out of range")
        else:
            try:
                num = socket.getprotobyname(item)
            except OSError:
                raise ValueError(f"Unknown protocol {item}") from None
        out.append((neg, num))
    return out


def _net_match(nets: list[NetRule], addr: bytes | None) -> bool:
    if addr is None:
        return False
    version = 4 if len(addr) == 4 else 6
    value = int.from_bytes(addr, "big")
    positive = matched = False
    for neg, ver, net, mask in nets:
        hit = ver == version and value & mask == net
        if neg:
            if hit:
                return False
        else:
            positive = True
            matched = matched or hit
    return matched or not positive


def _proto_match(protos: list[ProtoRule], proto: int | None) -> bool:
    positive = matched = False
    for neg, num in protos:
        if neg:
            if num == proto:
                return False
        else:
            positive = True
            matched = matched or num == proto
    return matched or not positive


def make_filter(s: list[NetRule], d: list[NetRule], p: list[ProtoRule]) -> Callable[[tuple | list], bool] | None:
    """The accept test for a decoded record (what :func:`compile_filter` does in the kernel),
    or None when nothing is filtered."""
    if not (s or d or p):
        return None

    def accept(rec: tuple | list) -> bool:
        return (
            (not s or _net_match(s, rec[F_ORIG_SRC]))
            and (not d or _net_match(d, rec[F_ORIG_DST]))
            and (not p or _proto_match(p, rec[F_ORIG_PROTO]))
        )

    return accept


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None on another C library."""
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the kernel after a table dump.

    Why: a dump's transient blocks (the dict being rebuilt, the decoder's temporaries) are freed
    in the middle of glibc's heap, which only gives back memory at its top by itself.
    """
    if _TRIM is not None:
        _TRIM(0)


#: A table entry is one bytes object: the flow's start (ns, native order) then its last message (decoded
#: again only if a resync finds the flow gone).  One object rather than a [message, start] list: 75-100
#: B less a flow, and an entry a resync makes shares nothing with the one it replaces, so the
#: interpreter's pools that held a table of lost flows empty and go back to the kernel (a start int
#: shared by old and new entries kept one alive in every pool it sat in).
_START = struct.Struct("=Q")
_START_SIZE = _START.size
_pack_start = _START.pack


def entry_start(entry: bytes) -> int:
    """When the flow of a table entry started (ns since the epoch)."""
    return _START.unpack_from(entry)[0]


def entry_message(entry: bytes) -> bytes:
    """The last message the kernel sent for the flow of a table entry."""
    return entry[_START_SIZE:]


#: where the first attribute of a ctnetlink message starts (after nlmsghdr and nfgenmsg): the
#: kernel puts CTA_TUPLE_ORIG there in events and dumps alike
_FIRST_ATTR = 20
_ID_AND_ZONE = struct.Struct(">IH")
_read_attr_header = NLA.unpack_from


def _compact(table: dict[object, bytes]) -> dict[object, bytes]:
    """The same flows as new objects, laid out together; ``table`` is emptied.

    Why: a table's keys and entries are small objects the interpreter carves from pools it only
    returns to the kernel once every object in them is gone.  After a dump the flows that were
    refreshed sit scattered among the holes of the flows that ended (or of their own older
    entries: a dump's message is longer than a NEW event's, one size class up), which kept the
    pools of a table that once held 100,000 more flows resident for good.  Moved through one
    flat copy (marshal: C speed, keys and entries are bytes), every old pool empties first.
    """
    flat = marshal.dumps(table)
    table.clear()
    return marshal.loads(flat)


def flow_key(rec: tuple | list) -> bytes | tuple:
    """The table key of a flow: its CTA_TUPLE_ORIG attribute as the kernel wrote it, then ct.id
    and ct.zone (0 when absent), as one bytes object.

    Why not ct.id alone: the kernel's id is 32 bits of a keyed hash (of the entry's address and
    tuple), not a unique number, so among 100,000 live flows two share one about once, and one
    would replace the other here (its start lost or given to the other).  Two live entries of
    one zone never share an original tuple (the kernel refuses the second), which is how ulogd
    2.0.8 tells flows apart (it compares tuples, never the id).  The id stays in the key so that
    a new flow on the tuple of an old one whose DESTROY was lost (or is still to come, with
    ``reliable=1``) gets its own entry.  The attribute is cut from the message without decoding:
    the same bytes in NEW, UPDATE, DESTROY and dumps, directional zones (CTA_TUPLE_ZONE) and the
    ICMP id included.  A message whose first attribute is not the original tuple (no kernel
    sends one) is keyed by its decoded fields instead.
    """
    msg = rec[F_MSG]  # a memoryview (the decoder's)
    try:
        size, atype = _read_attr_header(msg, _FIRST_ATTR)
    except struct.error:  # a message without attributes
        atype = 0
    if atype & NLA_TYPE_MASK == CTA_TUPLE_ORIG:
        return msg[_FIRST_ATTR : _FIRST_ATTR + size].tobytes() + _ID_AND_ZONE.pack(rec[F_ID] or 0, rec[F_ZONE] or 0)
    return (
        rec[F_ID], rec[F_FAMILY], rec[F_ORIG_SRC], rec[F_ORIG_DST], rec[F_ORIG_PROTO], rec[F_ORIG_SPORT],
        rec[F_ORIG_DPORT], rec[F_ICMP_TYPE], rec[F_ICMP_CODE], rec[F_ICMP_ID], rec[F_ZONE],
    )  # fmt: skip


# -- event mode, specialised per message shape ----------------------------------------------------
#
# In event mode without userspace filters nearly every message has one of a few shapes (a UDP or TCP
# flow of one family, with or without counters and stamps).  For each shape the decoder learns
# (pylogd.conntrack.learned_layout) a small generated function reads the values with one unpack and
# writes the keys as emit_flow would from the decoded record: no record, no copy, and the branches on
# attributes the shape does not have are settled when the function is made.  Only numbers go into
# the source; what it uses is bound as closure variables (a compiled caller's exec leaves global
# names unspecialised: a dictionary lookup each).  tests/test_nfct_fused.py holds it to emit_flow.

_FUSED_PER_LENGTH, _FUSED_LENGTHS, _FUSED_CODES = 4, 512, 512
_FUSED_CODE: dict[str, CodeType] = {}  # generated source -> its code, shared by shapes of other lengths
#: what a shape's function uses, bound once per shape
_FUSED_NAMES = ("values", "emit", "sock", "ports", "netns", "unpack", "divmod", "int")
#: fields emit_flow makes 0 when the kernel leaves them out (counters, the mark, the zone)
_ZERO_WHEN_ABSENT = (F_ORIG_BYTES, F_ORIG_PKTS, F_REPLY_BYTES, F_REPLY_PKTS, F_MARK, F_ZONE)


def _fused_source(fields: dict[int, int], nvals: int, unread: frozenset[int] = frozenset()) -> str:
    """The source of ``emit_shape(mv, start, end) -> bool`` for messages whose decoded fields are
    ``fields`` (F_* -> place in the layout's unpacked values); False: not an entry message.  The
    keys at the slots ``unread`` (no plugin reads them: Feed.used) are left unset."""
    k = _KEY_INDEX

    def name(field: int) -> str:
        if field in fields:
            return f"f{field}"
        return "0" if field in _ZERO_WHEN_ABSENT else "None"

    def put(indent: int, keys: tuple[str | int, ...], value: str) -> list[str]:
        """``values[key] = ... = value`` for the keys some plugin reads."""
        slots = [key if isinstance(key, int) else k[key] for key in keys]
        targets = "".join(f"values[{slot}] = " for slot in slots if slot not in unread)
        return [f"{' ' * indent}{targets}{value}"] if targets else []

    def put_pair(indent: int, keys: tuple[str, str], value: str) -> list[str]:
        """``values[a], values[b] = value`` (a pair), or the half some plugin reads."""
        a, b = k[keys[0]], k[keys[1]]
        if a in unread:
            return [] if b in unread else [f"{' ' * indent}values[{b}] = ({value})[1]"]
        if b in unread:
            return [f"{' ' * indent}values[{a}] = ({value})[0]"]
        return [f"{' ' * indent}values[{a}], values[{b}] = {value}"]

    code = ["def emit_shape(mv, start, end):"]  # indented into its maker below
    targets = ["_"] * nvals
    targets[AT_TYPE], targets[AT_FLAGS] = "mtype", "mflags"
    for field, place in fields.items():
        targets[place] = f"f{field}"
    code += [
        f"    {', '.join(targets)}, = unpack(mv, start)",
        f"    if mtype == {READ_CT_NEW}:",
        f"        event = {EVENT_NEW} if mflags & {READ_NEW_FLAGS} else {EVENT_UPDATE}",
        f"    elif mtype == {READ_CT_DELETE}:",
        f"        event = {EVENT_DESTROY}",
        "    else:",
        "        return False",
    ]
    for field in range(_COPIED - 1):  # the first keys are the first fields; ct.event is set below
        code += put(4, (field,), name(field))
    code += put(4, ("ct.event",), "event")
    proto, reply_proto = name(F_ORIG_PROTO), name(F_REPLY_PROTO)
    icmp_type, icmp_code = name(F_ICMP_TYPE), name(F_ICMP_CODE)
    icmpv6 = put_pair(12, ("icmpv6.type", "icmpv6.code"), f"{icmp_type}, {icmp_code}")
    no_icmp = put(12, ("icmp.type", "icmp.code"), "None")
    not_ports = put(8, ("orig.l4.sport", "orig.l4.dport"), "None")
    if icmpv6 or no_icmp:
        not_ports += [f"        if {proto} == 58:", *icmpv6, *no_icmp]
        not_ports += [f"        elif {proto} != 1:", *no_icmp] if no_icmp else []
    code += [f"    if {proto} not in ports:", *not_ports] if not_ports else []
    reply_not_ports = put(8, ("reply.l4.sport", "reply.l4.dport"), "None")
    code += [f"    if {reply_proto} not in ports:", *reply_not_ports] if reply_not_ports else []
    starts = put_pair(8, ("flow.start.sec", "flow.start.usec"), "divmod(first // 1000, 1_000_000)")
    ends = put_pair(8, ("flow.end.sec", "flow.end.usec"), "divmod(last // 1000, 1_000_000)")
    if starts or ends:  # flow.start and flow.end as event mode's on_event gives them to emit_flow
        code += [
            f"    if event == {EVENT_DESTROY}:",
            f"        first, last = {name(F_START)}, {name(F_STOP)} or sock.arrived",
            f"    elif event == {EVENT_NEW}:",
            f"        first, last = {name(F_START)} or sock.arrived, None",
            "    else:",
            f"        first, last = {name(F_START)}, None",
        ]
        code += ["    if first:", *starts] if starts else []
        code += ["    if last:", *ends] if ends else []
    code += [
        *put(4, ("oob.family",), name(F_FAMILY)),
        *put(4, ("oob.protocol",), "0"),
        *put(4, ("ct",), "mv[start:end]"),
        *put(4, ("ct.zone",), name(F_ZONE)),
        *put(4, ("ct.status",), name(F_STATUS)),
        *put(4, ("ct.timeout",), name(F_TIMEOUT)),
        *put(4, ("oob.netns",), "netns"),
    ]
    if F_STATUS in fields:
        code += [
            *put(4, ("nat.snat",), f"1 if {name(F_STATUS)} & {IPS_SRC_NAT} else 0"),
            *put(4, ("nat.dnat",), f"1 if {name(F_STATUS)} & {IPS_DST_NAT} else 0"),
        ]
    elif F_REPLY_SRC in fields and F_REPLY_DST in fields:
        osrc, odst, osport, odport = (name(f) for f in (F_ORIG_SRC, F_ORIG_DST, F_ORIG_SPORT, F_ORIG_DPORT))
        rsrc, rdst, rsport, rdport = (name(f) for f in (F_REPLY_SRC, F_REPLY_DST, F_REPLY_SPORT, F_REPLY_DPORT))
        code += [
            *put(4, ("nat.snat",), f"int({osrc} != {rdst} or {osport} != {rdport})"),
            *put(4, ("nat.dnat",), f"int({odst} != {rsrc} or {odport} != {rsport})"),
        ]
    code += ["    emit()", "    return True"]
    return "\n".join(
        [f"def make({', '.join(_FUSED_NAMES)}):", *(f"    {line}" for line in code), "    return emit_shape"]
    )


def _make_fused(
    unpack: Callable, fields: dict[int, int], names: dict, unread: frozenset[int] = frozenset()
) -> Callable[[memoryview, int, int], bool]:
    """The function of a shape: ``names`` binds _FUSED_NAMES but ``unpack``, the layout's;
    ``unread``: as for :func:`_fused_source`."""
    source = _fused_source(fields, max(fields.values(), default=-1) + 1, unread)
    compiled = _FUSED_CODE.get(source)
    if compiled is None:  # shapes that differ only in offsets share their code
        if len(_FUSED_CODE) >= _FUSED_CODES:
            _FUSED_CODE.clear()
        compiled = _FUSED_CODE[source] = compile(source, "<nfct event shape>", "exec")
    scope: dict = {}
    exec(compiled, scope)
    emit_shape = scope["make"](**names, unpack=unpack, divmod=divmod, int=int)
    emit_shape.source = source  # for debugging: what a shape does
    return emit_shape


class Nfct(NetlinkInput):
    spec = PluginSpec(
        name="NFCT",
        kind=Kind.INPUT,
        help="Reads connection-tracking events (flows) from ctnetlink.",
        options=(
            int_option("pollinterval", 0, "0: event mode; N > 0: dump the table every N seconds", min=0, max=MAX_TIMER),
            int_option("hash_enable", 1, "1: keep a table of live flows and emit only DESTROY", min=0, max=INT_MAX),
            int_option("hash_buckets", 8192, "accepted for compatibility (the table sizes itself)", min=1, max=INT_MAX),
            int_option("hash_max_entries", 32768, "flows the table holds; more are not tracked", min=1, max=INT_MAX),
            int_option("event_mask", 5, "events to receive: 1 NEW, 2 UPDATE, 4 DESTROY", min=1, max=7),
            *rcvbuf_options(),
            int_option(
                "netlink_resync_timeout", 60, "hash mode: re-read the table N s after a loss", min=0, max=MAX_TIMER
            ),
            int_option("reliable", 0, "1: NETLINK_BROADCAST_ERROR + NETLINK_NO_ENOBUFS", min=0, max=INT_MAX),
            backlog_option(),
            str_option("accept_src_filter", "", "comma list of [!]addr/len on the original source"),
            str_option("accept_dst_filter", "", "comma list of [!]addr/len on the original destination"),
            str_option("accept_proto_filter", "", "comma list of [!]protocol names (tcp,udp,icmp,...)"),
            netns_option("the conntrack table"),
        ),
        outputs=_OUTPUTS,
        section_required=True,
    )

    sock: CtSocket | None = None
    _resync_timer = None
    _unit = "events"
    _overrun_remedy = ", or reliable=1"
    _error_level = NOTICE

    def configure(self) -> None:
        o = self.options
        if o["pollinterval"] and not o["hash_enable"]:
            raise PluginError("NFCT polling mode requires the hashtable", option="pollinterval")
        parsed = []
        for name, parse in (
            ("accept_src_filter", parse_net_filter),
            ("accept_dst_filter", parse_net_filter),
            ("accept_proto_filter", parse_proto_filter),
        ):
            try:
                parsed.append(parse(o[name] or ""))
            except ValueError as exc:
                raise PluginError(f"{name}: {exc}", option=name) from None
        self.accept = make_filter(*parsed)
        self.bpf_problem = ""
        try:
            self.bpf = compile_filter(*parsed)
        except ValueError as exc:  # too many entries for one program: userspace alone filters
            self.bpf, self.bpf_problem = None, str(exc)
        self.table: dict[object, bytes] = {}  # flow_key() -> the start, then the last message
        self.stats = {"hash_full": 0, "resyncs": 0, "purged": 0, "filtered": 0, "dumps": 0}

    # -- start ----------------------------------------------------------------------------------

    def start(self, loop: EventLoop) -> None:
        o = self.options
        self.loop = loop
        self.netns = o["netns"]
        self.hash = bool(o["hash_enable"])
        self.max_entries = o["hash_max_entries"]
        self._resync_timer = None
        self._reported = (0, 0)
        self._emit = self._make_emitter()
        try:
            if o["pollinterval"]:
                self.log.notice("NFCT working in polling mode")
                self._sync(emit_gone=False)
                loop.call_every(o["pollinterval"], self._poll)
                return
            self.sock = CtSocket(
                o["event_mask"],
                netns=self.netns,
                rcvbuf=o["netlink_socket_buffer_size"] or DEFAULT_RCVBUF,
                rcvbuf_max=o["netlink_socket_buffer_maxsize"],
                reliable=bool(o["reliable"]),
                backlog_size=o["netlink_backlog_size"],
            )
            self._attach_filter()
            if self.hash:
                # subscribed first, then dumped: a flow ending in between is at worst purged later
                self._sync(emit_gone=False)
        except NetlinkError as exc:
            if self.sock is not None:
                self.sock.close()
            raise PluginError(str(exc)) from None
        if o["netlink_socket_buffer_size"]:
            self.log.notice(f"NFCT netlink buffer size has been set to {self.sock.rcvbuf}")
        if o["reliable"]:
            self.log.notice("NFCT reliable logging has been enabled.")
        mode = "hash mode (flows kept until they end)" if self.hash else "event mode"
        self.log.notice(f"NFCT plugin working in {mode}")
        self._listen(loop, self.sock)

    def _attach_filter(self) -> None:
        """Filter events in the kernel where it can; userspace checks every event either way."""
        self.stats["kernel_filter"] = 0
        if self.accept is None:
            return
        if self.bpf is not None:
            try:
                self.sock.attach_filter(self.bpf)
            except NetlinkError as exc:
                self.bpf_problem = str(exc)
            else:
                self.stats["kernel_filter"] = 1
                self.log.info(f"NFCT event filter installed in the kernel ({len(self.bpf)} BPF instructions)")
                return
        self.log.notice(f"NFCT filters applied in userspace only: {self.bpf_problem}")

    def _make_emitter(self) -> Callable[[tuple | list, int, int | None, int | None], None]:
        feed = self.feed
        values, emit = feed.values, feed.emit
        # the Feed contract: an input's keys are the first slots, in declaration order
        assert [feed.slot(k.name) for k in _OUTPUTS] == list(range(len(_OUTPUTS)))
        (
            s_osport, s_odport, s_obytes, s_opkts, s_rsport, s_rdport, s_rbytes, s_rpkts,
            s_icode, s_itype, s_mark, s_event, s_ssec, s_susec, s_esec, s_eusec,
            s_family, s_oobproto, s_ct, s_zone, s_status, s_timeout, s_i6type, s_i6code,
            s_netns, s_snat, s_dnat,
        ) = [_KEY_INDEX[name] for name in (
            "orig.l4.sport", "orig.l4.dport", "orig.raw.pktlen", "orig.raw.pktcount",
            "reply.l4.sport", "reply.l4.dport", "reply.raw.pktlen", "reply.raw.pktcount",
            "icmp.code", "icmp.type", "ct.mark", "ct.event", "flow.start.sec", "flow.start.usec",
            "flow.end.sec", "flow.end.usec", "oob.family", "oob.protocol", "ct", "ct.zone",
            "ct.status", "ct.timeout", "icmpv6.type", "icmpv6.code", "oob.netns", "nat.snat", "nat.dnat",
        )]  # fmt: skip
        netns = self.netns
        ports = PORT_PROTOCOLS

        def emit_flow(rec: tuple | list, event: int, start: int | None, end: int | None) -> None:
            """One event from a decoded record; start/end in ns since the epoch (None: not valid)."""
            values[:_COPIED] = rec[:_COPIED]  # addresses, protocols, ports, counters, icmp, mark, id
            values[s_event] = event
            # then what ulogd does differently from the kernel's message
            proto = rec[F_ORIG_PROTO]
            if proto not in ports:
                values[s_osport] = values[s_odport] = None
                if proto == 58:
                    values[s_i6type], values[s_i6code] = rec[F_ICMP_TYPE], rec[F_ICMP_CODE]
                    values[s_itype] = values[s_icode] = None
                elif proto != 1:
                    values[s_itype] = values[s_icode] = None
            if rec[F_REPLY_PROTO] not in ports:
                values[s_rsport] = values[s_rdport] = None
            # counters and the mark are 0 when the kernel leaves them out
            if rec[F_ORIG_BYTES] is None:
                values[s_obytes] = 0
            if rec[F_ORIG_PKTS] is None:
                values[s_opkts] = 0
            if rec[F_REPLY_BYTES] is None:
                values[s_rbytes] = 0
            if rec[F_REPLY_PKTS] is None:
                values[s_rpkts] = 0
            if rec[F_MARK] is None:
                values[s_mark] = 0
            if start:
                values[s_ssec], values[s_susec] = divmod(start // 1000, 1_000_000)
            if end:
                values[s_esec], values[s_eusec] = divmod(end // 1000, 1_000_000)
            values[s_family] = rec[F_FAMILY]
            values[s_oobproto] = 0
            values[s_ct] = rec[F_MSG]
            zone = rec[F_ZONE]
            values[s_zone] = 0 if zone is None else zone
            status = rec[F_STATUS]
            values[s_status] = status
            values[s_timeout] = rec[F_TIMEOUT]
            values[s_netns] = netns
            if status is not None:
                values[s_snat] = 1 if status & IPS_SRC_NAT else 0
                values[s_dnat] = 1 if status & IPS_DST_NAT else 0
            else:
                rsrc, rdst = rec[F_REPLY_SRC], rec[F_REPLY_DST]
                if rdst is not None and rsrc is not None:
                    values[s_snat] = int(rec[F_ORIG_SRC] != rdst or rec[F_ORIG_SPORT] != rec[F_REPLY_DPORT])
                    values[s_dnat] = int(rec[F_ORIG_DST] != rsrc or rec[F_ORIG_DPORT] != rec[F_REPLY_SPORT])
            emit()

        return emit_flow

    def refeed(self, feed: Feed) -> bool:
        if self.sock is None:  # polling mode: no socket, the next dump writes to the new stacks
            self.feed = feed
            self._emit = self._make_emitter()
            return True
        return super().refeed(feed)

    def _refed(self) -> None:
        self._emit = self._make_emitter()

    def _make_reader(self) -> BacklogReader:
        sock = self.sock
        assert sock is not None
        emit_flow, flush = self._emit, self.feed.flush
        accept = self.accept
        stats = self.stats
        drain = sock.drain

        if not self.hash:

            def on_event(rec: list) -> None:
                if accept is not None and not accept(rec):
                    stats["filtered"] += 1
                    return
                event = rec[F_EVENT]
                if event == EVENT_DESTROY:
                    emit_flow(rec, event, rec[F_START], rec[F_STOP] or sock.arrived)
                elif event == EVENT_NEW:
                    emit_flow(rec, event, rec[F_START] or sock.arrived, None)
                else:
                    emit_flow(rec, event, rec[F_START], None)

        else:
            table = self.table
            max_entries = self.max_entries

            def on_event(rec: list) -> None:
                if accept is not None and not accept(rec):
                    stats["filtered"] += 1
                    return
                k = flow_key(rec)
                if rec[F_EVENT] == EVENT_DESTROY:
                    entry = table.pop(k, None)
                    start = rec[F_START] or (entry_start(entry) if entry is not None else None)
                    emit_flow(rec, EVENT_DESTROY, start, rec[F_STOP] or sock.arrived)
                    return
                # only the message is kept (decoded again if a resync finds the flow gone):
                # half the memory of a decoded record, and cheaper per event
                entry = table.get(k)
                if entry is not None:
                    table[k] = entry[:_START_SIZE] + rec[F_MSG].tobytes()
                elif len(table) < max_entries:
                    table[k] = _pack_start(rec[F_START] or sock.arrived) + rec[F_MSG].tobytes()
                else:
                    stats["hash_full"] += 1

        if not self.hash and accept is None:
            on_message, drain_messages = self._event_mode_by_shape(on_event), sock.drain_messages

            def drain_all() -> int:
                return drain_messages(on_message)

        else:

            def drain_all() -> int:
                return drain(on_event)

        def work() -> int:
            handled = drain_all()
            flush()
            if (sock.enobufs, sock.errors) != self._reported:
                self._report()
            return handled

        return BacklogReader(self.loop, work, lambda: sock.backlog)

    def _event_mode_by_shape(self, on_event: Callable[[list], None]) -> Callable[[memoryview, int, int], bool]:
        """Event mode without userspace filters: ``on_message(mv, start, end)`` for
        :meth:`CtSocket.drain_messages`, emitting each message through the function made for its
        shape (:func:`_fused_source`), or decoded and handed to ``on_event`` when its shape has
        none yet (then one is made, up to a bound)."""
        feed = self.feed
        names = {
            "values": feed.values, "emit": feed.emit, "sock": self.sock, "ports": PORT_PROTOCOLS,
            "netns": self.netns,
        }  # fmt: skip
        unread = frozenset(i for i, k in enumerate(_OUTPUTS) if not feed.used(k.name))
        # message length -> (header reader, its expected result, the shape's function) per shape
        shapes: dict[int, list[tuple[Callable, tuple, Callable[[memoryview, int, int], bool]]]] = {}
        rec: list = [None] * len(FIELDS)

        def learn(mv: memoryview, start: int, end: int) -> None:
            layout = learned_layout(mv, start, end)
            if layout is None:
                return
            unpack, headers, expected, _gather, fields = layout
            known = shapes.get(end - start)
            if known is None:
                if len(shapes) >= _FUSED_LENGTHS:
                    return
                known = shapes[end - start] = []
            if len(known) < _FUSED_PER_LENGTH:
                known.append((headers, expected, _make_fused(unpack, fields, names, unread)))

        def on_message(mv: memoryview, start: int, end: int) -> bool:
            known = shapes.get(end - start)
            if known is not None:
                for headers, expected, emit_shape in known:
                    if headers(mv, start) == expected:
                        return emit_shape(mv, start, end)
            if not decode(mv, start, end, rec):
                return False
            on_event(rec)
            learn(mv, start, end)
            return True

        return on_message

    # -- table dumps ----------------------------------------------------------------------------

    def _sync(self, emit_gone: bool) -> int:
        """Read the kernel table into ours; with ``emit_gone`` emit cached flows that are gone
        as DESTROY (flow.end = now). Returns how many were emitted.

        The dump is walked as it arrives (:func:`dump_each`) and each flow stored as the event
        path stores it (one entry: the start, then the message), so a flow costs the same
        however it entered the table.  Flows the dump shows move into a new dict; what is left in
        the old one has ended.  The table is then rebuilt from the new dict with fresh objects
        (:func:`_compact`): sized for the flows alive, not for the most it ever held.  A dump
        that fails purges nothing: the flows it read are kept (refreshed), the others stay.
        """
        table, accept, max_entries = self.table, self.accept, self.max_entries
        now = time.time_ns()
        current: dict[object, bytes] = {}
        counts = {"filtered": 0, "hash_full": 0}
        pop = table.pop

        def keep(rec: list) -> None:
            if accept is not None and not accept(rec):
                counts["filtered"] += 1
                return
            k = flow_key(rec)
            entry = pop(k, None)
            if entry is None:
                entry = current.get(k)
            if entry is not None:
                entry = entry[:_START_SIZE] + rec[F_MSG].tobytes()
            elif len(table) + len(current) < max_entries:
                entry = _pack_start(rec[F_START] or now) + rec[F_MSG].tobytes()
            else:
                counts["hash_full"] += 1
                return
            current[k] = entry

        try:
            dump_each(keep, self.netns)
        except BaseException:
            table.update(current)
            raise
        self.stats["dumps"] += 1
        self.stats["filtered"] += counts["filtered"]
        self.stats["hash_full"] += counts["hash_full"]
        emitted = 0
        try:
            if emit_gone:
                for entry in table.values():
                    self._emit(decode_bytes(entry_message(entry)), EVENT_DESTROY, entry_start(entry), now)
                    emitted += 1
            if emitted:  # before the table is made anew: the lines' memory is free by then
                self.feed.flush()
        finally:
            table.clear()
            # the flows the dump found, made anew in one go: see _compact
            table.update(_compact(current))
            release_free_memory()
        self.stats["purged"] += emitted
        return emitted

    def _poll(self) -> None:
        try:
            self._sync(emit_gone=True)
        except OSError as exc:
            self.log.every(10, NOTICE, "poll", f"conntrack dump failed: {exc}")

    def _resync(self) -> None:
        self._resync_timer = None
        self.stats["resyncs"] += 1
        try:
            n = self._sync(emit_gone=True)
        except OSError as exc:
            self.log.every(10, NOTICE, "resync", f"conntrack resync failed: {exc}")
            return
        self.log.info(f"resynchronised with the conntrack table: {n} flows ended during the loss")

    def _on_overrun(self, sock: NetlinkSocket) -> None:
        super()._on_overrun(sock)
        if self.hash and self._resync_timer is None:
            self._resync_timer = self.loop.call_later(self.options["netlink_resync_timeout"], self._resync)

    # -- signals, statistics, stop --------------------------------------------------------------

    def on_signal(self, signum: int) -> None:
        if signum != signal.SIGUSR2:
            return super().on_signal(signum)
        accept, table, emit_flow = self.accept, self.table, self._emit
        filtered = 0

        def write(rec: list) -> None:  # each flow as the dump brings it: no list of the table
            nonlocal filtered
            if accept is not None and not accept(rec):
                filtered += 1
                return
            entry = table.get(flow_key(rec))
            emit_flow(rec, EVENT_UPDATE, entry_start(entry) if entry is not None else rec[F_START], None)

        try:
            total = dump_each(write, self.netns, reset_counters=True)
        finally:
            self.feed.flush()
        self.stats["dumps"] += 1
        self.stats["filtered"] += filtered
        self.log.notice(f"SIGUSR2: {total - filtered} flows of the conntrack table written ({filtered} filtered)")
        return None

    def statistics(self) -> dict[str, int]:
        out = super().statistics()
        out.update(self.stats)
        out["hash_entries"] = len(self.table)
        return out

    def stop(self) -> None:
        if self._resync_timer is not None:
            self._resync_timer.cancel()
            self._resync_timer = None
        super().stop()
