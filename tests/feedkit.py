"""A Feed that records what an input plugin emits, for running an input without stacks."""

from __future__ import annotations

from pylogd.keys import Key
from pylogd.plugin import Feed


class RecordingFeed(Feed):
    """The input's keys at slots 0..n-1, as the core lays them out; each event is kept as a
    dict of its valid keys (memoryviews copied to bytes), and the record is reset after it."""

    def __init__(self, outputs: tuple[Key, ...], used: set[str] | None = None) -> None:
        self.keys = [k.name for k in outputs]
        self.used_keys = used  # None: every key is read
        self.values = [None] * len(self.keys)
        self.events: list[dict] = []
        self.flushes = 0
        self.emit = self._emit
        self.flush = self._flush

    def slot(self, name: str) -> int:
        return self.keys.index(name)

    def used(self, name: str) -> bool:
        return self.used_keys is None or name in self.used_keys

    def _emit(self) -> None:
        self.events.append(
            {
                k: bytes(v) if isinstance(v, memoryview) else v
                for k, v in zip(self.keys, self.values, strict=True)
                if v is not None
            }
        )
        self.values[:] = [None] * len(self.keys)  # as the core does after every event

    def _flush(self) -> None:
        self.flushes += 1
