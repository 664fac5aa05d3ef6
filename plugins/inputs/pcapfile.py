"""PCAPFILE: packets read from a classic pcap capture file, fed to the stacks as NFLOG would.

Not a ulogd plugin: it lets anyone try a configuration, the decoders and the outputs without root,
without a kernel rule and without live traffic.  Its keys are NFLOG's (same names, types and
order), so any stack written for NFLOG works unchanged with PCAPFILE in its place.

Usage example (``pylogd -c try.conf`` as any user; the daemon exits when the file is read)::

    [global]
    logfile="stderr"
    stack=p1:PCAPFILE,base1:BASE,ip2str1:IP2STR,ifi1:IFINDEX,print1:PRINTPKT,emu1:LOGEMU

    [p1]
    # written by tcpdump -w (classic pcap, tcpdump's default; not pcapng)
    file="/tmp/capture.pcap"
    prefix="TRY: "
    # shown by IFINDEX as IN=lo; 0 (the default) gives IN=
    ifindex=1
    exit_at_end=1

    [emu1]
    file="/tmp/try.log"
    sync=1

Files: libpcap format in either byte order, with microsecond or nanosecond timestamps
(pcapng is refused with a hint: ``editcap -F pcap in.pcapng out.pcap`` converts it).
Link types: 101 (RAW: IPv4 or IPv6 by the version nibble), 228 (IPv4), 229 (IPv6), 1 (Ethernet)
and 113 (Linux "cooked" SLL).

What the keys hold:

* ``raw.pkt``/``raw.pktlen``: the layer-3 packet.  Bytes after the IP length (Ethernet padding,
  a trailing FCS) are cut off, as the kernel does before a netfilter hook sees the packet.
* ``oob.time.sec``/``oob.time.usec``: the record's timestamp (nanoseconds are truncated).
* ``oob.prefix``, ``oob.mark``, ``oob.hook``, ``raw.label``: the options ``prefix``, ``mark``,
  ``hook`` and ``numeric_label``; ``oob.ifindex_in`` the option ``ifindex`` (0 leaves the key
  invalid, as NFLOG does for a packet without input interface).
* ``oob.family``: 2 or 10 (IPv4, IPv6), 3 (ARP, Ethernet and SLL only); ``oob.protocol`` the
  ethertype (0x0800, 0x86DD, 0x0806).  Other ethertypes (VLAN tags, LLDP...) are skipped and
  counted (``skipped`` in the statistics), as are RAW records that are neither IPv4 nor IPv6.
* Ethernet: ``raw.mac`` (the 14-byte header), ``raw.mac_len`` 14, ``raw.type`` 1 (ARPHRD_ETHER),
  ``raw.mac.saddr`` (the source address) and ``raw.mac.addrlen`` 6.  SLL: ``raw.mac.saddr`` and
  ``raw.mac.addrlen`` from the SLL header (it has no link-layer header to give as ``raw.mac``).
* Never valid: ``oob.ifindex_out``, ``oob.seq.*``, ``oob.uid``, ``oob.gid``, ``raw``, ``ct`` and
  NFLOG's later additions (``oob.netns``, ``oob.vlan.*``...).

The file is read from loop callbacks, a few thousand packets per call followed by a flush, so
signals and timers keep running; ``rate`` paces the packets with the loop's timers.  A truncated
or corrupt file is not fatal: the error (file and byte offset) is logged and counted (``errors``
in the statistics), the records before the damage are kept, and reading stops there.

With ``exit_at_end=1`` the daemon exits cleanly (flushing its outputs) once the file has been read
or reading stopped on an error; with several such inputs, once all of them are done.

Differences from ulogd 2.0.8
----------------------------
* ulogd has no such input.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from itertools import islice
from typing import BinaryIO, ClassVar

from pylogd.plugins.inputs.nflog import Nflog

from pylogd.config import U32_MAX
from pylogd.loop import EventLoop, Timer
from pylogd.plugin import Input, Kind, PluginError, PluginSpec, int_option, path_option, str_option

#: packets emitted per loop callback before flushing and giving the loop back
BATCH = 2000
#: bytes read from the file at a time
CHUNK = 1 << 20
#: a record longer than this and the snapshot length is taken for corruption (libpcap's own bound)
MAX_RECORD = 262144
#: larger snapshot lengths are taken as 16 MiB
MAX_SNAPLEN = 1 << 24

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPES = {
    LINKTYPE_ETHERNET: "ETHERNET",
    LINKTYPE_RAW: "RAW",
    LINKTYPE_LINUX_SLL: "LINUX_SLL",
    LINKTYPE_IPV4: "IPV4",
    LINKTYPE_IPV6: "IPV6",
}

ETH_P_IP, ETH_P_IPV6, ETH_P_ARP = 0x0800, 0x86DD, 0x0806
#: ethertype -> oob.family (NFPROTO_*)
FAMILIES = {ETH_P_IP: 2, ETH_P_IPV6: 10, ETH_P_ARP: 3}

#: the magic number read as little-endian -> (byte order, nanosecond timestamps)
MAGICS = {
    0xA1B2C3D4: ("<", False),
    0xD4C3B2A1: (">", False),
    0xA1B23C4D: ("<", True),
    0x4D3CB2A1: (">", True),
}
PCAPNG_MAGIC = 0x0A0D0D0A


class PcapError(Exception):
    """The file is damaged at ``offset``."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset


