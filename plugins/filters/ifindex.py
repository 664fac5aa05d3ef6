"""IFINDEX: interface names for the interface indexes of a packet.

``oob.ifindex_in``/``oob.ifindex_out`` become ``oob.in``/``oob.out`` (always valid, "" for
no interface).  Names come from a cache filled with one rtnetlink dump at start and kept
current by an RTMGRP_LINK socket on the event loop (new interfaces, renames, deletions),
so a packet normally costs a dictionary lookup and no system call.  The few rtnetlink
messages involved are parsed here (index and IFLA_IFNAME); pyroute2, which would add
about 15 MiB to the daemon, serves as the reference in the tests.

The cache belongs to a network namespace: the daemon's, the one named by the ``netns``
option, or -- when the input tags its packets with ``oob.netns`` (NFLOG's ``netns``
option) -- the packet's own namespace, whose cache is opened the first time it is seen.

Differences from ulogd 2.0.8
----------------------------
* An index missing from the cache triggers a fresh dump (at most one per second), and an
  index still unknown after it gives "" (or the last name of a deleted interface, for the
  packets logged just before the deletion).  ulogd left its static buffer unchanged, so the
  packet got the previous packet's interface name.
* New optional ``netns`` option, and packets carrying ``oob.netns`` are named in their own
  namespace.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

from pylogd.keys import KeyType
from pylogd.log import ERROR, Logger
from pylogd.loop import EventLoop
from pylogd.netlink import netns_context
from pylogd.plugin import Filter, Kind, PluginError, PluginSpec, Slots, key, str_option

RTMGRP_LINK = 0x1
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
IFLA_IFNAME = 3
REFRESH_INTERVAL = 1.0  # seconds between dumps triggered by unknown indexes
GRAVEYARD_SIZE = 1024  # names of deleted interfaces kept for late packets

_NLMSG = struct.Struct("=IHHII")
_IFINFO_INDEX = struct.Struct("=i")  # ifinfomsg.ifi_index, 4 bytes into the ifinfomsg
_NLA = struct.Struct("=HH")


def parse_links(data: bytes) -> Iterator[tuple[int, int, int, str | None]]:
    """(message type, flags, interface index, name) of each RTM_NEWLINK/RTM_DELLINK in a datagram;
    NLMSG_DONE and NLMSG_ERROR come through with index 0 (and the error code in place of the index)."""
    off, n = 0, len(data)
    while off + 16 <= n:
        mlen, mtype, flags, _seq, _pid = _NLMSG.unpack_from(data, off)
        end = off + mlen
        if mlen < 16 or end > n:
            return
        if mtype in (RTM_NEWLINK, RTM_DELLINK) and mlen >= 32:
            index = _IFINFO_INDEX.unpack_from(data, off + 20)[0]
            name = None
            a = off + 32  # nlmsghdr + ifinfomsg
            while a + 4 <= end:
                alen, atype = _NLA.unpack_from(data, a)
                if alen < 4 or a + alen > end:
                    break
                if atype & 0x3FFF == IFLA_IFNAME:
                    name = data[a + 4 : a + alen].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                    break
                a = (a + alen + 3) & ~3
            yield mtype, flags, index, name
        elif mtype == NLMSG_ERROR and mlen >= 20:
            yield mtype, flags, -_IFINFO_INDEX.unpack_from(data, off + 16)[0], None
        elif mtype == NLMSG_DONE:
            yield mtype, flags, 0, None
        off = (end + 3) & ~3


def _rtnetlink_socket(netns: str | None, groups: int) -> socket.socket:
    with netns_context(netns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, groups))
    except OSError:
        sock.close()
        raise
    return sock


def dump_links(sock: socket.socket, timeout: float = 5.0) -> dict[int, str]:
    """Every interface of the socket's namespace, index -> name (RTM_GETLINK dump)."""
    for _attempt in range(5):
        request = _NLMSG.pack(32, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + bytes(16)
        sock.sendto(request, (0, 0))
        names: dict[int, str] = {}
        interrupted = False
        deadline = time.monotonic() + timeout
        while True:
            if not select.select([sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise OSError(errno.ETIMEDOUT, "no answer to the interface dump")
            done = False
            for mtype, flags, index, name in parse_links(sock.recv(1 << 16)):
                interrupted |= bool(flags & NLM_F_DUMP_INTR)
                if mtype == NLMSG_ERROR and index:
                    raise OSError(index, f"interface dump refused: {errno.errorcode.get(index, index)}")
                if mtype == NLMSG_DONE:
                    done = True
                elif mtype == RTM_NEWLINK and name is not None:
                    names[index] = name
            if done:
                break
        if not interrupted:  # the links changed while the kernel answered: ask again
            return names
    return names


class LinkCache:
    """Interface names by index for one network namespace, kept current from rtnetlink."""

    def __init__(self, netns: str | None, log: Logger) -> None:
        self.netns = netns
        self.log = log
        #: index -> name; updated in place, handlers keep a reference to it
        self.names: dict[int, str] = {}
        self.gone: dict[int, str] = {}
        self.refreshes = 0
        self.events = 0
        self._last_refresh = -1e9
        self._loop: EventLoop | None = None
        self._sock: socket.socket | None = None  # link events
        self._dump: socket.socket | None = None  # dumps

    def open(self, loop: EventLoop) -> None:
        """Subscribe to link events first, then dump, so that no change falls between the two."""
        self._sock = _rtnetlink_socket(self.netns, RTMGRP_LINK)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self._sock.setblocking(False)
            self._dump = _rtnetlink_socket(self.netns, 0)
            self.refresh()
        except OSError:
            self.close()
            raise
        self._loop = loop
        loop.add_reader(self._sock.fileno(), self.readable)

    def close(self) -> None:
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._dump is not None:
            self._dump.close()
            self._dump = None

    def refresh(self) -> None:
        """Replace the cache with a fresh dump of the namespace's links."""
        assert self._dump is not None
        self._last_refresh = time.monotonic()
        self.refreshes += 1
        fresh = dump_links(self._dump)
        for index, name in self.names.items():
            if index not in fresh:
                self._bury(index, name)
        self.names.clear()
        self.names.update(fresh)

    def _bury(self, index: int, name: str) -> None:
        if len(self.gone) >= GRAVEYARD_SIZE:
            self.gone.pop(next(iter(self.gone)))
        self.gone[index] = name

    def readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # events were lost: start over from a dump
                    self._safe_refresh()
                    continue
                self.log.every(10, ERROR, "rtnetlink", f"reading link events failed: {exc}")
                return
            for mtype, _flags, index, name in parse_links(data):
                if mtype not in (RTM_NEWLINK, RTM_DELLINK):
                    continue
                self.events += 1
                if mtype == RTM_NEWLINK and name is not None:
                    self.names[index] = name
                    self.gone.pop(index, None)
                elif mtype == RTM_DELLINK:
                    old = self.names.pop(index, None) or name
                    if old is not None:
                        self._bury(index, old)

    def _safe_refresh(self) -> None:
        try:
            self.refresh()
        except OSError as exc:
            self.log.every(10, ERROR, "refresh", f"cannot list interfaces: {exc}")

    def missing(self, index: int) -> str:
        """The name of an index the cache lacks: dump again (rate-limited), else a recent deletion, else ""."""
        if time.monotonic() - self._last_refresh >= REFRESH_INTERVAL:
            self._safe_refresh()
            name = self.names.get(index)
            if name is not None:
                return name
        return self.gone.get(index, "")


class Ifindex(Filter):
    spec = PluginSpec(
        name="IFINDEX",
        kind=Kind.FILTER,
        help="Turns the input and output interface indexes of a packet into interface names.",
        options=(
            str_option(
                "netns",
                None,
                "name interfaces in this network namespace (a name under /run/netns, or a path); "
                "default: the packet's oob.netns, else the daemon's namespace",
            ),
        ),
        inputs=(
            key("oob.ifindex_in", KeyType.UINT32, "input interface index"),
            key("oob.ifindex_out", KeyType.UINT32, "output interface index"),
            key("oob.netns", KeyType.STRING, "the namespace the packet was logged in", optional=True),
        ),
        outputs=(
            key("oob.in", KeyType.STRING, 'input interface name ("" for none)'),
            key("oob.out", KeyType.STRING, 'output interface name ("" for none)'),
        ),
    )

    def start(self, loop: EventLoop) -> None:
        self.loop = loop
        self.caches: dict[str | None, LinkCache] = {}
        try:
            self.default = self._cache(self.options["netns"])
        except OSError as exc:
            raise PluginError(f"cannot read the interfaces of {self._where(self.options['netns'])}: {exc}") from None

    @staticmethod
    def _where(netns: str | None) -> str:
        return f"network namespace {netns}" if netns else "the daemon's network namespace"

    def _cache(self, netns: str | None) -> LinkCache:
        cache = self.caches.get(netns)
        if cache is None:
            cache = LinkCache(netns, self.log)
            cache.open(self.loop)
            self.caches[netns] = cache
            self.log.info(f"{len(cache.names)} interfaces in {self._where(netns)}")
        return cache

    def _cache_for_packet(self, netns: str) -> LinkCache:
        """The cache of a namespace first seen on a packet; the default one if it cannot be opened."""
        try:
            return self._cache(netns)
        except OSError as exc:
            fallback = self._where(self.default.netns)
            self.log.error(f"cannot read the interfaces of network namespace {netns} ({exc}); using {fallback}")
            self.caches[netns] = self.default  # do not retry on every packet
            return self.default

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        i_in, i_out, i_ns = slots.inp("oob.ifindex_in"), slots.inp("oob.ifindex_out"), slots.inp("oob.netns")
        o_in, o_out = slots.out("oob.in"), slots.out("oob.out")
        default = self.default
        default_ns = default.netns
        caches = self.caches
        for_packet = self._cache_for_packet

        def run(v: list) -> None:
            cache = default
            if i_ns is not None:
                ns = v[i_ns]
                if ns is not None and ns != default_ns:
                    cache = caches.get(ns) or for_packet(ns)
            names = cache.names
            index = v[i_in]
            if index:
                name = names.get(index)
                v[o_in] = cache.missing(index) if name is None else name
            else:
                v[o_in] = ""
            index = v[i_out]
            if index:
                name = names.get(index)
                v[o_out] = cache.missing(index) if name is None else name
            else:
                v[o_out] = ""

        return run

    def statistics(self) -> dict[str, int]:
        caches = {id(c): c for c in getattr(self, "caches", {}).values()}
        return {
            "interfaces": sum(len(c.names) for c in caches.values()),
            "link_events": sum(c.events for c in caches.values()),
            "refreshes": sum(c.refreshes for c in caches.values()),
        }

    def stop(self) -> None:
        for cache in getattr(self, "caches", {}).values():
            cache.close()  # idempotent: a failed namespace maps to the default cache
