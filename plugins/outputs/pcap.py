"""PCAP: every packet of the stack into a classic pcap file, as ulogd writes it.

The file is the libpcap format tcpdump and Wireshark read: a 24-byte global header in the
machine's byte order (magic 0xa1b2c3d4, version 2.4, snaplen 65536, link type 101 = raw IP, so
IPv4 and IPv6 packets share one file), then per packet a 16-byte record header (seconds,
microseconds, captured length, original length) and the packet from its IP header on, as NFLOG
delivered it (``copy_range`` may have cut it: the original length says how long it was).

* The time is the packet's (``oob.time.sec``/``.usec``), else the current time.
* The original length is ``ip.totlen`` for IPv4 and ``ip6.payloadlen`` + 40 for IPv6 (BASE's
  keys, so the stack needs BASE, as in ulogd), and the captured length otherwise (bridge, ARP).
* A new or empty file gets the global header first; a file that is not empty is appended to.
  SIGHUP reopens the file (logrotate); a file emptied under pylogd (``copytruncate``) gets a new
  header before the next packets.

In ulogd's stack NFLOG→BASE→PCAP, BASE does not run: the record is made from NFLOG's keys, the two
lengths read from the packet as BASE reads them (:meth:`Pcap.fused`), at about half the CPU.

Each packet is one entry: a batch is one write() of whole records.  When a write fails part way
(a full disk), the file is cut back to the end of the last whole record and the rest waits for
the retry, so the file never holds a torn record, also not when pylogd stops during an outage.

Differences from ulogd 2.0.8
----------------------------
* An existing file is appended to only if its global header is one this plugin writes (same
  magic and byte order, version 2.4, link type raw IP); otherwise start fails with one line naming
  the file.  ulogd appended to any non-empty file.  A failed SIGHUP reopen keeps the old file
  (ulogd crashed).
* The header's ``thiszone`` is 0, as libpcap writes it (ulogd wrote the C library's ``timezone``,
  which readers that honour it would add to the UTC times).
* No torn record after a failed write (above); ulogd's stdio buffer could leave half a record.
* A symlink in the file's place that someone else could have made is not followed (see
  :func:`pylogd.files.open_output`); ulogd followed any, as root.
* An IPv4 or IPv6 packet whose length key is not valid (BASE could not parse it) gets the length
  from its own header; ulogd wrote 0.  The captured length is ``raw.pktlen`` but never more than
  the bytes there are (ulogd wrote ``raw.pktlen`` bytes whatever the packet's length).
"""

from __future__ import annotations

import os
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pylogd.files import FileOutput, open_output, sync_option
from pylogd.keys import KeyType
from pylogd.loop import EventLoop
from pylogd.plugin import Kind, PluginError, PluginSpec, Slots, key, path_option

if TYPE_CHECKING:
    from pylogd.stack import StackPlan

MAGIC = 0xA1B2C3D4
VERSION = (2, 4)
SNAPLEN = 65536
LINKTYPE_RAW = 101
#: native byte order, as ulogd writes it: magic, version major, minor, thiszone, sigfigs, snaplen, linktype
GLOBAL_HEADER = struct.Struct("=IHHiIII")
RECORD_HEADER = struct.Struct("=IIII")
HEADER = GLOBAL_HEADER.pack(MAGIC, *VERSION, 0, 0, SNAPLEN, LINKTYPE_RAW)
_LENGTH = struct.Struct("!H")


_MAGICS = {
    MAGIC: "a pcap file in the other byte order",
    0xA1B23C4D: "a pcap file with nanosecond times",
    0x0A0D0D0A: "a pcapng file",
}


def check_header(path: str, head: bytes) -> None:
    """Raise PluginError (one line naming the file) unless ``head`` starts a file this plugin can append to."""
    if len(head) < GLOBAL_HEADER.size:
        raise PluginError(f"{path} is not a pcap file (only {len(head)} bytes): move it away or name another file")
    magic, major, minor, _, _, _, linktype = GLOBAL_HEADER.unpack_from(head)
    if magic != MAGIC:
        other = int.from_bytes(head[:4], "big" if sys.byteorder == "little" else "little")
        what = _MAGICS.get(magic) or _MAGICS.get(other) or "not a pcap file"
        raise PluginError(f"{path} is {what}; pylogd appends only to classic pcap of raw IP: move it away")
    if (major, minor) != VERSION or linktype != LINKTYPE_RAW:
        raise PluginError(
            f"{path} is a pcap file of link type {linktype} (version {major}.{minor}); pylogd appends only "
            f"to link type {LINKTYPE_RAW} (raw IP, version 2.4): move it away or name another file"
        )


def header_length(pkt: Any, family: int | None) -> int:
    """The original length from the packet's own IPv4 or IPv6 header, else its captured length."""
    if family == 2 and len(pkt) >= 4 and pkt[0] >> 4 == 4:
        return _LENGTH.unpack_from(pkt, 2)[0]
    if family == 10 and len(pkt) >= 6 and pkt[0] >> 4 == 6:
        return _LENGTH.unpack_from(pkt, 4)[0] + 40
    return len(pkt)


