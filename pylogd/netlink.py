"""Generic netlink pieces shared by the netfilter inputs (NFLOG, NFCT).

* constants of ``linux/netlink.h`` and the header structs,
* :func:`iter_messages`: walk the nlmsghdr-framed messages of one datagram,
* :func:`nla`: build one attribute, :func:`nlmsg_error`: the errno of an NLMSG_ERROR,
* :func:`set_rcvbuf`: SO_RCVBUFFORCE with an SO_RCVBUF fallback,
* :func:`netns_context`: create sockets inside another network namespace,
* :class:`DatagramRing`: read datagrams ahead of decoding, so bursts leave the kernel quickly,
* :class:`NetlinkSocket`: the receive buffer, its growth after losses, closing.

The decoders of :mod:`pylogd.nflog` and :mod:`pylogd.conntrack` inline the message walk for
speed; what both sockets do alike (receive buffer, read-ahead, closing) lives here once.  Nothing
here knows of plugins: the inputs built on these sockets share :mod:`pylogd.netlink_input`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import mmap
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Self

__all__ = [
    "BACKLOG_SIZE",
    "CLONE_NEWNET",
    "DEFAULT_RCVBUF",
    "DEFAULT_RCVBUF_MAX",
    "DRAIN_LIMIT",
    "NETLINK_NETFILTER",
    "BatchReceiver",
    "DatagramRing",
    "NetlinkError",
    "NetlinkSocket",
    "iter_messages",
    "netns_context",
    "netns_path",
    "nla",
    "nlmsg_error",
    "open_netfilter",
    "set_rcvbuf",
]

NETLINK_NETFILTER = 12
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_BROADCAST_ERROR = 4
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
CLONE_NEWNET = 0x40000000
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER

NLMSG = struct.Struct("=IH")  # nlmsghdr: len, type
NLMSG_FULL = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLERR = struct.Struct("=i")
NLA = struct.Struct("=HH")


class NetlinkError(OSError):
    """Opening or configuring a netlink socket failed; ``errno`` is the kernel's answer."""


def iter_messages(
    data: bytes | bytearray | memoryview, length: int | None = None
) -> Iterator[tuple[int, int, int, int]]:
    """Walk the netlink messages of one datagram: yields (type, flags, start, end) of each.

    Stops at the first truncated message.
    """
    mv = memoryview(data)
    n = len(mv) if length is None else min(length, len(mv))
    off = 0
    while off + 16 <= n:
        mlen, mtype, mflags, _seq, _pid = NLMSG_FULL.unpack_from(mv, off)
        if mlen < 16 or off + mlen > n:
            return
        yield mtype, mflags, off, off + mlen
        off = (off + mlen + 3) & ~3


def nlmsg_error(mv: memoryview, start: int, end: int) -> int | None:
    """The positive errno of an NLMSG_ERROR message (0 = ACK), None when it is too short."""
    if end - start < 20:
        return None
    return -NLERR.unpack_from(mv, start + 16)[0]


