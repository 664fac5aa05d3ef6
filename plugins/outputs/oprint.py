"""OPRINT: a debug dump of every valid key of the stack, one ``key=value`` line each.

Each event is written as::

    ===>PACKET BOUNDARY
    raw.pktlen=60
    oob.in=rsva
    ip.saddr=10.77.0.2
    ...

with the keys of every plugin before OPRINT in stack order (each plugin's keys in its key
order), only those valid for the event. Values: strings as they are; integers and booleans in
decimal; IP addresses as text (dotted quad, compressed IPv6); an untyped key ``<none>``; raw data
``default`` (ulogd's placeholder for what it cannot print).

Differences from ulogd 2.0.8
----------------------------
* IP addresses are printed in the right octet order, and IPv6 addresses in full (ulogd 2.0.8
  printed an IPv4 address's octets reversed and an IPv6 address as its first four bytes,
  reversed; later ulogd releases print them as pylogd does).
* RAWSTR keys (IP2BIN's ``0x...`` literals) are printed as text; ulogd printed ``default``.
* A key name provided by several plugins is printed once, with the value of the nearest
  provider (ulogd printed it once per provider, each time with that same value).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pylogd.files import FileOutput, sync_option
from pylogd.keys import Key, KeyType, address_text
from pylogd.plugin import Kind, PluginSpec, Slots, path_option

BOUNDARY = "===>PACKET BOUNDARY\n"


def formatter(k: Key) -> Callable[[Any], str]:
    """How OPRINT writes a value of this key's type."""
    if k.type in (KeyType.STRING, KeyType.RAWSTR):
        return str
    if k.type is KeyType.IPADDR:
        return address_text
    if k.type is KeyType.NONE:
        return lambda value: "<none>"
    if k.type.family == "integer":
        return lambda value: str(int(value))
    return lambda value: "default"


class OPrint(FileOutput):
    spec = PluginSpec(
        name="OPRINT",
        kind=Kind.OUTPUT,
        help="Debug output: writes every valid key of the stack as key=value lines, "
        "each event introduced by ===>PACKET BOUNDARY.",
        options=(
            path_option("file", "/var/log/ulogd_oprint.log", "file to append the dump to"),
            sync_option("events"),
        ),
        wildcard_inputs=True,
        section_required=True,
    )

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        fields = tuple((f"{k.name}=", i, formatter(k)) for k, i in slots.wildcard)

        def convert(v: list) -> bytes:
            lines = [BOUNDARY]
            for label, i, fmt in fields:
                value = v[i]
                if value is not None:
                    lines.append(f"{label}{fmt(value)}\n")
            return "".join(lines).encode("utf-8", "surrogateescape")

        return convert
