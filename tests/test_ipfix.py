"""IPFIX: the messages (read back by a reader that learns templates as a collector does) and the output
end to end in a NAT router namespace, decoded by real collectors: nfdump's nfcapd (every flow with
its real times, both directions and the post-NAT address and port the server saw; no sequence
failure), tshark started mid-stream, pmacct's nfacctd; ulogd 2.0.8's IPFIX beside it on the same
flows shows what it gets wrong."""

from __future__ import annotations

import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TEST_PLUGINS
from ipfixkit import Reader
from rig import Netns, Rig, pylogd_command, read_text, start_pylogd, wait_for
from test_nfct import NAT_RULES
from test_nfct import router as nat_router
from test_transport import make_certificates

from pylogd.ipfix import CT_DESTROY, CT_NEW, CT_UPDATE, STATISTICS, Exporter, FlowEncoder

ULOGD = "/usr/sbin/ulogd"
NFCAPD, NFDUMP, TSHARK, NFACCTD = "/usr/bin/nfcapd", "/usr/bin/nfdump", "/usr/bin/tshark", "/usr/sbin/nfacctd"

V4_A, V4_B, V4_PUB = socket.inet_aton("10.0.0.2"), socket.inet_aton("192.0.2.1"), socket.inet_aton("198.51.100.7")
V6_A, V6_B, V6_PUB = (socket.inet_pton(socket.AF_INET6, f"2001:db8::{i}") for i in (2, 1, 7))


def flows(n: int, first_port: int = 1000) -> list[bytes]:
    """``n`` tagged records of every shape, in turn."""
    encode = FlowEncoder().encode
    out = []
    for i in range(n):
        port = first_port + i
        shape = i % 5
        v6 = shape >= 3
        a, b, pub = (V6_A, V6_B, V6_PUB) if v6 else (V4_A, V4_B, V4_PUB)
        nat = (pub, b, 40000 + i, 443) if shape in (1, 2, 4) else None
        event = (CT_NEW, CT_DESTROY, CT_UPDATE, CT_DESTROY, CT_NEW)[shape]
        out.append(encode(a, b, port, 443, 6, 1_000_000 + i, 2_000_000 + i, i, 100 * i, 2 * i, 200 * i, i, nat, event))
    return out


# -- the messages ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [10, 9])
def test_every_record_reads_back_in_messages_within_the_mtu(version: int) -> None:
    ex = Exporter(version=version, domain=7, mtu=512)
    reader = Reader()
    entries = flows(200)
    messages = ex.messages(entries, 1000.0)
    got = []
    for m in messages:
        assert len(m.data) <= 512
        d = reader.read(m.data)
        assert d.domain == 7 and not d.unknown_sets
        got += d.records
        ex.sent(m, 1000.0)
    assert len(got) == 200 and ex.records_sent == 200
    for i, rec in enumerate(got):
        shape = i % 5
        assert rec[7] == 1000 + i and rec[11] == 443 and rec[4] == 6
        assert rec[152] == 1_000_000 + i and rec[153] == 2_000_000 + i
        assert (rec[2], rec[1], rec[24], rec[23], rec[148]) == (i, 100 * i, 2 * i, 200 * i, i)
        if shape in (1, 2, 4):
            pub = "198.51.100.7" if shape < 3 else "2001:db8::7"
            post_source = rec[225] if shape < 3 else rec[281]
            assert (post_source, rec[227], rec[228]) == (pub, 40000 + i, 443)
            if shape == 2:
                assert 230 not in rec  # an UPDATE carries no NAT event
            else:
                created = shape == 4
                assert rec[230] == (4 if created else 5)
                assert rec[323] == (rec[152] if created else rec[153])
        else:
            assert 225 not in rec and 281 not in rec and 230 not in rec


