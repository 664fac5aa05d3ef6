"""IPFIX (RFC 7011) and NetFlow v9 (RFC 3954) export messages for conntrack flows, with NAT events (RFC 8158).

The protocol layer only: it knows templates, records and messages, not plugins or sockets, so it can
be used (and tested) on its own.  A flow is packed into a *data record* once, when it is seen
(:meth:`FlowEncoder.encode`); an exporter (:class:`Exporter`) later packs runs of records into
messages no longer than the MTU, adds the template records a collector needs, and numbers the
messages as each protocol says.

A record travels as ``bytes([template index]) + data record``: the index says which of
:data:`FLOW_TEMPLATES` describes it, so records can wait (in memory or in the spool) and be put
into messages later, in any batch.

Templates (IDs from 256):

=====  ==============================================================================================
index  fields
=====  ==============================================================================================
0      IPv4 flow: addresses, ports, protocol, start/end in ms, packets and bytes of the original
       direction (IEs 2, 1) and of the reply direction (IEs 24, 23 -- what nfdump shows as "out"),
       the conntrack id (flowId, 148)
1      IPv4 translated flow with a NAT event: the above, the post-NAT addresses and ports (225-228),
       natEvent (230) and the event's time (observationTimeMilliseconds, 323)
2      IPv4 translated flow without an event (a conntrack UPDATE): index 1 without 230 and 323
3-5    the same for IPv6 (27, 28 and 281, 282 for the post-NAT addresses)
=====  ==============================================================================================

ICMP flows carry ``type * 256 + code`` in the destination port, as NetFlow exporters do.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

IPFIX_VERSION = 10
V9_VERSION = 9
IPFIX_HEADER = struct.Struct(">HHIII")  # version, length, export time, sequence, observation domain
V9_HEADER = struct.Struct(">HHIIII")  # version, count, sysUptime ms, unix secs, sequence, source id
SET_HEADER = struct.Struct(">HH")
IPFIX_TEMPLATE_SET, IPFIX_OPTIONS_TEMPLATE_SET = 2, 3
V9_TEMPLATE_SET, V9_OPTIONS_TEMPLATE_SET = 0, 1
FIRST_TEMPLATE_ID = 256

#: natEvent values (RFC 8158): NAT44 session create and delete; the historic 1/2 (RFC 5102's
#: ADD/DELETE) that older collectors print by name
NAT_EVENTS = {"rfc8158": (4, 5), "historic": (1, 2)}

# conntrack's event numbers, as NFCT's ct.event holds them
CT_NEW, CT_UPDATE, CT_DESTROY = 1, 2, 4

# Information Elements used here: (id, length)
_V4_ADDRESSES = ((8, 4), (12, 4))  # sourceIPv4Address, destinationIPv4Address
_V6_ADDRESSES = ((27, 16), (28, 16))  # sourceIPv6Address, destinationIPv6Address
_FLOW = (
    (7, 2),  # sourceTransportPort
    (11, 2),  # destinationTransportPort (ICMP: type * 256 + code)
    (4, 1),  # protocolIdentifier
    (152, 8),  # flowStartMilliseconds
    (153, 8),  # flowEndMilliseconds
    (2, 8),  # packetDeltaCount: the original direction
    (1, 8),  # octetDeltaCount
    (24, 8),  # postPacketDeltaCount: the reply direction
    (23, 8),  # postOctetDeltaCount
    (148, 4),  # flowId: conntrack's id (reduced-size encoding of unsigned64)
)
_V4_POST_NAT = ((225, 4), (226, 4))  # postNATSourceIPv4Address, postNATDestinationIPv4Address
_V6_POST_NAT = ((281, 16), (282, 16))  # postNATSourceIPv6Address, postNATDestinationIPv6Address
_POST_NAPT = ((227, 2), (228, 2))  # postNAPTSourceTransportPort, postNAPTDestinationTransportPort
_NAT_EVENT = ((230, 1), (323, 8))  # natEvent, observationTimeMilliseconds

_FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}
#: the elements that hold addresses: packed from bytes, not integers
_ADDRESS_ELEMENTS = frozenset({8, 12, 27, 28, 225, 226, 281, 282})


@dataclass(frozen=True)
class Template:
    """One (options) template: its fields as (information element, length) pairs, in record order."""

    fields: tuple[tuple[int, int], ...]
    #: options templates: how many of the first fields are scope fields
    scope_fields: int = 0
    record: struct.Struct = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        codes = "".join(f"{length}s" if ie in _ADDRESS_ELEMENTS else _FORMATS[length] for ie, length in self.fields)
        object.__setattr__(self, "record", struct.Struct(">" + codes))

    def ipfix(self, template_id: int) -> bytes:
        """The template record (RFC 7011 §3.4.1/§3.4.2.2) for a template or options template set."""
        head = (
            struct.pack(">HHH", template_id, len(self.fields), self.scope_fields)
            if self.scope_fields
            else struct.pack(">HH", template_id, len(self.fields))
        )
        return head + b"".join(struct.pack(">HH", ie, length) for ie, length in self.fields)

    def v9(self, template_id: int) -> bytes:
        """The template record (RFC 3954 §5.2/§6.1); an options template's scope is the System (1)."""
        if not self.scope_fields:
            return struct.pack(">HH", template_id, len(self.fields)) + b"".join(
                struct.pack(">HH", ie, length) for ie, length in self.fields
            )
        scope, rest = self.fields[: self.scope_fields], self.fields[self.scope_fields :]
        return (
            struct.pack(">HHH", template_id, 4 * len(scope), 4 * len(rest))
            + b"".join(struct.pack(">HH", 1, length) for _, length in scope)
            + b"".join(struct.pack(">HH", ie, length) for ie, length in rest)
        )


