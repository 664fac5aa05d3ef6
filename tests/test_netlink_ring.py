"""The read-ahead ring (pylogd.netlink.DatagramRing) on a real datagram socket: every datagram
comes out once, intact and in order, through wrap-arounds and a full ring, whatever the mix of
reading ahead and taking."""

from __future__ import annotations

import errno
import random
import socket
import struct
import time
from collections.abc import Callable

import pytest

from pylogd.netlink import BatchReceiver, DatagramRing

MAX = 4096
#: the two ways a ring is filled: a recv per datagram, and recvmmsg batches (what a real socket uses)
WAYS = ("recv", "recvmmsg")


def filler(ring: DatagramRing, rx: socket.socket, way: str, flags: int = socket.MSG_DONTWAIT) -> Callable[[], object]:
    """One read-ahead of ``rx`` into ``ring``, the ``way`` named."""
    if way == "recv":
        return lambda: ring.fill(rx.recv_into, flags)
    receiver = BatchReceiver(rx.fileno(), ring.max_datagram)
    return lambda: ring.fill_batch(receiver, flags)


def datagram(seq: int, rng: random.Random) -> bytes:
    size = rng.randint(8, MAX)
    return struct.pack("=II", seq, size) + bytes([seq % 251]) * (size - 8)


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("seed", range(5))
def test_every_datagram_once_in_order_through_wraps_and_a_full_ring(seed: int, way: str) -> None:
    rng = random.Random(seed)
    ring = DatagramRing(6 * MAX, MAX)  # a few datagrams: wraps and fills all the time
    tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    fill = filler(ring, rx, way)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sent = taken = 0
    full_seen = 0
    try:
        while taken < 600:
            for _ in range(rng.randint(0, 12)):
                if sent - taken < 40:  # what the socket buffers besides the ring
                    tx.send(datagram(sent, rng))
                    sent += 1
            assert fill() is None
            if len(ring) < sent - taken:  # data left in the socket: the ring must be full
                full_seen += 1
                assert ring._window() is None
            for _ in range(rng.randint(0, len(ring))):
                off, n, _received = ring.spans.popleft()
                seq, size = struct.unpack_from("=II", ring.mv, off)
                assert (seq, size, n) == (taken, n, n)
                assert ring.mv[off + 8 : off + n] == bytes([seq % 251]) * (n - 8)
                taken += 1
    finally:
        tx.close()
        rx.close()
    assert full_seen > 0 and ring.peak >= 3


@pytest.mark.parametrize("way", WAYS)
def test_an_empty_ring_starts_again_at_the_front(way: str) -> None:
    ring = DatagramRing(4 * MAX, MAX)
    tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    fill = filler(ring, rx, way)
    try:
        tx.send(b"x" * 100)
        before = time.time_ns()
        fill()
        assert before <= ring.spans[0][2] <= time.time_ns()  # stamped when read
        assert [span[:2] for span in ring.spans] == [(0, 100)]
        ring.spans.popleft()
        tx.send(b"y" * 50)
        fill()
        assert [span[:2] for span in ring.spans] == [(0, 50)]
    finally:
        tx.close()
        rx.close()


def test_errors_other_than_would_block_are_returned() -> None:
    def refuse(*_args: object) -> int:
        raise OSError(105, "No buffer space available")

    ring = DatagramRing(4 * MAX, MAX)
    err = ring.fill(refuse)
    assert isinstance(err, OSError) and err.errno == 105 and len(ring) == 0
    with pytest.raises(ValueError, match="at least"):
        DatagramRing(MAX, MAX)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as unconnected:
        err = ring.fill_batch(BatchReceiver(unconnected.fileno(), MAX))
    assert isinstance(err, OSError) and err.errno == errno.ENOTCONN and len(ring) == 0


@pytest.mark.parametrize("refusal", [None, errno.EPERM, errno.ENOSYS])
def test_a_socket_reads_in_batches_or_a_recv_at_a_time_where_recvmmsg_is_refused(
    monkeypatch: pytest.MonkeyPatch, refusal: int | None
) -> None:
    """A unit's SystemCallFilter= may refuse recvmmsg while it allows recv.  The first read asks
    recvmmsg once without taking anything: what was queued before it comes out whole."""
    import ctypes

    from pylogd import netlink

    def refused(*_args: object) -> int:
        ctypes.set_errno(refusal or 0)
        return -1

    class Sock(netlink.NetlinkSocket):
        def _walk(self, mv: memoryview, start: int, stop: int, callback: Callable) -> int:
            callback(bytes(mv[start:stop]))
            return 1

    if refusal is not None:
        monkeypatch.setattr(netlink, "_RECVMMSG", refused)
    tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock = Sock()
    sock._sock = rx
    sock._init_ring(1 << 20, MAX)
    seen: list[bytes] = []
    try:
        for data in (b"one", b"two", b"three"):
            tx.send(data)
        sock._drain_ring(seen.append, 100)
    finally:
        tx.close()
        rx.close()
    assert seen == [b"one", b"two", b"three"] and sock.errors == 0
    way = sock._ring.fill if refusal else sock._ring.fill_batch
    assert sock._fill is not None and sock._fill.func == way  # type: ignore[attr-defined]


