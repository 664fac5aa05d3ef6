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
the socket's path) send a stream of lines; ``udp`` sends each line as one datagram, through
pylogd.transport, whose docstring states what each mode guarantees; ``tls`` is ``tcp`` through TLS,
the collector's certificate checked (``ca_file``, ``server_name``; ``cert_file`` and ``key_file`` for a
client certificate).  Sockets are
written from a worker thread, connected when there is something to send, and reconnected after
an error or SIGHUP; while the collector is away the lines wait in the stack's backlog and go out,
each once and in order, when it is back.  A line that was only partly sent when a connection
broke is sent again whole on the next one.  Before each batch a stream socket is checked for a
peer that has closed, so a batch is not sent into a dead connection.  Over TCP the lines the
collector's kernel never acknowledged (TCP_INFO's ``tcpi_bytes_acked``) are kept, at most what the
socket's send buffer holds, and after a broken connection they are sent again, first, on the next
one: a batch written into a connection whose collector had just died is not lost.  What remains lost
is what the collector's kernel acknowledged but the collector had not read when it died: a TCP
socket does not tell the sender what the other end read.  A line the collector read before its
kernel acknowledged it may arrive twice; lines first arrive in the order they were sent.

A unix socket does, and ``unix`` mode delivers every line at least once.  After each batch one
ioctl (SIOCOUTQ) tells how much the collector has not read yet; the lines that may be in it are kept
(at most what the socket buffers hold).  A collector that closes with lines unread makes the kernel
discard them and report ECONNRESET: those kept lines are sent again, first, on the next connection,
the first of them alone until the collector has read it, and so on while the collector closes its
connections (so a collector that reads a line per connection still gets every line).  A line the
collector read just before closing may so arrive twice; lines first arrive in the order they were
sent.  Lines that could not be sent again before the daemon stopped are counted (``lost``) and
logged.  SIGUSR1 shows ``connects`` (connections made), ``oversized`` (lines too big for a
datagram, dropped) and, in tcp and unix modes, ``resent`` (lines sent again) and ``lost`` (lines that
could not be sent again before the daemon stopped).

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

import re
import socket
import time
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring
from typing import Any

from pylogd.files import FileOutput, sync_option, write_all
from pylogd.keys import INTEGER_TYPES, Key, KeyType
from pylogd.loop import EventLoop
from pylogd.plugin import Kind, PluginError, PluginSpec, Slots, int_option, path_option, str_option
from pylogd.transport import MODES as TRANSPORT_MODES
from pylogd.transport import (
    Transport,
    check_address,
    open_transport,
    refuse_tls_options,
    tls_arguments,
    tls_options,
)

MODES = ("file", *TRANSPORT_MODES, "tls")
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
            str_option("mode", "file", "where lines go: file, tcp, tls, udp or unix", choices=MODES),
            str_option("host", "127.0.0.1", "collector's host name or address (tcp, tls, udp)"),
            str_option("port", "12345", "collector's port, a number or a service name (tcp, tls, udp)"),
            *tls_options("mode tls", "collector"),
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
        self.transport: Transport | None = None  # the socket modes: where the lines go

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
        check_address(self.mode, o["host"], o["port"], o["file"], path_option="file")
        if self.mode != "tls":
            refuse_tls_options(o, "mode tls")
        # a TLS file that cannot be used fails here, so --check says so
        self.transport = open_transport(
            self.mode, host=o["host"], port=o["port"], path=o["file"], log=self.log, name=self.id, **tls_arguments(o)
        )

    def writes_block(self) -> bool:
        return self.mode != "file"  # a socket can block: its writes run in the runner's worker thread

    def statistics(self) -> dict[str, int]:
        return {} if self.transport is None else self.transport.statistics()

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
        if self.transport is None:
            super().reopen()
        else:
            self.transport.reopen()

    def stop(self) -> None:
        if self.transport is None:
            super().stop()
        else:
            self.transport.close()

    def write(self, entries: list) -> None:
        if self.transport is None:
            write_all(self.fd, entries)
        else:
            self.transport.send(entries)
