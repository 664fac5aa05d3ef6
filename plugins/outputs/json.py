"""JSON: one JSON object per event, a line each, to a file or to a collector over TCP, UDP or a unix socket.

With ``fields=ulogd`` (the default) the line is ulogd 2.0.8's, key for key::

    {"timestamp": "2026-11-22T23:03:07.721317+0000", "dvc": "Netfilter", "raw.pktlen": 60, ...,
     "src_port": 34358, "dest_port": 2222, ..., "src_ip": "10.77.0.2", "dest_ip": "10.77.0.1"}

* ``@version`` (``eventv1=1``), then ``timestamp`` (``@timestamp`` with eventv1; left out with
  ``timestamp=0``), then ``dvc`` (the ``device`` option), then every key of the stack in stack
  order (each plugin's keys in its key order) that is valid for the event.  A key name given by
  several plugins comes once, at its first place, with the nearest plugin's value.
* Keys with a CIM name are written under it: ``src_ip``/``dest_ip`` (``ip.saddr.str``,
  ``orig.ip.saddr.str``, ...), ``src_port``/``dest_port`` (TCP, UDP, SCTP ports).  When two
  keys of one event share a name, the name stands where the first of them would and holds the
  last one's value (ulogd's JSON object does that).
* Integers and booleans are numbers (a boolean is 0 or 1), strings are strings; addresses, raw
  data and RAWSTR keys are left out (IP2STR gives addresses as text).  ``boolean_label=1`` writes
  ``raw.label`` as ``"action": "allowed"`` (label not 0) or ``"blocked"``.
* The timestamp is the packet time (``oob.time.sec``, with microseconds when ``oob.time.usec``
  is valid), else the current time (flows), in local time with its UTC offset:
  ``2026-11-23T00:03:51.628277+0100``.
* Separators ``", "`` and ``": "``; text is UTF-8 as is, with ``"``, ``\\`` and control
  characters escaped (``\\u001B``: upper-case hex digits, as jansson writes them).

``fields=ecs`` writes an Elastic Common Schema document instead, nested, so that Elasticsearch,
OpenSearch and Filebeat take it without an ingest pipeline::

    {"@timestamp": "2026-11-22T23:03:07.721317+00:00", "ecs": {"version": "8.11.0"},
     "event": {"kind": "event", "category": ["network"], "type": ["connection"], "action": "TCPIN",
     "module": "pylogd", "dataset": "pylogd.packet"}, "observer": {"name": "Netfilter",
     "ingress": {"interface": {"name": "rsva", "id": "6"}}}, "network": {"type": "ipv4",
     "transport": "tcp", "iana_number": "6", "direction": "ingress"}, "source": {"ip": "10.77.0.2",
     "port": 34358, ...}, "destination": {...}, "netfilter": {"oob_mark": 0, "ip_ttl": 64, ...}}

Packets: ``source``/``destination`` ``ip`` (from IP2STR's text or the address keys themselves),
``port``, ``mac`` (RFC 7042 form, from HWHDR); ``network.type`` (ipv4/ipv6), ``.transport``,
``.iana_number``, ``.direction`` (ingress on the prerouting and input hooks, egress on output
and postrouting), ``.vlan.id``; ``observer.ingress``/``egress.interface.name`` and ``.id``;
``event.action`` is the log prefix without surrounding blanks and its final colon; ``user.id``,
``group.id`` (local sockets).  Flows: the original direction's addresses and ports, its
counters as ``source.bytes``/``.packets`` and the reply's as ``destination.*`` (sums in
``network.bytes``/``.packets``); ``source.nat.ip``/``.port`` (the address and port the other
end saw) when the flow was source-translated, ``destination.nat.*`` when destination-translated;
``event.action`` new/update/destroy, ``event.type`` connection + start/end, ``event.start``,
``event.end``, ``event.duration`` (ns); ``@timestamp`` is the flow's end, else its start.
``related.ip`` lists every address of the event once (a flow's translated ones too).
With ``boolean_label=1`` ``event.type`` also holds allowed or denied.  Every other valid key goes
in ``netfilter`` under ulogd's SQL column name (dots become underscores): ``netfilter.ip_ttl``.
There booleans are true/false and addresses text.

Modes: ``file`` appends to ``file`` (SIGHUP reopens it).  ``tcp`` and ``unix`` (``file`` is then
the socket's path) send a stream of lines; ``udp`` sends each line as one datagram.  Sockets are
written from a worker thread, connected when there is something to send, and reconnected after
an error or SIGHUP; while the collector is away the lines wait in the stack's backlog and go out,
each once and in order, when it is back.  A line that was only partly sent when a connection
broke is sent again whole on the next one.  Before each batch a stream socket is checked for a
peer that has closed, so a batch is not sent into a dead connection.  Over TCP, what the kernel had
already taken for a collector that then dies without reading it is lost: a TCP socket does not tell
the sender what the other end read.

A unix socket does, and ``unix`` mode delivers every line at least once.  After each batch one
ioctl (SIOCOUTQ) tells how much the collector has not read yet; the lines that may be in it are kept
(at most what the socket buffers hold).  A collector that closes with lines unread makes the kernel
discard them and report ECONNRESET: those kept lines are sent again, first, on the next connection,
the first of them alone until the collector has read it, and so on while the collector closes its
connections (so a collector that reads a line per connection still gets every line).  A line the
collector read just before closing may so arrive twice; lines first arrive in the order they were
sent.  Lines that could not be sent again before the daemon stopped are counted (``lost``) and
logged.  SIGUSR1 shows ``connects`` (connections made), ``oversized`` (lines too big for a
datagram, dropped) and, in unix mode, ``resent`` (lines sent again) and ``lost``.

Differences from ulogd 2.0.8
----------------------------
* The timestamp always carries its UTC offset; ulogd left it out when the offset was 0
  (``+0000`` under UTC), and got the sign wrong for offsets between -1 and 0 hours.
* A collector that is down at start does not stop the stack (ulogd failed it), and lines
  written while it is away are not lost: they wait and are sent after reconnecting, with
  back-off.  ulogd lost a line per failed send.  A datagram too big for UDP is dropped, counted
  (``oversized``) and logged, instead of failing every later write.
* A string that is not valid UTF-8 (a log prefix) is written with U+FFFD in place of the bad
  bytes; ulogd left the key out.
* INT64 keys are written; ulogd left them out.
* ``fields=ecs`` is new.  ``timestamp``, ``eventv1`` and ``boolean_label`` accept 0 or 1 only;
  ``eventv1`` applies to ``fields=ulogd``.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import os
import re
import select
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring
from typing import Any

from pylogd.files import FileOutput, sync_option, write_all
from pylogd.keys import INTEGER_TYPES, Key, KeyType
from pylogd.log import ERROR, NOTICE
from pylogd.loop import EventLoop
from pylogd.plugin import Kind, PluginError, PluginSpec, Slots, int_option, path_option, str_option

MODES = ("file", "tcp", "udp", "unix")
UNIX_PATH_MAX = 108  # sun_path, the terminating NUL included
CONNECT_TIMEOUT = 5.0
#: a collector that takes no byte for this long is treated as gone: the connection is dropped
SEND_TIMEOUT = 20.0
#: unix mode, after a collector closed with lines unread: how long the first line sent again waits alone
#: to be read before the rest follows it
CAREFUL_WAIT = 5.0
ECS_VERSION = "8.11.0"
#: this many keys in consecutive slots are skipped with one test when all are missing
RUN = 4

_TEXT = frozenset({KeyType.STRING, KeyType.RAWSTR})


# ---------------------------------------------------------------------------------------------
# values


def jstr(text: str) -> str:
    """A JSON string literal, UTF-8 kept as is (the line is encoded once, later)."""
    return encode_basestring(text)


# jansson writes \u escapes with upper-case hex digits; Python's encoder uses lower case.  An
# escape is one preceded by an even number of backslashes.
_LOWER_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u00([0-9a-f]{2})")


def _upper_escapes(line: str) -> str:
    return _LOWER_ESCAPE.sub(lambda m: f"{m.group(1)}\\u00{m.group(2).upper()}", line)


def finish(line: str) -> bytes:
    """The line as bytes: control-character escapes as jansson writes them, strings that were not
    UTF-8 (kept by the inputs as surrogate escapes) with U+FFFD for the bad bytes."""
    if "\\u00" in line:
        line = _upper_escapes(line)
    try:
        return line.encode()
    except UnicodeEncodeError:
        raw = line.encode("utf-8", "surrogateescape") if _only_escapes(line) else line.encode("utf-8", "replace")
        return raw.decode("utf-8", "replace").encode()


def _only_escapes(line: str) -> bool:
    try:
        line.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


def utc_offset(gmtoff: int, colon: bool = False) -> str:
    sign = "-" if gmtoff < 0 else "+"
    minutes = abs(gmtoff) // 60
    return f"{sign}{minutes // 60:02d}{':' if colon else ''}{minutes % 60:02d}"


def stamper(colon: bool) -> Callable[[int, int | None], str]:
    """``stamp(sec, usec)``: the JSON string of a local time with its UTC offset; the part down to
    the second is made once per second."""
    cache: list = [None, "", ""]
    localtime = time.localtime

    def stamp(sec: int, usec: int | None) -> str:
        if sec != cache[0]:
            t = localtime(sec)
            cache[0] = sec
            cache[1] = '"' + time.strftime("%Y-%m-%dT%H:%M:%S", t)
            cache[2] = utc_offset(t.tm_gmtoff, colon) + '"'
        if usec is None:
            return cache[1] + cache[2]
        return f"{cache[1]}.{usec:06d}{cache[2]}"

    return stamp


# ---------------------------------------------------------------------------------------------
# building the converter: a tree of JSON members, compiled per stack into one function


class Leaf:
    """A member whose value comes from the first source that has one.

    Each source is ``(slot, how)`` with ``how`` "int" (a number), "bool" (0 or 1), "str" (a string), or a function
    of the value returning JSON text or None; or ``(None, func)``, ``func`` a function of the
    whole record returning JSON text or None.
    """

    def __init__(self, name: str, sources: list[tuple[int | None, Any]], part: str = "") -> None:
        self.name = name
        self.sources = sources
        #: the key's first name component (ip, tcp, icmpv6...): keys of one part are valid together
        self.part = part


class Obj:
    def __init__(self, name: str) -> None:
        self.name = name
        self.members: list[Leaf | Obj | Group] = []

    def obj(self, path: Iterable[str]) -> Obj:
        """The object at ``path`` below this one, made when missing."""
        node = self
        for part in path:
            found = next((m for m in node.members if isinstance(m, Obj) and m.name == part), None)
            if found is None:
                found = Obj(part)
                node.members.append(found)
            node = found
        return node


class Group:
    """ulogd's rule for several keys under one JSON name (a JSON object's): the name stands where the
    first valid one is, with the value of the last valid one.  ``members`` are (slot, how) in key
    order; this node stands for member ``index``."""

    def __init__(self, name: str, members: list[tuple[int, str]], index: int) -> None:
        self.name = name
        self.members = members
        self.index = index


class _Compiler:
    """Turns a tree into the source of one function that makes the whole line in one expression:
    per member a load, a test and an f-string, joined once; nothing is looked up by name per
    event.  Text from plugins and options (key names, the device) enters the source only as
    literals written by repr(); functions are bound in the namespace."""

    def __init__(self) -> None:
        self.ns: dict[str, Any] = {"_jstr": jstr, "_finish": finish}
        self.objects = 0
        self.runs = 0

    def bind(self, value: Any) -> str:
        name = f"_f{len(self.ns)}"
        self.ns[name] = value
        return name

    @staticmethod
    def fstring(text: str, expression: str, tail: str = "") -> str:
        """A string expression: ``text``, the value of ``expression``, ``tail`` (literals from repr(),
        so that any text is safe; an f-string and a plain literal side by side join at compile time)."""
        literal = repr(text)
        body = literal[1:-1].replace("{", "{{").replace("}", "}}")
        code = f"f{literal[0]}{body}{{{expression}}}{literal[0]}"
        return f"{code} {tail!r}" if tail else code

    def leaf(self, leaf: Leaf) -> str:
        label = ", " + encode_basestring(leaf.name) + ": "
        expr = "''"
        for slot, how in reversed(leaf.sources):
            if isinstance(how, Const):
                expr = repr(label + how.text)
                continue
            if slot is None:
                test, value = f"(y := {self.bind(how)}(v)) is not None", "y"
            elif how == "int":
                test, value = f"(x := v[{slot}]) is not None", "x"
            elif how == "bool":
                test, value = f"(x := v[{slot}]) is not None", "1 if x else 0"
            elif how == "str":
                test, value = f"(x := v[{slot}]) is not None", "_jstr(x)"
            else:
                test, value = f"(x := v[{slot}]) is not None and (y := {self.bind(how)}(x)) is not None", "y"
            expr = f"({self.fstring(label, value)} if {test} else {expr})"
        return expr

    def group(self, g: Group) -> str:
        slot = g.members[g.index][0]
        first = " and ".join([f"v[{slot}] is not None", *(f"v[{s}] is None" for s, _ in g.members[: g.index])])
        label = ", " + encode_basestring(g.name) + ": "
        # the value: the last valid member from this one on (this one is valid)
        later = g.members[g.index :]
        expr = self.fstring(label, self.render(later[0][1], f"v[{later[0][0]}]"))
        for s, how in later[1:]:
            expr = f"({self.fstring(label, self.render(how, f'v[{s}]'))} if v[{s}] is not None else {expr})"
        return f"({expr} if {first} else '')"

    def render(self, how: Any, x: str) -> str:
        """The expression of the JSON text of the value ``x`` (known to be valid) for ulogd's fields."""
        if how == "int":
            return x
        if how == "bool":
            return f"1 if {x} else 0"
        if how == "str":
            return f"_jstr({x})"
        return f"{self.bind(how)}({x})"

    def members(self, node: Obj) -> str:
        """An expression: the members' text, each starting with ", "."""
        parts = []
        run: list[Leaf] = []  # leaves of one part reading consecutive slots, one plain source each

        def end_run() -> None:
            if len(run) < RUN:
                parts.extend(self.leaf(leaf) for leaf in run)
            else:
                # keys of one part (TCP, ICMPv6, ARP...) are mostly all there or all missing: one
                # test for the run, then one f-string for all of it or nothing
                self.runs += 1
                first, n, w = run[0].sources[0][0], len(run), f"w{self.runs}"
                whole = " ".join(
                    self.fstring(", " + encode_basestring(leaf.name) + ": ", self.render(how, f"{w}[{i}]"))
                    for i, leaf in enumerate(run)
                    for how in (leaf.sources[0][1],)
                )
                some = "''.join((" + ", ".join(self.leaf(leaf) for leaf in run) + ",))"
                none = self.bind([None] * n)
                test = f"None not in ({w} := v[{first}:{first + n}])"
                parts.append(f"(({whole}) if {test} else '' if {w} == {none} else {some})")
            run.clear()

        for member in node.members:
            if isinstance(member, Leaf):
                plain = len(member.sources) == 1 and member.sources[0][1] in ("int", "bool", "str") and member.part
                slot = member.sources[0][0] if plain else None
                if slot is not None and run and slot == run[-1].sources[0][0] + 1 and member.part == run[-1].part:
                    run.append(member)
                    continue
                end_run()
                if slot is not None:
                    run.append(member)
                else:
                    parts.append(self.leaf(member))
                continue
            end_run()
            if isinstance(member, Group):
                parts.append(self.group(member))
            else:
                self.objects += 1
                inner = f"o{self.objects}"
                text = self.fstring(", " + encode_basestring(member.name) + ": {", f"{inner}[2:]", "}")
                parts.append(f"({text} if ({inner} := {self.members(member)}) else '')")
        end_run()
        return "''.join((" + ", ".join(parts) + ",))"

    def build(self, root: Obj) -> Callable[[list], bytes]:
        source = f"def convert(v):\n    return _finish('{{' + {self.members(root)}[2:] + '}}\\n')\n"
        exec(compile(source, "<json-converter>", "exec"), self.ns)
        return self.ns["convert"]


