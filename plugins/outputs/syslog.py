"""SYSLOG: send the ``print`` line of PRINTPKT or PRINTFLOW to the local syslog daemon, or to a remote one.

``mode=local`` (the default) is ulogd's: each line goes out through the C library's syslog() (Python's
:mod:`syslog`), tagged ``ulogd[<pid>]`` like ulogd's, at the configured facility and level; the line
keeps its trailing newline, as in ulogd. The syslog daemon stamps the current time, not the packet time.

The default facility LOG_KERN is logged as **daemon** (``<29>`` = daemon.notice with the default
level): that is what ulogd does, because the C library replaces facility 0 (kern) by the one
given to openlog(), LOG_DAEMON. pylogd maps LOG_KERN to LOG_DAEMON itself, so it does not depend
on that libc behaviour. The other facilities are used as given (in every mode).

Writes run in a worker thread: a syslog daemon that stops reading blocks syslog(), and that must
not stall packet reception.

Remote syslog
-------------
``mode`` udp, tcp, tls or relp sends each line to the receiver at ``host`` and ``port`` (a number or a
service name; empty: 514 for udp and tcp, 6514 for tls (RFC 5425), 2514 for relp, which has no
assigned port: rsyslog's imrelp listens where it is told).  The line loses its trailing newline and
gets a header in ``format``:

``rfc3164`` (the default), the BSD header the local daemon writes too::

    <29>Dec  7 18:47:46 fw1 ulogd[4242]: TCPIN:  IN=rsva OUT= ... MARK=0x0

``rfc5424``, with the packet time to the microsecond and its UTC offset, and every key of the stack
that is a number or a string (IP2STR's addresses included) as structured data under ``sd_id``::

    <29>1 2026-12-07T18:47:46.123456+00:00 fw1 ulogd 4242 - [ulogd@32473 oob.prefix="TCPIN: "
    ip.saddr.str="10.77.0.2" ... tcp.dport="2222"] TCPIN:  IN=rsva ...

A parameter value escapes ``"``, ``\\`` and ``]`` with a backslash; a key without a value in the record
is left out; a name longer than 32 characters (RFC 5424's limit) is cut to its last 32.  The time is the
packet's (``oob.time.sec``, ``oob.time.usec``) when the stack has it, else the time the line is made;
the host name is ``hostname``, else the system's.

``udp`` sends one datagram per line (RFC 5426); nothing is acknowledged.  ``tcp`` sends a stream with
octet-counting framing (RFC 6587: ``LENGTH SP MESSAGE``, so a line may hold any byte), ``tls`` the same
through TLS 1.2 or later (RFC 5425): the receiver's certificate must be signed by a CA of ``ca_file``
(PEM; the system's CAs when empty) and carry ``server_name`` (``host`` when empty); ``cert_file`` and
``key_file`` give a client certificate to a receiver that asks for one.  A certificate that fails
refuses the connection with one error line naming the receiver, the expected name and the reason.
Both go through pylogd.transport: connected when there is something to send, reconnected with back-off
after a failure or SIGHUP, a line cut by a failure sent again whole, and the lines the receiver's kernel
never acknowledged (TCP_INFO) sent again, first, on the next connection.  While the receiver is away the
lines wait in memory or in the spool (``[global] spool_dir``) and go out in order once it is back.

``relp`` speaks RELP, rsyslog's acknowledged protocol (pylogd.relp): every message is answered by the
receiver once it has taken it, and a batch is done when every message in it is answered; the messages
without an answer when a connection breaks go again on the next one, so a receiver that is killed and
started again loses nothing (a message whose answer was lost with the connection may arrive twice).
With ``tls=1`` RELP goes through TLS (rsyslog's imrelp ``tls="on"``), the receiver's certificate checked
with the same options and the same refusal as in tls mode.

The options are checked at start (and by ``--check``): host and port of a remote mode, the TLS files
(loaded then; a SIGHUP does not read them again), and no remote option in local mode (it would be
ignored).  SIGUSR1 shows ``connects`` and, per mode, ``oversized`` (udp: lines too big for a datagram,
dropped), ``resent`` and ``lost`` (see pylogd.transport).

Differences from ulogd 2.0.8
----------------------------
* facility and level names are accepted in any letter case (ulogd wants them upper case).
* Because the C library's syslog connection is one per process, the tag ``ulogd`` also applies to
  pylogd's own messages when its logfile is "syslog" (ulogd tags both ``ulogd`` too).
* ulogd has no remote syslog: ``mode`` and the options after it are new.
"""

from __future__ import annotations

