"""JSON: ulogd 2.0.8's line key for key, the ECS document, the socket modes and their outages, and the
real ulogd beside pylogd on the same packets and conntrack events.

Where pylogd's line deliberately differs from ulogd's is named once, in the block below.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PYLOGD, ROOT
from daemonkit import Daemon, read
from hypothesis import given, settings
from hypothesis import strategies as st
from pylogd.plugins.outputs import json as jsonout
from rig import Rig, read_text, wait_for
from test_compat_ulogd import (  # noqa: F401  (pair: a fixture)
    DIFFERENCES,
    TRANSPORT,
    pair,
    run_both_on_corpus,
    wait_equal_and_quiet,
)
from test_nfct_compat import CT_RULES, NEW_KEYS, traffic

from pylogd import transport
from pylogd.config import parse_ini
from pylogd.control import request
from pylogd.keys import KeyType
from pylogd.log import Logger
from pylogd.plugin import Slots, key
from pylogd.registry import Registry
from pylogd.stack import build

ULOGD = "/usr/sbin/ulogd"

# ------------------------------------------------------------------------------------------------
# Where pylogd's JSON line deliberately differs from ulogd 2.0.8's, in one place.

#: ulogd leaves the UTC offset out when it is 0; pylogd always writes it
UTC_SUFFIX = "+0000"
#: keys pylogd writes where ulogd's line has none: BASE gives tcp.urgp also without the URG flag
EXTRA_PACKET_KEYS = {"tcp.urgp"}
#: pylogd's NFCT keys beyond ulogd's, as JSON writes them (addresses and raw data are left out)
EXTRA_FLOW_KEYS = {k for k in NEW_KEYS if k != "oob.netns"}


def expected_timestamp(ulogd_stamp: str | None, pylogd_line: dict) -> str | None:
    """The timestamp pylogd must write: ulogd's format plus the offset, at pylogd's own packet time
    (the two NFLOG groups stamp a packet a few µs apart)."""
    if ulogd_stamp is None:
        return None
    if "oob.time.sec" not in pylogd_line:
        return ulogd_stamp + UTC_SUFFIX
    t = time.localtime(pylogd_line["oob.time.sec"])
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{pylogd_line['oob.time.usec']:06d}" + UTC_SUFFIX


# ------------------------------------------------------------------------------------------------
# in-process: real stacks from a config, the JSON handler on a hand-filled record


class JsonStack:
    """A stack built from ``stack=`` as the daemon builds it; ``line(**keys)`` is JSON's entry for
    an event whose valid keys are ``keys`` (each at the slot JSON reads it from)."""

    def __init__(self, stack: str, options: str = "") -> None:
        raw = parse_ini("test.conf", f"[global]\nstack={stack}\n[json1]\n{options}\n[ct1]\n")
        plan = build(raw, Registry(), Logger).stacks[0]
        self.size = plan.size
        self.wildcard = list(plan.slots[-1].wildcard)
        self.slots = {k.name: slot for k, slot in self.wildcard}
        self.plugin = plan.instances[-1].plugin
        self.convert = self.plugin.handler(plan.slots[-1])

    def record(self, keys: dict[str, Any]) -> list:
        values: list = [None] * self.size
        for name, value in keys.items():
            if name in self.slots:  # JSON does not read the others (wildcard_reads): they stay unmade
                values[self.slots[name]] = value
        return values

    def line(self, **keys: Any) -> bytes:
        return self.convert(self.record({k.replace("__", "."): v for k, v in keys.items()}))

    def text(self, keys: dict[str, Any]) -> str:
        return self.convert(self.record(keys)).decode()


@pytest.fixture
def tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Set the local time zone of this process: tz("Europe/Paris")."""

    def set_zone(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


PACKET_STACK = "log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,mac2str1:HWHDR,json1:JSON"
FLOW_STACK = "ct1:NFCT,ip2str1:IP2STR,json1:JSON"

# the reference's live run (ulogd-2.0.8.md 9.2): the TCP SYN, with every key ulogd wrote
TCP_SYN = {
    "raw.pktlen": 60, "raw.pktcount": 1, "oob.prefix": "TCPIN: ", "oob.time.sec": 1795388587,
    "oob.time.usec": 721317, "oob.mark": 0, "oob.ifindex_in": 6, "oob.hook": 1, "raw.mac_len": 14,
    "oob.family": 2, "oob.protocol": 2048, "raw.label": 0, "raw.type": 1, "raw.mac.addrlen": 6,
    "ip.protocol": 6, "ip.tos": 0, "ip.ttl": 64, "ip.totlen": 60, "ip.ihl": 5, "ip.csum": 48794, "ip.id": 26501,
    "ip.fragoff": 16384, "tcp.sport": 34358, "tcp.dport": 2222, "tcp.seq": 3537804397, "tcp.ackseq": 0,
    "tcp.window": 64240, "tcp.offset": 0, "tcp.reserved": 0, "tcp.urg": 0, "tcp.ack": 0, "tcp.psh": 0,
    "tcp.rst": 0, "tcp.syn": 1, "tcp.fin": 0, "tcp.res1": 0, "tcp.res2": 0, "tcp.csum": 5323, "oob.in": "rsva",
    "oob.out": "", "ip.saddr.str": "10.77.0.2", "ip.daddr.str": "10.77.0.1", "mac.saddr.str": "42:69:33:72:3a:73",
    "mac.daddr.str": "a6:0c:a2:bf:78:26", "mac.str": "a6:0c:a2:bf:78:26:42:69:33:72:3a:73:08:00",
    # keys JSON leaves out: addresses and raw data
    "ip.saddr": bytes([10, 77, 0, 2]), "ip.daddr": bytes([10, 77, 0, 1]), "raw.pkt": b"E\x00", "raw.mac": b"\x00",
}  # fmt: skip
ULOGD_TCP_SYN = (
    '{"timestamp": "2026-11-22T23:03:07.721317", "dvc": "Netfilter", "raw.pktlen": 60, "raw.pktcount": 1, '
    '"oob.prefix": "TCPIN: ", "oob.time.sec": 1795388587, "oob.time.usec": 721317, "oob.mark": 0, '
    '"oob.ifindex_in": 6, "oob.hook": 1, "raw.mac_len": 14, "oob.family": 2, "oob.protocol": 2048, "raw.label": 0, '
    '"raw.type": 1, "raw.mac.addrlen": 6, "ip.protocol": 6, "ip.tos": 0, "ip.ttl": 64, "ip.totlen": 60, '
    '"ip.ihl": 5, "ip.csum": 48794, "ip.id": 26501, "ip.fragoff": 16384, "src_port": 34358, "dest_port": 2222, '
    '"tcp.seq": 3537804397, "tcp.ackseq": 0, "tcp.window": 64240, "tcp.offset": 0, "tcp.reserved": 0, '
    '"tcp.urg": 0, "tcp.ack": 0, "tcp.psh": 0, "tcp.rst": 0, "tcp.syn": 1, "tcp.fin": 0, "tcp.res1": 0, '
    '"tcp.res2": 0, "tcp.csum": 5323, "oob.in": "rsva", "oob.out": "", "src_ip": "10.77.0.2", '
    '"dest_ip": "10.77.0.1", "mac.saddr.str": "42:69:33:72:3a:73", "mac.daddr.str": "a6:0c:a2:bf:78:26", '
    '"mac.str": "a6:0c:a2:bf:78:26:42:69:33:72:3a:73:08:00"}\n'
)


def with_offset(ulogd_line: str, offset: str) -> str:
    """ulogd's line with the UTC offset it leaves out (the one deliberate difference here)."""
    stamp_end = ulogd_line.index('", "dvc"')
    return ulogd_line[:stamp_end] + offset + ulogd_line[stamp_end:]


def test_packet_line_is_ulogds(tz) -> None:
    tz("UTC")
    line = JsonStack(PACKET_STACK).text(TCP_SYN)
    assert line == with_offset(ULOGD_TCP_SYN, UTC_SUFFIX)
    # the separators and escapes are json.dumps's defaults (jansson's): re-encoding changes nothing
    assert json.dumps(json.loads(line), ensure_ascii=False) + "\n" == line


def test_eventv1_boolean_label_device(tz) -> None:
    tz("UTC")
    stack = JsonStack(PACKET_STACK, 'eventv1=1\nboolean_label=1\ndevice="fw1 test"')
    obj = json.loads(stack.text(TCP_SYN), object_pairs_hook=list)
    assert obj[:4] == [
        ("@version", 1),
        ("@timestamp", "2026-11-22T23:03:07.721317+0000"),
        ("dvc", "fw1 test"),
        ("raw.pktlen", 60),
    ]
    names = [k for k, _ in obj]
    # raw.label becomes "action" in its place: after oob.protocol, before raw.type
    assert names[names.index("oob.protocol") + 1 : names.index("raw.type")] == ["action"]
    assert dict(obj)["action"] == "blocked"
    allowed = json.loads(stack.text({**TCP_SYN, "raw.label": 1}))
    assert allowed["action"] == "allowed" and "raw.label" not in allowed


@pytest.mark.parametrize(
    ("zone", "stamp"),
    [
        ("UTC", "2026-11-22T23:03:07.721317+0000"),
        ("Europe/Paris", "2026-11-23T00:03:07.721317+0100"),  # ulogd's live run under Paris: +0100
        ("Asia/Kolkata", "2026-11-23T04:33:07.721317+0530"),
        ("America/St_Johns", "2026-11-22T19:33:07.721317-0330"),
        ("Pacific/Marquesas", "2026-11-22T13:33:07.721317-0930"),
        ("XYZ0:30", "2026-11-22T22:33:07.721317-0030"),  # POSIX rule, 30 min west: ulogd wrote +0030
    ],
)
def test_timestamp_is_local_time_with_its_offset(tz, zone: str, stamp: str) -> None:
    tz(zone)
    stack = JsonStack(PACKET_STACK)
    assert json.loads(stack.text(TCP_SYN))["timestamp"] == stamp
    no_usec = {k: v for k, v in TCP_SYN.items() if k != "oob.time.usec"}
    assert json.loads(stack.text(no_usec))["timestamp"] == stamp.replace(".721317", "")


def test_without_packet_time_the_timestamp_is_now(tz) -> None:
    tz("UTC")
    before = int(time.time())
    obj = json.loads(JsonStack(PACKET_STACK).text({"oob.prefix": "x"}))
    after = int(time.time())
    stamps = {time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(t)) for t in range(before, after + 1)}
    assert obj["timestamp"] in stamps
    assert "timestamp" not in json.loads(JsonStack(PACKET_STACK, "timestamp=0").text(TCP_SYN))