@pytest.mark.parametrize("way", WAYS)
def test_a_datagram_longer_than_max_datagram_is_cut_and_its_length_kept(way: str) -> None:
    ring = DatagramRing(8 * MAX, MAX)
    tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    fill = filler(ring, rx, way, socket.MSG_DONTWAIT | socket.MSG_TRUNC)
    try:
        for data in (b"a" * 10, b"b" * (MAX + 100), b"c" * 20):
            tx.send(data)
        assert fill() is None
        assert [n for _off, n, _t in ring.spans] == [10, MAX + 100, 20]  # the real lengths
        off = ring.spans[1][0]
        assert ring.mv[off : off + MAX] == b"b" * MAX
        off = ring.spans[2][0]
        assert ring.mv[off : off + 20] == b"c" * 20  # after the cut one, not over it
    finally:
        tx.close()
        rx.close()


def test_a_batch_read_takes_the_whole_queue_in_calls_of_vlen() -> None:
    ring = DatagramRing(1 << 20, 256)
    tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    receiver = BatchReceiver(rx.fileno(), 256)
    try:
        for seq in range(3 * receiver.vlen + 5):  # several full batches, then a short one
            tx.send(struct.pack("=I", seq) * (1 + seq % 7))
        assert ring.fill_batch(receiver) is None
        got = [(struct.unpack_from("=I", ring.mv, off)[0], n) for off, n, _t in ring.spans]
        assert got == [(seq, 4 * (1 + seq % 7)) for seq in range(3 * receiver.vlen + 5)]
        assert ring.fill_batch(receiver) is None and len(ring) == len(got)  # an empty queue: nothing, no error
    finally:
        tx.close()
        rx.close()


def test_pages_of_a_burst_go_back_to_the_kernel_and_the_ring_still_works() -> None:
    from pylogd.netlink import RING_KEEP

    ring = DatagramRing(8 << 20, MAX)
    tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    try:
        for burst in range(2):
            sent = [bytes([burst, i % 256]) * 1000 for i in range(1500)]  # 3 MB, well past RING_KEEP
            for i in range(0, len(sent), 100):
                for data in sent[i : i + 100]:
                    tx.send(data)
                assert ring.fill(rx.recv_into) is None
            assert ring._touched > RING_KEEP
            got = []
            while ring.spans:
                off, n, _t = ring.spans.popleft()
                got.append(bytes(ring.mv[off : off + n]))
            assert got == sent
            ring.trim()  # empty now: the burst's pages are released
            assert ring._touched == RING_KEEP
    finally:
        tx.close()
        rx.close()


class FakeKernelQueue:
    """A receive queue that fills while the daemon decodes: every decoded datagram takes
    ``decode_ns`` of a fake clock, and datagrams arrive on that clock every ``arrival_ns``."""

    def __init__(self, arrival_ns: int, total: int) -> None:
        self.now = 0
        self.arrival_ns = arrival_ns
        self.sent = 0
        self.total = total
        self.queue: list[bytes] = []
        self.deepest = 0  # the most datagrams ever waiting in the kernel: what the receive buffer must hold
        self.reads: list[int] = []  # clock times at which the socket was read

    def clock(self) -> int:
        return self.now

    def arrive(self) -> None:
        while self.sent < self.total and self.sent * self.arrival_ns <= self.now:
            self.queue.append(struct.pack("=I", self.sent))
            self.sent += 1
        self.deepest = max(self.deepest, len(self.queue))

    def recv_into(self, buf: memoryview, nbytes: int, flags: int = 0) -> int:
        self.arrive()
        if not self.reads or self.reads[-1] != self.now:
            self.reads.append(self.now)
        if not self.queue:
            raise BlockingIOError
        data = self.queue.pop(0)
        buf[: len(data)] = data
        return len(data)


def drain_with(decode_ns: int, arrival_ns: int, total: int) -> tuple[FakeKernelQueue, list[int]]:
    from pylogd.netlink import NetlinkSocket

    kernel = FakeKernelQueue(arrival_ns, total)

    class Sock(NetlinkSocket):
        def _walk(self, mv: memoryview, start: int, stop: int, callback: Callable) -> int:
            kernel.now += decode_ns  # decoding takes time; meanwhile the burst goes on
            kernel.arrive()
            callback(struct.unpack_from("=I", mv, start)[0])
            return 1

    sock = Sock()
    sock._sock = kernel  # type: ignore[assignment]
    sock._clock = kernel.clock  # type: ignore[method-assign]
    sock._init_ring(1 << 20, 64)
    seen: list[int] = []
    while len(seen) < total:
        if sock._drain_ring(seen.append, 10**9) == 0:
            kernel.now += arrival_ns  # idle until the next datagram
    return kernel, seen


