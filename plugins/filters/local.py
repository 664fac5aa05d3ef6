"""LOCAL: the host name and the time of logging, as keys (ulogd 1.x's ulogd_LOCAL "virtual interpreter").

It looks at nothing in the event: local.time is the current time in seconds when the event passes
(not the packet's receive time, which is oob.time.sec), local.hostname is the host name up to its
first dot, read once at start.

ulogd 2.0.8 no longer ships LOCAL (its manual still describes it); the keys, their order and their
meaning are ulogd 1.x's.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from pylogd.keys import KeyType
from pylogd.loop import EventLoop
from pylogd.plugin import Filter, Kind, PluginSpec, Slots, key


class Local(Filter):
    spec = PluginSpec(
        name="LOCAL",
        kind=Kind.FILTER,
        help="Adds the local host name and the time of logging (not the packet time) to every event.",
        outputs=(
            key("local.time", KeyType.UINT32, "seconds since the epoch when the event was logged"),
            key("local.hostname", KeyType.STRING, "host name, cut at the first dot"),
        ),
    )

    hostname: str = ""

    def start(self, loop: EventLoop) -> None:
        self.hostname = socket.gethostname().split(".")[0]

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        o_time, o_host = slots.out("local.time"), slots.out("local.hostname")
        host = self.hostname or socket.gethostname().split(".")[0]
        now = time.time

        def local(v: list) -> None:
            v[o_time] = int(now())
            v[o_host] = host

        return local