# the reference's NFCT JSON (ulogd-2.0.8.md 9.3), first line
ULOGD_FLOW = (
    '{"timestamp": "2026-11-22T23:03:07", "dvc": "Netfilter", "orig.ip.protocol": 6, "orig.l4.sport": 34358, '
    '"orig.l4.dport": 2222, "orig.raw.pktlen": 0, "orig.raw.pktcount": 0, "reply.ip.protocol": 6, '
    '"reply.l4.sport": 2222, "reply.l4.dport": 34358, "reply.raw.pktlen": 0, "reply.raw.pktcount": 0, '
    '"ct.mark": 0, "ct.id": 89636028, "ct.event": 1, "flow.start.sec": 1795388587, "flow.start.usec": 721596, '
    '"oob.family": 2, "oob.protocol": 0, "src_ip": "10.77.0.2", "dest_ip": "10.77.0.1", '
    '"reply.ip.saddr.str": "10.77.0.1", "reply.ip.daddr.str": "10.77.0.2"}\n'
)
FLOW_NEW = {
    "orig.ip.protocol": 6, "orig.l4.sport": 34358, "orig.l4.dport": 2222, "orig.raw.pktlen": 0,
    "orig.raw.pktcount": 0, "reply.ip.protocol": 6, "reply.l4.sport": 2222, "reply.l4.dport": 34358,
    "reply.raw.pktlen": 0, "reply.raw.pktcount": 0, "ct.mark": 0, "ct.id": 89636028, "ct.event": 1,
    "flow.start.sec": 1795388587, "flow.start.usec": 721596, "oob.family": 2, "oob.protocol": 0,
    "orig.ip.saddr.str": "10.77.0.2", "orig.ip.daddr.str": "10.77.0.1", "reply.ip.saddr.str": "10.77.0.1",
    "reply.ip.daddr.str": "10.77.0.2",
    "orig.ip.saddr": bytes([10, 77, 0, 2]), "orig.ip.daddr": bytes([10, 77, 0, 1]),
    "reply.ip.saddr": bytes([10, 77, 0, 1]), "reply.ip.daddr": bytes([10, 77, 0, 2]),
}  # fmt: skip


