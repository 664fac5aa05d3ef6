"""PWSNIFF: ulogd's example filter that picks FTP and POP3 logins out of TCP payloads.

Only TCP segments to port 21 (FTP) or 110 (POP3) pass; every other event is stopped, so a
PWSNIFF stack logs nothing but those. In a passing segment the payload is searched for
``USER <name>`` and ``PASS <secret>`` (the command case-insensitive, the value ending at a space,
CR or LF); the last of each found becomes pwsniff.user / pwsniff.pass. The protocols send these
in clear text, which is the whole point of the example: do not run it where that is not wanted.

Differences from ulogd 2.0.8
----------------------------
* IPv6 packets whose next header is TCP are searched too; ulogd read every packet as IPv4.
* The payload starts after the TCP header's real length (data offset) and ends at the IP
  length or the end of the captured data, whichever comes first; ulogd assumed a 20-byte
  header and read up to the IP total length even past the captured data. Non-first IPv4
  fragments and truncated headers are stopped instead of misread.
* Non-UTF-8 bytes in a value are kept as surrogate escapes (written back as the same bytes).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pylogd.keys import KeyType
from pylogd.plugin import STOP, Filter, Kind, PluginSpec, Slots, key

PORTS = frozenset({21, 110})
# zero-width so that overlapping commands are all seen, like a byte-by-byte scan
_USER = re.compile(rb"(?i)(?=USER ([^ \r\n]+)[ \r\n])")
_PASS = re.compile(rb"(?i)(?=PASS ([^ \r\n]+)[ \r\n])")


def tcp_payload(pkt: bytes) -> bytes | None:
    """The payload of a TCP segment to port 21 or 110 inside an IPv4 or IPv6 packet, else None."""
    n = len(pkt)
    if n < 1:
        return None
    version = pkt[0] >> 4
    if version == 4:
        ihl = (pkt[0] & 0x0F) * 4
        if ihl < 20 or n < ihl + 20 or pkt[9] != 6 or (pkt[6] & 0x1F) or pkt[7]:
            return None
        tcp = ihl
        end = min(n, (pkt[2] << 8) | pkt[3])
    elif version == 6:
        if n < 60 or pkt[6] != 6:
            return None
        tcp = 40
        plen = (pkt[4] << 8) | pkt[5]
        end = min(n, 40 + plen) if plen else n  # 0: a jumbogram
    else:
        return None
    if ((pkt[tcp + 2] << 8) | pkt[tcp + 3]) not in PORTS:
        return None
    start = tcp + max(pkt[tcp + 12] >> 4, 5) * 4
    return bytes(pkt[start:end])


def _last(pattern: re.Pattern[bytes], payload: bytes) -> str | None:
    value = None
    for m in pattern.finditer(payload):
        value = m.group(1)
    return None if value is None else value.decode("utf-8", "surrogateescape")


class PwSniff(Filter):
    spec = PluginSpec(
        name="PWSNIFF",
        kind=Kind.FILTER,
        help="Example filter: passes only TCP packets to ports 21 (FTP) and 110 (POP3) and extracts the "
        "clear-text USER and PASS values from them.",
        inputs=(key("raw.pkt", KeyType.NONE, "the IP packet"),),
        outputs=(
            key("pwsniff.user", KeyType.STRING, "the USER value found in the payload"),
            key("pwsniff.pass", KeyType.STRING, "the PASS value found in the payload"),
        ),
    )

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        i_pkt = slots.inp("raw.pkt")
        o_user, o_pass = slots.out("pwsniff.user"), slots.out("pwsniff.pass")

        def pwsniff(v: list) -> Any:
            pkt = v[i_pkt]
            payload = tcp_payload(pkt) if pkt is not None else None
            if payload is None:
                return STOP
            if payload:
                v[o_user] = _last(_USER, payload)
                v[o_pass] = _last(_PASS, payload)
            return None

        return pwsniff
