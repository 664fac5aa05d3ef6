"""RELP, rsyslog's Reliable Event Logging Protocol: syslog messages over TCP, each acknowledged by the receiver.

A RELP frame is ``TXNR SP COMMAND SP DATALEN [SP DATA] LF``.  The client opens a session with ``open``
(its offers: protocol version 0, the ``syslog`` command), sends each message as a ``syslog`` command
with the next transaction number (1 to 999,999,999, then 1 again) and the receiver answers each with
``rsp`` and ``200 OK`` once it has taken the message (rsyslog's imrelp: queued, or written with a
direct queue); ``close`` ends the session; a receiver that shuts down sends ``serverclose``.

:class:`RelpTransport` is a :class:`pylogd.transport.Transport` with the same contract (connected
lazily, reconnected after a failure or SIGHUP, ``send`` raises OSError leaving in the list exactly what
was not delivered) where *delivered* means acknowledged: ``send`` sends the batch (at most WINDOW
messages waiting for their answer at a time) and returns once the receiver has answered every message.
When the connection breaks, the messages without an answer stay in the list and the runner sends them
again, with back-off, on the next connection (or keeps them in its spool): a receiver killed and started
again loses nothing.  The window that remains: a message the receiver took whose answer was lost with
the connection arrives twice (first arrivals stay in order).  A message the receiver refuses (an answer
other than 200) fails the batch the same way, logged with the receiver's words.

With a TLS context (rsyslog's imrelp ``tls="on"``) the session runs through TLS: the receiver's
certificate is checked as in the transport's tls mode, and a wrong one refused with the same line.
Byte counts on the wire do not matter here (the answers say what arrived), so a plain ssl socket does.

Statistics: ``connects``, ``oversized`` (always 0: every transport shows it) and ``resent`` (messages
sent without an answer on a connection that broke, so sent again).
"""

from __future__ import annotations

import contextlib
import errno
import re
import select
import socket
import ssl
import time

from .log import Logger
from .transport import SEND_TIMEOUT, Transport, tls_refusal

#: messages sent and not yet answered, at most: the receiver's answers (a few bytes each) must never fill
#: the socket buffers while pylogd is still sending
WINDOW = 1024
MAX_TXNR = 999_999_999
OFFERS = b"relp_version=0\nrelp_software=pylogd\ncommands=syslog"
#: how long close() waits for the answer to ``close``
CLOSE_WAIT = 1.0

_HEAD = re.compile(rb"(\d{1,9}) ([A-Za-z]{1,32}) (\d{1,9})([ \n])")


class RelpError(ConnectionError):
    """The receiver broke the protocol or refused: the connection is dropped and the batch goes again."""


def frames(buf: bytearray) -> list[tuple[int, bytes, bytes]]:
    """Take the complete frames off the front of ``buf``: (txnr, command, data) each."""
    found: list[tuple[int, bytes, bytes]] = []
    pos = 0
    while pos < len(buf):
        m = _HEAD.match(buf, pos)
        if m is None:
            if b"\n" in buf[pos : pos + 64] or len(buf) - pos >= 64:
                raise RelpError(errno.EPROTO, f"not a RELP frame: {bytes(buf[pos : pos + 64])!r}")
            break  # the head is not all here yet
        txnr, command, size = int(m.group(1)), bytes(m.group(2)), int(m.group(3))
        if m.group(4) == b"\n":
            if size:
                raise RelpError(errno.EPROTO, f"RELP frame without its {size} bytes of data")
            found.append((txnr, command, b""))
            pos = m.end()
            continue
        end = m.end() + size
        if end >= len(buf):
            break  # the data or its trailer is not all here yet
        if buf[end] != 0x0A:
            raise RelpError(errno.EPROTO, f"RELP frame {txnr} {command!r} does not end after its {size} bytes")
        found.append((txnr, command, bytes(buf[m.end() : end])))
        pos = end + 1
    del buf[:pos]
    return found