def test_flow_line_is_ulogds(tz, monkeypatch: pytest.MonkeyPatch) -> None:
    tz("UTC")
    monkeypatch.setattr(jsonout.time, "time", lambda: 1795388587.9)  # flows are stamped with the current time
    assert JsonStack(FLOW_STACK).text(FLOW_NEW) == with_offset(ULOGD_FLOW, UTC_SUFFIX)


def test_two_keys_under_one_name_take_the_first_place_and_the_last_value(tz) -> None:
    # ip.saddr.str and orig.ip.saddr.str are both "src_ip" (IP2STR gives them in that order)
    tz("UTC")
    stack = JsonStack(FLOW_STACK, "timestamp=0")
    both = json.loads(stack.text({**FLOW_NEW, "ip.saddr.str": "192.0.2.1"}), object_pairs_hook=list)
    names = [k for k, _ in both]
    assert names.count("src_ip") == 1
    assert dict(both)["src_ip"] == "10.77.0.2"  # the later key's value...
    assert names.index("src_ip") < names.index("dest_ip")  # ...at the earlier key's place
    only_first = json.loads(stack.text({"ip.saddr.str": "192.0.2.1", "ct.id": 1}))
    assert only_first == {"dvc": "Netfilter", "ct.id": 1, "src_ip": "192.0.2.1"}
    # with only the later key valid the name stands where that key is: after dest_ip's first member
    later = json.loads(
        stack.text({"ip.daddr.str": "192.0.2.9", "orig.ip.saddr.str": "10.0.0.1"}), object_pairs_hook=list
    )
    assert later == [("dvc", "Netfilter"), ("dest_ip", "192.0.2.9"), ("src_ip", "10.0.0.1")]


def test_strings_escapes_and_bad_utf8(tz) -> None:
    tz("UTC")
    stack = JsonStack(PACKET_STACK, "timestamp=0")
    line = stack.line(oob__prefix='say "hi" \\ \t\x1b\x7f é ✓')
    assert line == '{"dvc": "Netfilter", "oob.prefix": "say \\"hi\\" \\\\ \\t\\u001B\x7f é ✓"}\n'.encode()
    # a backslash followed by "u001b" is text, not an escape: it keeps its letters
    assert stack.line(oob__prefix="\\u001b") == b'{"dvc": "Netfilter", "oob.prefix": "\\\\u001b"}\n'
    # a prefix that is not UTF-8 (kept by NFLOG as surrogate escapes) gets U+FFFD for the bad byte
    bad = b"DROP\xff ".decode("utf-8", "surrogateescape")
    assert json.loads(stack.line(oob__prefix=bad))["oob.prefix"] == "DROP\ufffd "
    # booleans are numbers, whatever Python type a plugin stored
    assert b'"tcp.syn": 1, "tcp.fin": 0' in stack.line(tcp__syn=True, tcp__fin=False)


def reference_line(stack: JsonStack, keys: dict[str, Any]) -> str:
    """ulogd's rule written plainly: every valid number or string of the stack in wildcard order under
    its CIM name or its own, a name given twice kept at its first place with its last value."""
    obj: dict[str, Any] = {"dvc": "Netfilter"}
    for k, _ in stack.wildcard:
        value = keys.get(k.name)
        if value is None or k.type.family not in ("integer", "string"):
            continue
        obj[k.cim or k.name] = int(value) if k.type.family == "integer" else value
    return json.dumps(obj, ensure_ascii=False) + "\n"


#: the packet stack with a second IP2STR, so that src_ip/dest_ip have two members from two plugins
WIDE_STACK = "log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,mac2str1:HWHDR,ip2str2:IP2STR,json1:JSON"
_stacks: dict[str, JsonStack] = {}


@settings(max_examples=150)
@given(data=st.data())
def test_any_set_of_valid_keys_gives_ulogds_object(data: st.DataObject) -> None:
    # the compiled line against the plain rule, for any mix of valid and missing keys (runs of one
    # part whole, missing or mixed), names shared by several keys, and any text
    stack = _stacks.setdefault("wide", JsonStack(WIDE_STACK, "timestamp=0"))
    keys: dict[str, Any] = {}
    for k, _ in stack.wildcard:
        if not data.draw(st.booleans()):
            continue
        if k.type is KeyType.BOOL:
            keys[k.name] = data.draw(st.booleans())
        elif k.type.family == "integer":
            keys[k.name] = data.draw(st.integers(0, 2**32 - 1))
        elif k.type.family == "string":
            keys[k.name] = data.draw(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=8))
    assert stack.text(keys) == reference_line(stack, keys)


def test_odd_key_names_are_safe() -> None:
    # names are plugins' text: quotes, braces, backslashes and f-string syntax stay text
    names = ['a"b', "{x}", "c\\d", "}{", "é.ü", "'''", "new\nline", "{{", "x!r"]
    fields = [(key(n, KeyType.UINT8), i) for i, n in enumerate(names)]
    options = {o.name: o.default for o in jsonout.Json.spec.options} | {"timestamp": 0}
    convert = jsonout.Json("j1", options, Logger("j")).handler(Slots({}, {}, wildcard=fields, size=len(names)))
    line = convert(list(range(len(names))))
    assert json.loads(line) == {"dvc": "Netfilter", **{n: i for i, n in enumerate(names)}}


