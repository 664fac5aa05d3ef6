"""The event loop's signals: the loop learns a signal from its byte on the wake-up socket, not only from
the Python-level handler, which the interpreter runs only when it next executes bytecode (a loop compiled
by Cython may wait again first)."""

from __future__ import annotations

import os
import signal

from pylogd.loop import EventLoop


def test_a_signal_byte_alone_runs_the_callback():
    loop = EventLoop()
    seen: list[int] = []

    def on_term(signum: int) -> None:
        seen.append(signum)
        loop.stop()

    def on_hup(signum: int) -> None:
        seen.append(signum)

    try:
        loop.add_signal(signal.SIGTERM, on_term)
        loop.add_signal(signal.SIGHUP, on_hup)
        # what the C-level handler writes when its Python-level handler has not run yet; a byte of
        # a signal nobody registered (SIGUSR2 here) is ignored
        assert loop._wake_w is not None
        loop._wake_w.send(bytes([signal.SIGHUP, signal.SIGUSR2, signal.SIGHUP, signal.SIGTERM]))
        loop.call_later(5.0, loop.stop)  # the old loop never ran the callbacks: fail, do not hang
        loop.run()
    finally:
        loop.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    assert seen == [signal.SIGTERM], "TERM is handled first and stops the loop"


def test_a_real_signal_still_runs_the_callback_once():
    loop = EventLoop()
    seen: list[int] = []

    def on_usr1(signum: int) -> None:
        seen.append(signum)
        loop.stop()

    try:
        loop.add_signal(signal.SIGUSR1, on_usr1)
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)
        loop.call_later(5.0, loop.stop)
        loop.run()
    finally:
        loop.close()
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    assert seen == [signal.SIGUSR1]