class Const:
    """A source whose JSON text is always the same (the device, ECS's fixed values)."""

    def __init__(self, text: str) -> None:
        self.text = text


def _const(text: str) -> Const:
    return Const(text)


# ---------------------------------------------------------------------------------------------
# ulogd's fields


def ulogd_tree(fields: list[tuple[Key, int]], options: dict[str, Any]) -> Obj:
    root = Obj("")
    eventv1 = options["eventv1"] != 0
    if eventv1:
        root.members.append(Leaf("@version", [(None, _const("1"))]))
    if options["timestamp"]:
        sec = next((slot for k, slot in fields if k.name == "oob.time.sec"), None)
        usec = next((slot for k, slot in fields if k.name == "oob.time.usec"), None)
        root.members.append(Leaf("@timestamp" if eventv1 else "timestamp", [(None, _time_of(sec, usec))]))
    root.members.append(Leaf("dvc", [(None, _const(jstr(options["device"])))]))
    label = options["boolean_label"] != 0
    named: list[tuple[str, int, Any]] = []
    for k, slot in fields:
        if label and k.name == "raw.label" and k.type is KeyType.UINT8:
            named.append(("action", slot, _action))
        elif k.type is KeyType.BOOL:
            named.append((k.cim or k.name, slot, "bool"))
        elif k.type in INTEGER_TYPES:
            named.append((k.cim or k.name, slot, "int"))
        elif k.type is KeyType.STRING:
            named.append((k.cim or k.name, slot, "str"))
    parts = {slot: k.name.partition(".")[0] for k, slot in fields}
    by_name: dict[str, list[tuple[int, Any]]] = {}
    for name, slot, how in named:
        by_name.setdefault(name, []).append((slot, how))
    for name, slot, how in named:
        members = by_name[name]
        if len(members) == 1:
            root.members.append(Leaf(name, [(slot, how)], part=parts[slot]))
        else:
            root.members.append(Group(name, members, members.index((slot, how))))
    return root


