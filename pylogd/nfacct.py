"""nfnetlink_acct over netlink: the extended accounting objects of a network namespace.

Accounting objects are named packet and byte counters in the kernel (Debian's ``nfacct add NAME``
makes one; iptables ``-m nfacct --nfacct-name NAME`` counts what a rule matches into it).  This
module reads them without C libraries, as a library (it knows nothing of plugins)::

    from pylogd.nfacct import AcctSocket
    with AcctSocket(netns="fw") as sock:
        for obj in sock.dump():
            print(obj.name, obj.pkts, obj.bytes)

* :meth:`AcctSocket.request` asks for a dump (NFNL_MSG_ACCT_GET, or GET_CTRZERO which zeroes each
  counter as it is read); the answer is read like any pylogd netlink socket's, ahead into a ring
  (:class:`pylogd.netlink.NetlinkSocket`), and :meth:`AcctSocket.drain` hands on each object.
  A request made while the answer to another is still coming (the kernel runs one dump per socket
  at a time and refuses a second with EBUSY) waits and is sent once that one is done.
* :meth:`AcctSocket.dump`: one dump, blocking, as a list.
"""

from __future__ import annotations

import errno
import select
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from .netlink import (
    NLA_TYPE_MASK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_FULL,
    NetlinkError,
    NetlinkSocket,
    nlmsg_error,
    open_netfilter,
)

__all__ = [
    "NFNL_SUBSYS_ACCT",
    "AcctObject",
    "AcctSocket",
    "NftCounterSocket",
    "dump",
]

NFNL_SUBSYS_ACCT = 7
NFNL_MSG_ACCT_NEW, NFNL_MSG_ACCT_GET, NFNL_MSG_ACCT_GET_CTRZERO = 0, 1, 2
NFACCT_NAME, NFACCT_PKTS, NFACCT_BYTES, NFACCT_USE, NFACCT_FLAGS, NFACCT_QUOTA = 1, 2, 3, 4, 5, 6
NFACCT_F_QUOTA_PKTS, NFACCT_F_QUOTA_BYTES = 1, 2
MSG_ACCT_NEW = NFNL_SUBSYS_ACCT << 8 | NFNL_MSG_ACCT_NEW  # what the kernel answers a dump with
MAX_DATAGRAM = 65536  # a dump's datagrams are at most 32 KiB
RING_SIZE = 1 << 20

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_NLA = struct.Struct("=HH")


class AcctObject(NamedTuple):
    """One accounting object as a dump showed it."""

    name: str
    pkts: int
    bytes: int
    #: the dump (its request's sequence number) that brought it
    seq: int
    #: the netlink message
    msg: bytes
    #: NFACCT_F_QUOTA_PKTS / _BYTES when the object is a quota, else 0
    flags: int = 0
    quota: int | None = None


def decode(mv: memoryview, start: int, end: int) -> AcctObject | None:
    """The object of one NFNL_MSG_ACCT_NEW message at ``mv[start:end]`` (None: another message,
    or one without a name)."""
    _len, mtype, _flags, seq, _pid = NLMSG_FULL.unpack_from(mv, start)
    if mtype != MSG_ACCT_NEW:
        return None
    name, pkts, nbytes, flags, quota = None, 0, 0, 0, None
    off = start + 20  # nlmsghdr, nfgenmsg
    while off + 4 <= end:
        alen, atype = _NLA.unpack_from(mv, off)
        if alen < 4 or off + alen > end:
            break
        atype &= NLA_TYPE_MASK
        value = mv[off + 4 : off + alen]
        if atype == NFACCT_NAME:
            name = bytes(value).split(b"\0", 1)[0].decode("utf-8", "replace")
        elif atype == NFACCT_PKTS and len(value) >= 8:
            pkts = _U64.unpack_from(value)[0]
        elif atype == NFACCT_BYTES and len(value) >= 8:
            nbytes = _U64.unpack_from(value)[0]
        elif atype == NFACCT_FLAGS and len(value) >= 4:
            flags = _U32.unpack_from(value)[0]
        elif atype == NFACCT_QUOTA and len(value) >= 8:
            quota = _U64.unpack_from(value)[0]
        off += (alen + 3) & ~3
    if name is None:
        return None
    return AcctObject(name, pkts, nbytes, seq, bytes(mv[start:end]), flags, quota)