def test_sequence_numbers_count_records_before_the_message_and_survive_a_failed_send() -> None:
    ex = Exporter(version=10, domain=1, mtu=300)
    entries = flows(60)
    first = ex.messages(entries, 5.0)
    seqs = [struct.unpack_from(">I", m.data, 8)[0] for m in first]
    assert seqs[0] == 0 and seqs == [sum(m.records for m in first[:k]) for k in range(len(first))]
    # two messages went, then the send failed: the rest is built again, numbered the same
    for m in first[:2]:
        ex.sent(m, 5.0)
    rest = entries[sum(m.flows for m in first[:2]) :]
    again = ex.messages(rest, 5.0)
    assert [struct.unpack_from(">I", m.data, 8)[0] for m in again] == seqs[2:]
    assert [m.flows for m in again] == [m.flows for m in first[2:]]


def test_v9_counts_packets_and_records_in_its_header() -> None:
    ex = Exporter(version=9, domain=3, mtu=400)
    for k, m in enumerate(ex.messages(flows(50), 9.0)):
        version, count, _up, _secs, seq, domain = struct.unpack_from(">HHIIII", m.data)
        assert (version, domain, seq) == (9, 3, k)
        assert count == m.flows + len(m.templates)
        ex.sent(m, 9.0)


def template_ids(ex: Exporter, entries: list[bytes], now: float) -> list[list[int]]:
    """The template records each message carries, the messages sent."""
    out = []
    for m in ex.messages(entries, now):
        out.append(Reader().read(m.data).templates)
        ex.sent(m, now)
    return out


def test_templates_go_before_first_use_and_again_by_count_and_by_time() -> None:
    v4 = [e for e in flows(200) if e[0] == 0]  # one template only
    ex = Exporter(version=10, domain=1, mtu=256, refresh_seconds=30, refresh_messages=3)
    carried = template_ids(ex, v4, 100.0)
    assert [bool(t) for t in carried[:7]] == [True, False, False, True, False, False, True]
    ex = Exporter(version=10, domain=1, mtu=256, refresh_seconds=30, refresh_messages=0)
    assert [bool(t) for t in template_ids(ex, v4[:4], 100.0)] == [True, False]
    assert not any(template_ids(ex, v4[:4], 129.0))
    assert template_ids(ex, v4[:4], 130.0)[0] == [256]
    ex.new_session()  # a new connection: every template again
    assert template_ids(ex, v4[:4], 131.0)[0] == [256]


def test_always_and_never() -> None:
    entries = flows(40)
    always = template_ids(Exporter(version=10, domain=1, mtu=512, send_template="always"), entries, 1.0)
    assert all(always)
    never = Exporter(version=10, domain=1, mtu=512, send_template="never")
    assert not any(template_ids(never, entries, 1.0)) and not never.statistics_due(1.0)


def test_statistics_go_under_domain_0_with_their_own_numbers() -> None:
    ex = Exporter(version=10, domain=9, mtu=512, refresh_seconds=10)
    for m in ex.messages(flows(30), 1.0):
        ex.sent(m, 1.0)
    assert ex.statistics_due(1.0)
    stats = ex.statistics_message(1.0)
    d = Reader().read(stats.data)
    assert (d.domain, d.sequence, d.templates) == (0, 0, [256 + STATISTICS])
    assert d.records[0][149] == 9 and d.records[0][41] == ex.messages_sent and d.records[0][42] == 30
    ex.sent(stats, 1.0)
    assert not ex.statistics_due(5.0) and ex.statistics_due(11.0)
    assert Reader().read(ex.statistics_message(11.0).data).sequence == 1
    assert ex.sequence == 30  # the flows' numbers did not move


def test_an_mtu_that_cannot_hold_a_record_is_refused() -> None:
    with pytest.raises(ValueError, match="mtu 60"):
        Exporter(version=10, domain=1, mtu=60).messages(flows(1), 1.0)


# -- end to end --------------------------------------------------------------------------------------

SERVER = """
import socket, sys, threading
port = int(sys.argv[1])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", port))
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", port)); t.listen(200)
def udp():
    while True:
        data, peer = u.recvfrom(100)
        u.sendto(f"{peer[0]} {peer[1]}".encode(), peer)
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
while True:
    c, peer = t.accept()
    c.recv(100)
    c.sendall(f"{peer[0]} {peer[1]}".encode())
    c.close()
"""


