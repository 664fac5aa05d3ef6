"""The NFCT flow path in-process, without the kernel's noise: real conntrack events, replayed.

    sudo .venv/bin/python bench/flow_replay.py [--flows N] [--rounds R] [--stack TEXT] [--profile FILE]

The flow-path twin of bench/nflog_replay.py.  First it captures real ctnetlink event datagrams: a
throwaway namespace whose output hook tracks connections, N one-packet UDP flows (each its own
destination port, as bench/flow_path.py sends them) and a table flush, read raw from an event
socket: a NEW and a DESTROY event per flow.  Then it starts pylogd's plugins on a stack (default:
issue 11's NFCT event mode→IP2STR→PRINTFLOW→LOGEMU, writing to a temporary file) and feeds them the
captured datagrams through the NFCT input's own reader: the read-ahead ring, the decoder, every
plugin, the output and its write.  It prints CPU µs per event (the process's user+system time) as
the minimum over the rounds, for A/B comparisons of two versions of the code (compiled or not:
PYLOGD_PURE_PYTHON=1); bench/flow_path.py compares the daemons with ulogd.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nflog_replay import arguments, replay_captured  # noqa: E402  (bench/ is the script's directory)
from packet_path import sh  # noqa: E402

from pylogd.conntrack import EVENT_DESTROY, EVENT_NEW, CtSocket  # noqa: E402
from pylogd.netlink import iter_messages, netns_context  # noqa: E402

NS = f"pylogd-flowreplay-{os.getpid()}"
DEFAULT_STACK = "ct1:NFCT,ip2str1:IP2STR,print1:PRINTFLOW,emu1:LOGEMU"
RULES = "table inet t {\n  chain out { type filter hook output priority 0; ct state new accept; }\n}\n"


def capture(flows: int) -> list[bytes]:
    """The event datagrams of ``flows`` one-packet UDP flows and of the flush that ends them."""
    try:
        sh("ip", "netns", "add", NS)
        sh("ip", "-n", NS, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", NS, "nft", "-f", "-", input=RULES)
        sock = CtSocket(EVENT_NEW | EVENT_DESTROY, netns=NS, rcvbuf=256 << 20)
        raw = sock._sock
        raw.setblocking(True)
        raw.settimeout(2.0)
        with netns_context(NS):
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        datagrams: list[bytes] = []
        buf = bytearray(1 << 17)

        def read(until: int) -> None:
            seen = sum(count_events([d]) for d in datagrams)
            while seen < until:
                data = bytes(buf[: raw.recv_into(buf)])
                datagrams.append(data)
                seen += count_events([data])

        for start in range(0, flows, 1000):
            for i in range(start, min(start + 1000, flows)):
                sender.sendto(b"x", ("127.0.0.1", 1024 + i % 60000))
            read(min(start + 1000, flows))
        sender.close()
        sh("ip", "netns", "exec", NS, "conntrack", "-F")
        read(2 * flows)
        sock.close()
        return datagrams
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def count_events(datagrams: list[bytes]) -> int:
    return sum(sum(1 for _ in iter_messages(memoryview(d), len(d))) for d in datagrams)


def main() -> int:
    args = arguments(__doc__, "flows", 10000, "flows captured, 2 events each", DEFAULT_STACK)
    return replay_captured(
        args, NS, "[ct1]\nhash_enable=0\n", lambda nfct: nfct._reader.work, lambda: capture(args.flows),
        count_events, "event",
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
