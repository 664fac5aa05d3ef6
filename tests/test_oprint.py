"""OPRINT's dump format, on its own and behind MARK in a running daemon."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from daemonkit import Daemon, read, wait_for
from pylogd.plugins.outputs.oprint import OPrint

from pylogd.keys import KeyType
from pylogd.log import Logger
from pylogd.plugin import Slots, key

KEYS = [
    key("raw.pktlen", KeyType.UINT32),
    key("oob.prefix", KeyType.STRING),
    key("ip.saddr", KeyType.IPADDR),
    key("ip.daddr", KeyType.IPADDR),
    key("tcp.syn", KeyType.BOOL),
    key("orig.raw.pktlen", KeyType.UINT64),
    key("test.neg", KeyType.INT32),
    key("raw.pkt", KeyType.RAW),
    key("ip.saddr.bin", KeyType.RAWSTR),
    key("odd", KeyType.NONE),
    key("ip.hsaddr", KeyType.IPADDR),
]


def dump(values: list, tmp_path: Path) -> str:
    plugin = OPrint("op1", {"file": str(tmp_path / "oprint.log"), "sync": 0}, Logger("op1"))
    plugin.start(None)  # type: ignore[arg-type]
    try:
        convert = plugin.handler(Slots({}, {}, wildcard=[(k, i) for i, k in enumerate(KEYS)], size=len(KEYS)))
        plugin.write([convert(values), convert([None] * len(KEYS))])
    finally:
        plugin.stop()
    return (tmp_path / "oprint.log").read_text()


def test_format(tmp_path: Path) -> None:
    values = [
        60,
        "TCPIN: ",
        socket.inet_pton(socket.AF_INET, "10.77.0.2"),
        socket.inet_pton(socket.AF_INET6, "fd77::1"),
        1,
        2**40,
        -5,
        b"\x45\x00",
        "0x00000000000000000000ffff0a4d0002",
        7,
        None,
    ]
    assert dump(values, tmp_path) == (
        "===>PACKET BOUNDARY\n"
        "raw.pktlen=60\n"
        "oob.prefix=TCPIN: \n"
        "ip.saddr=10.77.0.2\n"  # ulogd 2.0.8 printed 2.0.77.10
        "ip.daddr=fd77::1\n"
        "tcp.syn=1\n"
        "orig.raw.pktlen=1099511627776\n"
        "test.neg=-5\n"
        "raw.pkt=default\n"  # ulogd's placeholder for raw data
        "ip.saddr.bin=0x00000000000000000000ffff0a4d0002\n"
        "odd=<none>\n"
        # an event with no valid key is only its boundary line
        "===>PACKET BOUNDARY\n"
    )


def test_host_order_address_prints_reversed(tmp_path: Path) -> None:
    # IP2HBIN's value is the address bytes reversed; shown as an address it reads backwards
    values = [None] * len(KEYS)
    values[-1] = bytes([1, 0, 0, 127])
    assert dump(values, tmp_path) == "===>PACKET BOUNDARY\nip.hsaddr=1.0.0.127\n===>PACKET BOUNDARY\n"


def test_behind_mark_in_a_daemon(tmp_path: Path, daemons: list[Daemon]) -> None:
    out = tmp_path / "oprint.log"
    d = Daemon(
        tmp_path,
        ["in1:PIPEIN,m1:MARK,op1:OPRINT"],
        f'[m1]\nmark=0x2a\nmask=0xff\n[op1]\nfile="{out}"\n',
    )
    daemons.append(d)
    d.start()
    d.send(
        {"test.n": 1, "test.text": "kept", "oob.mark": 0x12A},
        {"test.n": 2, "test.text": "stopped", "oob.mark": 0x2B},
        {"test.n": 3, "oob.mark": 0x2A, "oob.family": 2},
    )
    expected = (
        "===>PACKET BOUNDARY\ntest.n=1\ntest.text=kept\noob.mark=298\n"
        "===>PACKET BOUNDARY\ntest.n=3\noob.mark=42\noob.family=2\n"
    )
    wait_for(lambda: read(out) == expected, what="two dumps")
    # SIGHUP reopens the file: a moved file stops growing, a new one starts
    out.rename(tmp_path / "oprint.log.1")
    d.signal(signal.SIGHUP)
    wait_for(lambda: "reopened" in read(d.log), what="the reopen message")
    d.send({"test.n": 4, "oob.mark": 0x2A})
    wait_for(lambda: read(out) == "===>PACKET BOUNDARY\ntest.n=4\noob.mark=42\n", what="a dump in the new file")
    assert read(tmp_path / "oprint.log.1") == expected
    assert d.stop() == 0


def test_section_is_required(tmp_path: Path, daemons: list[Daemon]) -> None:
    d = Daemon(tmp_path, ["in1:PIPEIN,op9:OPRINT"], "")
    daemons.append(d)
    d.start(wait=False)
    assert d.proc.wait(30) == 1  # type: ignore[union-attr]
    assert "no [op9] section: OPRINT needs one" in d.proc.stderr.read()  # type: ignore[union-attr]
