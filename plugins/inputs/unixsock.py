"""UNIXSOCK: packets handed to pylogd over a unix stream socket in ulogd's framing (NuFW and other sources).

A client connects to ``socket_path`` and sends frames, each::

    u32 marker 0x41c90fd4 | u16 size of the rest | u32 version (its low 4 bits) | u16 payload length
    | the IP packet | padding to 8 bytes | options

all numbers in network order but the version word (the sender's order, as ulogd reads a C bit
field).  An option is u32 id, u32 length, the value, padding to 8 bytes: 1 prefix, 2 in-interface,
3 out-interface (strings), 4 packet time (seconds, u32 in the sender's order), 200 user name, 201 user
id, 202 OS name, 203 OS release, 204 OS version, 205 application, 206 connection state (one byte,
into ``raw.label``).  Each packet comes out with ulogd's keys (``raw.pkt``, ``raw.pktlen``,
``oob.family`` from the IP version, ``raw.pktcount`` 1, and those of the options), so
``u1:UNIXSOCK,base1:BASE,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU`` works as with NFLOG but for the
interfaces, which come as names.

Differences from ulogd 2.0.8
----------------------------
* Several clients at once (ulogd closed every connection but the first).
* A frame with the wrong marker, or whose sizes do not fit, closes that client with one logged line
  and is counted (ulogd exited on a read error); a frame larger than ``bufsize`` is skipped, counted,
  and the frames after it are read (ulogd logged "We are losing events" and stopped reading that
  client for good).
* A socket left behind by a pylogd or ulogd that died is replaced; one that another running daemon
  answers on, or a file that is not a socket, refuses the start naming it (ulogd failed to bind).
* ``perms``, ``owner`` and ``group`` are checked at start (an unknown user or group refuses the start).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import socket
import stat
import struct
from typing import Any

from pylogd.config import INT_MAX
from pylogd.keys import KeyType
from pylogd.loop import EventLoop
from pylogd.plugin import Input, Kind, PluginError, PluginSpec, int_option, key, path_option, str_option

MARKER = 0x41C90FD4
_HEAD = struct.Struct(">IH")  # marker, size of the rest
_PAYLOAD_LEN = struct.Struct(">H")
_OPTION = struct.Struct(">II")
_HOST_U32 = struct.Struct("=I")
HEAD_BYTES = 12  # marker, size, version word, payload length
FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
#: option id -> (key, how the value is read)
STRING, HOST_U32, U8 = "string", "u32", "u8"
OPTIONS = {
    1: ("oob.prefix", STRING),
    2: ("oob.in", STRING),
    3: ("oob.out", STRING),
    4: ("oob.time.sec", HOST_U32),
    200: ("nufw.user.name", STRING),
    201: ("nufw.user.id", HOST_U32),
    202: ("nufw.os.name", STRING),
    203: ("nufw.os.rel", STRING),
    204: ("nufw.os.vers", STRING),
    205: ("nufw.app.name", STRING),
    206: ("raw.label", U8),
}


def _align(n: int) -> int:
    return (n + 7) & ~7


def _c_string(value: bytes) -> str:
    """A C string's text: up to its first NUL (ulogd read the value as one)."""
    return value.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


class FrameError(Exception):
    """A frame that cannot be read: the client is closed."""


