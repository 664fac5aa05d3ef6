"""NFLOG: packets logged by netfilter rules (nft ``log group N``, iptables ``-j NFLOG``).

The options and the first 24 keys are ulogd 2.0.8's NFLOG plugin, with the same names,
defaults, types, order and validity rules; the socket work is :mod:`pylogd.nflog`.

Differences from ulogd 2.0.8
----------------------------
* ``netlink_socket_buffer_size`` is applied whenever it is set; ulogd applies it only when
  ``netlink_socket_buffer_maxsize`` is larger, so with the default maxsize of 0 it silently
  did nothing and then claimed "set to 0".  ``netlink_socket_buffer_maxsize`` only caps the
  growth after ENOBUFS, and the last growth step stops exactly at the maximum.
* ENOBUFS (lost events) is not reported once and then forgotten: every occurrence is
  counted (``enobufs`` in the SIGUSR1 statistics) and logged at most every 10 seconds;
  with ``seq_local=1`` the number of lost packets is counted from the sequence gaps.
* The time of a packet without a kernel timestamp (OUTPUT, POSTROUTING) is taken once, in
  the input, so every stack sharing the input shows the same ``oob.time.*`` (ulogd calls
  gettimeofday() separately per stack).
* A group already bound by another listener fails with a message naming the group, the
  other listener's netlink port id and process, and how to look them up; ulogd says only
  "unable to bind to log group N".
* One readiness notification reads until the socket is empty (capped at a few thousand
  messages so timers and signals still run) instead of one recv().  Datagrams are read ahead
  of decoding into a userspace ring (new option ``netlink_backlog_size``, 64 MiB of address
  space, resident only while a burst fills it), so a burst leaves the kernel buffer at recv()
  speed; ``backlog_max`` in the statistics is the most that ever waited.  At exit everything
  read is written.
* ``raw.mac.saddr`` holds exactly ``raw.mac.addrlen`` bytes (ulogd points at the 8-byte
  array); ``raw`` is the netlink message itself and ``ct`` the undecoded NFULA_CT attribute
  (in ulogd both are pointers into libnetfilter_log / libnetfilter_conntrack objects).
* When the kernel refuses ``attach_conntrack`` (no ctnetlink), the sequence-number flags are
  still applied without it; ulogd sets all flags at once, so it lost them too.
* Unless ``netlink_qthreshold`` is 1, the kernel's batch buffer (NFULA_CFG_NLBUFSIZ) is raised
  to 64 KiB (at most ``bufsize``) so that batches are not cut at about 4 KiB (fewer system
  calls per packet; the flush timeout is unchanged).
* New options ``copy_mode``, ``copy_range`` (ulogd always copies whole packets) and
  ``netns`` (read a network namespace's log from outside it), and new keys after ulogd's:
  ``oob.netns``, ``oob.physindev``, ``oob.physoutdev``, ``oob.vlan.id``, ``oob.vlan.proto``,
  ``raw.l2hdr``, ``ct.info``.
"""

from __future__ import annotations

from pylogd.config import INT_MAX, U16_MAX, U32_MAX
from pylogd.keys import KeyType
from pylogd.log import ERROR
from pylogd.loop import BacklogReader, EventLoop
from pylogd.netlink import DEFAULT_RCVBUF, NetlinkSocket
from pylogd.netlink_input import NetlinkInput, backlog_option, netns_option, rcvbuf_options
from pylogd.nflog import (
    COPY_MODES,
    F_CT,
    F_CT_INFO,
    F_FAMILY,
    F_GID,
    F_HOOK,
    F_HW_PROTOCOL,
    F_HWADDR,
    F_HWADDRLEN,
    F_HWHEADER,
    F_HWLEN,
    F_HWTYPE,
    F_INDEV,
    F_L2HDR,
    F_MARK,
    F_MSG,
    F_OUTDEV,
    F_PAYLOAD,
    F_PHYSINDEV,
    F_PHYSOUTDEV,
    F_PREFIX,
    F_SEQ,
    F_SEQ_GLOBAL,
    F_UID,
    F_VLAN_PROTO,
    FLAG_CONNTRACK,
    FLAG_SEQ,
    FLAG_SEQ_GLOBAL,
    PF_FAMILIES,
    Const,
    Default,
    Derived,
    NflogError,
    NflogSocket,
    WithHwHeader,
)
from pylogd.plugin import Kind, PluginError, PluginSpec, int_option, key, str_option

