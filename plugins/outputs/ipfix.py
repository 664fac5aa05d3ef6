"""IPFIX: conntrack flows to an IPFIX (RFC 7011) or NetFlow v9 collector, with NAT events (RFC 8158).

ulogd's stack ``ct1:NFCT,ipfix1:IPFIX`` and its options run unchanged: ``oid`` (the observation
domain, not 0), ``host``, ``port`` (4739), ``proto`` (tcp or udp; tcp by default, as in ulogd),
``mtu`` (512: the longest message) and ``send_template`` (once, always, never).  ``proto=tls`` sends
the TCP stream through TLS, the collector's certificate checked (``ca_file``, ``server_name``; a client
certificate with ``cert_file``, ``key_file``).

What a collector gets (templates and fields: :mod:`pylogd.ipfix`): one record per flow event,
IPv4 and IPv6, with both directions' packets and bytes as 64-bit counters (the reply direction in
IEs 23/24, which nfdump shows as "out"), start and end in milliseconds, and conntrack's id.  A flow
that conntrack translated also carries the post-NAT source and destination addresses and ports
(IEs 225-228, or 281/282 for IPv6) and ``natEvent``: 4 (NAT44 session create) for a NEW event, 5
(delete) for a DESTROY or a flow from NFCT's hash mode (one record at its end, holding its start
too), with the event's time in ``observationTimeMilliseconds``; ``nat_event=historic`` sends 1 and
2 instead, which older collectors print as ADD and DELETE.  A conntrack UPDATE of a translated flow
carries the post-NAT fields without an event.  Whether a flow was translated is read from its
tuples: the reply's destination is not the original source (SNAT, masquerade) or the reply's source
is not the original destination (DNAT).

An options record (scope observationDomainId) carries the exporter's own counts: messages sent
(IE 41), flow records sent (42) and flows that never left (166: dropped because the backlog was
full, or without an address); it goes in a message of its own under observation domain 0 (which
RFC 7011 reserves for the exporting process's statistics) at the start of a session and every
``template_refresh`` seconds, so a collector sees loss.

Transport: records wait in the stack's backlog (and ``[global] spool_dir``) while the collector is
away, and are packed into messages when they are sent, in order, each once.  Over UDP each message
is one datagram; templates go before their first record and again every ``template_refresh``
seconds and every ``template_refresh_messages`` messages (RFC 7011 §8.4), so a collector that
starts or restarts mid-stream decodes within one interval whatever ``send_template`` says, but
``never``.  Over TCP they go once on every connection; a lost connection is made again with
back-off, and the messages the collector's kernel never acknowledged are sent again on the new one
(see :mod:`pylogd.transport`).  ``version=9`` sends NetFlow v9 instead, over UDP only (collectors
such as nfdump 1.7 decode the IPv6 NAT fields only from v9).

Sequence numbers: IPFIX counts the data records sent before each message (RFC 7011 §3.1), v9 the
export packets (RFC 3954 §5.1).  A message that could not be sent is built again with the same
number, so a collector sees no gap where nothing was lost.

Differences from ulogd 2.0.8
----------------------------
* IPv6 flows are exported (ulogd 2.0.8 wrote garbage in an IPv4 field).
* Per-direction 64-bit counters; ulogd added both directions into one 32-bit counter.
* Start and end in milliseconds (IEs 152/153); ulogd sent seconds (IEs 150/151), which nfdump 1.7
  does not decode (it prints 1970).
* ``ct.mark`` is not sent: ulogd put it in IE 95, applicationId, which collectors show as an
  application; no standard element holds a firewall mark.
* The interface indexes (IEs 10/14), always 0 in ulogd, are left out.
* Sequence numbers count the records sent before the message; ulogd's counted the message's own.
* Templates are refreshed over UDP (ulogd's ``once`` sent them once: a collector that restarted
  never decoded again); TCP reconnects; records leave as soon as they are written, not when a
  512-byte message is full; nothing waits in memory without bound.
* ``host`` may be a name or an IPv6 address; ``port`` may be a service name.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

from pylogd.ipfix import CT_NEW, NAT_EVENTS, V9_VERSION, Exporter, FlowEncoder, Message
from pylogd.keys import KeyType
from pylogd.loop import EventLoop
from pylogd.plugin import Kind, PluginError, PluginSpec, Slots, int_option, key, str_option
from pylogd.transport import (
    TransportOutput,
    check_address,
    open_transport,
    refuse_tls_options,
    tls_arguments,
    tls_context,
    tls_options,
)

ICMP_PROTOCOLS = (1, 58)
#: messages made and sent at a time
SEND_GROUP = 4
#: how far the pacing may fall behind and catch up at once, in seconds
PACE_SLACK = 0.01


class Ipfix(TransportOutput):
    spec = PluginSpec(
        name="IPFIX",
        kind=Kind.OUTPUT,
        help="Exports conntrack flows, with NAT events, to an IPFIX or NetFlow v9 collector over UDP or TCP.",
        options=(
            int_option("oid", 0, "observation domain id (required, not 0)", min=0, max=0xFFFFFFFF),
            str_option("host", "", "the collector's address or name (required)"),
            int_option("port", 4739, "the collector's port", min=1, max=65535),
            str_option(
                "proto",
                "tcp",
                "transport: udp, tcp or tls (TCP through TLS, RFC 7011 §11.1)",
                choices=("udp", "tcp", "tls"),
            ),
            int_option("mtu", 512, "the longest message, in bytes", min=256, max=65535),
            str_option(
                "send_template",
                "once",
                "once: before first use (and refreshed over UDP); always: in every message; never",
                choices=("once", "always", "never"),
            ),
            int_option("version", 10, "10: IPFIX; 9: NetFlow v9 (UDP only)", choices=("9", "10")),
            int_option(
                "template_refresh",
                60,
                "UDP: send the templates again after this many seconds (0: never); also how often the exporter's "
                "counts go",
                min=0,
                max=86400,
            ),
            int_option(
                "template_refresh_messages",
                20,
                "UDP: send the templates again after this many messages (0: never)",
                min=0,
                max=1_000_000,
            ),
            int_option(
                "udp_rate",
                10_000,
                "UDP: at most this many messages a second (0: no limit); a collector drops what comes faster "
                "than it reads",
                min=0,
                max=10_000_000,
            ),
            str_option(
                "nat_event",
                "rfc8158",
                "natEvent values: rfc8158 (4 create, 5 delete) or historic (1, 2)",
                choices=tuple(NAT_EVENTS),
            ),
            *tls_options("proto=tls", "collector"),
        ),
        inputs=(
            key("orig.ip.saddr", KeyType.IPADDR, "the original source"),
            key("orig.ip.daddr", KeyType.IPADDR, "the original destination"),
            key("orig.raw.pktcount", KeyType.UINT64, "packets, original direction"),
            key("orig.raw.pktlen", KeyType.UINT64, "bytes, original direction"),
            key("reply.raw.pktcount", KeyType.UINT64, "packets, reply direction"),
            key("reply.raw.pktlen", KeyType.UINT64, "bytes, reply direction"),
            key("flow.start.sec", KeyType.UINT32, "flow start"),
            key("flow.start.usec", KeyType.UINT32, "flow start, microseconds"),
            key("flow.end.sec", KeyType.UINT32, "flow end"),
            key("flow.end.usec", KeyType.UINT32, "flow end, microseconds"),
            key("orig.l4.sport", KeyType.UINT16, "source port"),
            key("orig.l4.dport", KeyType.UINT16, "destination port"),
            key("orig.ip.protocol", KeyType.UINT8, "protocol"),
            key("ct.mark", KeyType.UINT32, "read for ulogd's stacks; not exported"),
            key("reply.ip.saddr", KeyType.IPADDR, "the reply's source: the post-NAT destination", optional=True),
            key("reply.ip.daddr", KeyType.IPADDR, "the reply's destination: the post-NAT source", optional=True),
            key("reply.l4.sport", KeyType.UINT16, "the post-NAPT destination port", optional=True),
            key("reply.l4.dport", KeyType.UINT16, "the post-NAPT source port", optional=True),
            key("ct.id", KeyType.UINT32, "conntrack's id (flowId)", optional=True),
            key("ct.event", KeyType.UINT32, "1 NEW, 2 UPDATE, 4 DESTROY", optional=True),
            key("icmp.type", KeyType.UINT8, "ICMP type", optional=True),
            key("icmp.code", KeyType.UINT8, "ICMP code", optional=True),
            key("icmpv6.type", KeyType.UINT8, "ICMPv6 type", optional=True),
            key("icmpv6.code", KeyType.UINT8, "ICMPv6 code", optional=True),
        ),
        section_required=True,
    )

    blocking: ClassVar[bool] = True  # a collector over TCP may stall: writes run in the worker thread

    def __init__(self, instance_id: str, options: dict[str, Any], log: Any) -> None:
        super().__init__(instance_id, options, log)
        self.exporter: Exporter | None = None
        self.no_address = 0
        self._next_send = 0.0
        self._runners: list[Any] = []  # the stacks' runners: their drops are flows that never left

    def configure(self) -> None:
        o = self.options
        if not o["oid"]:
            raise PluginError("oid is 0: the observation domain id must not be 0", "oid")
        if not o["host"]:
            raise PluginError("host is empty: the collector's address", "host")
        o["proto"] = o["proto"].lower()
        o["send_template"] = o["send_template"].lower()
        o["nat_event"] = o["nat_event"].lower()
        if o["version"] == V9_VERSION and o["proto"] != "udp":
            raise PluginError("NetFlow v9 (version=9) goes over UDP only: set proto=udp", "proto")
        check_address(o["proto"], o["host"], str(o["port"]), "")
        if o["proto"] == "tls":
            tls_context(ca_file=o["ca_file"], cert_file=o["cert_file"], key_file=o["key_file"])  # --check tells
        else:
            refuse_tls_options(o, "proto=tls")

    def start(self, loop: EventLoop) -> None:
        o = self.options
        udp = o["proto"] == "udp"
        # a stream sends every template once per connection, in its greeting, and "once" needs no more
        stream_once = not udp and o["send_template"] == "once"
        self.exporter = exporter = Exporter(
            version=o["version"],
            domain=o["oid"],
            mtu=o["mtu"],
            send_template="never" if stream_once else o["send_template"],
            refresh_seconds=o["template_refresh"] if udp else 0,
            refresh_messages=o["template_refresh_messages"] if udp else 0,
            statistics_seconds=o["template_refresh"],
            statistics=o["send_template"] != "never",
            start_time=time.time(),
        )
        # connected by the first write: a collector that is not up yet must not keep the daemon from starting
        self.transport = open_transport(
            o["proto"], host=o["host"], port=str(o["port"]), log=self.log, name=self.id, **tls_arguments(o)
        )
        if stream_once:
            self.transport.greeting = lambda: exporter.greeting(time.time())

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        inp = slots.inp
        i_src, i_dst = inp("orig.ip.saddr"), inp("orig.ip.daddr")
        i_sport, i_dport, i_proto = inp("orig.l4.sport"), inp("orig.l4.dport"), inp("orig.ip.protocol")
        i_pk, i_oc, i_rpk, i_roc = (
            inp("orig.raw.pktcount"),
            inp("orig.raw.pktlen"),
            inp("reply.raw.pktcount"),
            inp("reply.raw.pktlen"),
        )
        i_ss, i_sus, i_es, i_eus = (
            inp("flow.start.sec"),
            inp("flow.start.usec"),
            inp("flow.end.sec"),
            inp("flow.end.usec"),
        )
        i_rsrc, i_rdst, i_rsport, i_rdport = (
            inp("reply.ip.saddr"),
            inp("reply.ip.daddr"),
            inp("reply.l4.sport"),
            inp("reply.l4.dport"),
        )
        i_id, i_event = inp("ct.id"), inp("ct.event")
        i_type4, i_code4, i_type6, i_code6 = inp("icmp.type"), inp("icmp.code"), inp("icmpv6.type"), inp("icmpv6.code")
        encode = FlowEncoder(self.options["nat_event"]).encode
        now = time.time

        def read(v: list, slot: int | None) -> Any:
            return None if slot is None else v[slot]

        def convert(v: list) -> bytes | None:
            saddr, daddr = v[i_src], v[i_dst]
            if saddr is None or daddr is None:
                self.no_address += 1
                return None
            proto = v[i_proto] or 0
            sport = v[i_sport] or 0
            dport = v[i_dport] or 0
            if proto in ICMP_PROTOCOLS:
                kind = read(v, i_type4 if proto == 1 else i_type6)
                code = read(v, i_code4 if proto == 1 else i_code6)
                sport, dport = 0, ((kind or 0) << 8) | (code or 0)
            event = read(v, i_event)
            start = v[i_ss]
            start_ms = start * 1000 + (v[i_sus] or 0) // 1000 if start is not None else int(now() * 1000)
            end = v[i_es]
            if end is not None:
                end_ms = end * 1000 + (v[i_eus] or 0) // 1000
            else:  # a NEW event: the flow has only begun
                end_ms = start_ms if event == CT_NEW else int(now() * 1000)
            nat = None
            rsrc, rdst = read(v, i_rsrc), read(v, i_rdst)
            if rsrc is not None and rdst is not None:
                rsport, rdport = read(v, i_rsport), read(v, i_rdport)
                # the reply goes from the post-NAT destination to the post-NAT source
                if (
                    rdst != saddr
                    or rsrc != daddr
                    or (rsport is not None and rdport is not None and (rdport != sport or rsport != dport))
                ):
                    if rsport is None or rdport is None or proto in ICMP_PROTOCOLS:
                        rsport, rdport = dport, sport
                    nat = (rdst, rsrc, rdport, rsport)
            return encode(
                saddr, daddr, sport, dport, proto, start_ms, end_ms, v[i_pk] or 0, v[i_oc] or 0, v[i_rpk] or 0,
                v[i_roc] or 0, read(v, i_id) or 0, nat, event,
            )  # fmt: skip

        return convert

    def watch_runner(self, runner: Any) -> None:
        self._runners.append(runner)

    def write(self, entries: list) -> None:
        transport, exporter = self.transport, self.exporter
        assert transport is not None and exporter is not None
        now = time.time()
        if exporter.statistics_due(now):
            exporter.not_sent = self.no_address + sum(r.dropped + r.rejected for r in self._runners)
            self._send([exporter.statistics_message(now)], now)
        # a few messages at a time, each group sent as soon as it is made: a burst of flows does not
        # become a burst of datagrams that a collector's receive buffer cannot hold
        group: list[Message] = []
        done = 0
        try:
            for message in exporter.iter_messages(entries, now):
                group.append(message)
                if len(group) == SEND_GROUP:
                    done += self._send(group, now)
                    group = []
                    self._pace(SEND_GROUP)
            if group:
                done += self._send(group, now)
        finally:
            del entries[:done]

    def _pace(self, sent: int) -> None:
        """Over UDP, at most ``udp_rate`` messages a second on average: a collector reads each datagram in
        turn, and a burst faster than that overflows its receive buffer, where the kernel drops them."""
        rate = self.options["udp_rate"]
        if self.options["proto"] != "udp" or not rate:
            return
        clock = time.monotonic()
        due = max(self._next_send, clock - PACE_SLACK) + sent / rate
        self._next_send = due
        if due > clock:
            time.sleep(due - clock)

    def _send(self, messages: list[Message], now: float) -> int:
        """Send ``messages``; the flows they carry that were delivered, also when the send fails."""
        assert self.transport is not None and self.exporter is not None
        datagrams = [m.data for m in messages]
        flows = 0
        try:
            self.transport.send(datagrams)
        finally:
            # what was delivered counts; the rest is built again, numbered the same, on the next try
            for message in messages[: len(messages) - len(datagrams)]:
                self.exporter.sent(message, now)
                flows += message.flows
        return flows

    def statistics(self) -> dict[str, int]:
        counts = super().statistics()
        if self.exporter is not None:
            counts.update(messages=self.exporter.messages_sent, flows=self.exporter.records_sent)
        counts["no_address"] = self.no_address
        return counts
