"""JOURNALD: the entries as a real systemd-journald stores them, read back with journalctl.

No systemd runs as PID 1 here, so each test that needs journald starts its own
``systemd-journald`` in a private mount namespace whose /run is a temporary directory: its
socket and its (volatile) journal files land there, and nothing of the machine's is touched.
journalctl reads the entries back in its export format, which is the native protocol's own
(``NAME=value`` lines, binary-safe ``NAME\\n<le64 length><bytes>\\n``), so one parser reads both.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PYLOGD, ROOT
from daemonkit import Daemon, wait_for
from pylogd.plugins.outputs import journald
from pylogd.plugins.outputs.journald import Journald, field_name
from rig import Pair

from pylogd.keys import Key, KeyType
from pylogd.log import Logger
from pylogd.plugin import PluginError, Slots, key

JOURNALD_BINARY = next(
    (p for p in ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald") if os.access(p, os.X_OK)),
    None,
)
JOURNALD_CONF = (
    "[Journal]\nStorage=volatile\nRateLimitIntervalSec=0\nReadKMsg=no\nAudit=no\n"
    "ForwardToSyslog=no\nForwardToWall=no\nForwardToConsole=no\nForwardToKMsg=no\n"
)

# ---------------------------------------------------------------------------------------------
# the native protocol, read back


def parse(data: bytes) -> list[list[tuple[str, bytes]]]:
    """Entries in the native protocol / journalctl's export format: fields in order; an empty line
    ends an entry (a single datagram holds one entry and may lack it)."""
    entries: list[list[tuple[str, bytes]]] = []
    fields: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if not line:
            entries.append(fields)
            fields = []
            pos = end + 1
        elif b"=" in line:
            name, _, value = line.partition(b"=")
            fields.append((name.decode(), value))
            pos = end + 1
        else:
            (size,) = struct.unpack_from("<Q", data, end + 1)
            start = end + 9
            value = data[start : start + size]
            assert data[start + size : start + size + 1] == b"\n", "binary field not closed by a newline"
            fields.append((line.decode(), value))
            pos = start + size + 1
    if fields:
        entries.append(fields)
    return entries


def fields_of(datagram: bytes) -> dict[str, bytes]:
    (entry,) = parse(datagram)
    names = [n for n, _ in entry]
    assert len(names) == len(set(names)), f"a field twice: {names}"
    return dict(entry)


# ---------------------------------------------------------------------------------------------
# the plugin on its own


def make(keys: list[Key], **options: object) -> tuple[Journald, object]:
    opts = {o.name: o.default for o in Journald.spec.options}
    opts.update(options)
    plugin = Journald("jd1", opts, Logger("jd1"))
    plugin.configure()
    convert = plugin.handler(Slots({}, {}, wildcard=[(k, i) for i, k in enumerate(keys)], size=len(keys)))
    return plugin, convert


def v4(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, text)


PACKET_KEYS = [
    key("raw.pktlen", KeyType.UINT32),
    key("oob.prefix", KeyType.STRING),
    key("oob.in", KeyType.STRING),
    key("oob.out", KeyType.STRING),
    key("raw.pkt", KeyType.RAW),
    key("ip.saddr", KeyType.IPADDR),
    key("ip.daddr", KeyType.IPADDR),
    key("ip.protocol", KeyType.UINT8),
    key("tcp.sport", KeyType.UINT16, cim="src_port"),
    key("tcp.dport", KeyType.UINT16, cim="dest_port"),
    key("tcp.syn", KeyType.BOOL),
    key("ip.saddr.str", KeyType.STRING, cim="src_ip"),
    key("ip.daddr.str", KeyType.STRING, cim="dest_ip"),
    key("ip.saddr.bin", KeyType.RAWSTR),
    key("test.neg", KeyType.INT32),
    key("odd", KeyType.NONE),
    key("print", KeyType.STRING),
]
LINE = "TCPIN:  IN=eth0 OUT= SRC=10.77.0.2 DST=10.77.0.1 PROTO=TCP SPT=34358 DPT=2222 SYN MARK=0x0 \n"
PACKET = [
    60,
    "TCPIN: ",
    "eth0",
    "",
    b"\x45\x00\n\x00",
    v4("10.77.0.2"),
    v4("10.77.0.1"),
    6,
    34358,
    2222,
    True,
    "10.77.0.2",
    "10.77.0.1",
    "0x0a4d0002",
    -5,
    7,
    LINE,
]


@pytest.mark.parametrize(
    ("key_name", "field"),
    [
        ("ip.saddr.str", "IP_SADDR_STR"),
        ("oob.prefix", "OOB_PREFIX"),
        ("icmpv6.echoid", "ICMPV6_ECHOID"),
        ("nufw.user-name", "NUFW_USER_NAME"),
        ("message", "KEY_MESSAGE"),  # JOURNALD's own field
        ("src.ip", "KEY_SRC_IP"),  # an alias JOURNALD fills itself
        ("_pid", "KEY__PID"),  # a trusted field journald sets: never from a client
        ("802.1q.vid", "KEY_802_1Q_VID"),  # a field may not start with a digit
        ("a" * 70, "KEY_" + "A" * 60),  # at most 64 characters
    ],
)
def test_field_names(key_name: str, field: str) -> None:
    assert field_name(key_name) == field


def test_every_key_a_field() -> None:
    _, convert = make(PACKET_KEYS)
    assert fields_of(convert(PACKET)) == {
        "PRIORITY": b"6",
        "SYSLOG_FACILITY": b"3",
        "SYSLOG_IDENTIFIER": b"pylogd",
        "MESSAGE": LINE[:-1].encode(),  # the print line, without its final newline
        "RAW_PKTLEN": b"60",
        "OOB_PREFIX": b"TCPIN: ",
        "OOB_IN": b"eth0",
        "OOB_OUT": b"",
        "IP_SADDR": b"10.77.0.2",
        "IP_DADDR": b"10.77.0.1",
        "IP_PROTOCOL": b"6",
        "TCP_SPORT": b"34358",
        "TCP_DPORT": b"2222",
        "TCP_SYN": b"1",
        "IP_SADDR_STR": b"10.77.0.2",
        "IP_DADDR_STR": b"10.77.0.1",
        "IP_SADDR_BIN": b"0x0a4d0002",
        "TEST_NEG": b"-5",
        "ODD": b"7",
        "SRC_IP": b"10.77.0.2",
        "DST_IP": b"10.77.0.1",
        "SRC_PORT": b"34358",
        "DST_PORT": b"2222",
    }


def test_invalid_keys_are_left_out_and_options_set_the_head() -> None:
    _, convert = make(PACKET_KEYS, priority="log_warning", facility="LOG_LOCAL5", identifier="fw")
    values = [None] * len(PACKET_KEYS)
    values[0] = 40
    assert fields_of(convert(values)) == {
        "PRIORITY": b"4",
        "SYSLOG_FACILITY": b"21",
        "SYSLOG_IDENTIFIER": b"fw",
        "MESSAGE": b"netfilter event",
        "RAW_PKTLEN": b"40",
    }


def test_summary_without_a_print_line() -> None:
    keys = PACKET_KEYS[:-1]
    _, convert = make(keys)
    assert fields_of(convert(PACKET[:-1]))["MESSAGE"] == (
        b"TCPIN: IN=eth0 OUT= SRC=10.77.0.2 DST=10.77.0.1 PROTO=TCP SPT=34358 DPT=2222"
    )
    # no IP2STR in the stack: the aliases and the summary come from the address keys
    keys = [k for k in keys if not k.name.endswith(".str")]
    values = [v for k, v in zip(PACKET_KEYS, PACKET, strict=False) if k in keys]
    fields = fields_of(make(keys)[1](values))
    assert fields["SRC_IP"] == b"10.77.0.2"
    assert fields["MESSAGE"].endswith(b"SRC=10.77.0.2 DST=10.77.0.1 PROTO=TCP SPT=34358 DPT=2222")


def test_flow_summary_and_aliases() -> None:
    keys = [
        key("orig.ip.saddr", KeyType.IPADDR),
        key("orig.ip.daddr", KeyType.IPADDR),
        key("orig.ip.protocol", KeyType.UINT8),
        key("orig.l4.sport", KeyType.UINT16),
        key("orig.l4.dport", KeyType.UINT16),
        key("reply.ip.saddr", KeyType.IPADDR),
        key("ct.event", KeyType.UINT32),
        key("orig.ip.saddr.str", KeyType.STRING, cim="src_ip"),
    ]
    values = [v4("10.61.0.2"), v4("10.62.0.2"), 17, 40312, 53, v4("10.62.0.2"), 4, "10.61.0.2"]
    fields = fields_of(make(keys)[1](values))
    assert fields["MESSAGE"] == b"[DESTROY] SRC=10.61.0.2 DST=10.62.0.2 PROTO=UDP SPT=40312 DPT=53"
    assert (fields["SRC_IP"], fields["DST_IP"], fields["SRC_PORT"], fields["DST_PORT"]) == (
        b"10.61.0.2",
        b"10.62.0.2",
        b"40312",
        b"53",
    )
    assert fields["REPLY_IP_SADDR"] == b"10.62.0.2"
    assert fields["CT_EVENT"] == b"4"


def test_binary_safe_values() -> None:
    keys = [key("oob.prefix", KeyType.STRING), key("test.text", KeyType.STRING), key("print", KeyType.STRING)]
    prefix = b"bad \xff\xfe: ".decode("utf-8", "surrogateescape")  # as the inputs keep it
    data = make(keys)[1]([prefix, "two\nlines\0and a NUL", "first\nsecond\n"])
    fields = fields_of(data)
    assert fields["OOB_PREFIX"] == b"bad \xff\xfe: "
    assert fields["TEST_TEXT"] == b"two\nlines\0and a NUL"
    assert fields["MESSAGE"] == b"first\nsecond"
    assert b"TEST_TEXT\n" + struct.pack("<Q", 19) in data  # the binary-safe form, not a torn line


def test_no_value_can_start_a_field() -> None:
    keys = [key("x.src", KeyType.STRING, cim="src_ip"), key("y", KeyType.STRING), key("oob.prefix", KeyType.STRING)]
    evil = "1.2.3.4\nPRIORITY=0"
    fields = fields_of(make(keys)[1]([evil, evil, evil]))
    assert fields["PRIORITY"] == b"6"
    assert fields["SRC_IP"] == fields["X_SRC"] == fields["Y"] == fields["OOB_PREFIX"] == evil.encode()
    assert fields["MESSAGE"] == f"{evil} SRC={evil}".encode()  # the summary: prefix and address


def test_a_print_key_that_is_not_text_is_a_field() -> None:
    fields = fields_of(make([key("print", KeyType.UINT32), key("oob.prefix", KeyType.STRING)])[1]([5, "IN: "]))
    assert (fields["PRINT"], fields["MESSAGE"]) == (b"5", b"IN:")


def test_raw_data_only_with_raw_1() -> None:
    assert "RAW_PKT" not in fields_of(make(PACKET_KEYS)[1](PACKET))
    assert fields_of(make(PACKET_KEYS, raw=1)[1](PACKET))["RAW_PKT"] == b"\x45\x00\n\x00"


def test_same_field_twice_gets_a_number() -> None:
    keys = [key("a.b", KeyType.UINT8), key("a_b", KeyType.UINT8), key("A.B", KeyType.UINT8)]
    assert {n: v for n, v in fields_of(make(keys)[1]([1, 2, 3])).items() if n.startswith("A_B")} == {
        "A_B": b"1",
        "A_B_2": b"2",
        "A_B_3": b"3",
    }


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"namespace": "fw", "socket": "/tmp/s"}, "socket"),
        ({"namespace": ".hidden"}, "namespace"),
        ({"namespace": "a/b"}, "namespace"),
        ({"socket": "relative/socket"}, "socket"),
        ({"socket": "/" + "s" * 120}, "socket"),
        ({"identifier": ""}, "identifier"),
        ({"identifier": "two\nlines"}, "identifier"),
    ],
)
def test_options_refused(options: dict, option: str) -> None:
    with pytest.raises(PluginError) as err:
        make([], **options)
    assert err.value.option == option


def test_namespace_socket() -> None:
    plugin, _ = make([], namespace="firewall")
    assert plugin.path == "/run/systemd/journal.firewall/socket"
    assert make([])[0].path == "/run/systemd/journal/socket"


def test_info_and_check(tmp_path: Path) -> None:
    out = subprocess.run([*PYLOGD, "-i", "JOURNALD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.startswith("Name: JOURNALD\n")
    for option in ("priority", "facility", "identifier", "namespace", "socket", "raw"):
        assert f"\tVar: {option} " in out
    conf = tmp_path / "pylogd.conf"
    for bad, word in (("priority=LOG_LOUD", "LOG_INFO"), ("raw=2", "raw")):
        conf.write_text(f"[global]\nstack=p1:PCAPFILE,b1:BASE,j1:JOURNALD\n[p1]\nfile=/x.pcap\n[j1]\n{bad}\n")
        res = subprocess.run([*PYLOGD, "--check", "-c", str(conf)], cwd=ROOT, capture_output=True, text=True)
        assert res.returncode != 0 and word in res.stderr, res.stderr
    conf.write_text("[global]\nstack=p1:PCAPFILE,b1:BASE,j1:JOURNALD\n[p1]\nfile=/x.pcap\n[j1]\npriority=LOG_ERR\n")
    res = subprocess.run([*PYLOGD, "--check", "-c", str(conf)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------------------------------------
# failing writes, against a socket the test holds


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a path short enough for unix sockets (pytest's tmp_path can be too long)."""
    path = Path(tempfile.mkdtemp(prefix="jd-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_full_queue_keeps_what_was_not_sent(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """journald not reading: the datagrams its queue took are out, the write fails after the
    timeout, and the list holds exactly the others, for the retry."""
    monkeypatch.setattr(journald, "SEND_TIMEOUT", 0.3)
    path = str(short_dir / "socket")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    keys = [key("test.n", KeyType.UINT32)]
    plugin, convert = make(keys, socket=path)
    entries = [convert([n]) for n in range(200)]
    batch = list(entries)
    with pytest.raises(OSError):
        plugin.write(batch)
    rx.setblocking(False)
    got = []
    while True:
        try:
            got.append(rx.recv(65536))
        except BlockingIOError:
            break
    assert 0 < len(got) < len(entries)
    assert got + batch == entries
    rx.setblocking(True)
    reader = threading.Thread(target=lambda: got.extend(rx.recv(65536) for _ in range(len(batch))))
    reader.start()  # journald reading again: the rest goes, after what went before
    plugin.write(batch)
    reader.join(10)
    assert got == entries
    plugin.stop()


def test_missing_or_dead_socket_fails_the_write(short_dir: Path) -> None:
    path = str(short_dir / "socket")
    plugin, convert = make([key("test.n", KeyType.UINT32)], socket=path)
    batch = [convert([1]), convert([2])]
    with pytest.raises(FileNotFoundError):  # sendv would report success and lose them
        plugin.write(batch)
    assert len(batch) == 2
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    plugin.write(batch)
    assert [fields_of(rx.recv(4096))["TEST_N"] for _ in range(2)] == [b"1", b"2"]
    rx.close()  # journald going away: its socket file stays, nobody reads it
    batch = [convert([3])]
    with pytest.raises(ConnectionRefusedError):
        plugin.write(batch)
    assert len(batch) == 1
    os.unlink(path)
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)  # journald back: a new socket at the same path
    plugin.write(batch)
    assert fields_of(rx.recv(4096))["TEST_N"] == b"3"
    assert plugin.statistics()["connects"] == 2
    plugin.stop()


def test_sighup_reconnects(short_dir: Path) -> None:
    """After SIGHUP the next write connects anew: a journald that came back at another inode is found."""
    path = str(short_dir / "socket")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    plugin, convert = make([key("test.n", KeyType.UINT32)], socket=path)
    plugin.write([convert([1])])
    plugin.write([convert([2])])
    assert plugin.statistics()["connects"] == 1
    plugin.reopen()
    plugin.write([convert([3])])
    assert plugin.statistics()["connects"] == 2
    assert [fields_of(rx.recv(4096))["TEST_N"] for _ in range(3)] == [b"1", b"2", b"3"]
    plugin.stop()


# ---------------------------------------------------------------------------------------------
# a real systemd-journald


class Journal:
    """systemd-journald in its own mount namespace, its /run a directory of the test's."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.run = root / "run"
        self.run.mkdir()
        (root / "journald.conf").write_text(JOURNALD_CONF)
        (root / "empty").mkdir()
        self.socket = str(self.run / "systemd" / "journal" / "socket")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Journal:
        binds = [f"mount --bind {self.run} /run", f"mount --bind {self.root}/journald.conf /etc/systemd/journald.conf"]
        for dropins in ("/etc/systemd/journald.conf.d", "/usr/lib/systemd/journald.conf.d"):
            if os.path.isdir(dropins):
                binds.append(f"mount --bind {self.root}/empty {dropins}")
        script = " && ".join([*binds, f"exec {JOURNALD_BINARY}"])
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        started = os.path.getmtime(self.socket) if os.path.exists(self.socket) else 0.0

        def listening() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"systemd-journald exited: {self.proc.stderr.read().decode()}")
            return os.path.exists(self.socket) and os.path.getmtime(self.socket) > started and bool(self.files())

        wait_for(listening, what="systemd-journald to listen")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def files(self) -> list[str]:
        return glob.glob(str(self.run / "log" / "journal" / "*" / "*.journal"))

    def entries(self, *matches: str) -> list[dict[str, bytes]]:
        (directory,) = glob.glob(str(self.run / "log" / "journal" / "*"))
        out = subprocess.run(
            ["journalctl", "--directory", directory, "-o", "export", "--no-pager", *matches],
            capture_output=True,
            check=True,
        ).stdout
        return [dict(e) for e in parse(out)]

    def wait_entries(self, n: int, *matches: str) -> list[dict[str, bytes]]:
        found: list = []

        def enough() -> bool:
            found[:] = self.entries(*matches)
            return len(found) >= n

        wait_for(enough, what=f"{n} journal entries")
        time.sleep(0.2)  # and not more than that
        return self.entries(*matches)


@pytest.fixture
def journal(short_dir: Path) -> Iterator[Journal]:
    if JOURNALD_BINARY is None or shutil.which("journalctl") is None:
        pytest.skip("systemd-journald and journalctl are not installed")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a private systemd-journald needs root and unshare(1) for its mount namespace")
    j = Journal(short_dir)
    try:
        yield j.start()
    finally:
        j.stop()


def test_journald_stores_every_field(journal: Journal) -> None:
    keys = [*PACKET_KEYS[:-1], key("test.text", KeyType.STRING), PACKET_KEYS[-1]]
    plugin, convert = make(keys, socket=journal.socket, raw=1, identifier="pylogd-test")
    events = [[*PACKET[:-1], f"event {n}\nsecond line", LINE] for n in range(3)]
    batch = [convert(v) for v in events]
    sent = [fields_of(e) for e in batch]
    plugin.write(batch)
    got = journal.wait_entries(3, "SYSLOG_IDENTIFIER=pylogd-test")
    assert len(got) == 3
    for entry, fields in zip(got, sent, strict=True):
        assert {n: entry.get(n) for n in fields} == fields
        assert entry["_TRANSPORT"] == b"journal"
        assert entry["_PID"] == str(os.getpid()).encode()
    assert got[2]["TEST_TEXT"] == b"event 2\nsecond line"
    assert got[0]["RAW_PKT"] == b"\x45\x00\n\x00"
    # what a user types
    assert len(journal.entries("SYSLOG_IDENTIFIER=pylogd-test", "DST_PORT=2222", "SRC_IP=10.77.0.2")) == 3
    plugin.stop()


def test_big_entry_goes_as_a_memfd(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journald, "SNDBUF", 4096)  # the kernel's floor: a 100 KiB datagram does not fit
    keys = [key("test.text", KeyType.STRING), key("test.n", KeyType.UINT32)]
    plugin, convert = make(keys, socket=journal.socket)
    text = "".join(f"{n:07d}\n" for n in range(12_800))
    batch = [convert([text, 1]), convert(["small", 2])]
    plugin.write(batch)
    assert plugin.statistics()["memfds"] == 1
    got = journal.wait_entries(2, "SYSLOG_IDENTIFIER=pylogd")
    assert [(e["TEST_N"], e["TEST_TEXT"]) for e in got] == [(b"1", text.encode()), (b"2", b"small")]
    plugin.stop()


def test_journald_restart(journal: Journal) -> None:
    """journald stopped: writes fail and keep every entry; started again: they go, once each."""
    plugin, convert = make([key("test.n", KeyType.UINT32)], socket=journal.socket)
    plugin.write([convert([0])])
    journal.wait_entries(1, "SYSLOG_IDENTIFIER=pylogd")
    journal.stop()
    batch = [convert([1]), convert([2])]
    with pytest.raises(OSError):
        plugin.write(batch)
    assert len(batch) == 2
    journal.start()
    plugin.write(batch)
    got = journal.wait_entries(3, "SYSLOG_IDENTIFIER=pylogd")
    assert [e["TEST_N"] for e in got] == [b"0", b"1", b"2"]
    plugin.stop()


# ---------------------------------------------------------------------------------------------
# the daemon


def test_daemon_writes_entries_and_survives_a_journald_restart(journal: Journal, tmp_path: Path) -> None:
    d = Daemon(
        tmp_path,
        ["in1:PIPEIN,jd1:JOURNALD"],
        f'[jd1]\nsocket="{journal.socket}"\npriority=LOG_WARNING\nfacility=LOG_LOCAL0\nidentifier="fw"\n',
    )
    d.start()
    try:
        d.send(*({"test.n": n, "test.text": f"text {n}", "print": f"line {n}\n"} for n in range(5)))
        got = journal.wait_entries(5, "SYSLOG_IDENTIFIER=fw")
        journal.stop()
        d.send(*({"test.n": n, "print": f"line {n}\n"} for n in range(5, 10)))
        wait_for(lambda: "write failed" in d.log.read_text(), what="the failed write to be logged")
        journal.start()
        got = journal.wait_entries(10, "SYSLOG_IDENTIFIER=fw")
        assert d.stop() == 0
    finally:
        d.kill()
    assert [e["MESSAGE"] for e in got] == [f"line {n}".encode() for n in range(10)]
    assert [e["TEST_N"] for e in got] == [str(n).encode() for n in range(10)]
    assert [e.get("TEST_TEXT") for e in got[:6]] == [f"text {n}".encode() for n in range(5)] + [None]
    assert {(e["PRIORITY"], e["SYSLOG_FACILITY"], e["_PID"]) for e in got} == {(b"4", b"16", str(d.proc.pid).encode())}
    assert "writing again" in d.log.read_text()


NFT_RULES = """
table inet jd {
    chain input {
        type filter hook input priority 0; policy accept;
        ct state new counter
        udp dport 4444 log group 7 prefix "JD: "
    }
}
"""


def test_packets_and_flows_from_the_kernel(journal: Journal, netns_pair: Pair, tmp_path: Path) -> None:
    """NFLOG and NFCT in a namespace, through IP2STR and PRINTPKT/PRINTFLOW, into the journal."""
    p = netns_pair
    p.a.nft(NFT_RULES)
    log = tmp_path / "daemon.log"
    conf = tmp_path / "pylogd.conf"
    conf.write_text(
        f'[global]\nlogfile="{log}"\nloglevel=3\n'
        "stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,jd1:JOURNALD\n"
        "stack=ct1:NFCT,ip2str2:IP2STR,pf1:PRINTFLOW,jd2:JOURNALD\n"
        "[log1]\ngroup=7\n[ct1]\nhash_enable=0\nevent_mask=1\naccept_proto_filter=udp\n"
        f'[jd1]\nsocket="{journal.socket}"\nidentifier="fwpkt"\n'
        f'[jd2]\nsocket="{journal.socket}"\nidentifier="fwflow"\npriority=LOG_NOTICE\n'
    )
    proc = p.a.spawn([*PYLOGD, "-c", str(conf)], cwd=ROOT)
    wait_for(lambda: "entering main loop" in (log.read_text() if log.exists() else ""), what="pylogd start-up")
    p.b.send_udp(p.a_ip4, 4444, count=3, src_port=40000)
    packets = journal.wait_entries(3, "SYSLOG_IDENTIFIER=fwpkt")
    flows = journal.wait_entries(1, "SYSLOG_IDENTIFIER=fwflow", "DST_PORT=4444")
    assert proc.stop() == 0
    assert len(packets) == 3 and len(flows) == 1
    for e in packets:
        assert e["MESSAGE"].startswith(f"JD:  IN={p.a_if} OUT= MAC=".encode())
        assert f" SRC={p.b_ip4} DST={p.a_ip4} ".encode() in e["MESSAGE"]
        assert (e["SRC_IP"], e["DST_IP"], e["SRC_PORT"], e["DST_PORT"]) == (
            p.b_ip4.encode(),
            p.a_ip4.encode(),
            b"40000",
            b"4444",
        )
        assert (e["OOB_PREFIX"], e["OOB_IN"], e["IP_PROTOCOL"], e["UDP_DPORT"]) == (
            b"JD: ",
            p.a_if.encode(),
            b"17",
            b"4444",
        )
        assert e["IP_SADDR_STR"] == e["IP_SADDR"] == p.b_ip4.encode()
        assert e["PRIORITY"] == b"6" and e["_PID"] == str(proc.pid).encode()
    (flow,) = flows
    assert flow["MESSAGE"].startswith(b"[NEW] ORIG: SRC=" + p.b_ip4.encode())
    assert (flow["SRC_IP"], flow["DST_IP"], flow["SRC_PORT"], flow["DST_PORT"], flow["CT_EVENT"]) == (
        p.b_ip4.encode(),
        p.a_ip4.encode(),
        b"40000",
        b"4444",
        b"1",
    )
    assert flow["ORIG_IP_SADDR_STR"] == p.b_ip4.encode() and flow["PRIORITY"] == b"5"
