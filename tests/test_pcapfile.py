"""PCAPFILE: pcap files written here (struct, scapy for the packets) are read by the real daemon.

The expected PRINTPKT lines are composed from the fields of the packets written, following the
line layout of ulogd's PRINTPKT (reference section on PRINTPKT); CAPTURE shows exactly which of
NFLOG's keys PCAPFILE fills.
"""

from __future__ import annotations

import io
import json
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PYLOGD, ROOT
from daemonkit import read, wait_for
from pylogd.plugins.inputs import pcapfile
from pylogd.plugins.inputs.nflog import Nflog
from pylogd.plugins.inputs.pcapfile import Pcapfile
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Ether

from pylogd.log import Logger
from pylogd.loop import EventLoop

TEST_PLUGINS = Path(__file__).resolve().parent / "plugins" / "testplugins.py"
PRINT_STACK = "p1:PCAPFILE,base1:BASE,ip2str1:IP2STR,ifi1:IFINDEX,print1:PRINTPKT,emu1:LOGEMU"
CAPTURE_STACK = "p1:PCAPFILE,cap1:CAPTURE"
HOST = socket.gethostname().split(".")[0]
LO = socket.if_indextoname(1)

T0 = 1700000000  # record times: T0 + i seconds, 1000*i + 7 microseconds


def pcap(frames: list[tuple[int, int, bytes]], linktype: int, order: str = "<", nano: bool = False) -> bytes:
    """A classic pcap file: (seconds, fraction, data) records after the global header."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)]
    for sec, frac, data in frames:
        out.append(struct.pack(order + "IIII", sec, frac, len(data), len(data)) + data)
    return b"".join(out)


def timed(packets: list[bytes]) -> list[tuple[int, int, bytes]]:
    return [(T0 + i, 1000 * i + 7, p) for i, p in enumerate(packets)]


def tcp_flags(t: TCP) -> str:
    return "".join(
        f"{name} "
        for name, bit in (("URG", 32), ("ACK", 16), ("PSH", 8), ("RST", 4), ("SYN", 2), ("FIN", 1))
        if int(t.flags) & bit
    )


def l4_part(p) -> str:
    if TCP in p:
        t = p[TCP]
        return (
            f"PROTO=TCP SPT={t.sport} DPT={t.dport} SEQ={t.seq} ACK={t.ack} WINDOW={t.window} "
            f"{tcp_flags(t)}URGP={t.urgptr} "
        )
    if UDP in p:
        u = p[UDP]
        return f"PROTO=UDP SPT={u.sport} DPT={u.dport} LEN={u.len} "
    e = p[ICMPv6EchoRequest]
    return f"PROTO=ICMPv6 TYPE={e.type} CODE={e.code} ID={e.id} SEQ={e.seq} "


def l3_part(data: bytes) -> str:
    """The layer-3 part of a PRINTPKT line for an IPv4 or IPv6 packet, from the packet's own fields."""
    if data[0] >> 4 == 4:
        p = IP(data)
        flags = "DF " if int(p.flags) & 2 else ""
        return (
            f"SRC={p.src} DST={p.dst} LEN={p.len} TOS={p.tos & 0x1E:02X} PREC=0x{p.tos & 0xE0:02X} "
            f"TTL={p.ttl} ID={p.id} {flags}{l4_part(p)}"
        )
    p = IPv6(data)
    ntop = socket.inet_ntop
    src, dst = (ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, a)) for a in (p.src, p.dst))
    return f"SRC={src} DST={dst} LEN={p.plen + 40} TC={p.tc} HOPLIMIT={p.hlim} FLOWLBL={p.fl} {l4_part(p)}"


def line(sec: int, prefix: str, inname: str, mac: str, l3: str, mark: int) -> str:
    date = time.strftime("%b %e %H:%M:%S", time.localtime(sec))
    return f"{date} {HOST} {prefix} IN={inname} OUT= MAC={mac} {l3}MARK=0x{mark:x} "


