"""SQLITE3: ulogd's shipped sqlite3.table, values by column type, transactions of ``buffer`` rows,
refused and delayed rows, create_table, start-up refusals, a running daemon, and the real ulogd 2.0.8
beside pylogd on the same packets and flows.

Where pylogd's rows deliberately differ from ulogd's is named once, in the block below.
"""

from __future__ import annotations

import ipaddress
import pickle
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import PYLOGD, ROOT, TEST_PLUGINS
from pylogd.plugins.outputs import sqlite3 as sqlite_out
from rig import Rig, read_text, wait_for
from sqlkit import ULOGD, PipeDaemon, SqlStack, need_ulogd, shipped
from test_compat_ulogd import pair, run_both_on_corpus, wait_equal_and_quiet  # noqa: F401  (pair: a fixture)
from test_nfct_compat import CT_RULES, traffic

# ------------------------------------------------------------------------------------------------
# Where pylogd's rows deliberately differ from ulogd 2.0.8's, in one place: a function of ulogd's
# value (and the column's name) giving the value pylogd must have.


def _ulogd_ipv4(value: int) -> int:
    """ulogd stored the network-order bytes read as a little-endian number: swap them back."""
    return int.from_bytes((value & 0xFFFFFFFF).to_bytes(4, "little"), "big")


def _ulogd_unsigned(value: int) -> int:
    """ulogd bound UINT32 as a signed 32-bit number."""
    return value & 0xFFFFFFFF


def expected_value(column: str, ulogd_value: Any, pylogd_value: Any, ulogd_row: dict[str, Any]) -> Any:
    if ulogd_value is None:
        return None
    if (ulogd_row.get("ip_fragoff") or 0) & 0x1FFF and column.startswith(("tcp_", "udp_", "icmp_")):
        return None  # BASE: ulogd decoded a later fragment's payload as a transport header
    if column.endswith(("ip_saddr", "ip_daddr")):
        if isinstance(pylogd_value, str):
            # ulogd wrote the first 8 bytes of an IPv6 address as a number: pylogd writes the address
            return str(ipaddress.IPv6Address(pylogd_value))
        return _ulogd_ipv4(ulogd_value)
    if column in ("tcp_seq", "tcp_ackseq", "oob_mark"):
        return _ulogd_unsigned(ulogd_value)
    return ulogd_value


# ------------------------------------------------------------------------------------------------
# in-process


@pytest.fixture
def shipped_db(tmp_path: Path) -> Path:
    db = tmp_path / "ulogd.sqlite"
    with sqlite3.connect(db) as conn:
        conn.executescript(shipped("sqlite3.table"))
    return db


