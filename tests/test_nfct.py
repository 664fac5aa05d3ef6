"""NFCT live: the plugin in this process reading a throwaway namespace's conntrack table
(event, hash and polling modes, filters, SIGUSR2), the socket API against pyroute2, and NAT
attribution through the daemon in a router namespace (masquerade and SNAT)."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from pathlib import Path

import pytest
from feedkit import RecordingFeed
from pylogd.plugins.inputs.nfct import Nfct
from rig import Netns, Rig, pylogd_command, read_text, start_pylogd, wait_for
from test_nfct_decode import pyroute2_view

from pylogd.conntrack import FIELDS, CtSocket, dump
from pylogd.log import Logger
from pylogd.loop import EventLoop
from pylogd.netlink import DEFAULT_RCVBUF
from pylogd.plugin import PluginError

TEST_PLUGINS = Path(__file__).resolve().parent / "plugins" / "testplugins.py"
LO1, LO2 = bytes([127, 0, 0, 1]), bytes([127, 0, 0, 2])

# conntrack only runs in a namespace whose ruleset uses it
CT_RULES = """
table inet t {
    chain out { type filter hook output priority 0; ct state new accept; }
    chain inp { type filter hook input priority 0; ct state new accept; }
}
"""


class Running:
    """An NFCT instance started in this process on a namespace, with a loop to pump."""

    def __init__(self, ns: Netns, log: Logger | None = None, **options: object) -> None:
        values = {o.name: o.default for o in Nfct.spec.options}
        values.update(netns=ns.name, **options)
        self.plugin = Nfct("ct1", values, log or Logger("ct1"))
        self.plugin.configure()
        self.feed = RecordingFeed(Nfct.spec.outputs)
        self.plugin.feed = self.feed
        self.loop = EventLoop()
        self.plugin.start(self.loop)

    def pump(self, seconds: float = 0.05) -> list[dict]:
        self.loop.call_later(seconds, self.loop.stop)
        self.loop.run()
        return self.feed.events

    def until(self, predicate, what: str, timeout: float = 10) -> list[dict]:
        wait_for(lambda: predicate(self.pump()), timeout=timeout, what=what)
        return self.feed.events

    def close(self) -> None:
        self.plugin.stop()
        self.loop.close()


@pytest.fixture
def ctns(rig: Rig) -> Netns:
    ns = rig.netns("ct")
    ns.nft(CT_RULES)
    return ns


def udp_from(src: str, dst: str, port: int, count: int = 1, family: int = socket.AF_INET) -> int:
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((src, 0))
        for _ in range(count):
            s.sendto(b"x" * 10, (dst, port))
        return s.getsockname()[1]


def tcp_exchange(dst: str, port: int, payload: bytes = b"hello", src: str = "0.0.0.0") -> tuple[str, int]:
    """Connect, send, read the echo, close; returns the client's (address, port)."""
    with socket.create_connection((dst, port), timeout=3, source_address=(src, 0)) as c:
        c.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = c.recv(100)
            if not chunk:
                break
            got += chunk
        return c.getsockname()[:2]


ECHO_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(50)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    data = c.recv(1000)
    c.sendall(data); c.close()