import os
import socket
import syslog
import time
from collections.abc import Callable
from typing import Any

from pylogd.keys import INTEGER_TYPES, Key, KeyType
from pylogd.log import Logger
from pylogd.loop import EventLoop
from pylogd.plugin import Kind, PluginError, PluginSpec, Slots, int_option, key, str_option
from pylogd.relp import RelpTransport
from pylogd.transport import (
    TLS_OPTION_NAMES,
    TransportOutput,
    check_address,
    open_transport,
    refuse_tls_options,
    tls_arguments,
    tls_context,
    tls_options,
)

FACILITIES = {
    "LOG_DAEMON": syslog.LOG_DAEMON,
    "LOG_KERN": syslog.LOG_KERN,
    "LOG_LOCAL0": syslog.LOG_LOCAL0,
    "LOG_LOCAL1": syslog.LOG_LOCAL1,
    "LOG_LOCAL2": syslog.LOG_LOCAL2,
    "LOG_LOCAL3": syslog.LOG_LOCAL3,
    "LOG_LOCAL4": syslog.LOG_LOCAL4,
    "LOG_LOCAL5": syslog.LOG_LOCAL5,
    "LOG_LOCAL6": syslog.LOG_LOCAL6,
    "LOG_LOCAL7": syslog.LOG_LOCAL7,
    "LOG_USER": syslog.LOG_USER,
}
LEVELS = {
    "LOG_EMERG": syslog.LOG_EMERG,
    "LOG_ALERT": syslog.LOG_ALERT,
    "LOG_CRIT": syslog.LOG_CRIT,
    "LOG_ERR": syslog.LOG_ERR,
    "LOG_WARNING": syslog.LOG_WARNING,
    "LOG_NOTICE": syslog.LOG_NOTICE,
    "LOG_INFO": syslog.LOG_INFO,
    "LOG_DEBUG": syslog.LOG_DEBUG,
}
IDENT = "ulogd"
MODES = ("local", "udp", "tcp", "tls", "relp")
FORMATS = ("rfc3164", "rfc5424")
DEFAULT_PORTS = {"udp": "514", "tcp": "514", "tls": "6514", "relp": "2514"}
#: the options that only a remote mode reads, and those that only tls reads
REMOTE_OPTIONS = ("host", "port", "hostname", "tls")
#: RFC 3164's month names, whatever the locale
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
#: RFC 5424 §6.3.3: in a parameter value these three are escaped with a backslash
SD_ESCAPES = str.maketrans({'"': '\\"', "\\": "\\\\", "]": "\\]"})
SD_NAME_MAX = 32


def priority(facility: str, level: str) -> int:
    """The syslog priority ulogd really sends for these option values (LOG_KERN becomes daemon)."""
    fac = FACILITIES[facility]
    if fac == syslog.LOG_KERN:
        fac = syslog.LOG_DAEMON
    return fac | LEVELS[level]


def sd_name(name: str) -> str:
    """A key's name as an RFC 5424 SD-NAME: printable ASCII without ``= ] "`` and space, at most 32."""
    clean = "".join(c if "!" <= c <= "~" and c not in '=]"' else "_" for c in name)
    return clean[-SD_NAME_MAX:]


