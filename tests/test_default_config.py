"""The shipped etc/pylogd.conf (what `make run` starts): it passes --check, and in a namespace it
writes a LOGEMU line per logged packet and a PRINTFLOW line at each connection's start and end."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from conftest import ROOT
from rig import Netns, read_text, start_pylogd, wait_for

from pylogd.cli import main

DEFAULT = ROOT / "etc" / "pylogd.conf"

RULES = """
table inet demo {
    chain input { type filter hook input priority 0; udp dport 5555 log group 0 prefix "IN: "; }
    chain output { type filter hook output priority 0; ct state new accept; }
}
"""


def test_default_config_passes_check(capsys) -> None:
    assert main(["--check", "-c", str(DEFAULT)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU" in out
    assert "ct1:NFCT,ip2str2:IP2STR,print2:PRINTFLOW,emu2:LOGEMU" in out


def _send(port: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"hello", ("127.0.0.1", port))
        return s.getsockname()[1]


def test_default_config_logs_packets_and_connections(netns: Netns, tmp_path: Path) -> None:
    logfile = tmp_path / "pylogd.log"
    text = DEFAULT.read_text().replace("/var/log/pylogd/", f"{tmp_path}/")
    text = text.replace('logfile="stdout"', f'logfile="{logfile}"')
    conf = tmp_path / "pylogd.conf"
    conf.write_text(text)
    netns.nft(RULES)
    daemon = start_pylogd(netns, conf, logfile)
    sport = netns.call(_send, 5555)
    packets = wait_for(lambda: read_text(tmp_path / "packets.log"), what="the packet line")
    line = rf" IN:  IN=lo OUT= .*SRC=127\.0\.0\.1 DST=127\.0\.0\.1 .*PROTO=UDP SPT={sport} DPT=5555 "
    assert re.search(line, packets), packets
    netns.run(["conntrack", "-F"])
    flows = wait_for(lambda: (t := read_text(tmp_path / "flows.log")) and "[DESTROY]" in t and t, what="the flow's end")
    mine = [line for line in flows.splitlines() if f"SPT={sport} DPT=5555" in line]
    assert [line.split("] ORIG:")[0].rsplit("[", 1)[1] for line in mine] == ["NEW", "DESTROY"], flows
    assert "ORIG: SRC=127.0.0.1 DST=127.0.0.1 PROTO=UDP" in mine[0]
    assert f"REPLY: SRC=127.0.0.1 DST=127.0.0.1 PROTO=UDP SPT=5555 DPT={sport}" in mine[0]
    assert daemon.stop() == 0
