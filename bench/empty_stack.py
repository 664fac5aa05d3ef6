"""Cost of the core per event: an input feeding stacks with no work in their plugins.

Measures, in-process, the CPU time of feed.emit() (the stack walk, the handler calls and
the record reset) plus one flush per batch, for an input -> output stack, the same with
three pass-through filters, and one input shared by two stacks.

    .venv/bin/python bench/empty_stack.py [events]
"""

from __future__ import annotations

import sys
import time

from pylogd.config import parse_ini
from pylogd.keys import KeyType
from pylogd.log import Logger
from pylogd.plugin import Filter, Input, Kind, Output, PluginSpec, key
from pylogd.registry import Registry
from pylogd.stack import InputFeed, Stack, build

KEYS = tuple(key(f"k{i}", KeyType.UINT32) for i in range(24))  # about NFLOG's key count


class BenchIn(Input):
    spec = PluginSpec(name="BENCHIN", kind=Kind.INPUT, help="bench input", outputs=KEYS)


class PassThrough(Filter):
    spec = PluginSpec(
        name="PASS",
        kind=Kind.FILTER,
        help="reads one key, writes one",
        inputs=(KEYS[0],),
        outputs=(key("p", KeyType.UINT32),),
    )

    def handler(self, slots):
        i, o = slots.inp("k0"), slots.out("p")

        def run(v: list) -> None:
            v[o] = v[i]

        return run


class NullOut(Output):
    spec = PluginSpec(name="NULL", kind=Kind.OUTPUT, help="keeps nothing", inputs=(KEYS[0],))

    def handler(self, slots):
        i = slots.inp("k0")
        return lambda v: v[i]

    def write(self, entries: list) -> None:
        pass


def feed_for(stacks_text: str) -> InputFeed:
    registry = Registry()
    registry.loaded.update({c.spec.name: c for c in (BenchIn, PassThrough, NullOut)})
    lines = "".join(f"stack={s}\n" for s in stacks_text.split(";"))
    topo = build(parse_ini("bench.conf", f"[global]\n{lines}"), registry, Logger)
    stacks = [Stack(plan, Logger("bench")) for plan in topo.stacks]
    return InputFeed(topo.instances["in"].plugin, stacks)


def measure(label: str, stacks_text: str, events: int, batch: int = 64) -> float:
    feed = feed_for(stacks_text)
    values, emit, flush = feed.values, feed.emit, feed.flush
    n = len(KEYS)
    start = time.process_time()
    for _ in range(events // batch):
        for _ in range(batch):
            values[0:n] = range(n)  # the input writes its keys
            emit()
        flush()
    per_event = (time.process_time() - start) / events * 1e6
    print(f"{label:<44} {per_event:6.3f} µs/event")
    return per_event


def main() -> None:
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 500_000
    print(f"python {sys.version.split()[0]}, {events} events, batches of 64")
    measure("input -> output", "in:BENCHIN,out:NULL", events)
    measure("input -> 3 filters -> output", "in:BENCHIN,a:PASS,b:PASS,c:PASS,out:NULL", events)
    measure("one input, two stacks (per input event)", "in:BENCHIN,out:NULL;in:BENCHIN,a:PASS,o2:NULL", events)


if __name__ == "__main__":
    main()
