"""SYSLOG: send the ``print`` line of PRINTPKT or PRINTFLOW to the local syslog daemon.

Each line goes out through the C library's syslog() (Python's :mod:`syslog`), tagged
``ulogd[<pid>]`` like ulogd's, at the configured facility and level; the line keeps its trailing
newline, as in ulogd. The syslog daemon stamps the current time, not the packet time.

The default facility LOG_KERN is logged as **daemon** (``<29>`` = daemon.notice with the default
level): that is what ulogd does, because the C library replaces facility 0 (kern) by the one
given to openlog(), LOG_DAEMON. pylogd maps LOG_KERN to LOG_DAEMON itself, so it does not depend
on that libc behaviour. The other facilities are used as given.

Writes run in a worker thread: a syslog daemon that stops reading blocks syslog(), and that must
not stall packet reception.

Differences from ulogd 2.0.8
----------------------------
* facility and level names are accepted in any letter case (ulogd wants them upper case).
* Because the C library's syslog connection is one per process, the tag ``ulogd`` also applies to
  pylogd's own messages when its logfile is "syslog" (ulogd tags both ``ulogd`` too).
"""

from __future__ import annotations

import syslog
from collections.abc import Callable
from typing import Any

from pylogd.keys import KeyType
from pylogd.loop import EventLoop
from pylogd.plugin import Kind, Output, PluginSpec, Slots, key, str_option

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


def priority(facility: str, level: str) -> int:
    """The syslog priority ulogd really sends for these option values (LOG_KERN becomes daemon)."""
    fac = FACILITIES[facility]
    if fac == syslog.LOG_KERN:
        fac = syslog.LOG_DAEMON
    return fac | LEVELS[level]


class Syslog(Output):
    spec = PluginSpec(
        name="SYSLOG",
        kind=Kind.OUTPUT,
        help="Sends the `print` line of PRINTPKT or PRINTFLOW to syslog, tagged ulogd[pid].",
        options=(
            str_option(
                "facility",
                "LOG_KERN",
                "syslog facility; LOG_KERN (the default) is logged as daemon, as ulogd does",
                choices=tuple(FACILITIES),
            ),
            str_option("level", "LOG_NOTICE", "syslog level", choices=tuple(LEVELS)),
        ),
        inputs=(key("print", KeyType.STRING, "the line to send"),),
    )

    blocking = True

    def configure(self) -> None:
        self.priority = priority(self.options["facility"].upper(), self.options["level"].upper())

    def start(self, loop: EventLoop) -> None:
        syslog.openlog(IDENT, syslog.LOG_PID | syslog.LOG_NDELAY, syslog.LOG_DAEMON)

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        i_print = slots.inp("print")

        def convert(v: list) -> str | None:
            return v[i_print]

        return convert

    def write(self, entries: list) -> None:
        send, pri = syslog.syslog, self.priority
        for line in entries:
            try:
                send(pri, line)
            except (UnicodeEncodeError, ValueError):
                # undecodable prefix bytes (surrogate escapes) or a NUL: send what can be sent
                text = line.encode("utf-8", "surrogateescape").replace(b"\0", b"\\0")
                send(pri, text.decode("utf-8", "replace"))
