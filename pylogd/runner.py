"""Writing a stack's entries: batches, a bounded backlog while writes fail, a worker thread for outputs that block.

While the output works, each socket drain's batch is written in one call and nothing else
happens.  When a write fails (a full disk, a server that went away) what did not go out
waits in a backlog, oldest first, and later batches join it without any write being tried;
the backlog is written again after a back-off (exponential with jitter, capped), in chunks,
so a retry costs one chunk and not a copy of everything that waits.  The backlog is bounded
in entries and in bytes.  Past that, with a spool (``[global] spool_dir``), new entries go to
disk, and every later one after them until the spool is empty again, so the order holds; what
waits in memory at exit goes to the spool too, ahead of the rest, and a restart writes it first.
Without a spool, or past its bound, new entries are dropped whole (never a part of one),
counted, and logged at most every few seconds with their count.
"""

from __future__ import annotations

import collections
import itertools
import random
import threading
import time

from .log import ERROR, Logger
from .plugin import Output, RejectedEntries
from .scheduling import run_normal
from .spool import Spool

#: entries per write while the backlog is worked off: one retry of a full disk costs about this much
CHUNK = 4096
#: what one waiting entry costs besides its bytes (the object and its place in the backlog)
ENTRY_OVERHEAD = 48
#: how often drops are logged (with how many there were since the last such line)
DROP_LOG_SECONDS = 10.0


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


