"""The NFLOG packet path in-process, without the kernel's noise: real datagrams, replayed.

    sudo .venv/bin/python bench/nflog_replay.py [--packets N] [--rounds R] [--stack TEXT] [--profile FILE]

First it captures real nfnetlink_log datagrams: a throwaway namespace, an nft ``log group``
rule, UDP datagrams to 127.0.0.1 (as bench/packet_path.py sends), read raw from the group's
socket.  Then it starts pylogd's plugins on a stack (default: the one of issue 3,
NFLOG→BASE→IFINDEX→IP2STR→PRINTPKT→LOGEMU, writing to a temporary file) and feeds them the
captured datagrams through the NFLOG input's own reader: the read-ahead ring, the layout
decoder, every plugin, the output worker and its write.  It prints CPU µs per record (the
process's user+system time, so the output thread counts) as the minimum over the rounds,
which is what an A/B comparison of two versions of the code needs; the daemon benchmarks in
bench/packet_path.py compare against ulogd.
"""

from __future__ import annotations

import argparse
import cProfile
import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from packet_path import GROUP, PORT, make_namespace, sh  # noqa: E402  (bench/ is the script's directory)

from pylogd.config import parse_ini  # noqa: E402
from pylogd.daemon import Daemon  # noqa: E402
from pylogd.log import Logger  # noqa: E402
from pylogd.netlink import iter_messages, netns_context  # noqa: E402
from pylogd.nflog import NFULNL_MSG_PACKET, NflogSocket  # noqa: E402
from pylogd.registry import Registry  # noqa: E402
from pylogd.stack import build  # noqa: E402

NS = f"pylogd-replay-{os.getpid()}"
DEFAULT_STACK = "log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU"


def capture(packets: int) -> list[bytes]:
    """Datagrams nfnetlink_log sends for ``packets`` UDP datagrams logged on the input hook."""
    try:
        make_namespace(NS, (PORT,))
        sock = NflogSocket(GROUP, netns=NS, rcvbuf=64 << 20, nlbufsiz=65536)
        raw = sock._sock
        raw.setblocking(True)
        raw.settimeout(2.0)
        with netns_context(NS):
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        datagrams, seen = [], 0
        buf = bytearray(1 << 17)
        for start in range(0, packets, 500):
            batch = min(500, packets - start)
            for _ in range(batch):
                sender.sendto(b"x" * 32, ("127.0.0.1", PORT))
            while seen < start + batch:
                data = bytes(buf[: raw.recv_into(buf)])
                datagrams.append(data)
                seen += count_packets([data])
        sender.close()
        sock.close()
        return datagrams
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def count_packets(datagrams: list[bytes]) -> int:
    return sum(
        1 for d in datagrams for mtype, _f, _s, _e in iter_messages(memoryview(d), len(d)) if mtype == NFULNL_MSG_PACKET
    )


class ReplaySocket:
    """Stands in for the NFLOG socket: recv_into serves the captured datagrams, then would block."""

    def __init__(self, real: socket.socket, datagrams: list[bytes]) -> None:
        self.real = real
        self.datagrams = datagrams
        self.next = 0

    def recv_into(self, buf, nbytes: int = 0, flags: int = 0) -> int:
        if self.next >= len(self.datagrams):
            raise BlockingIOError(errno.EAGAIN, "replay done")
        data = self.datagrams[self.next]
        self.next += 1
        buf[: len(data)] = data
        return len(data)

    def __getattr__(self, name: str):
        return getattr(self.real, name)