def _action(label: int) -> str:
    return '"allowed"' if label else '"blocked"'


def _time_of(sec_slot: int | None, usec_slot: int | None) -> Callable[[list], str]:
    """The timestamp of ulogd's fields: the packet time, else now; the part down to the second is made
    once per second."""
    stamp, now = stamper(False), time.time
    cache: list = [None, "", ""]

    def timestamp(v: list) -> str:
        sec = v[sec_slot] if sec_slot is not None else None
        if sec is None:
            sec = int(now())
        usec = v[usec_slot] if usec_slot is not None else None
        if sec != cache[0]:
            head, _, tail = stamp(sec, 0).rpartition(".000000")
            cache[:] = sec, head, tail
        if usec is None:
            return cache[1] + cache[2]
        return f"{cache[1]}.{usec:06d}{cache[2]}"

    return timestamp


# ---------------------------------------------------------------------------------------------
# Elastic Common Schema

TRANSPORTS = {
    1: "icmp",
    2: "igmp",
    4: "ipv4",
    6: "tcp",
    17: "udp",
    41: "ipv6",
    47: "gre",
    50: "esp",
    51: "ah",
    58: "ipv6-icmp",
    89: "ospf",
    103: "pim",
    112: "vrrp",
    132: "sctp",
    136: "udplite",
}
_TRANSPORT_JSON = {n: f'"{name}"' for n, name in TRANSPORTS.items()}
_FAMILIES = {2: '"ipv4"', 10: '"ipv6"'}
_DIRECTIONS = {0: '"ingress"', 1: '"ingress"', 3: '"egress"', 4: '"egress"'}  # by netfilter hook
_CT_ACTIONS = {1: '"new"', 2: '"update"', 4: '"destroy"'}


