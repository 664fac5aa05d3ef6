"""PCAP: ulogd 2.0.8's file format, read back with scapy and tcpdump; refused foreign files; no torn record
after a failed write; and the real ulogd beside pylogd on the same packets, record for record.

Where pylogd's file deliberately differs from ulogd's is named once, in the block below.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import PYLOGD, ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pylogd.plugins.outputs import pcap as pcapout
from pylogd.plugins.outputs.pcap import Pcap
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap, wrpcap
from test_compat_ulogd import pair, run_both_on_corpus, wait_equal_and_quiet  # noqa: F401  (pair: a fixture)
from test_pcapfile import pcap

from pylogd.config import parse_ini
from pylogd.log import Logger
from pylogd.plugin import PluginError, Slots
from pylogd.registry import Registry
from pylogd.stack import Stack, build

ULOGD = "/usr/sbin/ulogd"
#: the global header ulogd 2.0.8 wrote in the reference's live run (ulogd-2.0.8.md 9.6), on a UTC host
ULOGD_HEADER = bytes.fromhex("d4c3b2a1 0200 0400 00000000 00000000 00000100 65000000")

# ------------------------------------------------------------------------------------------------
# Where pylogd's file deliberately differs from ulogd 2.0.8's, in one place: the header's thiszone
# is always 0 (ulogd wrote the C library's timezone, 0 on a UTC host like the one compared here).
# The records are the same, byte for byte, apart from the time each NFLOG group stamped.
# ------------------------------------------------------------------------------------------------

T0 = 1795388587
TCP4 = bytes(IP(src="10.77.0.2", dst="10.77.0.1", id=1) / TCP(sport=34358, dport=2222, flags="S"))
UDP6 = bytes(IPv6(src="fd77::2", dst="fd77::1", fl=180929) / UDP(sport=40001, dport=7777) / (b"x" * 6))
PING6 = bytes(IPv6(src="fd77::2", dst="fd77::1") / ICMPv6EchoRequest(id=17185, seq=3) / b"ping6")


class PcapRun:
    """A started PCAP output with its handler, fed records by key name as a stack would."""

    def __init__(self, path: Path) -> None:
        names = [k.name for k in Pcap.spec.inputs]
        self.slots = {name: i for i, name in enumerate(names)}
        self.out = Pcap("pcap1", {"file": str(path), "sync": 0}, Logger("pcap1"))
        self.out.configure()
        self.out.start(None)  # type: ignore[arg-type]
        self.convert = self.out.handler(Slots(dict(self.slots), {}, size=len(names)))

    def entry(self, **keys: Any) -> bytes:
        record: list = [None] * len(self.slots)
        for name, value in keys.items():
            record[self.slots[name.replace("__", ".")]] = value
        return self.convert(record)

    def write(self, *entries: bytes) -> None:
        self.out.write(list(entries))


def packet(data: bytes, family: int, i: int = 0, **keys: Any) -> dict:
    return {
        "raw__pkt": memoryview(data),
        "oob__family": family,
        "oob__time__sec": T0 + i,
        "oob__time__usec": 7 + i,
        **keys,
    }


def test_new_file_header_records_scapy_and_tcpdump(tmp_path: Path) -> None:
    path = tmp_path / "out.pcap"
    run = PcapRun(path)
    assert path.read_bytes() == ULOGD_HEADER  # the header is there before any packet
    run.write(
        run.entry(**packet(TCP4, 2, 0, ip__totlen=len(TCP4))),
        run.entry(**packet(UDP6, 10, 1, ip6__payloadlen=len(UDP6) - 40)),
        run.entry(**packet(PING6, 10, 2)),  # no length key (BASE could not parse it): the packet's header
    )
    run.out.stop()
    data = path.read_bytes()
    assert data[:24] == ULOGD_HEADER
    first = struct.unpack_from("<IIII", data, 24)
    assert first == (T0, 7, len(TCP4), len(TCP4)) and data[40 : 40 + len(TCP4)] == TCP4
    packets = rdpcap(str(path))
    assert [bytes(p) for p in packets] == [TCP4, UDP6, PING6]
    assert [(int(p.time), p.time % 1) for p in packets] == [(T0 + i, pytest.approx((7 + i) / 1e6)) for i in range(3)]
    assert [p.wirelen for p in packets] == [len(TCP4), len(UDP6), len(PING6)]
    if shutil.which("tcpdump"):
        res = subprocess.run(["tcpdump", "-nn", "-r", str(path)], capture_output=True, text=True, check=True)
        assert "link-type RAW (Raw IP), snapshot length 65536" in res.stderr
        lines = res.stdout.splitlines()
        assert len(lines) == 3
        assert "IP 10.77.0.2.34358 > 10.77.0.1.2222: Flags [S]" in lines[0]
        assert "IP6 fd77::2.40001 > fd77::1.7777: UDP, length 6" in lines[1]
        assert "ICMP6, echo request, id 17185, seq 3" in lines[2]


def test_lengths_a_cut_packet_and_other_families(tmp_path: Path) -> None:
    run = PcapRun(tmp_path / "out.pcap")
    cut = TCP4[:28]  # copy_range cut it: the original length is the IP header's
    entries = [
        run.entry(**packet(cut, 2, ip__totlen=len(TCP4))),
        run.entry(**packet(cut, 2)),  # BASE could not parse it: read from the header
        run.entry(**packet(TCP4, 2, raw__pktlen=20)),  # raw.pktlen is the captured length
        run.entry(**packet(b"\x00\x01\x08\x00", 7)),  # bridge/ARP: the captured length
    ]
    lengths = [struct.unpack_from("<IIII", e)[2:] for e in entries]
    assert lengths == [(28, len(TCP4)), (28, len(TCP4)), (20, len(TCP4)), (4, 4)]
    assert entries[2][16:] == TCP4[:20]
    assert run.entry(oob__family=2) is None  # no packet, no record
    before = time.time()
    sec, usec = struct.unpack_from("<II", run.entry(raw__pkt=TCP4, oob__family=2))
    assert before - 1 <= sec + usec / 1e6 <= time.time() + 1  # no packet time: now


def test_existing_file_is_appended_without_a_second_header(tmp_path: Path) -> None:
    path = tmp_path / "out.pcap"
    run = PcapRun(path)
    run.write(run.entry(**packet(TCP4, 2)))
    run.out.stop()
    run = PcapRun(path)
    run.write(run.entry(**packet(UDP6, 10, 1)))
    run.out.stop()
    assert [bytes(p) for p in rdpcap(str(path))] == [TCP4, UDP6]
    assert path.read_bytes().count(ULOGD_HEADER) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("ethernet", "is a pcap file of link type 1 (version 2.4)"),
        ("pcapng", "is a pcapng file"),
        ("big-endian", "is a pcap file in the other byte order"),
        ("nanoseconds", "is a pcap file with nanosecond times"),
        ("short", "is not a pcap file (only 10 bytes)"),
        ("text", "is not a pcap file;"),
    ],
)
def test_foreign_files_are_refused_at_start(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "foreign.pcap"
    if content == "ethernet":
        wrpcap(str(path), [Ether() / IP(bytes(TCP4))])
    else:
        path.write_bytes(
            {
                "pcapng": bytes.fromhex("0a0d0d0a") + b"\x1c\x00\x00\x00\x4d\x3c\x2b\x1a" + bytes(16),
                "big-endian": pcap([(T0, 0, TCP4)], 101, order=">"),
                "nanoseconds": pcap([(T0, 0, TCP4)], 101, nano=True),
                "short": b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00\x00\x00",
                "text": b"this is a log file, not a capture\n",
            }[content]
        )
    before = path.read_bytes()
    with pytest.raises(PluginError) as err:
        PcapRun(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value) and "\n" not in str(err.value)
    assert path.read_bytes() == before  # nothing was written to it
    # the daemon: exit 1 with the one line
    source = tmp_path / "in.pcap"
    source.write_bytes(pcap([(T0, 0, TCP4)], 101))
    conf = tmp_path / "pylogd.conf"
    conf.write_text(
        f'[global]\nlogfile="stderr"\nstack=p1:PCAPFILE,base1:BASE,pcap1:PCAP\n[p1]\nfile="{source}"\n'
        f'exit_at_end=1\n[pcap1]\nfile="{path}"\n'
    )
    res = subprocess.run([*PYLOGD, "-c", str(conf)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert f"cannot start pcap1 (PCAP): {path}" in res.stderr and message in res.stderr, res.stderr
    assert path.read_bytes() == before


def test_a_failed_write_leaves_no_torn_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.pcap"
    run = PcapRun(path)
    entries = [run.entry(**packet(p, f, i)) for i, (p, f) in enumerate([(TCP4, 2), (UDP6, 10), (PING6, 10)] * 3)]
    real_write = os.write
    budget = {"left": len(entries[0]) + len(entries[1]) + 20}  # two records and a part of the third fit

    def full_disk(fd: int, data: Any) -> int:
        if fd != run.out.fd:
            return real_write(fd, data)
        if budget["left"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_write(fd, bytes(data[: budget["left"]]))
        budget["left"] -= n
        return n

    monkeypatch.setattr(pcapout.os, "write", full_disk)
    left = list(entries)
    with pytest.raises(OSError):
        run.out.write(left)
    # the file ends after the second record, and the third waits whole
    assert path.stat().st_size == 24 + len(entries[0]) + len(entries[1])
    assert left == entries[2:]
    assert [bytes(p) for p in rdpcap(str(path))] == [TCP4, UDP6]
    budget["left"] = 10**9  # space again: the retry writes the rest
    run.out.write(left)
    run.out.stop()
    assert [bytes(p) for p in rdpcap(str(path))] == [TCP4, UDP6, PING6] * 3


def test_reopen_and_an_emptied_file_get_a_header(tmp_path: Path) -> None:
    path = tmp_path / "out.pcap"
    run = PcapRun(path)
    run.write(run.entry(**packet(TCP4, 2)))
    path.rename(tmp_path / "out.pcap.1")  # logrotate, then SIGHUP
    run.out.reopen()
    assert path.read_bytes() == ULOGD_HEADER
    run.write(run.entry(**packet(UDP6, 10)))
    os.truncate(path, 0)  # copytruncate
    run.write(run.entry(**packet(PING6, 10)))
    run.out.stop()
    assert [bytes(p) for p in rdpcap(str(tmp_path / "out.pcap.1"))] == [TCP4]
    assert [bytes(p) for p in rdpcap(str(path))] == [PING6]
    # a reopen that finds a foreign file keeps writing to the old one
    run = PcapRun(path)
    path.rename(tmp_path / "out.pcap.2")
    path.write_text("not a capture\n")
    run.out.reopen()
    run.write(run.entry(**packet(TCP4, 2)))
    run.out.stop()
    assert [bytes(p) for p in rdpcap(str(tmp_path / "out.pcap.2"))] == [PING6, TCP4]


def test_round_trip_through_the_daemon(tmp_path: Path) -> None:
    """A raw-IP capture read by PCAPFILE and written by PCAP comes out with the same records."""
    frames = [(T0 + i, 1000 * i + 7, p) for i, p in enumerate([TCP4, UDP6, PING6] * 50)]
    source = tmp_path / "in.pcap"
    source.write_bytes(pcap(frames, 101))
    out = tmp_path / "out.pcap"
    conf = tmp_path / "pylogd.conf"
    conf.write_text(
        f'[global]\nlogfile="{tmp_path}/pylogd.log"\nloglevel=3\n'
        "plugin=/usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_PCAP.so\n"
        f'stack=p1:PCAPFILE,base1:BASE,pcap1:PCAP\n[p1]\nfile="{source}"\nexit_at_end=1\n[pcap1]\nfile="{out}"\n'
    )
    check = subprocess.run([*PYLOGD, "--check", "-c", str(conf)], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    res = subprocess.run([*PYLOGD, "-c", str(conf)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    data = out.read_bytes()
    assert data[:24] == ULOGD_HEADER and data[24:] == source.read_bytes()[24:]


def test_info_by_name_and_by_ulogd_so() -> None:
    by_name = subprocess.run([*PYLOGD, "-i", "PCAP"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    so = "/usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_PCAP.so"
    by_so = subprocess.run([*PYLOGD, "-i", so], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert by_name == by_so and "Var: file (String, Default: /var/log/ulogd.pcap)" in by_name


# ------------------------------------------------------------------------------------------------
# the real ulogd beside pylogd


def records(path: Path) -> list[tuple[int, int, int, int, bytes]]:
    data = path.read_bytes()
    out, off = [], 24
    while off < len(data):
        sec, usec, caplen, length = struct.unpack_from("<IIII", data, off)
        out.append((sec, usec, caplen, length, data[off + 16 : off + 16 + caplen]))
        off += 16 + caplen
    assert off == len(data), "a torn record at the end"
    return out


def test_same_packets_same_pcap_records(pair, tmp_path: Path) -> None:  # noqa: F811  (pair is the fixture)
    if not Path(ULOGD).exists() or not Path("/usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_PCAP.so").exists():
        pytest.skip("ulogd 2.0.8 with its PCAP plugin is not installed (apt-get install ulogd2 ulogd2-pcap)")
    for name, group in (("ulogd", 5), ("pylogd", 6)):
        (tmp_path / f"{name}.conf").write_text(
            f'[global]\nlogfile="{tmp_path}/{name}.daemon.log"\nloglevel=3\n'
            f'stack=log1:NFLOG,base1:BASE,pcap1:PCAP\n[log1]\ngroup={group}\n[pcap1]\nfile="{tmp_path}/{name}.pcap"\n'
            "sync=1\n"
        )
    run_both_on_corpus(pair, tmp_path, {**os.environ, "TZ": "UTC"})
    files = [tmp_path / "ulogd.pcap", tmp_path / "pylogd.pcap"]
    wait_equal_and_quiet(lambda: [len(records(f)) if f.exists() else 0 for f in files], "records", minimum=1)
    # ulogd's stdio buffer is flushed per record with sync=1: its file is complete now
    assert files[0].read_bytes()[:24] == files[1].read_bytes()[:24] == ULOGD_HEADER
    u_records, p_records = records(files[0]), records(files[1])
    assert len(u_records) >= 20
    for u, p in zip(u_records, p_records, strict=True):
        assert p[2:] == u[2:]  # lengths and bytes
        assert abs((u[0] + u[1] / 1e6) - (p[0] + p[1] / 1e6)) < 0.5  # each group's own stamp
    assert len(rdpcap(str(files[1]))) == len(p_records)
    res = subprocess.run(["tcpdump", "-nn", "-r", str(files[1])], capture_output=True, text=True, check=True)
    assert len(res.stdout.splitlines()) == len(p_records)


# ------------------------------------------------------------------------------------------------
# ulogd's stack NFLOG→BASE→PCAP runs no filter: its entry comes straight from NFLOG's keys


def stack_of(text: str, tmp_path: Path) -> Stack:
    raw = parse_ini("test.conf", f'[global]\nstack={text}\n[pcap1]\nfile="{tmp_path / "x.pcap"}"\n[log1]\n')
    return Stack(build(raw, Registry(), Logger).stacks[0], Logger("core"))


def generic_entry(stack: Stack, keys: list) -> Any:
    """What the filters and PCAP's handler make of an event with the input's ``keys``."""
    values = [None] * stack.plan.size
    values[: len(keys)] = keys
    for handler in stack.filters:
        handler(values)
    return stack.convert(values)


def test_the_example_stack_is_fused_and_others_are_not(tmp_path: Path) -> None:
    assert stack_of("log1:NFLOG,base1:BASE,pcap1:PCAP", tmp_path).fused is not None
    # a filter PCAP cannot stand in for: the stack runs as built
    assert stack_of("log1:NFLOG,base1:BASE,ip2str1:IP2STR,pcap1:PCAP", tmp_path).fused is None
    assert stack_of("log1:NFLOG,base1:BASE,mark1:MARK,pcap1:PCAP", tmp_path).fused is None


FAMILIES = st.sampled_from([None, 0, 2, 3, 7, 10])
IPV4_START = st.builds(lambda rest: bytes([0x45, 0]) + rest, st.binary(max_size=80))
IPV6_START = st.builds(lambda rest: bytes([0x60]) + rest, st.binary(max_size=120))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pkt=st.one_of(st.none(), st.binary(max_size=100), IPV4_START, IPV6_START),
    family=FAMILIES,
    pktlen=st.one_of(st.none(), st.integers(0, 200)),
    sec=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    usec=st.integers(0, 999_999),
    protocol=st.sampled_from([None, 0x0800, 0x86DD, 0x0806]),
)
def test_the_fused_entry_is_the_one_base_and_the_handler_make(
    tmp_path: Path, pkt: bytes | None, family: int | None, pktlen: int | None, sec: int | None, usec: int, protocol
) -> None:
    stack = stack_of("log1:NFLOG,base1:BASE,pcap1:PCAP", tmp_path)
    slot = {k.name: i for i, k in enumerate(stack.plan.instances[0].spec.outputs)}
    keys: list = [None] * len(slot)
    given_keys = {
        "raw.pkt": None if pkt is None else memoryview(pkt),
        "raw.pktlen": pktlen,
        "oob.family": family,
        "oob.protocol": protocol,
        "oob.time.sec": sec,
        "oob.time.usec": None if sec is None else usec,
    }
    for name, value in given_keys.items():
        keys[slot[name]] = value
    assert stack.fused is not None
    fused, generic = stack.fused(keys), generic_entry(stack, keys)
    if sec is None and fused is not None:  # the current time: equal but for the clock's tick
        fused, generic = fused[8:], generic[8:]
    assert fused == generic
