"""The netlink input base (pylogd.netlink_input): the protocol modules stay a library without the
plugin API, and the base reports losses and errors once per change, rate-limited."""

from __future__ import annotations

import subprocess
import sys

from pylogd.log import Logger
from pylogd.netlink_input import NetlinkInput
from pylogd.plugin import Kind, PluginSpec

IMPORTED = "import sys, importlib; importlib.import_module(sys.argv[1]); print(' '.join(sorted(sys.modules)))"


def test_protocol_modules_import_nothing_of_the_plugin_api() -> None:
    for module in ("pylogd.netlink", "pylogd.nflog", "pylogd.conntrack", "pylogd.nfacct"):
        out = subprocess.run(
            [sys.executable, "-c", IMPORTED, module], capture_output=True, text=True, check=True, timeout=60
        )
        loaded = set(out.stdout.split())
        assert module in loaded
        assert not loaded & {"pylogd.plugin", "pylogd.config", "pylogd.netlink_input"}, (module, sorted(loaded))


class _Sock:
    enobufs = errors = truncated = received = backlog = backlog_max = 0
    last_error = None
    closed = False

    def overrun_advice(self, other: str = "") -> str:
        return "advice" + other


class _Input(NetlinkInput):
    spec = PluginSpec(name="TESTNL", kind=Kind.INPUT, help="")
    _overrun_remedy = ", or more"


def test_report_logs_each_kind_of_trouble_once_per_change(logged) -> None:
    messages, sink = logged
    plugin = _Input("t1", {}, Logger("t1", sink))
    plugin.sock = sock = _Sock()  # type: ignore[assignment]
    plugin._reported = (0, 0)
    sock.enobufs, sock.errors, sock.last_error = 2, 1, OSError(5, "boom")
    plugin._report()
    assert plugin._reported == (2, 1)
    text = "\n".join(messages)
    assert "We are losing events (2 buffer overruns so far): advice, or more" in text
    assert "netlink errors: 1" in text
    count = len(messages)
    plugin._report()  # nothing moved: nothing said
    assert len(messages) == count
    assert plugin.statistics() == {"received": 0, "enobufs": 2, "backlog_max": 0}