def _address_text(value: bytes) -> str | None:
    n = len(value)
    if n == 4:
        return jstr(socket.inet_ntop(socket.AF_INET, value))
    if n == 16:
        return jstr(socket.inet_ntop(socket.AF_INET6, value))
    return None


def _mac(text: str) -> str | None:
    return jstr(text.replace(":", "-").upper()) if text else None


def _nonempty(text: str) -> str | None:
    return jstr(text) if text else None


def _prefix_action(prefix: str) -> str | None:
    action = prefix.strip()
    if action.endswith(":"):
        action = action[:-1].rstrip()
    return jstr(action) if action else None


def _id(n: int) -> str:
    return f'"{n:d}"'


#: ECS field -> the keys that can give it, best first, and how the value is written
ECS_KEYS: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = (
    (
        "source.ip",
        (
            ("ip.saddr.str", "str"),
            ("ip.saddr", _address_text),
            ("orig.ip.saddr.str", "str"),
            ("orig.ip.saddr", _address_text),
            ("arp.saddr.str", "str"),
            ("arp.saddr", _address_text),
        ),
    ),
    ("source.port", (("tcp.sport", "int"), ("udp.sport", "int"), ("sctp.sport", "int"), ("orig.l4.sport", "int"))),
    ("source.mac", (("mac.saddr.str", _mac),)),
    ("source.bytes", (("orig.raw.pktlen", "int"),)),
    ("source.packets", (("orig.raw.pktcount", "int"),)),
    (
        "destination.ip",
        (
            ("ip.daddr.str", "str"),
            ("ip.daddr", _address_text),
            ("orig.ip.daddr.str", "str"),
            ("orig.ip.daddr", _address_text),
            ("arp.daddr.str", "str"),
            ("arp.daddr", _address_text),
        ),
    ),
    (
        "destination.port",
        (("tcp.dport", "int"), ("udp.dport", "int"), ("sctp.dport", "int"), ("orig.l4.dport", "int")),
    ),
    ("destination.mac", (("mac.daddr.str", _mac),)),
    ("destination.bytes", (("reply.raw.pktlen", "int"),)),
    ("destination.packets", (("reply.raw.pktcount", "int"),)),
    ("network.type", (("oob.family", _FAMILIES.get),)),
    ("network.transport", (("ip.protocol", _TRANSPORT_JSON.get), ("orig.ip.protocol", _TRANSPORT_JSON.get))),
    ("network.iana_number", (("ip.protocol", _id), ("orig.ip.protocol", _id))),
    ("network.direction", (("oob.hook", _DIRECTIONS.get),)),
    ("network.vlan.id", (("oob.vlan.id", _id),)),
    ("observer.ingress.interface.name", (("oob.in", _nonempty),)),
    ("observer.ingress.interface.id", (("oob.ifindex_in", _id),)),
    ("observer.egress.interface.name", (("oob.out", _nonempty),)),
    ("observer.egress.interface.id", (("oob.ifindex_out", _id),)),
    ("event.action", (("oob.prefix", _prefix_action), ("ct.event", _CT_ACTIONS.get))),
    ("user.id", (("oob.uid", _id),)),
    ("group.id", (("oob.gid", _id),)),
)
#: keys that only feed ECS fields made from several keys (times, NAT, labels)
ECS_CONSUMED = frozenset(
    {"oob.time.sec", "oob.time.usec", "flow.start.sec", "flow.start.usec", "flow.end.sec", "flow.end.usec"}
)
#: keys that go into an ECS field and also stay in ``netfilter`` as they are
ECS_KEPT = frozenset({"oob.prefix"})


def _slot_map(fields: list[tuple[Key, int]]) -> dict[str, tuple[Key, int]]:
    return {k.name: (k, slot) for k, slot in fields}


