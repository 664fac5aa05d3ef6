"""GRAPHITE: counter sums to a Graphite carbon server over TCP, in carbon's plaintext protocol.

Each event (a counter read by NFACCT) is two lines::

    PREFIX.NAME.pkts PACKETS TIME
    PREFIX.NAME.bytes BYTES TIME

TIME is the event's ``oob.time.sec``, or the time of writing when the event has none.  ``host`` and
``port`` name carbon's line receiver (its plaintext port, 2003 by default in carbon).  The lines go
through pylogd's stream transport: written in batches from a worker thread; while carbon is down or
restarting they wait (in memory, or in ``[global] spool_dir``) and are sent once it is back, in order.

Differences from ulogd 2.0.8
----------------------------
* pylogd starts while carbon is down and reconnects after an outage without losing a line (ulogd
  failed the start, and lost the line whose send failed and every line until it had reconnected).
* A counter name of any length is written whole (ulogd cut the two lines at 256 bytes).
* With ``prefix`` empty the lines begin with the counter's name (ulogd wrote a leading dot, which
  carbon stores as an empty first path component).
* ``port`` may also be a service name; host and port are checked at start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

from pylogd.keys import KeyType
from pylogd.loop import EventLoop
from pylogd.plugin import Kind, PluginError, PluginSpec, Slots, key, str_option
from pylogd.transport import TransportOutput, check_address, open_transport


class Graphite(TransportOutput):
    spec = PluginSpec(
        name="GRAPHITE",
        kind=Kind.OUTPUT,
        help="Sends each counter's packets and bytes to a Graphite carbon server (plaintext protocol over TCP).",
        options=(
            str_option("host", "", "carbon's host name or address (required)"),
            str_option("port", "", "carbon's plaintext port, a number or a service name (required)"),
            str_option("prefix", "", "the first components of every metric's name (e.g. netfilter.fw1)"),
        ),
        inputs=(
            key("sum.name", KeyType.STRING, "the counter's name"),
            key("sum.pkts", KeyType.UINT64, "its packets"),
            key("sum.bytes", KeyType.UINT64, "its bytes"),
            key("oob.time.sec", KeyType.UINT32, "when it was read; the time of writing when it is not set"),
        ),
        section_required=True,
    )

    blocking: ClassVar[bool] = True  # a server may take its time: writes run in the runner's worker thread

    def __init__(self, instance_id: str, options: dict[str, Any], log: Any) -> None:
        super().__init__(instance_id, options, log)

    def configure(self) -> None:
        # ulogd declared both without a default and failed the start without them: here --check says so
        for name in ("host", "port"):
            if not self.options[name]:
                raise PluginError(f"{name} is empty: carbon's {'host' if name == 'host' else 'plaintext port'}", name)
        check_address("tcp", self.options["host"], self.options["port"], "")

    def start(self, loop: EventLoop) -> None:
        # connected by the first write: a carbon that is not up yet must not keep the daemon from starting
        self.transport = open_transport(
            "tcp", host=self.options["host"], port=self.options["port"], log=self.log, name=self.id
        )

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        i_name, i_pkts, i_bytes = slots.inp("sum.name"), slots.inp("sum.pkts"), slots.inp("sum.bytes")
        i_time = slots.inp("oob.time.sec")
        prefix = self.options["prefix"]
        head = f"{prefix}." if prefix else ""
        now = time.time

        def convert(v: list) -> bytes | None:
            name = v[i_name]
            if name is None:
                return None
            stamp = v[i_time] if i_time is not None else None
            if not stamp:
                stamp = int(now())
            metric = head + name
            text = f"{metric}.pkts {v[i_pkts] or 0} {stamp}\n{metric}.bytes {v[i_bytes] or 0} {stamp}\n"
            return text.encode("utf-8", "surrogateescape")

        return convert