def parse_frame(frame: bytes | memoryview) -> dict[str, Any]:
    """One whole frame (marker included) as the keys it gives; raises FrameError."""
    frame = memoryview(frame)
    if len(frame) < HEAD_BYTES:
        raise FrameError(f"a frame of {len(frame)} bytes is shorter than its header")
    (payload_len,) = _PAYLOAD_LEN.unpack_from(frame, 10)
    if HEAD_BYTES + payload_len > len(frame):
        raise FrameError(f"its payload of {payload_len} bytes does not fit in its frame of {len(frame)}")
    payload = bytes(frame[HEAD_BYTES : HEAD_BYTES + payload_len])
    version = payload[0] >> 4 if payload else 0
    values: dict[str, Any] = {
        "raw.pkt": payload,
        "raw.pktlen": payload_len,
        "raw.pktcount": 1,
        "oob.family": FAMILIES.get(version, 0),
    }
    at = HEAD_BYTES + _align(payload_len)
    while at + _OPTION.size <= len(frame):
        option, length = _OPTION.unpack_from(frame, at)
        start = at + _OPTION.size
        if start + length > len(frame):
            raise FrameError(f"option {option} of {length} bytes runs past its frame")
        value = bytes(frame[start : start + length])
        at = start + _align(length)
        known = OPTIONS.get(option)
        if known is None:
            continue  # an option this version does not know: ulogd went on too
        name, form = known
        if form == STRING:
            values[name] = _c_string(value)
        elif form == HOST_U32:
            if len(value) < 4:
                raise FrameError(f"option {option} holds {len(value)} bytes, not 4")
            values[name] = _HOST_U32.unpack_from(value)[0]
        elif value:
            values[name] = value[0]
    return values


class _Client:
    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock = sock
        self.number = number
        self.buf = bytearray()
        self.skip = 0  # bytes still to pass over of an oversized frame


