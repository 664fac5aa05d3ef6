"""An NFCT instance's reader run in this process on crafted ctnetlink messages (what ``start()``
sets up, without the kernel): each message is copied into one reused buffer and walked by the real
CtSocket code, as the kernel's datagrams are."""

from __future__ import annotations

from collections.abc import Callable

from feedkit import RecordingFeed
from pylogd.plugins.inputs.nfct import Nfct

from pylogd.conntrack import NFIELDS, CtSocket
from pylogd.log import Logger
from pylogd.loop import EventLoop


class FedSocket(CtSocket):
    """A CtSocket without the kernel: its drains walk the pending messages, each with the time it
    "arrived", copied into the same buffer, so a key or a table entry that kept a view into the
    buffer would change under its feet."""

    backlog = backlog_max = 0

    def __init__(self) -> None:
        self.pending: list[tuple[int, bytes]] = []
        self.arrived = self.received = self.errors = self.enobufs = 0
        self.buf = bytearray(1 << 16)
        self._rec: list = [None] * NFIELDS

    def _drain_ring(self, callback: Callable, limit: int) -> int:
        handled, view = 0, memoryview(self.buf)
        for arrived, msg in self.pending:
            self.arrived = arrived
            self.buf[: len(msg)] = msg
            handled += self._walk(view, 0, len(msg), callback)
        self.pending.clear()
        return handled


class FedReader:
    """An NFCT instance (``options`` over the defaults) whose reader runs on a :class:`FedSocket`;
    ``accept_all`` installs a userspace filter that accepts everything (the decoded-record path);
    ``used``: the keys the feed says some plugin reads (None: all)."""

    def __init__(
        self, accept_all: bool = False, netns: str | None = None, used: set[str] | None = None, **options: object
    ) -> None:
        values = {o.name: o.default for o in Nfct.spec.options} | options
        self.plugin = plugin = Nfct("ct1", values, Logger("ct1"))
        plugin.configure()
        if accept_all:
            plugin.accept = lambda rec: True
        self.feed = plugin.feed = RecordingFeed(Nfct.spec.outputs, used)
        plugin.loop, plugin.hash, plugin.max_entries = (
            EventLoop(),
            bool(values["hash_enable"]),
            values["hash_max_entries"],
        )
        plugin._reported, plugin._resync_timer, plugin.netns = (0, 0), None, netns
        plugin._emit = plugin._make_emitter()
        self.sock = plugin.sock = FedSocket()
        self.reader = plugin._make_reader()

    def feed_messages(self, *timed: tuple[int, bytes]) -> list[dict]:
        self.sock.pending.extend(timed)
        self.reader.work()
        return self.feed.events

    def close(self) -> None:
        self.plugin.loop.close()
