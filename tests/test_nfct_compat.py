"""pylogd's NFCT and the real ulogd 2.0.8's, listening to the same namespace's conntrack events at
once, must write the same PRINTFLOW lines and the same key values, apart from the fixes listed in
DIFFERENCES, in event mode and in hash mode.

Both daemons run ``ct1:NFCT,ip2str1:IP2STR,print1:PRINTFLOW,emu1:LOGEMU`` for the line and
``ct1:NFCT,ip2str1:IP2STR`` + a wildcard output for the keys (ulogd's JSON, pylogd's CAPTURE).
Kernel timestamps and counters are on, so even the times must agree exactly.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import time
from pathlib import Path

import pytest
from pylogd.plugins.inputs.nfct import Nfct
from rig import Netns, Rig, read_text, wait_for

ULOGD = "/usr/sbin/ulogd"
TEST_PLUGINS = Path(__file__).resolve().parent / "plugins" / "testplugins.py"

CT_RULES = """
table inet t {
    chain out { type filter hook output priority 0; ct state new accept; }
}
"""

# ------------------------------------------------------------------------------------------------
# Where pylogd deliberately differs from ulogd 2.0.8, in one place.
#: keys ulogd's JSON renames (its CIM names) -> pylogd's key names
JSON_NAMES = {"src_ip": "orig.ip.saddr.str", "dest_ip": "orig.ip.daddr.str"}
#: pylogd keys ulogd does not have (new keys); never in ulogd's records
NEW_KEYS = {k.name for k in Nfct.spec.outputs[26:]}


def expected_line(ulogd_line: str) -> str:
    """The PRINTFLOW line pylogd must write where ulogd wrote ``ulogd_line``."""
    # PRINTFLOW: ulogd prints the ICMP code as TYPE and the type as CODE
    return re.sub(r"PROTO=ICMP TYPE=(\d+) CODE=(\d+)", r"PROTO=ICMP TYPE=\2 CODE=\1", ulogd_line)


#: keys compared as one clock reading, within CLOCK_SLACK seconds.  A NEW event carries no
#: kernel start stamp, so each daemon reads its own clock; in hash mode ulogd keeps that reading
#: for the DESTROY while pylogd prefers the kernel's CTA_TIMESTAMP_START the DESTROY carries.
CLOCK_KEYS = {"flow.start.sec", "flow.start.usec"}
CLOCK_SLACK = 0.5


def clock(rec: dict) -> float:
    return rec["flow.start.sec"] + rec["flow.start.usec"] / 1e6


# ------------------------------------------------------------------------------------------------


def configs(tmp: Path, ct_options: str) -> tuple[Path, Path]:
    line = "stack=ct1:NFCT,ip2str1:IP2STR,print1:PRINTFLOW,emu1:LOGEMU\n"
    ulogd = tmp / "ulogd.conf"
    ulogd.write_text(
        f'[global]\nlogfile="{tmp}/ulogd.daemon.log"\nloglevel=3\n{line}'
        "stack=ct1:NFCT,ip2str1:IP2STR,json1:JSON\nstack=ct1:NFCT,ip2str1:IP2STR,nacct1:NACCT\n"
        f"[ct1]\n{ct_options}\n[emu1]\nfile={tmp}/ulogd.log\nsync=1\n[nacct1]\nfile={tmp}/ulogd.nacct\nsync=1\n"
        f"[json1]\nfile={tmp}/ulogd.json\nsync=1\ntimestamp=0\n"
    )
    pylogd = tmp / "pylogd.conf"
    pylogd.write_text(
        f'[global]\nlogfile="{tmp}/pylogd.daemon.log"\nloglevel=3\nplugin="{TEST_PLUGINS}"\n{line}'
        "stack=ct1:NFCT,ip2str1:IP2STR,cap1:CAPTURE\nstack=ct1:NFCT,ip2str1:IP2STR,nacct1:NACCT\n"
        f"[ct1]\n{ct_options}\n[emu1]\nfile={tmp}/pylogd.log\nsync=1\n[cap1]\nfile={tmp}/pylogd.keys\n"
        f"[nacct1]\nfile={tmp}/pylogd.nacct\n"
    )
    return ulogd, pylogd


def traffic() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        with socket.create_connection(srv.getsockname()) as c:
            conn, _ = srv.accept()
            c.sendall(b"hello")
            conn.recv(10)
            conn.close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.sendto(b"x" * 30, ("127.0.0.2", 5353))
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as u:
        u.sendto(b"y", ("::1", 5353))
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as icmp:
        icmp.sendto(bytes([8, 0, 0xF7, 0xFE, 0, 1, 0, 0]), ("127.0.0.3", 0))  # echo request, id 1, seq 0


def lines(path: Path) -> list[str]:
    return read_text(path).splitlines()


@pytest.mark.parametrize("ct_options", ["hash_enable=0", ""], ids=["event", "hash"])
def test_same_flows_same_output(rig: Rig, tmp_path: Path, ct_options: str) -> None:
    if not Path(ULOGD).exists():
        pytest.skip("ulogd 2.0.8 is not installed")
    ns: Netns = rig.netns("cc")
    ns.nft(CT_RULES)
    ns.run("sysctl -qw net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_timestamp=1")
    ulogd_conf, pylogd_conf = configs(tmp_path, ct_options)
    ns.spawn([ULOGD, "-c", str(ulogd_conf)], name="ulogd")
    ns.spawn([sys.executable, "-m", "pylogd", "-c", str(pylogd_conf)], name="pylogd")
    wait_for(lambda: "entering main loop" in read_text(tmp_path / "pylogd.daemon.log"), what="pylogd start")
    wait_for(lambda: "working in event mode" in read_text(tmp_path / "ulogd.daemon.log"), what="ulogd start")
    ns.call(traffic)
    ns.run(["conntrack", "-F"])
    outputs = [
        tmp_path / n for n in ("ulogd.log", "pylogd.log", "ulogd.json", "pylogd.keys", "ulogd.nacct", "pylogd.nacct")
    ]
    event_mode = ct_options == "hash_enable=0"
    want = 8 if event_mode else 4  # NEW and DESTROY of 4 flows; hash mode: only the DESTROYs

    def complete() -> bool:
        return all(len(lines(o)) >= want for o in outputs)

    wait_for(complete, timeout=15, what=f"{want} records from both daemons")
    time.sleep(0.3)  # nothing more may come
    assert len({len(lines(o)) for o in outputs}) == 1, [len(lines(o)) for o in outputs]
    # the same events, in the same order (both read the same multicast stream)
    u_lines, p_lines = [x[16:] for x in lines(outputs[0])], [x[16:] for x in lines(outputs[1])]
    fixed = 0
    for u, p in zip(u_lines, p_lines, strict=True):
        assert p == expected_line(u), f"\nulogd:  {u}\npylogd: {p}"
        fixed += expected_line(u) != u
    assert fixed == (2 if event_mode else 1)  # the ICMP flow's lines
    assert any("PKTS=" in x and "PKTS=0 " not in x for x in p_lines if "DESTROY" in x)
    u_keys = [json.loads(x) for x in lines(outputs[2])]
    p_keys = [json.loads(x) for x in lines(outputs[3])]
    for u, p in zip(u_keys, p_keys, strict=True):
        for name, value in u.items():
            if name in ("timestamp", "dvc"):
                continue
            if name in CLOCK_KEYS:
                assert abs(clock(u) - clock(p)) < CLOCK_SLACK, (u, p)
                continue
            ours = JSON_NAMES.get(name, name)
            assert ours in p, f"{name} missing from pylogd's {p}"
            assert p[ours] == value, f"{name}: ulogd {value}, pylogd {p[ours]}"
        # every key pylogd adds beyond ulogd's is one of the new keys, RAW ct, or an address
        extra = {k for k in p if k not in u and k not in JSON_NAMES.values()}
        assert extra <= NEW_KEYS | {"ct", "orig.ip.saddr", "orig.ip.daddr", "reply.ip.saddr", "reply.ip.daddr"}, extra
    # NACCT: the same accounting lines.  In event mode ulogd's NEW lines carry what an earlier event left
    # in the keys it lacks (an end time, ports); pylogd writes 0 there, so only DESTROY lines compare.
    u_nacct, p_nacct = lines(outputs[4]), lines(outputs[5])
    destroys = [i for i, k in enumerate(u_keys) if k.get("ct.event", 4) & 4]
    assert [p_nacct[i] for i in destroys] == [u_nacct[i] for i in destroys]
    assert any(line.split("\t")[1] == "1" for line in p_nacct)  # the ICMP flow: type and code as ports
    assert all(line.split("\t")[0] == "0" for i, line in enumerate(p_nacct) if i not in destroys)