def _encode(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:  # a prefix that was not UTF-8 (surrogate escapes): U+FFFD for the bad bytes
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").encode()


def _sd_builder(sd_open: str, fields: list[tuple[Key, int]]) -> Callable[[list], str]:
    """``structured(record)``: the SD-ELEMENT of the record's keys in ``fields`` that have a value, or
    ``-``.  Made once per stack as straight-line code, a test and an append per key, so a record costs
    no loop over the keys and no lookup of how to write each."""
    names: dict[str, Any] = {"_esc": SD_ESCAPES, "_open": sd_open}
    body = ["def structured(v):", "    parts = [_open]"]
    for n, (k, slot) in enumerate(fields):
        names[f"_n{n}"] = f' {sd_name(k.name)}="'
        body.append(f"    x = v[{slot}]")
        body.append("    if x is not None:")
        if k.type is KeyType.STRING:
            body.append("        if '\"' in x or '\\\\' in x or ']' in x:")
            body.append("            x = x.translate(_esc)")
            body.append(f"        parts.append(_n{n} + x + '\"')")
        elif k.type is KeyType.BOOL:
            body.append(f"        parts.append(_n{n} + ('1\"' if x else '0\"'))")
        else:
            body.append(f"        parts.append(f'{{_n{n}}}{{x}}\"')")
    body.append("    return ''.join(parts) + ']' if len(parts) > 1 else '-'")
    exec("\n".join(body), names)  # the source is ours: slot numbers, and the names bound as constants
    return names["structured"]


def _slot(slots: Slots, name: str) -> int | None:
    try:
        return slots.inp(name)
    except KeyError:  # a Slots made without the optional key
        return None


class Syslog(TransportOutput):
    spec = PluginSpec(
        name="SYSLOG",
        kind=Kind.OUTPUT,
        help="Sends the `print` line of PRINTPKT or PRINTFLOW to syslog, tagged ulogd[pid]: the local daemon, "
        "or a remote one over UDP, TCP, TLS or RELP.",
        options=(
            str_option(
                "facility",
                "LOG_KERN",
                "syslog facility; LOG_KERN (the default) is logged as daemon, as ulogd does",
                choices=tuple(FACILITIES),
            ),
            str_option("level", "LOG_NOTICE", "syslog level", choices=tuple(LEVELS)),
            str_option(
                "mode",
                "local",
                "local: the local daemon through syslog(3), as ulogd; udp, tcp, tls (RFC 5425), relp: the "
                "receiver at host and port",
                choices=MODES,
            ),
            str_option("host", "", "the remote receiver's host name or address (remote modes)"),
            str_option(
                "port",
                "",
                "the receiver's port, a number or a service name; empty: 514 (udp, tcp), 6514 (tls), 2514 (relp)",
            ),
            str_option(
                "format",
                "rfc3164",
                "remote modes: rfc3164 (BSD header) or rfc5424 (the record's keys as structured data)",
                choices=FORMATS,
            ),
            str_option("hostname", "", "the HOSTNAME field of remote messages; empty: the system's host name"),
            str_option("sd_id", "ulogd@32473", "rfc5424: the SD-ID of the structured data"),
            int_option("tls", 0, 'relp: 1 to speak RELP through TLS (rsyslog\'s imrelp tls="on")', min=0, max=1),
            *tls_options("tls, relp with tls=1", "receiver"),
        ),
        inputs=(
            key("print", KeyType.STRING, "the line to send"),
            key(
                "oob.time.sec",
                KeyType.UINT32,
                "remote modes: the packet time, else now",
                optional=True,
            ),
            key("oob.time.usec", KeyType.UINT32, "rfc5424: its microseconds", optional=True),
        ),
        wildcard_inputs=True,
    )

    blocking = True

    def __init__(self, instance_id: str, options: dict[str, Any], log: Logger) -> None:
        super().__init__(instance_id, options, log)

    def configure(self) -> None:
        o = self.options
        self.priority = priority(o["facility"].upper(), o["level"].upper())
        self.mode = str(o["mode"]).lower()
        self.format = str(o["format"]).lower()
        if self.mode == "local":
            for name in (*REMOTE_OPTIONS, *TLS_OPTION_NAMES):
                if o[name]:
                    raise PluginError(
                        f"{name} is set but mode is local (the local syslog daemon); choose mode udp, tcp, tls "
                        "or relp to send to a remote receiver",
                        option=name,
                    )
            if self.format != "rfc3164":
                raise PluginError("format applies to the remote modes: syslog(3) writes its own header", "format")
            return
        if not o["host"]:
            raise PluginError(f"mode {self.mode} needs the receiver's host name or address in host", option="host")
        port = o["port"] or DEFAULT_PORTS[self.mode]
        check_address("tcp" if self.mode == "relp" else self.mode, o["host"], port, "")
        tls = self.mode == "tls" or (self.mode == "relp" and bool(o["tls"]))
        if o["tls"] and self.mode not in ("tls", "relp"):
            raise PluginError("tls=1 applies to mode relp; for TLS without RELP choose mode tls", option="tls")
        if not tls:
            refuse_tls_options(o, "mode tls and to mode relp with tls=1")
        hostname = o["hostname"] or socket.gethostname() or "-"
        if len(hostname) > 255 or not all("!" <= c <= "~" for c in hostname):
            raise PluginError("hostname must be at most 255 printable ASCII characters, no space", "hostname")
        self.hostname = hostname
        sd_id = o["sd_id"]
        if not sd_id or sd_name(sd_id) != sd_id:
            raise PluginError(
                f'sd_id "{sd_id}" is not an SD-ID: 1 to 32 printable ASCII characters, no space, =, ] or "', "sd_id"
            )
        if self.mode == "relp":
            # a TLS file that cannot be used fails here, so --check says so
            context = (
                tls_context(ca_file=o["ca_file"], cert_file=o["cert_file"], key_file=o["key_file"]) if tls else None
            )
            self.transport = RelpTransport(
                host=o["host"], port=port, log=self.log, name=self.id, context=context, server_name=o["server_name"]
            )
        else:  # a TLS file that cannot be used fails here, so --check says so
            self.transport = open_transport(
                self.mode,
                host=o["host"],
                port=port,
                log=self.log,
                name=self.id,
                **tls_arguments(o),
            )

    def start(self, loop: EventLoop) -> None:
        if self.transport is None:
            syslog.openlog(IDENT, syslog.LOG_PID | syslog.LOG_NDELAY, syslog.LOG_DAEMON)
        # a remote mode connects at its first write: a receiver that is not up must not keep pylogd from starting

    def wildcard_reads(self, key: Key) -> bool:
        # only rfc5424 writes the other keys: the input need not make them otherwise
        o = self.options
        if str(o["mode"]).lower() == "local" or str(o["format"]).lower() != "rfc5424":
            return False
        return key.type in INTEGER_TYPES or key.type is KeyType.STRING

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        i_print = slots.inp("print")
        if self.transport is None:

            def convert(v: list) -> str | None:
                return v[i_print]

            return convert
        if self.format == "rfc5424":
            return self._rfc5424(slots, i_print)
        return self._rfc3164(slots, i_print)

    def _framed(self) -> bool:
        return self.mode in ("tcp", "tls")  # RFC 6587 octet counting; a datagram or a RELP frame holds one

    def _rfc3164(self, slots: Slots, i_print: int | None) -> Callable[[list], bytes | None]:
        i_sec = _slot(slots, "oob.time.sec")
        pri, host, framed = f"<{self.priority}>", self.hostname, self._framed()
        now, localtime, getpid = time.time, time.localtime, os.getpid
        cache: list = [None, ""]  # the second, and the header down to the colon: made once per second

        def convert(v: list) -> bytes | None:
            line = v[i_print]
            if line is None:
                return None
            sec = v[i_sec] if i_sec is not None else None
            if sec is None:
                sec = int(now())
            if sec != cache[0]:
                t = localtime(sec)
                # the pid is read here: pylogd detaches (a new pid) after building its stacks
                cache[:] = (
                    sec,
                    f"{pri}{MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} "
                    f"{host} {IDENT}[{getpid()}]: ",
                )
            if line.endswith("\n"):
                line = line[:-1]
            data = _encode(cache[1] + line)
            return b"%d %b" % (len(data), data) if framed else data

        return convert

    def _rfc5424(self, slots: Slots, i_print: int | None) -> Callable[[list], bytes | None]:
        i_sec, i_usec = _slot(slots, "oob.time.sec"), _slot(slots, "oob.time.usec")
        framed, host = self._framed(), self.hostname
        head = f"<{self.priority}>1 "
        # per key: ' NAME="', its slot, whether it is text (escaped) or a number
        structured = _sd_builder("[" + self.options["sd_id"], slots.wildcard)
        now, localtime, getpid = time.time, time.localtime, os.getpid
        cache: list = [None, "", ""]  # the second; the header down to it; from its UTC offset to the SD

        def convert(v: list) -> bytes | None:
            line = v[i_print]
            if line is None:
                return None
            sec = v[i_sec] if i_sec is not None else None
            usec = v[i_usec] if i_usec is not None else None
            if sec is None:
                stamp = now()
                sec, usec = int(stamp), int((stamp % 1) * 1e6)
            if sec != cache[0]:
                t = localtime(sec)
                off = abs(t.tm_gmtoff) // 60
                sign = "-" if t.tm_gmtoff < 0 else "+"
                cache[:] = (
                    sec,
                    head + time.strftime("%Y-%m-%dT%H:%M:%S", t),
                    f"{sign}{off // 60:02d}:{off % 60:02d} {host} {IDENT} {getpid()} - ",
                )
            sd = structured(v)
            if line.endswith("\n"):
                line = line[:-1]
            fraction = f".{usec:06d}" if usec is not None else ""
            data = _encode(f"{cache[1]}{fraction}{cache[2]}{sd} {line}")
            return b"%d %b" % (len(data), data) if framed else data

        return convert

    def write(self, entries: list) -> None:
        if self.transport is not None:
            super().write(entries)
            return
        send, pri = syslog.syslog, self.priority
        for line in entries:
            try:
                send(pri, line)
            except (UnicodeEncodeError, ValueError):
                # undecodable prefix bytes (surrogate escapes) or a NUL: send what can be sent
                text = line.encode("utf-8", "surrogateescape").replace(b"\0", b"\\0")
                send(pri, text.decode("utf-8", "replace"))