def record_maker(slots: Slots, by_key: bool) -> Callable[[Sequence], bytes | None]:
    """An event's pcap record.  The original length of an IPv4 or IPv6 packet comes from BASE's keys
    (``by_key``), or from the packet's own header read as BASE reads it (from a whole IPv4 or IPv6
    header, whatever the version nibble says); otherwise, and when that is not there, from
    :func:`header_length`."""
    i_pkt, i_pktlen, i_family = slots.inp("raw.pkt"), slots.inp("raw.pktlen"), slots.inp("oob.family")
    i_sec, i_usec = slots.inp("oob.time.sec"), slots.inp("oob.time.usec")
    i_totlen = slots.inp("ip.totlen") if by_key else None
    i_payloadlen = slots.inp("ip6.payloadlen") if by_key else None
    pack, now, length_at = RECORD_HEADER.pack, time.time, _LENGTH.unpack_from

    def convert(v: Sequence) -> bytes | None:
        pkt = v[i_pkt]
        if pkt is None:
            return None
        caplen = v[i_pktlen]
        if caplen is not None and caplen < len(pkt):
            pkt = pkt[:caplen]
        sec, usec = v[i_sec], v[i_usec]
        if sec is None or usec is None:
            t = now()
            sec, usec = int(t), int(t % 1 * 1e6)
        family = v[i_family]
        n = len(pkt)
        length = None
        if family == 2:
            length = v[i_totlen] if by_key else length_at(pkt, 2)[0] if n >= 20 else None
        elif family == 10:
            payload = v[i_payloadlen] if by_key else length_at(pkt, 4)[0] if n >= 40 else None
            if payload is not None:
                length = payload + 40
        if length is None:
            length = header_length(pkt, family)
        return pack(sec & 0xFFFFFFFF, usec, n, length) + pkt

    return convert


class Pcap(FileOutput):
    spec = PluginSpec(
        name="PCAP",
        kind=Kind.OUTPUT,
        help="Writes each packet (from its IP header on) to a pcap file of link type raw IP, "
        "readable with tcpdump -r and Wireshark.",
        options=(
            path_option("file", "/var/log/ulogd.pcap", "the pcap file to append to"),
            sync_option("packets"),
        ),
        # ulogd's input keys, in its order; ulogd declares raw.pkt as an integer, pylogd as what it is
        inputs=(
            key("raw.pkt", KeyType.RAW, "the packet from its IP header on"),
            key("raw.pktlen", KeyType.UINT32, "length of raw.pkt: the captured length"),
            key("ip.totlen", KeyType.UINT16, "IPv4 total length (BASE)"),
            key("oob.time.sec", KeyType.UINT32, "packet time; the current time when not valid"),
            key("oob.time.usec", KeyType.UINT32, "packet time, microseconds"),
            key("oob.family", KeyType.UINT8, "protocol family: 2 IPv4, 10 IPv6"),
            key("ip6.payloadlen", KeyType.UINT16, "IPv6 payload length (BASE)"),
        ),
        section_required=True,
    )

    _cut: int | None = None  # where the file must be cut back to before the next write

    def configure(self) -> None:
        if not self.options["file"]:
            raise PluginError("file is empty", option="file")

    def start(self, loop: EventLoop) -> None:
        self.fd = self._open()

    def _open(self) -> int:
        """Open the file for appending, with a header when it is new or empty, after checking the
        header of one that is not."""
        path = self.options["file"]
        # read-write: the header of an existing file is read through the same descriptor
        fd = open_output(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        try:
            if os.fstat(fd).st_size == 0:
                os.write(fd, HEADER)
            else:
                check_header(path, os.pread(fd, GLOBAL_HEADER.size, 0))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def reopen(self) -> None:
        try:
            fd = self._open()
        except (OSError, PluginError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            self.log.error(f"cannot reopen {self.options['file']}: {reason}; still writing to the old file")
            return
        os.close(self.fd)
        self.fd = fd
        self._cut = None
        self.log.notice(f"reopened {self.options['file']}")

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        return record_maker(slots, by_key=True)

    def fused(self, plan: StackPlan) -> Callable[[Sequence], Any] | None:
        """ulogd's stack NFLOG→BASE→PCAP straight from NFLOG's keys: of BASE's keys PCAP reads only the
        IPv4 total length and the IPv6 payload length, which it reads from the packet as BASE would
        (the same bytes, under the same conditions), so BASE need not decode every header."""
        filters = plan.instances[1:-1]
        if not filters or any(inst.spec.name != "BASE" for inst in filters):
            return None
        bases = {inst.id for inst in filters}
        first = plan.instances[0].id
        for name, source in plan.sources[-1].items():
            if source not in (bases if name in ("ip.totlen", "ip6.payloadlen") else (first,)):
                return None
        slots = plan.slots[-1]
        if None in (slots.inp(k) for k in ("raw.pkt", "raw.pktlen", "oob.family", "oob.time.sec", "oob.time.usec")):
            return None
        return record_maker(slots, by_key=False)

    def write(self, entries: list) -> None:
        fd = self.fd
        if self._cut is not None:
            os.ftruncate(fd, self._cut)  # an earlier failure left part of a record
            self._cut = None
        start = os.fstat(fd).st_size
        head = HEADER if start == 0 else b""  # emptied under us (copytruncate)
        data = memoryview(head + b"".join(entries))
        done = 0
        try:
            while done < len(data):
                done += os.write(fd, data[done:])
        except OSError:
            kept = 0
            if done >= len(head):
                kept = len(head)
                whole = 0
                for entry in entries:
                    if kept + len(entry) > done:
                        break
                    kept += len(entry)
                    whole += 1
                del entries[:whole]
            if done > kept:
                try:
                    os.ftruncate(fd, start + kept)
                except OSError:
                    self._cut = start + kept
            raise
