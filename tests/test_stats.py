"""`pylogd stats` on a real daemon through its control socket: the table, --json, --prometheus and the HTTP
endpoint show the live counters; a daemon whose socket cannot be made, or is taken, runs on."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import urllib.request

from conftest import PYLOGD, ROOT
from daemonkit import Daemon, read, wait_for


def stats(sock, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PYLOGD, "stats", "-s", str(sock), *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def started(tmp_path, sock) -> Daemon:
    tmp_path.mkdir(exist_ok=True)
    marker = tmp_path / "down"  # the second stack's output fails until the test removes this
    marker.touch()
    d = Daemon(
        tmp_path,
        ["in1:PIPEIN,emu1:LOGEMU", "in1:PIPEIN,odd1:ODDSTOP,cap1:CAPTURE"],
        f'[emu1]\nfile="{tmp_path}/emu.log"\n[cap1]\nfile="{tmp_path}/cap.json"\nfail_while="{marker}"\n',
        ["--control-socket", str(sock)],
    )
    d.start()
    d.send(*({"test.n": i, "print": f"line {i}\n"} for i in range(10)))
    wait_for(lambda: len(read(tmp_path / "emu.log").splitlines()) == 10, what="the lines")
    return d


def test_table_json_and_prometheus(tmp_path) -> None:
    sock = tmp_path / "ctl.sock"
    d = started(tmp_path, sock)
    try:
        doc = json.loads(stats(sock, "--json").stdout)
        assert doc["pylogd"]["pid"] == d.proc.pid
        assert doc["pylogd"]["gc_frozen_objects"] > 10_000  # start-up's objects, kept out of full collections
        one, two = doc["stacks"]
        assert (one["events"], one["written"], one["pending"], one["output"]) == (10, 10, 0, "emu1")
        assert (two["events"], two["stopped"], two["written"], two["pending"]) == (10, 5, 0, 5)
        assert two["failing_seconds"] > 0 and "No space left on device" in two["error"]
        (pipein,) = [p for p in doc["plugins"] if p["id"] == "in1"]
        assert pipein["received"] == 10 and pipein["kind"] == "input"

        text = stats(sock).stdout
        assert re.search(r"^\s+1\s+10\s+0\s+10\s+0\s+0\s+0\s+0\s+0\.0\s+emu1$", text, re.M), text
        assert "stack 2: writes failing for" in text and "input in1 (PIPEIN): received=10" in text
        assert re.search(r"^control socket: clients=1 answered=1 refused=0 timed_out=0$", text, re.M), text

        prom = stats(sock, "--prometheus").stdout
        assert "# TYPE pylogd_stack_written_total counter" in prom
        assert 'pylogd_stack_written_total{stack="1",output="emu1",definition="in1:PIPEIN,emu1:LOGEMU"} 10' in prom
        assert "# TYPE pylogd_stack_pending gauge" in prom and 'pylogd_stack_pending{stack="2"' in prom
        assert 'pylogd_input_received_total{instance="in1",plugin="PIPEIN"} 10' in prom
        assert "\npylogd_control_answered_total 2\n" in prom and "\npylogd_control_clients 1\n" in prom
        for line in prom.splitlines():  # every sample line parses: name{labels} number
            assert line.startswith("# TYPE ") or re.fullmatch(r'[a-z_]+(\{(\w+="[^"]*",?)*\})? [\d.]+', line), line

        server = subprocess.Popen(
            [*PYLOGD, "stats", "-s", str(sock), "--listen", "127.0.0.1:0"], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        try:
            url = re.search(r"(http://\S+/metrics)", server.stdout.readline()).group(1)
            body = urllib.request.urlopen(url, timeout=10).read().decode()
            assert 'pylogd_input_received_total{instance="in1",plugin="PIPEIN"} 10' in body
        finally:
            server.terminate()
            server.wait(10)
    finally:
        (tmp_path / "down").unlink()
        assert d.stop() == 0
    assert not sock.exists()  # removed at exit
    gone = stats(sock)
    assert gone.returncode == 1 and "is pylogd running?" in gone.stderr


def test_a_socket_that_cannot_be_made_or_is_taken_stops_nothing(tmp_path) -> None:
    sock = tmp_path / "ctl.sock"
    first = started(tmp_path / "a", sock)
    second = started(tmp_path / "b", sock)  # the same path: the first keeps it
    try:
        assert "belongs to another running pylogd" in read(second.log)
        assert json.loads(stats(sock, "--json").stdout)["pylogd"]["pid"] == first.proc.pid
    finally:
        for d in (second, first):
            (d.tmp / "down").unlink()
            assert d.stop() == 0
    third = started(tmp_path / "c", "/proc/no/such/ctl.sock")
    try:
        assert "cannot open control socket /proc/no/such/ctl.sock" in read(third.log)
    finally:
        (third.tmp / "down").unlink()
        assert third.stop() == 0


def test_listen_on_a_port_in_use_or_a_malformed_address_says_why_in_one_line(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = stats(tmp_path / "ctl.sock", "--listen", f"127.0.0.1:{port}")
    assert busy.returncode == 1 and "Traceback" not in busy.stderr
    assert busy.stderr == f"pylogd stats: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    for listen, why in (
        ("9477", "no port"),
        ("127.0.0.1:", "port '' is not a number from 0 to 65535"),
        ("127.0.0.1:http", "port 'http' is not a number"),
        ("127.0.0.1:70000", "port '70000' is not a number from 0 to 65535"),
        ("::1:9477", "an IPv6 address goes in brackets: [ADDR]:PORT"),
    ):
        bad = stats(tmp_path / "ctl.sock", "--listen", listen)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
        assert bad.stderr.startswith(f"pylogd stats: --listen needs HOST:PORT, not {listen!r}: {why}"), bad.stderr
    unknown = stats(tmp_path / "ctl.sock", "--listen", "no-such-host.invalid:9477")
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1, unknown.stderr
    assert unknown.stderr.startswith("pylogd stats: cannot listen on no-such-host.invalid:9477: "), unknown.stderr
