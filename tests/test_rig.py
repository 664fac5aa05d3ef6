"""The namespace rig itself: creation, traffic helpers, and teardown that leaves nothing behind."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import rig as rigmod
from rig import Rig, need_root_and_netns, netns_names, rig_fixture, wait_for  # noqa: F401 - a fixture

from pylogd.netlink import netns_context


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0); it is dead for our purposes
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1].startswith("Z")


def test_need_root_and_netns_skips_or_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rigmod, "_probe", "no namespaces here (simulated)")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="simulated"):
        need_root_and_netns()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        need_root_and_netns()
    monkeypatch.setattr(rigmod, "_probe", "")
    need_root_and_netns()  # a working probe passes, CI or not


def test_teardown_removes_everything_even_when_the_test_fails(tmp_path: Path) -> None:
    need_root_and_netns()
    names: list[str] = []
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="test body failed"), Rig(tmp_path) as r:
        p = r.pair()
        names += [p.a.name, p.b.name]
        assert set(names) <= netns_names()
        inside = p.a.spawn(["sh", "-c", "sleep 600 & sleep 600"])
        outside = r.spawn(["sleep", "600"])
        pids += [inside.pid, outside.pid]
        wait_for(lambda: len(p.a.pids()) >= 2, what="both sleeps in the namespace")
        pids += p.a.pids()
        raise RuntimeError("test body failed")
    assert not set(names) & netns_names()
    assert all(not os.path.exists(f"/run/netns/{n}") for n in names)
    for pid in pids:
        wait_for(lambda pid=pid: _gone(pid), timeout=5, what=f"pid {pid} to end")


def test_pair_has_working_ipv4_and_ipv6_without_dad(rig: Rig) -> None:
    p = rig.pair()
    for family, dst in ((socket.AF_INET, p.a_ip4), (socket.AF_INET6, p.a_ip6)):
        # binding an address still in DAD would fail with EADDRNOTAVAIL: nodad makes it usable at once
        with netns_context(p.a.name):
            s = socket.socket(family, socket.SOCK_DGRAM)
        with s:
            s.bind((dst, 0))
            s.settimeout(5)
            port = s.getsockname()[1]
            src_port = p.b.send_udp(dst, port, b"hello " + dst.encode())
            data, addr = s.recvfrom(100)
        assert data == b"hello " + dst.encode()
        assert addr[0] == (p.b_ip4 if family == socket.AF_INET else p.b_ip6)
        assert addr[1] == src_port


def test_call_runs_inside_the_namespace_and_raises_its_errors(rig: Rig) -> None:
    p = rig.pair()
    names_a = {name for _, name in p.a.call(socket.if_nameindex)}
    names_b = {name for _, name in p.b.call(socket.if_nameindex)}
    assert names_a == {"lo", p.a_if}
    assert names_b == {"lo", p.b_if}
    assert p.a.mac(p.a_if) != p.b.mac(p.b_if)
    with pytest.raises(OSError):
        p.a.call(socket.if_nametoindex, p.b_if)


def test_run_and_nft(rig: Rig) -> None:
    ns = rig.netns()
    ns.nft("table inet rigtest {\n chain c {\n  type filter hook input priority 0;\n  counter\n }\n}\n")
    assert "table inet rigtest" in ns.run(["nft", "list", "ruleset"]).stdout
    assert ns.run("echo $((6 * 7))").stdout.strip() == "42"
    with pytest.raises(AssertionError, match="exited 3"):
        ns.run("exit 3")
    assert ns.python("import socket; print(len(socket.if_nameindex()))").stdout.strip() == "1"


def test_spawn_writes_output_files_and_is_killed_at_teardown(tmp_path: Path) -> None:
    need_root_and_netns()
    with Rig(tmp_path) as r:
        ns = r.netns()
        proc = ns.spawn(["sh", "-c", "echo to-out; echo to-err >&2; ip link show lo; exec sleep 600"])
        wait_for(lambda: "lo:" in proc.stdout.read_text(), what="the process output")
        assert "to-out" in proc.stdout.read_text()
        assert proc.stderr.read_text().strip() == "to-err"
        assert proc.alive()
        pid = proc.pid
    assert not proc.alive()
    assert _gone(pid)


def test_crafted_frames_and_scapy_reach_the_other_namespace(rig: Rig) -> None:
    from scapy.all import IP, UDP, Ether

    p = rig.pair()
    a_mac, b_mac = p.a.mac(p.a_if), p.b.mac(p.b_if)
    with netns_context(p.a.name):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.bind((p.a_ip4, 7777))
        s.settimeout(5)

        def frame(text: bytes) -> Ether:
            return Ether(src=b_mac, dst=a_mac) / IP(src=p.b_ip4, dst=p.a_ip4) / UDP(sport=1234, dport=7777) / text

        p.b.send_frames([bytes(frame(b"raw-frame"))], p.b_if)
        assert s.recvfrom(100) == (b"raw-frame", (p.b_ip4, 1234))
        p.b.scapy_sendp([frame(b"scapy-sendp")], p.b_if)
        assert s.recvfrom(100) == (b"scapy-sendp", (p.b_ip4, 1234))
        p.b.scapy_send([IP(dst=p.a_ip4) / UDP(sport=4321, dport=7777) / b"scapy-send"])
        assert s.recvfrom(100) == (b"scapy-send", (p.b_ip4, 4321))


def test_tcp_helper_connects(rig: Rig) -> None:
    p = rig.pair()
    with netns_context(p.a.name):
        srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    with srv:
        srv.bind((p.a_ip6, 0))
        srv.listen()
        port = srv.getsockname()[1]
        assert p.b.send_tcp(p.a_ip6, port, b"data")
        conn, addr = srv.accept()
        with conn:
            assert addr[0] == p.b_ip6
            assert conn.recv(10) == b"data"
    assert not p.b.send_tcp(p.a_ip6, port)  # nobody listens any more: refused


def test_default_workdir_is_removed_at_close() -> None:
    r = Rig()
    (r.workdir / "some.stdout").write_text("output")
    r.close()
    assert not r.workdir.exists()