def nla(atype: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = 4 + len(payload)
    return NLA.pack(length, atype) + payload + b"\0" * ((-length) % 4)


def set_rcvbuf(sock: socket.socket, size: int) -> int:
    """Set a socket's receive buffer (SO_RCVBUFFORCE, else SO_RCVBUF); returns what the kernel reports."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


# ---------------------------------------------------------------------------------------------
# network namespaces

_libc = None


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netns_path(netns: str) -> str:
    """A namespace name (under /run/netns) or a path (anything with a '/') as a path."""
    return netns if "/" in netns else os.path.join("/run/netns", netns)


@contextlib.contextmanager
def netns_context(netns: str | None) -> Iterator[None]:
    """Run the body with the calling thread inside network namespace ``netns`` (None: stay).

    Sockets created inside keep that namespace after the thread has switched back.
    Raises :class:`NetlinkError` when the namespace does not exist or cannot be entered.
    """
    if netns is None:
        yield
        return
    path = netns_path(netns)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetlinkError(
            errno.ENOENT, f"network namespace {netns!r} not found ({path} does not exist; `ip netns list` shows names)"
        ) from None
    try:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                _setns(target)
            except OSError as exc:
                raise NetlinkError(exc.errno, f"cannot enter network namespace {netns!r}: {exc.strerror}") from None
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)
    finally:
        os.close(target)


def open_netfilter(netns: str | None, groups: int = 0, bound: str = "bind a netfilter netlink socket") -> socket.socket:
    """A NETLINK_NETFILTER socket made inside ``netns`` (None: this namespace) and bound to the multicast
    ``groups``; ``bound`` says in the error what binding it was for."""
    with netns_context(netns):
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        except OSError as exc:
            raise NetlinkError(exc.errno, f"cannot open a netfilter netlink socket: {exc.strerror}") from None
    try:
        sock.bind((0, groups))
    except OSError as exc:
        sock.close()
        raise NetlinkError(exc.errno, f"cannot {bound}: {exc.strerror}") from None
    return sock


# ---------------------------------------------------------------------------------------------
# read-ahead


RING_KEEP = 1 << 20  # resident bytes a ring keeps after a burst; the rest goes back to the kernel
READAHEAD_MIN_NS, READAHEAD_MAX_NS = 50_000, 5_000_000
BACKLOG_SIZE = 64 << 20  # a socket's ring: address space, resident only while a burst fills it


#: messages one drain decodes at most before the outputs write their lines (timers and signals get
#: their turn in between too), and at least, however small the receive buffer
DRAIN_LIMIT, DRAIN_LIMIT_MIN = 2000, 64


def drain_limit(rcvbuf: int) -> int:
    """Messages one drain decodes before its lines are written, for a receive buffer of ``rcvbuf``
    bytes as the kernel reports it (see :attr:`NetlinkSocket.drain_limit`)."""
    return min(DRAIN_LIMIT, max(DRAIN_LIMIT_MIN, rcvbuf // 5120))


def readahead_interval(rcvbuf: int) -> int:
    """ns between two reads of the kernel queue while the ring holds work, for a receive buffer of
    ``rcvbuf`` bytes as the kernel reports it (see :attr:`NetlinkSocket.readahead_ns`)."""
    return min(READAHEAD_MAX_NS, max(READAHEAD_MIN_NS, rcvbuf // 8))


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]  # fmt: skip


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


def _libc_recvmmsg() -> Callable[..., int] | None:
    """The C library's recvmmsg(2), or None where there is none."""
    try:
        recvmmsg = ctypes.CDLL(None, use_errno=True).recvmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.restype = ctypes.c_int
    return recvmmsg


_RECVMMSG = _libc_recvmmsg()
_REFUSED = (-errno.EPERM, -errno.EACCES, -errno.ENOSYS)  # recvmmsg itself refused, not its socket
STAGING_BYTES = 2 << 20  # a batch receiver's slots, address space: resident as datagrams are written
BATCH_MAX = 32  # datagrams a system call at most


class BatchReceiver:
    """recvmmsg(2) on one socket: up to :attr:`vlen` datagrams a system call, each into its own
    ``max_datagram`` slot of a staging area (:attr:`mv`), their lengths in :meth:`lengths`.

    Why: a recv per datagram is a system call each and, when the queue is empty, an exception
    (BlockingIOError, ~3 µs); one call for a batch costs about what one recv does from Python,
    and an empty queue is a return value.  The slots are fixed before the lengths are known, so
    a batch is copied into the ring at its real sizes (:meth:`DatagramRing.fill_batch`).
    """

    def __init__(self, fd: int, max_datagram: int) -> None:
        assert _RECVMMSG is not None
        self.vlen = vlen = max(1, min(BATCH_MAX, STAGING_BYTES // max_datagram))
        self._stage = mmap.mmap(-1, vlen * max_datagram)
        self.mv = memoryview(self._stage)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._stage))
        self._iov = (_Iovec * vlen)(*(_Iovec(base + i * max_datagram, max_datagram) for i in range(vlen)))
        self._msgs = (_Mmsghdr * vlen)()
        for i, msg in enumerate(self._msgs):
            msg.hdr.iov, msg.hdr.iovlen = ctypes.addressof(self._iov[i]), 1
        self._msgs_ref = ctypes.byref(self._msgs)
        # msg_len of the first n entries, read in one unpack
        offset, size = _Mmsghdr.len.offset, ctypes.sizeof(_Mmsghdr)
        entry = f"{offset}xI{size - offset - 4}x"
        self._lengths = [struct.Struct("=" + entry * n).unpack_from for n in range(vlen + 1)]
        self._array = memoryview(self._msgs).cast("B")
        self._fd = fd

    def receive(self, count: int, flags: int) -> int:
        """Receive up to ``count`` (at most :attr:`vlen`) datagrams; returns how many, 0 when the
        socket would block, or minus the errno of a failure.  An error met after some datagrams
        is kept by the kernel for the next call."""
        while True:
            got = _RECVMMSG(self._fd, self._msgs_ref, count, flags, None)
            if got >= 0:
                return got
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            return 0 if err in (errno.EAGAIN, errno.EWOULDBLOCK) else -err

    def lengths(self, n: int) -> tuple[int, ...]:
        """The lengths of the last call's ``n`` datagrams (with MSG_TRUNC: before any cut)."""
        return self._lengths[n](self._array)


class DatagramRing:
    """Datagrams read ahead from a socket into one preallocated buffer, oldest first.

    Why: the kernel charges each queued netlink message at its skb size (about 1 KiB for a
    conntrack event) against the receive buffer, and after one overrun drops everything
    until the queue is empty.  Copying datagrams out at recv() speed and decoding them later
    empties the kernel queue several times faster than decoding in between, and the ring
    holds them at their real size (150-300 bytes for an event).

    :meth:`fill` reads until the socket would block or the ring has no room for another
    ``max_datagram`` bytes; ``spans`` holds (offset, length, receive time in ns) of what was
    read and not yet taken, and a span's bytes stay untouched until it is popped.  ``peak`` is
    the most datagrams ever waiting.  The ring is address space: its pages become resident as
    a burst writes them, and go back to the kernel (all but the first MiB) once it is empty.
    """

    def __init__(self, size: int, max_datagram: int = 65536) -> None:
        if size < 2 * max_datagram:
            raise ValueError(f"a read-ahead ring of {size} bytes: at least {2 * max_datagram} needed")
        # anonymous memory: its pages become resident only when a burst writes them (a bytearray
        # would be zero-filled, every page touched, at start)
        self._map = mmap.mmap(-1, size)
        self.mv = memoryview(self._map)
        self._touched = 0  # the ring's pages below this were written since they were last released
        self.max_datagram = max_datagram
        self.spans: deque[tuple[int, int, int]] = deque()
        self.peak = 0
        self._wpos = 0

    def __len__(self) -> int:
        return len(self.spans)

    def trim(self) -> None:
        """When the ring is empty after a burst, give the pages the burst wrote back to the kernel."""
        if not self.spans and self._touched > RING_KEEP:
            self._map.madvise(mmap.MADV_DONTNEED, RING_KEEP, self._touched - RING_KEEP)
            self._touched = RING_KEEP

    def _window(self) -> tuple[int, int] | None:
        """The free stretch [start, stop) the next datagrams go into, or None when the ring is full."""
        spans, wpos, need, size = self.spans, self._wpos, self.max_datagram, len(self.mv)
        if not spans:
            self.trim()
            return 0, size
        oldest = spans[0][0]
        if wpos >= oldest:  # writing after the oldest datagram: up to the end, else wrap to the front
            if size - wpos >= need:
                return wpos, size
            return (0, oldest) if oldest >= need else None
        return (wpos, oldest) if oldest - wpos >= need else None  # wrapped: up to the oldest

    def fill(self, recv_into: Callable[..., int], flags: int = socket.MSG_DONTWAIT) -> OSError | None:
        """Read with ``recv_into`` (a socket's) until it would block or the ring is full;
        returns the error that stopped it otherwise (the caller decides what it means).
        With MSG_TRUNC in ``flags`` a span's length may exceed ``max_datagram``: the datagram
        was cut there."""
        mv, need = self.mv, self.max_datagram
        append = self.spans.append
        now = time.time_ns
        error = None
        while (window := self._window()) is not None:
            pos, stop = window
            try:
                while pos + need <= stop:
                    n = recv_into(mv[pos : pos + need], need, flags)
                    append((pos, n, now()))
                    pos = (pos + min(n, need) + 7) & ~7
            except BlockingIOError:
                self._wpos = pos
                break
            except OSError as exc:
                self._wpos = pos
                error = exc
                break
            self._wpos = pos
            if pos > self._touched:
                self._touched = pos
        if self._wpos > self._touched:
            self._touched = self._wpos
        spans = self.spans
        if len(spans) > self.peak:
            self.peak = len(spans)
        return error

    def fill_batch(self, receiver: BatchReceiver, flags: int = socket.MSG_DONTWAIT) -> OSError | None:
        """As :meth:`fill`, with ``receiver``'s batches (made for this ring's ``max_datagram``):
        a batch is received, then each datagram copied to its place.  A batch that comes back
        short ends the read: the queue was empty (or an error waits, which the next read
        returns).  The datagrams of a batch share one receive time."""
        mv, need, stage = self.mv, self.max_datagram, receiver.mv
        append, receive, lengths, vlen = self.spans.append, receiver.receive, receiver.lengths, receiver.vlen
        now = time.time_ns
        error = None
        while (window := self._window()) is not None:
            pos, stop = window
            short = False
            while (room := (stop - pos) // need) > 0:
                asked = room if room < vlen else vlen
                got = receive(asked, flags)
                if got <= 0:
                    if got < 0:
                        error = OSError(-got, os.strerror(-got))
                    short = True
                    break
                arrived = now()
                slot = 0
                for n in lengths(got):
                    size = n if n < need else need
                    mv[pos : pos + size] = stage[slot : slot + size]
                    append((pos, n, arrived))
                    pos = (pos + size + 7) & ~7
                    slot += need
                if got < asked:
                    short = True
                    break
            self._wpos = pos
            if pos > self._touched:
                self._touched = pos
            if short:
                break
        spans = self.spans
        if len(spans) > self.peak:
            self.peak = len(spans)
        return error


# ---------------------------------------------------------------------------------------------
# what the netfilter sockets share


class NetlinkSocket:
    """What the NFLOG and conntrack sockets share: the receive buffer (set, and grown after
    losses), the read-ahead ring, the descriptor and closing.  A subclass opens ``_sock``, then
    calls :meth:`_init_rcvbuf` and :meth:`_init_ring`."""

    _sock: socket.socket
    _ring: DatagramRing
    _recv_flags = socket.MSG_DONTWAIT
    #: while datagrams wait in the ring, read the kernel queue again after this many ns of decoding:
    #: a burst must not fill the receive buffer meanwhile.  The kernel charges each NFLOG packet or
    #: conntrack event ~1 KiB; a burst of 2 GB/s of such charges (2,000,000 events a second) fills a
    #: quarter of the buffer in rcvbuf/8 ns, which is the interval (:func:`readahead_interval`) from
    #: 50 µs (the kernel's default 208 KiB) to 5 ms (pylogd's default 16 MiB, reported as 32 MiB: 4.2
    #: ms).  Why not always 50 µs: each read ends with a call that finds the queue empty (a recv's
    #: exception cost ~3 µs, 6 % of the CPU every 50 µs; a recvmmsg batch's less); a large buffer has
    #: no need of it.
    readahead_ns = 50_000
    #: messages one drain decodes before the outputs write: nothing reads the kernel queue while a
    #: batch of lines is written, and a 290 KB write of 2,000 lines was seen to take 2 ms, more than
    #: the kernel's default buffer (208 KiB, ~1 KiB charged a message) lasts at 135,000 packets a
    #: second.  With rcvbuf/5120 messages a batch writes ~1/20 of the buffer's messages' worth of
    #: lines (~250 B each): 64 (the floor) with the kernel's default, 84 with ulogd's example
    #: (424 KiB reported), DRAIN_LIMIT (2,000) from ~10 MB up.
    drain_limit = DRAIN_LIMIT
    _clock = staticmethod(time.monotonic_ns)
    received = 0
    errors = 0
    truncated = 0  # datagrams longer than the ring's max_datagram (seen with MSG_TRUNC)
    last_error: OSError | None = None
    arrived = 0  # during a drain callback: when its datagram was read from the kernel (ns)
    _fill: Callable[[], OSError | None] | None = None  # see _make_fill

    def _init_ring(self, size: int, max_datagram: int) -> None:
        self._ring = DatagramRing(max(size, 4 * max_datagram), max_datagram)

    @property
    def backlog(self) -> int:
        """Datagrams read from the kernel and not decoded yet."""
        return len(self._ring)

    @property
    def backlog_max(self) -> int:
        return self._ring.peak

    def read_ahead(self) -> None:
        """Move datagrams from the kernel queue into the ring until it would block or the ring
        is full.  ENOBUFS is counted (and grows the buffer up to ``rcvbuf_max``), never raised;
        other errors are counted in ``errors``/``last_error``."""
        fill = self._fill or self._make_fill()
        while (exc := fill()) is not None and self._count_error(exc):
            pass

    def _count_error(self, exc: OSError) -> bool:
        """Count what a read of the socket failed with; True when reading goes on (ENOBUFS: the
        kernel dropped what did not fit, and what it queued since is there to read)."""
        if exc.errno != errno.ENOBUFS:
            self.errors += 1
            self.last_error = exc
            return False
        self._on_enobufs()
        return True

    def _make_fill(self) -> Callable[[], OSError | None]:
        """How :meth:`read_ahead` fills the ring: batches of recvmmsg(2) on a real socket where
        the C library has it, else a recv per datagram.  Made at the first read, once the
        subclass has opened its socket."""
        ring, sock, flags = self._ring, self._sock, self._recv_flags
        fill = functools.partial(ring.fill, sock.recv_into, flags)
        if _RECVMMSG is not None and isinstance(sock, socket.socket):
            receiver = BatchReceiver(sock.fileno(), ring.max_datagram)
            # a seccomp filter (a unit's SystemCallFilter=) may refuse recvmmsg and allow recv: ask
            # once, looking without taking (MSG_PEEK); an error of the socket's (ENOBUFS) is
            # reported once, to this call: counted here
            got = receiver.receive(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
            if got not in _REFUSED:
                fill = functools.partial(ring.fill_batch, receiver, flags)
                if got < 0:
                    self._count_error(OSError(-got, os.strerror(-got)))
        self._fill = fill
        return fill

    def _walk(self, mv: memoryview, start: int, stop: int, callback: Callable) -> int:
        """Decode the datagram at ``mv[start:stop]``, calling ``callback`` per record; returns
        how many messages it held."""
        raise NotImplementedError

    def _drain_ring(self, callback: Callable, limit: int) -> int:
        """Read ahead everything the kernel holds, then decode datagrams from the ring, reading
        ahead again whenever :attr:`readahead_ns` passed since the last read, until the ring is
        empty or ``limit`` messages were handled.

        Why by time: the kernel queue holds a fixed number of bytes, so how long it lasts in a
        burst depends on the arrival rate and the size of each message, never on how many
        datagrams were decoded meanwhile.  A fixed count of datagrams between reads is either
        too many when records are slow to decode (the queue overruns while the ring still holds
        work) or a waste of would-block reads when they are fast.  The clock is read once per
        datagram (~50 ns against microseconds of decoding).

        During ``callback`` :attr:`arrived` is the time (ns) its datagram was read from the
        kernel.  What is left in the ring (:attr:`backlog`) waits for the next call, which the
        caller must make even if the socket is not readable.  Returns the messages handled.
        """
        ring, walk, clock, interval = self._ring, self._walk, self._clock, self.readahead_ns
        mv, spans, size = ring.mv, ring.spans, ring.max_datagram
        popleft = spans.popleft
        count = 0
        self.read_ahead()
        due = clock() + interval
        while spans and count < limit:
            off, n, self.arrived = popleft()
            if n > size:
                self.truncated += 1
                n = size
            count += walk(mv, off, off + n, callback)
            if clock() >= due:
                self.read_ahead()
                due = clock() + interval
        ring.trim()
        return count

    def _init_rcvbuf(self, rcvbuf: int, rcvbuf_max: int) -> None:
        """Set the receive buffer to ``rcvbuf`` (0: leave the kernel's) and let it double after
        each overrun up to ``rcvbuf_max`` (0: never).  pylogd's own default size grows up to
        :data:`DEFAULT_RCVBUF_MAX` when no maximum is named: a burst that overran 16 MiB once
        comes again."""
        if rcvbuf == DEFAULT_RCVBUF and not rcvbuf_max:
            rcvbuf_max = DEFAULT_RCVBUF_MAX
        self.rcvbuf_max = rcvbuf_max
        self.enobufs = 0  # recv() reported ENOBUFS: the kernel dropped messages
        self.grown = 0  # receive-buffer growths after ENOBUFS
        self.rcvbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.rcvbuf_requested = self.rcvbuf // 2  # the kernel reports twice what was asked
        self.readahead_ns = readahead_interval(self.rcvbuf)
        self.drain_limit = drain_limit(self.rcvbuf)
        if rcvbuf:
            self.set_rcvbuf(rcvbuf)

    def set_rcvbuf(self, size: int) -> int:
        """Set the socket receive buffer (SO_RCVBUFFORCE, else SO_RCVBUF); returns what the kernel reports."""
        self.rcvbuf_requested = size
        self.rcvbuf = set_rcvbuf(self._sock, size)
        self.readahead_ns = readahead_interval(self.rcvbuf)
        self.drain_limit = drain_limit(self.rcvbuf)
        return self.rcvbuf

    def _on_enobufs(self) -> None:
        """Count a loss and double the buffer, up to ``rcvbuf_max``."""
        self.enobufs += 1
        if self.rcvbuf_max and self.rcvbuf_requested < self.rcvbuf_max:
            self.set_rcvbuf(min(max(self.rcvbuf_requested, 4096) * 2, self.rcvbuf_max))
            self.grown += 1

    def overrun_advice(self, other_remedy: str = "") -> str:
        """What to tell the operator after ENOBUFS, from where the buffer's growth stands."""
        if self.rcvbuf_max and self.rcvbuf_requested < self.rcvbuf_max:
            return f"increased the socket buffer to {self.rcvbuf_requested} bytes"
        if self.rcvbuf_max:
            return (
                f"the socket buffer is at its maximum ({self.rcvbuf_max}); consider raising "
                f"netlink_socket_buffer_size and netlink_socket_buffer_maxsize{other_remedy}"
            )
        return f"consider setting netlink_socket_buffer_size and netlink_socket_buffer_maxsize{other_remedy}"

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def closed(self) -> bool:
        return self._sock.fileno() < 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: the receive buffer the netlink inputs ask for when the config names none (ulogd leaves the kernel's
#: ~208 KiB, which a burst of a few hundred packets or conntrack events overruns).  It is a bound on what
#: the kernel may queue for pylogd, not memory taken: it costs only while pylogd is behind.
DEFAULT_RCVBUF = 16 << 20
#: how far that default grows after overruns when the config names no netlink_socket_buffer_maxsize
DEFAULT_RCVBUF_MAX = 64 << 20