def clients(dst: str, port: int, n_tcp: int, n_udp: int) -> list[tuple[int, int, str, int]]:
    """Flows to the server, each told what the server saw: (protocol, inside port, public address, port)."""
    out = []
    for _ in range(n_tcp):
        with socket.create_connection((dst, port), timeout=5) as c:
            c.sendall(b"hi")
            seen = c.recv(100).decode().split()
            out.append((6, c.getsockname()[1], seen[0], int(seen[1])))
    for _ in range(n_udp):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(5)
            u.sendto(b"hi", (dst, port))
            seen = u.recv(100).decode().split()
            out.append((17, u.getsockname()[1], seen[0], int(seen[1])))
    return out


def router(rig: Rig) -> tuple[Netns, Netns, Netns]:
    """test_nfct's NAT router (inside 10.61.0.2, router 10.62.0.1 outside), masquerading TCP and UDP, and a
    server outside that answers each flow with the address and port it saw."""
    inside, rt, outside = nat_router(rig)
    rt.nft(NAT_RULES.replace("NAT", "masquerade to :20000-29999"))
    server = outside.spawn([sys.executable, "-c", SERVER, "8000"], name="server")
    wait_for(lambda: "ready" in server.output(), what="the server")
    return inside, rt, outside


class Nfcapd:
    """nfdump's collector on a UDP port in ``ns``; its flows are read once it has stopped."""

    def __init__(self, ns: Netns, tmp: Path, port: int, name: str) -> None:
        self.ns, self.port = ns, port
        self.dir = tmp / name
        self.dir.mkdir()
        self.proc = ns.spawn([NFCAPD, "-w", str(self.dir), "-b", "127.0.0.1", "-p", str(port), "-t", "3600"], name=name)
        wait_for(lambda: "Startup" in self.proc.output(), what=f"{name} start")

    def stop(self) -> None:
        # what an exporter sent is in the socket's queue once its send returned: nfcapd must have read
        # it all before the signal, or it stops without the last datagrams (59 of 60 flows, seen in CI)
        wait_for(lambda: self.queued() == 0, what=f"nfcapd on port {self.port} to read every datagram")
        self.proc.signal(signal.SIGINT)  # it writes what it holds and stops
        self.proc.popen.wait(20)

    def queued(self) -> int:
        """Bytes waiting in the receive queue of nfcapd's UDP socket."""
        out = self.ns.run(["ss", "-H", "-u", "-l", "-n", f"sport = :{self.port}"]).stdout.split()
        return int(out[1]) if len(out) > 1 else 0

    def flows(self) -> list[list[str]]:
        fmt = "fmt:%ts|%te|%pr|%sa|%sp|%da|%dp|%nsa|%nsp|%ipkt|%ibyt|%opkt|%obyt"
        out = subprocess.run([NFDUMP, "-q", "-R", str(self.dir), "-o", fmt], capture_output=True, text=True, check=True)
        return [[f.strip() for f in line.split("|")] for line in out.stdout.splitlines() if line.strip()]

    def sequence_failures(self) -> int:
        out = subprocess.run([NFDUMP, "-R", str(self.dir), "-I"], capture_output=True, text=True, check=True).stdout
        return int(re.search(r"Sequence failures: (\d+)", out).group(1))  # type: ignore[union-attr]


def need(*paths: str) -> None:
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (scripts/test-deps installs them)")


def pylogd_conf(tmp: Path, ipfix_options: str, ct_options: str = "") -> Path:
    conf = tmp / "pylogd.conf"
    conf.write_text(
        f'[global]\nlogfile="{tmp}/pylogd.log"\nloglevel=3\nplugin="{TEST_PLUGINS}"\n'
        "stack=ct1:NFCT,ipfix1:IPFIX\nstack=ct1:NFCT,cap1:CAPTURE\n"
        f"[ct1]\n{ct_options}\n[ipfix1]\n{ipfix_options}\n[cap1]\nfile={tmp}/flows.json\n"
    )
    return conf


def captured(tmp: Path) -> int:
    return len(read_text(tmp / "flows.json").splitlines())


