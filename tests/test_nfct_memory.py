"""NFCT hash mode: a flow costs the same memory however it entered the table.

Each path runs in a fresh interpreter (a child process) so that its resident memory is its own:
the event path learns N live UDP flows from NEW events, then the start-up dump loads the same N
flows into another instance, which is then resynchronised by force; a third learns the flows,
then as many short ones whose ends it loses in an overrun, and resyncs.  Resident memory (RSS, what
the kernel charges the daemon) is compared per flow; the tables must hold the same flows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rig import Netns, Rig
from test_nfct import CT_RULES

FLOWS = 50_000
#: how much more a flow loaded by a dump (or refreshed by a resync) may cost than one learned from
#: its NEW event.  Measured at 50,000 flows: the dump path 0.8x the event path, the same after a
#: resync (the whole-list dump before: 2.3x, and 3.0x after a resync)
MAX_RATIO = 1.2

SENDER = r"""
import socket, sys, time
n, dst = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start = time.perf_counter()
for i in range(n):  # one flow per destination port, 50,000 a second
    s.sendto(b"x", (dst, 1024 + i))
    if i % 100 == 99 and (delay := start + (i + 1) / 50_000 - time.perf_counter()) > 0:
        time.sleep(delay)
"""

CHILD = r"""
import hashlib, json, subprocess, sys, time
netns, path, n, tests, sender = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
sys.path.insert(0, tests)
from feedkit import RecordingFeed
from pylogd.conntrack import F_ORIG_DPORT, F_ORIG_DST, F_ORIG_PROTO, F_ORIG_SPORT, F_ORIG_SRC, decode_bytes
from pylogd.log import Logger
from pylogd.loop import EventLoop
from pylogd.plugins.inputs.nfct import Nfct, entry_message


class Count:
    n = 0

    def append(self, _event):
        self.n += 1


def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def flows():
    # (count, digest of the keys, digest of the flows as key and original tuple), whatever their
    # order: one flow at a time, so that no list of them takes memory the figures would count
    keys = tuples = 0
    for key, entry in plugin.table.items():
        rec = decode_bytes(entry_message(entry))
        flow = repr((key, *(rec[f] for f in (F_ORIG_SRC, F_ORIG_DST, F_ORIG_PROTO, F_ORIG_SPORT, F_ORIG_DPORT))))
        keys = (keys + int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "big")) % (1 << 64)
        tuples = (tuples + int.from_bytes(hashlib.sha256(flow.encode()).digest()[:8], "big")) % (1 << 64)
    return [len(plugin.table), keys, tuples]


def pump(seconds):
    loop.call_later(seconds, loop.stop)
    loop.run()


values = {o.name: o.default for o in Nfct.spec.options}
# a buffer the burst cannot overrun and no resync of its own: this one is forced below
values.update(netns=netns, hash_max_entries=2 * n, netlink_socket_buffer_size=32 << 20, netlink_resync_timeout=3600)
if path == "lost":
    values.update(netlink_resync_timeout=1)
plugin = Nfct("ct1", values, Logger("ct1"))
plugin.configure()
plugin.feed = RecordingFeed(Nfct.spec.outputs)
plugin.feed.events = Count()  # the flows a resync purges are counted, not kept: they would take memory
loop = EventLoop()
out = {}


def learn(dst, total):
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", sender, str(n), dst])
    deadline = time.monotonic() + 60
    while (proc.poll() is None or plugin.statistics()["received"] < total) and time.monotonic() < deadline:
        pump(0.05)
    proc.wait()
    pump(0.5)


if path in ("events", "lost"):
    plugin.start(loop)
    pump(0.1)
    base = rss()
    learn("127.0.0.2", n)
    out["per_flow"] = (rss() - base) / len(plugin.table)
    out["flows"] = flows()
    if path == "lost":
        # as many short flows again, whose DESTROY events overrun a small buffer: the table holds
        # them until the resync after the loss finds them gone
        learn("127.0.0.3", 2 * n)
        plugin.sock.set_rcvbuf(4096)
        gone = ["ip", "netns", "exec", netns, "conntrack", "-D", "-d", "127.0.0.3"]
        subprocess.run(gone, capture_output=True, check=True)
        deadline = time.monotonic() + 30
        while plugin.statistics()["resyncs"] == 0 and time.monotonic() < deadline:
            pump(0.1)
        pump(0.5)
        out["after_resync_per_flow"] = (rss() - base) / len(plugin.table)
        out["flows_after_resync"] = flows()
else:
    base = rss()
    plugin.start(loop)  # the start-up dump
    pump(0.5)
    out["per_flow"] = (rss() - base) / len(plugin.table)
    out["flows"] = flows()
    plugin._resync()  # what the resync timer runs after a loss
    pump(0.5)
    out["after_resync_per_flow"] = (rss() - base) / len(plugin.table)
    out["flows_after_resync"] = flows()
    out["purged"] = plugin.statistics()["purged"]
out["stats"] = plugin.statistics()
plugin.stop()
print(json.dumps(out))
"""


def measure(ns: Netns, path: str) -> dict:
    tests = str(Path(__file__).resolve().parent)
    res = subprocess.run(
        [sys.executable, "-c", CHILD, ns.name, path, str(FLOWS), tests, SENDER],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


def test_a_flow_costs_the_same_from_events_from_the_start_up_dump_and_after_a_resync(rig: Rig) -> None:
    ns = rig.netns("ctmem")
    ns.nft(CT_RULES)
    ns.run(["sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=600"])  # the flows stay alive meanwhile

    events = measure(ns, "events")  # learns the flows as the sender creates them
    assert events["stats"]["received"] == FLOWS, events["stats"]
    assert events["stats"]["enobufs"] == 0 and events["stats"]["resyncs"] == 0
    # every flow has its own entry: ct.id is 32 bits of a hash and two of 50,000 flows may share
    # one, but the table's key is the original tuple with the id (nfct.flow_key)
    assert events["flows"][0] == FLOWS, events["stats"]

    dump = measure(ns, "dump")  # a new instance finds the same flows in the table
    assert dump["flows"] == events["flows"]  # the same keys (a dump's message gives the event's key), same tuples
    assert dump["flows_after_resync"] == dump["flows"] and dump["purged"] == 0

    figures = (
        f"B/flow: events {events['per_flow']:.0f}, start-up dump {dump['per_flow']:.0f}, "
        f"after a resync {dump['after_resync_per_flow']:.0f}"
    )
    print(figures)
    assert dump["per_flow"] <= MAX_RATIO * events["per_flow"], figures
    assert dump["after_resync_per_flow"] <= MAX_RATIO * events["per_flow"], figures


def test_memory_returns_after_a_resync_purges_flows_whose_end_was_lost(rig: Rig) -> None:
    ns = rig.netns("ctlost")
    ns.nft(CT_RULES)
    ns.run(["sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=600"])

    lost = measure(ns, "lost")
    stats = lost["stats"]
    assert lost["flows"][0] == FLOWS and stats["enobufs"] > 0 and stats["resyncs"] == 1, stats
    assert stats["purged"] > FLOWS // 2, stats  # the ends of most short flows were lost
    assert lost["flows_after_resync"] == lost["flows"]  # the live flows kept, as they were
    figures = f"B/flow: events {lost['per_flow']:.0f}, after the lost flows' resync {lost['after_resync_per_flow']:.0f}"
    print(figures)
    assert lost["after_resync_per_flow"] <= MAX_RATIO * lost["per_flow"], figures