def rows(db: Path, query: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(query).fetchall()


def test_shipped_tables_take_packets_and_flows(shipped_db: Path) -> None:
    pkt = SqlStack("log1:NFLOG,s1:SQLITE3", f'[s1]\ndb="{shipped_db}"\ntable="ulog_pkt"\n')
    ct = SqlStack("ct1:NFCT,s2:SQLITE3", f'[s2]\ndb="{shipped_db}"\ntable="ulog_ct"\n[ct1]\n')
    packet = {
        "raw.pktlen": 60,
        "raw.pktcount": 1,
        "oob.prefix": "IN: ",
        "oob.time.sec": 1795388587,
        "oob.time.usec": 721317,
        "oob.mark": 0xFFFFFFF0,  # unsigned, above 2^31
        "oob.hook": 1,
        "raw.pkt": memoryview(b"E\x00"),  # a key without a column: not written
    }
    assert pkt.write([pkt.entry(packet), pkt.entry({"raw.pktlen": 40, "oob.prefix": ""})]) == ([], [])
    assert rows(shipped_db, "SELECT * FROM ulog_pkt") == [
        (60, 1, "IN: ", 1795388587, 721317, 0xFFFFFFF0, 1, None, None),
        (40, None, "", None, None, None, None, None, None),
    ]
    flows = [
        {
            "orig.ip.saddr": bytes([10, 77, 0, 2]),
            "orig.ip.daddr": bytes([10, 77, 0, 1]),
            "orig.l4.sport": 40000,
            "orig.l4.dport": 53,
            "orig.ip.protocol": 17,
            "orig.raw.pktlen": 5000000000,
            "orig.raw.pktcount": 3,
            "flow.start.sec": 1795388587,
            "ct.mark": 7,
        },
        {"orig.ip.saddr": bytes.fromhex("fd77" + "00" * 13 + "02"), "orig.ip.protocol": 58, "icmp.type": 128},
    ]
    assert ct.write([ct.entry(f) for f in flows]) == ([], [])
    got = rows(shipped_db, "SELECT orig_ip_saddr, orig_ip_daddr, orig_l4_sport, orig_raw_pktlen, ct_mark FROM ulog_ct")
    # the IPv4 address in host order (10.77.0.2 = 172818434), the IPv6 one as text
    assert got == [(172818434, 172818433, 40000, 5000000000, 7), ("fd77::2", None, None, None, None)]
    pkt.stop()
    ct.stop()


def test_values_follow_the_column_type(tmp_path: Path) -> None:
    db = tmp_path / "t.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE t (ip_saddr INT UNSIGNED, ip_daddr VARCHAR(40), ip_saddr_bin BLOB, ip_daddr_bin TEXT, "
            "tcp_seq INTEGER, tcp_syn TINYINT, raw_pkt BLOB, oob_ifindex_in INTEGER, oob_prefix TEXT)"
        )
    s = SqlStack("log1:NFLOG,base1:BASE,ip2bin1:IP2BIN,s1:SQLITE3", f'[s1]\ndb="{db}"\ntable="t"\n')
    v4 = {
        "ip.saddr": bytes([192, 168, 1, 2]),
        "ip.daddr": bytes([10, 0, 0, 1]),
        "ip.saddr.bin": "0x00000000000000000000ffffc0a80102",
        "ip.daddr.bin": "0x00000000000000000000ffff0a000001",
        "tcp.seq": 3537804397,
        "tcp.syn": 1,
        "raw.pkt": memoryview(b"E\x00\x00\x3c"),
        "oob.ifindex_in": 6,
        "oob.prefix": "héllo 'quoted'; DROP TABLE t; --",
    }
    v6 = {"ip.saddr": bytes.fromhex("fd000000000000000000000000000002"), "ip.daddr": bytes.fromhex("ff02" + "00" * 14)}
    entries = [s.entry(v4), s.entry(v6)]
    # entries may wait on disk: plain values only, nothing that points into the event's buffers
    for entry in entries:
        assert type(entry) is tuple and pickle.loads(pickle.dumps(entry)) == entry
        assert {type(x) for x in entry} <= {int, str, bytes, type(None)}
    assert s.write(entries) == ([], [])
    got = rows(db, "SELECT * FROM t")
    assert got[0] == (
        3232235778,  # 192.168.1.2 in host order
        "10.0.0.1",  # a text column: the address as text
        bytes.fromhex("00000000000000000000ffffc0a80102"),  # IP2BIN's literal as 16 bytes
        "0x00000000000000000000ffff0a000001",  # into a text column it stays text
        3537804397,  # unsigned
        1,
        b"E\x00\x00\x3c",
        6,  # oob_ifindex_in: a key whose name holds "_"
        "héllo 'quoted'; DROP TABLE t; --",
    )
    assert got[1] == ("fd00::2", "ff02::", None, None, None, None, None, None, None)
    s.stop()


def test_buffer_is_rows_per_transaction(shipped_db: Path) -> None:
    s = SqlStack("log1:NFLOG,s1:SQLITE3", f'[s1]\ndb="{shipped_db}"\ntable="ulog_pkt"\nbuffer=3\n')
    seen: list[str] = []
    s.plugin.conn.set_trace_callback(seen.append)
    assert s.write([s.entry({"raw.pktlen": n}) for n in range(10)]) == ([], [])
    assert seen.count("BEGIN") == 4 and seen.count("COMMIT") == 4  # 3 + 3 + 3 + 1
    assert [r[0] for r in rows(shipped_db, "SELECT raw_pktlen FROM ulog_pkt")] == list(range(10))
    s.stop()