class RelpTransport(Transport):
    """Syslog messages (each entry one message, without framing) to a RELP receiver, each acknowledged."""

    def __init__(
        self,
        *,
        host: str,
        port: str,
        log: Logger,
        name: str,
        context: ssl.SSLContext | None = None,
        server_name: str = "",
    ) -> None:
        super().__init__("relp", host=host, port=port, path="", log=log, name=name)
        self.context = context  # RELP through TLS (rsyslog's imrelp tls="on") when set
        self.server_name = server_name or host
        self._txnr = 1
        self._buf = bytearray()
        self.resent = 0

    def statistics(self) -> dict[str, int]:
        return {**super().statistics(), "resent": self.resent}

    def peer(self) -> str:
        return f"relp{'+tls' if self.context is not None else ''}:{self.host}:{self.port}"

    def _handshake(self, sock: socket.socket) -> socket.socket:
        """TLS first when configured (the certificate checked as in tls mode), then the RELP session."""
        if self.context is not None:
            try:
                sock = self.context.wrap_socket(sock, server_hostname=self.server_name)
            except ssl.SSLCertVerificationError as exc:
                raise tls_refusal(self.host, self.port, self.server_name, exc) from None
        try:
            self._open(sock)
        except BaseException:
            if self.context is not None:
                sock.close()  # the wrapper owns the descriptor now
            raise
        return sock

    def _open(self, sock: socket.socket) -> None:
        self._buf.clear()
        self._txnr = 1
        sock.sendall(b"1 open %d %b\n" % (len(OFFERS), OFFERS))
        while True:
            for txnr, command, data in self._receive(sock):
                if command != b"rsp" or txnr != 1:
                    raise RelpError(errno.EPROTO, f"{self.peer()} answered open with {txnr} {command!r}")
                if not data.startswith(b"200"):
                    raise RelpError(errno.ECONNREFUSED, f"{self.peer()} refused the session: {_text(data)}")
                offers = dict(line.split(b"=", 1) if b"=" in line else (line, b"") for line in data.split(b"\n")[1:])
                if b"syslog" not in offers.get(b"commands", b"syslog").split(b","):
                    raise RelpError(errno.EPROTO, f"{self.peer()} does not take the syslog command")
                self._txnr = 2
                return

    def _receive(self, sock: socket.socket) -> list[tuple[int, bytes, bytes]]:
        """Wait for data from the receiver (the socket's timeout) and return the frames complete now."""
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError(errno.ECONNRESET, f"{self.peer()} closed the connection")
        self._buf += chunk
        return frames(self._buf)

    def _peer_left(self) -> bool:
        """Before a batch: a connection the receiver closed, reset or announced it would close."""
        sock = self.sock
        assert sock is not None
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLRDHUP)
        for _, events in poller.poll(0):
            if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL | select.POLLRDHUP):
                return True
            if events & select.POLLIN:
                timeout = sock.gettimeout()
                sock.setblocking(False)  # a TLS socket takes no MSG_DONTWAIT
                try:
                    chunk = sock.recv(65536)
                except (BlockingIOError, ssl.SSLWantReadError):  # TLS: a session ticket, no data
                    return False
                except OSError:
                    return True
                finally:
                    sock.settimeout(timeout)
                if not chunk:
                    return True
                self._buf += chunk
                try:
                    return any(command == b"serverclose" for _, command, _ in frames(self._buf))
                except RelpError:
                    return True
        return False

    def _send(self, entries: list[bytes]) -> None:
        if self.sock is not None and self._peer_left():
            self.log.notice(f"{self.name}: {self.peer()} closed the RELP session; reconnecting")
            self._close()
        if self.sock is None:
            self.sock = self._connect()
        try:
            self._exchange(entries)
        except OSError:
            self._close()
            raise

    def _exchange(self, entries: list[bytes]) -> None:
        """Send ``entries`` as syslog commands, WINDOW at most unanswered, and wait for every answer; the
        answered entries leave the list, also when the connection fails."""
        sock = self.sock
        assert sock is not None
        n = len(entries)
        acked = sent = 0
        waiting: list[int] = []  # the txnr of entries[acked:sent], in order
        head = 0  # waiting[head] answers entries[acked]
        try:
            while acked < n:
                if sent < n and sent - acked < WINDOW // 2:
                    end = min(n, acked + WINDOW)
                    txnr, out = self._txnr, []
                    for message in entries[sent:end]:
                        out.append(b"%d syslog %d %b\n" % (txnr, len(message), message))
                        waiting.append(txnr)
                        txnr = txnr + 1 if txnr < MAX_TXNR else 1
                    self._txnr = txnr
                    sock.sendall(b"".join(out))
                    sent = end
                for txnr, command, data in self._receive(sock):
                    if command == b"serverclose":
                        raise ConnectionResetError(errno.ECONNRESET, f"{self.peer()} is closing the session")
                    if command != b"rsp" or head >= len(waiting) or txnr != waiting[head]:
                        raise RelpError(errno.EPROTO, f"{self.peer()} sent {txnr} {command!r} out of turn")
                    if not data.startswith(b"200"):
                        raise RelpError(errno.EREMOTEIO, f"{self.peer()} refused a message: {_text(data)}")
                    head += 1
                    acked += 1
                if head > 4096:
                    del waiting[:head]
                    head = 0
        except OSError:
            self.resent += sent - acked
            raise
        finally:
            del entries[:acked]

    def close(self) -> None:
        """At stop: the session ends with ``close`` when no write is under way, then as every transport."""
        if self._lock.acquire(timeout=CLOSE_WAIT):
            try:
                if self.sock is not None:
                    self._goodbye(self.sock)
            finally:
                self._lock.release()
        super().close()

    def _goodbye(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            txnr = self._txnr
            sock.sendall(b"%d close 0\n" % txnr)
            sock.settimeout(CLOSE_WAIT)
            deadline = time.monotonic() + CLOSE_WAIT
            while time.monotonic() < deadline:
                if any(t == txnr and command == b"rsp" for t, command, _ in self._receive(sock)):
                    break
            sock.settimeout(SEND_TIMEOUT)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").replace("\n", " ")[:200]