@pytest.mark.parametrize("decode_ns", [1_000, 4_000, 30_000, 200_000])
def test_a_burst_is_read_again_within_readahead_ns_whatever_a_datagram_costs(decode_ns: int) -> None:
    """The kernel queue is read again at most readahead_ns (plus the one datagram being decoded)
    after the last read, however slow decoding is, so a burst never waits there longer."""
    from pylogd.netlink import NetlinkSocket

    bound = NetlinkSocket.readahead_ns
    arrival_ns = 1_000  # 1,000,000 datagrams a second, faster than any decode_ns here
    kernel, seen = drain_with(decode_ns, arrival_ns, total=3000)
    assert seen == list(range(3000))  # every datagram once, in order
    gaps = [b - a for a, b in zip(kernel.reads, kernel.reads[1:], strict=False)]
    assert max(gaps) <= bound + decode_ns
    # so the kernel never held more than what arrives in that time (plus the read's own datagram)
    assert kernel.deepest <= (bound + decode_ns) // arrival_ns + 1


def test_a_quiet_socket_is_not_read_between_datagrams_of_the_ring() -> None:
    """Decoding a backlog faster than readahead_ns reads the socket once per readahead_ns, not once
    per datagram: a would-block read costs as much as a datagram."""
    from pylogd.netlink import NetlinkSocket

    bound = NetlinkSocket.readahead_ns
    kernel, seen = drain_with(decode_ns=1_000, arrival_ns=100, total=2000)  # all there before decoding ends
    assert seen == list(range(2000))
    decoding_ns = 2000 * 1_000
    assert len(kernel.reads) <= decoding_ns // bound + 2


def test_the_read_ahead_interval_follows_the_receive_buffer() -> None:
    """A quarter of the buffer lasts rcvbuf/8 ns at 2 GB/s of kernel charges: a small buffer is
    read every 50 µs, pylogd's default every 4 ms (a would-block read costs ~3 µs), and a buffer
    grown after an overrun is read less often again, never beyond 5 ms."""
    from pylogd.netlink import DEFAULT_RCVBUF, NetlinkSocket

    def sock_with(rcvbuf: int) -> NetlinkSocket:
        sock = NetlinkSocket()
        sock._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
        sock._init_rcvbuf(rcvbuf, 0)
        return sock

    small, default = sock_with(106496), sock_with(DEFAULT_RCVBUF)
    try:
        assert small.readahead_ns == 50_000
        assert default.rcvbuf == 2 * DEFAULT_RCVBUF
        assert default.readahead_ns == 2 * DEFAULT_RCVBUF // 8
        for sock in (small, default):  # at 2 bytes per ns, a quarter of the buffer or less between reads
            assert 2 * sock.readahead_ns <= sock.rcvbuf // 4 or sock.readahead_ns == 50_000
        default.set_rcvbuf(4 * DEFAULT_RCVBUF)
        assert default.readahead_ns == 5_000_000
    finally:
        small.close()
        default.close()


def test_the_drain_limit_follows_the_receive_buffer() -> None:
    """Nothing reads the kernel queue while a batch of lines is written: with the kernel's default
    buffer (~200 messages) a drain decodes 64 messages before its lines go out, not 2,000 (whose
    write took 2 ms once); a buffer grown after an overrun takes larger batches again."""
    from pylogd.netlink import DEFAULT_RCVBUF, DRAIN_LIMIT, NetlinkSocket

    sock = NetlinkSocket()
    sock._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
    try:
        sock._init_rcvbuf(106496, 0)
        assert sock.rcvbuf == 212992 and sock.drain_limit == 64  # rcvbuf/5120 is 41: the floor
        sock.set_rcvbuf(217088)  # ulogd's example size
        assert sock.drain_limit == 2 * 217088 // 5120
        sock.set_rcvbuf(DEFAULT_RCVBUF)
        assert sock.drain_limit == DRAIN_LIMIT
    finally:
        sock.close()


def test_the_default_buffer_grows_after_an_overrun_and_a_named_size_only_when_told() -> None:
    """With no size in the config (pylogd's 16 MiB) an overrun doubles the buffer up to
    DEFAULT_RCVBUF_MAX; a size the config names keeps ulogd's rule (maxsize 0: never grows)."""
    from pylogd.netlink import DEFAULT_RCVBUF, DEFAULT_RCVBUF_MAX, NetlinkSocket

    def sock_with(rcvbuf: int, rcvbuf_max: int) -> NetlinkSocket:
        sock = NetlinkSocket()
        sock._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock._init_rcvbuf(rcvbuf, rcvbuf_max)
        return sock

    default = sock_with(DEFAULT_RCVBUF, 0)
    sizes = []
    for _ in range(4):
        default._on_enobufs()
        sizes.append(default.rcvbuf_requested)
    default.close()
    assert sizes == [2 * DEFAULT_RCVBUF, DEFAULT_RCVBUF_MAX, DEFAULT_RCVBUF_MAX, DEFAULT_RCVBUF_MAX]
    assert default.enobufs == 4 and default.grown == 2
    assert "at its maximum" in default.overrun_advice()

    named = sock_with(217088, 0)
    named._on_enobufs()
    named.close()
    assert named.rcvbuf_requested == 217088 and named.grown == 0

    example = sock_with(217088, 1085440)
    for _ in range(5):
        example._on_enobufs()
    example.close()
    assert example.rcvbuf_requested == 1085440
