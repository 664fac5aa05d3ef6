"""UNIXSOCK: a client written from ulogd's frame format sends the same packets to ulogd 2.0.8's UNIXSOCK and
to pylogd's; through BASE, IP2STR, PRINTPKT and LOGEMU both write the same lines.  Then what ulogd does
not do: several clients at once, a bad frame closing only its client, an oversized frame skipped, a
stale socket replaced."""

from __future__ import annotations

import socket
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import PYLOGD, ROOT
from daemonkit import read, wait_for
from pylogd.plugins.inputs.unixsock import MARKER

ULOGD = "/usr/sbin/ulogd"
STACK = "u1:UNIXSOCK,base1:BASE,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU"
PACKET_TIME = 1795388587


def option(number: int, value: bytes) -> bytes:
    return struct.pack(">II", number, len(value)) + value + bytes(-len(value) % 8)


def frame(packet: bytes, *options: bytes) -> bytes:
    """ulogd's frame: marker, size of the rest, version word (host order bit field), payload length, the
    packet, padding to 8, options."""
    body = struct.pack("=I", 2) + struct.pack(">H", len(packet)) + packet + bytes(-len(packet) % 8)
    body += b"".join(options)
    return struct.pack(">IH", MARKER, len(body) + 2) + body


def corpus() -> list[bytes]:
    from scapy.all import ICMP, IP, TCP, UDP, IPv6

    a, b, a6, b6 = "10.9.0.2", "10.9.0.1", "fd09::2", "fd09::1"
    packets = [
        IP(src=a, dst=b, id=7) / TCP(sport=3333, dport=22, flags="S", seq=1000, window=512),
        IP(src=a, dst=b, ttl=17) / UDP(sport=40000, dport=53) / b"query",
        IP(src=a, dst=b) / ICMP(type=8, id=9, seq=3) / b"ping",
        IPv6(src=a6, dst=b6) / UDP(sport=40001, dport=5353) / b"six",
    ]
    out = []
    for n, pkt in enumerate(packets):
        opts = [option(1, f"P{n} ".encode() + b"\0"), option(4, struct.pack("=I", PACKET_TIME + n))]
        if n != 2:
            opts.append(option(2, b"eth0\0"))
        if n == 1:
            opts += [option(3, b"eth1\0"), option(200, b"alice\0"), option(999, b"unknown")]
        out.append(frame(bytes(pkt), *opts))
    return out


def conf(tmp: Path, name: str, extra: str = "") -> Path:
    path = tmp / f"{name}.conf"
    path.write_text(
        f'[global]\nlogfile="{tmp}/{name}.daemon.log"\nloglevel=3\nstack={STACK}\n'
        f'[u1]\nsocket_path="{tmp}/{name}.sock"\n{extra}[emu1]\nfile="{tmp}/{name}.log"\nsync=1\n'
    )
    return path


def send(path: Path, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect(str(path))
        c.sendall(data)


def start(procs: list, cmd: list[str], log: Path) -> None:
    procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    wait_for(lambda: "entering main loop" in read(log) or procs[-1].poll() is not None, what=f"{cmd[0]} start")
    assert procs[-1].poll() is None, procs[-1].communicate()


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.terminate()
            p.wait(10)


def lines(path: Path) -> list[str]:
    return read(path).splitlines()


def test_the_same_frames_make_the_same_lines_as_ulogd(tmp_path: Path, procs: list) -> None:
    if not Path(ULOGD).exists():
        pytest.skip("ulogd 2.0.8 is not installed (apt-get install ulogd2)")
    start(procs, [ULOGD, "-c", str(conf(tmp_path, "ulogd"))], tmp_path / "ulogd.daemon.log")
    start(procs, [*PYLOGD, "-c", str(conf(tmp_path, "pylogd"))], tmp_path / "pylogd.daemon.log")
    data = b"".join(corpus())
    for name in ("ulogd", "pylogd"):
        send(tmp_path / f"{name}.sock", data)
    outputs = [tmp_path / "ulogd.log", tmp_path / "pylogd.log"]
    wait_for(lambda: all(len(lines(o)) >= 4 for o in outputs), what="four lines from each")
    ulogd_lines, pylogd_lines = (lines(o) for o in outputs)
    assert len(ulogd_lines) == len(pylogd_lines) == 4
    for u, p in zip(ulogd_lines, pylogd_lines, strict=True):
        assert p[16:].split(" ", 1)[1] == u[16:].split(" ", 1)[1], f"\nulogd:  {u}\npylogd: {p}"
    # PRINTPKT writes the interfaces when both are known, as ulogd does
    assert "P0  MAC= SRC=10.9.0.2 DST=10.9.0.1 " in pylogd_lines[0]
    assert "P1  IN=eth0 OUT=eth1 " in pylogd_lines[1]
    assert "SRC=fd09::2 DST=fd09::1" in pylogd_lines[3]


def test_clients_at_once_a_bad_frame_closes_its_client_and_an_oversized_one_is_skipped(
    tmp_path: Path, procs: list
) -> None:
    path = tmp_path / "pylogd.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:  # left by a daemon that died
        stale.bind(str(path))
    start(procs, [*PYLOGD, "-c", str(conf(tmp_path, "pylogd", "bufsize=400\n"))], tmp_path / "pylogd.daemon.log")
    good = corpus()
    big = frame(bytes(1000))
    first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    first.connect(str(path))
    second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    second.connect(str(path))
    try:
        first.sendall(good[0] + big + good[1])  # the oversized frame is passed over, the next one read
        second.sendall(good[2] + b"\x00" * 16)  # a frame with the wrong marker: this client is closed
        wait_for(lambda: len(lines(tmp_path / "pylogd.log")) >= 3, what="three lines")
        wait_for(lambda: second.recv(1) == b"", what="the bad client closed")
        first.sendall(good[3])  # the other client goes on
        wait_for(lambda: len(lines(tmp_path / "pylogd.log")) >= 4, what="the fourth line")
    finally:
        first.close()
        second.close()
    procs[-1].terminate()
    assert procs[-1].wait(10) == 0
    log = read(tmp_path / "pylogd.daemon.log")
    assert "received=4 clients=0 connects=2 bad_frames=1 oversized=1" in log
    assert "a frame of 1012 bytes is larger than bufsize 400; skipping it" in log
    assert "a frame marked 0x00000000, not 0x41c90fd4; closing it" in log
    assert not path.exists()  # removed at exit
    assert "Traceback" not in log


def test_a_socket_another_daemon_answers_on_or_a_file_refuses_the_start(tmp_path: Path) -> None:
    path = tmp_path / "pylogd.sock"
    path.write_text("not a socket")
    res = subprocess.run([*PYLOGD, "-c", str(conf(tmp_path, "pylogd"))], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 1
    assert f"{path} exists and is not a socket" in res.stderr
    path.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen(1)
        res = subprocess.run(
            [*PYLOGD, "-c", str(conf(tmp_path, "pylogd"))], cwd=ROOT, capture_output=True, text=True, timeout=30
        )
    assert res.returncode == 1
    assert f"{path} is in use by another running daemon" in res.stderr
