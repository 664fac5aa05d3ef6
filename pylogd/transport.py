"""Transports: where an output's lines go over a socket, apart from what the lines say.

An output that sends to a collector is a format (it turns a record into bytes: a JSON line, a carbon
line) plus a transport from :func:`open_transport`.  It sets ``blocking = True`` (a socket can block:
the runner calls its ``write`` from a worker thread), passes each batch to :meth:`Transport.send`, and
leaves waiting, retrying with back-off and spooling to the runner, as every output does.  The
configuration of an address is checked once, the same way for every output: :func:`check_address`.

What every transport guarantees:

* **Whole entries, in order.**  ``send`` writes the entries in order.  On failure it raises OSError
  and leaves in the list exactly what was not delivered, the same contract as ``Output.write``: the
  runner retries those, with back-off, from its backlog or spool, so nothing is kept twice.
* **The partial-write rule of a stream.**  An entry cut by the failure stays in the list whole and goes
  again whole on the next connection, where its first part would make no line.  (A file keeps the
  other half instead, :func:`pylogd.files.write_all`: a file continues where it stopped, a new
  connection does not.)
* **Reconnect.**  A socket is connected lazily, when there is something to send (a collector that is
  not up must not keep the daemon from starting), and again after a failure or :meth:`reopen`
  (SIGHUP).  Before each batch a stream checks for a peer that closed, so a batch is not sent into a
  dead connection.  A peer that takes no byte for SEND_TIMEOUT seconds is treated as gone.
  :meth:`close` (at stop) shuts the socket down first, so a worker blocked on a peer that reads
  nothing lets go at once.

The modes:

``tcp`` (:class:`StreamTransport`)
    A stream of entries; what the peer's kernel never acknowledged goes again.  After each batch one
    getsockopt (TCP_INFO's ``tcpi_bytes_acked``, Linux 4.2 and later) tells how much of the connection
    the peer's kernel has acknowledged; the entries sent since are kept (at most what the socket's send
    buffer holds, where the kernel keeps every unacknowledged byte).  When the connection breaks (a
    failed send, or a peer that closed or reset it, seen before the next batch) the count is read once
    more (it survives a reset) and the entries not acknowledged are sent again, first, on the next
    connection: so a batch written into a connection whose peer had just died is not lost.  The window
    that remains: an entry the peer's kernel acknowledged but its application had not read when it
    died is lost (a TCP socket does not tell the sender what the other end read); an entry the
    application read before its kernel's acknowledgement came (delayed ACK) may arrive twice; first
    arrivals stay in order.  A peer that dies while nothing is sent gets its unacknowledged entries
    with the next batch, or at :meth:`close` on one last connection; what cannot go then is counted
    (``lost``) and logged.  Without ``tcpi_bytes_acked`` (older kernels) entries sent are done.
``unix`` (:class:`UnixStreamTransport`)
    A stream to a unix socket, at least once.  After each batch one ioctl (SIOCOUTQ) tells how much
    the collector has not read yet; the entries that may be in it are kept (at most what the socket
    buffers hold).  A collector that closes with entries unread makes the kernel discard them and
    report ECONNRESET: the kept entries are sent again, first, on the next connection, the first of
    them alone until the collector has read it, and so on while the collector closes its connections
    (so a collector that reads one entry per connection still gets every entry).  A watcher thread
    looks at the unread entries while nothing else is sent, so a collector that closes during a lull
    gets them again at once.  The window that remains: an entry the collector read just before
    closing may arrive twice (first arrivals stay in order); entries that could not be sent again
    before :meth:`close` are counted (``lost``) and logged.
``tls`` (:class:`TLSTransport`)
    TCP mode through TLS (1.2 or later): the server's certificate is checked against a CA file (or the
    system's CAs) and the name it must carry (``server_name``, else ``host``); a client certificate and key
    may be given.  A certificate that fails the check refuses the connection with one error naming the
    peer, the expected name and the reason, and the connection is tried again with back-off (the server's
    certificate may be fixed).  The TLS records are made in memory (ssl.MemoryBIO) and written to the TCP
    socket by pylogd, so it knows how many bytes on the wire each entry took: what the peer's kernel
    never acknowledged goes again on the next connection exactly as in ``tcp`` mode.  Entries are
    encrypted in groups of at most 16 KiB, one write each; a group counts as acknowledged when all its
    bytes are.
``udp`` (:class:`DatagramTransport`)
    One datagram per entry, nothing acknowledged.  An entry too big for a datagram is dropped,
    counted (``oversized``) and logged; the others go.

Statistics (SIGUSR1, the control socket): ``connects`` (connections made), ``oversized`` (entries too
big for a datagram) and, in tcp, tls and unix modes, ``resent`` (entries sent again) and ``lost``.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import os
import select
import socket
import ssl
import struct
import termios
import threading
import time
from collections.abc import Callable

from .log import ERROR, NOTICE, Logger
from .plugin import Option, Output, PluginError, path_option, str_option

MODES = ("tcp", "udp", "unix")
UNIX_PATH_MAX = 108  # sun_path, the terminating NUL included
CONNECT_TIMEOUT = 5.0
#: a collector that takes no byte for this long is treated as gone: the connection is dropped
SEND_TIMEOUT = 20.0
#: unix mode, after a collector closed with lines unread: how long the first line sent again waits alone
#: to be read before the rest follows it
CAREFUL_WAIT = 5.0


def tls_options(when: str, peer: str = "server") -> tuple[Option, ...]:
    """An output's options for the tls mode (what :func:`open_transport` takes); ``when`` names the modes
    that read them, ``peer`` what the other end is called."""
    return (
        path_option("ca_file", "", f"{when}: the CAs (PEM) that sign the {peer}'s certificate; empty: the system's"),
        path_option("cert_file", "", f"{when}: a client certificate (PEM), for a {peer} that asks for one"),
        path_option("key_file", "", f"{when}: the client certificate's key (PEM); empty: in cert_file"),
        str_option("server_name", "", f"{when}: the name the {peer}'s certificate must carry; empty: host"),
    )


TLS_OPTION_NAMES = ("ca_file", "cert_file", "key_file", "server_name")


def tls_arguments(options: dict) -> dict[str, str]:
    """The tls options of an output declaring :func:`tls_options`, as :func:`open_transport` takes them."""
    return {name: options[name] for name in TLS_OPTION_NAMES}


def refuse_tls_options(options: dict, applies_to: str) -> None:
    """For an output not configured for TLS: a tls option set anyway is a mistake, named in one line
    (``applies_to``: where it does apply, e.g. "mode tls")."""
    for name in TLS_OPTION_NAMES:
        if options[name]:
            raise PluginError(f"{name} applies to {applies_to}", option=name)


def check_address(mode: str, host: str, port: str, path: str, *, path_option: str = "path") -> None:
    """Refuse an address ``mode`` cannot use, with PluginError naming the option: ``path`` (named
    ``path_option`` in the output's options) for unix, ``host`` and ``port`` for tcp, tls and udp."""
    if mode not in MODES and mode != "tls":
        raise PluginError(f'unknown mode "{mode}" (choose {", ".join(MODES)})', option="mode")
    if mode == "unix":
        raw = os.fsencode(path)
        if not raw:
            raise PluginError(f"mode unix needs the socket's path in {path_option}", option=path_option)
        if len(raw) >= UNIX_PATH_MAX:
            raise PluginError(
                f"the unix socket path is {len(raw)} bytes long; at most {UNIX_PATH_MAX - 1} fit", path_option
            )
        return
    if not host or len(host) > 253:
        raise PluginError("host must be a host name or address of at most 253 characters", option="host")
    if port.isdigit():
        if not 1 <= int(port) <= 65535:
            raise PluginError(f"port {port} is out of range (1 to 65535)", option="port")
    else:
        try:
            socket.getservbyname(port, "udp" if mode == "udp" else "tcp")
        except OSError:
            raise PluginError(f'port "{port}" is neither a number nor a {mode} service name', "port") from None


class Transport:
    """One socket to one peer, written from the runner's worker thread (see the module's docstring)."""

    def __init__(self, mode: str, *, host: str, port: str, path: str, log: Logger, name: str) -> None:
        self.mode = mode
        self.host, self.port, self.path = host, port, path
        self.log = log
        self.name = name
        self.sock: socket.socket | None = None
        self.connects = 0
        self.oversized = 0
        #: a stream's greeting: bytes every new connection sends before any entry (IPFIX's templates);
        #: not an entry, so never kept or sent again on a later connection, where its own greeting goes
        self.greeting: Callable[[], bytes] | None = None
        self._reconnect = False
        self._stopping = False
        self._lock = threading.Lock()  # the socket, between the worker and close()/SIGHUP

    def peer(self) -> str:
        if self.mode == "unix":
            return f"unix:{self.path}"
        return f"{self.mode}:{self.host}:{self.port}"

    def statistics(self) -> dict[str, int]:
        # oversized is 0 but for datagrams: every socket mode has shown the same counters
        return {"connects": self.connects, "oversized": self.oversized}

    def send(self, entries: list[bytes]) -> None:
        """Write every entry whole, in order; on failure raise OSError with ``entries`` holding exactly what
        was not delivered (an entry cut by the failure whole: it goes again whole on the next connection)."""
        with self._lock:
            if self._reconnect:
                self._reconnect = False
                self._close()  # our close: the peer still reads what it was sent
                self._forget_connection()
            self._send(entries)

    def reopen(self) -> None:
        """SIGHUP: a new connection before the next send."""
        self._reconnect = True
        self.log.notice(f"{self.name}: reconnecting to {self.peer()} before the next write")

    def close(self) -> None:
        """At stop: a send blocked on a peer that reads nothing lets go, then the socket is closed."""
        self._stopping = True
        self._stopping_hook()
        sock = self.sock
        if sock is not None:
            # a worker still blocked in send() on a collector that takes nothing wakes up now
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._lock.acquire(timeout=5):
            try:
                self._last_send()
                self._close()
            finally:
                self._lock.release()

    # -- for the modes ------------------------------------------------------------------------------

    def _send(self, entries: list[bytes]) -> None:
        raise NotImplementedError

    def _forget_connection(self) -> None:
        """What a mode knows of the connection just closed by us (reopen) no longer applies."""

    def _stopping_hook(self) -> None:
        """close() has begun: threads of the mode end."""

    def _last_send(self) -> None:
        """close(), holding the lock: what the mode still owes the peer goes now, or is counted lost."""

    def _connect(self) -> socket.socket:
        if self.mode == "unix":
            candidates = [(socket.AF_UNIX, socket.SOCK_STREAM, 0, self.path)]
        else:
            kind = socket.SOCK_DGRAM if self.mode == "udp" else socket.SOCK_STREAM
            infos = socket.getaddrinfo(self.host, self.port, socket.AF_UNSPEC, kind)
            candidates = [(family, stype, proto, addr) for family, stype, proto, _, addr in infos]
        error: OSError = OSError(f"no address for {self.peer()}")
        for family, stype, proto, addr in candidates:
            sock = socket.socket(family, stype | socket.SOCK_CLOEXEC, proto)
            try:
                sock.settimeout(CONNECT_TIMEOUT)
                sock.connect(addr)
                sock = self._handshake(sock)
                sock.settimeout(SEND_TIMEOUT)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            self.connects += 1
            self.log.notice(f"{self.name}: connected to {self.peer()}")
            return sock
        raise error

    def _handshake(self, sock: socket.socket) -> socket.socket:
        """After the connect, before the connection counts as made: what a protocol on top says first.
        Returns the socket to write to (a TLS socket wrapping ``sock``, say)."""
        return sock

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class _KeepingStream(Transport):
    """A stream that keeps the entries sent on the connection until the peer is known to have them, and
    sends them again, first, on the next connection when it is not."""

    def __init__(self, mode: str, *, host: str, port: str, path: str, log: Logger, name: str) -> None:
        super().__init__(mode, host=host, port=port, path=path, log=log, name=name)
        # entries sent whole on this connection that the peer may not have, oldest first
        self._inflight: collections.deque[bytes] = collections.deque()
        self._inflight_bytes = 0
        self._resend: list[bytes] = []  # entries to send again, first, on the next connection
        self.resent = 0
        self.lost = 0

    def statistics(self) -> dict[str, int]:
        return {**super().statistics(), "resent": self.resent, "lost": self.lost}

    def _send_kept(self, entries: list[bytes]) -> None:
        """Send the entries to send again, then ``entries``; every entry sent whole is kept.  On a failure
        the entries sent whole leave ``entries`` (kept), and an entry cut by it stays, to go again whole
        on the next connection, where its first part would make no line."""
        assert self.sock is not None
        resend = self._resend
        lines = resend + entries if resend else entries
        data = memoryview(b"".join(lines))
        sent = 0
        try:
            while sent < len(data):
                sent += self.sock.send(data[sent:])
        except OSError:
            whole, done = _whole(lines, sent)
            again = min(whole, len(resend))
            self._keep(lines[:whole], done, again)
            del resend[:again]
            del entries[: whole - again]
            raise
        self._keep(lines if resend else list(lines), len(data), len(resend))
        resend.clear()

    def _keep(self, lines: list[bytes], nbytes: int, again: int) -> None:
        self._inflight.extend(lines)
        self._inflight_bytes += nbytes
        self.resent += again

    def _resend_at_stop(self, send: Callable[[list[bytes]], None], why: str) -> None:
        """The entries to send again get one last connection; what cannot go is counted and logged as lost."""
        if not self._resend:
            return
        count = len(self._resend)
        try:
            self._open()
            send([])
        except OSError as exc:
            self.lost += len(self._resend)
            self.log.error(
                f"{self.name}: {len(self._resend)} lines {self.peer()} {why} could not be sent again ({exc}); "
                f"lost ({self.lost} since start)"
            )
            self._resend.clear()
            return
        self.log.notice(f"{self.name}: sent {count} lines again to {self.peer()} at stop")

    def _open(self) -> None:
        """Connect, and greet the peer when the output asked for it."""
        self.sock = self._connect()
        if self.greeting is not None:
            self._greet(self.greeting())

    def _greet(self, data: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(data)


class StreamTransport(_KeepingStream):
    """TCP: a stream of entries; a peer that closed is seen before a batch, a cut entry goes again whole,
    and the entries the peer's kernel never acknowledged go again on the next connection."""

    def __init__(self, mode: str, *, host: str, port: str, path: str, log: Logger, name: str) -> None:
        super().__init__(mode, host=host, port=port, path=path, log=log, name=name)
        # the kept entries are the last _inflight_bytes of the _sent bytes sent on this connection
        self._sent = 0
        self._acked_at_connect = 0  # tcpi_bytes_acked counts the SYN: the data's count starts after it
        self._broken_at_stop = False

    def _connect(self) -> socket.socket:
        sock = super()._connect()
        self._sent = 0
        self._acked_at_connect = _bytes_acked(sock) or 0
        return sock

    def _greet(self, data: bytes) -> None:
        super()._greet(data)
        self._sent += len(data)  # the stream's first bytes: the kept entries' count starts after them

    def _forget_connection(self) -> None:
        # our own close: the kernel still delivers what it holds, then sends FIN
        self._inflight.clear()
        self._inflight_bytes = 0

    def _send(self, entries: list[bytes]) -> None:
        if self.sock is not None and self._peer_left():
            self.log.notice(f"{self.name}: {self.peer()} closed the connection; reconnecting")
            self._connection_broken()
        if self.sock is None:
            self._open()
        try:
            self._send_kept(entries)
        except OSError:
            if self._stopping:  # close() shut the socket to free a worker stuck on a peer that reads nothing
                self._close()
            else:
                self._connection_broken()
            raise
        entries.clear()
        self._forget_acknowledged()

    def _peer_left(self) -> bool:
        assert self.sock is not None
        return _peer_gone(self.sock)

    def _keep(self, lines: list[bytes], nbytes: int, again: int) -> None:
        super()._keep(lines, nbytes, again)
        self._sent += nbytes

    def _forget_acknowledged(self) -> None:
        """Forget the kept entries the peer's kernel has acknowledged: one getsockopt for the batch.  What
        stays is bounded by the socket's send buffer, where the kernel holds every unacknowledged byte."""
        assert self.sock is not None
        inflight = self._inflight
        acked = _bytes_acked(self.sock)
        if acked is None:  # a kernel before 4.2 does not tell: the entries sent are done, as they were
            inflight.clear()
            self._inflight_bytes = 0
            return
        unacked = self._sent - (acked - self._acked_at_connect)
        while inflight and self._inflight_bytes - len(inflight[0]) >= unacked:
            self._inflight_bytes -= len(inflight.popleft())
        if unacked <= 0:
            inflight.clear()
            self._inflight_bytes = 0

    def _connection_broken(self) -> None:
        """The connection failed or the peer closed it: the entries its kernel never acknowledged go again,
        first, on the next connection (the count survives a reset)."""
        self._forget_acknowledged()
        self._close()
        if self._inflight:
            self._resend[:0] = self._inflight
            self.log.every(
                10,
                ERROR,
                "unacked",
                f"{self.name}: the connection to {self.peer()} broke with lines it had not acknowledged; "
                f"sending those {len(self._inflight)} lines again",
            )
        self._inflight.clear()
        self._inflight_bytes = 0

    def _stopping_hook(self) -> None:
        # before close() shuts the socket down, which a later look could not tell from the peer's close
        sock = self.sock
        try:
            self._broken_at_stop = sock is not None and _peer_closed(sock)
        except (OSError, ValueError):  # the worker closed it meanwhile (ValueError: a closed socket's fd, -1)
            self._broken_at_stop = False

    def _last_send(self) -> None:
        """At stop: entries a broken connection left unacknowledged get one last connection.  On a
        connection that works the kernel still delivers what it holds."""
        if self.sock is not None and self._broken_at_stop:
            self._connection_broken()
        self._resend_at_stop(self._send, "had not acknowledged when the connection broke")


#: OpenSSL's verify codes of a certificate for another name
X509_V_ERR_HOSTNAME_MISMATCH = 62
X509_V_ERR_IP_ADDRESS_MISMATCH = 64


class TLSRefused(OSError):
    """The server's certificate failed the check: the message names the peer, the expected name, the reason."""


def tls_refusal(host: str, port: str, server_name: str, exc: ssl.SSLCertVerificationError) -> TLSRefused:
    """The error of a server certificate that failed the check, in one line: the peer, the expected name, why."""
    where = f"TLS: refused the certificate of {host}:{port}"
    if exc.verify_code in (X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH):
        return TLSRefused(f'{where}: it is not valid for the expected name "{server_name}" ({exc.verify_message})')
    return TLSRefused(f'{where} (expected name "{server_name}"): {exc.verify_message}')


#: the plaintext encrypted in one write: a TLS record holds at most 16 KiB
TLS_GROUP = 16384


class TLSTransport(StreamTransport):
    """TCP through TLS, the records made in memory so that each entry's bytes on the wire are known and
    the entries the peer's kernel never acknowledged go again, as in tcp mode."""

    def __init__(
        self,
        mode: str,
        *,
        host: str,
        port: str,
        path: str,
        log: Logger,
        name: str,
        context: ssl.SSLContext,
        server_name: str = "",
    ) -> None:
        super().__init__(mode, host=host, port=port, path=path, log=log, name=name)
        self.context = context
        self.server_name = server_name or host
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._handshake_bytes = 0
        self._acked_before_handshake = 0
        self._said_goodbye = False
        # parallel to _inflight: the bytes on the wire of each kept entry; a group's on its first entry, 0 on
        # the others, so that the group's entries leave together, once all its bytes are acknowledged
        self._wire: collections.deque[int] = collections.deque()

    def _handshake(self, sock: socket.socket) -> socket.socket:
        self._incoming, self._outgoing = incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.context.wrap_bio(incoming, outgoing, server_side=False, server_hostname=self.server_name)
        self._acked_before_handshake = _bytes_acked(sock) or 0  # the SYN
        written = 0
        while True:
            try:
                tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            except ssl.SSLCertVerificationError as exc:
                with contextlib.suppress(OSError):  # the alert tells the server why
                    sock.sendall(outgoing.read())
                raise tls_refusal(self.host, self.port, self.server_name, exc) from None
            data = outgoing.read()
            if data:
                sock.sendall(data)
                written += len(data)
            if done:
                break
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionResetError(
                    errno.ECONNRESET, f"{self.peer()} closed the connection during the TLS handshake"
                )
            incoming.write(chunk)
        self._tls = tls
        self._handshake_bytes = written
        return sock

    def close(self) -> None:
        """At stop: a close_notify first on a connection that works when no write is under way (the
        server then knows nothing was cut), then as every transport."""
        if self._lock.acquire(timeout=1.0):
            try:
                if self.sock is not None and self._tls is not None and not _peer_closed(self.sock):
                    # decided now: the server may well close its end once it has read the close_notify
                    self._broken_at_stop = False
                    self._said_goodbye = True
                    self._notify_close()
            finally:
                self._lock.release()
        super().close()

    def _stopping_hook(self) -> None:
        if not self._said_goodbye:
            super()._stopping_hook()

    def _notify_close(self) -> None:
        if self.sock is not None and self._tls is not None:
            with contextlib.suppress(OSError, ssl.SSLError, ValueError):
                self._tls.unwrap()
            with contextlib.suppress(OSError, ValueError):
                self.sock.send(self._outgoing.read(), socket.MSG_DONTWAIT)
            self._tls = None

    def _connect(self) -> socket.socket:
        sock = super()._connect()
        # the stream's bytes begin with our part of the handshake, which the peer may have acknowledged
        self._sent = self._handshake_bytes
        self._acked_at_connect = self._acked_before_handshake
        return sock

    def _close(self) -> None:
        self._notify_close()  # when the socket takes it at once
        super()._close()

    def _greet(self, data: bytes) -> None:
        assert self.sock is not None and self._tls is not None
        self._tls.write(data)
        wire = self._outgoing.read()
        self.sock.sendall(wire)
        self._sent += len(wire)

    def _forget_connection(self) -> None:
        super()._forget_connection()
        self._wire.clear()

    def _peer_left(self) -> bool:
        """A closed or reset connection, or the server's close_notify.  What the server sends (session
        tickets) goes to the TLS object, which must see it in order."""
        sock, tls = self.sock, self._tls
        assert sock is not None
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLRDHUP)
        for _, events in poller.poll(0):
            if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                return True
            if events & select.POLLIN:
                try:
                    # one recv per readiness: on a socket with a timeout Python waits out the timeout when a
                    # recv finds nothing, whatever MSG_DONTWAIT says (a 20 s stall, then a reconnect, per
                    # batch after a server's session tickets)
                    while True:
                        chunk = sock.recv(65536, socket.MSG_DONTWAIT)
                        if not chunk:
                            return True
                        self._incoming.write(chunk)
                        if not poller.poll(0):
                            break
                except BlockingIOError:
                    pass
                except OSError:
                    return True
                if tls is None:
                    return True
                try:
                    while tls.read(65536):  # a server sends no data: whatever it is, it is read and dropped
                        pass
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLZeroReturnError, ssl.SSLError):
                    return True
            if events & select.POLLRDHUP:
                return True
        return False

    def _send_kept(self, entries: list[bytes]) -> None:
        """As for tcp, with each group of entries encrypted in one write: a group cut by a failure goes
        again whole on the next connection, a group written whole is kept until it is acknowledged."""
        assert self.sock is not None and self._tls is not None
        resend = self._resend
        lines = resend + entries if resend else list(entries)
        tls, outgoing = self._tls, self._outgoing
        chunks: list[bytes] = []
        groups: list[tuple[int, int]] = []  # (entries, bytes on the wire) per write
        i, n = 0, len(lines)
        while i < n:
            j, size = i + 1, len(lines[i])
            while j < n and size + len(lines[j]) <= TLS_GROUP:
                size += len(lines[j])
                j += 1
            tls.write(b"".join(lines[i:j]) if j - i > 1 else lines[i])
            wire = outgoing.read()  # with what the TLS object still owed the peer, if anything
            chunks.append(wire)
            groups.append((j - i, len(wire)))
            i = j
        data = memoryview(b"".join(chunks))
        sent = 0
        try:
            while sent < len(data):
                sent += self.sock.send(data[sent:])
        except OSError:
            whole = done = 0
            for count, size in groups:
                if done + size > sent:
                    break
                done += size
                whole += count
            again = min(whole, len(resend))
            self._keep_groups(lines[:whole], groups, done, again)
            del resend[:again]
            del entries[: whole - again]
            raise
        self._keep_groups(lines, groups, len(data), len(resend))
        resend.clear()

    def _keep_groups(self, lines: list[bytes], groups: list[tuple[int, int]], nbytes: int, again: int) -> None:
        """Keep ``lines``, the first entries of ``groups``, with their bytes on the wire."""
        self._keep(lines, nbytes, again)
        wire, left = self._wire, len(lines)
        for count, size in groups:
            if left <= 0:
                break
            wire.append(size)
            wire.extend([0] * (count - 1))
            left -= count

    def _forget_acknowledged(self) -> None:
        assert self.sock is not None
        inflight, wire = self._inflight, self._wire
        acked = _bytes_acked(self.sock)
        if acked is None:
            inflight.clear()
            wire.clear()
            self._inflight_bytes = 0
            return
        unacked = self._sent - (acked - self._acked_at_connect)
        while inflight and self._inflight_bytes - wire[0] >= unacked:
            self._inflight_bytes -= wire.popleft()
            inflight.popleft()
        if unacked <= 0:
            inflight.clear()
            wire.clear()
            self._inflight_bytes = 0

    def _connection_broken(self) -> None:
        super()._connection_broken()
        self._wire.clear()