NLBUFSIZ = 65536

# Each key and where its value comes from (a record spec item of pylogd.nflog, or the name of
# the option whose value it always holds): the socket's compiled layouts build the keys in this
# order, and they are copied into the record in one step.
_KEYS = (
    (
        key("raw.mac", KeyType.RAW, "link-layer header (NFULA_HWHEADER), when the kernel gives a nonzero length"),
        WithHwHeader(F_HWHEADER),
    ),
    (key("raw.pkt", KeyType.RAW, "the packet from the layer-3 header on (NFULA_PAYLOAD)"), F_PAYLOAD),
    (key("raw.pktlen", KeyType.UINT32, "length of raw.pkt"), Derived.PAYLOAD_LEN),
    (key("raw.pktcount", KeyType.UINT32, "number of packets: always 1"), Const(1)),
    (key("oob.prefix", KeyType.STRING, 'the log rule\'s prefix ("" for a rule without one)'), F_PREFIX),
    (key("oob.time.sec", KeyType.UINT32, "packet time, seconds (the kernel's, or the receive time)"), Derived.TIME_SEC),
    (key("oob.time.usec", KeyType.UINT32, "packet time, microseconds"), Derived.TIME_USEC),
    (key("oob.mark", KeyType.UINT32, "packet mark (0 when unmarked)"), Default(F_MARK, 0)),
    (key("oob.ifindex_in", KeyType.UINT32, "input interface index, when there is one"), F_INDEV),
    (key("oob.ifindex_out", KeyType.UINT32, "output interface index, when there is one"), F_OUTDEV),
    (
        key("oob.hook", KeyType.UINT8, "netfilter hook: 0 prerouting, 1 input, 2 forward, 3 output, 4 postrouting"),
        F_HOOK,
    ),
    (key("raw.mac_len", KeyType.UINT16, "length of raw.mac"), WithHwHeader(F_HWLEN)),
    (key("oob.seq.local", KeyType.UINT32, "per-group sequence number (seq_local=1)"), F_SEQ),
    (key("oob.seq.global", KeyType.UINT32, "namespace-wide sequence number (seq_global=1)"), F_SEQ_GLOBAL),
    (key("oob.family", KeyType.UINT8, "protocol family: 2 IPv4, 10 IPv6, 7 bridge, 3 ARP, 5 netdev"), F_FAMILY),
    (
        key("oob.protocol", KeyType.UINT16, "link-layer protocol (ethertype), e.g. 2048 IPv4, 34525 IPv6"),
        F_HW_PROTOCOL,
    ),
    (key("oob.uid", KeyType.UINT32, "user id of the local socket that sent the packet"), F_UID),
    (key("oob.gid", KeyType.UINT32, "group id of the local socket that sent the packet"), F_GID),
    (key("raw.label", KeyType.UINT8, "the numeric_label option"), "numeric_label"),
    (
        key("raw.type", KeyType.UINT16, "link type (ARPHRD_*: 1 ethernet, 772 loopback), with raw.mac"),
        WithHwHeader(F_HWTYPE),
    ),
    (key("raw.mac.saddr", KeyType.RAW, "source hardware address"), F_HWADDR),
    (key("raw.mac.addrlen", KeyType.UINT16, "length of raw.mac.saddr"), F_HWADDRLEN),
    (key("raw", KeyType.RAW, "the whole netlink message"), F_MSG),
    (key("ct", KeyType.RAW, "conntrack attributes (NFULA_CT, ctnetlink format), with attach_conntrack=1"), F_CT),
    # pylogd additions
    (key("oob.netns", KeyType.STRING, "the network namespace the packet was logged in (netns option)"), "netns"),
    (key("oob.physindev", KeyType.UINT32, "bridge port the packet came in on"), F_PHYSINDEV),
    (key("oob.physoutdev", KeyType.UINT32, "bridge port the packet goes out on"), F_PHYSOUTDEV),
    (key("oob.vlan.id", KeyType.UINT16, "VLAN id (bridge family)"), Derived.VLAN_ID),
    (key("oob.vlan.proto", KeyType.UINT16, "VLAN protocol, 0x8100 or 0x88a8 (bridge family)"), F_VLAN_PROTO),
    (key("raw.l2hdr", KeyType.RAW, "the full layer-2 header (bridge family)"), F_L2HDR),
    (
        key(
            "ct.info", KeyType.UINT32, "conntrack state of the packet (enum ip_conntrack_info), with attach_conntrack=1"
        ),
        F_CT_INFO,
    ),
)
_OUTPUTS = tuple(k for k, _source in _KEYS)