def ecs_tree(fields: list[tuple[Key, int]], options: dict[str, Any]) -> Obj:
    keys = _slot_map(fields)
    slot_of = {name: slot for name, (_, slot) in keys.items()}

    def get(name: str) -> int | None:
        return slot_of.get(name)

    flows = "ct.event" in keys
    root = Obj("")
    used: set[str] = set(ECS_CONSUMED)
    if options["timestamp"]:
        root.members.append(Leaf("@timestamp", [(None, _ecs_time(get))]))
    root.obj(["ecs"]).members.append(Leaf("version", [(None, _const(jstr(ECS_VERSION)))]))
    event = root.obj(["event"])
    event.members.append(Leaf("kind", [(None, _const('"event"'))]))
    event.members.append(Leaf("category", [(None, _const('["network"]'))]))
    label = get("raw.label") if options["boolean_label"] else None
    if label is not None:
        used.add("raw.label")
    event.members.append(Leaf("type", [(None, _event_type(get("ct.event"), label))]))
    root.obj(["observer"]).members.append(Leaf("name", [(None, _const(jstr(options["device"])))]))
    for path, candidates in ECS_KEYS:
        sources = [(keys[name][1], how) for name, how in candidates if name in keys]
        if not sources:
            continue
        *parents, name = path.split(".")
        root.obj(parents).members.append(Leaf(name, sources))
        used.update(name for name, _ in candidates if name in keys and name not in ECS_KEPT)
    event.members.append(Leaf("module", [(None, _const('"pylogd"'))]))
    event.members.append(Leaf("dataset", [(None, _const('"pylogd.flow"' if flows else '"pylogd.packet"'))]))
    for side, ip_key, port_key in (
        ("source", "reply.ip.daddr", "reply.l4.dport"),
        ("destination", "reply.ip.saddr", "reply.l4.sport"),
    ):
        if flows and (ip_key in keys or ip_key + ".str" in keys):
            nat = root.obj([side, "nat"])
            gate = _nat_gate(side, get)
            nat.members.append(Leaf("ip", [(None, _gated(gate, get(ip_key + ".str"), get(ip_key)))]))
            if port_key in keys:
                nat.members.append(Leaf("port", [(None, _gated(gate, None, None, get(port_key)))]))
    if flows:
        for name, sec, usec in (
            ("start", "flow.start.sec", "flow.start.usec"),
            ("end", "flow.end.sec", "flow.end.usec"),
        ):
            if sec in keys:
                event.members.append(Leaf(name, [(None, _time_of_valid(get(sec), get(usec)))]))
        if "flow.start.sec" in keys and "flow.end.sec" in keys:
            event.members.append(Leaf("duration", [(None, _duration(get))]))
        if "orig.raw.pktlen" in keys and "reply.raw.pktlen" in keys:
            network = root.obj(["network"])
            network.members.append(Leaf("bytes", [(None, _total(get("orig.raw.pktlen"), get("reply.raw.pktlen")))]))
        if "orig.raw.pktcount" in keys and "reply.raw.pktcount" in keys:
            network = root.obj(["network"])
            total = _total(get("orig.raw.pktcount"), get("reply.raw.pktcount"))
            network.members.append(Leaf("packets", [(None, total)]))
    addresses = [
        [(keys[name][1], how) for name, how in candidates if name in keys]
        for path, candidates in ECS_KEYS
        if path in ("source.ip", "destination.ip")
    ]
    if flows:  # the translated ends too
        addresses += [
            [
                (keys[n][1], how)
                for n, how in ((f"reply.ip.{end}.str", "str"), (f"reply.ip.{end}", _address_text))
                if n in keys
            ]
            for end in ("saddr", "daddr")
        ]
    if any(addresses):
        root.obj(["related"]).members.append(Leaf("ip", [(None, _related([a for a in addresses if a]))]))
    netfilter = root.obj(["netfilter"])
    twins = {name[: -len(".str")] for name in keys if name.endswith(".str")}
    seen: set[str] = set()
    for k, slot in fields:
        if k.name in used or (k.type is KeyType.IPADDR and k.name in twins):
            continue
        how = _ecs_value(k.type)
        column = k.name.replace(".", "_")
        if how is None or column in seen:
            continue
        seen.add(column)
        netfilter.members.append(Leaf(column, [(slot, how)], part=k.name.partition(".")[0]))
    return root


def _related(addresses: list[list[tuple[int, Any]]]) -> Callable[[list], str | None]:
    """ECS related.ip: every address of the event once, each from the first of its keys that is valid."""

    def related(v: list) -> str | None:
        seen: list[str] = []
        for candidates in addresses:
            for slot, how in candidates:
                x = v[slot]
                if x is not None:
                    text = jstr(x) if how == "str" else how(x)
                    if text is not None and text not in seen:
                        seen.append(text)
                    break
        return "[" + ", ".join(seen) + "]" if seen else None

    return related


def _ecs_value(t: KeyType) -> Any:
    if t is KeyType.BOOL:
        return _boolean
    if t in INTEGER_TYPES:
        return "int"
    if t in _TEXT:
        return "str"
    if t in (KeyType.IPADDR, KeyType.IP6ADDR):
        return _address_text
    return None


def _boolean(value: int) -> str:
    return "true" if value else "false"


def _ecs_time(get: Callable[[str], int | None]) -> Callable[[list], str]:
    """The packet time, else the flow's end, else its start, else now."""
    stamp, now = stamper(True), time.time
    pairs = [
        (get(s), get(u))
        for s, u in (
            ("oob.time.sec", "oob.time.usec"),
            ("flow.end.sec", "flow.end.usec"),
            ("flow.start.sec", "flow.start.usec"),
        )
        if get(s) is not None
    ]

    def timestamp(v: list) -> str:
        for sec_slot, usec_slot in pairs:
            sec = v[sec_slot]
            if sec is not None:
                return stamp(sec, v[usec_slot] if usec_slot is not None else None)
        return stamp(int(now()), None)

    return timestamp


def _time_of_valid(sec_slot: int | None, usec_slot: int | None) -> Callable[[list], str | None]:
    stamp = stamper(True)

    def when(v: list) -> str | None:
        sec = v[sec_slot]
        if sec is None:
            return None
        return stamp(sec, v[usec_slot] if usec_slot is not None else None)

    return when


def _duration(get: Callable[[str], int | None]) -> Callable[[list], str | None]:
    s, su, e, eu = get("flow.start.sec"), get("flow.start.usec"), get("flow.end.sec"), get("flow.end.usec")

    def duration(v: list) -> str | None:
        if v[s] is None or v[e] is None:
            return None
        start = v[s] * 1_000_000 + ((v[su] or 0) if su is not None else 0)
        end = v[e] * 1_000_000 + ((v[eu] or 0) if eu is not None else 0)
        return f"{(end - start) * 1000:d}" if end >= start else None

    return duration


