"""MYSQL against the real MariaDB server: ulogd's shipped schemas and functions over TCP and the unix
socket (host="localhost"), start-up checks, refused rows, a password from a file, a server down at
start, killed connections during steady traffic, and ulogd 2.0.8 beside pylogd on the same packets
and flows.

Every test works in a database of its own, dropped after it.  Where pylogd's rows deliberately differ
from ulogd's is named once, in the block below.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import PYLOGD, ROOT, TEST_PLUGINS
from pylogd.plugins.outputs.mysql import Mysql
from rig import Rig, read_text, wait_for
from sqlkit import (
    MYSQL_SOCKET,
    PACKET_SYN,
    PACKET_UDP6,
    MyDb,
    PipeDaemon,
    SqlStack,
    TcpForwarder,
    expected_row,
    my_db_fixture,  # noqa: F401  (the fixture my_db)
    my_kill,
    mysql_admin,
    need_ulogd,
    run_outage,
    shipped,
    side_by_side_flows,
    side_by_side_packets,
)
from test_compat_ulogd import pair  # noqa: F401  (pair: a fixture)

from pylogd.plugin import PluginError

pymysql = pytest.importorskip("pymysql")

# ------------------------------------------------------------------------------------------------
# Where pylogd's rows deliberately differ from ulogd 2.0.8's (sqlkit.expected_row): BASE's fixes
# (test_compat_ulogd.DIFFERENCES, by key), a later fragment's transport columns (ulogd filled them
# from the payload, pylogd leaves them NULL), and IP2BIN's reply.ip.daddr.bin, which ulogd never set.

CLOCK = ("oob_time_sec", "oob_time_usec", "flow_start_sec", "flow_start_usec")
IDS = ("_id", "_ct_id", "timestamp")

PACKET_STACK = "log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2bin1:IP2BIN,mac2str1:HWHDR,my1:MYSQL"
FLOW_STACK = "ct1:NFCT,ip2bin1:IP2BIN,my2:MYSQL"

V4_MAPPED = bytes(10) + b"\xff\xff"
SYN = {
    **PACKET_SYN,
    "ip.saddr.bin": "0x00000000000000000000ffff0a4d0002",
    "ip.daddr.bin": "0x00000000000000000000ffff0a4d0001",
}
UDP6 = {**PACKET_UDP6, "ip.saddr.bin": "0xfd770000000000000000000000000002"}


@pytest.mark.parametrize(
    "where",
    [{"host": "127.0.0.1", "port": 3306}, {"host": "localhost"}, {"host": MYSQL_SOCKET}],
    ids=["tcp", "localhost-socket", "socket-path"],
)
def test_shipped_schema_takes_packets_through_insert_packet_full(my_db: MyDb, where: dict) -> None:
    my_db.load(shipped("mysql-ulogd2.sql"))
    s = SqlStack(PACKET_STACK, my_db.section("my1", table="ulog", procedure="INSERT_PACKET_FULL", **where))
    assert s.write([s.entry(SYN), s.entry(UDP6)]) == ([], [])
    got = my_db.rows(
        "SELECT oob_prefix, oob_in, ip_saddr_bin, ip_daddr_bin, tcp_seq, tcp_syn, udp_dport, mac_saddr_str, "
        "oob_time_sec FROM ulog ORDER BY _id"
    )
    assert got == [
        ("TCPIN: ", "rsva", V4_MAPPED + bytes([10, 77, 0, 2]), V4_MAPPED + bytes([10, 77, 0, 1]), 3537804397, 1, None,
         "42:69:33:72:3a:73", 1795388587),
        ("X6 ", None, bytes.fromhex("fd770000000000000000000000000002"), None, None, None, 7777, None, None),
    ]  # fmt: skip
    s.stop()


def test_flat_schema_takes_rows_through_insert(my_db: MyDb) -> None:
    my_db.load(shipped("mysql-ulogd2-flat.sql"))
    s = SqlStack(PACKET_STACK, my_db.section("my1", table="ulog2", procedure="INSERT"))
    assert s.write([s.entry(SYN), s.entry(UDP6)]) == ([], [])
    assert s.plugin.statement.startswith("INSERT INTO ulog2 (oob_time_sec, ")  # _id is the server's
    got = my_db.rows("SELECT _id, oob_prefix, ip_saddr_bin, tcp_syn, raw_label, mac_str, udp_len FROM ulog2")
    assert got == [
        (1, "TCPIN: ", V4_MAPPED + bytes([10, 77, 0, 2]), 1, 0, "a6:0c:a2:bf:78:26:42:69:33:72:3a:73:08:00", None),
        (2, "X6 ", bytes.fromhex("fd770000000000000000000000000002"), None, None, None, 11),
    ]
    s.stop()


def test_start_refuses_a_table_that_does_not_fit(my_db: MyDb, tmp_path: Path) -> None:
    my_db.execute("CREATE TABLE t (id serial, test_n integer, test_bogus text)")
    for options, message in (
        ({"table": "t"}, "cannot find key `test.bogus' in stack for column test_bogus"),
        ({"table": "nothere"}, f"table {my_db.name}.nothere is empty or missing"),
        ({"table": "t", "procedure": "NO_SUCH_FN"}, f"function NO_SUCH_FN not found in database {my_db.name}"),
        ({"table": "t", "db": "no_such_db_pylogd"}, "Unknown database 'no_such_db_pylogd'"),
    ):
        conf = tmp_path / "refused.conf"
        conf.write_text(
            f'[global]\nlogfile="{tmp_path}/refused.log"\nplugin="{TEST_PLUGINS}"\n'
            f'stack=in1:PIPEIN,my1:MYSQL\n[in1]\npath="{tmp_path}/fifo"\n'
            + my_db.section("my1", **{"procedure": "INSERT", **options})
        )
        res = subprocess.run([*PYLOGD, "-c", str(conf)], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert res.returncode == 1 and message in res.stderr, (options, res.stderr)
        assert "Traceback" not in res.stderr


def count(db: MyDb) -> int:
    return db.rows("SELECT count(*) FROM t")[0][0]


def exactly_once(db: MyDb, sent: int) -> None:
    numbers = [r[0] for r in db.rows("SELECT test_n FROM t ORDER BY id")]
    assert sorted(numbers) == list(range(1, sent + 1)), (
        f"{len(numbers)} rows for {sent} events; missing {sorted(set(range(1, sent + 1)) - set(numbers))[:10]}, "
        f"twice {sorted(n for n in set(numbers) if numbers.count(n) > 1)[:10]}"
    )
    assert numbers == sorted(numbers)  # in order


def test_a_refused_row_is_set_aside_and_the_rows_behind_it_written(my_db: MyDb, tmp_path: Path) -> None:
    my_db.execute("CREATE TABLE t (id serial, test_n integer CHECK (test_n <> 13), test_text text)")
    d = PipeDaemon(tmp_path, "my1:MYSQL", my_db.section("my1", table="t", procedure="INSERT")).start()
    try:
        d.send(range(1, 31))
        wait_for(lambda: count(my_db) == 29, what="29 rows")
        wait_for(lambda: "rejected and set aside" in read_text(d.log), what="the rejected row in the log")
        d.send(range(31, 41))
        wait_for(lambda: count(my_db) == 39, what="the rows after it")
    finally:
        assert d.stop() == 0
    assert [r[0] for r in my_db.rows("SELECT test_n FROM t ORDER BY id")] == [n for n in range(1, 41) if n != 13]
    assert "CONSTRAINT `t_test_n_check` failed" in read_text(d.log) or "test_n" in read_text(d.log)
    assert "rejected=1" in read_text(d.log)


def test_password_from_a_file_or_the_environment(my_db: MyDb, tmp_path: Path) -> None:
    user = my_db.name[-30:]
    admin = my_db.admin
    with admin.cursor() as cur:
        for host in ("localhost", "127.0.0.1"):
            cur.execute(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY 'pyl0gd-secret'")
            cur.execute(f"GRANT ALL ON {my_db.name}.* TO '{user}'@'{host}'")
    try:
        my_db.execute("CREATE TABLE t (id serial, test_n integer, test_text text)")
        secret = tmp_path / "my.pass"
        secret.write_text("pyl0gd-secret\n")
        for extra, env in (
            ({"pass_file": secret}, {}),
            ({}, {"PYLOGD_MY1_PASS": "pyl0gd-secret"}),
        ):
            section = my_db.section("my1", user=user, host="127.0.0.1", table="t", procedure="INSERT", **extra)
            conf = tmp_path / "pw.conf"
            log = tmp_path / "pw.log"
            conf.write_text(
                f'[global]\nlogfile="{log}"\nloglevel=3\nplugin="{TEST_PLUGINS}"\nstack=in1:PIPEIN,my1:MYSQL\n'
                f'[in1]\npath="{tmp_path}/fifo"\n{section}'
            )
            proc = subprocess.Popen(
                [*PYLOGD, "-c", str(conf)], cwd=ROOT, env={**os.environ, **env}, stderr=subprocess.PIPE, text=True
            )
            try:
                wait_for(lambda p=proc, f=log: "entering main loop" in read_text(f) or p.poll() is not None)
                assert proc.poll() is None, proc.communicate()
                assert "connected" in read_text(log) and "not reachable" not in read_text(log)
            finally:
                proc.terminate()
                proc.wait(30)
            log.unlink()
        # a wrong password at start is the server's definite no: the start is refused, saying so
        (tmp_path / "bad.pass").write_text("wrong\n")
        section = my_db.section(
            "my1", user=user, host="127.0.0.1", table="t", procedure="INSERT", pass_file=tmp_path / "bad.pass"
        )
        d = PipeDaemon(tmp_path, "my1:MYSQL", section).start(wait=False)
        assert d.proc is not None
        _, err = d.proc.communicate(timeout=60)
        assert d.proc.returncode == 1 and "Access denied" in err, err
    finally:
        with admin.cursor() as cur:
            for host in ("localhost", "127.0.0.1"):
                cur.execute(f"DROP USER IF EXISTS '{user}'@'{host}'")


def test_server_down_at_start_then_up(my_db: MyDb, tmp_path: Path) -> None:
    my_db.execute("CREATE TABLE t (id serial, test_n integer, test_text text)")
    fwd = TcpForwarder(("127.0.0.1", 3306))
    section = my_db.section("my1", host="127.0.0.1", port=fwd.port, table="t", procedure="INSERT")
    d = PipeDaemon(tmp_path, "my1:MYSQL", section).start()
    try:
        assert "database not reachable at start" in read_text(d.log)
        d.send(range(1, 501))
        time.sleep(1.0)
        assert count(my_db) == 0
        fwd.up()
        wait_for(lambda: count(my_db) == 500, timeout=40, what="500 rows")
        d.send(range(501, 601))
        wait_for(lambda: count(my_db) == 600, timeout=20, what="600 rows")
    finally:
        assert d.stop() == 0
        fwd.down()
    exactly_once(my_db, 600)


def test_killed_connections_for_ten_seconds_lose_no_row_and_write_none_twice(my_db: MyDb, tmp_path: Path) -> None:
    my_db.execute("CREATE TABLE t (id serial, test_n integer, test_text text)")
    d = PipeDaemon(tmp_path, "my1:MYSQL", my_db.section("my1", host="127.0.0.1", table="t", procedure="INSERT"))
    d.start()
    killer = mysql_admin()
    try:
        spare = (my_db.admin.thread_id(),)
        sent = run_outage(d, kill=lambda: my_kill(killer, my_db.name, spare), count=lambda: count(my_db))
        wait_for(lambda: count(my_db) >= sent, timeout=60, what=f"{sent} rows")
        time.sleep(0.5)
    finally:
        killer.close()
        assert d.stop() == 0
    exactly_once(my_db, sent)
    log = read_text(d.log)
    assert "write failed" in log and "writing again after" in log


def test_sighup_reconnects(my_db: MyDb, tmp_path: Path) -> None:
    my_db.execute("CREATE TABLE t (id serial, test_n integer, test_text text)")
    d = PipeDaemon(tmp_path, "my1:MYSQL", my_db.section("my1", table="t", procedure="INSERT")).start()
    try:
        d.send(range(1, 11))
        wait_for(lambda: count(my_db) == 10, what="10 rows")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reconnecting to the database" in read_text(d.log), what="SIGHUP")
        d.send(range(11, 21))
        wait_for(lambda: count(my_db) == 20, what="20 rows")
        wait_for(lambda: "connected to the database again" in read_text(d.log), what="the new connection")
    finally:
        assert d.stop() == 0
    exactly_once(my_db, 20)


def test_a_missing_driver_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from pylogd.log import Logger

    monkeypatch.setitem(sys.modules, "pymysql", None)  # an import of it fails
    opts = {o.name: o.default for o in Mysql.spec.options}
    opts |= {"db": "x", "host": "localhost", "user": "u", "table": "t", "procedure": "INSERT"}
    with pytest.raises(PluginError, match="needs the Python package PyMySQL"):
        Mysql("my1", opts, Logger("my1")).configure()
    with pytest.raises(PluginError, match="pass and pass_file both set; keep one") as refused:
        Mysql("my1", opts | {"pass": "inline", "pass_file": "/etc/secret"}, Logger("my1")).configure()
    assert refused.value.option == "pass_file"


# ------------------------------------------------------------------------------------------------
# ulogd 2.0.8 beside pylogd


def compare(u_rows: list[tuple], p_rows: list[tuple], names: list[str]) -> int:
    assert len(u_rows) == len(p_rows) > 0
    fixed = 0
    for u, p in zip(u_rows, p_rows, strict=True):
        ud, pd = dict(zip(names, u, strict=True)), dict(zip(names, p, strict=True))
        for name in IDS:
            ud.pop(name, None)
            pd.pop(name, None)
        want = expected_row(ud, pd, unset_by_ulogd=("reply_ip_daddr",))  # IP2BIN's, which ulogd never set
        fixed += want != ud
        for name in CLOCK:
            if name in ud:
                assert (ud[name] is None) == (pd[name] is None)
                want[name] = pd[name]
        assert pd == want, f"\nulogd:  {ud}\npylogd: {pd}"
    return fixed


@pytest.fixture
def two_dbs(my_db: MyDb) -> Any:
    names = {"ulogd": my_db.name + "_u", "pylogd": my_db.name + "_p"}
    with my_db.admin.cursor() as cur:
        for name in names.values():
            cur.execute(f"CREATE DATABASE {name}")
    try:
        yield {n: MyDb(my_db.admin, db) for n, db in names.items()}
    finally:
        with my_db.admin.cursor() as cur:
            for name in names.values():
                cur.execute(f"DROP DATABASE IF EXISTS {name}")


def test_ulogd_and_pylogd_write_the_same_packet_rows(pair, two_dbs: dict[str, MyDb], tmp_path: Path) -> None:  # noqa: F811
    need_ulogd("MYSQL")
    for db in two_dbs.values():
        db.load(shipped("mysql-ulogd2.sql"))
    sections = {n: db.section("my1", table="ulog", procedure="INSERT_PACKET_FULL") for n, db in two_dbs.items()}

    def rows(n: str) -> list[tuple]:
        return two_dbs[n].rows("SELECT * FROM ulog ORDER BY _id")

    # the shipped schema's mac.mac_protocol is a signed smallint: IPv6's ethertype 0x86dd is out of range,
    # so the server refuses the IPv6 packets that have a MAC header, from both daemons
    side_by_side_packets(pair, tmp_path, PACKET_STACK, sections, lambda n: len(rows(n)), min_rows=15)
    with two_dbs["ulogd"].admin.cursor() as cur:
        cur.execute(f"SELECT * FROM {two_dbs['ulogd'].name}.ulog LIMIT 0")
        names = [d[0] for d in cur.description]
    assert compare(rows("ulogd"), rows("pylogd"), names) >= 2  # the fragments at least


def test_ulogd_and_pylogd_write_the_same_flow_rows(rig: Rig, two_dbs: dict[str, MyDb], tmp_path: Path) -> None:
    need_ulogd("MYSQL")
    for db in two_dbs.values():
        db.load(shipped("mysql-ulogd2.sql"))
    sections = {n: db.section("my2", table="conntrack", procedure="INSERT_CT") for n, db in two_dbs.items()}

    def rows(n: str) -> list[tuple]:
        return two_dbs[n].rows("SELECT * FROM ulog2_ct ORDER BY _ct_id")

    side_by_side_flows(rig, tmp_path, FLOW_STACK, sections, lambda n: len(rows(n)))
    with two_dbs["ulogd"].admin.cursor() as cur:
        cur.execute(f"SELECT * FROM {two_dbs['ulogd'].name}.ulog2_ct LIMIT 0")
        names = [d[0] for d in cur.description]
    p_rows = rows("pylogd")
    compare(rows("ulogd"), p_rows, names)
    reply_daddr = [r[names.index("reply_ip_daddr")] for r in p_rows]
    orig_saddr = [r[names.index("orig_ip_saddr")] for r in p_rows]
    assert reply_daddr == orig_saddr  # no NAT here: the reply goes back to the original source
    assert V4_MAPPED + bytes([127, 0, 0, 1]) in orig_saddr and bytes(15) + b"\x01" in orig_saddr


FUNCTION = """
CREATE TABLE t (id serial, test_n integer, test_text text);
CREATE VIEW v AS SELECT id, test_n, test_text FROM t;
DELIMITER $$
CREATE FUNCTION ADD_ROW(n integer, x text) RETURNS integer MODIFIES SQL DATA
BEGIN
    IF n % 100 = 13 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'unlucky'; END IF;
    INSERT INTO t (test_n, test_text) VALUES (n, x);
    RETURN LAST_INSERT_ID();