def colons(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


IPV4_TCP = bytes(
    IP(src="192.0.2.1", dst="198.51.100.7", id=4321, tos=0x10, flags="DF")
    / TCP(sport=40000, dport=22, seq=123456789, flags="S", window=64240)
)
IPV4_UDP = bytes(IP(src="10.1.2.3", dst="10.3.2.1", id=9, ttl=3) / UDP(sport=5353, dport=53) / b"query")
IPV6_UDP = bytes(IPv6(src="2001:db8::1", dst="2001:db8::beef", hlim=17, fl=12345) / UDP(sport=1000, dport=2000) / b"xy")
IPV6_PING = bytes(IPv6(src="fe80::1", dst="ff02::1") / ICMPv6EchoRequest(id=77, seq=3))


class Run:
    """One daemon run over one pcap file, with a PRINTPKT/LOGEMU stack and a CAPTURE stack."""

    def __init__(self, tmp: Path, data: bytes, options: str = "", exit_at_end: int = 1) -> None:
        self.tmp = tmp
        self.file = tmp / "in.pcap"
        self.file.write_bytes(data)
        self.log, self.emu, self.cap = tmp / "pylogd.log", tmp / "emu.log", tmp / "cap.json"
        self.conf = tmp / "pylogd.conf"
        self.conf.write_text(
            f'[global]\nlogfile="{self.log}"\nloglevel=1\nplugin="{TEST_PLUGINS}"\n'
            f"stack={PRINT_STACK}\nstack={CAPTURE_STACK}\n"
            f'[p1]\nfile="{self.file}"\nexit_at_end={exit_at_end}\n{options}\n'
            f'[emu1]\nfile="{self.emu}"\nsync=1\n[cap1]\nfile="{self.cap}"\n'
        )

    def popen(self) -> subprocess.Popen:
        return subprocess.Popen(
            [*PYLOGD, "-c", str(self.conf)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def run(self) -> Run:
        proc = self.popen()
        try:
            self.stdout, self.stderr = proc.communicate(timeout=30)
        finally:
            proc.kill()
        self.rc = proc.returncode
        return self

    def lines(self) -> list[str]:
        return read(self.emu).splitlines()

    def captured(self) -> list[dict]:
        return [json.loads(x) for x in read(self.cap).splitlines()]

    def logged(self) -> str:
        return read(self.log)


def base_keys(i: int, data: bytes, family: int, proto: int, **extra) -> dict:
    """The keys PCAPFILE fills for record i of timed(), with the default options."""
    keys = {
        "raw.pkt": data.hex(),
        "raw.pktlen": len(data),
        "raw.pktcount": 1,
        "oob.prefix": "",
        "oob.time.sec": T0 + i,
        "oob.time.usec": 1000 * i + 7,
        "oob.mark": 0,
        "oob.hook": 1,
        "oob.family": family,
        "oob.protocol": proto,
        "raw.label": 0,
    }
    keys.update(extra)
    return keys


def test_raw_link_type_lines_and_keys(tmp_path):
    packets = [IPV4_TCP, IPV4_UDP, IPV6_UDP, IPV6_PING]
    r = Run(tmp_path, pcap(timed(packets), 101), 'prefix="TRY: "\nmark=42\nifindex=1').run()
    assert r.rc == 0, r.stderr
    assert r.lines() == [line(T0 + i, "TRY: ", LO, "", l3_part(p), 42) for i, p in enumerate(packets)]
    fams = [(2, 0x0800), (2, 0x0800), (10, 0x86DD), (10, 0x86DD)]
    assert r.captured() == [
        base_keys(i, p, f, pr, **{"oob.prefix": "TRY: ", "oob.mark": 42, "oob.ifindex_in": 1})
        for i, (p, (f, pr)) in enumerate(zip(packets, fams, strict=True))
    ]
    assert f"{r.file}: end of file, 4 records, 4 packets emitted, 0 skipped" in r.logged()
    assert "exit_at_end: all files read, exiting" in r.logged()
    assert "SIGTERM" not in r.logged()  # nobody sent one


def test_defaults_hook_and_label(tmp_path):
    r = Run(tmp_path, pcap(timed([IPV4_UDP]), 101), "hook=3\nnumeric_label=7").run()
    assert r.rc == 0, r.stderr
    # no prefix option: an empty prefix, no input interface, mark 0
    assert r.lines() == [line(T0, "", "", "", l3_part(IPV4_UDP), 0)]
    assert r.captured() == [base_keys(0, IPV4_UDP, 2, 0x0800, **{"oob.hook": 3, "raw.label": 7})]


def test_ethernet_ip_arp_padding_and_skipped_ethertypes(tmp_path):
    small = bytes(IP(src="10.0.0.1", dst="10.0.0.2", id=1) / UDP(sport=7, dport=9))  # 28 bytes: padded on the wire
    arp = bytes(ARP(op=1, hwsrc="02:00:00:00:00:0a", psrc="10.0.0.10", pdst="10.0.0.20"))
    eth = [
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x0800),
        Ether(src="02:00:00:00:00:03", dst="02:00:00:00:00:04", type=0x86DD),
        Ether(src="02:00:00:00:00:0a", dst="ff:ff:ff:ff:ff:ff", type=0x0806),
        Ether(src="02:00:00:00:00:0b", dst="01:80:c2:00:00:0e", type=0x88CC),  # LLDP: skipped
    ]
    hdrs = [bytes(e) for e in eth]
    frames = [
        hdrs[0] + small + b"\0" * (46 - len(small)),
        hdrs[1] + IPV6_UDP,
        hdrs[2] + arp,
        hdrs[3] + b"\x02\x07" * 20,
    ]
    recs = timed(frames)
    r = Run(tmp_path, pcap(recs, 1), "ifindex=1").run()
    assert r.rc == 0, r.stderr
    # ARP is family 3: PRINTPKT prints its addresses and operation
    assert r.lines() == [
        line(T0, "", LO, colons(hdrs[0]), l3_part(small), 0),
        line(T0 + 1, "", LO, colons(hdrs[1]), l3_part(IPV6_UDP), 0),
        line(T0 + 2, "", LO, colons(hdrs[2]), "SRC=10.0.0.10 DST=10.0.0.20 PROTO=ARP REQUEST ", 0),
    ]

    def eth_keys(i: int, l3: bytes, family: int, proto: int) -> dict:
        mac = {"raw.mac": hdrs[i].hex(), "raw.mac_len": 14, "raw.type": 1}
        saddr = {"raw.mac.saddr": hdrs[i][6:12].hex(), "raw.mac.addrlen": 6, "oob.ifindex_in": 1}
        return base_keys(i, l3, family, proto, **mac, **saddr)

    # the padding is not part of raw.pkt, as in the kernel
    assert r.captured() == [
        eth_keys(0, small, 2, 0x0800),
        eth_keys(1, IPV6_UDP, 10, 0x86DD),
        eth_keys(2, arp, 3, 0x0806),
    ]
    assert f"{r.file}: end of file, 4 records, 3 packets emitted, 1 skipped" in r.logged()


def test_arp_is_decoded_by_base(tmp_path):
    arp = bytes(
        Ether(src="02:00:00:00:00:0a", dst="ff:ff:ff:ff:ff:ff")
        / ARP(op=2, hwsrc="02:00:00:00:00:0a", psrc="10.9.8.7", pdst="10.9.8.6")
    )
    r = Run(tmp_path, pcap(timed([arp]), 1))
    r.conf.write_text(r.conf.read_text().replace(CAPTURE_STACK, "p1:PCAPFILE,base1:BASE,cap1:CAPTURE"))
    r.run()
    assert r.rc == 0, r.stderr
    (rec,) = r.captured()
    assert (rec["arp.operation"], rec["arp.saddr"], rec["arp.daddr"]) == (2, "0a090807", "0a090806")


@pytest.mark.parametrize(
    ("order", "nano", "linktype", "packets"),
    [
        ("<", True, 228, [IPV4_TCP, IPV4_UDP]),
        (">", False, 229, [IPV6_UDP, IPV6_PING]),
        (">", True, 101, [IPV6_PING, IPV4_TCP]),
        ("<", False, 1, [bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(IPV4_UDP))]),
    ],
)
def test_byte_orders_timestamp_units_and_link_types(tmp_path, order, nano, linktype, packets):
    # times spread over years, with fractions that differ in micro- and nanosecond files
    stamps = [(1234567890, 999999), (1893456000 + 86399, 1)]
    frac = (lambda us: us * 1000 + 999) if nano else (lambda us: us)
    recs = [(s, frac(us), p) for (s, us), p in zip(stamps, packets, strict=False)]
    r = Run(tmp_path, pcap(recs, linktype, order, nano), "ifindex=1").run()
    assert r.rc == 0, r.stderr
    l3s = [p[14:] if linktype == 1 else p for p in packets]
    macs = [colons(p[:14]) if linktype == 1 else "" for p in packets]
    assert r.lines() == [line(s, "", LO, m, l3_part(p), 0) for (s, _), m, p in zip(stamps, macs, l3s, strict=False)]
    got = [(c["oob.time.sec"], c["oob.time.usec"], c["raw.pkt"]) for c in r.captured()]
    assert got == [(s, us, p.hex()) for (s, us), p in zip(stamps, l3s, strict=False)]


def test_linux_sll(tmp_path):
    def sll(pkttype: int, addr: bytes, proto: int) -> bytes:
        return struct.pack("!HHH8sH", pkttype, 1, len(addr), addr.ljust(8, b"\0"), proto)

    addr = bytes.fromhex("020000000042")
    frames = [sll(0, addr, 0x0800) + IPV4_TCP, sll(4, b"", 0x86DD) + IPV6_UDP, sll(0, addr, 0x88CC) + b"x" * 30]
    r = Run(tmp_path, pcap(timed(frames), 113)).run()
    assert r.rc == 0, r.stderr
    assert r.lines() == [line(T0, "", "", "", l3_part(IPV4_TCP), 0), line(T0 + 1, "", "", "", l3_part(IPV6_UDP), 0)]
    assert r.captured() == [
        base_keys(0, IPV4_TCP, 2, 0x0800, **{"raw.mac.saddr": addr.hex(), "raw.mac.addrlen": 6}),
        base_keys(1, IPV6_UDP, 10, 0x86DD),
    ]


@pytest.mark.parametrize("cut", ["in the data", "in the record header", "corrupt length"])
def test_damaged_file_keeps_the_records_before(tmp_path, cut):
    data = pcap(timed([IPV4_TCP, IPV4_UDP, IPV6_UDP]), 101)
    offset = 24 + 16 + len(IPV4_TCP) + 16 + len(IPV4_UDP)  # where the third record starts
    if cut == "in the data":
        data = data[: offset + 16 + 5]
    elif cut == "in the record header":
        data = data[: offset + 9]
    else:
        data = data[: offset + 8] + struct.pack("<II", 0x7FFFFFF0, 60) + data[offset + 16 :]
    r = Run(tmp_path, data).run()
    assert r.rc == 0, r.stderr
    assert r.lines() == [line(T0 + i, "", "", "", l3_part(p), 0) for i, p in enumerate([IPV4_TCP, IPV4_UDP])]
    errors = [x for x in r.logged().splitlines() if "<7>" in x]
    assert len(errors) == 1
    assert f"{r.file}: damaged at byte offset {offset}" in errors[0]
    assert "stopped reading after 2 records" in errors[0]


def test_statistics_and_staying_up_without_exit_at_end(tmp_path):
    # a record that is not IP (skipped), then a fourth record cut in its header
    data = pcap(timed([IPV4_TCP, IPV4_UDP, b"\x00\x01"]), 101) + b"\x01\x02\x03"
    r = Run(tmp_path, data, exit_at_end=0)
    proc = r.popen()
    try:
        wait_for(lambda: "damaged at byte offset" in read(r.log), what="the damage report")
        assert proc.poll() is None
        proc.send_signal(signal.SIGUSR1)
        expected = "input p1 (PCAPFILE): records=3 emitted=2 skipped=1 errors=1"
        wait_for(lambda: expected in read(r.log), what="statistics")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.communicate()
    assert len(r.lines()) == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (pcap([], 105), "in.pcap: unsupported link type 105; PCAPFILE reads 1 (ETHERNET), 101 (RAW)"),
        (struct.pack("<IIHH", 0x0A0D0D0A, 28, 0x4D3C, 0x2B1A) + b"\0" * 20, "in.pcap is a pcapng file"),
        (b"GIF89a" + b"\0" * 30, "in.pcap: not a pcap file (magic number 0x38464947)"),
        (pcap([], 101)[:20], "in.pcap: pcap file header cut short (20 of 24 bytes)"),
    ],
)
def test_refused_files_fail_at_start(tmp_path, data, message):
    r = Run(tmp_path, data).run()
    assert r.rc == 1
    assert f"cannot start p1 (PCAPFILE): {tmp_path}/{message}" in r.stderr
    assert r.lines() == []


