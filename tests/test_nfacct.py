"""NFACCT: the kernel's accounting objects (Debian's ``nfacct``, iptables ``-m nfacct``) on real
traffic in a network namespace, through ``acct1:NFACCT,gp1:GPRINT``, and beside ulogd 2.0.8's NFACCT
on the same objects."""

from __future__ import annotations

import shutil
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from rig import Netns, Rig, read_text, start_pylogd, wait_for

from pylogd.nfacct import MSG_ACCT_NEW, AcctSocket, decode, dump
from pylogd.plugin import Kind
from pylogd.registry import Registry

ULOGD = "/usr/sbin/ulogd"
PYLOGD = [sys.executable, "-m", "pylogd"]


def _nla(atype: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), atype) + payload + b"\0" * (-len(payload) % 4)


def test_decode_reads_name_counters_and_quota() -> None:
    body = (
        bytes(4)
        + _nla(1, b"web\0")
        + _nla(2, (7).to_bytes(8, "big"))
        + _nla(3, (700).to_bytes(8, "big"))
        + _nla(5, (2).to_bytes(4, "big"))
        + _nla(6, (1000).to_bytes(8, "big"))
    )
    msg = struct.pack("=IHHII", 16 + len(body), MSG_ACCT_NEW, 2, 42, 0) + body
    obj = decode(memoryview(msg), 0, len(msg))
    assert obj is not None
    assert (obj.name, obj.pkts, obj.bytes, obj.seq, obj.flags, obj.quota, obj.msg) == ("web", 7, 700, 42, 2, 1000, msg)
    other = struct.pack("=IHHII", 20, 3, 2, 42, 0) + bytes(4)  # NLMSG_DONE
    assert decode(memoryview(other), 0, len(other)) is None


def test_plugin_declares_ulogds_options_and_keys() -> None:
    cls = Registry().require("NFACCT", None)
    spec = cls.spec
    assert spec.kind is Kind.INPUT
    assert [(o.name, o.default) for o in spec.options[:3]] == [
        ("pollinterval", 0),
        ("zerocounter", 1),
        ("timestamp", 0),
    ]
    names = [k.name for k in spec.outputs]
    assert names[:6] == ["sum.name", "sum.pkts", "sum.bytes", "sum", "oob.time.sec", "oob.time.usec"]


