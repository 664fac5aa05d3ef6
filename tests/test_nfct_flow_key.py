"""NFCT hash mode tells flows apart by their original tuple (with ct.id and ct.zone), not by
ct.id alone: the kernel's id is 32 bits of a hash, and two live flows may share one.

The plugin's reader and table dump run in this process on crafted ctnetlink messages (built as
the kernel lays them out: events with CTA_ID right after the tuples, dumps with it after the
counters), decoded from one reused buffer as :class:`pylogd.conntrack.CtSocket` does.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable

import pytest
from nfctkit import FedReader
from pylogd.plugins.inputs import nfct
from pylogd.plugins.inputs.nfct import entry_message, flow_key
from test_nfct_decode import nla, tuple_attr

from pylogd.conntrack import EVENT_UPDATE, F_ID, NFIELDS, decode, decode_bytes

NESTED = 0x8000
SHARED_ID = 0x5EED1D
SEC = 1_000_000_000
BASE = 1_790_000_000 * SEC  # receive times, ns since the epoch


def ct_message(
    kind: str, src: str, sport: int, ct_id: int | None, zone: int | None = None, dport: int = 53, dump: bool = False
) -> bytes:
    """A UDP flow src:sport -> 10.0.0.9:dport as ctnetlink sends it: ``kind`` new, update or destroy;
    ``dump``: in the attribute order of a table dump (CTA_ID after the counters)."""
    s, d = socket.inet_aton(src), socket.inet_aton("10.0.0.9")
    attrs = tuple_attr(1, socket.AF_INET, s, d, 17, sport, dport, False)
    attrs += tuple_attr(2, socket.AF_INET, d, s, 17, dport, sport, False)
    if zone is not None:
        attrs += nla(18, struct.pack(">H", zone))  # CTA_ZONE
    ident = nla(12, struct.pack(">I", ct_id)) if ct_id is not None else b""
    status = nla(3, struct.pack(">I", 0x18 if kind == "new" else 0x19A))
    counters = b""
    if kind != "new":
        counters = nla(9 | NESTED, nla(1, struct.pack(">Q", 3)) + nla(2, struct.pack(">Q", 180)))
        counters += nla(10 | NESTED, nla(1, struct.pack(">Q", 2)) + nla(2, struct.pack(">Q", 120)))
    timeout = b"" if kind == "destroy" else nla(7, struct.pack(">I", 30))
    attrs += status + timeout + counters + ident if dump else ident + status + timeout + counters
    mtype, flags = {"new": (0x100, 0x600), "update": (0x100, 0), "destroy": (0x102, 0)}[kind]
    body = struct.pack("=BBH", socket.AF_INET, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), mtype, flags, 1, 0) + body


@pytest.fixture
def reader():
    r = FedReader()  # hash mode: the default
    yield r
    r.close()


def starts(events: list[dict]) -> dict[tuple[str, int], int]:
    return {(socket.inet_ntoa(e["orig.ip.saddr"]), e["orig.l4.sport"]): e["flow.start.sec"] for e in events}


def test_two_live_flows_sharing_a_ct_id_keep_their_own_start(reader: FedReader) -> None:
    """Flows A and B, distinct, live at the same time, both CTA_ID 0x5EED1D: each DESTROY gets
    its own flow's start (keyed by ct.id alone, B's NEW overwrote or joined A's entry)."""
    a, b = ("10.1.0.1", 40000), ("10.1.0.2", 40001)
    reader.feed_messages(
        (BASE + 10 * SEC, ct_message("new", *a, SHARED_ID)),
        (BASE + 20 * SEC, ct_message("new", *b, SHARED_ID)),
    )
    assert reader.plugin.statistics()["hash_entries"] == 2
    reader.feed_messages((BASE + 25 * SEC, ct_message("update", *a, SHARED_ID)))  # finds A, not B
    assert reader.plugin.statistics()["hash_entries"] == 2
    events = reader.feed_messages(
        (BASE + 30 * SEC, ct_message("destroy", *b, SHARED_ID)),
        (BASE + 40 * SEC, ct_message("destroy", *a, SHARED_ID)),
    )
    assert [e["ct.event"] for e in events] == [4, 4]
    assert starts(events) == {a: BASE // SEC + 10, b: BASE // SEC + 20}
    assert [e["flow.end.sec"] for e in events] == [BASE // SEC + 30, BASE // SEC + 40]
    assert reader.plugin.statistics()["hash_entries"] == 0


def test_a_new_flow_on_the_tuple_of_one_whose_destroy_is_late_gets_its_own_entry(reader: FedReader) -> None:
    """The same tuple, another id: the first flow's DESTROY comes after the second's NEW (lost,
    or resent later with reliable=1); each DESTROY still finds its own flow."""
    a = ("10.1.0.1", 40000)
    reader.feed_messages(
        (BASE + 10 * SEC, ct_message("new", *a, 111)),
        (BASE + 20 * SEC, ct_message("new", *a, 222)),
    )
    assert reader.plugin.statistics()["hash_entries"] == 2
    events = reader.feed_messages(
        (BASE + 30 * SEC, ct_message("destroy", *a, 111)),
        (BASE + 40 * SEC, ct_message("destroy", *a, 222)),
    )
    assert [(e["ct.id"], e["flow.start.sec"]) for e in events] == [(111, BASE // SEC + 10), (222, BASE // SEC + 20)]


def test_zones_and_missing_ids_are_part_of_the_key(reader: FedReader) -> None:
    a = ("10.1.0.1", 40000)
    reader.feed_messages(
        (BASE + 10 * SEC, ct_message("new", *a, SHARED_ID)),
        (BASE + 20 * SEC, ct_message("new", *a, SHARED_ID, zone=7)),
        (BASE + 30 * SEC, ct_message("new", *a, None, zone=7)),  # a kernel that sends no id
    )
    assert reader.plugin.statistics()["hash_entries"] == 3
    events = reader.feed_messages(
        (BASE + 40 * SEC, ct_message("destroy", *a, None, zone=7)),
        (BASE + 50 * SEC, ct_message("destroy", *a, SHARED_ID, zone=7)),
        (BASE + 60 * SEC, ct_message("destroy", *a, SHARED_ID)),
    )
    assert [e["flow.start.sec"] for e in events] == [BASE // SEC + 30, BASE // SEC + 20, BASE // SEC + 10]


def key_of(msg: bytes) -> object:
    rec: list = [None] * NFIELDS
    assert decode(memoryview(msg), 0, len(msg), rec)
    return flow_key(rec)


def test_the_key_is_the_same_in_every_message_of_a_flow_and_differs_between_flows() -> None:
    a, b = ("10.1.0.1", 40000), ("10.1.0.2", 40000)
    keys = {
        key_of(ct_message(kind, *a, SHARED_ID, dump=dump))
        for kind in ("new", "update", "destroy")
        for dump in (False, True)
    }
    assert len(keys) == 1
    (key,) = keys
    assert isinstance(key, bytes)  # one object per flow, owning its bytes (no view into a buffer)
    others = [
        key_of(ct_message("new", *b, SHARED_ID)),
        key_of(ct_message("new", "10.1.0.1", 40000, SHARED_ID, dport=54)),
        key_of(ct_message("new", *a, SHARED_ID + 1)),
        key_of(ct_message("new", *a, SHARED_ID, zone=1)),
    ]
    assert len({key, *others}) == 5


def test_a_message_not_led_by_the_original_tuple_is_keyed_by_its_decoded_fields() -> None:
    """No kernel sends one, but the decoder reads attributes in any order: such a message is keyed
    by the fields it decodes, a key no message led by its tuple can have."""
    msg = ct_message("new", "10.1.0.1", 40000, SHARED_ID)
    first = struct.unpack_from("=H", msg, 20)[0]  # CTA_TUPLE_ORIG, moved to the end
    body = msg[16:20] + msg[20 + first :] + msg[20 : 20 + first]
    moved = struct.pack("=IHHII", 16 + len(body), 0x100, 0x600, 1, 0) + body
    key = key_of(moved)
    assert isinstance(key, tuple) and SHARED_ID in key and socket.inet_aton("10.1.0.1") in key
    assert key != key_of(msg)
    bare = struct.pack("=IHHII", 20, 0x100, 0x600, 1, 0) + struct.pack("=BBH", socket.AF_INET, 0, 0)
    assert key_of(bare) == (None, socket.AF_INET, *[None] * 9)


def test_a_resync_dump_finds_both_flows_sharing_an_id(reader: FedReader, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flows learned from events, then a resync whose dump (attributes in the dump's order) shows
    both still alive: nothing is purged and each keeps its start."""
    a, b, gone = ("10.1.0.1", 40000), ("10.1.0.2", 40001), ("10.1.0.3", 40002)
    reader.feed_messages(
        (BASE + 10 * SEC, ct_message("new", *a, SHARED_ID)),
        (BASE + 20 * SEC, ct_message("new", *b, SHARED_ID)),
        (BASE + 30 * SEC, ct_message("new", *gone, SHARED_ID)),
    )

    def dump_each(on_record: Callable[[list], object], netns: str | None = None, **_options: object) -> int:
        buf, rec = bytearray(4096), [None] * NFIELDS
        msgs = [ct_message("update", *flow, SHARED_ID, dump=True) for flow in (b, a)]
        for msg in msgs:
            buf[: len(msg)] = msg
            assert decode(memoryview(buf), 0, len(msg), rec)
            rec[nfct.F_EVENT] = EVENT_UPDATE
            on_record(rec)
        return len(msgs)

    monkeypatch.setattr(nfct, "dump_each", dump_each)
    assert reader.plugin._sync(emit_gone=True) == 1
    assert [(socket.inet_ntoa(e["orig.ip.saddr"]), e["orig.l4.sport"]) for e in reader.feed.events] == [gone]
    assert reader.plugin.statistics()["hash_entries"] == 2
    events = reader.feed_messages(
        (BASE + 50 * SEC, ct_message("destroy", *a, SHARED_ID)),
        (BASE + 60 * SEC, ct_message("destroy", *b, SHARED_ID)),
    )
    assert starts(events[1:]) == {a: BASE // SEC + 10, b: BASE // SEC + 20}


FLOWS = 200_000  # live flows: about 4.7 pairs sharing a CTA_ID expected, at least one in 99 % of runs
SENDER = r"""
import socket, sys, time
n = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start = time.perf_counter()
for i in range(n):  # one flow per destination address and port, 50,000 a second
    s.sendto(b"x", (f"127.0.0.{2 + i // 50_000}", 1024 + i % 50_000))
    if i % 100 == 99 and (delay := start + (i + 1) / 50_000 - time.perf_counter()) > 0:
        time.sleep(delay)
"""


def test_the_kernels_flows_sharing_a_ct_id_each_keep_an_entry(rig) -> None:
    """Against the kernel: 200,000 live UDP flows learned from their NEW events all have an entry,
    whatever ids they share (printed: how many flows share an id with another)."""
    from test_nfct import CT_RULES, Running

    ns = rig.netns("ctkey")
    ns.nft(CT_RULES)
    ns.run(["sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=600"])  # alive meanwhile
    run = Running(ns, hash_max_entries=2 * FLOWS, netlink_socket_buffer_size=32 << 20, netlink_resync_timeout=3600)
    try:
        sender = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c", SENDER, str(FLOWS)])
        deadline = time.monotonic() + 90
        while (sender.poll() is None or run.plugin.statistics()["received"] < FLOWS) and time.monotonic() < deadline:
            run.pump(0.05)
        assert sender.wait() == 0
        stats = run.plugin.statistics()
        table = run.plugin.table
        by_id = Counter(decode_bytes(entry_message(entry))[F_ID] for entry in table.values())
        shared = sum(n for n in by_id.values() if n > 1)
    finally:
        run.close()
    print(f"{FLOWS} flows, {len(by_id)} distinct ct.id, {shared} flows share an id with another")
    assert stats["received"] == FLOWS and stats["enobufs"] == 0 and stats["hash_full"] == 0, stats
    assert stats["hash_entries"] == FLOWS  # keyed by ct.id, each shared id had cost a flow