def test_ecs_packet(tz) -> None:
    tz("Europe/Paris")
    doc = json.loads(JsonStack(PACKET_STACK, "fields=ecs\nboolean_label=1").text(TCP_SYN))
    assert doc["@timestamp"] == "2026-11-23T00:03:07.721317+01:00"
    assert doc["ecs"] == {"version": jsonout.ECS_VERSION}
    assert doc["event"] == {
        "kind": "event",
        "category": ["network"],
        "type": ["connection", "denied"],
        "action": "TCPIN",
        "module": "pylogd",
        "dataset": "pylogd.packet",
    }
    assert doc["observer"] == {"name": "Netfilter", "ingress": {"interface": {"name": "rsva", "id": "6"}}}
    assert doc["network"] == {"type": "ipv4", "transport": "tcp", "iana_number": "6", "direction": "ingress"}
    assert doc["source"] == {"ip": "10.77.0.2", "port": 34358, "mac": "42-69-33-72-3A-73"}
    assert doc["destination"] == {"ip": "10.77.0.1", "port": 2222, "mac": "A6-0C-A2-BF-78-26"}
    assert doc["related"] == {"ip": ["10.77.0.2", "10.77.0.1"]}
    nf = doc["netfilter"]
    assert nf["ip_ttl"] == 64 and nf["tcp_seq"] == 3537804397 and nf["oob_prefix"] == "TCPIN: "
    assert nf["tcp_syn"] is True and nf["tcp_fin"] is False
    mapped = {"ip_saddr_str", "tcp_sport", "oob_in", "oob_time_sec", "raw_label", "mac_saddr_str", "ip_protocol"}
    assert not mapped & set(nf)
    # every member is an object or a value: no dotted names, no name both a leaf and a branch
    assert all("." not in name for name in _names(doc))


def _names(doc: dict) -> Iterator[str]:
    for name, value in doc.items():
        yield name
        if isinstance(value, dict):
            yield from _names(value)


def test_ecs_without_ip2str_and_egress(tz) -> None:
    tz("UTC")
    stack = JsonStack("log1:NFLOG,base1:BASE,json1:JSON", "fields=ecs")
    v6 = socket.inet_pton(socket.AF_INET6, "fd77::1")
    doc = json.loads(
        stack.text(
            {"oob.hook": 3, "oob.family": 10, "ip.protocol": 58, "ip.saddr": v6, "oob.prefix": "  ", "oob.uid": 0}
        )
    )
    assert doc["network"] == {"type": "ipv6", "transport": "ipv6-icmp", "iana_number": "58", "direction": "egress"}
    assert doc["source"] == {"ip": "fd77::1"}
    assert doc["related"] == {"ip": ["fd77::1"]}
    assert doc["user"] == {"id": "0"}
    assert "action" not in doc["event"]  # a prefix of blanks names no action


