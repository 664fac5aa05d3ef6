"""GPRINT and NACCT on records made by hand: what the side-by-side runs with ulogd cannot show (an ICMPv6
flow's type and code, a NEW event's missing end, the time stamp, long lines).  tests/test_compat_ulogd.py
and tests/test_nfct_compat.py compare both with the real ulogd 2.0.8."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

from sqlkit import SqlStack

FLOW = "ct1:NFCT,ip2str1:IP2STR,nacct1:NACCT"


class NacctStack(SqlStack):
    """NACCT reads named input keys, not a wildcard: the record's slots are its inputs'."""

    def entry(self, keys: dict) -> bytes:
        values: list = [None] * self.plan.size
        for name, value in keys.items():
            values[self.plan.slots[-1].inp(name)] = value
        assert self.convert is not None
        return self.convert(values)


def nacct(tmp: Path) -> NacctStack:
    return NacctStack(FLOW, f'[ct1]\n[nacct1]\nfile="{tmp / "n.log"}"\n')


def test_nacct_writes_an_icmpv6_flows_type_and_code_and_0_for_what_an_event_lacks(tmp_path: Path) -> None:
    stack = nacct(tmp_path)
    v6 = stack.entry(
        {
            "orig.ip.saddr.str": "fd77::2",
            "orig.ip.daddr.str": "fd77::1",
            "orig.ip.protocol": 58,
            "icmpv6.type": 128,
            "icmpv6.code": 0,
            "reply.raw.pktcount": 3,
            "reply.raw.pktlen": 312,
            "flow.end.sec": 1795388590,
        }
    )
    assert v6 == b"1795388590\t58\tfd77::2\t128\tfd77::1\t0\t3\t312\n"
    new = stack.entry(
        {
            "orig.ip.saddr.str": "10.0.0.1",
            "orig.ip.daddr.str": "10.0.0.2",
            "orig.ip.protocol": 6,
            "orig.l4.sport": 40000,
            "orig.l4.dport": 443,
        }
    )
    assert new == b"0\t6\t10.0.0.1\t40000\t10.0.0.2\t443\t0\t0\n"  # a NEW event: no end, no counters yet
    stack.stop()


def gprint(tmp: Path, timestamp: int) -> SqlStack:
    return SqlStack(
        "in1:PIPEIN,gp1:GPRINT", f'[in1]\npath="/nonexistent"\n[gp1]\nfile="{tmp / "g.log"}"\ntimestamp={timestamp}\n'
    )


def test_gprint_stamps_the_time_of_writing_first_and_has_no_line_limit(tmp_path: Path) -> None:
    stack = gprint(tmp_path, 1)
    line = stack.entry({"test.n": 7, "test.text": "x" * 10_000}).decode()
    assert re.fullmatch(r"timestamp=\d{4}/\d\d/\d\d-\d\d:\d\d:\d\d,test\.n=7,test\.text=x{10000}\n", line), line[:80]
    stack.stop()


def test_gprint_prints_an_ipv6_address_as_one(tmp_path: Path) -> None:
    stack = SqlStack("log1:NFLOG,base1:BASE,gp1:GPRINT", f'[log1]\ngroup=9\n[gp1]\nfile="{tmp_path / "g.log"}"\n')
    line = stack.entry({"ip.saddr": socket.inet_pton(socket.AF_INET6, "fd77::2"), "ip.protocol": 17})
    assert line == b"ip.saddr=fd77::2,ip.protocol=17\n"
    stack.stop()


def test_graphite_lines_use_the_event_time_or_now_and_no_leading_dot_without_prefix(tmp_path: Path) -> None:
    sections = '[in1]\npath="/nonexistent"\n[gr1]\nhost="127.0.0.1"\nport="2003"\n'
    stack = NacctStack("in1:SUMIN,gr1:GRAPHITE", sections)
    line = stack.entry({"sum.name": "ssh", "sum.pkts": 3, "sum.bytes": 180, "oob.time.sec": 1795388587})
    assert line == b"ssh.pkts 3 1795388587\nssh.bytes 180 1795388587\n"
    before = int(time.time())
    stamp = int(stack.entry({"sum.name": "dns", "sum.pkts": 1, "sum.bytes": 60}).split()[2])
    assert before <= stamp <= time.time()
    stack.stop()