END$$
DELIMITER ;
"""


def test_a_function_refusing_a_row_sets_aside_that_row_only(my_db: MyDb, tmp_path: Path) -> None:
    my_db.load(FUNCTION)
    d = PipeDaemon(tmp_path, "my1:MYSQL", my_db.section("my1", table="v", procedure="ADD_ROW")).start()
    try:
        d.send(range(1, 251))
        wait_for(lambda: count(my_db) == 247, what="every row but 13, 113 and 213")
        wait_for(lambda: "rejected=" in read_text(d.log) or "rejected and set aside" in read_text(d.log))
    finally:
        assert d.stop() == 0
    want = [n for n in range(1, 251) if n % 100 != 13]
    assert [r[0] for r in my_db.rows("SELECT test_n FROM t ORDER BY id")] == want  # in order, once each
    log = read_text(d.log)
    assert "unlucky" in log and "rejected=3" in log


def cut_off_stack(my_db: MyDb, stage: str) -> tuple[SqlStack, list]:
    """A MYSQL stack on table t whose first batch loses its connection at ``stage``: after XA PREPARE
    reached the server but before its answer came back ("prepare-unanswered"), after PREPARE
    answered ("prepared"), or after COMMIT ("committed"); and five entries for it."""
    my_db.execute("CREATE TABLE t (id serial, test_n integer, test_text text)")
    section = my_db.section("my1", table="t", procedure="INSERT") + '[in1]\npath="/nonexistent/fifo"\n'
    s = SqlStack("in1:PIPEIN,my1:MYSQL", section)
    plugin = s.plugin

    def cut(conn: Any, cur: Any) -> None:
        xid = plugin._xa[0]
        cur.execute("XA END %s", (xid,))
        cur.execute("XA PREPARE %s", (xid,))
        if stage != "prepare-unanswered":
            plugin._xa[1] = True
        if stage == "committed":
            cur.execute("XA COMMIT %s", (xid,))
        conn.close()
        raise pymysql.err.OperationalError(2013, "Lost connection to server during query")

    plugin.commit = cut
    return s, [s.entry({"test.n": n, "test.text": "x"}) for n in range(1, 6)]


@pytest.mark.parametrize("stage", ["prepare-unanswered", "prepared", "committed"])
def test_a_cut_off_commit_is_settled_by_xa_recover(my_db: MyDb, stage: str) -> None:
    s, entries = cut_off_stack(my_db, stage)
    batch = list(entries)
    with pytest.raises(Exception, match="Lost connection"):
        s.plugin.write(batch)
    assert batch == entries  # the runner keeps them all: the outcome is not known yet
    del s.plugin.commit
    s.plugin.write(batch)
    assert [r[0] for r in my_db.rows("SELECT test_n FROM t ORDER BY id")] == [1, 2, 3, 4, 5]
    assert my_db.rows("XA RECOVER") == []
    s.stop()


def test_a_settle_whose_own_commit_is_cut_off_does_not_write_the_batch_again(
    my_db: MyDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PREPARE reached the server but its answer did not; the settle finds the batch prepared and
    commits it, and that answer is lost too: the next settle finds nothing pending, which now means
    committed (it had meant "never prepared", and the rows went twice under killed connections)."""
    s, entries = cut_off_stack(my_db, "prepare-unanswered")
    real_execute = pymysql.cursors.Cursor.execute

    def commit_then_cut(cur: Any, query: str, args: object = None) -> int:
        result = real_execute(cur, query, args)
        if query.startswith("XA COMMIT"):
            cur.connection.close()
            raise pymysql.err.OperationalError(2013, "Lost connection to server during query")
        return result

    batch = list(entries)
    with pytest.raises(Exception, match="Lost connection"):
        s.plugin.write(batch)
    del s.plugin.commit
    with monkeypatch.context() as m:
        m.setattr(pymysql.cursors.Cursor, "execute", commit_then_cut)
        with pytest.raises(Exception, match="cannot settle"):
            s.plugin.write(batch)  # the settle: XA RECOVER lists the batch, its XA COMMIT is cut off
    assert my_db.rows("XA RECOVER") == []  # committed on the server all the same
    s.plugin.write(batch)
    assert batch == []
    assert [r[0] for r in my_db.rows("SELECT test_n FROM t ORDER BY id")] == [1, 2, 3, 4, 5]
    s.stop()


