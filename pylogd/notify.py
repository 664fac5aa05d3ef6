"""systemd's notify protocol: readiness, status, reloading, stopping and the watchdog.

Messages go to ``$NOTIFY_SOCKET`` through systemd-python's ``sd_notify`` when it is installed,
else through a plain datagram socket (the protocol is one datagram of ``KEY=VALUE`` lines, and
a name starting with ``@`` is in the abstract namespace).  Without ``$NOTIFY_SOCKET`` (not run
by systemd) every call does nothing.

The watchdog is fed from the event loop itself: a loop stuck in a callback stops feeding it, and
systemd restarts the daemon (``WatchdogSec=`` in the unit).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable


def _plain_sender(address: str) -> Callable[[str], bool]:
    target = "\0" + address[1:] if address.startswith("@") else address
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(message: str) -> bool:
        try:
            sock.sendto(message.encode(), target)
        except OSError:
            return False
        return True

    return send


def _sender() -> Callable[[str], bool] | None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return None
    try:
        from systemd import daemon
    except ImportError:
        return _plain_sender(address)
    return lambda message: bool(daemon.notify(message))


class Notifier:
    """What pylogd tells systemd."""

    def __init__(self) -> None:
        self._send = _sender()
        self.watchdog_interval = self._watchdog_interval()

    @property
    def enabled(self) -> bool:
        return self._send is not None

    @staticmethod
    def _watchdog_interval() -> float | None:
        """Half of systemd's WATCHDOG_USEC, when the watchdog is meant for this process."""
        usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return max(int(usec) / 2e6, 0.01)
        except ValueError:
            return None

    def notify(self, *lines: str) -> None:
        if self._send is not None:
            self._send("\n".join(lines))

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def reloading(self) -> None:
        # systemd 253 and later match RELOADING=1 to ExecReload= by the monotonic time
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping: writing what was accepted")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")
