"""JOURNALD: each record one entry in the systemd journal, every key a structured field.

Entries go to journald's native socket (``/run/systemd/journal/socket``, or that of a journal
namespace with ``namespace=``) in its native protocol, one datagram per entry.  Each entry holds:

* ``MESSAGE``: the ``print`` line of PRINTPKT or PRINTFLOW when the stack has one (without its
  final newline), else a short summary made of whatever the event has:
  ``<prefix> [NEW] IN=eth0 OUT= SRC=10.77.0.2 DST=10.77.0.1 PROTO=TCP SPT=34358 DPT=2222``.
* ``PRIORITY`` (the ``priority`` option, a syslog level, default LOG_INFO),
  ``SYSLOG_FACILITY`` (``facility``, default LOG_DAEMON) and ``SYSLOG_IDENTIFIER``
  (``identifier``, default ``pylogd``): ``journalctl -t pylogd`` shows the entries.
* every other key of the stack that is valid for the event, as a field named after the key:
  upper case, every character other than a letter, digit or ``_`` replaced by ``_``
  (``ip.saddr.str`` is ``IP_SADDR_STR``, ``oob.prefix`` is ``OOB_PREFIX``, ``ct.event`` is
  ``CT_EVENT``).  A name the journal would refuse (starting with a digit or ``_``, longer than 64
  characters) or one of the fields above is prefixed with ``KEY_``; when two keys still end up
  with the same name the later ones get ``_2``, ``_3``... (ulogd's own keys never do).
* ``SRC_IP``, ``DST_IP``, ``SRC_PORT``, ``DST_PORT``: the event's addresses and ports under the
  usual names, from the keys JSON writes as ``src_ip``... (IP2STR's text, the TCP, UDP and SCTP
  ports) or else from the address keys themselves and a flow's original tuple
  (``orig.ip.saddr``, ``orig.l4.sport``): ``journalctl SRC_IP=10.77.0.2``.

Values: integers and booleans in decimal, strings as they are (binary-safe: a value holding a
newline, or bytes that are not UTF-8, arrives unchanged), addresses as text (dotted quad,
compressed IPv6).  Raw data (``raw.pkt``, ``raw.mac``) is left out unless ``raw=1``; then it is
stored as binary fields (``journalctl -o export`` gives the bytes back).  journald stamps each
entry with the time it received it; the packet's time is in ``OOB_TIME_SEC``/``OOB_TIME_USEC``.

Writes run in a worker thread: a unix datagram socket blocks when journald's queue is full, and
that must not stall packet reception.  A datagram is queued whole or not at all, so an entry is
never written in part.  When journald is down (no socket, a socket nobody reads, a restart) or
its queue stays full for 5 seconds, the entries wait in the stack's backlog and are written, each
once and in order, when it is back (what journald's queue already held when it died is lost:
the socket does not tell the sender what was read).  An entry too big for a datagram goes as a
sealed memfd, as libsystemd sends it.  SIGUSR1 shows ``connects`` and ``memfds`` (entries sent
as a memfd).

journald's own rate limit (RateLimitBurst=10000 per RateLimitIntervalSec=30s per service, or the
unit's LogRateLimit...=) drops what exceeds it without telling the sender: raise it for a busy
firewall (``LogRateLimitIntervalSec=0`` in the unit, or a journal namespace of its own).

pylogd speaks the protocol itself rather than through systemd-python's ``journal.sendv``: sendv
keeps the interpreter lock while it blocks on a full queue (the whole daemon stops, the netlink
reader too), drops entries silently when the socket does not exist, cannot reach a journal
namespace, and its send costs about twice as much CPU per entry as a plain send().

Differences from ulogd 2.0.8
----------------------------
* ulogd has no journal output.  With ulogd, firewall logs reach the journal through its SYSLOG
  output: one text line per packet, every key flattened into the message.  JOURNALD keeps each
  key a field that ``journalctl`` can match on (``journalctl -t pylogd DST_PORT=22``) and export.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
import struct
from collections.abc import Callable
from typing import Any

from pylogd.plugins.filters.ip2str import address_text
from pylogd.plugins.outputs.syslog import FACILITIES, LEVELS

from pylogd.keys import Key, KeyType
from pylogd.loop import EventLoop
from pylogd.plugin import Kind, Output, PluginError, PluginSpec, Slots, int_option, path_option, str_option

DEFAULT_SOCKET = "/run/systemd/journal/socket"
UNIX_PATH_MAX = 108  # sun_path, the terminating NUL included
#: journald's queue full for this long: the write fails and the runner retries later
SEND_TIMEOUT = 5.0
#: the send buffer libsystemd asks for: entries up to about this size go as one datagram
SNDBUF = 8 << 20
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # Linux's number; Python does not name it
#: the fields JOURNALD sets itself; a key with one of these names gets the KEY_ prefix
OWN_FIELDS = frozenset(
    {"MESSAGE", "PRIORITY", "SYSLOG_FACILITY", "SYSLOG_IDENTIFIER", "SRC_IP", "DST_IP", "SRC_PORT", "DST_PORT"}
)
#: what a journal field name may be (journald drops the others; a leading _ is for its own fields)
_VALID_FIELD = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_NOT_FIELD_CHAR = re.compile(r"[^A-Z0-9_]")
_NAMESPACE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
PROTOCOLS = {1: "ICMP", 2: "IGMP", 6: "TCP", 17: "UDP", 33: "DCCP", 47: "GRE", 50: "ESP", 51: "AH"}
PROTOCOLS.update({58: "ICMPv6", 132: "SCTP", 136: "UDPLITE"})
EVENTS = {1: "[NEW]", 2: "[UPDATE]", 4: "[DESTROY]"}
_ALIAS_CIM = (("SRC_IP", "src_ip"), ("DST_IP", "dest_ip"), ("SRC_PORT", "src_port"), ("DST_PORT", "dest_port"))
#: an alias's fallbacks when no key of the stack has its JSON name
_ALIAS_KEYS = {
    "SRC_IP": ("ip.saddr", "orig.ip.saddr"),
    "DST_IP": ("ip.daddr", "orig.ip.daddr"),
    "SRC_PORT": ("orig.l4.sport",),
    "DST_PORT": ("orig.l4.dport",),
}
_le64 = struct.Struct("<Q").pack


def field_name(key_name: str) -> str:
    """The journal field for a key: ``ip.saddr.str`` -> ``IP_SADDR_STR``; ``KEY_`` before a name
    the journal would refuse or one that JOURNALD sets itself."""
    name = _NOT_FIELD_CHAR.sub("_", key_name.upper())
    if name in OWN_FIELDS or not _VALID_FIELD.fullmatch(name):
        name = ("KEY_" + name)[:64]
    return name


def field(name: str, value: bytes) -> bytes:
    """One field in the native protocol: ``NAME=value\\n``, or the binary-safe form for a value
    holding a newline: ``NAME\\n<le64 length><value>\\n``."""
    if b"\n" in value:
        return b"%s\n%s%s\n" % (name.encode(), _le64(len(value)), value)
    return b"%s=%s\n" % (name.encode(), value)


def _text(value: str) -> bytes:
    # the inputs keep bytes that are not UTF-8 (a log prefix) as surrogate escapes: give them back
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace")


def _address(value: bytes) -> str:
    text = address_text(value)
    return text if text is not None else bytes(value).hex()


def _integer(value: Any) -> str:
    return f"{value:d}"


def _untyped(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, int):
        return b"%d" % value
    return _text(str(value))


def to_text(k: Key) -> Callable[[Any], str] | None:
    """How a value of this key becomes text for the summary and the aliases (None: it cannot)."""
    if k.type in (KeyType.STRING, KeyType.RAWSTR):
        return str
    if k.type is KeyType.IPADDR:
        return _address
    if k.type.family == "integer":
        return _integer
    return None


class Journald(Output):
    spec = PluginSpec(
        name="JOURNALD",
        kind=Kind.OUTPUT,
        help="Writes each event as a systemd journal entry: MESSAGE the print line (or a summary), "
        "every key of the stack a field (ip.saddr.str as IP_SADDR_STR), plus SRC_IP, DST_IP, SRC_PORT, DST_PORT.",
        options=(
            str_option("priority", "LOG_INFO", "PRIORITY of the entries (a syslog level)", choices=tuple(LEVELS)),
            str_option("facility", "LOG_DAEMON", "SYSLOG_FACILITY of the entries", choices=tuple(FACILITIES)),
            str_option("identifier", "pylogd", "SYSLOG_IDENTIFIER of the entries (journalctl -t)"),
            str_option("namespace", "", "journal namespace (journald's LogNamespace=); empty: the system journal"),
            path_option("socket", DEFAULT_SOCKET, "path of journald's native socket (if namespace is not set)"),
            int_option("raw", 0, "1: also write raw data keys (raw.pkt, raw.mac) as binary fields", min=0, max=1),
        ),
        wildcard_inputs=True,
    )

    blocking = True

    def configure(self) -> None:
        ident = self.options["identifier"]
        if not ident or len(ident) > 255 or any(c in ident for c in "\n\0"):
            raise PluginError("identifier must be 1 to 255 characters, without newline or NUL", option="identifier")
        namespace, path = self.options["namespace"], self.options["socket"]
        if namespace:
            if path != DEFAULT_SOCKET:
                raise PluginError("give namespace or socket, not both", option="socket")
            if not _NAMESPACE.fullmatch(namespace):
                raise PluginError(
                    "a namespace is 1 to 64 letters, digits, '_', '-' or '.', not starting with '.'",
                    option="namespace",
                )
            path = f"/run/systemd/journal.{namespace}/socket"
        if not os.path.isabs(path):
            raise PluginError("socket must be an absolute path", option="socket")
        if len(os.fsencode(path)) >= UNIX_PATH_MAX:
            raise PluginError(f"socket path longer than {UNIX_PATH_MAX - 1} bytes", option="socket")
        self.path = path
        level = LEVELS[self.options["priority"].upper()]
        facility = FACILITIES[self.options["facility"].upper()] >> 3
        self.head = b"PRIORITY=%d\nSYSLOG_FACILITY=%d\n" % (level, facility) + field("SYSLOG_IDENTIFIER", _text(ident))
        self.sock: socket.socket | None = None
        self.reconnect = False
        self.connects = 0
        self.memfds = 0

    def start(self, loop: EventLoop) -> None:
        if not os.path.exists(self.path):
            self.log.notice(f"{self.path} does not exist (yet): entries wait until journald listens there")

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        by_name = {k.name: (k, i) for k, i in slots.wildcard}
        taken = set(OWN_FIELDS)
        ints: list[tuple[str, int]] = []
        texts: list[tuple[str, int]] = []
        addresses: list[tuple[str, int]] = []
        binaries: list[tuple[str, int, Callable[[Any], bytes]]] = []
        for k, i in slots.wildcard:
            if (k.name == "print" and k.type is KeyType.STRING) or (k.type is KeyType.RAW and not self.options["raw"]):
                continue
            name = base = field_name(k.name)
            n = 1
            while name in taken:
                n += 1
                name = f"{base}_{n}"
            taken.add(name)
            if k.type.family == "integer":
                ints.append((f"{name}=", i))
            elif k.type in (KeyType.STRING, KeyType.RAWSTR):
                texts.append((f"{name}=", i))
            elif k.type is KeyType.IPADDR:
                addresses.append((f"{name}=", i))
            elif k.type is KeyType.RAW:
                binaries.append((name, i, bytes))
            else:
                binaries.append((name, i, _untyped))

        aliases = []
        for alias, cim in _ALIAS_CIM:
            sources = [(i, to_text(k)) for k, i in slots.wildcard if k.cim == cim]
            sources += [(by_name[n][1], to_text(by_name[n][0])) for n in _ALIAS_KEYS[alias] if n in by_name]
            sources = [(i, fmt) for i, fmt in sources if fmt is not None]
            if sources:
                aliases.append((f"{alias}=", tuple(sources)))

        i_print = by_name["print"][1] if "print" in by_name and by_name["print"][0].type is KeyType.STRING else None
        summary = self._summary(by_name, dict(aliases))
        head = self.head
        address = _address

        # the fields are made as one text, encoded once; a value holding a newline (rare: a
        # multi-line print, a third-party key) and raw data go apart, in the binary-safe form
        def convert(v: list) -> bytes:
            line = v[i_print] if i_print is not None else None
            if line is None:
                line = summary(v)
            elif line.endswith("\n"):
                line = line[:-1]
            apart = []
            if "\n" in line:
                text = []
                apart.append(field("MESSAGE", _text(line)))
            else:
                text = ["MESSAGE=", line, "\n"]
            for label, i in ints:
                value = v[i]
                if value is not None:
                    text.append(f"{label}{value:d}\n")
            for label, i in addresses:
                value = v[i]
                if value is not None:
                    text.append(f"{label}{address(value)}\n")
            for label, i in texts:
                value = v[i]
                if value is not None:
                    if "\n" in value:
                        apart.append(field(label[:-1], _text(value)))
                    else:
                        text.append(f"{label}{value}\n")
            for label, sources in aliases:
                for i, fmt in sources:
                    value = v[i]
                    if value is not None:
                        value = fmt(value)
                        if "\n" in value:
                            apart.append(field(label[:-1], _text(value)))
                        else:
                            text.append(f"{label}{value}\n")
                        break
            for name, i, fmt in binaries:
                value = v[i]
                if value is not None:
                    apart.append(field(name, fmt(value)))
            data = head + _text("".join(text))
            return data + b"".join(apart) if apart else data

        return convert

    @staticmethod
    def _summary(by_name: dict[str, tuple[Key, int]], aliases: dict[str, tuple]) -> Callable[[list], str]:
        """The MESSAGE of a stack without a print line: prefix, flow event, interfaces, addresses,
        protocol and ports, each when the event has it."""

        def slot(*names: str) -> tuple[int, ...]:
            return tuple(by_name[n][1] for n in names if n in by_name)

        i_prefix, i_event = slot("oob.prefix"), slot("ct.event")
        i_in, i_out = slot("oob.in"), slot("oob.out")
        i_proto = slot("ip.protocol", "orig.ip.protocol")
        parts = (
            ("SRC=", aliases.get("SRC_IP=", ())),
            ("DST=", aliases.get("DST_IP=", ())),
            ("PROTO=", tuple((i, lambda p: PROTOCOLS.get(p, str(p))) for i in i_proto)),
            ("SPT=", aliases.get("SRC_PORT=", ())),
            ("DPT=", aliases.get("DST_PORT=", ())),
        )

        def first(v: list, slots: tuple[int, ...]) -> Any:
            for i in slots:
                if v[i] is not None:
                    return v[i]
            return None

        def summary(v: list) -> str:
            words = []
            prefix = first(v, i_prefix)
            if prefix:
                words.append(prefix.strip())
            event = first(v, i_event)
            if event is not None:
                words.append(EVENTS.get(event, f"[EVENT {event}]"))
            indev, outdev = first(v, i_in), first(v, i_out)
            if indev is not None or outdev is not None:
                words.append(f"IN={indev or ''} OUT={outdev or ''}")
            for label, sources in parts:
                for i, fmt in sources:
                    value = v[i]
                    if value is not None:
                        words.append(f"{label}{fmt(value)}")
                        break
            return " ".join(words) if words else "netfilter event"

        return summary

    # -- the worker thread --------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            # as libsystemd: room for big entries as one datagram (FORCE passes wmem_max as root)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SNDBUF)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
            sock.settimeout(SEND_TIMEOUT)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.connects += 1
        return sock

    def _close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    def write(self, entries: list) -> None:
        if self.reconnect:
            self.reconnect = False
            self._close()
        sock = self.sock
        sent = 0
        try:
            if sock is None:
                sock = self.sock = self._connect()
            send = sock.send
            for entry in entries:
                try:
                    send(entry)
                except OSError as exc:
                    if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                        raise
                    self._send_memfd(sock, entry)
                sent += 1
        except OSError:
            # a refused or reset socket is dead for good (journald restarted): connect anew next time
            self._close()
            del entries[:sent]
            raise

    def _send_memfd(self, sock: socket.socket, entry: bytes) -> None:
        """An entry too big for a datagram: in a sealed memfd passed over the socket, as libsystemd
        does (journald refuses a memfd that could still change)."""
        fd = os.memfd_create("pylogd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(entry)
            while view:
                view = view[os.write(fd, view) :]
            seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
        finally:
            os.close(fd)
        self.memfds += 1

    def reopen(self) -> None:
        # the worker may be sending: it closes and reconnects at its next write
        self.reconnect = True

    def stop(self) -> None:
        sock = self.sock
        if sock is not None:
            # wakes a worker that close() gave up on while it waits for room in journald's queue
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            self._close()

    def statistics(self) -> dict[str, int]:
        return {"connects": self.connects, "memfds": self.memfds}