PROCEDURES = """
CREATE TABLE t (id serial, test_n integer, test_text text);
DELIMITER $$
CREATE PROCEDURE ADD_ROW(n integer, x text) BEGIN INSERT INTO t (test_n, test_text) VALUES (n, x); END$$
CREATE FUNCTION ADD_FN(n integer, x text) RETURNS integer MODIFIES SQL DATA
BEGIN INSERT INTO t (test_n, test_text) VALUES (n, x); RETURN LAST_INSERT_ID(); END$$
DELIMITER ;
"""


@pytest.mark.parametrize(
    ("procedure", "statement"),
    [
        ("INSERT", "INSERT INTO t (test_n, test_text) VALUES (%s, %s)"),
        ("insert into t", "insert into t (test_n, test_text) VALUES (%s, %s)"),
        ("CALL ADD_ROW", "CALL ADD_ROW(%s, %s)"),
        ("ADD_FN", "SELECT ADD_FN(%s, %s)"),
    ],
)
def test_every_procedure_form_writes_the_rows(my_db: MyDb, procedure: str, statement: str) -> None:
    my_db.load(PROCEDURES)
    section = my_db.section("my1", table="t", procedure=procedure) + '[in1]\npath="/nonexistent/fifo"\n'
    s = SqlStack("in1:PIPEIN,my1:MYSQL", section)
    assert s.write([s.entry({"test.n": n, "test.text": f"r{n}"}) for n in range(1, 251)]) == ([], [])
    assert s.plugin.statement == statement
    assert my_db.rows("SELECT test_n, test_text FROM t ORDER BY id") == [(n, f"r{n}") for n in range(1, 251)]
    s.stop()


