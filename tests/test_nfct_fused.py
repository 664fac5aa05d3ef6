"""NFCT event mode's functions made per message shape (plugins/inputs/nfct.py, _fused_source) hold to
what the decoded record gives through emit_flow, for every shape the decoder knows, and step aside
for messages they do not fit."""

from __future__ import annotations

import struct
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from nfctkit import FedReader
from pylogd.plugins.inputs import nfct
from test_nfct_decode import messages, nla, tuple_attr

from pylogd import conntrack


def event_reader(accept_all: bool = False, used: set[str] | None = None) -> FedReader:
    return FedReader(accept_all, netns="blue", used=used, hash_enable=0)


def both(*timed: tuple[int, bytes], used: set[str] | None = None) -> tuple[list[dict], list[dict], int]:
    """The events of the shape path and of the record path for the same messages, and how many
    messages the shape path decoded into a record; ``used``: the keys the stacks read (None: all)."""
    conntrack._LAYOUTS.clear()  # the decoder's cache of shapes is shared: start each case with room in it
    decoded = []
    real_decode = nfct.decode

    def counting_decode(*args: object) -> bool:
        decoded.append(1)
        return real_decode(*args)

    fused, by_record = event_reader(used=used), event_reader(accept_all=True, used=used)
    try:
        with mock.patch.object(nfct, "decode", counting_decode):
            fused_events = fused.feed_messages(*timed)
        return fused_events, by_record.feed_messages(*timed), len(decoded)
    finally:
        fused.close()
        by_record.close()


@settings(max_examples=300, deadline=None)
@given(messages(), st.integers(1, 2**62))
def test_a_shapes_function_emits_what_the_decoded_record_does(msg: bytes, arrived: int) -> None:
    fused, by_record, decoded = both((arrived, msg), (arrived + 1, msg), (0, msg))
    assert fused == by_record
    assert len(fused) == 3
    assert decoded == 1  # the first message taught the shape; the others went through its function


KEY_NAMES = [k.name for k in nfct.Nfct.spec.outputs]
#: what NFCT→IP2STR→PRINTFLOW reads (the stack of bench/flow_path.py)
PRINTFLOW_READS = {
    *(f"{side}.{key}" for side in ("orig", "reply") for key in (
        "ip.saddr", "ip.daddr", "ip.protocol", "l4.sport", "l4.dport", "raw.pktlen", "raw.pktcount",
    )),
    "oob.family", "icmp.code", "icmp.type", "ct.event",
}  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(messages(), st.one_of(st.just(PRINTFLOW_READS), st.sets(st.sampled_from(KEY_NAMES))))
def test_a_shapes_function_writes_the_keys_some_plugin_reads_and_only_those(msg: bytes, used: set[str]) -> None:
    fused, by_record, decoded = both((1, msg), (2, msg), used=used)
    assert [{k: v for k, v in e.items() if k in used} for e in fused] == [
        {k: v for k, v in e.items() if k in used} for e in by_record
    ]
    assert decoded == 1 and set(fused[1]) <= used  # the second went through the shape's function


@settings(max_examples=100, deadline=None)
@given(st.lists(messages(), min_size=2, max_size=12))
def test_many_shapes_of_one_length_each_keep_to_their_own(batch: list[bytes]) -> None:
    timed = [(1_700_000_000_000_000_000 + i, m) for i, m in enumerate(batch * 2)]
    fused, by_record, _decoded = both(*timed)
    assert fused == by_record


def test_a_message_of_a_known_shape_that_is_not_an_entry_is_not_emitted() -> None:
    new = _udp_message(0x100, 0x600)
    get = bytes(new[:4]) + struct.pack("=H", 0x101) + new[6:]  # IPCTNL_MSG_CT_GET: same shape, not an event
    reader = event_reader()
    try:
        events = reader.feed_messages((5, new), (6, get), (7, new))
        assert [e["ct.event"] for e in events] == [1, 1]
        assert reader.sock.received == 2
    finally:
        reader.close()


def test_a_damaged_message_of_a_known_length_is_not_taken_for_the_shape() -> None:
    good = _udp_message(0x102, 0)
    damaged = bytearray(good)
    damaged[20:22] = struct.pack("=H", 0xFF)  # the first attribute's length: past the message
    fused, by_record, decoded = both((5, good), (6, bytes(damaged)), (7, good))
    assert fused == by_record
    assert decoded == 2  # the damaged one was decoded (what could be read), never run through the shape
    assert [e["ct.event"] for e in fused] == [4, 4, 4]


def _udp_message(mtype: int, flags: int) -> bytes:
    attrs = tuple_attr(1, 2, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 17, 40000, 53, False)
    attrs += tuple_attr(2, 2, bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1]), 17, 53, 40000, False)
    attrs += nla(12, struct.pack(">I", 7))
    body = struct.pack("=BBH", 2, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), mtype, flags, 1, 0) + body