def test_pollinterval_is_required(tmp_path: Path) -> None:
    conf = tmp_path / "p.conf"
    conf.write_text("[global]\nstack=acct1:NFACCT,gp1:GPRINT\n[acct1]\nzerocounter=0\n[gp1]\nfile=/dev/null\n")
    out = subprocess.run([*PYLOGD, "--check", "-c", str(conf)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "pollinterval" in out.stderr + out.stdout
    conf.write_text(conf.read_text().replace("zerocounter=0", "pollinterval=10"))
    out = subprocess.run([*PYLOGD, "--check", "-c", str(conf)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


# ------------------------------------------------------------------------------------------------
# on real traffic


def need_nfacct() -> None:
    if shutil.which("nfacct") is None:
        pytest.skip("Debian's nfacct tool is not installed (apt-get install nfacct)")


def accounting(ns: Netns, *names: str) -> None:
    """Objects ``names`` in ``ns``; iptables counts what leaves through the first, and the UDP that
    comes in through the others."""
    need_nfacct()
    ns.run(["nfacct", "add", names[0]])
    ns.run(["iptables", "-A", "OUTPUT", "-m", "nfacct", "--nfacct-name", names[0]])
    for name in names[1:]:
        ns.run(["nfacct", "add", name])
        ns.run(["iptables", "-A", "INPUT", "-p", "udp", "-m", "nfacct", "--nfacct-name", name])


def udp(count: int, size: int = 100) -> None:
    """``count`` UDP datagrams of ``size`` bytes of payload to a closed port of 127.0.0.1: each comes
    in once and is answered by an ICMP port unreachable (two packets out, one in)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(count):
            s.sendto(b"x" * size, ("127.0.0.1", 9))


def out_bytes(count: int, size: int = 100) -> int:
    """Bytes that leave for ``count`` :func:`udp` datagrams: the datagram (28 + size) and the ICMP
    error quoting it (28 + 28 + size)."""
    return count * ((28 + size) + (56 + size))


def in_bytes(count: int, size: int = 100) -> int:
    return count * (28 + size)


def config(tmp: Path, name: str, options: str, stack: str = "acct1:NFACCT,gp1:GPRINT") -> Path:
    conf = tmp / f"{name}.conf"
    conf.write_text(
        f'[global]\nlogfile="{tmp}/{name}.daemon.log"\nloglevel=3\nstack={stack}\n'
        f'[acct1]\n{options}\n[gp1]\nfile="{tmp}/{name}.gprint"\nsync=1\n'
    )
    return conf


def records(path: Path) -> list[dict[str, str]]:
    return [dict(item.split("=", 1) for item in line.split(",") if item) for line in read_text(path).splitlines()]


def sums(path: Path, name: str) -> list[tuple[int, int]]:
    return [(int(r["sum.pkts"]), int(r["sum.bytes"])) for r in records(path) if r.get("sum.name") == name]


def test_polls_zero_the_counters_and_lose_nothing(rig: Rig, tmp_path: Path) -> None:
    ns = rig.netns("acct")
    accounting(ns, "out1", "in1")
    start_pylogd(ns, config(tmp_path, "pylogd", "pollinterval=1"), tmp_path / "pylogd.daemon.log")
    out = tmp_path / "pylogd.gprint"
    ns.call(udp, 5)
    ns.call(udp, 3, 300)
    want_out = (16, out_bytes(5) + out_bytes(3, 300))
    want_in = (8, in_bytes(5) + in_bytes(3, 300))

    def total(name: str) -> tuple[int, int]:
        got = sums(out, name)
        return sum(p for p, _ in got), sum(b for _, b in got)

    wait_for(lambda: total("out1") == want_out and total("in1") == want_in, what="every packet in the sums")
    # the polls zeroed what they read: the next ones read nothing new
    polls = len(sums(out, "out1"))
    wait_for(lambda: len(sums(out, "out1")) >= polls + 1, what="one more poll")
    assert sums(out, "out1")[-1] == (0, 0) and sums(out, "in1")[-1] == (0, 0)
    assert total("out1") == want_out and total("in1") == want_in


def test_sigusr2_reads_at_once_without_zeroing(rig: Rig, tmp_path: Path) -> None:
    ns = rig.netns("acct")
    accounting(ns, "out1")
    # zerocounter=1 and a poll far away: only the signal reads
    proc = start_pylogd(
        ns, config(tmp_path, "pylogd", "pollinterval=3600\ntimestamp=1"), tmp_path / "pylogd.daemon.log"
    )
    out = tmp_path / "pylogd.gprint"
    ns.call(udp, 4)
    proc.signal(signal.SIGUSR2)
    wait_for(lambda: sums(out, "out1"), what="the SIGUSR2 dump")
    ns.call(udp, 1)
    proc.signal(signal.SIGUSR2)
    wait_for(lambda: len(sums(out, "out1")) == 2, what="the second SIGUSR2 dump")
    assert sums(out, "out1") == [(8, out_bytes(4)), (10, out_bytes(5))]  # the first read zeroed nothing
    assert [(o.name, o.pkts) for o in dump(ns.name)] == [("out1", 10)]
    rec = records(out)[0]
    assert int(rec["oob.time.sec"]) > 1_600_000_000 and 0 <= int(rec["oob.time.usec"]) < 1_000_000
    assert "SIGUSR2: reading the accounting objects now, without zeroing them" in read_text(
        tmp_path / "pylogd.daemon.log"
    )


def test_netns_and_objects_made_or_removed_while_running(rig: Rig, tmp_path: Path) -> None:
    ns = rig.netns("acct")
    accounting(ns, "out1")
    ns.run(["nfacct", "add", "spare"])
    # pylogd in the root namespace reads the namespace's objects
    start_pylogd(
        rig,
        config(tmp_path, "pylogd", f"pollinterval=1\nzerocounter=0\nnetns={ns.name}"),
        tmp_path / "pylogd.daemon.log",
    )
    out = tmp_path / "pylogd.gprint"
    ns.call(udp, 2)
    wait_for(lambda: (4, out_bytes(2)) in sums(out, "out1"), what="the namespace's counts")
    assert all(r["oob.netns"] == ns.name for r in records(out))
    ns.run(["nfacct", "add", "later"])
    ns.run(["iptables", "-A", "OUTPUT", "-m", "nfacct", "--nfacct-name", "later"])
    ns.call(udp, 1)
    wait_for(lambda: (2, out_bytes(1)) in sums(out, "later"), what="the object made while running")
    ns.run(["nfacct", "delete", "spare"])
    seen = len(records(out))
    wait_for(lambda: len(records(out)) >= seen + 4, what="two polls after the deletion")
    last = [r["sum.name"] for r in records(out)[-2:]]
    assert sorted(last) == ["later", "out1"]
    assert with_socket_in(ns) == {"later", "out1"}


def with_socket_in(ns: Netns) -> set[str]:
    with AcctSocket(ns.name) as sock:
        return {o.name for o in sock.dump()}


def test_same_sums_as_ulogd(rig: Rig, tmp_path: Path) -> None:
    """Both daemons on the same objects with zerocounter=0 (neither resets the other): the same
    lines for the same counts, in GPRINT's format."""
    if not Path(ULOGD).exists():
        pytest.skip("ulogd 2.0.8 is not installed (apt-get install ulogd2)")
    ns = rig.netns("acct")
    accounting(ns, "out1", "in1", "in2")
    ns.call(udp, 3)  # counted before either starts: both first polls show it
    options = "pollinterval=1\nzerocounter=0"
    ns.spawn([ULOGD, "-c", str(config(tmp_path, "ulogd", options))], name="ulogd")
    start_pylogd(ns, config(tmp_path, "pylogd", options), tmp_path / "pylogd.daemon.log")
    u_out, p_out = tmp_path / "ulogd.gprint", tmp_path / "pylogd.gprint"
    first = [
        f"sum.name=out1,sum.pkts=6,sum.bytes={out_bytes(3)}",
        f"sum.name=in1,sum.pkts=3,sum.bytes={in_bytes(3)}",
        f"sum.name=in2,sum.pkts=3,sum.bytes={in_bytes(3)}",
    ]
    wait_for(lambda: all(len(read_text(o).splitlines()) >= 3 for o in (u_out, p_out)), what="a poll of each")
    assert read_text(u_out).splitlines()[:3] == first
    assert read_text(p_out).splitlines()[:3] == first
    ns.call(udp, 2, 500)
    last = [
        f"sum.name=out1,sum.pkts=10,sum.bytes={out_bytes(3) + out_bytes(2, 500)}",
        f"sum.name=in1,sum.pkts=5,sum.bytes={in_bytes(3) + in_bytes(2, 500)}",
        f"sum.name=in2,sum.pkts=5,sum.bytes={in_bytes(3) + in_bytes(2, 500)}",
    ]
    wait_for(lambda: all(read_text(o).splitlines()[-3:] == last for o in (u_out, p_out)), what="the new sums from both")
    # every line either wrote is one of these two polls' (the traffic came in one go), in one format
    assert set(read_text(u_out).splitlines()) <= set(first + last)
    assert set(read_text(p_out).splitlines()) <= set(first + last)


NFT_COUNTERS = """
table inet fw {
    counter web { }
    counter idle { }
    quota cap { over 100 mbytes }
    chain out { type filter hook output priority 0; udp dport 9 counter name web; udp dport 9 quota name cap; }
}
table ip fw4 {
    counter errors { }
    chain out { type filter hook output priority 0; ip protocol icmp counter name errors; }
}
"""


def test_nft_named_counters_as_a_second_source(rig: Rig, tmp_path: Path) -> None:
    ns = rig.netns("acct")
    ns.nft(NFT_COUNTERS)
    start_pylogd(ns, config(tmp_path, "pylogd", "pollinterval=1\nsource=nft"), tmp_path / "pylogd.daemon.log")
    out = tmp_path / "pylogd.gprint"
    ns.call(udp, 3)

    def total(name: str) -> tuple[int, int]:
        got = sums(out, name)
        return sum(p for p, _ in got), sum(b for _, b in got)

    wait_for(
        lambda: total("inet.fw.web") == (3, in_bytes(3)) and total("ip.fw4.errors") == (3, out_bytes(3) - in_bytes(3)),
        what="the named counters' sums",
    )
    assert total("inet.fw.idle") == (0, 0)
    # zerocounter=1 reset them as they were read (NFT_MSG_GETOBJ_RESET)
    wait_for(lambda: sums(out, "inet.fw.web")[-1] == (0, 0), what="a poll after the reset")
    # the quota is read every poll and never reset: what it consumed stays
    wait_for(lambda: len(sums(out, "inet.fw.cap")) >= 2, what="two polls of the quota")
    assert set(sums(out, "inet.fw.cap")[-2:]) == {(0, in_bytes(3))}
    assert {(o.name, o.pkts) for o in dump(ns.name, source="nft")} <= {
        ("inet.fw.web", 0), ("inet.fw.idle", 0), ("ip.fw4.errors", 0), ("inet.fw.cap", 0)
    }  # fmt: skip
    quota = next(o for o in dump(ns.name, source="nft") if o.name == "inet.fw.cap")
    assert (quota.bytes, quota.quota) == (in_bytes(3), 100 << 20)
    started = "reading the nftables named counters and quotas every 1 s, zeroing the counters"
    assert started in read_text(tmp_path / "pylogd.daemon.log")
