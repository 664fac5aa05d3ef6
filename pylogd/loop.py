"""One event loop over input sockets, timers and signals.

A signal marks itself pending and wakes the loop through a socket; the loop runs
the registered callbacks like any other event, so no work ever happens inside a
signal handler, and no signal is lost behind a storm of others.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import select
import signal
import socket
import time
from collections.abc import Callable

MAX_WAIT = 86400.0


class Timer:
    __slots__ = ("callback", "cancelled", "interval", "when")

    def __init__(self, when: float, callback: Callable[[], None], interval: float | None) -> None:
        self.when = when
        self.callback = callback
        self.interval = interval
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


#: bytecode to evaluate: the interpreter runs pending Python-level signal handlers as it starts it
_RUN_PENDING_HANDLERS = compile("None", "<pending signal handlers>", "eval")


class EventLoop:
    def __init__(self) -> None:
        # epoll itself rather than selectors: its Python-level key objects cost a microsecond per
        # wake-up, which at a few events per wake-up is a tenth of the work
        self._epoll = select.epoll()
        #: descriptor -> its callback; each is watched for reading or for writing, never both
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._counter = itertools.count()
        self._signal_handlers: dict[int, Callable[[int], None]] = {}
        self._pending_signals: dict[int, bool] = {}
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self.running = False

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        if fd in self._callbacks:
            raise KeyError(f"{fd} is already registered")
        self._epoll.register(fd, select.EPOLLIN)
        self._callbacks[fd] = callback

    def remove_reader(self, fd: int) -> None:
        if self._callbacks.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):  # a descriptor closed first is gone already
                self._epoll.unregister(fd)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` while ``fd`` can be written to (or has failed: epoll always reports errors and
        hang-ups).  A descriptor watched for reading is removed first: one direction at a time."""
        if fd in self._callbacks:
            raise KeyError(f"{fd} is already registered")
        self._epoll.register(fd, select.EPOLLOUT)
        self._callbacks[fd] = callback

    def remove_writer(self, fd: int) -> None:
        self.remove_reader(fd)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + delay, callback, None)
        heapq.heappush(self._timers, (timer.when, next(self._counter), timer))
        return timer

    def call_every(self, interval: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + interval, callback, interval)
        heapq.heappush(self._timers, (timer.when, next(self._counter), timer))
        return timer

    def add_signal(self, signum: int, callback: Callable[[int], None]) -> None:
        """Run ``callback(signum)`` from the loop after ``signum`` arrives.

        Signals are state, not a stream: the handler and the signal's byte on the wake-up socket
        only mark the signal pending, so a storm of one signal costs one callback and never hides
        another (the wake-up socket may fill up and lose bytes; the handler, run after each drain, still
        marks it).
        The order of :meth:`add_signal` calls is the order pending signals are handled in:
        register the terminating ones first.
        """
        if self._wake_r is None:
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            # the C-level handler writes the wake-up byte from whichever thread the signal hits
            signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
            self.add_reader(self._wake_r.fileno(), self._read_signals)
        self._signal_handlers[signum] = callback
        pending = self._pending_signals

        def mark(signo: int, _frame: object) -> None:
            pending[signo] = True

        signal.signal(signum, mark)

    def _read_signals(self) -> None:
        assert self._wake_r is not None
        pending = self._pending_signals
        # Each byte is a signal's number, written by the C-level handler.  It marks the signal too:
        # the Python-level handler runs only when the interpreter next executes bytecode, which a
        # loop compiled by Cython may not do before it waits again (a SIGTERM would then wait
        # for the next packet).
        try:
            while data := self._wake_r.recv(4096):
                for signum in set(data):
                    if signum in self._signal_handlers:
                        pending[signum] = True
        except BlockingIOError:
            pass
        # A storm fills the socket and the kernel drops later bytes (a TERM's among them): then only the
        # Python-level handler marks the signal, and it runs when bytecode next does, which this loop,
        # compiled, may never execute.  Evaluating a code object runs the handlers that wait.
        eval(_RUN_PENDING_HANDLERS)
        # after the drain: a signal marked from here on leaves a byte behind and wakes the loop again
        for signum, handler in self._signal_handlers.items():
            if pending.get(signum):
                pending[signum] = False
                handler(signum)
                if not self.running:
                    return

    def stop(self) -> None:
        self.running = False

    def _run_timers(self) -> float | None:
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, timer = heapq.heappop(timers)
            if timer.cancelled:
                continue
            if timer.interval is not None:
                timer.when = max(timer.when + timer.interval, now)
                heapq.heappush(timers, (timer.when, next(self._counter), timer))
            timer.callback()
            now = time.monotonic()
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
        return max(0.0, timers[0][0] - now) if timers else None

    def run(self) -> None:
        self.running = True
        poll, callbacks = self._epoll.poll, self._callbacks
        while self.running:
            timeout = self._run_timers()
            if not self.running:
                break
            # epoll takes a C int of milliseconds: a timer further out than ~24 days waits in steps
            for fd, _events in poll(-1 if timeout is None else min(timeout, MAX_WAIT)):
                callback = callbacks.get(fd)  # a descriptor removed by an earlier callback of this round
                if callback is not None:
                    callback()
                if not self.running:
                    break

    def close(self) -> None:
        if self._wake_r is not None:
            signal.set_wakeup_fd(-1)
            self._wake_r.close()
            assert self._wake_w is not None
            self._wake_w.close()
            self._wake_r = self._wake_w = None
        self._epoll.close()


class BacklogReader:
    """The reader callback of a socket that is read ahead into a ring (:class:`pylogd.netlink.DatagramRing`).

    ``work()`` drains and writes, and returns how much it handled.  While ``backlog()`` says
    datagrams wait in the ring, the reader runs again soon: the socket itself may never
    become readable again for them.  :meth:`finish`, at stop, works until nothing is left.
    """

    def __init__(self, loop: EventLoop, work: Callable[[], int], backlog: Callable[[], int]) -> None:
        self.loop = loop
        self.work = work
        self.backlog = backlog
        self._timer: Timer | None = None

    def __call__(self) -> None:
        self.work()
        if self._timer is None and self.backlog():
            self._timer = self.loop.call_later(0, self._again)

    def _again(self) -> None:
        self._timer = None
        self()

    def finish(self, seconds: float = 5.0) -> None:
        """Work until a round finds nothing (or ``seconds`` pass): what was read is written."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = time.monotonic() + seconds
        while self.work() and time.monotonic() < deadline:
            pass
