"""PWSNIFF: FTP/POP3 USER and PASS out of TCP payloads; everything else is stopped."""

from __future__ import annotations

import pytest
from filterkit import FilterRun
from pylogd.plugins.filters.pwsniff import PwSniff
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw


def sniff(pkt: object) -> tuple[dict, bool]:
    run = FilterRun(PwSniff)
    out = run({"raw.pkt": pkt})
    return out, run.stopped


def tcp4(payload: bytes, dport: int = 21, **tcp: object) -> bytes:
    return bytes(IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=40000, dport=dport, **tcp) / Raw(payload))


@pytest.mark.parametrize(
    ("payload", "dport", "expected"),
    [
        (b"USER alice\r\n", 21, {"pwsniff.user": "alice"}),
        (b"PASS s3cret\r\n", 110, {"pwsniff.pass": "s3cret"}),
        (b"user bob\r\npass hunter2\r\n", 21, {"pwsniff.user": "bob", "pwsniff.pass": "hunter2"}),
        (b"USER a\r\nUSER b\r\n", 21, {"pwsniff.user": "b"}),  # the last one counts, as in ulogd
        (b"USER alice", 21, {}),  # no terminator yet: nothing, but the packet passes
        (b"USER \r\n", 21, {}),  # empty value
        (b"RETR file.txt\r\n", 21, {}),
        (b"", 110, {}),
    ],
)
def test_extracts_user_and_pass(payload: bytes, dport: int, expected: dict) -> None:
    out, stopped = sniff(tcp4(payload, dport))
    assert not stopped
    assert out == expected


@pytest.mark.parametrize(
    "pkt",
    [
        tcp4(b"USER alice\r\n", dport=80),
        bytes(IP() / UDP(dport=21) / Raw(b"USER alice\r\n")),
        None,
        b"",
        b"\x45\x00\x00",  # truncated IPv4 header
        bytes(IP(dst="10.0.0.1", proto=6) / Raw(b"\x00\x15")),  # TCP header cut short
        b"\x99" * 60,  # neither IPv4 nor IPv6
        # a non-first fragment: its first bytes are payload, not a TCP header
        bytes(IP(dst="10.0.0.1", proto=6, frag=3) / Raw(b"\x9c\x40\x00\x15" + b"\x00" * 16 + b"USER x\r\n")),
    ],
    ids=["port 80", "udp", "no packet", "empty", "short ip", "short tcp", "garbage", "fragment"],
)
def test_everything_else_is_stopped(pkt: object) -> None:
    out, stopped = sniff(pkt)
    assert stopped
    assert out == {}


def test_tcp_options_are_skipped() -> None:
    pkt = tcp4(b"USER carol\r\n", options=[("MSS", 1460), ("NOP", None), ("NOP", None), ("SAckOK", b"")])
    assert pkt[32] >> 4 == 7  # 28-byte TCP header
    assert sniff(pkt) == ({"pwsniff.user": "carol"}, False)


def test_ipv6() -> None:
    pkt = bytes(IPv6(src="fd77::2", dst="fd77::1") / TCP(sport=5, dport=110) / Raw(b"PASS pw6\r\n"))
    assert sniff(pkt) == ({"pwsniff.pass": "pw6"}, False)


def test_memoryview_and_undecodable_bytes() -> None:
    out, stopped = sniff(memoryview(tcp4(b"PASS caf\xe9\xff \r\n")))
    assert not stopped
    # undecodable bytes survive as surrogate escapes, so they can be written back unchanged
    assert out["pwsniff.pass"].encode("utf-8", "surrogateescape") == b"caf\xe9\xff"


def test_search_ends_at_ip_length_or_captured_data() -> None:
    # bytes after the IP total length are not part of the packet
    pkt = bytearray(tcp4(b"USER dave\r\n"))
    pkt[2:4] = (40 + 6).to_bytes(2, "big")
    assert sniff(bytes(pkt)) == ({}, False)
    # a capture cut short ends the search without reading past it
    assert sniff(tcp4(b"USER erin\r\n")[:-3]) == ({}, False)
    assert sniff(tcp4(b"USER erin\r\n")[:-1]) == ({"pwsniff.user": "erin"}, False)