def test_nat_router_every_flow_in_nfdump_with_its_mapping_where_ulogd_loses_them(rig: Rig, tmp_path: Path) -> None:
    need(NFCAPD, NFDUMP, ULOGD)
    inside, rt, _outside = router(rig)
    ours, theirs = Nfcapd(rt, tmp_path, 4739, "nfcapd-pylogd"), Nfcapd(rt, tmp_path, 4740, "nfcapd-ulogd")
    # ulogd's own stack and options, unchanged but for where the collector listens
    ipfix = "oid=1\nhost=127.0.0.1\nport={}\nproto=udp\n"
    (tmp_path / "ulogd.conf").write_text(
        f'[global]\nlogfile="{tmp_path}/ulogd.log"\nloglevel=1\nstack=ct1:NFCT,ipfix1:IPFIX\n'
        f"[ct1]\n[ipfix1]\n{ipfix.format(4740)}"
    )
    rt.spawn([ULOGD, "-c", str(tmp_path / "ulogd.conf")], name="ulogd")
    wait_for(lambda: "entering main loop" in read_text(tmp_path / "ulogd.log"), what="ulogd start")
    daemon = start_pylogd(rt, pylogd_conf(tmp_path, ipfix.format(4739)), tmp_path / "pylogd.log")
    began = time.time()
    truth = inside.call(clients, "10.62.0.2", 8000, 40, 20)
    rt.run(["conntrack", "-F"])  # every flow ends now: hash mode exports it
    wait_for(lambda: captured(tmp_path) >= 60, what="60 flows read by pylogd")
    time.sleep(0.5)  # ulogd reads the same events
    assert daemon.stop() == 0  # what it accepted is sent before it exits
    ours.stop()
    theirs.stop()

    # the collectors' own flows on the router's loopback are tracked and exported too
    got = [r for r in ours.flows() if r[3] == "10.61.0.2"]
    assert len(got) == 60, got
    assert ours.sequence_failures() == 0
    mapping = {(r[2], r[3], int(r[4])): (r[7], int(r[8])) for r in got}
    proto = {6: "TCP", 17: "UDP"}
    assert mapping == {(proto[p], "10.61.0.2", port): (pub, pport) for p, port, pub, pport in truth}
    for r in got:
        first = time.mktime(time.strptime(r[0][:19], "%Y-%m-%d %H:%M:%S"))
        assert began - 2 <= first <= time.time() + 1, r  # real times, not 1970
        assert int(r[9]) >= 1 and int(r[11]) >= 1, r  # both directions counted
    # ulogd 2.0.8 beside it: times in 1970, no post-NAT address, both directions in one counter
    theirs_flows = [r for r in theirs.flows() if r[3] == "10.61.0.2"]
    assert all(r[0].startswith("1970") for r in theirs_flows), theirs_flows[:3]
    assert not [r for r in theirs_flows if r[7] == "10.62.0.1"]
    assert all(int(r[11]) == 0 for r in theirs_flows)
    print(f"pylogd: {len(got)} flows, 60 NAT mappings; ulogd: {len(theirs_flows)} flows, 0 NAT mappings")


@pytest.mark.parametrize("version", [10, 9])
def test_no_sequence_failure_across_hundreds_of_messages(rig: Rig, tmp_path: Path, version: int) -> None:
    need(NFCAPD, NFDUMP)
    ns = rig.netns("seq")
    ns.nft("table inet t {\n chain out {\n type filter hook output priority 0; ct state new accept\n }\n}\n")
    ns.run("sysctl -qw net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_timestamp=1")
    collector = Nfcapd(ns, tmp_path, 2055, "nfcapd")
    options = f"oid=5\nhost=127.0.0.1\nport=2055\nproto=udp\nmtu=300\nversion={version}\ntemplate_refresh_messages=7\n"
    daemon = start_pylogd(ns, pylogd_conf(tmp_path, options, "hash_enable=0"), tmp_path / "pylogd.log")
    sent = 0
    for burst in (1, 30, 2, 90, 5, 60, 1, 120, 3, 40):  # batches of every size
        ns.call(udp_burst, 20000 + sent, burst)
        sent += burst
        time.sleep(0.05)
    ns.run(["conntrack", "-F"])
    wait_for(lambda: captured(tmp_path) >= 2 * sent, what="NEW and DESTROY of every flow")
    assert daemon.stop() == 0
    collector.stop()
    # a 300-byte message holds at most 4 of these records: 704 records took at least 176 messages
    assert len([r for r in collector.flows() if r[5] == "127.0.0.2"]) == 2 * sent  # not the export's own flow
    assert collector.sequence_failures() == 0