class AcctSocket(NetlinkSocket):
    """A netlink socket that asks nfnetlink_acct for its objects in one network namespace.

    Arguments:
        netns: a name under /run/netns or a path; the socket is created inside it.
        rcvbuf: receive buffer in bytes (0: the kernel's).
    """

    def __init__(self, netns: str | None = None, rcvbuf: int = 0) -> None:
        self.netns = netns
        self.received = 0  # objects handed on
        self.errors = 0
        self.dumps = 0  # dumps answered to the end
        self.last_error: OSError | None = None
        sock = open_netfilter(netns)
        sock.setblocking(False)
        self._sock = sock
        self._init_rcvbuf(rcvbuf, 0)
        self._init_ring(RING_SIZE, MAX_DATAGRAM)
        self._seq = int(time.time()) & 0xFFFFFF
        #: the request being answered: (seq, sent at in ns since the epoch), or None
        self.running: tuple[int, int] | None = None
        #: requests made while one ran: reset or not (None: a subclass's second dump, see NftCounterSocket)
        self._waiting: deque[bool | None] = deque()
        #: request seq -> when it was sent (ns since the epoch), while its answer comes
        self.sent: dict[int, int] = {}

    def request(self, reset: bool = False) -> None:
        """Ask for a dump of every object; ``reset`` zeroes each counter as it is read.  While
        another dump is being answered the request waits for its end."""
        if self.running is not None:
            if reset or not self._waiting or self._waiting[-1] is not False:  # one plain request waits at most
                self._waiting.append(reset)
            return
        self._send(reset)

    def _send(self, reset: bool | None) -> None:
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
        msg = self._request_message(seq, reset)
        try:
            self._sock.send(msg)
        except OSError as exc:
            raise NetlinkError(exc.errno, f"cannot ask for the accounting objects: {exc.strerror}") from None
        now = time.time_ns()
        self.running = (seq, now)
        self.sent[seq] = now

    def _request_message(self, seq: int, reset: bool | None) -> bytes:
        mtype = NFNL_SUBSYS_ACCT << 8 | (NFNL_MSG_ACCT_GET_CTRZERO if reset else NFNL_MSG_ACCT_GET)
        return NLMSG_FULL.pack(20, mtype, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + bytes(4)  # nfgenmsg AF_UNSPEC

    #: the type of the messages that carry one object each, and how one is read
    _answer_type = MSG_ACCT_NEW
    _decode = staticmethod(decode)

    def _finish(self, seq: int) -> None:
        """The dump of ``seq`` ended (done or refused): send a request that waited."""
        self.sent.pop(seq, None)
        if self.running is not None and self.running[0] == seq:
            self.running = None
            if self._waiting:
                self._send(self._waiting.popleft())

    def drain(self, on_object: Callable[[AcctObject], object], limit: int | None = None) -> int:
        """Hand each object the kernel answered with to ``on_object``; returns the messages handled."""
        return self._drain_ring(on_object, self.drain_limit if limit is None else limit)

    def _walk(self, mv: memoryview, start: int, stop: int, on_object: Callable) -> int:
        count, off = 0, start
        while off + 16 <= stop:
            mlen, mtype, _flags, seq, _pid = NLMSG_FULL.unpack_from(mv, off)
            end = off + mlen
            if mlen < 16 or end > stop:
                self.errors += 1
                break
            count += 1
            if mtype == self._answer_type:
                obj = self._decode(mv, off, end)
                if obj is not None:
                    self.received += 1
                    on_object(obj)
            elif mtype == NLMSG_DONE:
                self.dumps += 1
                self._finish(seq)
            elif mtype == NLMSG_ERROR:
                err = nlmsg_error(mv, off, end)
                if err:
                    self.errors += 1
                    self.last_error = OSError(err, f"accounting dump refused: {errno.errorcode.get(err, err)}")
                self._finish(seq)
            off = (end + 3) & ~3
        return count

    def dump(self, reset: bool = False, timeout: float = 10.0) -> list[AcctObject]:
        """One dump, blocking: every object, in the kernel's order.  Raises :class:`NetlinkError`
        when the kernel refuses it or does not answer within ``timeout`` seconds."""
        got: list[AcctObject] = []
        errors = self.errors
        self.request(reset)
        deadline = time.monotonic() + timeout
        while self.running is not None or self._waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._sock], [], [], remaining)[0]:
                raise NetlinkError(errno.ETIMEDOUT, "accounting dump: no answer")
            self.drain(got.append)
        if self.errors != errors and self.last_error is not None:
            raise NetlinkError(self.last_error.errno, str(self.last_error))
        return got


# ---------------------------------------------------------------------------------------------
# nftables named counters

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWOBJ, NFT_MSG_GETOBJ, NFT_MSG_GETOBJ_RESET = 18, 19, 21
NFTA_OBJ_TABLE, NFTA_OBJ_NAME, NFTA_OBJ_TYPE, NFTA_OBJ_DATA = 1, 2, 3, 4
NFT_OBJECT_COUNTER, NFT_OBJECT_QUOTA = 1, 2
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2
NFTA_QUOTA_BYTES, NFTA_QUOTA_FLAGS, NFTA_QUOTA_CONSUMED = 1, 2, 4
MSG_NFT_NEWOBJ = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWOBJ
#: nfgenmsg family -> the name nft gives it
NFT_FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}