def _total(a: int | None, b: int | None) -> Callable[[list], str | None]:
    def total(v: list) -> str | None:
        x, y = v[a], v[b]
        if x is None and y is None:
            return None
        return f"{(x or 0) + (y or 0):d}"

    return total


def _event_type(ct_event: int | None, label: int | None) -> Callable[[list], str]:
    phases = {1: ', "start"', 4: ', "end"'}

    def event_type(v: list) -> str:
        text = '["connection"'
        if ct_event is not None and v[ct_event] is not None:
            text += phases.get(v[ct_event], "")
        if label is not None and v[label] is not None:
            text += ', "allowed"' if v[label] else ', "denied"'
        return text + "]"

    return event_type


def _nat_gate(side: str, get: Callable[[str], int | None]) -> Callable[[list], bool]:
    """Whether the flow was translated on this side: NFCT's nat.snat/nat.dnat, else the tuples compared."""
    flag = get("nat.snat" if side == "source" else "nat.dnat")
    if side == "source":
        mine, theirs = ("orig.ip.saddr", "orig.l4.sport"), ("reply.ip.daddr", "reply.l4.dport")
    else:
        mine, theirs = ("orig.ip.daddr", "orig.l4.dport"), ("reply.ip.saddr", "reply.l4.sport")
    pairs = [(get(m), get(t)) for m, t in zip(mine, theirs, strict=True) if get(m) is not None and get(t) is not None]

    def translated(v: list) -> bool:
        if flag is not None and v[flag] is not None:
            return bool(v[flag])
        return any(v[m] is not None and v[t] is not None and v[m] != v[t] for m, t in pairs)

    return translated


def _gated(
    gate: Callable[[list], bool], text_slot: int | None, addr_slot: int | None, port_slot: int | None = None
) -> Callable[[list], str | None]:
    def value(v: list) -> str | None:
        if not gate(v):
            return None
        if port_slot is not None:
            return None if v[port_slot] is None else f"{v[port_slot]:d}"
        if text_slot is not None and v[text_slot] is not None:
            return jstr(v[text_slot])
        if addr_slot is not None and v[addr_slot] is not None:
            return _address_text(v[addr_slot])
        return None

    return value


# ---------------------------------------------------------------------------------------------
# the plugin