class DatagramTransport(Transport):
    """UDP: one datagram per entry; an entry too big for a datagram is dropped and counted."""

    def _send(self, entries: list[bytes]) -> None:
        if self.sock is None:
            self.sock = self._connect()
        send = self.sock.send
        n = 0
        try:
            for entry in entries:
                try:
                    send(entry)
                except OSError as exc:
                    if exc.errno != errno.EMSGSIZE:  # this entry can never go; the others can
                        raise
                    self.oversized += 1
                    self.log.every(
                        10, ERROR, "oversized", f"{self.name}: dropped a {len(entry)}-byte line, too big for a datagram"
                    )
                n += 1
        except OSError:
            self._close()
            raise
        finally:
            del entries[:n]


class UnixStreamTransport(_KeepingStream):
    """A unix stream socket, at least once: entries a collector closed on unread go again."""

    def __init__(self, mode: str, *, host: str, port: str, path: str, log: Logger, name: str) -> None:
        super().__init__(mode, host=host, port=port, path=path, log=log, name=name)
        self._careful = False  # the next connection's first entry goes alone and waits to be read
        self._unread = threading.Event()  # set while entries may wait unread: the watcher looks at them
        self._watcher: threading.Thread | None = None

    def _forget_connection(self) -> None:
        self._inflight.clear()
        self._inflight_bytes = 0

    def _stopping_hook(self) -> None:
        self._unread.set()  # the watcher sees _stopping and ends

    def _send(self, entries: list[bytes]) -> None:
        self._write_unix(entries)
        if self._inflight:
            self._watch()

    def _write_unix(self, entries: list[bytes]) -> None:
        """Send what must go again, then ``entries``; a collector that closes is reconnected at once as
        long as each connection gets a line read (a careful connection that gets none raises: the runner
        backs off)."""
        while True:
            if self._stopping:
                raise OSError(errno.ESHUTDOWN, "stopping")
            if self.sock is not None and (lossy := _unix_peer_closed(self.sock)) is not None:
                self._connection_lost(lossy)
            if not self._resend and not entries:
                return
            if self.sock is None:
                self.sock = self._connect()
            if self._careful and not self._first_line_read(entries):
                if self.sock is not None:
                    # alive but slow: the rest follows, the first line stays kept until it is read
                    self._careful = False
                else:
                    raise OSError(errno.ECONNRESET, f"{self.peer()} closed the connection without reading")
            if self.sock is None:
                continue  # closed, once it had read the careful line: the next connection
            try:
                self._send_kept(entries)
                return
            except OSError as exc:
                if self._stopping:
                    raise
                self._connection_lost(exc.errno != errno.EPIPE)

    def _watch(self) -> None:
        """Have the watcher thread follow the lines not read yet: a collector may close with them unread
        while nothing else is written for a long time."""
        self._unread.set()
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watching, name=f"unread-{self.name}", daemon=True)
            self._watcher.start()

    def _watching(self) -> None:
        """While lines may be unread, look every few milliseconds (nothing wakes a sender when its data is
        read) whether the collector read them or closed; after a close, send them again."""
        step = 0.001
        while self._unread.wait() and not self._stopping:
            time.sleep(step)
            step = min(step * 2, 0.05)
            with self._lock:
                if self._stopping:
                    return
                if self.sock is not None and self._inflight:
                    if (lossy := _unix_peer_closed(self.sock)) is None:
                        self._forget_read()
                    else:
                        self._connection_lost(lossy)
                if self._resend:
                    try:
                        self._write_unix([])
                        step = 0.001
                    except OSError:
                        step = 0.25  # the collector is away or reads nothing: look again later
                        continue
                if not self._inflight and not self._resend:
                    self._unread.clear()
                    step = 0.001

    def _forget_read(self) -> None:
        """Forget the kept lines the collector has read: one ioctl for the batch.  SIOCOUTQ counts the
        unread buffers by their size in memory, which is at least what they hold: the lines within that
        many bytes of the end may be unread, the ones before are read."""
        assert self.sock is not None
        unread = struct.unpack("i", fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        inflight = self._inflight
        if unread < self._inflight_bytes and _unix_peer_closed(self.sock) is not None:
            return  # a close discards what is unread: the count says nothing then (the next write sees it)
        if unread <= 0:
            inflight.clear()
            self._inflight_bytes = 0
            return
        while inflight and self._inflight_bytes - len(inflight[0]) >= unread:
            self._inflight_bytes -= len(inflight.popleft())

    def _connection_lost(self, lossy: bool) -> None:
        """The collector closed.  With lines unread (``lossy``: ECONNRESET) the kernel discarded them and
        the kept lines go again; without, it read everything sent."""
        self._close()
        if lossy and self._inflight:
            self._resend[:0] = self._inflight
            self._careful = True
            self.log.every(
                10,
                ERROR,
                "unread",
                f"{self.name}: {self.peer()} closed the connection with lines unread; "
                f"sending the {len(self._resend)} lines it may not have read again",
            )
        else:  # a collector that closes after each line must not fill the log
            self.log.every(10, NOTICE, "closed", f"{self.name}: {self.peer()} closed the connection; reconnecting")
        self._inflight.clear()
        self._inflight_bytes = 0

    def _first_line_read(self, entries: list[bytes]) -> bool:
        """Careful: send the first line alone and wait (up to CAREFUL_WAIT) until the collector has read
        it or closed.  True when it read it; False with the connection closed (and the line kept to go
        again) or, with the connection still open, when the collector took too long."""
        assert self.sock is not None
        try:
            if self._resend:
                first, later = self._resend[:1], self._resend[1:]
                self._resend = first
                try:
                    self._send_kept([])
                finally:
                    self._resend += later  # after the first line, unless it went
            elif entries:
                one = entries[:1]
                try:
                    self._send_kept(one)
                finally:
                    if not one:  # it went
                        del entries[:1]
            else:
                return True
        except OSError as exc:
            self._connection_lost(exc.errno != errno.EPIPE)
            return False
        sock, poller = self.sock, select.poll()
        poller.register(sock, select.POLLRDHUP)
        # nothing wakes a sender when its data is read: look again after 1 ms, 2, 4... up to 50
        step, deadline = 0.001, time.monotonic() + CAREFUL_WAIT
        while time.monotonic() < deadline and not self._stopping:
            lossy = _unix_peer_closed(sock)
            if lossy is not None:
                self._connection_lost(lossy)
                self._careful = True  # read or not, this collector closes: its next connection too
                return not lossy
            if not self._inflight:
                self._careful = False
                return True
            poller.poll(step * 1000)
            step = min(step * 2, 0.05)
            self._forget_read()
        return False

    def _last_send(self) -> None:
        """At stop: a collector gone with lines unread gets them on one last connection."""
        if self.sock is not None and (lossy := _unix_peer_closed(self.sock)) is not None:
            self._connection_lost(lossy)
        self._resend_at_stop(self._send_kept, "did not read before it closed")


def tls_context(*, ca_file: str = "", cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """A client context for tls mode: TLS 1.2 or later, the server's certificate checked against
    ``ca_file`` (PEM; the system's CAs when empty) and its name; ``cert_file`` and ``key_file`` (PEM) a
    client certificate, when the server asks for one (``key_file`` may be left out when ``cert_file``
    holds the key).  A file that cannot be used raises PluginError naming its option."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # checks the certificate and the host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if ca_file:
            context.load_verify_locations(cafile=ca_file)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (OSError, ssl.SSLError) as exc:
        raise PluginError(f"cannot use the CA file {ca_file}: {_reason(exc)}", option="ca_file") from None
    if key_file and not cert_file:
        raise PluginError("key_file is set but cert_file, the certificate it goes with, is not", option="cert_file")
    if cert_file:
        try:
            context.load_cert_chain(cert_file, key_file or None)
        except (OSError, ssl.SSLError) as exc:
            files = f"{cert_file} and {key_file}" if key_file else cert_file
            raise PluginError(f"cannot use the certificate {files}: {_reason(exc)}", option="cert_file") from None
    return context


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)


class TransportOutput(Output):
    """An output whose entries go out through one :class:`Transport` (``self.transport``, made by the
    output's ``configure`` or ``start``): its writes, SIGHUP (a new connection), counters and stop."""

    transport: Transport | None = None

    def write(self, entries: list) -> None:
        assert self.transport is not None
        self.transport.send(entries)

    def reopen(self) -> None:
        if self.transport is not None:
            self.transport.reopen()

    def statistics(self) -> dict[str, int]:
        return self.transport.statistics() if self.transport is not None else {}

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()


def open_transport(
    mode: str,
    *,
    host: str = "",
    port: str = "",
    path: str = "",
    log: Logger,
    name: str,
    ca_file: str = "",
    cert_file: str = "",
    key_file: str = "",
    server_name: str = "",
) -> Transport:
    """The transport of ``mode`` (tcp, tls, udp, unix) to ``host``:``port`` or the unix socket ``path``; it
    connects on its first send.  ``name`` (the output's instance id) starts its log messages.  For tls:
    the files of :func:`tls_context` (a file that cannot be used raises PluginError now) and
    ``server_name``, the name the server's certificate must carry (``host`` when empty)."""
    mode = mode.lower()
    if mode == "tls":
        context = tls_context(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
        return TLSTransport(
            mode, host=host, port=port, path=path, log=log, name=name, context=context, server_name=server_name
        )
    kinds: dict[str, type[Transport]] = {
        "tcp": StreamTransport,
        "udp": DatagramTransport,
        "unix": UnixStreamTransport,
    }
    if mode not in kinds:
        raise ValueError(f"unknown transport mode {mode!r}")
    return kinds[mode](mode, host=host, port=port, path=path, log=log, name=name)


def _whole(entries: list[bytes], sent: int) -> tuple[int, int]:
    """How many of ``entries`` the first ``sent`` bytes of their concatenation hold whole, and their bytes."""
    whole = done = 0
    for entry in entries:
        if done + len(entry) > sent:
            break
        done += len(entry)
        whole += 1
    return whole, done


#: struct tcp_info: tcpi_bytes_acked, a u64 at this offset since Linux 4.2 (RFC 4898's ThruOctetsAcked)
TCPI_BYTES_ACKED = 120


def _bytes_acked(sock: socket.socket) -> int | None:
    """The bytes of this TCP connection its peer's kernel acknowledged (its SYN counts one), or None on a
    kernel that does not tell.  Still there after a reset."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (OSError, AttributeError):  # AttributeError: a socket-like object without it tells nothing
        return None
    if len(info) < TCPI_BYTES_ACKED + 8:
        return None
    return struct.unpack_from("Q", info, TCPI_BYTES_ACKED)[0]


def _unix_peer_closed(sock: socket.socket) -> bool | None:
    """None while the other end of a unix stream socket is open; once it has closed, whether it left
    lines unread: the kernel then discarded them and set ECONNRESET on this socket, which poll shows
    as POLLERR without clearing it (a send would clear it, failing with it)."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)
    for _, events in poller.poll(0):
        if events & (select.POLLHUP | select.POLLERR | select.POLLRDHUP | select.POLLNVAL):
            return bool(events & select.POLLERR)
    return None


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the other end of a TCP socket has closed or reset it; a look only, safe beside a sender."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)
    return any(
        events & (select.POLLHUP | select.POLLERR | select.POLLRDHUP | select.POLLNVAL) for _, events in poller.poll(0)
    )


def _peer_gone(sock: socket.socket) -> bool:
    """Whether the other end of a stream socket has closed or failed (it is not expected to send)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLRDHUP)
    for _, events in poller.poll(0):
        if events & (select.POLLHUP | select.POLLERR | select.POLLRDHUP | select.POLLNVAL):
            return True
        if events & select.POLLIN:
            try:
                while True:  # one recv per readiness (see TLSTransport._peer_left)
                    if not sock.recv(65536, socket.MSG_DONTWAIT):
                        return True
                    if not poller.poll(0):
                        return False
            except BlockingIOError:
                return False
            except OSError:
                return True
    return False