def _attrs(mv: memoryview, off: int, end: int) -> dict[int, memoryview]:
    """The attributes from ``off`` to ``end``, by type (the last of a type wins)."""
    out: dict[int, memoryview] = {}
    while off + 4 <= end:
        alen, atype = _NLA.unpack_from(mv, off)
        if alen < 4 or off + alen > end:
            break
        out[atype & NLA_TYPE_MASK] = mv[off + 4 : off + alen]
        off += (alen + 3) & ~3
    return out


def _string(value: memoryview) -> str:
    return bytes(value).split(b"\0", 1)[0].decode("utf-8", "replace")


def decode_nft_counter(mv: memoryview, start: int, end: int) -> AcctObject | None:
    """The counter or quota of one NFT_MSG_NEWOBJ message, named ``FAMILY.TABLE.NAME`` (``inet.fw.web``);
    None for another kind of object or message.  A quota counts bytes only: its bytes are what it has
    consumed, ``quota`` its limit and ``flags`` NFACCT_F_QUOTA_BYTES, as nfacct shows a byte quota."""
    _len, mtype, _flags, seq, _pid = NLMSG_FULL.unpack_from(mv, start)
    if mtype != MSG_NFT_NEWOBJ or end - start < 20:
        return None
    attrs = _attrs(mv, start + 20, end)
    otype, data = attrs.get(NFTA_OBJ_TYPE), attrs.get(NFTA_OBJ_DATA)
    if otype is None or len(otype) < 4 or data is None:
        return None
    kind = _U32.unpack_from(otype)[0]
    if kind not in (NFT_OBJECT_COUNTER, NFT_OBJECT_QUOTA):
        return None
    if NFTA_OBJ_TABLE not in attrs or NFTA_OBJ_NAME not in attrs:
        return None
    family = NFT_FAMILIES.get(mv[start + 16], str(mv[start + 16]))
    name = f"{family}.{_string(attrs[NFTA_OBJ_TABLE])}.{_string(attrs[NFTA_OBJ_NAME])}"
    values = _attrs(data, 0, len(data))

    def u64(attr: int) -> int:
        value = values.get(attr)
        return _U64.unpack_from(value)[0] if value is not None and len(value) >= 8 else 0

    if kind == NFT_OBJECT_QUOTA:
        message = bytes(mv[start:end])
        return AcctObject(name, 0, u64(NFTA_QUOTA_CONSUMED), seq, message, NFACCT_F_QUOTA_BYTES, u64(NFTA_QUOTA_BYTES))
    return AcctObject(name, u64(NFTA_COUNTER_PACKETS), u64(NFTA_COUNTER_BYTES), seq, bytes(mv[start:end]))


class NftCounterSocket(AcctSocket):
    """As :class:`AcctSocket`, for the named counters and quotas of nftables (``nft add counter inet fw
    web``, ``nft add quota inet fw cap { over 10 gbytes }``) of every table and family: NFT_MSG_GETOBJ, or
    NFT_MSG_GETOBJ_RESET which zeroes the counters as they are read.  Each object is named
    ``FAMILY.TABLE.NAME``.  Quotas come in a dump of their own after the counters' and are never
    reset: zeroing what a quota consumed would give back what it allows."""

    _answer_type = MSG_NFT_NEWOBJ
    _decode = staticmethod(decode_nft_counter)

    def request(self, reset: bool = False) -> None:
        super().request(reset)
        if not self._waiting or self._waiting[-1] is not None:
            self._waiting.append(None)  # the quotas' dump

    def _request_message(self, seq: int, reset: bool | None) -> bytes:
        kind = NFT_OBJECT_QUOTA if reset is None else NFT_OBJECT_COUNTER
        command = NFT_MSG_GETOBJ_RESET if reset else NFT_MSG_GETOBJ
        body = bytes(4) + _NLA.pack(8, NFTA_OBJ_TYPE) + _U32.pack(kind)  # every family; one kind of object
        return (
            NLMSG_FULL.pack(16 + len(body), NFNL_SUBSYS_NFTABLES << 8 | command, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
            + body
        )


#: the sources of counters by name: nfnetlink_acct's objects, nftables' named counters
SOURCES: dict[str, type[AcctSocket]] = {"nfacct": AcctSocket, "nft": NftCounterSocket}


def dump(
    netns: str | None = None, reset: bool = False, timeout: float = 10.0, source: str = "nfacct"
) -> list[AcctObject]:
    """Every accounting object (``source="nft"``: nftables named counter) of a network namespace
    (``reset``: zeroed as they are read)."""
    with SOURCES[source](netns) as sock:
        return sock.dump(reset, timeout)