"""


def echo_server(ns: Netns, port: int) -> None:
    import sys

    proc = ns.spawn([sys.executable, "-c", ECHO_SERVER, str(port)], name=f"echo{port}")
    wait_for(lambda: "ready" in proc.output(), what="echo server")


def flush_table(ns: Netns) -> None:
    ns.run(["conntrack", "-F"])


# ---------------------------------------------------------------------------------------------
# the socket API


def test_socket_events_and_dump_match_pyroute2(ctns: Netns) -> None:
    with CtSocket(7, netns=ctns.name) as sock:
        sport = ctns.call(udp_from, "127.0.0.1", "127.0.0.2", 4000)
        recs = list(sock.events(timeout=1))
    new = [r for r in recs if r[FIELDS.index("orig_sport")] == sport]
    assert new and new[0][FIELDS.index("event")] == 1
    for rec in recs:  # every real message decodes as pyroute2 reads it
        ours = {n: v for n, v in zip(FIELDS, rec, strict=True) if v is not None and n != "msg"}
        assert ours == pyroute2_view(rec[-1])
    table = dump(ctns.name)
    assert any(r[FIELDS.index("orig_sport")] == sport and r[FIELDS.index("orig_dst")] == LO2 for r in table)


# ---------------------------------------------------------------------------------------------
# modes


def test_event_mode_delivers_new_update_destroy(ctns: Netns) -> None:
    echo_server(ctns, 7000)
    run = Running(ctns, hash_enable=0, event_mask=7)
    try:
        addr, port = ctns.call(tcp_exchange, "127.0.0.1", 7000)
        mine = lambda evs: [e for e in evs if e.get("orig.l4.sport") == port]  # noqa: E731
        run.until(lambda evs: {1, 2} <= {e["ct.event"] for e in mine(evs)}, "NEW and UPDATE")
        flush_table(ctns)
        evs = mine(run.until(lambda evs: 4 in {e["ct.event"] for e in mine(evs)}, "DESTROY"))
    finally:
        run.close()
    new = next(e for e in evs if e["ct.event"] == 1)
    destroy = next(e for e in evs if e["ct.event"] == 4)
    assert new["orig.ip.saddr"] == socket.inet_aton(addr) and new["orig.l4.dport"] == 7000
    assert new["reply.l4.sport"] == 7000 and new["reply.l4.dport"] == port
    assert new["orig.ip.protocol"] == 6 and new["oob.family"] == 2 and new["oob.protocol"] == 0
    # without nf_conntrack_acct the counters are 0 but valid, like ulogd
    assert new["orig.raw.pktcount"] == 0 and new["reply.raw.pktlen"] == 0
    assert "flow.start.sec" in new and "flow.end.sec" not in new
    assert abs(new["flow.start.sec"] - time.time()) < 30
    assert "flow.end.sec" in destroy and destroy["ct.id"] == new["ct.id"]
    assert new["oob.netns"] == ctns.name and new["nat.snat"] == 0 and new["nat.dnat"] == 0
    assert new["ct.mark"] == 0 and new["ct.zone"] == 0 and "ct.timeout" in new
    assert len(new["ct"]) > 20 and "icmp.type" not in new


def test_hash_mode_emits_only_destroy_with_cached_start(ctns: Netns) -> None:
    # loaded by the start-up dump.  The kernel (5.19+) gives a flow event support only when some
    # listener exists at its creation, so one listens meanwhile (as a previous daemon would have)
    with CtSocket(1, netns=ctns.name):
        sport_before = ctns.call(udp_from, "127.0.0.1", "127.0.0.2", 4001)
    run = Running(ctns)  # the defaults: hash_enable=1, event_mask=5
    try:
        sport = ctns.call(udp_from, "127.0.0.1", "127.0.0.2", 4002)
        run.pump(0.3)
        assert run.feed.events == []  # NEW only fills the table
        assert run.plugin.statistics()["hash_entries"] >= 2
        before_flush = time.time()
        flush_table(ctns)
        evs = run.until(lambda evs: len(evs) >= 2, "two DESTROY events")
    finally:
        run.close()
    by_port = {e["orig.l4.sport"]: e for e in evs}
    for p in (sport, sport_before):
        e = by_port[p]
        assert e["ct.event"] == 4
        assert e["flow.start.sec"] <= before_flush + 1 <= e["flow.end.sec"] + 2
        assert e["flow.start.sec"] <= e["flow.end.sec"]


def test_hash_max_entries_counts_untracked_flows(ctns: Netns) -> None:
    run = Running(ctns, hash_max_entries=1)
    try:
        for port in (4010, 4011, 4012):
            ctns.call(udp_from, "127.0.0.1", "127.0.0.2", port)
        run.until(lambda _evs: run.plugin.statistics()["hash_full"] >= 2, "two refusals")
        assert run.plugin.statistics()["hash_entries"] == 1
        flush_table(ctns)
        evs = run.until(lambda evs: len(evs) >= 3, "three DESTROY events")
    finally:
        run.close()
    # untracked flows are still reported at their end, just without a start time
    assert sum("flow.start.sec" in e for e in evs) == 1


def test_polling_mode_purges_vanished_flows_with_an_end_time(ctns: Netns) -> None:
    sport = ctns.call(udp_from, "127.0.0.1", "127.0.0.2", 4020)
    run = Running(ctns, pollinterval=1)
    try:
        assert run.plugin.sock is None and run.plugin.statistics()["hash_entries"] >= 1
        flush_table(ctns)
        t_flush = time.time()
        evs = run.until(lambda evs: any(e.get("orig.l4.sport") == sport for e in evs), "purge", timeout=5)
    finally:
        run.close()
    e = next(e for e in evs if e.get("orig.l4.sport") == sport)
    assert e["ct.event"] == 4 and "flow.start.sec" in e
    assert t_flush - 1 <= e["flow.end.sec"] + e["flow.end.usec"] / 1e6 <= t_flush + 3  # the fix over ulogd


def test_polling_mode_requires_the_hash() -> None:
    values = {o.name: o.default for o in Nfct.spec.options}
    values.update(pollinterval=5, hash_enable=0)
    with pytest.raises(PluginError, match="requires the hashtable"):
        Nfct("ct1", values, Logger("ct1")).configure()


@pytest.mark.parametrize(
    ("option", "value", "kept"),
    [
        ("accept_src_filter", "127.0.0.2/32", {"127.0.0.2"}),
        ("accept_src_filter", "!127.0.0.2/32", {"127.0.0.1"}),
        ("accept_src_filter", "127.0.0.0/8,!127.0.0.1", {"127.0.0.2"}),
        ("accept_dst_filter", "127.0.0.3/32", {"127.0.0.1", "127.0.0.2"}),
        ("accept_proto_filter", "!udp", set()),
        ("accept_proto_filter", "tcp,udp", {"127.0.0.1", "127.0.0.2"}),
    ],
)
def test_filters(ctns: Netns, option: str, value: str, kept: set[str]) -> None:
    run = Running(ctns, hash_enable=0, **{option: value})
    try:
        ctns.call(udp_from, "127.0.0.1", "127.0.0.3", 4030)
        ctns.call(udp_from, "127.0.0.2", "127.0.0.3", 4030)
        ctns.call(udp_from, "127.0.0.1", "127.0.0.9", 4031)  # a different destination, never kept by dst filter
        run.pump(0.5)
        evs = [e for e in run.feed.events if e["orig.l4.dport"] == 4030]
        got = {socket.inet_ntoa(e["orig.ip.saddr"]) for e in evs}
        stats = run.plugin.statistics()
    finally:
        run.close()
    assert got == kept
    # the kernel did the filtering: every event that reached the socket was one we keep
    assert stats["kernel_filter"] == 1 and stats["filtered"] == 0
    assert stats["received"] == len(run.feed.events)


V6_FLOWS = [("127.0.0.1", "127.0.0.3"), ("fd00::1", "fd00::3"), ("fd00:1::1", "fd00::3"), ("fd00::1", "fd00:9::3")]


@pytest.mark.parametrize(
    ("options", "kept"),
    [
        ({"accept_src_filter": "fd00::/64"}, {"fd00::1>fd00::3", "fd00::1>fd00:9::3"}),
        ({"accept_src_filter": "!fd00::/64"}, {"127.0.0.1>127.0.0.3", "fd00:1::1>fd00::3"}),
        ({"accept_src_filter": "127.0.0.0/8, fd00:1::/32"}, {"127.0.0.1>127.0.0.3", "fd00:1::1>fd00::3"}),
        ({"accept_src_filter": "::/0"}, {"fd00::1>fd00::3", "fd00:1::1>fd00::3", "fd00::1>fd00:9::3"}),
        ({"accept_src_filter": "fd00::1", "accept_dst_filter": "!fd00:9::/48"}, {"fd00::1>fd00::3"}),
        ({"accept_dst_filter": "fd00::3/128", "accept_proto_filter": "udp"}, {"fd00::1>fd00::3", "fd00:1::1>fd00::3"}),
        ({"accept_dst_filter": "fd00::3/128", "accept_proto_filter": "!17"}, set()),
    ],
)
def test_kernel_filter_ipv6_and_mixed_families(ctns: Netns, options: dict[str, str], kept: set[str]) -> None:
    for addr in ("fd00::1", "fd00:1::1", "fd00::3", "fd00:9::3"):
        ctns.run(f"ip -6 addr add {addr}/128 dev lo nodad")
    run = Running(ctns, hash_enable=0, event_mask=1, **options)
    try:
        for src, dst in V6_FLOWS:
            ctns.call(udp_from, src, dst, 4070, family=socket.AF_INET6 if ":" in src else socket.AF_INET)
        run.pump(0.5)
        stats = run.plugin.statistics()
    finally:
        run.close()
    got = {
        f"{socket.inet_ntop(socket.AF_INET6 if e['oob.family'] == 10 else socket.AF_INET, e['orig.ip.saddr'])}>"
        f"{socket.inet_ntop(socket.AF_INET6 if e['oob.family'] == 10 else socket.AF_INET, e['orig.ip.daddr'])}"
        for e in run.feed.events
    }
    assert got == kept
    assert stats["kernel_filter"] == 1 and stats["filtered"] == 0 and stats["received"] == len(kept)


def test_filter_too_big_for_the_kernel_falls_back_to_userspace(ctns: Netns) -> None:
    many = ",".join(f"10.{i // 250}.{i % 250}.0/24" for i in range(2000)) + ",127.0.0.2"
    run = Running(ctns, hash_enable=0, event_mask=1, accept_src_filter=many)
    try:
        assert run.plugin.bpf is None and "BPF instructions" in run.plugin.bpf_problem
        ctns.call(udp_from, "127.0.0.1", "127.0.0.3", 4080)
        ctns.call(udp_from, "127.0.0.2", "127.0.0.3", 4080)
        evs = run.until(lambda evs: len(evs) >= 1, "the accepted flow")
        run.pump(0.3)
        stats = run.plugin.statistics()
    finally:
        run.close()
    assert [socket.inet_ntoa(e["orig.ip.saddr"]) for e in evs] == ["127.0.0.2"]
    assert stats["kernel_filter"] == 0 and stats["filtered"] == 1


@pytest.mark.parametrize("bad", [("accept_src_filter", "10.0.0.300/8"), ("accept_proto_filter", "nosuchproto")])
def test_bad_filters_fail_configure(bad: tuple[str, str]) -> None:
    values = {o.name: o.default for o in Nfct.spec.options}
    values[bad[0]] = bad[1]
    with pytest.raises(PluginError, match=bad[0]):
        Nfct("ct1", values, Logger("ct1")).configure()


@pytest.mark.parametrize("hash_enable", [0, 1])
def test_sigusr2_dumps_the_table_as_update(ctns: Netns, hash_enable: int) -> None:
    run = Running(ctns, hash_enable=hash_enable)
    try:
        sport = ctns.call(udp_from, "127.0.0.1", "127.0.0.2", 4040)
        run.pump(0.2)
        run.feed.events.clear()
        run.plugin.on_signal(signal.SIGUSR2)
        evs = [e for e in run.feed.events if e.get("orig.l4.sport") == sport]
    finally:
        run.close()
    assert len(evs) == 1 and evs[0]["ct.event"] == 2 and "flow.end.sec" not in evs[0]
    assert "flow.start.sec" in evs[0] or not hash_enable


@pytest.mark.parametrize("hash_enable", [0, 1])
def test_table_dumps_count_what_the_filter_rejects(ctns: Netns, hash_enable: int, logged) -> None:
    ctns.call(udp_from, "127.0.0.1", "127.0.0.3", 4050)  # in the table before the start: hash mode dumps it
    said, sink = logged
    run = Running(ctns, Logger("ct1", sink), hash_enable=hash_enable, accept_src_filter="127.0.0.2/32")
    try:
        ctns.call(udp_from, "127.0.0.1", "127.0.0.3", 4051)
        ctns.call(udp_from, "127.0.0.2", "127.0.0.3", 4051)
        run.pump(0.3)
        before = run.plugin.statistics()["filtered"]
        assert before == hash_enable  # the start-up dump's flow from 127.0.0.1
        run.feed.events.clear()
        run.plugin.on_signal(signal.SIGUSR2)
        stats = run.plugin.statistics()
        evs = [e for e in run.feed.events if e.get("orig.l4.dport") == 4051]
    finally:
        run.close()
    assert [socket.inet_ntoa(e["orig.ip.saddr"]) for e in evs] == ["127.0.0.2"]
    assert stats["filtered"] - before == 2  # both flows from 127.0.0.1
    mode = "hash mode" if hash_enable else "event mode"
    assert any(m.startswith(f"NFCT plugin working in {mode}") for m in said), said
    assert said[-1].startswith("SIGUSR2: 1 flows of the conntrack table written (2 filtered)"), said


def test_receive_buffer_defaults_to_pylogds_not_the_kernels(ctns: Netns) -> None:
    run = Running(ctns, hash_enable=0)
    try:
        assert run.plugin.sock is not None and run.plugin.sock.rcvbuf == 2 * DEFAULT_RCVBUF
    finally:
        run.close()


def test_reliable_and_buffer_options(ctns: Netns) -> None:
    run = Running(ctns, hash_enable=0, reliable=1, netlink_socket_buffer_size=262144)
    try:
        assert run.plugin.sock is not None and run.plugin.sock.rcvbuf >= 262144
        ctns.call(udp_from, "127.0.0.1", "127.0.0.2", 4050)
        run.until(lambda evs: len(evs) >= 1, "an event")
    finally:
        run.close()
    assert run.plugin.statistics()["enobufs"] == 0


def test_enobufs_counted_and_resync_purges_ended_flows(ctns: Netns) -> None:
    run = Running(ctns, netlink_socket_buffer_size=4096, netlink_resync_timeout=1)
    try:
        # a burst the tiny buffer cannot hold while the loop is not reading
        ctns.call(_many_flows, 3000)
        run.pump(0.5)
        stats = run.plugin.statistics()
        assert stats["enobufs"] >= 1
        flush_table(ctns)  # DESTROY events, some lost again; the resync finds the rest
        wait_for(lambda: run.pump(0.2) is not None and run.plugin.statistics()["resyncs"] >= 1, what="a resync")
        run.pump(0.5)
        assert run.plugin.statistics()["hash_entries"] == 0
    finally:
        run.close()


def test_a_burst_larger_than_one_drain_is_decoded_without_further_events(ctns: Netns) -> None:
    run = Running(ctns, hash_enable=0, event_mask=1, netlink_socket_buffer_size=16 << 20)
    try:
        ctns.call(_many_flows, 5000)  # queued in the kernel while nothing reads
        # one wake-up reads everything ahead and decodes DRAIN_LIMIT of it; the socket is then
        # quiet, so only the plugin's own re-call can decode the rest
        run.until(lambda evs: len(evs) >= 5000, "every NEW event", timeout=20)
        stats = run.plugin.statistics()
    finally:
        run.close()
    assert stats["received"] == 5000 and stats["enobufs"] == 0
    assert stats["backlog_max"] > 2000


def test_with_a_small_buffer_a_burst_is_written_in_small_batches(ctns: Netns) -> None:
    """The socket is not read while a batch of lines is written, so a small buffer takes small
    batches (NetlinkSocket.drain_limit): 150 events queued at once go out in three or more."""
    run = Running(ctns, hash_enable=0, event_mask=1, netlink_socket_buffer_size=106496)
    try:
        assert run.plugin.sock.drain_limit == 64
        ctns.call(_many_flows, 150)  # queued in the kernel while nothing reads
        flushes = run.feed.flushes
        run.until(lambda evs: len(evs) >= 150, "every NEW event", timeout=20)
        stats = run.plugin.statistics()
    finally:
        run.close()
    assert stats["received"] == 150 and stats["enobufs"] == 0
    assert stats["backlog_max"] > 64  # one read took the burst...
    assert run.feed.flushes - flushes >= 3  # ...and its lines went out 64 at a time


def test_stop_decodes_what_was_read_ahead_and_what_the_kernel_holds(ctns: Netns) -> None:
    run = Running(ctns, hash_enable=0, event_mask=1, netlink_socket_buffer_size=16 << 20)
    try:
        ctns.call(_many_flows, 3000)
        run.plugin.sock.read_ahead()  # in the ring, not decoded
        assert run.plugin.sock.backlog > 0
        ctns.call(_many_flows, 1000, 20000)  # still in the kernel queue
    finally:
        run.close()  # stop(): SIGTERM's "write everything accepted"
    assert len(run.feed.events) == 4000
    assert {e["orig.l4.dport"] for e in run.feed.events} == set(range(10000, 13000)) | set(range(20000, 21000))


def _many_flows(n: int, first_port: int = 10000) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(n):
            s.sendto(b"x", ("127.0.0.2", first_port + i))


# ---------------------------------------------------------------------------------------------
# NAT attribution through the daemon


def router(rig: Rig) -> tuple[Netns, Netns, Netns]:
    """inside (10.61.0.2) -- router (10.61.0.1 | 10.62.0.1) -- outside (10.62.0.2)."""
    inside, rt, outside = rig.netns("in"), rig.netns("rt"), rig.netns("out")
    import subprocess

    for a, b, an, bn in ((inside, rt, "vin", "vri"), (rt, outside, "vro", "vout")):
        subprocess.run(
            ["ip", "link", "add", an, "netns", a.name, "type", "veth", "peer", "name", bn, "netns", b.name],
            check=True,
            capture_output=True,
        )
    inside.run("ip addr add 10.61.0.2/24 dev vin && ip link set vin up && ip route add default via 10.61.0.1")
    rt.run("ip addr add 10.61.0.1/24 dev vri && ip link set vri up")
    rt.run("ip addr add 10.62.0.1/24 dev vro && ip link set vro up")
    outside.run("ip addr add 10.62.0.2/24 dev vout && ip link set vout up && ip route add 192.0.2.0/24 via 10.62.0.1")
    rt.run("sysctl -qw net.ipv4.ip_forward=1")
    rt.run("sysctl -qw net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_timestamp=1")
    return inside, rt, outside


NAT_RULES = """
table ip nat {
    chain post {
        type nat hook postrouting priority 100;
        oif vro meta l4proto { tcp, udp } NAT
    }
}
"""


def daemon_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in read_text(path).splitlines()]


@pytest.mark.parametrize(
    ("nat", "public", "hash_enable"),
    [("masquerade to :20000-20099", "10.62.0.1", 0), ("snat to 192.0.2.9:30000-30099", "192.0.2.9", 1)],
)
def test_nat_attribution(rig: Rig, tmp_path: Path, nat: str, public: str, hash_enable: int) -> None:
    inside, rt, outside = router(rig)
    rt.nft(NAT_RULES.replace("NAT", nat))
    echo_server(outside, 8000)
    conf, logfile = tmp_path / "pylogd.conf", tmp_path / "pylogd.log"
    cap = tmp_path / "cap.json"
    conf.write_text(
        f'[global]\nlogfile="{logfile}"\nloglevel=1\nplugin="{TEST_PLUGINS}"\n'
        f'stack=ct1:NFCT,cap1:CAPTURE\n[ct1]\nhash_enable={hash_enable}\n[cap1]\nfile="{cap}"\n'
    )
    start_pylogd(rt, conf, logfile)
    clients = [inside.call(tcp_exchange, "10.62.0.2", 8000, b"x" * 100) for _ in range(3)]
    udp_ports = [inside.call(udp_from, "10.61.0.2", "10.62.0.2", 9000, 4) for _ in range(2)]
    flush_table(rt)
    wanted = 5 if hash_enable else 10
    wait_for(lambda: sum(r["ct.event"] == 4 for r in daemon_records(cap)) >= 5, what="DESTROY records")
    recs = daemon_records(cap)
    assert len(recs) >= wanted
    public_hex = socket.inet_aton(public).hex()
    # what an investigator has: a public address and port seen outside -> the inside host and port
    seen: dict[tuple[int, str, int], dict[int, dict]] = {}
    for r in recs:
        if r["reply.ip.daddr"] != public_hex:
            continue
        assert r["nat.snat"] == 1 and r["nat.dnat"] == 0
        seen.setdefault((r["orig.ip.protocol"], r["reply.ip.daddr"], r["reply.l4.dport"]), {})[r["ct.event"]] = r
    expected = {(6, "10.61.0.2", p) for _a, p in clients} | {(17, "10.61.0.2", p) for p in udp_ports}
    found = set()
    for (proto, _pub, pport), events in seen.items():
        lo, hi = (20000, 20099) if hash_enable == 0 else (30000, 30099)
        assert lo <= pport <= hi  # the translated port, not the inside one
        assert set(events) == ({4} if hash_enable else {1, 4})
        for r in events.values():
            found.add((proto, socket.inet_ntoa(bytes.fromhex(r["orig.ip.saddr"])), r["orig.l4.sport"]))
        d = events[4]
        assert d["orig.raw.pktcount"] >= (4 if proto == 17 else 3) and d["orig.raw.pktlen"] > 0
        if proto == 6:
            assert d["reply.raw.pktcount"] >= 3 and d["reply.raw.pktlen"] > 100
        start = d["flow.start.sec"] + d["flow.start.usec"] / 1e6
        end = d["flow.end.sec"] + d["flow.end.usec"] / 1e6
        assert 0 <= end - start < 30 and abs(end - time.time()) < 30
    assert found == expected


def test_daemon_sigusr2_with_two_stacks_sharing_the_instance(ctns: Netns, tmp_path: Path) -> None:
    conf, logfile = tmp_path / "pylogd.conf", tmp_path / "pylogd.log"
    conf.write_text(
        f'[global]\nlogfile="{logfile}"\nloglevel=1\nplugin="{TEST_PLUGINS}"\n'
        "stack=ct1:NFCT,cap1:CAPTURE\nstack=ct1:NFCT,cap2:CAPTURE\n[ct1]\n"
        f'[cap1]\nfile="{tmp_path}/cap1.json"\n[cap2]\nfile="{tmp_path}/cap2.json"\n'
    )
    daemon = start_pylogd(ctns, conf, logfile)
    sport = ctns.call(udp_from, "127.0.0.1", "127.0.0.2", 4060)
    wait_for(lambda: "hash_entries=1" in _stats(daemon, logfile), what="the flow in the table")
    daemon.signal(signal.SIGUSR2)  # ulogd 2.0.8 segfaults here
    for name in ("cap1.json", "cap2.json"):
        recs = wait_for(lambda n=name: daemon_records(tmp_path / n), what=f"records in {name}")
        assert [(r["ct.event"], r["orig.l4.sport"]) for r in recs] == [(2, sport)]
    assert daemon.alive() and daemon.stop() == 0


def _stats(daemon, logfile: Path) -> str:
    daemon.signal(signal.SIGUSR1)
    time.sleep(0.1)
    return read_text(logfile)


def test_filter_semantics_across_families() -> None:
    from pylogd.plugins.inputs.nfct import make_filter as from_rules
    from pylogd.plugins.inputs.nfct import parse_net_filter, parse_proto_filter

    def make_filter(src: str, dst: str, proto: str):  # from the option texts, as configure() does
        return from_rules(parse_net_filter(src), parse_net_filter(dst), parse_proto_filter(proto))

    from pylogd.conntrack import F_ORIG_DST, F_ORIG_PROTO, F_ORIG_SRC, NFIELDS

    def rec(src: str, proto: int = 6) -> list:
        r: list = [None] * NFIELDS
        fam = socket.AF_INET6 if ":" in src else socket.AF_INET
        r[F_ORIG_SRC] = socket.inet_pton(fam, src)
        r[F_ORIG_DST] = r[F_ORIG_SRC]
        r[F_ORIG_PROTO] = proto
        return r

    v4only = make_filter("10.0.0.0/8", "", "")
    assert v4only(rec("10.1.2.3")) and not v4only(rec("11.0.0.1")) and not v4only(rec("fd00::1"))
    both = make_filter("10.0.0.0/8, fd00::/16, !fd00:1::/32", "", "")
    assert both(rec("fd00:2::5")) and not both(rec("fd00:1::5")) and both(rec("10.9.9.9"))
    exclude = make_filter("!192.168.0.0/16", "", "!icmp")
    assert exclude(rec("fd00::1")) and exclude(rec("10.0.0.1")) and not exclude(rec("192.168.3.4"))
    assert not exclude(rec("10.0.0.1", 1)) and exclude(rec("10.0.0.1", 17))
    assert make_filter("", "", "") is None


def test_daemon_after_dropping_privileges_still_dumps_the_table(ctns: Netns, tmp_path: Path) -> None:
    """-u nobody keeps CAP_NET_ADMIN: SIGUSR2's conntrack dump works after the switch (ctnetlink needs it)."""
    tmp_path.chmod(0o777)  # nobody writes the capture there after the switch
    conf, logfile = tmp_path / "pylogd.conf", tmp_path / "pylogd.log"
    conf.write_text(
        f'[global]\nlogfile="{logfile}"\nloglevel=1\nplugin="{TEST_PLUGINS}"\n'
        f'stack=ct1:NFCT,cap1:CAPTURE\n[ct1]\n[cap1]\nfile="{tmp_path}/cap1.json"\n'
    )
    daemon = ctns.spawn([*pylogd_command(), "-c", str(conf), "-u", "nobody"], name="pylogd")
    wait_for(lambda: "running as nobody" in read_text(logfile), what="the switch to nobody")
    assert "keeping CAP_NET_ADMIN" in read_text(logfile)
    status = Path(f"/proc/{daemon.pid}/status").read_text()
    assert int(re.search(r"CapEff:\s+(\w+)", status).group(1), 16) == 1 << 12
    sport = ctns.call(udp_from, "127.0.0.1", "127.0.0.2", 4070)
    wait_for(lambda: "hash_entries=1" in _stats(daemon, logfile), what="the flow in the table")
    daemon.signal(signal.SIGUSR2)
    recs = wait_for(lambda: daemon_records(tmp_path / "cap1.json"), what="the dump")
    assert [(r["ct.event"], r["orig.l4.sport"]) for r in recs] == [(2, sport)]
    assert "failed handling SIGUSR2" not in read_text(logfile)
    assert daemon.alive() and daemon.stop() == 0