@pytest.mark.parametrize("procedure", ["ADD_FN", "INSERT"])
def test_text_is_written_as_the_driver_escapes_it(my_db: MyDb, procedure: str) -> None:
    """Calls of a function many to a DO, and a table's rows many to an INSERT: both escaped by the driver."""
    my_db.load(PROCEDURES)
    section = my_db.section("my1", table="t", procedure=procedure) + '[in1]\npath="/nonexistent/fifo"\n'
    s = SqlStack("in1:PIPEIN,my1:MYSQL", section)
    texts = ["it's", 'a "quote"', "back\\slash", "%s %(x)s", "zero\x00byte", "äöü €", "", "NULL", None]
    values = [(n, texts[n % len(texts)]) for n in range(1, 2501)]  # more than one statement
    assert s.write([s.entry({"test.n": n, "test.text": x}) for n, x in values]) == ([], [])
    assert my_db.rows("SELECT test_n, test_text FROM t ORDER BY id") == values
    s.stop()


class Crash(BaseException):
    """pylogd dies here: nothing after it runs, no handler sees it."""


@pytest.mark.parametrize("stage", ["before-prepare", "prepared", "committed"])
def test_a_batch_in_doubt_when_pylogd_died_is_settled_at_the_next_start(
    my_db: MyDb, tmp_path: Path, stage: str
) -> None:
    """With a spool, the record of a batch is on disk around XA PREPARE and COMMIT; a pylogd that died
    there (its connection gone, its memory lost) leaves it, and the next one settles the batch the
    spool gives it again: written once whatever the stage."""
    my_db.execute("CREATE TABLE t (id serial, test_n integer, test_text text)")
    section = my_db.section("my1", table="t", procedure="INSERT") + '[in1]\npath="/nonexistent/fifo"\n'
    first = SqlStack("in1:PIPEIN,my1:MYSQL", section)
    plugin = first.plugin
    disk: dict = {}  # what the stack's spool keeps: the record of the batch, written before each step

    def die() -> None:
        plugin.conn.close()  # the process is gone: so is its session
        raise Crash

    def keep_then_maybe_die(record: dict) -> None:
        disk["doubt"] = record
        if record["prepared"] == (stage == "prepared") and stage != "committed":
            die()

    channel = plugin.channel("1", keep_then_maybe_die)
    channel.position = [7, 0]  # the batch as the spool gives it back
    if stage == "committed":
        commit = plugin.commit

        def commit_then_die(conn, cur) -> None:
            commit(conn, cur)
            die()

        plugin.commit = commit_then_die
    batch = [first.entry({"test.n": n, "test.text": "x"}) for n in range(1, 6)]
    with pytest.raises(Crash):
        channel.write(list(batch))
    assert disk["doubt"]["position"] == [7, 0]
    assert len(my_db.rows("XA RECOVER")) == (1 if stage == "prepared" else 0)

    second = SqlStack("in1:PIPEIN,my1:MYSQL", section)  # the next start, the same batch from the spool
    again = second.plugin.channel("1", None)
    again.adopt(disk["doubt"])
    again.position = [7, 0]
    more = [second.entry({"test.n": n, "test.text": "x"}) for n in range(6, 11)]
    again.write(batch + more)
    assert [r[0] for r in my_db.rows("SELECT test_n FROM t ORDER BY id")] == list(range(1, 11))
    assert my_db.rows("XA RECOVER") == []
    assert again.in_doubt is None
    second.stop()