def test_ecs_flow_with_nat(tz) -> None:
    tz("UTC")
    stack = JsonStack("ct1:NFCT,ip2str1:IP2STR,json1:JSON", "fields=ecs")
    flow = {
        **FLOW_NEW,
        "ct.event": 4,
        "flow.end.sec": 1795388590,
        "flow.end.usec": 721600,
        "orig.raw.pktlen": 300,
        "orig.raw.pktcount": 5,
        "reply.raw.pktlen": 1000,
        "reply.raw.pktcount": 4,
        "reply.ip.daddr.str": "198.51.100.7",  # masqueraded: the server answers the public address
        "reply.ip.daddr": bytes([198, 51, 100, 7]),
        "reply.l4.dport": 61000,
        "nat.snat": 1,
        "nat.dnat": 0,
    }
    doc = json.loads(stack.text(flow))
    assert doc["@timestamp"] == "2026-11-22T23:03:10.721600+00:00"  # the flow's end
    assert doc["event"]["action"] == "destroy" and doc["event"]["type"] == ["connection", "end"]
    assert doc["event"]["dataset"] == "pylogd.flow"
    assert doc["event"]["start"] == "2026-11-22T23:03:07.721596+00:00"
    assert doc["event"]["end"] == "2026-11-22T23:03:10.721600+00:00"
    assert doc["event"]["duration"] == 3_000_004_000
    assert doc["source"] == {
        "ip": "10.77.0.2",
        "port": 34358,
        "bytes": 300,
        "packets": 5,
        "nat": {"ip": "198.51.100.7", "port": 61000},
    }
    assert doc["destination"] == {"ip": "10.77.0.1", "port": 2222, "bytes": 1000, "packets": 4}
    assert doc["network"]["bytes"] == 1300 and doc["network"]["packets"] == 9
    assert doc["related"]["ip"] == ["10.77.0.2", "10.77.0.1", "198.51.100.7"]  # each once, the NAT one too
    assert doc["netfilter"]["ct_id"] == 89636028 and doc["netfilter"]["reply_ip_daddr_str"] == "198.51.100.7"
    assert "reply_ip_daddr" not in doc["netfilter"]  # the text twin is enough
    # without NFCT's flags the tuples tell: the reply goes to the original source, no NAT
    no_flags = {k: v for k, v in FLOW_NEW.items()}
    assert "nat" not in json.loads(stack.text(no_flags))["source"]
    masq = {**no_flags, "reply.ip.daddr": bytes([198, 51, 100, 7]), "reply.ip.daddr.str": "198.51.100.7"}
    assert json.loads(stack.text(masq))["source"]["nat"] == {"ip": "198.51.100.7", "port": 34358}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("mode=sctp", 'unknown value "sctp"'),
        ("mode=tcp\nca_file=/etc/hostname", "ca_file applies to mode tls"),
        ("mode=tls\nca_file=/nonexistent/ca.pem", "ca.pem"),
        ("timestamp=2", "out of range"),
        ("mode=tcp\nport=0", "port 0 is out of range"),
        ("mode=udp\nport=no-such-service", "neither a number nor a udp service name"),
        ("mode=unix\nfile=" + "/x" * 60, "at most 107 fit"),
        ('mode=unix\nfile=""', "needs the socket's path"),
        ("fields=ecs\neventv1=1", "eventv1 applies to fields=ulogd"),
        ("fields=xml", 'unknown value "xml"'),
    ],
)
def test_bad_options_are_refused(tmp_path: Path, options: str, message: str) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text(f"[global]\nstack=log1:NFLOG,base1:BASE,json1:JSON\n[json1]\n{options}\n")
    res = subprocess.run([*PYLOGD, "--check", "-c", str(conf)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 1 and message in res.stderr, res.stderr


def test_ulogd_conf_with_the_so_passes_check(tmp_path: Path) -> None:
    conf = tmp_path / "ulogd.conf"
    conf.write_text(
        "[global]\nplugin=/usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_JSON.so\n"
        f"stack={PACKET_STACK}\nstack=ct1:NFCT,ip2str2:IP2STR,json2:JSON\n[ct1]\n"
        f'[json1]\nfile="{tmp_path}/p.json"\nsync=1\nmode=TCP\nhost=localhost\nport=5140\n[json2]\nfields=ecs\n'
    )
    res = subprocess.run([*PYLOGD, "--check", "-c", str(conf)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert 'mode="tcp" host="localhost" port="5140"' in res.stdout and 'fields="ecs"' in res.stdout


def test_info_by_name_and_by_ulogd_so() -> None:
    by_name = subprocess.run([*PYLOGD, "-i", "JSON"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    so = "/usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_JSON.so"
    by_so = subprocess.run([*PYLOGD, "-i", so], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert by_name == by_so
    assert "Var: mode (String, Default: file)" in by_name and "Var: fields (String, Default: ulogd)" in by_name


# ------------------------------------------------------------------------------------------------
# the socket modes: write()'s contract, then a daemon and a collector


class Breaking:
    """A socket that takes ``limit`` bytes, in pieces of ``piece``, then fails."""

    def __init__(self, limit: int, piece: int = 7) -> None:
        self.limit, self.piece, self.data = limit, piece, b""

    def send(self, data: memoryview) -> int:
        room = min(self.limit - len(self.data), self.piece, len(data))
        if room <= 0:
            raise BrokenPipeError(32, "Broken pipe")
        self.data += bytes(data[:room])
        return room

    def close(self) -> None:
        pass


def socket_output(mode: str = "tcp") -> jsonout.Json:
    opts = {o.name: o.default for o in jsonout.Json.spec.options}
    opts.update(mode=mode, port="1")
    out = jsonout.Json("j1", opts, Logger("j1"))
    out.configure()
    return out


def link(out: jsonout.Json) -> transport.Transport:
    """The transport a socket mode writes through (the socket code is pylogd.transport's)."""
    assert out.transport is not None
    return out.transport


@pytest.mark.parametrize("cut", [0, 5, 9, 10, 14, 25, 29])
def test_a_failed_send_keeps_the_lines_not_sent_whole(monkeypatch: pytest.MonkeyPatch, cut: int) -> None:
    out = socket_output()
    assert out.writes_block()  # the runner writes it from a worker thread
    monkeypatch.setattr(transport, "_peer_gone", lambda sock: False)
    entries = [b"line one\n", b"line two!\n", b"line three\n"]  # 9, 10, 11 bytes
    broken = Breaking(cut)
    link(out).sock = broken  # type: ignore[assignment]
    left = list(entries)
    with pytest.raises(OSError):
        out.write(left)
    sent_whole = [e for e, end in zip(entries, (9, 19, 30), strict=True) if end <= cut]
    assert left == entries[len(sent_whole) :]  # the cut line stays whole: it goes again on a new connection
    assert link(out).sock is None  # and a new connection it is
    assert broken.data == b"".join(entries)[:cut]
    retry = Breaking(1000)
    monkeypatch.setattr(link(out), "_connect", lambda: retry)
    out.write(left)  # the runner's retry: the rest, each line whole
    assert retry.data == b"".join(entries[len(sent_whole) :])


def test_datagrams_too_big_are_dropped_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        out = socket_output("udp")
        out.options["port"] = str(rx.getsockname()[1])
        out.configure()
        entries = [b"a\n", b"x" * 70000 + b"\n", b"b\n"]
        out.write(entries)
        assert entries == [] and link(out).oversized == 1 and out.statistics()["oversized"] == 1
        rx.settimeout(2)
        assert [rx.recv(100), rx.recv(100)] == [b"a\n", b"b\n"]
        out.stop()


def test_stop_wakes_a_write_blocked_on_a_collector_that_reads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    out = socket_output("unix")
    ours, theirs = socket.socketpair()
    monkeypatch.setattr(link(out), "_connect", lambda: ours)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            out.write([b"x" * 65535 + b"\n"] * 200)  # far more than the socket buffers hold
        except OSError as exc:
            errors.append(exc)

    worker = threading.Thread(target=writer)
    worker.start()
    time.sleep(0.3)
    assert worker.is_alive()  # blocked in send(): the peer reads nothing
    started = time.monotonic()
    out.stop()
    worker.join(5)
    assert not worker.is_alive() and time.monotonic() - started < 5
    assert errors and link(out).sock is None
    theirs.close()


class Collector:
    """A test collector: a listening TCP or unix socket that keeps every line it receives."""

    def __init__(self, family: int, address: Any) -> None:
        self.family, self.address = family, address
        self.lines: list[bytes] = []
        self.connections = 0
        self._server: socket.socket | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []

    def start(self) -> Collector:
        server = socket.socket(self.family, socket.SOCK_STREAM)
        if self.family != socket.AF_UNIX:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(self.address)
        server.listen(8)
        server.settimeout(0.1)
        self._server = server
        self._stop.clear()
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._conns.append(conn)
            t = threading.Thread(target=self._read, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _read(self, conn: socket.socket) -> None:
        rest = b""
        conn.settimeout(0.1)
        while not self._stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            *done, rest = (rest + data).split(b"\n")
            self.lines.extend(done)
        conn.close()

    def stop(self) -> None:
        """Go away: stop listening and close every connection (a line in flight is cut)."""
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self._threads.clear()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.family == socket.AF_UNIX:
            with __import__("contextlib").suppress(FileNotFoundError):
                os.unlink(self.address)

    def numbers(self) -> list[int]:
        return [json.loads(x)["test.n"] for x in self.lines]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["tcp", "unix"])
def test_collector_down_at_start_and_away_midstream_gets_every_line_once(
    tmp_path: Path, daemons: list[Daemon], mode: str
) -> None:
    if mode == "tcp":
        port = free_port()
        collector = Collector(socket.AF_INET, ("127.0.0.1", port))
        where = f"host=127.0.0.1\nport={port}\n"
    else:
        path = str(tmp_path / "collector.sock")
        collector = Collector(socket.AF_UNIX, path)
        where = f'file="{path}"\n'
    d = Daemon(tmp_path, ["in1:PIPEIN,j1:JSON"], f"[j1]\nmode={mode}\n{where}timestamp=0\n")
    daemons.append(d)
    d.start()  # nobody listens yet: the daemon runs anyway
    d.send(*({"test.n": n, "test.text": "before"} for n in range(1, 101)))
    time.sleep(0.5)
    collector.start()
    try:
        wait_for(lambda: len(collector.lines) >= 100, timeout=20, what="the lines sent before the collector came")
        assert collector.numbers() == list(range(1, 101))
        collector.stop()  # the collector goes away...
        d.send(*({"test.n": n, "test.text": "during"} for n in range(101, 201)))
        time.sleep(1.0)
        collector.start()  # ...and comes back
        d.send(*({"test.n": n, "test.text": "after"} for n in range(201, 251)))
        wait_for(lambda: len(collector.lines) >= 250, timeout=30, what="every line after the outage")
        time.sleep(0.3)
        assert collector.numbers() == list(range(1, 251))  # each once, in order
        assert collector.connections == 2
        assert "connected to" in read(d.log)
    finally:
        collector.stop()
    assert d.stop() == 0


#: a collector as its own process, so that it can be SIGKILLed: it appends every whole line it reads to a
#: file at once (a line read but not yet in the file when the kill comes is the window nothing can close)
KILLABLE_COLLECTOR = """
import os, socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(8)
out = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
os.write(1, b"listening\\n")
while True:
    conn, _ = server.accept()
    rest = b""
    while data := conn.recv(65536):
        rest += data
        end = rest.rfind(b"\\n") + 1
        if end:
            os.write(out, rest[:end])
            rest = rest[end:]
    conn.close()
"""


def start_killable_collector(port: int, out: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLABLE_COLLECTOR, str(port), str(out)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "listening\n"
    return proc


def test_tcp_collector_killed_midstream_gets_every_line(tmp_path: Path, daemons: list[Daemon]) -> None:
    """Issue 18: 3,000 lines at 500 a second, the collector SIGKILLed for 3 s.  The lines its kernel never
    acknowledged (written into the dying connection) go again on the next one: every line arrives."""
    port, out, control = free_port(), tmp_path / "collected", tmp_path / "ctl.sock"
    d = Daemon(
        tmp_path,
        ["in1:PIPEIN,j1:JSON"],
        f"[j1]\nmode=tcp\nport={port}\ntimestamp=0\n",
        ["--control-socket", str(control)],
    )
    daemons.append(d)
    collector = start_killable_collector(port, out)
    try:
        d.start()
        started = time.monotonic()
        for batch in range(300):  # 10 lines every 20 ms
            if batch == 50:  # after 1 s
                collector.kill()
                collector.wait()
                killed = time.monotonic()
            if batch == 200:  # 3 s later: back on the same port
                assert time.monotonic() - killed >= 2.9
                collector = start_killable_collector(port, out)
            d.send(*({"test.n": n} for n in range(batch * 10, batch * 10 + 10)))
            time.sleep(max(0.0, started + (batch + 1) * 0.02 - time.monotonic()))

        def numbers() -> list[int]:
            return [json.loads(x)["test.n"] for x in read(out).splitlines()]

        wait_for(lambda: len(set(numbers())) == 3000, timeout=60, what="every line at least once")
        first_arrivals = list(dict.fromkeys(numbers()))
        assert first_arrivals == list(range(3000))  # each line first arrived in order
        doc = request(str(control), timeout=30)
        (stack,) = doc["stacks"]
        (j1,) = [p for p in doc["plugins"] if p["id"] == "j1"]
        assert (stack["written"], stack["dropped"]) == (3000, 0)
        assert len(numbers()) - 3000 <= j1["resent"]  # a second arrival is a line sent again
        assert j1["lost"] == 0 and j1["connects"] >= 2
    finally:
        collector.kill()
        collector.wait()
    assert d.stop() == 0


def test_sighup_reconnects(tmp_path: Path, daemons: list[Daemon]) -> None:
    port = free_port()
    collector = Collector(socket.AF_INET, ("127.0.0.1", port)).start()
    try:
        d = Daemon(tmp_path, ["in1:PIPEIN,j1:JSON"], f"[j1]\nmode=tcp\nport={port}\ntimestamp=0\n")
        daemons.append(d)
        d.start()
        d.send({"test.n": 1})
        wait_for(lambda: collector.numbers() == [1], what="the first line")
        d.signal(signal.SIGHUP)
        wait_for(lambda: "reconnecting" in read(d.log), what="the SIGHUP notice")
        d.send({"test.n": 2})
        wait_for(lambda: collector.numbers() == [1, 2] and collector.connections == 2, what="a new connection")
        assert d.stop() == 0
    finally:
        collector.stop()


def test_udp_one_datagram_per_line(tmp_path: Path, daemons: list[Daemon]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(10)
        d = Daemon(tmp_path, ["in1:PIPEIN,j1:JSON"], f"[j1]\nmode=UDP\nport={rx.getsockname()[1]}\ntimestamp=0\n")
        daemons.append(d)
        d.start()
        d.send({"test.n": 1, "test.text": "one"}, {"test.n": 2})
        got = [rx.recv(65536), rx.recv(65536)]
        assert got == [
            b'{"dvc": "Netfilter", "test.n": 1, "test.text": "one"}\n',
            b'{"dvc": "Netfilter", "test.n": 2}\n',
        ]
        assert d.stop() == 0


def test_file_mode_reopens_on_sighup(tmp_path: Path, daemons: list[Daemon]) -> None:
    out = tmp_path / "out.json"
    d = Daemon(tmp_path, ["in1:PIPEIN,j1:JSON"], f'[j1]\nfile="{out}"\ntimestamp=0\nsync=1\n')
    daemons.append(d)
    d.start()
    d.send({"test.n": 1})
    wait_for(lambda: read(out) == '{"dvc": "Netfilter", "test.n": 1}\n', what="the first line")
    out.rename(tmp_path / "out.json.1")
    d.signal(signal.SIGHUP)
    wait_for(lambda: "reopened" in read(d.log), what="the reopen")
    d.send({"test.n": 2})
    wait_for(lambda: read(out) == '{"dvc": "Netfilter", "test.n": 2}\n', what="a line in the new file")
    assert d.stop() == 0


# ------------------------------------------------------------------------------------------------
# the real ulogd beside pylogd


def ulogd_installed() -> None:
    if not Path(ULOGD).exists() or not Path("/usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_JSON.so").exists():
        pytest.skip("ulogd 2.0.8 with its JSON plugin is not installed (apt-get install ulogd2 ulogd2-json)")


def ordered(path: Path) -> list[list[tuple[str, Any]]]:
    return [json.loads(x, object_pairs_hook=list) for x in read_text(path).splitlines()]


def test_same_packets_same_json_lines(pair, tmp_path: Path) -> None:  # noqa: F811  (pair is the fixture)
    ulogd_installed()
    stack = "log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,mac1:HWHDR,{}:JSON"
    for name, group, extra in (("ulogd", 5, ""), ("pylogd", 6, "")):
        conf = tmp_path / f"{name}.conf"
        conf.write_text(
            f'[global]\nlogfile="{tmp_path}/{name}.daemon.log"\nloglevel=3\n'
            f"stack={stack.format('json1')}\nstack={stack.format('json3')}\n[log1]\ngroup={group}\n"
            f'[json1]\nfile="{tmp_path}/{name}.json"\nsync=1\n'
            f'[json3]\nfile="{tmp_path}/{name}.v1.json"\nsync=1\neventv1=1\nboolean_label=1\ndevice="fw1 test"\n'
            + extra
        )
    run_both_on_corpus(pair, tmp_path, {**os.environ, "TZ": "UTC"})
    files = [tmp_path / n for n in ("ulogd.json", "pylogd.json", "ulogd.v1.json", "pylogd.v1.json")]
    wait_equal_and_quiet(lambda: [len(read_text(f).splitlines()) for f in files], "lines", minimum=20)
    for u_file, p_file in ((files[0], files[1]), (files[2], files[3])):
        raw_lines = read_text(p_file).splitlines(keepends=True)
        for u, p, p_raw in zip(ordered(u_file), ordered(p_file), raw_lines, strict=True):
            compare_packet_line(u, p)
            # the line is exactly what a JSON encoder with ulogd's separators writes
            assert json.dumps(dict(p), ensure_ascii=False) + "\n" == p_raw


def compare_packet_line(u: list[tuple[str, Any]], p: list[tuple[str, Any]]) -> None:
    ud, pd = dict(u), dict(p)
    assert len(ud) == len(u) and len(pd) == len(p), "a name twice in one line"
    later_fragment = ud.get("ip.fragoff", 0) & 0x1FFF
    want: list[tuple[str, Any]] = []
    for name, value in u:
        if name in ("timestamp", "@timestamp"):
            value = expected_timestamp(value, {**ud, **{k: pd.get(k) for k in ("oob.time.sec", "oob.time.usec")}})
        elif name in ("oob.time.sec", "oob.time.usec"):
            value = pd.get(name)  # each NFLOG group's own stamp; the timestamp checks it below
        elif later_fragment and (name in ("src_port", "dest_port") or name.startswith(TRANSPORT)):
            continue  # BASE: pylogd decodes no transport header from a later fragment (test_compat_ulogd)
        elif name in DIFFERENCES:
            value = DIFFERENCES[name](value, pd)
        want.append((name, value))
    got = [(k, v) for k, v in p if k in ud or k not in EXTRA_PACKET_KEYS]
    assert got == want, f"\nulogd:  {u}\npylogd: {p}"
    if "oob.time.sec" in ud and ud.get("oob.hook") != 3:  # no kernel time on the output hook
        u_clock = ud["oob.time.sec"] + ud["oob.time.usec"] / 1e6
        p_clock = pd["oob.time.sec"] + pd["oob.time.usec"] / 1e6
        assert abs(u_clock - p_clock) < 0.5


def test_same_flows_same_json_lines(rig: Rig, tmp_path: Path) -> None:
    ulogd_installed()
    ns = rig.netns("cj")
    ns.nft(CT_RULES)
    ns.run("sysctl -qw net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_timestamp=1")
    for name in ("ulogd", "pylogd"):
        (tmp_path / f"{name}.conf").write_text(
            f'[global]\nlogfile="{tmp_path}/{name}.daemon.log"\nloglevel=3\n'
            "stack=ct1:NFCT,ip2str1:IP2STR,json1:JSON\n[ct1]\nhash_enable=0\n"
            f'[json1]\nfile="{tmp_path}/{name}.json"\nsync=1\n'
        )
    env = {**os.environ, "TZ": "UTC"}
    ns.spawn([ULOGD, "-c", str(tmp_path / "ulogd.conf")], name="ulogd", env=env)
    ns.spawn([sys.executable, "-m", "pylogd", "-c", str(tmp_path / "pylogd.conf")], name="pylogd", env=env, cwd=ROOT)
    wait_for(lambda: "entering main loop" in read_text(tmp_path / "pylogd.daemon.log"), what="pylogd start")
    wait_for(lambda: "working in event mode" in read_text(tmp_path / "ulogd.daemon.log"), what="ulogd start")
    ns.call(traffic)
    ns.run(["conntrack", "-F"])
    files = [tmp_path / "ulogd.json", tmp_path / "pylogd.json"]
    wait_for(lambda: all(len(read_text(f).splitlines()) >= 8 for f in files), timeout=15, what="8 flow lines each")
    time.sleep(0.3)
    u_lines, p_lines = ordered(files[0]), ordered(files[1])
    assert len(u_lines) == len(p_lines)
    for u, p in zip(u_lines, p_lines, strict=True):
        ud, pd = dict(u), dict(p)
        # flows have no packet time: each daemon stamps the time it wrote the line
        u_time = time.mktime(time.strptime(ud["timestamp"], "%Y-%m-%dT%H:%M:%S"))
        assert pd["timestamp"].endswith(UTC_SUFFIX)
        p_time = time.mktime(time.strptime(pd["timestamp"][: -len(UTC_SUFFIX)], "%Y-%m-%dT%H:%M:%S"))
        assert abs(u_time - p_time) <= 2
        want = [(k, pd[k] if k in ("timestamp", "flow.start.usec", "flow.start.sec") else v) for k, v in u]
        assert [(k, v) for k, v in p if k in ud or k not in EXTRA_FLOW_KEYS] == want, f"\nulogd:  {u}\npylogd: {p}"
        if "flow.start.sec" in ud:
            u_start = ud["flow.start.sec"] + ud["flow.start.usec"] / 1e6
            assert abs(u_start - (pd["flow.start.sec"] + pd["flow.start.usec"] / 1e6)) < 0.5


NAT_RULES = """
table ip nat {{
    chain out {{ type nat hook output priority -100; ip daddr 10.9.9.9 dnat to {b_ip}; }}
    chain post {{
        type nat hook postrouting priority 100;
        oifname "{a_if}" meta l4proto udp snat to {a_ip}:61000-61010;
    }}
}}
"""


def test_ecs_flows_from_the_kernel_with_nat(rig: Rig, tmp_path: Path) -> None:
    p = rig.pair()
    p.a.nft(NAT_RULES.format(b_ip=p.b_ip4, a_ip=p.a_ip4, a_if=p.a_if))
    p.a.run(["ip", "route", "add", "10.9.9.9", "dev", p.a_if])  # the address the flow is sent to, DNATed
    out = tmp_path / "flows.json"
    conf = tmp_path / "pylogd.conf"
    conf.write_text(
        f'[global]\nlogfile="{tmp_path}/pylogd.log"\nloglevel=3\nstack=ct1:NFCT,ip2str1:IP2STR,json1:JSON\n'
        f'[ct1]\nhash_enable=0\n[json1]\nfile="{out}"\nsync=1\nfields=ecs\ndevice="fw7"\n'
    )
    p.a.spawn([sys.executable, "-m", "pylogd", "-c", str(conf)], name="pylogd", cwd=ROOT)
    wait_for(lambda: "entering main loop" in read_text(tmp_path / "pylogd.log"), what="pylogd start")
    sport = p.a.send_udp("10.9.9.9", 5555, src_port=40123)
    p.a.run(["conntrack", "-F"])
    wait_for(lambda: len(read_text(out).splitlines()) >= 2, what="the flow's NEW and DESTROY")
    new, destroy = (json.loads(x) for x in read_text(out).splitlines()[:2])
    for doc, action, phase in ((new, "new", "start"), (destroy, "destroy", "end")):
        assert doc["event"]["action"] == action and doc["event"]["type"] == ["connection", phase], doc
        assert doc["observer"] == {"name": "fw7"}
        assert doc["network"]["transport"] == "udp" and doc["network"]["type"] == "ipv4"
        assert doc["source"]["ip"] == p.a_ip4 and doc["source"]["port"] == sport
        assert doc["destination"]["ip"] == "10.9.9.9" and doc["destination"]["port"] == 5555
        # where the packets really went, and the port the other end saw
        assert doc["destination"]["nat"] == {"ip": p.b_ip4, "port": 5555}
        assert doc["source"]["nat"]["ip"] == p.a_ip4 and 61000 <= doc["source"]["nat"]["port"] <= 61010
        assert doc["netfilter"]["nat_snat"] is True and doc["netfilter"]["nat_dnat"] is True
        assert doc["related"]["ip"] == [p.a_ip4, "10.9.9.9", p.b_ip4]
    assert "start" in new["event"] and "end" in destroy["event"]


@pytest.mark.parametrize(("fields", "made"), [("ulogd", False), ("ecs", True)])
def test_the_input_makes_no_key_ulogds_fields_never_write(fields: str, made: bool) -> None:
    """Raw data and binary addresses are not in ulogd's line: the NFLOG input need not make them."""
    raw = parse_ini("t.conf", f"[global]\nstack=log1:NFLOG,base1:BASE,json1:JSON\n[json1]\nfields={fields}\n")
    plan = build(raw, Registry(), Logger).stacks[0]
    nflog, base = plan.slots[0], plan.slots[1]
    reads = plan.reads()
    assert (nflog.out("raw.pkt") in reads) is True  # BASE decodes the packet from it either way
    assert (nflog.out("raw.mac") in reads) is made
    assert (base.out("ip.saddr") in reads) is made
    assert base.out("ip.ttl") in reads and nflog.out("oob.prefix") in reads


class OneLineCollector:
    """A collector that accepts, reads exactly one line (a byte at a time, so nothing more leaves the
    socket), closes, and accepts again: everything else pylogd had sent is discarded by the kernel."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lines: list[bytes] = []
        self.connections = 0
        self._stop = threading.Event()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(path)
        self._server.listen(8)
        self._server.settimeout(0.1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(0.1)
                line = b""
                while not line.endswith(b"\n") and not self._stop.is_set():
                    try:
                        byte = conn.recv(1)
                    except TimeoutError:
                        continue
                    if not byte:
                        break
                    line += byte
                if line.endswith(b"\n"):
                    self.lines.append(line)

    def numbers(self) -> list[int]:
        return [json.loads(x)["test.n"] for x in self.lines]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._server.close()


def test_unix_collector_closing_after_every_line_gets_every_line(tmp_path: Path, daemons: list[Daemon]) -> None:
    path = str(tmp_path / "collector.sock")
    collector = OneLineCollector(path)
    control = tmp_path / "ctl.sock"
    d = Daemon(
        tmp_path,
        ["in1:PIPEIN,j1:JSON"],
        f'[j1]\nmode=unix\nfile="{path}"\ntimestamp=0\n',
        ["--control-socket", str(control)],
    )
    daemons.append(d)
    d.start()
    try:
        d.send(*({"test.n": n} for n in range(2000)))
        wait_for(lambda: len(set(collector.numbers())) == 2000, timeout=600, what="every line at least once")
        numbers = collector.numbers()
        first_arrivals = list(dict.fromkeys(numbers))
        assert first_arrivals == list(range(2000))  # each line first arrived in order
        doc = request(str(control), timeout=30)
        (stack,) = doc["stacks"]
        (j1,) = [p for p in doc["plugins"] if p["id"] == "j1"]
        assert (stack["written"], stack["dropped"], stack["pending"]) == (2000, 0, 0)
        assert j1["lost"] == 0
        assert len(numbers) - 2000 <= j1["resent"]  # every second arrival is a line sent again
        assert j1["connects"] >= 2000
    finally:
        collector.stop()
    assert d.stop() == 0
    assert " lost " not in read(d.log)