def test_missing_file_fails_at_start(tmp_path):
    r = Run(tmp_path, b"")
    r.file.unlink()
    r.run()
    assert r.rc == 1
    assert f"cannot open {r.file}: No such file or directory" in r.stderr


def test_many_packets_over_several_batches(tmp_path):
    n = 2 * pcapfile.BATCH + 500
    packets = [bytes(IP(src="10.0.0.1", dst="10.0.0.2", id=i % 65536) / UDP(sport=1, dport=2)) for i in range(3)]
    recs = [(T0, i, packets[i % 3]) for i in range(n)]
    r = Run(tmp_path, pcap(recs, 101))
    r.conf.write_text(r.conf.read_text().replace(f"stack={PRINT_STACK}\n", ""))
    r.run()
    assert r.rc == 0, r.stderr
    got = r.captured()
    assert [c["oob.time.usec"] for c in got] == list(range(n))
    assert [c["raw.pkt"] for c in got[:6]] == [p.hex() for p in packets * 2]


def test_records_across_read_chunks(monkeypatch):
    monkeypatch.setattr(pcapfile, "CHUNK", 7)  # every record straddles reads
    recs = timed([IPV4_TCP, b"", IPV6_PING, IPV4_UDP])
    data = pcap(recs, 101, ">")
    f = io.BytesIO(data)
    f.seek(24)
    got = [(s, fr, bytes(p)) for s, fr, p in pcapfile.records(f, ">", 65535)]
    assert got == recs


