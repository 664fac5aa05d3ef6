"""Writing a stack's entries: batches, retries on failure, a worker thread for outputs that block."""

from __future__ import annotations

import queue
import threading
import time

from .log import ERROR, Logger
from .plugin import Output


class OutputRunner:
    """Collects one stack's entries for its output and writes them once per batch.

    A failed write keeps the batch and is retried (a full disk, a database that is
    down): nothing already accepted is lost until ``max_pending`` entries wait, and
    every entry dropped past that is counted.  A blocking output writes from a worker
    thread so that it never stalls the netlink reader.
    """

    def __init__(self, output: Output, stack_name: str, log: Logger, max_pending: int = 200_000) -> None:
        self.output = output
        self.stack_name = stack_name
        self.log = log
        self.max_pending = max_pending
        self.batch: list = []
        self.written = 0
        self.dropped = 0
        self.write_errors = 0
        self._retry: list = []  # entries whose write failed, oldest first
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._queued = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        if self.output.blocking:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._worker, name=f"output-{self.output.id}", daemon=True)
            self._thread.start()

    def pending(self) -> int:
        return len(self.batch) + len(self._retry) + self._queued

    def flush(self) -> None:
        if not self.batch and not self._retry:
            return
        if self._queue is not None:
            with self._lock:
                room = self.max_pending - self._queued
                take = self.batch if len(self.batch) <= room else self.batch[: max(room, 0)]
                self.dropped += len(self.batch) - len(take)
                self._queued += len(take)
            if take:
                self._queue.put(list(take))
            self.batch.clear()
            return
        work = self._retry + self.batch if self._retry else self.batch
        try:
            self.output.write(work)
        except Exception as exc:
            self.write_errors += 1
            self._keep(work, exc)
        else:
            self.written += len(work)
            self._retry = []
        self.batch.clear()

    def _keep(self, work: list, exc: Exception) -> None:
        overflow = len(work) - self.max_pending
        if overflow > 0:
            self.dropped += overflow
            work = work[overflow:]
        self._retry = list(work)
        self.log.every(
            10,
            ERROR,
            "write",
            f"stack {self.stack_name}: writing {len(work)} entries failed ({exc}); keeping them for a retry",
        )

    def _worker(self) -> None:
        assert self._queue is not None
        delay = 0.5
        while True:
            work = self._queue.get()
            if work is None:
                return
            while True:
                try:
                    self.output.write(work)
                except Exception as exc:
                    self.write_errors += 1
                    self.log.every(
                        10,
                        ERROR,
                        "write",
                        f"stack {self.stack_name}: writing {len(work)} entries failed ({exc}); retrying",
                    )
                    if self._stopping:
                        with self._lock:
                            self.dropped += len(work)
                            self._queued -= len(work)
                        break
                    time.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                delay = 0.5
                with self._lock:
                    self.written += len(work)
                    self._queued -= len(work)
                break

    _stopping = False

    def close(self, timeout: float = 30.0) -> None:
        """Write what is left; a blocking output gets ``timeout`` seconds to drain."""
        self.flush()
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._stopping = True
                self._thread.join(5)
        elif self._retry:
            self.flush()
            if self._retry:
                self.dropped += len(self._retry)
                self.log.error(f"stack {self.stack_name}: {len(self._retry)} entries could not be written at exit")
                self._retry = []
