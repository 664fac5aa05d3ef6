"""The daemon's control socket: a unix stream socket that answers each connection with the live counters.

A client (``pylogd stats``) connects, sends one request line and reads one JSON document; the
daemon answers from its event loop, so the counters are a consistent snapshot between two events.
Requests: ``stats`` (the default) and the daemon's actions (``reload``: read the config again; the
answer says whether it was applied).

Who may ask: the socket is made 0660, for its owner and its group.  Under the systemd unit the daemon
runs as user and group ``pylogd``, so the socket is ``pylogd:pylogd``: an administrator who is not root
joins that group (``usermod -aG pylogd NAME``, then logs in again) to run ``pylogd stats`` and ``pylogd
reload``.  A daemon started as root without ``-u`` gives the socket to the group ``pylogd`` where it exists
(``make install`` creates it), else to ``adm`` (Debian's group for reading system logs), else it stays
root's; with ``-u USER[:GROUP]`` it belongs to that user and group.  A client refused by these permissions
is told so (:func:`pylogd.stats.main`), not asked whether pylogd runs.

A client never holds up the loop: its socket is non-blocking and watched by the loop, the request is
read as it comes (up to a newline, end of stream or :data:`MAX_REQUEST` bytes) and the reply written as
the client takes it.  At most :data:`MAX_CLIENTS` are served at once (one more is closed at once and
counted), and a client not done within :data:`CLIENT_DEADLINE` seconds is dropped by a timer.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import socket
from collections.abc import Callable
from typing import Any

from .log import Logger
from .loop import EventLoop, Timer

#: $PYLOGD_CONTROL_SOCKET changes the default (empty: none), for a test suite running many daemons at once
DEFAULT_PATH = os.environ.get("PYLOGD_CONTROL_SOCKET", "/run/pylogd/pylogd.sock")
#: how long ``_answers`` waits for a daemon that already listens on the path (at start-up, before the loop)
PROBE_TIMEOUT = 0.5
#: a client has this long to send its request and take the whole answer, then it is dropped
CLIENT_DEADLINE = 10.0
#: clients served at once; more are closed as they come, so a pile of idle connections costs bounded memory
MAX_CLIENTS = 64
#: the longest request line: every request is a word
MAX_REQUEST = 256
#: the groups a root daemon (no ``-u``) gives its socket to, the first that exists: the unit's, then
#: Debian's administrators' (see the module docstring)
CONTROL_GROUPS = ("pylogd", "adm")


def control_group() -> int | None:
    """The gid of the first of :data:`CONTROL_GROUPS` that exists, or None."""
    for name in CONTROL_GROUPS:
        with contextlib.suppress(KeyError):
            return grp.getgrnam(name).gr_gid
    return None


class _Client:
    """One connection: the request read so far, then the reply and how much of it has gone out."""

    __slots__ = ("deadline", "fd", "reply", "request", "sent", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.request = b""
        self.reply = b""
        self.sent = 0
        self.deadline: Timer | None = None


class ControlServer:
    def __init__(
        self,
        path: str,
        snapshot: Callable[[], dict[str, Any]],
        log: Logger,
        max_clients: int = MAX_CLIENTS,
        deadline: float = CLIENT_DEADLINE,
        actions: dict[str, Callable[[], dict[str, Any]]] | None = None,
    ) -> None:
        self.path = path
        self.snapshot = snapshot
        #: requests besides ``stats``, each answered with what its callable returns (run in the loop)
        self.actions = actions or {}
        self.log = log
        self.max_clients = max_clients
        self.deadline = deadline
        self.sock: socket.socket | None = None
        self._loop: EventLoop | None = None
        self._clients: dict[int, _Client] = {}
        self.answered = 0
        self.refused = 0  #: closed at once: MAX_CLIENTS were being served
        self.timed_out = 0  #: dropped at the deadline, request or reply unfinished

    def open(self, owner: tuple[int, int] | None = None) -> bool:
        """Bind the path, at start-up while still root (``-u`` may leave the daemon no right to make it);
        False (with the reason logged) when it cannot, which stops nothing else.  ``owner`` (uid, gid)
        gets the socket, 0660, so that its group may read the counters, and the directory when this made
        it, so that the daemon can still remove the socket at exit."""
        if _answers(self.path):
            self.log.notice(f"control socket {self.path} belongs to another running pylogd; this one has none")
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        directory = os.path.dirname(self.path) or "."
        try:
            made = not os.path.isdir(directory)
            os.makedirs(directory, mode=0o755, exist_ok=True)
            if made:
                os.chmod(directory, 0o755)  # whatever the umask: `pylogd stats` of the group goes through it
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # a stale one: nobody answered on it
            sock.bind(self.path)
            os.chmod(self.path, 0o660)
            if owner is not None:
                os.chown(self.path, *owner)
                if made:
                    os.chown(directory, *owner)
            elif os.geteuid() == 0 and (gid := control_group()) is not None:
                os.chown(self.path, -1, gid)  # root's socket would be root's alone: an admin group reads it
            sock.listen(MAX_CLIENTS)
        except OSError as exc:
            sock.close()
            self.log.error(f"cannot open control socket {self.path}: {exc.strerror}; `pylogd stats` will not work")
            return False
        self.sock = sock
        return True

    def start(self, loop: EventLoop) -> bool:
        """Answer on the socket from ``loop`` (opening it first unless :meth:`open` did)."""
        if self.sock is None and not self.open():
            return False
        assert self.sock is not None
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._accept)
        self.log.info(f"control socket {self.path}: `pylogd stats` shows the live counters")
        return True

    def statistics(self) -> dict[str, int]:
        return {
            "clients": len(self._clients),
            "answered": self.answered,
            "refused": self.refused,
            "timed_out": self.timed_out,
        }

    def _accept(self) -> None:
        assert self.sock is not None and self._loop is not None
        loop = self._loop
        # one round takes at most a backlog's worth, so a flood of connections shares the loop with the rest
        for _ in range(MAX_CLIENTS):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.every(10, 7, "control", f"control socket: {exc}")
                return
            if len(self._clients) >= self.max_clients:
                self.refused += 1
                conn.close()
                self.log.every(
                    10, 5, "control-refused", f"control socket: {self.max_clients} clients already, one more closed"
                )
                continue
            conn.setblocking(False)
            client = _Client(conn)
            self._clients[client.fd] = client
            loop.add_reader(client.fd, lambda client=client: self._readable(client))
            client.deadline = loop.call_later(self.deadline, lambda client=client: self._expire(client))

    def _readable(self, client: _Client) -> None:
        try:
            data = client.sock.recv(MAX_REQUEST + 1 - len(client.request))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)  # a client that went away: its loss
            return
        if not data and not client.request:
            self._drop(client)  # connected and went away (``_answers`` probing): nothing to answer
            return
        client.request += data
        line, newline, _ = client.request.partition(b"\n")
        if not (newline or not data or len(client.request) > MAX_REQUEST):
            return  # more to come
        assert self._loop is not None
        self._loop.remove_reader(client.fd)
        client.reply = self._reply(line if newline or not data else None)
        self._writable(client)
        if client.fd in self._clients:  # the rest waits until the client takes what it was sent
            self._loop.add_writer(client.fd, lambda: self._writable(client))

    def _reply(self, line: bytes | None) -> bytes:
        """The answer to a request line (None: one longer than :data:`MAX_REQUEST`)."""
        known = ", ".join(["stats", *self.actions])
        if line is None:
            reply: dict[str, Any] = {"error": f"request longer than {MAX_REQUEST} bytes; requests: {known}"}
        else:
            request = line.decode("ascii", "replace").strip() or "stats"
            if request == "stats":
                reply = self.snapshot()
                reply["control"] = self.statistics()
            elif request in self.actions:
                reply = self.actions[request]()
            else:
                reply = {"error": f"unknown request {request[:40]!r}; requests: {known}"}
        return json.dumps(reply).encode() + b"\n"

    def _writable(self, client: _Client) -> None:
        try:
            client.sent += client.sock.send(memoryview(client.reply)[client.sent :])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        if client.sent == len(client.reply):
            self.answered += 1
            self._drop(client)

    def _expire(self, client: _Client) -> None:
        client.deadline = None
        self.timed_out += 1
        self.log.every(
            10, 5, "control-deadline", f"control socket: a client not done after {self.deadline:g} s was dropped"
        )
        self._drop(client)

    def _drop(self, client: _Client) -> None:
        if self._clients.pop(client.fd, None) is None:
            return
        assert self._loop is not None
        self._loop.remove_reader(client.fd)  # whichever way it was watched
        if client.deadline is not None:
            client.deadline.cancel()
        client.sock.close()

    def close(self) -> None:
        for client in list(self._clients.values()):
            self._drop(client)
        if self.sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as exc:  # after -u, a directory the daemon's user may not write to
                self.log.notice(f"control socket {self.path} not removed ({exc.strerror}); the next start replaces it")


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(PROBE_TIMEOUT)
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