class FakeFeed:
    """Records the time and keys of each emitted event, as the core would hand them on."""

    def __init__(self) -> None:
        self.names = [k.name for k in Pcapfile.spec.outputs]
        self.values: list = [None] * len(self.names)
        self.events: list[tuple[float, dict]] = []
        self.flushes = 0

    def slot(self, name: str) -> int:
        return self.names.index(name)

    def emit(self) -> None:
        self.events.append(
            (time.monotonic(), {n: v for n, v in zip(self.names, self.values, strict=True) if v is not None})
        )
        self.values[:] = [None] * len(self.names)

    def flush(self) -> None:
        self.flushes += 1


def run_in_process(path: Path, **options) -> tuple[Pcapfile, FakeFeed, float]:
    opts = {o.name: o.default for o in Pcapfile.spec.options} | {"file": str(path), "exit_at_end": 1} | options
    plugin = Pcapfile("p1", opts, Logger("p1"))
    plugin.configure()
    plugin.feed = feed = FakeFeed()  # type: ignore[assignment]
    loop = EventLoop()
    try:
        plugin.start(loop)
        loop.call_later(20, loop.stop)  # a safety net: the test fails on a count, not by hanging
        began = time.monotonic()
        loop.run()
    finally:
        plugin.stop()
        loop.close()
    return plugin, feed, began