def _flow_templates() -> tuple[Template, ...]:
    out = []
    for addresses, post_nat in ((_V4_ADDRESSES, _V4_POST_NAT), (_V6_ADDRESSES, _V6_POST_NAT)):
        base = addresses + _FLOW
        out.append(Template(base))
        out.append(Template(base + post_nat + _POST_NAPT + _NAT_EVENT))
        out.append(Template(base + post_nat + _POST_NAPT))
    return tuple(out)


#: the flow templates, by index (see the module's docstring)
FLOW_TEMPLATES = _flow_templates()
V4, V4_NAT_EVENT, V4_NAT, V6, V6_NAT_EVENT, V6_NAT = range(6)
#: the exporter's own counts (RFC 7011 §4.1/§4.3): scope observationDomainId (149); then
#: exportedMessageTotalCount (41), exportedFlowRecordTotalCount (42), notSentFlowTotalCount (166:
#: flows that never left: the kernel dropped their events, or the output dropped them), and
#: observationTimeMilliseconds (323)
STATISTICS_TEMPLATE = Template(((149, 4), (41, 8), (42, 8), (166, 8), (323, 8)), scope_fields=1)
STATISTICS = len(FLOW_TEMPLATES)
TEMPLATES = (*FLOW_TEMPLATES, STATISTICS_TEMPLATE)


class FlowEncoder:
    """Packs one conntrack flow into a tagged data record (the hot path: one call per flow)."""

    def __init__(self, nat_event: str = "rfc8158") -> None:
        self.create, self.delete = NAT_EVENTS[nat_event]
        self._pack = [t.record.pack for t in FLOW_TEMPLATES]
        self._tags = [bytes([i]) for i in range(len(FLOW_TEMPLATES))]

    def encode(
        self,
        saddr: bytes,
        daddr: bytes,
        sport: int,
        dport: int,
        proto: int,
        start_ms: int,
        end_ms: int,
        packets: int,
        octets: int,
        reply_packets: int,
        reply_octets: int,
        flow_id: int,
        nat: tuple[bytes, bytes, int, int] | None,
        event: int | None,
    ) -> bytes:
        """``nat`` is the post-NAT (source, destination, source port, destination port) of a translated
        flow, None for one that was not; ``event`` is conntrack's (1 NEW, 2 UPDATE, 4 DESTROY; a flow
        from hash mode is a DESTROY)."""
        v6 = len(saddr) == 16
        if nat is None:
            index = V6 if v6 else V4
            return self._tags[index] + self._pack[index](
                saddr, daddr, sport, dport, proto, start_ms, end_ms, packets, octets, reply_packets,
                reply_octets, flow_id,
            )  # fmt: skip
        if event in (CT_NEW, CT_DESTROY):
            index = V6_NAT_EVENT if v6 else V4_NAT_EVENT
            create = event == CT_NEW
            return self._tags[index] + self._pack[index](
                saddr, daddr, sport, dport, proto, start_ms, end_ms, packets, octets, reply_packets,
                reply_octets, flow_id, *nat, self.create if create else self.delete,
                start_ms if create else end_ms,
            )  # fmt: skip
        index = V6_NAT if v6 else V4_NAT
        return self._tags[index] + self._pack[index](
            saddr, daddr, sport, dport, proto, start_ms, end_ms, packets, octets, reply_packets,
            reply_octets, flow_id, *nat,
        )  # fmt: skip


@dataclass
class Message:
    """One export message and what it holds."""

    data: bytes
    records: int  # data records, the statistics record included
    flows: int  # entries (flow records) it carries
    templates: tuple[int, ...]  # template indexes whose template records it carries