def read_header(f: BinaryIO, path: str) -> tuple[str, bool, int, int]:
    """Read the global header: (byte order, nanosecond timestamps, link type, snapshot length).

    Raises PluginError with a message naming the file for anything PCAPFILE cannot read."""
    head = f.read(24)
    if len(head) < 4:
        raise PluginError(f"{path}: not a pcap file (only {len(head)} bytes)", option="file")
    (magic,) = struct.unpack_from("<I", head)
    if magic == PCAPNG_MAGIC:
        raise PluginError(
            f"{path} is a pcapng file; PCAPFILE reads classic pcap (convert: editcap -F pcap IN OUT)", option="file"
        )
    if magic not in MAGICS:
        raise PluginError(f"{path}: not a pcap file (magic number 0x{magic:08x})", option="file")
    if len(head) < 24:
        raise PluginError(f"{path}: pcap file header cut short ({len(head)} of 24 bytes)", option="file")
    order, nano = MAGICS[magic]
    _major, _minor, _zone, _sigfigs, snaplen, network = struct.unpack_from(order + "HHiIII", head, 4)
    # the upper bits may carry the FCS length (pcap format draft); the link type is the low 16 bits
    linktype = network & 0xFFFF
    if linktype not in LINKTYPES:
        known = ", ".join(f"{n} ({name})" for n, name in LINKTYPES.items())
        raise PluginError(f"{path}: unsupported link type {linktype}; PCAPFILE reads {known}", option="file")
    return order, nano, linktype, snaplen


def records(f: BinaryIO, order: str, snaplen: int) -> Iterator[tuple[int, int, memoryview]]:
    """(seconds, fraction, data) of each record after the global header; PcapError where damaged."""
    unpack = struct.Struct(order + "IIII").unpack_from
    # a garbage snapshot length must not let a garbage record length allocate gigabytes
    limit = max(min(snaplen, MAX_SNAPLEN), MAX_RECORD)

    def read(size: int) -> bytes:
        try:
            return f.read(size)
        except OSError as exc:
            raise PcapError(base + len(buf), f"read error: {exc.strerror}") from None

    buf = b""
    mv = memoryview(buf)
    pos = 0
    base = 24  # file offset of buf[0]
    eof = False
    while True:
        if len(buf) - pos < 16:
            if not eof:
                chunk = read(CHUNK)
                eof = not chunk
                buf = buf[pos:] + chunk
                mv = memoryview(buf)
                base += pos
                pos = 0
                continue
            if len(buf) > pos:
                raise PcapError(base + pos, f"record header cut short ({len(buf) - pos} of 16 bytes)")
            return
        sec, frac, incl, _orig = unpack(buf, pos)
        if incl > limit:
            raise PcapError(base + pos, f"record length {incl} is impossible (snapshot length {snaplen})")
        end = pos + 16 + incl
        if end > len(buf):
            if not eof:
                chunk = read(max(CHUNK, end - len(buf)))
                eof = not chunk
                buf = buf[pos:] + chunk
                mv = memoryview(buf)
                base += pos
                pos = 0
                continue
            raise PcapError(base + pos, f"record cut short ({len(buf) - pos - 16} of {incl} bytes)")
        yield sec, frac, mv[pos + 16 : end]
        pos = end