def replay(
    config: str, input_id: str, reader: Callable[[Any], Callable[[], int]], datagrams: list[bytes], args: Any
) -> list[float]:
    """Start the stacks of ``config`` (their input ``input_id`` opened in the namespace NS), then feed
    ``datagrams`` ``args.rounds`` times through the input's own reader (``reader(plugin)``: its
    work function); returns the CPU seconds of each round, the output's writes included."""
    topo = build(parse_ini("replay.conf", config), Registry(), Logger)
    daemon = Daemon(topo, Logger("replay"))
    daemon.start()
    for stack in daemon.stacks:
        stack.runner.start()
    plugin = topo.instances[input_id].plugin
    sock = plugin.sock
    real = sock._sock
    work = reader(plugin)
    times = []
    prof = cProfile.Profile() if args.profile else None
    # one stand-in for every round, rewound at each: the socket binds its read-ahead to the recv_into
    # of the socket it first reads (NetlinkSocket._make_fill), so a new stand-in per round was never
    # read and the second round waited forever for datagrams nobody served
    fake = ReplaySocket(real, datagrams)
    sock._sock = fake
    try:
        for _ in range(args.rounds):
            fake.next = 0
            t0 = time.process_time()
            if prof:
                prof.enable()
            while fake.next < len(datagrams) or sock.backlog:
                before = (fake.next, sock.backlog)
                if not work() and (fake.next, sock.backlog) == before:  # a stall is an error, not a hang
                    raise RuntimeError(f"the reader took nothing at datagram {before[0]} of {len(datagrams)}")
            for stack in daemon.stacks:  # the writes of this round count, and finish in it
                while stack.runner.pending():
                    time.sleep(0.0005)
            if prof:
                prof.disable()
            times.append(time.process_time() - t0)
    finally:
        sock._sock = real
        daemon.shutdown()
    if prof:
        prof.dump_stats(args.profile)
    return times


def report(times: list[float], per_round: int, rounds: int, written: int | None, what: str) -> int:
    """Print CPU µs per ``what`` (min and median over the rounds); 1 when the output missed some."""
    best = min(times) / per_round * 1e6
    median = sorted(times)[len(times) // 2] / per_round * 1e6
    print(f"CPU per {what}: min {best:.3f} µs, median {median:.3f} µs over {rounds} rounds")
    if written is not None and written != per_round * rounds:
        print(f"WARNING: {written} lines written for {per_round * rounds} {what}s", file=sys.stderr)
        return 1
    return 0


def arguments(doc: str, count: str, default: int, help_text: str, stack: str) -> argparse.Namespace:
    """The options both replays take: ``--<count>`` (what is captured), rounds, stack, profile."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(f"--{count}", type=int, default=default, help=f"{help_text} (default {default})")
    ap.add_argument("--rounds", type=int, default=10, help="times the capture is replayed (default 10)")
    ap.add_argument("--stack", default=stack)
    ap.add_argument("--profile", help="write a cProfile of all rounds here")
    return ap.parse_args()


def replay_captured(
    args: Any,
    ns: str,
    input_section: str,
    reader: Callable[[Any], Callable[[], int]],
    capture_datagrams: Callable[[], list[bytes]],
    count: Callable[[list[bytes]], int],
    what: str,
    more_sections: str = "",
) -> int:
    """Capture datagrams (needs root), then replay them through ``args.stack`` with its input
    opened in a fresh namespace ``ns`` (``input_section``: its id and options, ``netns`` added) and
    LOGEMU writing to a temporary file; print the CPU per ``what`` (``count``: how many a datagram
    list holds; :func:`report`)."""
    if os.geteuid() != 0:
        print("needs root: network namespaces and netlink sockets", file=sys.stderr)
        return 2
    # killed by `timeout`, a hangup or kill: the finally clauses still delete the namespaces
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    datagrams = capture_datagrams()
    per_round = count(datagrams)
    print(f"captured {per_round} {what}s in {len(datagrams)} datagrams")
    input_id = input_section.split("]", 1)[0].lstrip("[")
    with tempfile.TemporaryDirectory() as tmp:
        sh("ip", "netns", "add", ns)
        try:
            config = (
                f'[global]\nlogfile="{tmp}/replay.log"\nloglevel=5\nstack={args.stack}\n'
                f"{input_section}netns={ns}\n"
                f'[emu1]\nfile="{tmp}/replay.out"\nsync=0\n' + more_sections.format(tmp=tmp)
            )
            times = replay(config, input_id, reader, datagrams, args)
            written = Path(f"{tmp}/replay.out").read_bytes().count(b"\n") if "LOGEMU" in args.stack else None
        finally:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    return report(times, per_round, args.rounds, written, what)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    args = arguments(__doc__, "packets", 20000, "packets captured", DEFAULT_STACK)
    outputs = '[json1]\nfile="{tmp}/replay.json"\n[pcap1]\nfile="{tmp}/replay.pcap"\n'
    return replay_captured(
        args, NS, f"[log1]\ngroup={GROUP}\n", lambda nflog: nflog._reader.work, lambda: capture(args.packets),
        count_packets, "record", outputs,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