def test_a_refused_row_is_set_aside_and_the_others_written(tmp_path: Path) -> None:
    db = tmp_path / "t.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (raw_pktlen INTEGER CHECK (raw_pktlen <> 13), oob_prefix TEXT NOT NULL)")
    s = SqlStack("log1:NFLOG,s1:SQLITE3", f'[s1]\ndb="{db}"\ntable="t"\n')
    entries = [s.entry({"raw.pktlen": n, "oob.prefix": "p"}) for n in range(20)]
    entries[17] = s.entry({"raw.pktlen": 17})  # NULL prefix: NOT NULL refuses it
    rejected, left = s.write(entries)
    assert rejected == [entries[13], entries[17]] and left == []
    assert [r[0] for r in rows(db, "SELECT raw_pktlen FROM t")] == [n for n in range(20) if n not in (13, 17)]
    s.stop()


def test_a_locked_database_delays_rows_and_loses_none(shipped_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_out, "BUSY_TIMEOUT", 0.1)
    s = SqlStack("log1:NFLOG,s1:SQLITE3", f'[s1]\ndb="{shipped_db}"\ntable="ulog_pkt"\n')
    other = sqlite3.connect(shipped_db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    entries = [s.entry({"raw.pktlen": n}) for n in range(5)]
    batch = list(entries)
    with pytest.raises(Exception, match="locked"):
        s.plugin.write(batch)
    assert batch == entries  # nothing was written: everything waits
    other.execute("COMMIT")
    other.close()
    s.plugin.write(batch)
    assert [r[0] for r in rows(shipped_db, "SELECT raw_pktlen FROM ulog_pkt")] == list(range(5))
    s.stop()


def test_create_table_makes_a_column_per_key(tmp_path: Path) -> None:
    db = tmp_path / "new.sqlite"
    s = SqlStack("log1:NFLOG,base1:BASE,s1:SQLITE3", f'[s1]\ndb="{db}"\ntable="pkts"\ncreate_table=1\n')
    cols = {name: decl for _, name, decl, *_ in rows(db, "PRAGMA table_info(pkts)")}
    keys = {k.name for k, _ in s.plan.slots[-1].wildcard}
    assert set(cols) == {k.replace(".", "_") for k in keys}
    assert cols["ip_saddr"] == "TEXT" and cols["tcp_seq"] == "INTEGER" and cols["raw_pkt"] == "BLOB"
    s.write([s.entry({"ip.saddr": bytes([1, 2, 3, 4]), "tcp.seq": 2**32 - 1, "oob.prefix": "x"})])
    assert rows(db, "SELECT ip_saddr, tcp_seq, oob_prefix, ip_daddr FROM pkts") == [("1.2.3.4", 2**32 - 1, "x", None)]
    s.stop()


def start_refused(tmp_path: Path, section: str) -> str:
    conf = tmp_path / "refused.conf"
    conf.write_text(
        f'[global]\nlogfile="{tmp_path}/refused.log"\nplugin="{TEST_PLUGINS}"\n'
        f'stack=in1:PIPEIN,s1:SQLITE3\n[in1]\npath="{tmp_path}/fifo"\n{section}'
    )
    res = subprocess.run([*PYLOGD, "-c", str(conf)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res
    assert "Traceback" not in res.stderr
    return res.stderr


def test_a_missing_table_or_a_column_without_a_key_refuses_the_start(tmp_path: Path) -> None:
    db = tmp_path / "t.sqlite"
    err = start_refused(tmp_path, f'[s1]\ndb="{db}"\ntable="nothere"\n')
    assert f"table `nothere' is empty or missing in file `{db}'" in err
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (test_n INTEGER, test_bogus_col TEXT)")
    err = start_refused(tmp_path, f'[s1]\ndb="{db}"\ntable="t"\n')
    assert "cannot find key `test.bogus.col' in stack for column test_bogus_col" in err


def test_check_info_and_ulogd_so_path(tmp_path: Path) -> None:
    conf = tmp_path / "ulogd.conf"
    conf.write_text(
        '[global]\nplugin="/usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_SQLITE3.so"\n'
        "stack=log1:NFLOG,sqlite3_pkt:SQLITE3\nstack=ct1:NFCT,sqlite3_ct:SQLITE3\n"
        '[ct1]\n[sqlite3_ct]\ntable="ulog_ct"\ndb="/var/log/ulog/ulogd.sqlite3db"\nbuffer=200\n'
        '[sqlite3_pkt]\ntable="ulog_pkt"\ndb="/var/log/ulog/ulogd.sqlite3db"\nbuffer=200\n'
    )
    res = subprocess.run([*PYLOGD, "--check", "-c", str(conf)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "SQLITE3" in res.stdout and "buffer" in res.stdout
    info = subprocess.run(
        [*PYLOGD, "-i", "/usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_SQLITE3.so"], capture_output=True, text=True
    )
    assert info.returncode == 0 and "Var: db (String, Default: , Mandatory)" in info.stdout


def test_daemon_writes_every_event_and_reopens_on_sighup(tmp_path: Path) -> None:
    db = tmp_path / "t.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (test_n INTEGER, test_text TEXT)")
    d = PipeDaemon(tmp_path, "s1:SQLITE3", f'[s1]\ndb="{db}"\ntable="t"\nbuffer=50\n').start()
    try:
        d.send(range(1, 301))
        wait_for(lambda: rows(db, "SELECT count(*) FROM t")[0][0] == 300, what="300 rows")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reconnecting to the database" in read_text(d.log), what="the SIGHUP")
        d.send(range(301, 401))
    finally:
        assert d.stop() == 0
    assert rows(db, "SELECT test_n, test_text FROM t ORDER BY rowid") == [(n, f"t{n}") for n in range(1, 401)]


# ------------------------------------------------------------------------------------------------
# ulogd 2.0.8 beside pylogd

#: a table beside ulog_pkt with the columns where the two differ: addresses and sequence numbers
EXTENDED = """CREATE TABLE pkt_ext (oob_prefix VARCHAR(64), oob_family TINYINT, ip_saddr INT UNSIGNED,
    ip_daddr INT UNSIGNED, ip_protocol TINYINT, tcp_sport SMALLINT, tcp_dport SMALLINT, tcp_seq INT UNSIGNED,
    tcp_ackseq INT UNSIGNED, udp_len SMALLINT, icmp_type TINYINT, oob_mark INT UNSIGNED, ip_fragoff SMALLINT);"""


def compare(ulogd_rows: list[tuple], pylogd_rows: list[tuple], names: list[str]) -> int:
    """Every ulogd row against pylogd's in order; returns how many values the listed fixes changed."""
    assert len(ulogd_rows) == len(pylogd_rows) > 0
    fixed = 0
    for u, p in zip(ulogd_rows, pylogd_rows, strict=True):
        ulogd_row = dict(zip(names, u, strict=True))
        for name, uv, pv in zip(names, u, p, strict=True):
            if name.startswith(("oob_time", "flow_start")):
                continue  # each daemon's own clock reading for packets without a kernel stamp
            want = expected_value(name, uv, pv, ulogd_row)
            assert pv == want, f"{name}: ulogd {uv!r}, pylogd {pv!r}, expected {want!r}\nulogd:  {u}\npylogd: {p}"
            fixed += want != uv
    return fixed


def test_ulogd_and_pylogd_write_the_same_packet_rows(pair, tmp_path: Path) -> None:  # noqa: F811
    need_ulogd("SQLITE3")
    dbs = {}
    for name, group in (("ulogd", 5), ("pylogd", 6)):
        db = dbs[name] = tmp_path / f"{name}.sqlite"
        with sqlite3.connect(db) as conn:
            conn.executescript(shipped("sqlite3.table") + EXTENDED)
        (tmp_path / f"{name}.conf").write_text(
            f'[global]\nlogfile="{tmp_path}/{name}.daemon.log"\nloglevel=3\n'
            "stack=log1:NFLOG,s1:SQLITE3\nstack=log1:NFLOG,base1:BASE,s2:SQLITE3\n"
            f'[log1]\ngroup={group}\n[s1]\ndb="{db}"\ntable="ulog_pkt"\n[s2]\ndb="{db}"\ntable="pkt_ext"\n'
        )
    run_both_on_corpus(pair, tmp_path)
    tables = ("ulog_pkt", "pkt_ext")
    wait_equal_and_quiet(
        lambda: [rows(dbs[n], f"SELECT count(*) FROM {t}")[0][0] for n in dbs for t in tables], "rows", minimum=20
    )
    names = [r[1] for r in rows(dbs["ulogd"], "PRAGMA table_info(ulog_pkt)")]
    compare(rows(dbs["ulogd"], "SELECT * FROM ulog_pkt"), rows(dbs["pylogd"], "SELECT * FROM ulog_pkt"), names)
    names = [r[1] for r in rows(dbs["ulogd"], "PRAGMA table_info(pkt_ext)")]
    u_ext, p_ext = rows(dbs["ulogd"], "SELECT * FROM pkt_ext"), rows(dbs["pylogd"], "SELECT * FROM pkt_ext")
    fixed = compare(u_ext, p_ext, names)
    assert fixed > 0  # the IPv4 addresses at least
    by_prefix = {p[0]: p for p in p_ext}
    assert by_prefix["X "][2] == int.from_bytes(socket.inet_aton("10.77.0.2"), "big")  # host order
    assert by_prefix["X6 "][2] == "fd77::2"  # IPv6 stored
    assert any(p[7] == 1000 for p in p_ext)


def test_ulogd_and_pylogd_write_the_same_flow_rows(rig: Rig, tmp_path: Path) -> None:
    need_ulogd("SQLITE3")
    ns = rig.netns("cs")
    ns.nft(CT_RULES)
    ns.run("sysctl -qw net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_timestamp=1")
    dbs = {}
    for name in ("ulogd", "pylogd"):
        db = dbs[name] = tmp_path / f"{name}.sqlite"
        with sqlite3.connect(db) as conn:
            conn.executescript(shipped("sqlite3.table"))
        (tmp_path / f"{name}.conf").write_text(
            f'[global]\nlogfile="{tmp_path}/{name}.daemon.log"\nloglevel=3\n'
            f'stack=ct1:NFCT,s1:SQLITE3\n[ct1]\nhash_enable=0\n[s1]\ndb="{db}"\ntable="ulog_ct"\n'
        )
    ns.spawn([ULOGD, "-c", str(tmp_path / "ulogd.conf")], name="ulogd")
    ns.spawn([sys.executable, "-m", "pylogd", "-c", str(tmp_path / "pylogd.conf")], name="pylogd", cwd=ROOT)
    wait_for(lambda: "entering main loop" in read_text(tmp_path / "pylogd.daemon.log"), what="pylogd start")
    wait_for(lambda: "working in event mode" in read_text(tmp_path / "ulogd.daemon.log"), what="ulogd start")
    ns.call(traffic)
    ns.run(["conntrack", "-F"])

    def count(n: str) -> int:
        return rows(dbs[n], "SELECT count(*) FROM ulog_ct")[0][0]

    wait_for(lambda: count("ulogd") >= 8 and count("pylogd") >= 8, timeout=15, what="8 flow rows each")
    time.sleep(0.3)
    names = [r[1] for r in rows(dbs["ulogd"], "PRAGMA table_info(ulog_ct)")]
    u, p = rows(dbs["ulogd"], "SELECT * FROM ulog_ct"), rows(dbs["pylogd"], "SELECT * FROM ulog_ct")
    assert compare(u, p, names) > 0
    assert any(r[4] == "::1" for r in p)
    assert any(r[4] == int.from_bytes(socket.inet_aton("127.0.0.1"), "big") for r in p)


def test_ulogd_example_config_with_its_sql_stacks_passes_check(tmp_path: Path) -> None:
    example = Path("/usr/share/doc/ulogd2/examples/ulogd.conf")
    if not example.exists():
        pytest.skip("ulogd's example configuration is not installed (apt-get install ulogd2)")
    lines = []
    for line in example.read_text().splitlines():
        if line.startswith("#plugin=") and any(p in line for p in ("SQLITE3", "PGSQL", "MYSQL")):
            line = line[1:]
        if line.startswith("#stack=") and any(p in line for p in (":SQLITE3", ":PGSQL", ":MYSQL")):
            line = line[1:]
        lines.append(line)
    conf = tmp_path / "ulogd.conf"
    conf.write_text("\n".join(lines) + "\n")
    res = subprocess.run([*PYLOGD, "--check", "-c", str(conf)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for iid in ("mysql1:MYSQL", "mysql2:MYSQL", "pgsql1:PGSQL", "pgsql2:PGSQL", "pgsql3:PGSQL", "sqlite3_ct:SQLITE3"):
        assert iid in res.stdout, iid
    for name in ("SQLITE3", "PGSQL", "MYSQL"):
        info = subprocess.run(
            [*PYLOGD, "-i", f"/usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_{name}.so"], capture_output=True, text=True
        )
        assert info.returncode == 0 and f"Name: {name}" in info.stdout, info.stderr


def test_one_instance_in_two_stacks_writes_each_stacks_rows(tmp_path: Path) -> None:
    from pylogd.config import parse_ini
    from pylogd.log import Logger
    from pylogd.registry import Registry
    from pylogd.sql import SchemaError
    from pylogd.stack import build

    db = tmp_path / "t.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (oob_family INTEGER, oob_prefix TEXT, orig_ip_saddr INTEGER)")
    # NFLOG has no orig.ip.saddr, NFCT no oob.prefix: each stack fills what its keys give
    raw = parse_ini(
        "t.conf",
        f'[global]\nstack=ct1:NFCT,s1:SQLITE3\nstack=log1:NFLOG,base1:BASE,s1:SQLITE3\n[ct1]\n[s1]\ndb="{db}"\ntable="t"\n',
    )
    plans = build(raw, Registry(), Logger).stacks
    out = plans[0].instances[-1].plugin
    out.start(None)
    with pytest.raises(SchemaError, match=r"cannot find key `oob\.prefix' in stack for column oob_prefix"):
        out.handler(plans[0].slots[-1])
    out.stop()
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE t")
        conn.execute("CREATE TABLE t (oob_family INTEGER, oob_protocol INTEGER)")
    plans = build(raw, Registry(), Logger).stacks
    out = plans[0].instances[-1].plugin
    assert plans[1].instances[-1].plugin is out
    out.start(None)
    converts = [out.handler(plan.slots[-1]) for plan in plans]
    entries = []
    for n in range(4):
        plan, convert = plans[n % 2], converts[n % 2]
        values = [None] * plan.size
        slots = {k.name: s for k, s in plan.slots[-1].wildcard}
        values[slots["oob.family"]] = 2 + n
        values[slots["oob.protocol"]] = 100 + n
        entries.append(convert(values))
    out.write(entries)
    assert rows(db, "SELECT * FROM t") == [(2, 100), (3, 101), (4, 102), (5, 103)]
    out.stop()


def test_create_table_makes_the_table_again_in_a_rotated_file(tmp_path: Path) -> None:
    db = tmp_path / "t.sqlite"
    d = PipeDaemon(tmp_path, "s1:SQLITE3", f'[s1]\ndb="{db}"\ntable="t"\ncreate_table=1\n').start()
    try:
        d.send(range(1, 11))
        wait_for(lambda: rows(db, "SELECT count(*) FROM t")[0][0] == 10, what="10 rows")
        db.rename(tmp_path / "t.sqlite.1")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reconnecting to the database" in read_text(d.log), what="the SIGHUP")
        d.send(range(11, 21))
        wait_for(lambda: db.exists() and rows(db, "SELECT count(*) FROM t")[0][0] == 10, what="10 rows in the new file")
    finally:
        assert d.stop() == 0
    assert rows(tmp_path / "t.sqlite.1", "SELECT test_n FROM t") == [(n,) for n in range(1, 11)]
    assert rows(db, "SELECT test_n, test_text FROM t") == [(n, f"t{n}") for n in range(11, 21)]
