"""The read-ahead ring (pylogd.netlink.DatagramRing) on a real datagram socket: every datagram
comes out once, intact and in order, through wrap-arounds and a full ring, whatever the mix of
reading ahead and taking."""

from __future__ import annotations

import random
import socket
import struct
import time

import pytest

from pylogd.netlink import DatagramRing

MAX = 4096


def datagram(seq: int, rng: random.Random) -> bytes:
    size = rng.randint(8, MAX)
    return struct.pack("=II", seq, size) + bytes([seq % 251]) * (size - 8)


@pytest.mark.parametrize("seed", range(5))
def test_every_datagram_once_in_order_through_wraps_and_a_full_ring(seed: int) -> None:
    rng = random.Random(seed)
    ring = DatagramRing(6 * MAX, MAX)  # a few datagrams: wraps and fills all the time
    tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
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
            assert ring.fill(rx.recv_into) is None
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


def test_an_empty_ring_starts_again_at_the_front() -> None:
    ring = DatagramRing(4 * MAX, MAX)
    tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        tx.send(b"x" * 100)
        before = time.time_ns()
        ring.fill(rx.recv_into)
        assert before <= ring.spans[0][2] <= time.time_ns()  # stamped when read
        assert [span[:2] for span in ring.spans] == [(0, 100)]
        ring.spans.popleft()
        tx.send(b"y" * 50)
        ring.fill(rx.recv_into)
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