def test_rate_paces_packets_with_timers(tmp_path):
    path = tmp_path / "in.pcap"
    path.write_bytes(pcap(timed([IPV4_UDP] * 6), 101))
    plugin, feed, began = run_in_process(path, rate=20)
    times = [t for t, _ in feed.events]
    assert len(times) == 6
    # packet k is due k/20 s after the start; the loop's timers may be late, never early
    for k, t in enumerate(times):
        assert t - began >= k / 20 - 0.01, (k, t - began)
    assert times[-1] - began < 5
    assert plugin.statistics() == {"records": 6, "emitted": 6, "skipped": 0, "errors": 0}


def test_batches_flush_and_give_the_loop_back(tmp_path):
    path = tmp_path / "in.pcap"
    n = pcapfile.BATCH * 2 + 1
    path.write_bytes(pcap([(T0, i, IPV4_UDP) for i in range(n)], 101))
    _, feed, _ = run_in_process(path)
    assert len(feed.events) == n
    assert feed.flushes >= 3  # one per batch of BATCH packets
    assert [e["oob.time.usec"] for _, e in feed.events] == list(range(n))


def test_info_lists_nflog_keys(tmp_path):
    def info(name: str) -> str:
        out = subprocess.run([*PYLOGD, "-i", name], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    pcap_info, nflog_info = info("PCAPFILE"), info("NFLOG")
    assert "Name: PCAPFILE" in pcap_info
    assert "Var: file (String, Default: , Mandatory)" in pcap_info

    def keys(info: str) -> str:  # what follows is each plugin's own differences from ulogd
        return info.split("Output keys:")[1].split("Differences from ulogd")[0]

    assert keys(pcap_info) == keys(nflog_info)
    assert Pcapfile.spec.outputs == Nflog.spec.outputs