class OutputRunner:
    """Collects one stack's entries for its output and writes them once per batch.

    ``written + rejected + dropped + pending()`` is every entry the stack accepted.
    """

    #: back-off between two tries of a failing output: from this, doubling up to the output's max_retry_delay
    MIN_DELAY = 0.25

    def __init__(
        self,
        output: Output,
        stack_name: str,
        log: Logger,
        max_pending: int = 200_000,
        max_pending_bytes: int = 64 << 20,
        spool: Spool | None = None,
    ) -> None:
        self.output = output
        self.stack_name = stack_name
        self.log = log
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.batch: list = []  # the stack appends an entry per event; flush() hands it on
        self.written = 0
        self.dropped = 0
        self.rejected = 0  # refused by the destination for good (RejectedEntries): set aside, logged
        self.write_errors = 0
        self._size = output.entry_size
        self._backlog: collections.deque = collections.deque()
        self._backlog_bytes = 0
        self.spool = spool
        keep_state_in = getattr(output, "keep_state_in", None)
        if spool is not None and keep_state_in is not None:
            keep_state_in(spool.directory)  # an SQL output's record of a COMMIT in doubt, for the next start
        self._lock = threading.Lock()  # the backlog, with a worker thread
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closing = False  # close(): the worker writes what waits, then ends
        self._abandon = False  # close() gave up: the worker ends now
        self._delay = self.MIN_DELAY
        self._next_try = 0.0
        self._failing_since: float | None = None
        self._last_error = ""
        self._drops_unlogged = 0
        self._drop_logged_at = -1e9

    @property
    def name(self) -> str:
        return f"stack {self.stack_name} ({self.output.id}:{self.output.spec.name})"

    def start(self) -> None:
        if self.spool is not None and self.spool.entries:
            self.log.notice(f"{self.name}: {self.spool.entries} entries wait in the spool; they are written first")
            self._next_try = 0.0
        if self.output.blocking:
            self._thread = threading.Thread(target=self._worker, name=f"output-{self.output.id}", daemon=True)
            self._thread.start()

    def pending(self) -> int:
        return len(self.batch) + len(self._backlog) + self._spooled()

    def _spooled(self) -> int:
        return self.spool.entries if self.spool is not None else 0

    def pending_bytes(self) -> int:
        return self._backlog_bytes

    def failing_seconds(self) -> float:
        """How long writes have been failing (0 while they work): the output's lag."""
        since = self._failing_since
        return time.monotonic() - since if since is not None else 0.0

    def current_error(self) -> str:
        """Why writes fail now ("" while they work)."""
        return self._last_error if self._failing_since is not None else ""

    # -- the event loop's side ----------------------------------------------------------------

    def flush(self) -> None:
        """Hand on this drain's batch: write it now, or queue it behind what waits."""
        batch = self.batch
        if not batch:
            return
        if self._thread is not None:
            with self._wake:
                self._accept(batch)
                self._wake.notify()
            batch.clear()
            return
        if self._backlog or self._spooled():
            self._accept(batch)
            batch.clear()
            self.retry()
            return
        n = len(batch)
        try:
            self.output.write(batch)
        except RejectedEntries as exc:
            self.written += n - len(exc.rejected)
            self._set_aside(exc)
        except Exception as exc:
            self.written += n - len(batch)  # the output removed what it wrote whole
            self._accept(batch)
            self._failed(exc)
        else:
            self.written += n
        batch.clear()

    def retry(self) -> None:
        """Write what waits if the back-off allows (the daemon's timer calls this)."""
        if self._thread is None and (self._backlog or self._spooled()) and time.monotonic() >= self._next_try:
            self._work_off()
        if self.spool is not None:
            with self._lock:
                self.spool.sync()

    def close(self, deadline: float) -> None:
        """Write everything accepted, trying until ``deadline`` (monotonic); what is left then goes to the
        spool (which needs no long wait: the next start writes it), or without one is dropped."""
        if self.spool is not None:
            deadline = min(deadline, time.monotonic() + 2.0)
        self.flush()
        if self._thread is not None:
            with self._wake:
                self._closing = True
                self._next_try = 0.0
                self._wake.notify()
            self._thread.join(max(0.0, deadline - time.monotonic()))
            if self._thread.is_alive():
                with self._wake:
                    self._abandon = True
                    self._wake.notify()
                self._thread.join(5)
        else:
            self._next_try = 0.0
            while (self._backlog or self._spooled()) and not self._work_off() and self._next_try < deadline:
                time.sleep(max(0.0, self._next_try - time.monotonic()))
        with self._lock:
            left = list(self._backlog)
            self._backlog.clear()
            self._backlog_bytes = 0
            spool = self.spool
            if spool is not None:
                spool.commit()  # a record read back in part: what is left of it is in ``left``
                kept = spool.append(left, first=True)
                if left and kept:
                    self.log.notice(
                        f"{self.name}: {kept} entries kept in the spool for the next start ({spool.entries} in all)"
                    )
                left = left[kept:]
                spool.close()
            if left:
                self.dropped += len(left)
                self.log.error(f"{self.name}: {len(left)} entries could not be written at exit ({self._last_error})")
        self._log_drops(force=True)

    # -- the backlog --------------------------------------------------------------------------

    def _accept(self, entries: list) -> None:
        """Queue ``entries`` behind what waits, within the bounds (the lock is held with a worker)."""
        spool = self.spool
        if spool is not None and spool.entries:  # the order: behind what is spooled already
            self._lost(len(entries) - spool.append(entries))
            return
        backlog, size = self._backlog, self._size
        room = self.max_pending - len(backlog)
        take = entries if len(entries) <= room else entries[: max(room, 0)]
        nbytes = sum(map(size, take)) + ENTRY_OVERHEAD * len(take)
        if self._backlog_bytes + nbytes > self.max_pending_bytes:
            # find the cut entry by entry: this is the overflowing case only
            budget, count = self.max_pending_bytes - self._backlog_bytes, 0
            nbytes = 0
            for entry in take:
                cost = size(entry) + ENTRY_OVERHEAD
                if nbytes + cost > budget:
                    break
                nbytes += cost
                count += 1
            take = take[:count]
        backlog.extend(take)
        self._backlog_bytes += nbytes
        rest = len(entries) - len(take)
        if rest and spool is not None:
            if not spool.entries:
                self.log.notice(f"{self.name}: the memory backlog is full; spilling to {spool.directory}")
            rest -= spool.append(entries[len(take) :])
        self._lost(rest)

    def _lost(self, n: int) -> None:
        if n:
            self.dropped += n
            self._drops_unlogged += n
            self._log_drops()

    def _work_off(self) -> bool:
        """Write the backlog chunk by chunk; False when a write failed (the back-off is set then)."""
        backlog, size, lock = self._backlog, self._size, self._lock
        while True:
            with lock:
                if not backlog and self.spool is not None and not self._abandon:
                    self._refill()
                if not backlog or self._abandon:
                    break
                chunk = list(itertools.islice(backlog, CHUNK))
                head = chunk[0]
            n = len(chunk)
            rejected = None
            try:
                self.output.write(chunk)
            except RejectedEntries as exc:
                rejected = exc
            except Exception as exc:
                with lock:
                    self._remove(n - len(chunk))
                    if chunk and chunk[0] is not head:  # the output wrote part of the first entry
                        self._backlog_bytes += size(chunk[0]) - size(backlog[0])
                        backlog[0] = chunk[0]
                self._failed(exc)
                return False
            with lock:
                self._remove(n)
                if rejected is not None:
                    self.written -= len(rejected.rejected)
                    self._set_aside(rejected)
        if not self._abandon:
            self._recovered()
        return True

    def _refill(self) -> None:
        """The memory backlog is written: mark the spool's last record done, take the next one."""
        spool = self.spool
        assert spool is not None
        spool.commit()
        entries = spool.read()
        if entries:
            self._backlog.extend(entries)
            self._backlog_bytes += sum(map(self._size, entries)) + ENTRY_OVERHEAD * len(entries)

    def _remove(self, n: int) -> None:
        backlog, size = self._backlog, self._size
        nbytes = 0
        for _ in range(n):
            nbytes += size(backlog.popleft()) + ENTRY_OVERHEAD
        self._backlog_bytes -= nbytes
        self.written += n

    def _set_aside(self, exc: RejectedEntries) -> None:
        """Entries the destination refused for good: counted and logged, never retried, so they
        cannot hold up the entries behind them."""
        self.rejected += len(exc.rejected)
        entry, reason = exc.rejected[0] if exc.rejected else (None, "")
        shown = repr(entry)
        if len(shown) > 300:
            shown = shown[:300] + "..."
        self.log.every(
            10,
            ERROR,
            "reject",
            f"{self.name}: {len(exc.rejected)} entries rejected and set aside ({self.rejected} since start); "
            f"the first: {reason}: {shown}",
        )

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self.write_errors += 1
        self._last_error = str(exc) or repr(exc)
        if self._failing_since is None:
            self._failing_since = now
            self._delay = self.MIN_DELAY
        wait = self._delay * random.uniform(0.75, 1.25)
        self._next_try = now + wait
        self._delay = min(self._delay * 2, self.output.max_retry_delay)
        self.log.every(
            10,
            ERROR,
            "write",
            f"{self.name}: write failed ({self._last_error}); {len(self._backlog)} entries "
            f"({_mib(self._backlog_bytes)}) wait in memory{self._spool_state()}, next try in {wait:.1f} s",
        )

    def _recovered(self) -> None:
        if self._failing_since is None:
            return
        outage = time.monotonic() - self._failing_since
        self._failing_since = None
        self._delay = self.MIN_DELAY
        self._log_drops(force=True)
        self.log.notice(f"{self.name}: writing again after {outage:.1f} s; every waiting entry is written")

    def _log_drops(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._drops_unlogged or (not force and now - self._drop_logged_at < DROP_LOG_SECONDS):
            return
        self.log.error(
            f"{self.name}: dropped {self._drops_unlogged} new entries: the backlog is full "
            f"({len(self._backlog)} entries, {_mib(self._backlog_bytes)}; limits {self.max_pending} entries, "
            f"{_mib(self.max_pending_bytes)}{self._spool_state()}) while writes fail ({self._last_error}); "
            f"{self.dropped} dropped since start"
        )
        self._drops_unlogged = 0
        self._drop_logged_at = now

    def _spool_state(self) -> str:
        spool = self.spool
        if spool is None:
            return ""
        return f"; spool {spool.entries} entries, {_mib(spool.bytes)} of {_mib(spool.max_bytes)}"

    # -- the worker thread of a blocking output -----------------------------------------------

    def _worker(self) -> None:
        run_normal()  # the loop may run at real-time priority; writes wait on disks and servers
        wake = self._wake
        while True:
            with wake:
                while not self._abandon:
                    if self._backlog or self._spooled():
                        wait = self._next_try - time.monotonic()
                        if wait <= 0:
                            break
                        wake.wait(wait)
                    elif self._closing:
                        return
                    else:
                        wake.wait()
                if self._abandon:
                    return
            self._work_off()
