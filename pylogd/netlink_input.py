"""The base of the netlink inputs (NFLOG, NFCT, NFACCT), and the options they declare alike.

The protocol modules (:mod:`pylogd.netlink`, :mod:`pylogd.nflog`, :mod:`pylogd.conntrack`,
:mod:`pylogd.nfacct`) know nothing of plugins and stay usable as a library; what turns one of
their sockets into an input lives here once:

* :func:`rcvbuf_options`, :func:`backlog_option`, :func:`netns_option`: option declarations,
* :class:`NetlinkInput`: the socket's lifetime (its reader registered with the loop, stop writing
  what was read ahead, closing), the loss and error report (rate-limited, only when a count
  moved) and the socket's statistics.

A subclass opens its socket in ``start`` and hands it to :meth:`NetlinkInput._listen`, and makes
its reader in ``_make_reader``: the reader's work function (drain, flush, and a call to
:meth:`NetlinkInput._report` when ``(sock.<watched>...) != self._reported``) is the subclass's own,
since it is the per-datagram path.
"""

from __future__ import annotations

from .config import INT_MAX
from .log import ERROR, NOTICE
from .loop import BacklogReader, EventLoop
from .netlink import BACKLOG_SIZE, DEFAULT_RCVBUF, DEFAULT_RCVBUF_MAX, NetlinkSocket
from .plugin import Feed, Input, Option, int_option, str_option

__all__ = ["NetlinkInput", "backlog_option", "netns_option", "rcvbuf_options"]


def rcvbuf_options() -> tuple[Option, Option]:
    """The receive-buffer options of ulogd's netlink inputs (NFLOG, NFCT), declared once.
    SO_RCVBUF takes a C int."""
    return (
        int_option(
            "netlink_socket_buffer_size",
            0,
            f"socket receive buffer in bytes (0: pylogd's default, {DEFAULT_RCVBUF >> 20} MiB, set with "
            "SO_RCVBUFFORCE; ulogd's 0 left the kernel's ~208 KiB)",
            min=0,
            max=INT_MAX,
        ),
        int_option(
            "netlink_socket_buffer_maxsize",
            0,
            "on losses, double the buffer up to this (0: never; with pylogd's default size, up to "
            f"{DEFAULT_RCVBUF_MAX >> 20} MiB)",
            min=0,
            max=INT_MAX,
        ),
    )


def backlog_option() -> Option:
    """pylogd's read-ahead option of the netlink inputs.  The ring is address space, resident only
    while a burst fills it, but the kernel refuses to map much more than the machine's memory."""
    return int_option(
        "netlink_backlog_size",
        BACKLOG_SIZE,
        "bytes of userspace read-ahead: bursts leave the kernel buffer at recv() speed",
        min=1 << 20,
        max=1 << 30,
    )


def netns_option(what: str) -> Option:
    """pylogd's ``netns`` option: read ``what`` of another network namespace."""
    return str_option("netns", None, f"read {what} of this network namespace: a name under /run/netns, or a path")


class NetlinkInput(Input):
    """An input reading one :class:`pylogd.netlink.NetlinkSocket` from the event loop.

    ``_watched`` names the socket's counters the reader compares with ``_reported`` (in that
    order) to know when :meth:`_report` has something to say.
    """

    sock: NetlinkSocket | None = None
    _reader: BacklogReader | None = None
    #: netfilter's netlink answers only a process with CAP_NET_ADMIN: pylogd.cli says so before starting
    needs_net_admin = True
    #: the socket counters a report follows, in the order of ``_reported``
    _watched: tuple[str, ...] = ("enobufs", "errors")
    #: what the ring holds, for the line at stop when some were never decoded
    _unit = "datagrams"
    #: what else helps after an overrun, appended to the socket's advice
    _overrun_remedy = ""
    #: the level of the line on netlink errors
    _error_level = ERROR

    # -- lifetime -------------------------------------------------------------------------------

    def _listen(self, loop: EventLoop, sock: NetlinkSocket) -> None:
        """Own ``sock`` from now on: its reader (:meth:`_make_reader`) runs when it is readable."""
        self.loop = loop
        self.sock = sock
        self._reported = (0,) * len(self._watched)
        self._reader = self._make_reader()
        loop.add_reader(sock.fileno(), self._reader)

    def _make_reader(self) -> BacklogReader:
        raise NotImplementedError

    def refeed(self, feed: Feed) -> bool:
        """A reload changed the stacks this input feeds: the socket stays (nothing the kernel sends
        meanwhile is lost); what was read ahead goes to the old stacks, what comes next to ``feed``'s."""
        sock, reader = self.sock, self._reader
        if sock is None or sock.closed or reader is None:
            return False
        self.loop.remove_reader(sock.fileno())
        reader.finish()
        self.feed = feed
        self._refed()
        self._reader = self._make_reader()
        self.loop.add_reader(sock.fileno(), self._reader)
        return True

    def _refed(self) -> None:
        """After ``self.feed`` changed, before the reader is made again: what depends on the feed."""

    def stop(self) -> None:
        """Stop reading; what was read ahead, and what the kernel still holds, is written first.
        The socket's counters stay readable for the final statistics."""
        sock = self.sock
        if sock is None or sock.closed:
            return
        self.loop.remove_reader(sock.fileno())
        if self._reader is not None:
            self._reader.finish()
        if sock.backlog:
            self.log.error(f"{self.spec.name}: {sock.backlog} {self._unit} read but not decoded at exit")
        sock.close()

    # -- losses and errors ----------------------------------------------------------------------

    def _report(self) -> None:
        """Log what went wrong since the last report, at most every 10 s per kind of trouble."""
        sock = self.sock
        assert sock is not None
        before = dict(zip(self._watched, self._reported, strict=True))
        if sock.enobufs != before.get("enobufs", sock.enobufs):
            self._on_overrun(sock)
        if sock.truncated != before.get("truncated", sock.truncated):
            self._on_truncated(sock)
        if sock.errors != before.get("errors", sock.errors):
            self.log.every(10, self._error_level, "errors", f"netlink errors: {sock.errors} (last: {sock.last_error})")
        self._reported = tuple(getattr(sock, name) for name in self._watched)

    def _on_overrun(self, sock: NetlinkSocket) -> None:
        """The kernel dropped messages (ENOBUFS) since the last report."""
        advice = sock.overrun_advice(self._overrun_remedy)
        self.log.every(
            10,
            NOTICE,
            "enobufs",
            f"We are losing events ({sock.enobufs} buffer overruns so far{self._lost_detail(sock)}): {advice}",
        )

    def _lost_detail(self, sock: NetlinkSocket) -> str:
        """What the input knows of the loss beyond the count of overruns (", N packets lost...")."""
        return ""

    def _on_truncated(self, sock: NetlinkSocket) -> None:
        """Datagrams longer than the ring's slot were cut since the last report."""

    # -- statistics -----------------------------------------------------------------------------

    def statistics(self) -> dict[str, int]:
        sock = self.sock
        if sock is None:
            return {}
        return {
            "received": sock.received,
            "enobufs": sock.enobufs,
            **self._socket_statistics(sock),
            "backlog_max": sock.backlog_max,
        }

    def _socket_statistics(self, sock: NetlinkSocket) -> dict[str, int]:
        """The input's own counters of the socket, between ``enobufs`` and ``backlog_max``."""
        return {}
