"""NFACCT: the extended accounting objects (nfnetlink_acct), ulogd 2.0.8's NFACCT input.

Every ``pollinterval`` seconds the kernel is asked for all its accounting objects (the ones
Debian's ``nfacct add NAME`` makes and iptables ``-m nfacct --nfacct-name NAME`` counts into), and
each object is one event: ``sum.name``, ``sum.pkts``, ``sum.bytes``.  With ``zerocounter=1`` (the
default) the counters are zeroed as they are read (NFNL_MSG_ACCT_GET_CTRZERO), so each event
holds what was counted since the last poll; with ``zerocounter=0`` the totals are read as they
stand.  ``timestamp=1`` sets ``oob.time.sec``/``oob.time.usec`` of every event of a poll to the
time the poll was asked for.  The socket work is :mod:`pylogd.nfacct`.

Differences from ulogd 2.0.8
----------------------------
* SIGUSR2 reads the counters at once without zeroing them (NFNL_MSG_ACCT_GET), whatever
  ``zerocounter`` says: ulogd zeroed them there too, so the next poll's events lacked what the
  signal's dump had taken and the interval's sums no longer added up.
* A missing or zero ``pollinterval`` refuses the config naming the option (ulogd: "You have to
  set pollint", at start).
* A request made while the answer to the previous one is still being read waits for it and is
  sent after it (ulogd sends it at once, and the kernel refuses a second dump on a socket while
  one runs, with EBUSY).  Refused requests and netlink errors are counted (``errors`` in the
  statistics) and logged at most every 10 s.
* New option ``netns`` (read the objects of another network namespace) and new key ``oob.netns``;
  ``sum`` is the netlink message of the object (ulogd: a pointer to libnetfilter_acct's object).
  Objects created or deleted while pylogd runs are in the next poll or not, as with ulogd: each
  poll is a dump of every object.
* New option ``source``: ``nft`` reads nftables' named counters (``nft add counter inet fw web``,
  counted into by ``counter name web`` in a rule) of every table and family instead, each as
  ``sum.name`` ``FAMILY.TABLE.NAME`` (``inet.fw.web``), zeroed as they are read with
  ``zerocounter=1`` (NFT_MSG_GETOBJ_RESET).  Named quotas (``nft add quota inet fw cap { over 10
  gbytes }``, ``quota name cap`` in a rule) come after the counters of each poll, ``sum.bytes`` what
  the quota has consumed and ``sum.pkts`` 0; they are never zeroed, whatever ``zerocounter`` says
  (zeroing a quota would give back what it allows).
"""

from __future__ import annotations

import signal

from pylogd.config import INT_MAX
from pylogd.keys import KeyType
from pylogd.loop import BacklogReader, EventLoop, Timer
from pylogd.netlink import NetlinkError, NetlinkSocket
from pylogd.netlink_input import NetlinkInput, netns_option
from pylogd.nfacct import SOURCES, AcctObject, AcctSocket
from pylogd.plugin import Kind, PluginError, PluginSpec, int_option, key, str_option

#: the longest poll interval, in seconds (the loop's timers are C ints of milliseconds)
MAX_INTERVAL = 24 * 86400

_OUTPUTS = (
    key("sum.name", KeyType.STRING, "name of the accounting object"),
    key("sum.pkts", KeyType.UINT64, "packets counted (since the last poll with zerocounter=1)"),
    key("sum.bytes", KeyType.UINT64, "bytes counted (since the last poll with zerocounter=1)"),
    key("sum", KeyType.RAW, "the object's netlink message"),
    key("oob.time.sec", KeyType.UINT32, "time of the poll, seconds (timestamp=1)"),
    key("oob.time.usec", KeyType.UINT32, "time of the poll, microseconds (timestamp=1)"),
    # pylogd additions
    key("oob.netns", KeyType.STRING, "the network namespace of the objects (netns option)"),
)


class Nfacct(NetlinkInput):
    spec = PluginSpec(
        name="NFACCT",
        kind=Kind.INPUT,
        help="Reads the packet and byte counters of the kernel's accounting objects (nfacct) every pollinterval.",
        options=(
            int_option(
                "pollinterval", 0, "seconds between two reads of the counters (required)", min=0, max=MAX_INTERVAL
            ),
            int_option("zerocounter", 1, "1: zero the counters as they are read", min=0, max=INT_MAX),
            int_option("timestamp", 0, "1: set oob.time.sec/usec to the time of the poll", min=0, max=INT_MAX),
            netns_option("the accounting objects"),
            str_option(
                "source",
                "nfacct",
                "nfacct: nfacct objects (iptables -m nfacct); nft: nftables named counters and quotas, "
                "as FAMILY.TABLE.NAME",
                choices=tuple(SOURCES),
            ),
        ),
        outputs=_OUTPUTS,
        section_required=True,
    )

    sock: AcctSocket | None = None
    _unit = "answers"
    _timer: Timer | None = None

    def configure(self) -> None:
        if self.options["pollinterval"] <= 0:
            raise PluginError(
                "pollinterval must be set: the seconds between two reads of the counters", option="pollinterval"
            )

    def start(self, loop: EventLoop) -> None:
        o = self.options
        try:
            sock = SOURCES[o["source"].lower()](o["netns"])
        except NetlinkError as exc:
            raise PluginError(str(exc)) from None
        self._listen(loop, sock)
        self._timer = loop.call_every(o["pollinterval"], self._poll)
        where = f" in network namespace {o['netns']}" if o["netns"] else ""
        nft = o["source"].lower() == "nft"
        zero = (", zeroing the counters" if nft else ", zeroing them") if o["zerocounter"] else ""
        what = "nftables named counters and quotas" if nft else "accounting objects"
        self.log.info(f"reading the {what}{where} every {o['pollinterval']} s{zero}")

    def _make_reader(self) -> BacklogReader:
        sock = self.sock
        assert sock is not None
        feed = self.feed
        assert [feed.slot(k.name) for k in _OUTPUTS] == list(range(len(_OUTPUTS)))  # the input's keys come first
        values, emit, flush, sent = feed.values, feed.emit, feed.flush, sock.sent
        stamp, netns = bool(self.options["timestamp"]), self.options["netns"]

        def on_object(obj: AcctObject) -> None:
            values[0], values[1], values[2], values[3] = obj.name, obj.pkts, obj.bytes, obj.msg
            if stamp and (at := sent.get(obj.seq)) is not None:
                values[4], values[5] = divmod(at // 1000, 1_000_000)
            values[6] = netns
            emit()

        def work() -> int:
            handled = sock.drain(on_object)
            flush()
            if (sock.enobufs, sock.errors) != self._reported:
                self._report()
            return handled

        return BacklogReader(self.loop, work, lambda: sock.backlog)

    def _ask(self, reset: bool) -> None:
        sock = self.sock
        if sock is None or sock.closed:
            return
        try:
            sock.request(reset)
        except NetlinkError as exc:
            sock.errors += 1
            sock.last_error = exc
            self._report()

    def _poll(self) -> None:
        self._ask(reset=bool(self.options["zerocounter"]))

    def on_signal(self, signum: int) -> None:
        if signum != signal.SIGUSR2:
            return super().on_signal(signum)
        self.log.notice("SIGUSR2: reading the accounting objects now, without zeroing them")
        self._ask(reset=False)
        return None

    def _socket_statistics(self, sock: NetlinkSocket) -> dict[str, int]:
        return {"dumps": sock.dumps, "errors": sock.errors}  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().stop()