class Pcapfile(Input):
    spec = PluginSpec(
        name="PCAPFILE",
        kind=Kind.INPUT,
        help="Reads the packets of a pcap capture file and feeds them to the stacks as NFLOG would "
        "(to try a configuration without root or kernel rules).",
        options=(
            path_option("file", None, "the pcap file to read (classic pcap, not pcapng)", mandatory=True),
            str_option("prefix", "", "oob.prefix of every packet"),
            int_option("mark", 0, "oob.mark of every packet", min=0, max=U32_MAX),
            int_option("ifindex", 0, "oob.ifindex_in of every packet (0: none)", min=0, max=U32_MAX),
            int_option("hook", 1, "oob.hook: 0 prerouting, 1 input, 2 forward, 3 output, 4 postrouting", min=0, max=4),
            int_option("numeric_label", 0, "number copied into raw.label of every packet", min=0, max=255),
            int_option("exit_at_end", 0, "1: the daemon exits cleanly once the file is read", min=0, max=1),
            int_option("rate", 0, "packets per second (0: as fast as possible)", min=0, max=U32_MAX),
        ),
        outputs=Nflog.spec.outputs,
    )

    #: instances with exit_at_end=1 that have not finished reading
    _awaiting_exit: ClassVar[set[int]] = set()

    f: BinaryIO | None = None
    timer: Timer | None = None

    def configure(self) -> None:
        self.path = self.options["file"]
        self.counters = {"records": 0, "emitted": 0, "skipped": 0, "errors": 0}

    def start(self, loop: EventLoop) -> None:
        path = self.path
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise PluginError(f"cannot open {path}: {exc.strerror}", option="file") from None
        try:
            order, nano, linktype, snaplen = read_header(f, path)
        except PluginError:
            f.close()
            raise
        self.f = f
        self.loop = loop
        self.linktype = linktype
        self._records = records(f, order, snaplen)
        self._step = self._make_step(nano)
        if self.options["exit_at_end"]:
            Pcapfile._awaiting_exit.add(id(self))
        self.started = time.monotonic()
        self.timer = loop.call_later(0, self._step)
        self.log.info(
            f"reading {path} (link type {linktype} {LINKTYPES[linktype]}, "
            f"{'nanosecond' if nano else 'microsecond'} timestamps)"
        )

    def _make_step(self, nano: bool) -> Callable[[], None]:
        feed = self.feed
        values, emit, flush, slot = feed.values, feed.emit, feed.flush, feed.slot
        s_mac, s_pkt, s_pktlen, s_count = slot("raw.mac"), slot("raw.pkt"), slot("raw.pktlen"), slot("raw.pktcount")
        s_prefix, s_sec, s_usec, s_mark = (
            slot("oob.prefix"),
            slot("oob.time.sec"),
            slot("oob.time.usec"),
            slot("oob.mark"),
        )
        s_in, s_hook, s_maclen = slot("oob.ifindex_in"), slot("oob.hook"), slot("raw.mac_len")
        s_family, s_proto, s_label, s_type = (
            slot("oob.family"),
            slot("oob.protocol"),
            slot("raw.label"),
            slot("raw.type"),
        )
        s_saddr, s_addrlen = slot("raw.mac.saddr"), slot("raw.mac.addrlen")
        o = self.options
        prefix, mark, hook, label = o["prefix"], o["mark"], o["hook"], o["numeric_label"]
        ifindex = o["ifindex"] or None
        rate = o["rate"]
        linktype = self.linktype
        ethernet, sll = linktype == LINKTYPE_ETHERNET, linktype == LINKTYPE_LINUX_SLL
        fixed_family = {LINKTYPE_IPV4: 2, LINKTYPE_IPV6: 10}.get(linktype)
        families = FAMILIES
        counters = self.counters
        recs = self._records
        loop = self.loop

        def step() -> None:
            self.timer = None
            budget = BATCH
            if rate:
                due = int((time.monotonic() - self.started) * rate) + 1 - counters["records"]
                budget = max(0, min(budget, due))
            n = emitted = skipped = 0
            error: PcapError | None = None
            try:
                for sec, frac, pkt in islice(recs, budget):
                    n += 1
                    if ethernet or sll:
                        hlen = 14 if ethernet else 16
                        if len(pkt) < hlen:
                            skipped += 1
                            continue
                        proto = pkt[hlen - 2] << 8 | pkt[hlen - 1]
                        family = families.get(proto)
                        if family is None:
                            skipped += 1
                            continue
                        if ethernet:
                            values[s_mac] = pkt[:14]
                            values[s_maclen] = 14
                            values[s_type] = 1
                            values[s_saddr] = pkt[6:12]
                            values[s_addrlen] = 6
                        else:
                            addrlen = min(pkt[4] << 8 | pkt[5], 8)
                            if addrlen:
                                values[s_saddr] = pkt[6 : 6 + addrlen]
                                values[s_addrlen] = addrlen
                        l3 = pkt[hlen:]
                    else:
                        if not pkt:
                            skipped += 1
                            continue
                        family = fixed_family
                        if family is None:
                            version = pkt[0] >> 4
                            family = 2 if version == 4 else 10 if version == 6 else None
                            if family is None:
                                skipped += 1
                                continue
                        proto = ETH_P_IP if family == 2 else ETH_P_IPV6
                        l3 = pkt
                    # cut what follows the IP packet (Ethernet padding, FCS), as the kernel does
                    size = len(l3)
                    if family == 2:
                        if size >= 4:
                            total = l3[2] << 8 | l3[3]
                            if 20 <= total < size:
                                l3 = l3[:total]
                    elif family == 10 and size >= 6:
                        total = (l3[4] << 8 | l3[5]) + 40
                        if 40 < total < size:
                            l3 = l3[:total]
                    values[s_pkt] = l3
                    values[s_pktlen] = len(l3)
                    values[s_count] = 1
                    values[s_prefix] = prefix
                    values[s_sec] = sec
                    values[s_usec] = frac // 1000 if nano else frac
                    values[s_mark] = mark
                    values[s_in] = ifindex
                    values[s_hook] = hook
                    values[s_family] = family
                    values[s_proto] = proto
                    values[s_label] = label
                    emitted += 1
                    emit()
            except PcapError as exc:
                error = exc
            counters["records"] += n
            counters["emitted"] += emitted
            counters["skipped"] += skipped
            flush()
            if error is not None:
                counters["errors"] += 1
                self.log.error(
                    f"{self.path}: damaged at byte offset {error.offset}: {error}; "
                    f"stopped reading after {counters['records']} records"
                )
                self._finish()
            elif n < budget:
                self.log.info(
                    f"{self.path}: end of file, {counters['records']} records, {counters['emitted']} packets emitted, "
                    f"{counters['skipped']} skipped"
                )
                self._finish()
            elif rate:
                wait = counters["records"] / rate - (time.monotonic() - self.started)
                self.timer = loop.call_later(max(0.0, wait), step)
            else:
                self.timer = loop.call_later(0, step)

        return step

    def _finish(self) -> None:
        if self.f is not None:
            self.f.close()
        awaiting = Pcapfile._awaiting_exit
        if id(self) in awaiting:
            awaiting.discard(id(self))
            if not awaiting:
                # stopping the loop is the daemon's clean exit: stop reading, flush every output, close
                self.log.notice("exit_at_end: all files read, exiting")
                self.loop.stop()

    def statistics(self) -> dict[str, int]:
        return dict(getattr(self, "counters", {}))

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.f is not None:
            self.f.close()
        Pcapfile._awaiting_exit.discard(id(self))
