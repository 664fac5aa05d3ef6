"""Writing a stack's entries: batches, a bounded backlog while writes fail, a worker thread for outputs that block.

While the output works, each socket drain's batch is written in one call and nothing else
happens.  When a write fails (a full disk, a server that went away) what did not go out
waits, oldest first, and later batches join it without any write being tried; it is written
again after a back-off (exponential with jitter, capped), in chunks, so a retry costs one chunk
and not a copy of everything that waits.

Without a spool what waits is kept in memory, bounded in entries and in bytes; past that, new
entries are dropped whole (never a part of one), counted, and logged at most every few seconds.

With a spool (``[global] spool_dir``) what waits is kept on disk, so a kill -9 loses nothing that
was accepted: once a write fails, or as soon as what waits in memory is a second old (a server
that froze, a slow one), it is stored there, and every later entry after it until the spool is
empty again, so the order holds.  The entries come back a record at a time; the spool's read
position moves after each chunk written, so a crash during the write-back writes at most that
chunk again, and an SQL output's chunk not even that: its transaction's record (the COMMIT in
doubt) is kept with the position, and the next start asks the server.  When the spool cannot take
entries (its bound, a full or read-only disk), they wait in memory behind it, bounded as above.
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
#: with a spool, what has waited in memory this long goes to disk: what a kill -9 may cost at most
SPILL_AFTER = 1.0
#: a write without an answer for this long shows in the statistics as a failure under way
STALLED_AFTER = 5.0


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
        # what waits in memory: entries accepted while the spool was empty, or (_from_spool) the rest
        # of the spool's record at its read position, which stays on disk until written
        self._backlog: collections.deque = collections.deque()
        self._backlog_bytes = 0
        self._from_spool = False
        self._behind: collections.deque = collections.deque()  # newer than the spool; the disk refused them
        self._behind_bytes = 0
        # the memory backlog's age: (when, how many entries had been accepted before) per accepted batch
        self._marks: collections.deque = collections.deque()
        self._accepted = 0
        self._taken = 0
        self.spool = spool
        # an output shared by several stacks keeps each stack's transaction in doubt apart (a channel)
        self.channel = output.channel(stack_name, self._keep_doubt if spool is not None else None)
        self._write = self.channel.write if self.channel is not None else output.write
        # one write, one transaction: the record of a transaction in doubt then names where it starts
        self._chunk = min(CHUNK, getattr(output, "batch_rows", CHUNK) or CHUNK)
        if spool is not None and spool.doubt is not None and self.channel is not None:
            self.channel.adopt(spool.doubt)
        # an output that reports its own losses downstream (IPFIX's exporter counts) reads the runner's
        output.watch_runner(self)
        self._lock = threading.Lock()  # the backlog and the spool, with a worker thread
        self._progress_lock = threading.Lock()  # one progress write at a time, in order
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closing = False  # close(): the worker writes what waits, then ends
        self._abandon = False  # close() gave up: the worker ends now
        self._delay = self.MIN_DELAY
        self._next_try = 0.0
        self._failing_since: float | None = None
        self._writing_since: float | None = None  # a write under way since (a server may not answer)
        self._last_error = ""
        self._drops_unlogged = 0
        self._drop_logged_at = -1e9
        self._spilling = False  # the spool holds entries because writes failed (for the log's sake)

    @property
    def name(self) -> str:
        return f"stack {self.stack_name} ({self.output.id}:{self.output.spec.name})"

    def start(self) -> None:
        if self.spool is not None and self.spool.entries:
            self.log.notice(f"{self.name}: {self.spool.entries} entries wait in the spool; they are written first")
            self._next_try = 0.0
        if self.output.writes_block():
            self._thread = threading.Thread(target=self._worker, name=f"output-{self.output.id}", daemon=True)
            self._thread.start()

    def attach_spool(self, spool: Spool) -> None:
        """At a reload: the spool this runner's stack is named after was still a closing runner's when this
        one was made.  Before :meth:`start`, with nothing accepted yet."""
        assert self.spool is None and self._thread is None and not self.batch and not self._waiting()
        self.spool = spool
        if self.channel is not None:
            self.channel.keep = self._keep_doubt
            if spool.doubt is not None:
                self.channel.adopt(spool.doubt)

    def pending(self) -> int:
        memory = 0 if self._from_spool else len(self._backlog)
        return len(self.batch) + memory + self._spooled() + len(self._behind)

    def _spooled(self) -> int:
        return self.spool.entries if self.spool is not None else 0

    def _waiting(self) -> bool:
        return bool(self._backlog or self._behind or self._spooled())

    def pending_bytes(self) -> int:
        return self._backlog_bytes + self._behind_bytes

    def failing_seconds(self) -> float:
        """How long writes have been failing, or a write has gone unanswered (0 while they work)."""
        now = time.monotonic()
        since = self._failing_since
        if since is None:
            since = self._writing_since
            if since is not None and now - since < STALLED_AFTER:
                since = None
        return now - since if since is not None else 0.0

    def current_error(self) -> str:
        """Why writes fail now ("" while they work)."""
        if self._failing_since is not None:
            return self._last_error
        since = self._writing_since
        if since is not None and time.monotonic() - since >= STALLED_AFTER:
            return f"a write has had no answer for {time.monotonic() - since:.0f} s"
        return ""

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
        if self._waiting():
            self._accept(batch)
            batch.clear()
            if time.monotonic() >= self._next_try:  # the spool is synced by the timer, not per batch
                self._work_off()
            return
        n = len(batch)
        try:
            self._write(batch)
        except RejectedEntries as exc:
            self.written += n - len(exc.rejected)
            self._set_aside(exc)
        except Exception as exc:
            self.written += n - len(batch)  # the output removed what it wrote whole
            self._failed(exc)
            self._accept(batch)
        else:
            self.written += n
        batch.clear()

    def retry(self) -> None:
        """Write what waits if the back-off allows (the daemon's timer calls this); with a spool, store
        what has waited in memory too long and what the disk refused before."""
        if self._thread is None and self._waiting() and time.monotonic() >= self._next_try:
            self._work_off()
        spool = self.spool
        if spool is not None:
            with self._lock:
                if self._backlog and not self._from_spool and self._old_enough():
                    self._spill_backlog()
                if self._behind:
                    self._store_behind()
                spool.sync()

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
            while self._waiting() and not self._work_off() and self._next_try < deadline:
                time.sleep(max(0.0, self._next_try - time.monotonic()))
        with self._lock:
            spool = self.spool
            if self._from_spool:  # the rest of a record read back: it is on disk still
                self._backlog.clear()
                self._backlog_bytes = 0
                self._from_spool = False
            if spool is not None and self._backlog:
                self._spill_backlog()
            if spool is not None and self._behind:
                self._store_behind()
            left = len(self._backlog) + len(self._behind)
            self._backlog.clear()
            self._behind.clear()
            self._backlog_bytes = self._behind_bytes = 0
            if spool is not None:
                if spool.entries:
                    self.log.notice(f"{self.name}: {spool.entries} entries kept in the spool for the next start")
                spool.close()
            if left:
                self.dropped += left
                self.log.error(f"{self.name}: {left} entries could not be written at exit ({self._last_error})")
        self._save_progress()
        self._log_drops(force=True)

    # -- the backlog --------------------------------------------------------------------------

    def _accept(self, entries: list) -> None:
        """Queue ``entries`` behind what waits, within the bounds (the lock is held with a worker)."""
        spool = self.spool
        if spool is not None and (spool.entries or self._behind or self._failing_since is not None):
            self._to_spool(entries)  # the order: behind what is stored already
            return
        take, nbytes = self._within_bounds(entries)
        self._backlog.extend(take)
        self._backlog_bytes += nbytes
        if take:
            self._marks.append((time.monotonic(), self._accepted))
            self._accepted += len(take)
        rest = len(entries) - len(take)
        if rest and spool is not None:
            self._spill_backlog()  # memory is full: what waits there goes to disk first, the rest after it
            self._to_spool(entries[len(take) :])
        else:
            self._lost(rest)

    def _within_bounds(self, entries: list) -> tuple[list, int]:
        """The first of ``entries`` that fit in memory beside what waits there, and their bytes."""
        size = self._size
        room = self.max_pending - len(self._backlog) - len(self._behind)
        take = entries if len(entries) <= room else entries[: max(room, 0)]
        nbytes = sum(map(size, take)) + ENTRY_OVERHEAD * len(take)
        used = self._backlog_bytes + self._behind_bytes
        if used + nbytes > self.max_pending_bytes:
            # find the cut entry by entry: this is the overflowing case only
            budget, count = self.max_pending_bytes - used, 0
            nbytes = 0
            for entry in take:
                cost = size(entry) + ENTRY_OVERHEAD
                if nbytes + cost > budget:
                    break
                nbytes += cost
                count += 1
            take = take[:count]
        return take, nbytes

    def _to_spool(self, entries: list) -> None:
        """Store ``entries`` at the spool's end; what the disk refuses waits in memory behind it."""
        spool = self.spool
        assert spool is not None
        # never before what still waits in memory: the spool holds only what is newer than that
        if not self._behind and (self._from_spool or not self._backlog):
            if not spool.entries and not self._spilling:
                self._spilling = True
                self.log.notice(f"{self.name}: writes wait; keeping what waits in {spool.directory}")
            if spool.append(entries) == len(entries):
                return
        take, nbytes = self._within_bounds(entries)
        self._behind.extend(take)
        self._behind_bytes += nbytes
        self._lost(len(entries) - len(take))

    def _store_behind(self) -> None:
        """What waited in memory behind the spool goes to it, now that the disk may take it."""
        spool = self.spool
        assert spool is not None
        if self._backlog and not self._from_spool:
            return  # what waits in memory before them must go first
        entries = list(self._behind)
        if spool.append(entries) == len(entries):
            self._behind.clear()
            self._behind_bytes = 0

    def _old_enough(self) -> bool:
        marks = self._marks
        return self._failing_since is not None or (bool(marks) and time.monotonic() - marks[0][0] >= SPILL_AFTER)

    def _spill_backlog(self) -> bool:
        """What waits in memory (the spool is empty then) becomes the spool's record at its read
        position, and stays the backlog: written from there, it is passed in the spool chunk by chunk."""
        spool = self.spool
        assert spool is not None and not self._from_spool
        entries = list(self._backlog)
        if spool.entries or spool.append(entries) != len(entries):
            return False
        spool.read(load=False)
        self._from_spool = True
        self._marks.clear()
        if not self._spilling:
            self._spilling = True
            self.log.notice(f"{self.name}: writes wait; keeping what waits in {spool.directory}")
        if self.channel is not None:
            # a transaction cut off at COMMIT is the backlog's first: its record names it by position now
            self.channel.place(spool.position())
        return True

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
                chunk = list(itertools.islice(backlog, self._chunk))
                head = chunk[0]
                if self.channel is not None:
                    self.channel.position = self.spool.position() if self._from_spool else None  # type: ignore[union-attr]
                self._writing_since = time.monotonic()
            n = len(chunk)
            rejected = None
            try:
                self._write(chunk)
            except RejectedEntries as exc:
                rejected = exc
            except Exception as exc:
                with lock:
                    self._writing_since = None
                    self._remove(n - len(chunk))
                    if chunk and backlog and chunk[0] is not head:  # the output wrote part of the first entry
                        self._backlog_bytes += size(chunk[0]) - size(backlog[0])
                        backlog[0] = chunk[0]
                    self._failed(exc)
                    if self.spool is not None and backlog and not self._from_spool:
                        self._spill_backlog()  # kept on disk while the output is away
                    elif self._from_spool and self.channel is not None:
                        # spilled while this write was under way: its transaction in doubt is at the head
                        self.channel.place(self.spool.position())  # type: ignore[union-attr]
                self._save_progress()
                return False
            with lock:
                self._writing_since = None
                self._remove(n)
                if rejected is not None:
                    self.written -= len(rejected.rejected)
                    self._set_aside(rejected)
            self._save_progress()
        if not self._abandon:
            self._recovered()
        return True

    def _refill(self) -> None:
        """The memory backlog is written: take the spool's next record, or what waited behind it."""
        spool = self.spool
        assert spool is not None
        entries = spool.read()
        if entries:
            self._backlog.extend(entries)
            self._backlog_bytes += sum(map(self._size, entries)) + ENTRY_OVERHEAD * len(entries)
            self._from_spool = True
            return
        if self._behind:
            self._backlog.extend(self._behind)
            self._backlog_bytes += self._behind_bytes
            self._behind.clear()
            self._behind_bytes = 0
            self._marks.append((time.monotonic(), self._accepted))
            self._accepted += len(self._backlog)
        if not spool.entries:
            self._spilling = False

    def _remove(self, n: int) -> None:
        """The first ``n`` entries of the backlog are written (or set aside): they leave it, and the
        spool's read position passes them when they are its."""
        backlog, size = self._backlog, self._size
        nbytes = 0
        for _ in range(n):
            nbytes += size(backlog.popleft()) + ENTRY_OVERHEAD
        self._backlog_bytes -= nbytes
        self.written += n
        if self._from_spool:
            self.spool.advance(n)  # type: ignore[union-attr]
            if not backlog:
                self._from_spool = False
            return
        self._taken += n
        marks = self._marks
        while len(marks) > 1 and marks[1][1] <= self._taken:
            marks.popleft()
        if not backlog:
            marks.clear()

    def _save_progress(self) -> None:
        """The spool's read position (and a transaction in doubt) on disk, after a chunk is written."""
        if self.spool is not None:
            doubt = self.channel.durable_doubt() if self.channel is not None else None
            self._write_progress(doubt, "the spool's read position", "the last chunks written may be written again")

    def _keep_doubt(self, record: dict) -> None:
        """An SQL output's transaction is about to COMMIT: its record goes on disk first, so a crash
        before the answer leaves the next start a question to ask the server rather than a guess.  A
        full or read-only disk must not stop a database that works: COMMIT goes ahead all the same."""
        self._write_progress(
            record, "the record of a transaction", f"its {record.get('rows')} rows may be written twice", always=True
        )

    def _write_progress(self, doubt: dict | None, what: str, risk: str, always: bool = False) -> None:
        spool = self.spool
        assert spool is not None
        with self._progress_lock:
            with self._lock:
                if not always and spool.progress_saved(doubt):
                    return
                progress = spool.progress(doubt)
            try:
                spool.save_progress(progress)
            except OSError as exc:
                self.log.every(
                    10,
                    ERROR,
                    what,
                    f"{self.name}: cannot keep {what} in {spool.directory} ({exc.strerror}); after a crash {risk}",
                )

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
            f"{self.name}: write failed ({self._last_error}); {self._in_memory()} entries "
            f"({_mib(self.pending_bytes())}) wait in memory{self._spool_state()}, next try in {wait:.1f} s",
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
            f"({self._in_memory()} entries, {_mib(self.pending_bytes())}; limits {self.max_pending} entries, "
            f"{_mib(self.max_pending_bytes)}{self._spool_state()}) while writes fail ({self._last_error}); "
            f"{self.dropped} dropped since start"
        )
        self._drops_unlogged = 0
        self._drop_logged_at = now

    def _in_memory(self) -> int:
        return (0 if self._from_spool else len(self._backlog)) + len(self._behind)

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
                    if self._waiting():
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