def udp_burst(first_port: int, n: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(n):
            s.sendto(b"x", ("127.0.0.2", first_port + i))


def test_tshark_started_mid_stream_decodes_everything_after_one_refresh(rig: Rig, tmp_path: Path) -> None:
    need(TSHARK)
    ns = rig.netns("ts")
    ns.nft("table inet t {\n chain out {\n type filter hook output priority 0; ct state new accept\n }\n}\n")
    sink = ns.spawn([sys.executable, "-c", UDP_SINK, "4739"], name="sink")  # tshark only listens in
    wait_for(lambda: "ready" in sink.output(), what="the UDP sink")
    refresh = 5
    options = f"oid=3\nhost=127.0.0.1\nport=4739\nproto=udp\ntemplate_refresh=0\ntemplate_refresh_messages={refresh}\n"
    start_pylogd(ns, pylogd_conf(tmp_path, options, "hash_enable=0"), tmp_path / "pylogd.log")
    port = 30000
    for _ in range(3):  # tshark is not capturing yet: these templates are lost to it
        ns.call(udp_burst, port, 4)
        port += 4
    wait_for(lambda: captured(tmp_path) >= 12, what="the first flows")
    pcap = tmp_path / "mid.pcap"
    capture = ns.spawn([TSHARK, "-i", "lo", "-f", "udp port 4739", "-w", str(pcap)], name="tshark")
    wait_for(lambda: "Capturing on" in capture.output(), what="tshark capturing")
    before = captured(tmp_path)
    for _ in range(3 * refresh):  # a message per burst at least
        ns.call(udp_burst, port, 3)
        port += 3
        target = before + (port - 30012)
        wait_for(lambda target=target: captured(tmp_path) >= target, what="the burst's flows")
        time.sleep(0.02)
    time.sleep(0.3)
    capture.signal(signal.SIGINT)
    capture.popen.wait(20)
    fields = ["frame.number", "cflow.od_id", "cflow.template_id", "cflow.srcaddr", "udp.payload"]
    out = subprocess.run(
        [TSHARK, "-r", str(pcap), "-d", "udp.port==4739,cflow", "-T", "fields", *[f"-e{f}" for f in fields]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    frames = [line.split("\t") for line in out.splitlines()]
    flow_frames = [f for f in frames if f[1] == "3"]  # not the statistics (domain 0)
    first = next(k for k, f in enumerate(flow_frames) if f[2])
    assert first < refresh, "no template within one refresh interval"
    print(f"tshark: {first} messages without a template before the first refresh")
    reader = Reader()
    decoded = 0
    for f in flow_frames[first:]:
        ours = reader.read(bytes.fromhex(f[4]))
        theirs = f[3].split(",") if f[3] else []
        assert theirs == [r[8] for r in ours.records], f  # tshark decodes every record, as we do
        decoded += len(theirs)
    assert decoded >= 2 * refresh


UDP_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
while True:
    s.recv(65535)
"""

COLLECTOR = """
import socket, struct, sys
mode, port, out = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], "a")
def keep(message):
    out.write(message.hex() + "\\n")
    out.flush()
if mode == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind(("127.0.0.1", port))
    print("ready", flush=True)
    while True:
        keep(s.recv(65535))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(5)
if mode == "tls":
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[4], sys.argv[5])
print("ready", flush=True)
while True:
    c, _ = s.accept()
    if mode == "tls":
        c = context.wrap_socket(c, server_side=True)
    out.write("connection\\n")
    buf = b""
    while True:
        data = c.recv(65536)
        if not data:
            break
        buf += data
        while len(buf) >= 4 and len(buf) >= struct.unpack_from(">H", buf, 2)[0]:
            n = struct.unpack_from(">H", buf, 2)[0]
            keep(buf[:n])
            buf = buf[n:]
    c.close()