class Nflog(NetlinkInput):
    spec = PluginSpec(
        name="NFLOG",
        kind=Kind.INPUT,
        help="Reads the packets netfilter rules log to an NFLOG group (nft `log group N`, iptables -j NFLOG).",
        options=(
            # a netlink datagram is at most a few hundred KiB: 64 MiB is plenty and still allocatable
            int_option(
                "bufsize", 150000, "size of the buffer each netlink datagram is received into", min=1, max=1 << 26
            ),
            int_option("group", 0, "NFLOG group to bind", min=0, max=U16_MAX),
            # switches: ulogd tests them for > 0 in a C int
            int_option(
                "unbind", 1, "when binding the protocol families, unbind the current logger first", min=0, max=INT_MAX
            ),
            int_option(
                "bind", 0, "bind nfnetlink_log to IPv4, IPv6 and bridge (always done for group 0)", min=0, max=INT_MAX
            ),
            int_option(
                "seq_local", 0, "ask for per-group sequence numbers (oob.seq.local; gaps = losses)", min=0, max=INT_MAX
            ),
            int_option("seq_global", 0, "ask for namespace-wide sequence numbers (oob.seq.global)", min=0, max=INT_MAX),
            int_option("numeric_label", 0, "number copied into raw.label of every packet", min=0, max=255),
            *rcvbuf_options(),
            # both are u32 attributes of the kernel's NFULA_CFG
            int_option(
                "netlink_qthreshold",
                0,
                "packets the kernel batches per message (0: kernel default)",
                min=0,
                max=U32_MAX,
            ),
            int_option(
                "netlink_qtimeout", 0, "how long the kernel holds a batch, 1/100 s (0: default)", min=0, max=U32_MAX
            ),
            backlog_option(),
            int_option(
                "attach_conntrack", 0, "ask for the packet's conntrack entry (keys ct, ct.info)", min=0, max=INT_MAX
            ),
            str_option("copy_mode", "packet", "none, meta (no payload) or packet", choices=tuple(COPY_MODES)),
            int_option("copy_range", 0xFFFF, "bytes of each packet to copy in packet mode", min=0, max=U16_MAX),
            netns_option("the log"),
        ),
        outputs=_OUTPUTS,
    )

    sock: NflogSocket | None = None
    _watched = ("enobufs", "truncated", "errors")

    def configure(self) -> None:
        o = self.options
        flags = 0
        if o["seq_local"]:
            flags |= FLAG_SEQ
        if o["seq_global"]:
            flags |= FLAG_SEQ_GLOBAL
        if o["attach_conntrack"]:
            flags |= FLAG_CONNTRACK
        self.flags = flags

    def exclusive(self) -> tuple[str, ...]:
        where = f"network namespace {self.options['netns']}" if self.options["netns"] else "this network namespace"
        return (f"NFLOG group {self.options['group']} in {where}",)

    def start(self, loop: EventLoop) -> None:
        o = self.options
        group = o["group"]
        pf_step = group == 0 or o["bind"] > 0
        qthreshold = o["netlink_qthreshold"]
        # the kernel batches (by default up to 100 messages) into a buffer of about 4 KiB; a larger
        # one means fewer, fuller datagrams (measured: about 0.2 us less per packet).  Not with
        # qthreshold 1, which sends each message alone.  64 KiB keeps the kernel's allocation modest.
        nlbufsiz = min(o["bufsize"], NLBUFSIZ) if qthreshold != 1 else 0
        try:
            sock = NflogSocket(
                group,
                netns=o["netns"],
                copy_mode=o["copy_mode"],
                copy_range=o["copy_range"],
                qthreshold=qthreshold,
                qtimeout=o["netlink_qtimeout"],
                flags=self.flags,
                rcvbuf=o["netlink_socket_buffer_size"] or DEFAULT_RCVBUF,
                rcvbuf_max=o["netlink_socket_buffer_maxsize"],
                bufsize=o["bufsize"],
                nlbufsiz=nlbufsiz,
                pf_unbind=pf_step and o["unbind"] > 0,
                pf_bind=pf_step,
                strict=False,
                backlog_size=o["netlink_backlog_size"],
                record=self._record(),
            )
        except NflogError as exc:
            raise PluginError(exc.strerror or str(exc)) from None  # the text names the errno itself
        self.sock = sock
        if pf_step:
            for pf in PF_FAMILIES:
                if o["unbind"] > 0:
                    self.log.notice(f"forcing unbind of existing log handler for protocol {pf}")
            self.log.info("bound nfnetlink_log to protocol families " + ", ".join(map(str, PF_FAMILIES)))
        if o["netlink_socket_buffer_size"]:
            self.log.notice(f"NFLOG netlink buffer size has been set to {sock.rcvbuf}")
            maxsize = o["netlink_socket_buffer_maxsize"]
            if maxsize and maxsize <= o["netlink_socket_buffer_size"]:
                self.log.notice(f"netlink_socket_buffer_maxsize ({maxsize}) is not above the size: no growth")
        failures = sock.failures
        for name, option in (("qthreshold", "netlink_qthreshold"), ("qtimeout", "netlink_qtimeout")):
            word = "threshold" if name == "qthreshold" else "timeout"
            if o[option]:
                verb = "can't be set to" if name in failures else "has been set to"
                self.log.notice(f"NFLOG netlink queue {word} {verb} {o[option]}")
        if "flags" in failures:
            kept = f"; continuing with flags 0x{sock.flags:x} (no conntrack)" if sock.flags else ""
            self.log.error(f"unable to set flags 0x{self.flags:x}: {failures['flags'].strerror}{kept}")
        if "nlbufsiz" in failures:
            self.log.info(f"kernel batch buffer of {nlbufsiz} bytes refused: {failures['nlbufsiz'].strerror}")
        self._listen(loop, sock)
        where = f" in network namespace {o['netns']}" if o["netns"] else ""
        self.log.info(f"listening to NFLOG group {group}{where} (netlink port id {sock.portid})")

    def _record(self) -> list:
        """The socket's record spec: the keys in order, None for those no plugin reads (making a
        memoryview for raw.mac.saddr or raw costs more than most filters), and none after the
        last one read.  The sequence number stays: the socket counts losses from it."""
        feed, options = self.feed, self.options
        record = [
            (Const(options[source]) if type(source) is str else source)
            if feed.used(k.name) or k.name == "oob.seq.local"
            else Const(None)
            for k, source in _KEYS
        ]
        while record and record[-1] == Const(None):  # emit_keys leaves the keys after the record None
            record.pop()
        return record

    def _refed(self) -> None:
        assert self.sock is not None
        self.sock.set_record(self._record())  # the keys the new stacks read

    def _make_reader(self) -> BacklogReader:
        sock = self.sock
        assert sock is not None
        feed = self.feed
        assert [feed.slot(k.name) for k in _OUTPUTS] == list(range(len(_OUTPUTS)))  # the input's keys come first
        drain, emit_keys, flush = sock.drain, feed.emit_keys, feed.flush

        def work() -> int:
            handled = drain(emit_keys)  # the socket's records are this plugin's keys, in order
            flush()
            if (sock.enobufs, sock.truncated, sock.errors) != self._reported:
                self._report()
            return handled

        return BacklogReader(self.loop, work, lambda: sock.backlog)

    def _lost_detail(self, sock: NetlinkSocket) -> str:
        return f", {sock.lost} packets lost by sequence count" if self.options["seq_local"] else ""

    def _on_truncated(self, sock: NetlinkSocket) -> None:
        self.log.every(
            10,
            ERROR,
            "truncated",
            f"{sock.truncated} datagrams were larger than bufsize={self.options['bufsize']}: raise bufsize",
        )

    def _socket_statistics(self, sock: NetlinkSocket) -> dict[str, int]:
        return {"lost": sock.lost, "rcvbuf": sock.rcvbuf, "truncated": sock.truncated}