class Exporter:
    """Packs tagged records into messages: IPFIX (``version`` 10) or NetFlow v9 (9).

    ``send_template``: ``always`` puts the templates a message's records use in every message;
    ``never`` sends none (the collector knows them); ``once`` sends each before its first record
    and, because a collector listening on UDP may start (or restart) at any time, again after
    ``refresh_seconds`` or ``refresh_messages`` messages (RFC 7011 §8.4; 0 turns either off).  A
    stream (TCP) needs them once per connection: the caller calls :meth:`new_session` when it
    connects anew.

    Sequence numbers: IPFIX counts the data records sent before the message (RFC 7011 §3.1); v9
    counts the export packets sent before it (RFC 3954 §5.1).  The caller reports each message
    it delivered with :meth:`sent`, so a message that could not be sent is built again, with the
    same number, from the same records.
    """

    def __init__(
        self,
        *,
        version: int,
        domain: int,
        mtu: int,
        send_template: str = "once",
        refresh_seconds: float = 60.0,
        refresh_messages: int = 0,
        statistics_seconds: float | None = None,
        statistics: bool | None = None,
        start_time: float = 0.0,
    ) -> None:
        self.version = version
        self.domain = domain
        self.mtu = mtu
        self.send_template = send_template
        self.refresh_seconds = refresh_seconds
        self.refresh_messages = refresh_messages
        self.statistics_seconds = refresh_seconds if statistics_seconds is None else statistics_seconds
        #: whether the exporter's counts go at all (a collector told to expect no template gets none)
        self.statistics = send_template != "never" if statistics is None else statistics
        self.start_time = start_time  # v9's sysUptime counts from here
        self.sequence = 0  # IPFIX: data records sent; v9: messages sent
        self.messages_sent = 0
        self.records_sent = 0
        self.not_sent = 0  # set by the caller: flows that never left
        v9 = version == V9_VERSION
        self._header = V9_HEADER if v9 else IPFIX_HEADER
        self._template_set_id = V9_TEMPLATE_SET if v9 else IPFIX_TEMPLATE_SET
        self._options_set_id = V9_OPTIONS_TEMPLATE_SET if v9 else IPFIX_OPTIONS_TEMPLATE_SET
        self._template_records = [
            t.v9(FIRST_TEMPLATE_ID + i) if v9 else t.ipfix(FIRST_TEMPLATE_ID + i) for i, t in enumerate(TEMPLATES)
        ]
        self._record_sizes = [t.record.size for t in TEMPLATES]
        #: template index: (time, number of the message) where it last went
        self._announced: dict[int, tuple[float, int]] = {}
        self._statistics_at: float | None = None  # when the last statistics record was delivered
        self._statistics_sequence = 0

    # -- state the caller changes -----------------------------------------------------------------

    def new_session(self) -> None:
        """A new connection (or a collector that lost its state): every template goes again."""
        self._announced.clear()
        self._statistics_at = None

    def sent(self, message: Message, now: float) -> None:
        """``message`` was delivered."""
        v9 = self.version == V9_VERSION
        if STATISTICS in message.templates:
            self._statistics_at = now
            self._statistics_sequence = (self._statistics_sequence + (1 if v9 else message.records)) & 0xFFFFFFFF
            return
        for index in message.templates:
            self._announced[index] = (now, self.messages_sent)
        self.messages_sent += 1
        self.records_sent += message.flows
        self.sequence = (self.sequence + (1 if v9 else message.records)) & 0xFFFFFFFF

    # -- messages -----------------------------------------------------------------------------------

    def _needs_template(self, index: int, now: float, announced: dict[int, tuple[float, int]], sent: int) -> bool:
        """Whether a message built when ``sent`` messages have gone must carry template ``index``."""
        mode = self.send_template
        if mode == "never":
            return False
        if mode == "always":
            return True
        when = announced.get(index)
        if when is None:
            return True
        at, count = when
        return bool(
            (self.refresh_seconds and now - at >= self.refresh_seconds)
            or (self.refresh_messages and sent - count >= self.refresh_messages)
        )

    def statistics_due(self, now: float) -> bool:
        """Whether the exporter's counts are due: first in a session, then every ``statistics_seconds``.
        They go with their options template, so they never wait for one."""
        if not self.statistics:
            return False
        at = self._statistics_at
        return at is None or bool(self.statistics_seconds and now - at >= self.statistics_seconds)

    def greeting(self, now: float) -> bytes:
        """A message of every flow template alone: what a stream sends first on each connection (RFC 7011
        §8: before the data records that use them; the records it sends again after a broken connection
        use them too)."""
        records = b"".join(self._template_records[: len(FLOW_TEMPLATES)])
        body = SET_HEADER.pack(self._template_set_id, 4 + len(records)) + records
        head = IPFIX_HEADER.pack(IPFIX_VERSION, IPFIX_HEADER.size + len(body), int(now), self.sequence, self.domain)
        return head + body

    def statistics_message(self, now: float) -> Message:
        """The exporter's counts, with their options template, in a message of their own under
        observation domain 0, which RFC 7011 §3.1 reserves for the Exporting Process's statistics: its
        own sequence numbers leave the flows' alone (nfdump counts only flow records in them)."""
        record = self._statistics_record(now)
        template = self._template_records[STATISTICS]
        body = b"".join(
            [
                SET_HEADER.pack(self._options_set_id, 4 + len(template)),
                template,
                SET_HEADER.pack(FIRST_TEMPLATE_ID + STATISTICS, 4 + len(record)),
                record,
            ]
        )
        if self.version == V9_VERSION:
            uptime = int((now - self.start_time) * 1000) & 0xFFFFFFFF
            head = V9_HEADER.pack(V9_VERSION, 2, uptime, int(now), self._statistics_sequence, 0)
        else:
            head = IPFIX_HEADER.pack(
                IPFIX_VERSION, IPFIX_HEADER.size + len(body), int(now), self._statistics_sequence, 0
            )
        return Message(head + body, 1, 0, (STATISTICS,))

    def messages(self, entries: Sequence[bytes], now: float) -> list[Message]:
        """Messages holding every entry, in order.  Nothing here counts as sent until :meth:`sent`
        says so."""
        return list(self.iter_messages(entries, now))

    def iter_messages(self, entries: Sequence[bytes], now: float) -> Iterator[Message]:
        """:meth:`messages`, one at a time: a sender that sends each as it is made spreads a burst out."""
        built = 0
        v9 = self.version == V9_VERSION
        header_size = self._header.size
        sizes = self._record_sizes
        template_records = self._template_records
        mtu = self.mtu
        # every message is built as if the ones before it were delivered: numbers and templates
        sequence = self.sequence
        announced = dict(self._announced)
        i, n = 0, len(entries)
        while i < n:
            sent = self.messages_sent + built
            in_message: set[int] = set()
            parts: list[bytes] = []
            size = header_size
            records = flows = 0
            v9_count = 0
            carried: list[int] = []
            while i < n:
                index = entries[i][0]
                record_size = sizes[index]
                need = index not in in_message and self._needs_template(index, now, announced, sent)
                if need:
                    template = template_records[index]
                    extra = 4 + len(template)
                else:
                    extra = 0
                # a run of records of one template: as many as fit after the set header
                room = mtu - size - extra - 4
                run_end = i
                while run_end < n and entries[run_end][0] == index and room >= record_size:
                    room -= record_size
                    run_end += 1
                if run_end == i:
                    if size == header_size:  # an empty message cannot hold it: the MTU is too small
                        raise ValueError(f"mtu {mtu} cannot hold a record of template {FIRST_TEMPLATE_ID + index}")
                    break
                if need:
                    parts += [SET_HEADER.pack(self._template_set_id, extra), template]
                    in_message.add(index)
                    announced[index] = (now, sent)
                    carried.append(index)
                    v9_count += 1
                body = b"".join([entry[1:] for entry in entries[i:run_end]])
                # v9 flowsets are padded to 4 bytes; IPFIX sets are not padded here
                pad = (-len(body)) % 4 if v9 else 0
                parts += [SET_HEADER.pack(FIRST_TEMPLATE_ID + index, 4 + len(body) + pad), body]
                if pad:
                    parts.append(bytes(pad))
                size += extra + 4 + len(body) + pad
                count = run_end - i
                records += count
                flows += count
                v9_count += count
                i = run_end
            if v9:
                uptime = int((now - self.start_time) * 1000) & 0xFFFFFFFF
                head = V9_HEADER.pack(V9_VERSION, v9_count, uptime, int(now), sequence, self.domain)
                sequence = (sequence + 1) & 0xFFFFFFFF
            else:
                head = IPFIX_HEADER.pack(IPFIX_VERSION, size, int(now), sequence, self.domain)
                sequence = (sequence + records) & 0xFFFFFFFF
            built += 1
            yield Message(head + b"".join(parts), records, flows, tuple(carried))

    def _statistics_record(self, now: float) -> bytes:
        return STATISTICS_TEMPLATE.record.pack(
            self.domain, self.messages_sent, self.records_sent, self.not_sent, int(now * 1000)
        )
