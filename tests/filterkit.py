"""Run one filter plugin on hand-made input keys, the way a stack runs it, without a daemon.

The record is laid out as pylogd/stack.py lays out a stack whose input provides exactly the
filter's input keys: those keys at slots 0..n-1 in the filter's spec order, the filter's own
output keys after them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pylogd.log import Logger
from pylogd.plugin import STOP, Filter, Slots


class FilterRun:
    """A configured filter instance with its handler built once, to be called per event."""

    def __init__(
        self,
        plugin_cls: type[Filter],
        options: Mapping[str, Any] | None = None,
        unresolved: Iterable[str] = (),
    ) -> None:
        spec = plugin_cls.spec
        opts = {o.name: o.default for o in spec.options}
        for name, value in (options or {}).items():
            if name not in opts:
                raise KeyError(f"{spec.name} has no option {name!r}")
            opts[name] = value
        skip = set(unresolved)
        unknown = skip - {k.name for k in spec.inputs if k.optional}
        if unknown:
            raise KeyError(f"only optional inputs can stay unresolved, not {sorted(unknown)}")
        self.input_slots = {k.name: i for i, k in enumerate(spec.inputs)}
        base = len(spec.inputs)
        self.output_slots = {k.name: base + i for i, k in enumerate(spec.outputs)}
        size = base + len(spec.outputs)
        slots = Slots(
            {name: (None if name in skip else i) for name, i in self.input_slots.items()},
            dict(self.output_slots),
            size=size,
        )
        self.plugin = plugin_cls("test", opts, Logger("test"))
        self.plugin.configure()
        self.record: list = [None] * size
        self.handler: Callable[[list], Any] = self.plugin.handler(slots)
        #: whether the last event was stopped
        self.stopped = False

    def __call__(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run one event; return the filter's valid output keys (name -> value)."""
        record = self.record
        record[:] = [None] * len(record)  # the core clears the record after every event
        for name, value in inputs.items():
            record[self.input_slots[name]] = value
        self.stopped = self.handler(record) is STOP
        return {name: record[i] for name, i in self.output_slots.items() if record[i] is not None}


def run_filter(
    plugin_cls: type[Filter], inputs: Mapping[str, Any], options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Run ``plugin_cls`` on one event made of ``inputs``; return its valid output keys."""
    return FilterRun(plugin_cls, options)(inputs)
