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

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nflog_replay import replay, report  # noqa: E402  (bench/ is the script's directory)
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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", type=int, default=10000, help="flows captured, 2 events each (default 10000)")
    ap.add_argument("--rounds", type=int, default=10, help="times the capture is replayed (default 10)")
    ap.add_argument("--stack", default=DEFAULT_STACK)
    ap.add_argument("--profile", help="write a cProfile of all rounds here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root: network namespace and conntrack socket", file=sys.stderr)
        return 2

    datagrams = capture(args.flows)
    per_round = count_events(datagrams)
    print(f"captured {per_round} events in {len(datagrams)} datagrams")

    with tempfile.TemporaryDirectory() as tmp:
        sh("ip", "netns", "add", NS)
        try:
            config = (
                f'[global]\nlogfile="{tmp}/replay.log"\nloglevel=5\nstack={args.stack}\n'
                f"[ct1]\nhash_enable=0\nnetns={NS}\n"
                f'[emu1]\nfile="{tmp}/replay.out"\nsync=0\n'
            )
            times = replay(config, "ct1", lambda nfct: nfct._reader.work, datagrams, args)
            written = Path(f"{tmp}/replay.out").read_bytes().count(b"\n") if "LOGEMU" in args.stack else None
        finally:
            subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    return report(times, per_round, args.rounds, written, "event")


if __name__ == "__main__":
    sys.exit(main())