class UnixSock(Input):
    spec = PluginSpec(
        name="UNIXSOCK",
        kind=Kind.INPUT,
        help="Reads packets that clients send over a unix stream socket in ulogd's framing (with its options: "
        "prefix, interfaces, time, NuFW user and application).",
        options=(
            path_option("socket_path", "/var/run/ulogd/ulogd2.sock", "the socket clients connect to"),
            int_option(
                "bufsize", 0, "the largest frame taken, in bytes (0: the socket's receive buffer)", min=0, max=INT_MAX
            ),
            int_option("perms", 0o600, "the socket's mode (0600: its owner only)", min=0, max=0o7777),
            str_option("owner", "", "the socket's owner (a user name)"),
            str_option("group", "", "the socket's group (a group name)"),
        ),
        outputs=(
            key("raw.mac", KeyType.RAW),
            key("raw.pkt", KeyType.RAW, "the IP packet"),
            key("raw.pktlen", KeyType.UINT32),
            key("raw.pktcount", KeyType.UINT32),
            key("oob.prefix", KeyType.STRING),
            key("oob.time.sec", KeyType.UINT32),
            key("oob.time.usec", KeyType.UINT32),
            key("oob.mark", KeyType.UINT32),
            key("oob.in", KeyType.STRING),
            key("oob.out", KeyType.STRING),
            key("oob.hook", KeyType.UINT8),
            key("raw.mac_len", KeyType.UINT16),
            key("oob.seq.local", KeyType.UINT32),
            key("oob.seq.global", KeyType.UINT32),
            key("oob.family", KeyType.UINT8),
            key("oob.protocol", KeyType.UINT16),
            key("oob.uid", KeyType.UINT32),
            key("oob.gid", KeyType.UINT32),
            key("raw.label", KeyType.UINT8),
            key("raw.type", KeyType.UINT16),
            key("raw.mac.saddr", KeyType.RAW),
            key("raw.mac.addrlen", KeyType.UINT16),
            key("nufw.user.name", KeyType.STRING),
            key("nufw.user.id", KeyType.UINT32),
            key("nufw.os.name", KeyType.STRING),
            key("nufw.os.rel", KeyType.STRING),
            key("nufw.os.vers", KeyType.STRING),
            key("nufw.app.name", KeyType.STRING),
        ),
    )

    def __init__(self, instance_id: str, options: dict[str, Any], log: Any) -> None:
        super().__init__(instance_id, options, log)
        self.server: socket.socket | None = None
        self.clients: dict[int, _Client] = {}
        self.loop: EventLoop | None = None
        self.received = 0
        self.connects = 0
        self.bad_frames = 0
        self.oversized = 0
        self.max_frame = 0
        self._uid = self._gid = -1

    def configure(self) -> None:
        o = self.options
        if len(os.fsencode(o["socket_path"])) >= 108:
            raise PluginError("socket_path is longer than a unix socket path may be (107 bytes)", "socket_path")
        if o["owner"]:
            try:
                self._uid = pwd.getpwnam(o["owner"]).pw_uid
            except KeyError:
                raise PluginError(f'unknown user "{o["owner"]}"', "owner") from None
        if o["group"]:
            try:
                self._gid = grp.getgrnam(o["group"]).gr_gid
            except KeyError:
                raise PluginError(f'unknown group "{o["group"]}"', "group") from None

    def start(self, loop: EventLoop) -> None:
        path = self.options["socket_path"]
        self._clear_stale(path)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            server.bind(path)
            os.chmod(path, self.options["perms"])
            if self._uid != -1 or self._gid != -1:
                os.chown(path, self._uid, self._gid)
            server.listen(16)
        except OSError as exc:
            server.close()
            raise PluginError(f"cannot listen on {path}: {exc.strerror}") from None
        self.max_frame = self.options["bufsize"] or server.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.slots = {k.name: self.feed.slot(k.name) for k in self.spec.outputs}
        self.server, self.loop = server, loop
        loop.add_reader(server.fileno(), self._accept)

    @staticmethod
    def _clear_stale(path: str) -> None:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise PluginError(f"{path} exists and is not a socket; remove it or choose another socket_path")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # left by a daemon that died: nobody answers on it
                return
        raise PluginError(f"{path} is in use by another running daemon")

    def _accept(self) -> None:
        assert self.server is not None and self.loop is not None
        while True:
            try:
                sock, _ = self.server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.every(10, 7, "accept", f"cannot accept a client on {self.options['socket_path']}: {exc}")
                return
            sock.setblocking(False)
            self.connects += 1
            client = _Client(sock, self.connects)
            self.clients[sock.fileno()] = client
            self.loop.add_reader(sock.fileno(), lambda c=client: self._readable(c))

    def _readable(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.log.error(f"client {client.number} on {self.options['socket_path']}: {exc.strerror}; closing it")
            self._close(client)
            return
        if not data:
            self._close(client)
            return
        if client.skip:
            passed = min(client.skip, len(data))
            client.skip -= passed
            data = data[passed:]
        client.buf += data
        try:
            self._frames(client)
        finally:
            self.feed.flush()

    def _frames(self, client: _Client) -> None:
        buf, feed, slots = client.buf, self.feed, self.slots
        values = feed.values
        at = 0
        try:
            while len(buf) - at >= _HEAD.size:
                marker, rest = _HEAD.unpack_from(buf, at)
                if marker != MARKER:
                    raise FrameError(f"a frame marked {marker:#010x}, not {MARKER:#010x}")
                size = rest + 4
                if size > self.max_frame:
                    self.oversized += 1
                    self.log.every(
                        10,
                        7,
                        "oversized",
                        f"client {client.number}: a frame of {size} bytes is larger than bufsize {self.max_frame}; "
                        f"skipping it ({self.oversized} since start)",
                    )
                    taken = min(size, len(buf) - at)
                    client.skip = size - taken
                    at += taken
                    continue
                if len(buf) - at < size:
                    break
                event = parse_frame(memoryview(buf)[at : at + size])
                at += size
                for name, value in event.items():
                    values[slots[name]] = value
                self.received += 1
                feed.emit()
        except FrameError as exc:
            self.bad_frames += 1
            self.log.error(f"client {client.number} on {self.options['socket_path']}: {exc}; closing it")
            self._close(client)
            return
        del buf[:at]

    def _close(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if self.clients.pop(fd, None) is not None and self.loop is not None:
            self.loop.remove_reader(fd)
        client.sock.close()

    def statistics(self) -> dict[str, int]:
        return {
            "received": self.received,
            "clients": len(self.clients),
            "connects": self.connects,
            "bad_frames": self.bad_frames,
            "oversized": self.oversized,
        }

    def stop(self) -> None:
        for client in list(self.clients.values()):
            self._close(client)
        if self.server is not None:
            if self.loop is not None:
                self.loop.remove_reader(self.server.fileno())
            self.server.close()
            self.server = None
            with contextlib.suppress(OSError):
                os.unlink(self.options["socket_path"])

    def abort(self) -> None:
        self.stop()
