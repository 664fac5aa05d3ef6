"""Plugins that the tests load through plugin= from this file, proving third-party loading.

PIPEIN reads JSON objects, one per line, from a FIFO and emits each as an event (an object
with "block_loop_for" instead blocks the event loop that many seconds);
ODDSTOP stops events whose test.n is odd; CAPTURE writes every valid key of its
stack as a JSON line and fails its writes while a marker file exists.
"""

from __future__ import annotations

import json
import os
import time

from pylogd.keys import KeyType
from pylogd.plugin import (
    STOP,
    Filter,
    Input,
    Kind,
    Output,
    PluginError,
    PluginSpec,
    Slots,
    int_option,
    key,
    str_option,
)

_INPUT_KEYS = (
    key("test.n", KeyType.UINT32, "a sequence number"),
    key("test.text", KeyType.STRING, "some text"),
    key("print", KeyType.STRING, "a ready line, for LOGEMU"),
    key("oob.time.sec", KeyType.UINT32, "event time"),
    key("oob.mark", KeyType.UINT32, "a mark, for MARK"),
    key("oob.family", KeyType.UINT8, "address family"),
)


class PipeIn(Input):
    spec = PluginSpec(
        name="PIPEIN",
        kind=Kind.INPUT,
        help="Test input: JSON lines read from a FIFO.",
        options=(str_option("path", None, "the FIFO to read", mandatory=True),),
        outputs=_INPUT_KEYS,
        section_required=True,
    )

    def configure(self) -> None:
        if not os.path.isabs(self.options["path"]):
            raise PluginError("path must be absolute", option="path")

    def start(self, loop) -> None:
        path = self.options["path"]
        if not os.path.exists(path):
            os.mkfifo(path)
        # opened read-write so that writers coming and going never give us EOF
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self.rest = b""
        self.slots = [(k.name, self.feed.slot(k.name)) for k in self.spec.outputs]
        self.received = 0
        loop.add_reader(self.fd, self.readable)
        self.loop = loop

    def readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()
        values, emit = self.feed.values, self.feed.emit
        for line in lines:
            if not line.strip():
                continue
            obj = json.loads(line)
            if "block_loop_for" in obj:  # a stuck event loop, on purpose (the watchdog test)
                time.sleep(obj["block_loop_for"])
                continue
            for name, slot in self.slots:
                values[slot] = obj.get(name)
            self.received += 1
            emit()
        self.feed.flush()

    def refeed(self, feed) -> bool:
        self.feed = feed  # nothing is read ahead: each read is emitted and flushed at once
        return True

    def statistics(self) -> dict[str, int]:
        return {"received": self.received}

    def stop(self) -> None:
        self.loop.remove_reader(self.fd)
        os.close(self.fd)


class SumIn(PipeIn):
    """PIPEIN with NFACCT's keys: counter sums (sum.name, sum.pkts, sum.bytes) for GRAPHITE."""

    spec = PluginSpec(
        name="SUMIN",
        kind=Kind.INPUT,
        help="Test input: counter sums as JSON lines read from a FIFO.",
        options=(str_option("path", None, "the FIFO to read", mandatory=True),),
        outputs=(
            key("sum.name", KeyType.STRING, "the counter's name"),
            key("sum.pkts", KeyType.UINT64, "its packets"),
            key("sum.bytes", KeyType.UINT64, "its bytes"),
            key("oob.time.sec", KeyType.UINT32, "when it was read"),
            key("oob.time.usec", KeyType.UINT32, "when it was read"),
        ),
        section_required=True,
    )


class OddStop(Filter):
    spec = PluginSpec(
        name="ODDSTOP",
        kind=Kind.FILTER,
        help="Test filter: stops events with an odd test.n.",
        inputs=(key("test.n", KeyType.UINT32),),
    )

    def handler(self, slots: Slots):
        i = slots.inp("test.n")

        def check(v: list) -> object:
            return STOP if v[i] % 2 else None

        return check


class Upper(Filter):
    spec = PluginSpec(
        name="UPPER",
        kind=Kind.FILTER,
        help="Test filter: print = test.text in capitals; shadows the input's print key.",
        inputs=(key("test.text", KeyType.STRING), key("test.absent", KeyType.STRING, optional=True)),
        outputs=(key("print", KeyType.STRING),),
    )

    def handler(self, slots: Slots):
        i, o = slots.inp("test.text"), slots.out("print")
        self.absent_slot = slots.inp("test.absent")

        def upper(v: list) -> None:
            if v[i] is not None:
                v[o] = v[i].upper() + "\n"

        return upper


class NeedX(Filter):
    spec = PluginSpec(
        name="NEEDX",
        kind=Kind.FILTER,
        help="Test filter: needs a key nobody provides.",
        inputs=(key("test.textx", KeyType.STRING),),
    )


class WantStr(Filter):
    spec = PluginSpec(
        name="WANTSTR",
        kind=Kind.FILTER,
        help="Test filter: reads test.n as a string (a type mismatch).",
        inputs=(key("test.n", KeyType.STRING),),
    )


class Capture(Output):
    spec = PluginSpec(
        name="CAPTURE",
        kind=Kind.OUTPUT,
        help="Test output: every valid key of the stack as one JSON line.",
        options=(
            str_option("file", None, "where to write", mandatory=True),
            str_option("fail_while", "", "writes fail while this file exists (a full disk, a database down)"),
            int_option("blocking", 0, "write from a worker thread", min=0, max=1),
            str_option("format", "json", "line format", choices=("json", "repr")),
            int_option("backlog", 200_000, "entries that may wait in memory while writes fail", min=1),
        ),
        wildcard_inputs=True,
        section_required=True,
    )

    def configure(self) -> None:
        self.blocking = bool(self.options["blocking"])

    def backlog_limits(self) -> tuple[int, int]:
        return self.options["backlog"], 64 << 20

    def start(self, loop) -> None:
        self.f = open(self.options["file"], "a")

    def handler(self, slots: Slots):
        pairs = [(k.name, i) for k, i in slots.wildcard]
        if self.options["format"] == "repr":
            return lambda v: repr([(n, v[i]) for n, i in pairs if v[i] is not None])

        def convert(v: list) -> str:
            return json.dumps(
                {
                    n: (v[i].hex() if isinstance(v[i], bytes | memoryview) else v[i])
                    for n, i in pairs
                    if v[i] is not None
                }
            )

        return convert

    def write(self, entries: list) -> None:
        marker = self.options["fail_while"]
        if marker and os.path.exists(marker):
            raise OSError(28, "No space left on device (simulated)")
        self.f.write("".join(e + "\n" for e in entries))
        self.f.flush()

    def reopen(self) -> None:
        self.f.close()
        self.f = open(self.options["file"], "a")

    def stop(self) -> None:
        self.f.close()


class Broken(Filter):
    """A bug on purpose: an exception no plugin means to raise, in configure() or in start()."""

    spec = PluginSpec(
        name="BROKEN",
        kind=Kind.FILTER,
        help="Test filter: fails with an unexpected exception (a bug) in configure or in start.",
        options=(str_option("fail_in", "configure", "where the bug is", choices=("configure", "start")),),
    )

    def configure(self) -> None:
        if self.options["fail_in"] == "configure":
            _a_bug_in_a_plugin()

    def start(self, loop) -> None:
        if self.options["fail_in"] == "start":
            _a_bug_in_a_plugin()


def _a_bug_in_a_plugin() -> None:
    {}["a key nobody put there"]
