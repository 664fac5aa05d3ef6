"""IFINDEX: interface names from a cache that rtnetlink link events keep current.

The filter runs on a real event loop against real namespaces; interfaces are renamed,
added and deleted with `ip`, and the daemon test checks the names on logged packets.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pylogd.plugins.filters import ifindex as ifindex_module
from pylogd.plugins.filters.ifindex import Ifindex, dump_links, parse_links
from rig import (  # noqa: F401 - the *_fixture names register fixtures
    Netns,
    Pair,
    Rig,
    netns_fixture,
    netns_pair_fixture,
    read_text,
    rig_fixture,
    start_pylogd,
    wait_for,
)

from pylogd.log import Logger
from pylogd.loop import EventLoop
from pylogd.plugin import PluginError, Slots

TEST_PLUGINS = Path(__file__).resolve().parent / "plugins" / "testplugins.py"


class Harness:
    """An IFINDEX instance on its own loop; ``names()`` runs the handler on one record."""

    def __init__(self, netns: str | None) -> None:
        self.plugin = Ifindex("ifi1", {"netns": netns}, Logger("ifi1"))
        self.loop = EventLoop()
        self.plugin.start(self.loop)
        slots = Slots({"oob.ifindex_in": 0, "oob.ifindex_out": 1, "oob.netns": 2}, {"oob.in": 3, "oob.out": 4}, size=5)
        self.run = self.plugin.handler(slots)

    @property
    def cache(self) -> ifindex_module.LinkCache:
        return self.plugin.default

    def names(self, i_in: int | None, i_out: int | None = None, netns: str | None = None) -> tuple[str, str]:
        record = [i_in, i_out, netns, None, None]
        self.run(record)
        return record[3], record[4]

    def pump(self, seconds: float = 0.2) -> None:
        """Let the loop read pending link events."""
        self.loop.call_later(seconds, self.loop.stop)
        self.loop.run()

    def close(self) -> None:
        self.plugin.stop()
        self.loop.close()


@pytest.fixture
def harness(netns_pair: Pair) -> Iterator[Harness]:
    h = Harness(netns_pair.a.name)
    yield h
    h.close()


def test_dump_matches_pyroute2(netns_pair: Pair) -> None:
    from pyroute2 import IPRoute

    a = netns_pair.a
    a.run("ip link add dump1 type veth peer name dump2 && ip link set dump2 name renamed2")
    with IPRoute(netns=a.name, flags=0) as ipr:
        theirs = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    sock = ifindex_module._rtnetlink_socket(a.name, 0)
    with sock:
        ours = dump_links(sock)
    assert ours == theirs
    assert set(ours.values()) == {"lo", netns_pair.a_if, "dump1", "renamed2"}


def test_parse_links_reads_what_pyroute2_encodes() -> None:
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    data = b""
    for mtype, index, name in ((16, 7, "eth-ü"), (17, 12345, "x"), (16, 3, None)):
        msg = ifinfmsg()
        msg["header"]["type"] = mtype
        msg["index"] = index
        msg["attrs"] = [("IFLA_MTU", 1500)] + ([("IFLA_IFNAME", name)] if name else [])
        msg.encode()
        data += bytes(msg.data)
    got = [(t, i, n) for t, _flags, i, n in parse_links(data)]
    assert got == [(16, 7, "eth-ü"), (17, 12345, "x"), (16, 3, None)]
    assert list(parse_links(data[:-3])) == list(parse_links(data))[:2]  # a cut message is dropped


def test_names_at_start_and_zero_or_missing_indexes(harness: Harness, netns_pair: Pair) -> None:
    a = netns_pair.a
    veth = a.ifindex(netns_pair.a_if)
    assert harness.names(veth, 1) == (netns_pair.a_if, "lo")
    assert harness.names(0, None) == ("", "")  # no interface: always valid, empty
    assert harness.cache.refreshes == 1


def test_rename_and_new_interface_come_from_link_events(harness: Harness, netns_pair: Pair) -> None:
    a = netns_pair.a
    veth = a.ifindex(netns_pair.a_if)
    a.run(f"ip link set dev {netns_pair.a_if} down && ip link set dev {netns_pair.a_if} name wan0")
    a.run("ip link add tst1 type veth peer name tst2")
    new = a.ifindex("tst1")
    harness.pump()
    assert harness.names(veth, new) == ("wan0", "tst1")
    assert harness.names(a.ifindex("tst2")) == ("tst2", "")
    assert harness.cache.refreshes == 1  # no dump was needed: the events said it all
    assert harness.cache.events >= 3


def test_unknown_index_triggers_one_rate_limited_dump(
    harness: Harness, netns_pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = netns_pair.a
    a.run("ip link add late1 type veth peer name late2")
    late = a.ifindex("late1")
    # the loop has not read the event yet: the lookup itself must find the new interface
    monkeypatch.setattr(ifindex_module, "REFRESH_INTERVAL", 0.0)
    assert harness.names(late) == ("late1", "")
    assert harness.cache.refreshes == 2
    monkeypatch.setattr(ifindex_module, "REFRESH_INTERVAL", 3600.0)
    assert harness.names(99999) == ("", "")  # unknown, and no dump within the interval
    assert harness.cache.refreshes == 2


def test_deleted_interface_keeps_its_name_for_late_packets(harness: Harness, netns_pair: Pair) -> None:
    a = netns_pair.a
    a.run("ip link add gone1 type veth peer name gone2")
    gone = a.ifindex("gone1")
    harness.pump()
    a.run("ip link del gone1")
    harness.pump()
    assert gone not in harness.cache.names
    assert harness.names(gone) == ("gone1", "")


def test_packet_netns_selects_that_namespace(rig: Rig, netns_pair: Pair) -> None:
    other: Netns = rig.netns("o")
    other.run("ip link add other0 type veth peer name other1")
    idx = other.ifindex("other0")
    h = Harness(netns_pair.a.name)
    try:
        assert h.names(idx, netns=other.name)[0] == "other0"
        assert h.names(idx)[0] != "other0"  # the option's namespace has another (or no) interface there
        assert set(h.plugin.caches) == {netns_pair.a.name, other.name}
        assert h.plugin.statistics()["refreshes"] == 2
        # a namespace that cannot be opened falls back to the option's, once
        assert h.names(1, netns="pylogd-no-such-namespace") == ("lo", "")
        assert h.plugin.caches["pylogd-no-such-namespace"] is h.cache
        assert h.plugin.statistics()["refreshes"] == 2
    finally:
        h.close()


def test_unknown_namespace_option_fails_at_start() -> None:
    plugin = Ifindex("ifi1", {"netns": "pylogd-no-such-namespace"}, Logger("ifi1"))
    loop = EventLoop()
    try:
        with pytest.raises(PluginError, match="pylogd-no-such-namespace"):
            plugin.start(loop)
    finally:
        loop.close()


RULES = """
table inet t {
  chain input {
    type filter hook input priority 0;
    udp dport 5000 log prefix "IN " group 3
  }
}
"""


def test_daemon_names_follow_rename_and_new_interface(netns_pair: Pair, tmp_path: Path) -> None:
    p = netns_pair
    p.a.nft(RULES)
    conf, logfile, capture = tmp_path / "pylogd.conf", tmp_path / "pylogd.log", tmp_path / "cap.json"
    conf.write_text(
        f'[global]\nlogfile="{logfile}"\nloglevel=1\nplugin="{TEST_PLUGINS}"\n'
        "stack=log1:NFLOG,ifi1:IFINDEX,cap1:CAPTURE\n"
        f'[log1]\ngroup=3\nnetlink_qthreshold=1\n[cap1]\nfile="{capture}"\n'
    )
    start_pylogd(p.a, conf, logfile)

    def names_seen(n: int) -> list[str]:
        def enough() -> bool:
            assert "failed on an event" not in read_text(logfile), read_text(logfile)
            return len(read_text(capture).splitlines()) >= n

        wait_for(enough, what=f"{n} records")
        return [json.loads(line)["oob.in"] for line in read_text(capture).splitlines()]

    p.b.send_udp(p.a_ip4, 5000)
    assert names_seen(1) == [p.a_if]
    p.a.run(f"ip link set dev {p.a_if} down && ip link set dev {p.a_if} name lan7 && ip link set dev lan7 up")
    p.b.send_udp(p.a_ip4, 5000)
    assert names_seen(2)[-1] == "lan7"
    # a second link between the namespaces, created while the daemon runs
    p.b.run(f"ip link add newb type veth peer name newa netns {p.a.name}")
    p.a.run("ip addr add 10.99.0.1/24 dev newa && ip link set newa up")
    p.b.run("ip addr add 10.99.0.2/24 dev newb && ip link set newb up")
    p.b.send_udp("10.99.0.1", 5000)
    assert names_seen(3)[-1] == "newa"
    assert json.loads(read_text(capture).splitlines()[-1])["oob.ifindex_in"] == p.a.ifindex("newa")