SLOW_FN = """
CREATE TABLE t (id serial, test_n integer, test_text text);
DELIMITER $$
CREATE FUNCTION ADD_FN(n integer, x text) RETURNS integer MODIFIES SQL DATA
BEGIN IF n = 350 THEN DO SLEEP(1.5); END IF; INSERT INTO t (test_n, test_text) VALUES (n, x); RETURN 0; END$$
DELIMITER ;
"""


def test_a_server_that_stops_answering_costs_a_timeout_and_every_row_is_written_once(
    my_db: MyDb, tmp_path: Path
) -> None:
    """Every byte between pylogd and MariaDB held for 8 s, from the middle of a batch, under steady traffic
    (a server that froze, a network that drops everything): past io_timeout (3 s) pylogd gives the
    connection up, its connects time out while the silence lasts, and once it ends every row is written
    once, in order."""
    my_db.load(SLOW_FN)
    fwd = TcpForwarder(("127.0.0.1", 3306))
    fwd.up()
    section = my_db.section(
        "my1", host="127.0.0.1", port=fwd.port, table="t", procedure="ADD_FN", io_timeout=3, connect_timeout=2
    )
    d = PipeDaemon(tmp_path, "my1:MYSQL", section).start()
    sent = 0

    def burst(n: int = 50) -> None:
        nonlocal sent
        d.send(range(sent + 1, sent + n + 1))
        sent += n

    busy = "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND INFO LIKE 'DO %%'"
    try:
        burst(100)
        wait_for(lambda: count(my_db) == 100, timeout=20, what="the first rows")
        burst(250)  # row 350 takes the server 1.5 s: its batch is under way for that long
        wait_for(lambda: my_db.rows(busy, (my_db.name,)), timeout=20, what="a batch under way")
        fwd.freeze()
        try:
            end = time.monotonic() + 8
            while time.monotonic() < end:
                burst()
                time.sleep(0.1)
            assert "Lost connection" in read_text(d.log) or "timed out" in read_text(d.log)
        finally:
            fwd.thaw()
        for _ in range(10):
            burst()
            time.sleep(0.1)
        wait_for(lambda: count(my_db) >= sent, timeout=60, what="every row")
        time.sleep(1)
    finally:
        assert d.stop() == 0
        fwd.down()
    exactly_once(my_db, sent)
    assert my_db.rows("XA RECOVER") == []
