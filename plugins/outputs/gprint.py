"""GPRINT: every valid key of the stack on one line, ``key=value`` joined by commas, as ulogd writes it.

::

    timestamp=2026/11/22-23:03:08,raw.pktlen=60,oob.prefix=TCPIN: ,oob.time.sec=1795388587,...,ip.saddr=10.77.0.2

The keys of every plugin before GPRINT in stack order (each plugin's keys in its key order), only
those valid for the event.  Values: strings as they are, integers and booleans in decimal, IP
addresses as text; raw data is left out.  ``timestamp=1`` puts the time of writing first, in local
time (not the packet's time: ulogd's choice).  SIGHUP reopens the file.

Differences from ulogd 2.0.8
----------------------------
* IPv6 addresses are printed as IPv6 addresses (ulogd printed their first four bytes as a dotted
  quad, ``253.119.0.0`` for ``fd77::``); raw address keys of 16 bytes never pass for IPv4.
* A line has no length limit (ulogd cut it at 4 KiB and then wrote past its end of line).
* A key name provided by several plugins is printed once, with the value of the nearest provider
  (ulogd printed it once per provider, each time with that same value).
* 64-bit signed keys and RAWSTR keys (IP2BIN's ``0x...`` literals) are printed (ulogd left them out).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pylogd.config import INT_MAX
from pylogd.files import FileOutput, sync_option
from pylogd.keys import Key, KeyType, address_text
from pylogd.plugin import Kind, PluginSpec, Slots, int_option, path_option


def formatter(k: Key) -> Callable[[Any], str] | None:
    """How GPRINT writes a value of this key's type; None: the key is left out (raw data)."""
    if k.type in (KeyType.STRING, KeyType.RAWSTR):
        return str
    if k.type in (KeyType.IPADDR, KeyType.IP6ADDR):
        return address_text
    if k.type.family == "integer":
        return lambda value: str(int(value))
    return None


class GPrint(FileOutput):
    spec = PluginSpec(
        name="GPRINT",
        kind=Kind.OUTPUT,
        help="Writes every valid key of the stack as key=value pairs joined by commas, one line per event.",
        options=(
            path_option("file", "/var/log/ulogd_gprint.log", "file to append the lines to"),
            sync_option(),
            int_option(
                "timestamp",
                0,
                "non-zero: each line begins with timestamp=YYYY/MM/DD-HH:MM:SS, (local time)",
                min=0,
                max=INT_MAX,
            ),
        ),
        wildcard_inputs=True,
        section_required=True,
    )

    def wildcard_reads(self, key: Key) -> bool:
        return formatter(key) is not None

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        fields = tuple((f"{k.name}=", i, fmt) for k, i in slots.wildcard if (fmt := formatter(k)) is not None)
        stamped = bool(self.options["timestamp"])
        strftime, localtime = time.strftime, time.localtime

        def convert(v: list) -> bytes:
            parts = [strftime("timestamp=%Y/%m/%d-%H:%M:%S", localtime())] if stamped else []
            for label, i, fmt in fields:
                value = v[i]
                if value is not None:
                    parts.append(label + fmt(value))
            return (",".join(parts) + "\n").encode("utf-8", "surrogateescape")

        return convert
