"""The daemon's control socket: a unix stream socket that answers each connection with the live counters.

A client (``pylogd stats``) connects, sends one request line and reads one JSON document; the
daemon answers from its event loop, so the counters are a consistent snapshot between two events.
Requests: ``stats`` (the default).  The socket is made 0660, so the daemon's group may read it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable
from typing import Any

from .log import Logger
from .loop import EventLoop

#: $PYLOGD_CONTROL_SOCKET changes the default (empty: none), for a test suite running many daemons at once
DEFAULT_PATH = os.environ.get("PYLOGD_CONTROL_SOCKET", "/run/pylogd/pylogd.sock")
#: a client has this long to send its request and take the answer: the event loop waits on it
CLIENT_TIMEOUT = 0.5


class ControlServer:
    def __init__(self, path: str, snapshot: Callable[[], dict[str, Any]], log: Logger) -> None:
        self.path = path
        self.snapshot = snapshot
        self.log = log
        self.sock: socket.socket | None = None
        self._loop: EventLoop | None = None

    def start(self, loop: EventLoop) -> bool:
        """Listen on the path; False (with the reason logged) when it cannot, which stops nothing else."""
        if _answers(self.path):
            self.log.notice(f"control socket {self.path} belongs to another running pylogd; this one has none")
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o755, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # a stale one: nobody answered on it
            sock.bind(self.path)
            os.chmod(self.path, 0o660)
            sock.listen(8)
        except OSError as exc:
            sock.close()
            self.log.error(f"cannot open control socket {self.path}: {exc.strerror}; `pylogd stats` will not work")
            return False
        self.sock, self._loop = sock, loop
        loop.add_reader(sock.fileno(), self._accept)
        self.log.info(f"control socket {self.path}: `pylogd stats` shows the live counters")
        return True

    def _accept(self) -> None:
        assert self.sock is not None
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.every(10, 7, "control", f"control socket: {exc}")
                return
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(CLIENT_TIMEOUT)
        try:
            request = conn.recv(256).decode("ascii", "replace").strip() or "stats"
            if request == "stats":
                reply: dict[str, Any] = self.snapshot()
            else:
                reply = {"error": f"unknown request {request[:40]!r}; requests: stats"}
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass  # a client that went away or took too long: its loss

    def close(self) -> None:
        if self.sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(CLIENT_TIMEOUT)
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


def request(path: str, what: str = "stats", timeout: float = 5.0) -> dict[str, Any]:
    """Ask the daemon listening on ``path``; raises OSError when nobody does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(what.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))