"""


def collected(path: Path) -> list[bytes | None]:
    """The messages a COLLECTOR kept, None where a new connection began."""
    return [None if line == "connection" else bytes.fromhex(line) for line in read_text(path).splitlines()]


def test_the_exporters_counts_reach_the_collector_under_domain_0(rig: Rig, tmp_path: Path) -> None:
    ns = rig.netns("st")
    ns.nft("table inet t {\n chain out {\n type filter hook output priority 0; ct state new accept\n }\n}\n")
    kept = tmp_path / "collected"
    collector = ns.spawn([sys.executable, "-c", COLLECTOR, "udp", "4739", str(kept)], name="collector")
    wait_for(lambda: "ready" in collector.output(), what="the collector")
    options = "oid=11\nhost=127.0.0.1\nport=4739\nproto=udp\ntemplate_refresh=1\n"
    daemon = start_pylogd(ns, pylogd_conf(tmp_path, options, "hash_enable=0"), tmp_path / "pylogd.log")
    ns.call(udp_burst, 40000, 20)
    wait_for(lambda: captured(tmp_path) >= 20, what="20 flows")
    time.sleep(1.1)  # the next write carries the counts again
    ns.call(udp_burst, 40100, 5)
    wait_for(lambda: captured(tmp_path) >= 25, what="5 more flows")
    assert daemon.stop() == 0
    reader = Reader()
    flows, counts = 0, []
    for message in collected(kept):
        assert message is not None
        d = reader.read(message)
        if d.domain == 0:
            counts.append(d.records[0])
        else:
            assert d.domain == 11
            flows += len(d.records)
    assert flows >= 25  # NEW events, and the exporter's own flow
    assert len(counts) >= 2 and all(c[149] == 11 and c[166] == 0 for c in counts)
    assert counts[0][42] == 0 and 20 <= counts[-1][42] < flows  # counts of what went before it


def test_tcp_templates_open_every_connection_and_a_collector_restart_loses_nothing(rig: Rig, tmp_path: Path) -> None:
    ns = rig.netns("tcp")
    ns.nft("table inet t {\n chain out {\n type filter hook output priority 0; ct state new accept\n }\n}\n")
    kept = tmp_path / "collected"
    options = "oid=12\nhost=127.0.0.1\nport=4739\n"  # ulogd's default: proto=tcp
    # started before the collector: the flows wait until it listens
    daemon = start_pylogd(ns, pylogd_conf(tmp_path, options, "hash_enable=0"), tmp_path / "pylogd.log")
    ns.call(udp_burst, 41000, 30)
    wait_for(lambda: captured(tmp_path) >= 30, what="30 flows")
    collector = ns.spawn([sys.executable, "-c", COLLECTOR, "tcp", "4739", str(kept)], name="collector")
    wait_for(lambda: "ready" in collector.output(), what="the collector")
    ns.call(udp_burst, 41100, 30)
    wait_for(lambda: len([m for m in collected(kept) if m]) >= 3, what="messages")
    collector.stop()  # killed mid-stream
    ns.call(udp_burst, 41200, 30)
    wait_for(lambda: captured(tmp_path) >= 90, what="90 flows")
    collector = ns.spawn([sys.executable, "-c", COLLECTOR, "tcp", "4739", str(kept)], name="collector2")
    wait_for(lambda: "ready" in collector.output(), what="the collector again")
    ns.call(udp_burst, 41300, 30)
    wait_for(lambda: captured(tmp_path) >= 120, what="120 flows")
    assert daemon.stop() == 0
    ports: list[int] = []
    connections = 0
    reader = Reader()
    for message in collected(kept):
        if message is None:  # a new connection: the collector knows no template
            connections += 1
            reader = Reader()
            first = True
            continue
        d = reader.read(message)
        assert not d.unknown_sets, "a data set came before its template on this connection"
        if first and d.domain == 12:
            assert d.templates, "the first message of a connection carries the templates"
        first = False
        ports += [r[11] for r in d.records if d.domain == 12 and r.get(12) == "127.0.0.2"]
    assert connections >= 2
    want = [p for base in (41000, 41100, 41200, 41300) for p in range(base, base + 30)]
    assert sorted(set(ports)) == want  # every flow; one the collector read as it died may come twice


def test_tls_to_a_collector_whose_certificate_is_checked(rig: Rig, tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "pki", ("127.0.0.1",))
    ns = rig.netns("tls")
    ns.nft("table inet t {\n chain out {\n type filter hook output priority 0; ct state new accept\n }\n}\n")
    kept = tmp_path / "collected"
    argv = [sys.executable, "-c", COLLECTOR, "tls", "4740", str(kept), str(certs["server"]), str(certs["server_key"])]
    collector = ns.spawn(argv, name="collector")
    wait_for(lambda: "ready" in collector.output(), what="the collector")
    options = f"oid=13\nhost=127.0.0.1\nport=4740\nproto=tls\nca_file={certs['ca']}\n"
    daemon = start_pylogd(ns, pylogd_conf(tmp_path, options, "hash_enable=0"), tmp_path / "pylogd.log")
    ns.call(udp_burst, 42000, 25)
    wait_for(lambda: len(collected(kept)) >= 3, what="the greeting and messages")
    assert daemon.stop() == 0
    reader = Reader()
    messages = [m for m in collected(kept) if m is not None]
    assert reader.read(messages[0]).templates  # the greeting, through TLS
    ports = [r[11] for m in messages[1:] for r in reader.read(m).records if r.get(12) == "127.0.0.2"]
    assert sorted(ports) == list(range(42000, 42025))


def test_tls_options_need_proto_tls_and_usable_files(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    for options, complaint in (
        ("proto=udp\nca_file=/etc/hostname\n", "ca_file applies to proto=tls"),
        (f"proto=tls\nca_file={tmp_path}/missing.pem\n", "missing.pem"),
    ):
        conf.write_text(f"[global]\nstack=ct1:NFCT,ipfix1:IPFIX\n[ct1]\n[ipfix1]\noid=1\nhost=127.0.0.1\n{options}")
        done = subprocess.run([*pylogd_command(), "--check", "-c", str(conf)], capture_output=True, text=True)
        assert done.returncode != 0 and complaint in done.stderr, done.stderr


NFACCTD_CONF = """daemonize: false
nfacctd_ip: 127.0.0.1
nfacctd_port: {port}
plugins: print
aggregate: proto, src_host, src_port, post_nat_src_host, post_nat_src_port
print_output: csv
print_output_file: {out}
print_output_file_append: true
print_refresh_time: 1
"""


def test_nfacctd_aggregates_post_nat_source_as_conntrack_translated_it(rig: Rig, tmp_path: Path) -> None:
    need(NFACCTD)
    inside, rt, _outside = router(rig)
    out = tmp_path / "pmacct.csv"
    (tmp_path / "nfacctd.conf").write_text(NFACCTD_CONF.format(port=2100, out=out))
    collector = rt.spawn([NFACCTD, "-f", str(tmp_path / "nfacctd.conf")], name="nfacctd")
    wait_for(lambda: "waiting for NetFlow/IPFIX data" in collector.output(), what="nfacctd start")
    options = "oid=2\nhost=127.0.0.1\nport=2100\nproto=udp\n"
    start_pylogd(rt, pylogd_conf(tmp_path, options), tmp_path / "pylogd.log")
    truth = inside.call(clients, "10.62.0.2", 8000, 10, 10)
    rt.run(["conntrack", "-F"])
    proto = {6: "tcp", 17: "udp"}
    want = {(proto[p], "10.61.0.2", str(port), pub, str(pport)) for p, port, pub, pport in truth}

    def aggregated() -> set[tuple[str, ...]]:
        rows = [line.split(",") for line in read_text(out).splitlines() if not line.startswith("SRC_IP")]
        return {(r[2], r[0], r[1], r[3], r[4]) for r in rows if r[0] == "10.61.0.2"}

    wait_for(lambda: aggregated() >= want, what="nfacctd's aggregates of the 20 flows")
    assert aggregated() == want