class Json(FileOutput):
    spec = PluginSpec(
        name="JSON",
        kind=Kind.OUTPUT,
        help="Writes every valid key of the stack as one JSON object per line (ulogd's fields, or Elastic "
        "Common Schema with fields=ecs), to a file or to a TCP, UDP or unix-socket collector.",
        options=(
            path_option("file", "/var/log/ulogd.json", "file to append the lines to; in unix mode the socket's path"),
            sync_option(),
            int_option("timestamp", 1, "1: add the event time (timestamp, or @timestamp)", min=0, max=1),
            int_option("eventv1", 0, 'Logstash event v1: "@version": 1 first, @timestamp', min=0, max=1),
            str_option("device", "Netfilter", 'value of "dvc" (observer.name with fields=ecs)'),
            int_option("boolean_label", 0, 'raw.label as "action": "allowed" (not 0) or "blocked" (0)', min=0, max=1),
            str_option("mode", "file", "where lines go: file, tcp, udp or unix", choices=MODES),
            str_option("host", "127.0.0.1", "collector's host name or address (tcp, udp)"),
            str_option("port", "12345", "collector's port, a number or a service name (tcp, udp)"),
            str_option(
                "fields", "ulogd", "ulogd (ulogd's flat keys) or ecs (Elastic Common Schema)", choices=("ulogd", "ecs")
            ),
        ),
        wildcard_inputs=True,
        section_required=True,
    )

    def __init__(self, instance_id: str, options: dict[str, Any], log: Any) -> None:
        super().__init__(instance_id, options, log)
        self.mode = str(options["mode"]).lower()
        self.sock: socket.socket | None = None
        self._reconnect = False
        self._lock = threading.Lock()  # the socket, between the worker and stop()/SIGHUP
        self.oversized = 0
        self.connects = 0
        # unix mode: lines sent on this connection that the collector may not have read, oldest first
        self._inflight: collections.deque[bytes] = collections.deque()
        self._inflight_bytes = 0
        self._resend: list[bytes] = []  # lines to send again, first, on the next connection
        self._careful = False  # the next connection's first line goes alone and waits to be read
        self._stopping = False
        self._unread = threading.Event()  # set while lines may wait unread: the watcher looks at them
        self._watcher: threading.Thread | None = None
        self.resent = 0
        self.lost = 0

    # -- configuration ------------------------------------------------------------------------

    def configure(self) -> None:
        o = self.options
        if len(o["device"]) > 255:
            raise PluginError("device is longer than 255 characters", option="device")
        if o["fields"] == "ecs" and o["eventv1"]:
            raise PluginError("eventv1 applies to fields=ulogd, not to fields=ecs", option="eventv1")
        if self.mode == "file":
            if not o["file"]:
                raise PluginError("file is empty", option="file")
            return
        # a socket can block: its writes run in the runner's worker thread
        self.blocking = True  # type: ignore[misc]
        if self.mode == "unix":
            path = os.fsencode(o["file"])
            if not path:
                raise PluginError("mode unix needs the socket's path in file", option="file")
            if len(path) >= UNIX_PATH_MAX:
                raise PluginError(
                    f"the unix socket path is {len(path)} bytes long; at most {UNIX_PATH_MAX - 1} fit", "file"
                )
            return
        host, port = o["host"], o["port"]
        if not host or len(host) > 253:
            raise PluginError("host must be a host name or address of at most 253 characters", option="host")
        if port.isdigit():
            if not 1 <= int(port) <= 65535:
                raise PluginError(f"port {port} is out of range (1 to 65535)", option="port")
        else:
            try:
                socket.getservbyname(port, self.mode)
            except OSError:
                raise PluginError(f'port "{port}" is neither a number nor a {self.mode} service name', "port") from None

    def statistics(self) -> dict[str, int]:
        if self.mode == "file":
            return {}
        if self.mode == "unix":
            return {"connects": self.connects, "oversized": self.oversized, "resent": self.resent, "lost": self.lost}
        return {"connects": self.connects, "oversized": self.oversized}

    # -- the converter --------------------------------------------------------------------------

    def wildcard_reads(self, key: Key) -> bool:
        # ulogd's fields are numbers and strings only (addresses come as IP2STR's text), so the
        # input need not make the raw and address keys; ECS also reads addresses
        return self.options["fields"] == "ecs" or key.type in INTEGER_TYPES or key.type is KeyType.STRING

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        fields = list(slots.wildcard)
        make = ecs_tree if self.options["fields"] == "ecs" else ulogd_tree
        tree = make(fields, self.options)
        return _Compiler().build(tree)

    # -- writing --------------------------------------------------------------------------------

    def start(self, loop: EventLoop) -> None:
        if self.mode == "file":
            super().start(loop)
        # sockets connect when the first batch is written: a collector that is not up yet
        # must not keep the daemon from starting

    def reopen(self) -> None:
        if self.mode == "file":
            super().reopen()
        else:
            self._reconnect = True
            self.log.notice(f"{self.id}: reconnecting to {self._peer()} before the next write")

    def stop(self) -> None:
        if self.mode == "file":
            super().stop()
            return
        self._stopping = True
        self._unread.set()  # the watcher sees _stopping and ends
        sock = self.sock
        if sock is not None:
            # a worker still blocked in send() on a collector that takes nothing wakes up now
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._lock.acquire(timeout=5):
            try:
                if self.mode == "unix":
                    self._resend_at_stop()
                self._close()
            finally:
                self._lock.release()

    def write(self, entries: list) -> None:
        if self.mode == "file":
            write_all(self.fd, entries)
            return
        with self._lock:
            if self._reconnect:
                self._reconnect = False
                self._close()  # our close: the collector still reads what it was sent
                self._inflight.clear()
                self._inflight_bytes = 0
            if self.mode == "unix":
                self._write_unix(entries)
                if self._inflight:
                    self._watch()
                return
            if self.sock is not None and self.mode != "udp" and _peer_gone(self.sock):
                self.log.notice(f"{self.id}: {self._peer()} closed the connection; reconnecting")
                self._close()
            if self.sock is None:
                self.sock = self._connect()
            if self.mode == "udp":
                self._send_datagrams(entries)
            else:
                self._send_stream(entries)

    def _send_stream(self, entries: list) -> None:
        assert self.sock is not None
        data = memoryview(b"".join(entries))
        sent = 0
        try:
            while sent < len(data):
                sent += self.sock.send(data[sent:])
        except OSError:
            self._close()
            # the lines sent whole are done; a line cut by the failure goes again whole on the next
            # connection, where its first part would make no line
            whole, done = 0, 0
            for entry in entries:
                if done + len(entry) > sent:
                    break
                done += len(entry)
                whole += 1
            del entries[:whole]
            raise

    # -- unix mode: at least once ------------------------------------------------------------

    def _write_unix(self, entries: list) -> None:
        """Send what must go again, then ``entries``; a collector that closes is reconnected at once as
        long as each connection gets a line read (a careful connection that gets none raises: the runner
        backs off)."""
        while True:
            if self._stopping:
                raise OSError(errno.ESHUTDOWN, "stopping")
            if self.sock is not None and (lossy := _unix_peer_closed(self.sock)) is not None:
                self._connection_lost(lossy)
            if not self._resend and not entries:
                return
            if self.sock is None:
                self.sock = self._connect()
            if self._careful and not self._first_line_read(entries):
                if self.sock is not None:
                    # alive but slow: the rest follows, the first line stays kept until it is read
                    self._careful = False
                else:
                    raise OSError(errno.ECONNRESET, f"{self._peer()} closed the connection without reading")
            if self.sock is None:
                continue  # closed, once it had read the careful line: the next connection
            try:
                self._send_unix(entries)
                return
            except OSError as exc:
                if self._stopping:
                    raise
                self._connection_lost(exc.errno != errno.EPIPE)

    def _watch(self) -> None:
        """Have the watcher thread follow the lines not read yet: a collector may close with them unread
        while nothing else is written for a long time."""
        self._unread.set()
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watching, name=f"unread-{self.id}", daemon=True)
            self._watcher.start()

    def _watching(self) -> None:
        """While lines may be unread, look every few milliseconds (nothing wakes a sender when its data is
        read) whether the collector read them or closed; after a close, send them again."""
        step = 0.001
        while self._unread.wait() and not self._stopping:
            time.sleep(step)
            step = min(step * 2, 0.05)
            with self._lock:
                if self._stopping:
                    return
                if self.sock is not None and self._inflight:
                    if (lossy := _unix_peer_closed(self.sock)) is None:
                        self._forget_read()
                    else:
                        self._connection_lost(lossy)
                if self._resend:
                    try:
                        self._write_unix([])
                        step = 0.001
                    except OSError:
                        step = 0.25  # the collector is away or reads nothing: look again later
                        continue
                if not self._inflight and not self._resend:
                    self._unread.clear()
                    step = 0.001

    def _send_unix(self, entries: list) -> None:
        """Send the lines to send again, then ``entries``; the lines sent whole leave ``entries`` and are
        kept until the collector is known to have read them."""
        assert self.sock is not None
        resend = self._resend
        lines = resend + entries if resend else entries
        data = memoryview(b"".join(lines))
        sent = 0
        try:
            while sent < len(data):
                sent += self.sock.send(data[sent:])
        except OSError:
            whole = done = 0
            for line in lines:
                if done + len(line) > sent:
                    break
                done += len(line)
                whole += 1
            again = min(whole, len(resend))
            self._keep(lines[:whole], done, again)
            del resend[:again]
            del entries[: whole - again]
            raise
        self._keep(lines if resend else list(lines), len(data), len(resend))
        resend.clear()
        entries.clear()
        self._forget_read()

    def _keep(self, lines: list, nbytes: int, again: int) -> None:
        self._inflight.extend(lines)
        self._inflight_bytes += nbytes
        self.resent += again

    def _forget_read(self) -> None:
        """Forget the kept lines the collector has read: one ioctl for the batch.  SIOCOUTQ counts the
        unread buffers by their size in memory, which is at least what they hold: the lines within that
        many bytes of the end may be unread, the ones before are read."""
        assert self.sock is not None
        unread = struct.unpack("i", fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        inflight = self._inflight
        if unread < self._inflight_bytes and _unix_peer_closed(self.sock) is not None:
            return  # a close discards what is unread: the count says nothing then (the next write sees it)
        if unread <= 0:
            inflight.clear()
            self._inflight_bytes = 0
            return
        while inflight and self._inflight_bytes - len(inflight[0]) >= unread:
            self._inflight_bytes -= len(inflight.popleft())

    def _connection_lost(self, lossy: bool) -> None:
        """The collector closed.  With lines unread (``lossy``: ECONNRESET) the kernel discarded them and
        the kept lines go again; without, it read everything sent."""
        self._close()
        if lossy and self._inflight:
            self._resend[:0] = self._inflight
            self._careful = True
            self.log.every(
                10,
                ERROR,
                "unread",
                f"{self.id}: {self._peer()} closed the connection with lines unread; "
                f"sending the {len(self._resend)} lines it may not have read again",
            )
        else:  # a collector that closes after each line must not fill the log
            self.log.every(10, NOTICE, "closed", f"{self.id}: {self._peer()} closed the connection; reconnecting")
        self._inflight.clear()
        self._inflight_bytes = 0

    def _first_line_read(self, entries: list) -> bool:
        """Careful: send the first line alone and wait (up to CAREFUL_WAIT) until the collector has read
        it or closed.  True when it read it; False with the connection closed (and the line kept to go
        again) or, with the connection still open, when the collector took too long."""
        assert self.sock is not None
        try:
            if self._resend:
                first, later = self._resend[:1], self._resend[1:]
                self._resend = first
                try:
                    self._send_unix([])
                finally:
                    self._resend += later  # after the first line, unless it went
            elif entries:
                one = entries[:1]
                try:
                    self._send_unix(one)
                finally:
                    if not one:  # it went
                        del entries[:1]
            else:
                return True
        except OSError as exc:
            self._connection_lost(exc.errno != errno.EPIPE)
            return False
        sock, poller = self.sock, select.poll()
        poller.register(sock, select.POLLRDHUP)
        # nothing wakes a sender when its data is read: look again after 1 ms, 2, 4... up to 50
        step, deadline = 0.001, time.monotonic() + CAREFUL_WAIT
        while time.monotonic() < deadline and not self._stopping:
            lossy = _unix_peer_closed(sock)
            if lossy is not None:
                self._connection_lost(lossy)
                self._careful = True  # read or not, this collector closes: its next connection too
                return not lossy
            if not self._inflight:
                self._careful = False
                return True
            poller.poll(step * 1000)
            step = min(step * 2, 0.05)
            self._forget_read()
        return False

    def _resend_at_stop(self) -> None:
        """At stop: a collector gone with lines unread gets them on one last connection; what cannot
        go is counted and logged as lost."""
        if self.sock is not None and (lossy := _unix_peer_closed(self.sock)) is not None:
            self._connection_lost(lossy)
        if not self._resend:
            return
        count = len(self._resend)
        try:
            self.sock = self._connect()
            self._send_unix([])
        except OSError as exc:
            self.lost += len(self._resend)
            self.log.error(
                f"{self.id}: {len(self._resend)} lines {self._peer()} did not read before it closed could not be "
                f"sent again ({exc}); lost ({self.lost} since start)"
            )
            self._resend.clear()
            return
        self.log.notice(f"{self.id}: sent {count} lines again to {self._peer()} at stop")

    def _send_datagrams(self, entries: list) -> None:
        assert self.sock is not None
        send = self.sock.send
        n = 0
        try:
            for entry in entries:
                try:
                    send(entry)
                except OSError as exc:
                    if exc.errno != 90:  # EMSGSIZE: this line can never go; the others can
                        raise
                    self.oversized += 1
                    self.log.every(
                        10, ERROR, "oversized", f"{self.id}: dropped a {len(entry)}-byte line, too big for a datagram"
                    )
                n += 1
        except OSError:
            self._close()
            raise
        finally:
            del entries[:n]

    def _peer(self) -> str:
        if self.mode == "unix":
            return f"unix:{self.options['file']}"
        return f"{self.mode}:{self.options['host']}:{self.options['port']}"

    def _connect(self) -> socket.socket:
        if self.mode == "unix":
            candidates = [(socket.AF_UNIX, socket.SOCK_STREAM, 0, self.options["file"])]
        else:
            kind = socket.SOCK_DGRAM if self.mode == "udp" else socket.SOCK_STREAM
            infos = socket.getaddrinfo(self.options["host"], self.options["port"], socket.AF_UNSPEC, kind)
            candidates = [(family, stype, proto, addr) for family, stype, proto, _, addr in infos]
        error: OSError = OSError(f"no address for {self._peer()}")
        for family, stype, proto, addr in candidates:
            sock = socket.socket(family, stype | socket.SOCK_CLOEXEC, proto)
            try:
                sock.settimeout(CONNECT_TIMEOUT)
                sock.connect(addr)
                sock.settimeout(SEND_TIMEOUT)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            self.connects += 1
            self.log.notice(f"{self.id}: connected to {self._peer()}")
            return sock
        raise error

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _unix_peer_closed(sock: socket.socket) -> bool | None:
    """None while the other end of a unix stream socket is open; once it has closed, whether it left
    lines unread: the kernel then discarded them and set ECONNRESET on this socket, which poll shows
    as POLLERR without clearing it (a send would clear it, failing with it)."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)
    for _, events in poller.poll(0):
        if events & (select.POLLHUP | select.POLLERR | select.POLLRDHUP | select.POLLNVAL):
            return bool(events & select.POLLERR)
    return None


def _peer_gone(sock: socket.socket) -> bool:
    """Whether the other end of a stream socket has closed or failed (it is not expected to send)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLRDHUP)
    for _, events in poller.poll(0):
        if events & (select.POLLHUP | select.POLLERR | select.POLLRDHUP | select.POLLNVAL):
            return True
        if events & select.POLLIN:
            try:
                while True:
                    if not sock.recv(65536, socket.MSG_DONTWAIT):
                        return True
            except BlockingIOError:
                return False
            except OSError:
                return True
    return False
