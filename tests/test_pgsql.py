"""PGSQL against the real PostgreSQL server: ulogd's shipped schemas and functions over TCP and the unix
socket, start-up checks, refused rows, a server down at start, killed connections during steady
traffic, NAT flows kept current through INSERT_OR_REPLACE_CT, and ulogd 2.0.8 beside pylogd on the
same packets and flows.

Every test works in a schema of its own in the database ``test``, dropped after it.  Where pylogd's
rows deliberately differ from ulogd's is named once, in the block below.
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
from pylogd.plugins.outputs.pgsql import Pgsql
from rig import Rig, read_text, wait_for
from sqlkit import (
    PACKET_SYN,
    PACKET_UDP6,
    PG_SOCKET_DIR,
    PgSchema,
    PipeDaemon,
    SqlStack,
    TcpForwarder,
    expected_row,
    frozen,
    need_ulogd,
    pg_admin,
    pg_backends,
    pg_kill,
    pg_schema_fixture,  # noqa: F401  (the fixture pg_schema)
    run_outage,
    shipped,
    side_by_side_flows,
    side_by_side_packets,
    spooled_doubt,
)
from test_compat_ulogd import pair  # noqa: F401  (pair: a fixture)

from pylogd.log import Logger
from pylogd.plugin import PluginError

psycopg = pytest.importorskip("psycopg")

# ------------------------------------------------------------------------------------------------
# Where pylogd's rows deliberately differ from ulogd 2.0.8's (sqlkit.expected_row): BASE's fixes
# (test_compat_ulogd.DIFFERENCES, by key) and a later fragment's transport columns, which ulogd
# filled from the payload and pylogd leaves NULL.  The PostgreSQL schemas hold addresses as inet
# text from IP2STR, so the byte-order fix of raw address keys does not show here.

CLOCK = ("oob_time_sec", "oob_time_usec", "flow_start_sec", "flow_start_usec")

PACKET_STACK = "log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,mac2str1:HWHDR,pg1:PGSQL"
FLOW_STACK = "ct1:NFCT,ip2str1:IP2STR,pg2:PGSQL"

SYN = {**PACKET_SYN, "ip.saddr.str": "10.77.0.2", "ip.daddr.str": "10.77.0.1"}
UDP6 = {**PACKET_UDP6, "ip.saddr.str": "fd77::2", "ip.daddr.str": "fd77::1"}


def view(schema: PgSchema, columns: str, table: str = "ulog") -> list[tuple]:
    return schema.rows(f"SELECT {columns} FROM {table} ORDER BY _id")


@pytest.mark.parametrize("host", ["127.0.0.1", "", PG_SOCKET_DIR], ids=["tcp", "default-socket", "socket-dir"])
def test_shipped_schema_takes_packets_through_insert_packet_full(pg_schema: PgSchema, host: str) -> None:
    pg_schema.load(shipped("pgsql-ulogd2.sql"))
    s = SqlStack(PACKET_STACK, pg_schema.section("pg1", host=host, table="ulog", procedure="INSERT_PACKET_FULL"))
    assert s.write([s.entry(SYN), s.entry(UDP6)]) == ([], [])
    got = view(
        pg_schema,
        "oob_prefix, oob_in, host(ip_saddr_str), host(ip_daddr_str), tcp_seq, tcp_syn, tcp_ack, udp_dport, "
        "mac_saddr_str::text, oob_time_sec",
    )
    assert got == [
        ("TCPIN: ", "rsva", "10.77.0.2", "10.77.0.1", 3537804397, True, False, None, "42:69:33:72:3a:73", 1795388587),
        ("X6 ", None, "fd77::2", "fd77::1", None, None, None, 7777, None, None),
    ]
    s.stop()


def test_connstring_replaces_db_host_and_user(pg_schema: PgSchema) -> None:
    pg_schema.load("CREATE TABLE t (_id serial, ip_saddr_str inet, oob_prefix text);")
    section = pg_schema.section(
        "pg1", db="nothere", user="nobody", connstring=f"host={PG_SOCKET_DIR} dbname=test user=postgres"
    )
    s = SqlStack(PACKET_STACK, section + 'table="t"\nprocedure="INSERT"\n')
    assert s.write([s.entry({"ip.saddr.str": "fd00::1", "oob.prefix": "c"})]) == ([], [])
    assert pg_schema.rows("SELECT host(ip_saddr_str), oob_prefix FROM t") == [("fd00::1", "c")]
    s.stop()


def test_flat_schema_takes_rows_through_insert(pg_schema: PgSchema) -> None:
    pg_schema.load(shipped("pgsql-ulogd2-flat.sql"))
    s = SqlStack(PACKET_STACK, pg_schema.section("pg1", host="", table="ulog2", procedure="INSERT"))
    assert s.write([s.entry(SYN), s.entry(UDP6)]) == ([], [])
    assert s.plugin.statement.startswith(f"INSERT INTO {pg_schema.name}.ulog2 (oob_time_sec, ")
    assert s.plugin._copy.startswith(f"COPY {pg_schema.name}.ulog2 (oob_time_sec, ")  # a table: batches by COPY
    got = view(pg_schema, "oob_prefix, host(ip_saddr_str), tcp_syn, raw_label, mac_str, udp_len", table="ulog2")
    assert got == [
        ("TCPIN: ", "10.77.0.2", True, 0, "a6:0c:a2:bf:78:26:42:69:33:72:3a:73:08:00", None),
        ("X6 ", "fd77::2", None, None, None, 11),
    ]
    s.stop()


def test_start_refuses_a_table_that_does_not_fit(pg_schema: PgSchema, tmp_path: Path) -> None:
    pg_schema.load("CREATE TABLE t (_id serial, test_n integer, test_bogus text);")
    for options, message in (
        ({"table": "t"}, "cannot find key `test.bogus' in stack for column test_bogus"),
        ({"table": "nothere"}, f"table {pg_schema.name}.nothere is empty or missing"),
        ({"table": "t", "procedure": "NO_SUCH_FN"}, f"function NO_SUCH_FN not found in schema {pg_schema.name}"),
        ({"table": "t", "schema": "no_such_schema"}, "schema no_such_schema not found"),
        ({"table": "t", "db": "no_such_db_pylogd"}, 'database "no_such_db_pylogd" does not exist'),
        ({"table": "t", "user": "no_such_user_pylogd"}, 'role "no_such_user_pylogd" does not exist'),
    ):
        conf = tmp_path / "refused.conf"
        conf.write_text(
            f'[global]\nlogfile="{tmp_path}/refused.log"\nplugin="{TEST_PLUGINS}"\n'
            f'stack=in1:PIPEIN,pg1:PGSQL\n[in1]\npath="{tmp_path}/fifo"\n'
            + pg_schema.section("pg1", host="", **{"procedure": "INSERT", **options})
        )
        res = subprocess.run([*PYLOGD, "-c", str(conf)], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert res.returncode == 1 and message in res.stderr, (options, res.stderr)
        assert "Traceback" not in res.stderr


def test_a_refused_row_is_set_aside_and_the_rows_behind_it_written(pg_schema: PgSchema, tmp_path: Path) -> None:
    pg_schema.load("CREATE TABLE t (_id serial, test_n integer CHECK (test_n <> 13), test_text text);")
    d = PipeDaemon(tmp_path, "pg1:PGSQL", pg_schema.section("pg1", host="", table="t", procedure="INSERT")).start()
    try:
        d.send(range(1, 31))
        wait_for(lambda: len(pg_schema.rows("SELECT 1 FROM t")) == 29, what="29 rows")
        wait_for(lambda: "rejected and set aside" in read_text(d.log), what="the rejected row in the log")
        d.send(range(31, 41))
        wait_for(lambda: len(pg_schema.rows("SELECT 1 FROM t")) == 39, what="the rows after it")
    finally:
        assert d.stop() == 0
    assert [r[0] for r in pg_schema.rows("SELECT test_n FROM t ORDER BY _id")] == [n for n in range(1, 41) if n != 13]
    assert 'violates check constraint "t_test_n_check"' in read_text(d.log)
    assert "rejected=1" in read_text(d.log)


def exactly_once(schema: PgSchema, sent: int) -> None:
    numbers = [r[0] for r in schema.rows("SELECT test_n FROM t ORDER BY _id")]
    assert sorted(numbers) == list(range(1, sent + 1)), (
        f"{len(numbers)} rows for {sent} events; missing {sorted(set(range(1, sent + 1)) - set(numbers))[:10]}, "
        f"twice {sorted(n for n in set(numbers) if numbers.count(n) > 1)[:10]}"
    )
    assert numbers == sorted(numbers)  # in order


def test_server_down_at_start_then_up(pg_schema: PgSchema, tmp_path: Path) -> None:
    pg_schema.load("CREATE TABLE t (_id serial, test_n integer, test_text text);")
    fwd = TcpForwarder(("127.0.0.1", 5432))
    section = pg_schema.section("pg1", host="127.0.0.1", port=fwd.port, table="t", procedure="INSERT")
    d = PipeDaemon(tmp_path, "pg1:PGSQL", section).start()
    try:
        assert "database not reachable at start" in read_text(d.log)
        d.send(range(1, 501))
        time.sleep(1.0)
        assert pg_schema.rows("SELECT count(*) FROM t") == [(0,)]
        fwd.up()
        wait_for(lambda: pg_schema.rows("SELECT count(*) FROM t") == [(500,)], timeout=40, what="500 rows")
        d.send(range(501, 601))
        wait_for(lambda: pg_schema.rows("SELECT count(*) FROM t") == [(600,)], timeout=20, what="600 rows")
    finally:
        assert d.stop() == 0
        fwd.down()
    exactly_once(pg_schema, 600)


def test_killed_connections_for_ten_seconds_lose_no_row_and_write_none_twice(
    pg_schema: PgSchema, tmp_path: Path
) -> None:
    pg_schema.load("CREATE TABLE t (_id serial, test_n integer, test_text text);")
    iid = "pgout"
    d = PipeDaemon(tmp_path, f"{iid}:PGSQL", pg_schema.section(iid, host="127.0.0.1", table="t", procedure="INSERT"))
    d.start()
    try:
        sent = run_outage(
            d,
            kill=lambda: pg_kill(pg_schema.admin, f"pylogd {iid}"),
            count=lambda: pg_schema.rows("SELECT count(*) FROM t")[0][0],
        )
        wait_for(lambda: pg_schema.rows("SELECT count(*) FROM t")[0][0] >= sent, timeout=60, what=f"{sent} rows")
        time.sleep(0.5)
    finally:
        assert d.stop() == 0
    exactly_once(pg_schema, sent)
    log = read_text(d.log)
    assert "write failed" in log and "writing again after" in log


def test_sighup_reconnects_and_the_password_comes_from_a_file(pg_schema: PgSchema, tmp_path: Path) -> None:
    pg_schema.load("CREATE TABLE t (_id serial, test_n integer, test_text text);")
    secret = tmp_path / "pg.pass"
    secret.write_text("s3cret\n")
    iid = "pghup"
    section = pg_schema.section(iid, host="", table="t", procedure="INSERT", pass_file=secret)
    d = PipeDaemon(tmp_path, f"{iid}:PGSQL", section).start()
    try:
        d.send(range(1, 11))
        wait_for(lambda: pg_schema.rows("SELECT count(*) FROM t") == [(10,)], what="10 rows")
        before = pg_schema.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (f"pylogd {iid}",)
        ).fetchall()
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reconnecting to the database" in read_text(d.log), what="SIGHUP")
        d.send(range(11, 21))
        wait_for(lambda: pg_schema.rows("SELECT count(*) FROM t") == [(20,)], what="20 rows")
        after = pg_schema.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (f"pylogd {iid}",)
        ).fetchall()
        assert before and after and before != after  # a new connection
    finally:
        assert d.stop() == 0
    exactly_once(pg_schema, 20)


def test_password_sources_and_a_missing_driver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pylogd.log import Logger
    from pylogd.sql import password_env, read_password

    assert password_env("pg-1.x") == "PYLOGD_PG_1_X_PASS"
    monkeypatch.setenv("PYLOGD_PG1_PASS", "from-env")
    assert read_password({"pass": "", "pass_file": ""}, "pg1") == "from-env"
    f = tmp_path / "p"
    f.write_text("from-file\nsecond line\n")
    assert read_password({"pass": "", "pass_file": str(f)}, "pg1") == "from-file"
    assert read_password({"pass": "inline", "pass_file": ""}, "pg1") == "inline"
    monkeypatch.setitem(sys.modules, "psycopg", None)  # an import of it fails
    opts = {o.name: o.default for o in Pgsql.spec.options} | {
        "db": "x",
        "user": "u",
        "table": "t",
        "procedure": "INSERT",
    }
    with pytest.raises(PluginError, match="needs the Python package psycopg"):
        Pgsql("pg1", opts, Logger("pg1")).configure()
    with pytest.raises(PluginError, match="pass and pass_file both set; keep one") as refused:
        Pgsql("pg1", opts | {"pass": "inline", "pass_file": str(f)}, Logger("pg1")).configure()
    assert refused.value.option == "pass_file"


# ------------------------------------------------------------------------------------------------
# the kernel's flows, and ulogd 2.0.8 beside pylogd

NAT_RULES = """
table ip nat {{
    chain out {{ type nat hook output priority -100; ip daddr 10.9.9.9 dnat to {b_ip}; }}
    chain post {{
        type nat hook postrouting priority 100;
        oifname "{a_if}" meta l4proto udp snat to {a_ip}:61000-61010;
    }}
}}
"""


def test_nat_flows_are_kept_current_through_insert_or_replace_ct(pg_schema: PgSchema, rig: Rig, tmp_path: Path) -> None:
    pg_schema.load(shipped("pgsql-ulogd2.sql"))
    p = rig.pair()
    p.a.nft(NAT_RULES.format(b_ip=p.b_ip4, a_ip=p.a_ip4, a_if=p.a_if))
    p.a.run(["ip", "route", "add", "10.9.9.9", "dev", p.a_if])
    p.a.run("sysctl -qw net.netfilter.nf_conntrack_acct=1")
    conf = tmp_path / "pylogd.conf"
    conf.write_text(
        f'[global]\nlogfile="{tmp_path}/pylogd.log"\nloglevel=3\nstack={FLOW_STACK}\n[ct1]\nhash_enable=0\n'
        + pg_schema.section("pg2", table="ulog2_ct", procedure="INSERT_OR_REPLACE_CT")  # host unset: the socket
    )
    p.a.spawn([*PYLOGD, "-c", str(conf)], name="pylogd", cwd=ROOT)
    wait_for(lambda: "entering main loop" in read_text(tmp_path / "pylogd.log"), timeout=20, what="pylogd start")
    sports = [p.a.send_udp("10.9.9.9", 5555, count=3, src_port=40100 + i) for i in range(3)]
    query = (
        "SELECT orig_l4_sport, host(orig_ip_daddr_str), host(reply_ip_saddr_str), host(reply_ip_daddr_str), "
        "reply_l4_dport, orig_raw_pktcount, ct_event, flow_end_sec FROM ulog2_ct ORDER BY orig_l4_sport"
    )
    wait_for(lambda: len(pg_schema.rows(query)) == 3, what="the three NEW rows")
    assert all(r[6] == 1 and r[7] is None for r in pg_schema.rows(query))  # NEW: no end yet
    p.a.run(["conntrack", "-F"])
    wait_for(lambda: all(r[6] == 4 for r in pg_schema.rows(query)), what="the DESTROYs to complete the rows")
    got = pg_schema.rows(query)
    assert [r[0] for r in got] == sports  # one row per flow, never a second
    for _, daddr, reply_saddr, reply_daddr, reply_dport, packets, event, end in got:
        assert daddr == "10.9.9.9" and reply_saddr == p.b_ip4  # DNAT: where the packets really went
        assert reply_daddr == p.a_ip4 and 61000 <= reply_dport <= 61010  # SNAT: the port B saw
        assert packets == 3 and event == 4 and end > 0


def compare(u_rows: list[tuple], p_rows: list[tuple], names: list[str]) -> int:
    assert len(u_rows) == len(p_rows) > 0
    fixed = 0
    for u, p in zip(u_rows, p_rows, strict=True):
        ud, pd = dict(zip(names, u, strict=True)), dict(zip(names, p, strict=True))
        want = expected_row(ud, pd)
        fixed += want != ud
        for name in CLOCK:
            if name in ud:
                assert (ud[name] is None) == (pd[name] is None)
                want[name] = pd[name]
        assert pd == want, f"\nulogd:  {ud}\npylogd: {pd}"
    return fixed


@pytest.fixture
def two_schemas(pg_schema: PgSchema) -> Any:
    """A schema for ulogd and one for pylogd, ulogd's shipped schema loaded in each."""
    admin = pg_schema.admin
    names = {"ulogd": pg_schema.name + "_u", "pylogd": pg_schema.name + "_p"}
    try:
        for name in names.values():
            admin.execute(f"CREATE SCHEMA {name}")
            PgSchema(admin, name).load(shipped("pgsql-ulogd2.sql"))
        yield {n: PgSchema(admin, name) for n, name in names.items()}
    finally:
        for name in names.values():
            admin.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def written_by_both(
    side_by_side: Any,
    where: Any,
    tmp_path: Path,
    stack: str,
    schemas: dict[str, PgSchema],
    section: str,
    table: str,
    procedure: str,
    order: str,
) -> tuple[list, list, list[str]]:
    """Run ulogd and pylogd side by side into their schemas' ``table`` through ``procedure``; their
    rows in ``order`` and the table's column names."""
    sections = {n: s.section(section, table=table, procedure=procedure) for n, s in schemas.items()}
    query = f"SELECT * FROM {table} ORDER BY {order}"
    side_by_side(where, tmp_path, stack, sections, lambda n: len(schemas[n].rows(query)))
    u_rows, p_rows = (schemas[n].rows(query) for n in ("ulogd", "pylogd"))
    return u_rows, p_rows, columns_of(schemas["ulogd"], table)


def test_ulogd_and_pylogd_write_the_same_packet_rows(pair, two_schemas: dict[str, PgSchema], tmp_path: Path) -> None:  # noqa: F811
    need_ulogd("PGSQL")
    u_rows, p_rows, names = written_by_both(
        side_by_side_packets, pair, tmp_path, PACKET_STACK, two_schemas, "pg1", "ulog", "INSERT_PACKET_FULL", "_id"
    )
    # _id is each database's own sequence: equal too, as both got the same rows in the same order
    assert compare(u_rows, p_rows, names) >= 2  # the fragments at least


def test_ulogd_and_pylogd_write_the_same_flow_rows(rig: Rig, two_schemas: dict[str, PgSchema], tmp_path: Path) -> None:
    need_ulogd("PGSQL")
    u_rows, p_rows, names = written_by_both(
        side_by_side_flows, rig, tmp_path, FLOW_STACK, two_schemas, "pg2", "ulog2_ct", "INSERT_CT", "_ct_id"
    )
    compare(u_rows, p_rows, names)
    assert {str(r[names.index("orig_ip_saddr_str")]) for r in p_rows} >= {"127.0.0.1", "::1"}


def columns_of(schema: PgSchema, table: str) -> list[str]:
    return [d.name for d in schema.admin.execute(f"SELECT * FROM {schema.name}.{table} LIMIT 0").description]


def test_a_table_that_does_not_fit_once_the_server_is_up_holds_the_rows_until_fixed(
    pg_schema: PgSchema, tmp_path: Path
) -> None:
    pg_schema.load("CREATE TABLE t (_id serial, test_n integer, test_text text, test_bogus text);")
    fwd = TcpForwarder(("127.0.0.1", 5432))
    section = pg_schema.section("pg1", host="127.0.0.1", port=fwd.port, table="t", procedure="INSERT")
    d = PipeDaemon(tmp_path, "pg1:PGSQL", section + "backlog_memcap=5000000\n").start()
    try:
        d.send(range(1, 11))
        fwd.up()
        wait_for(lambda: "cannot find key `test.bogus' in stack for column test_bogus" in read_text(d.log), timeout=20)
        assert pg_schema.rows("SELECT count(*) FROM t") == [(0,)]
        pg_schema.load("ALTER TABLE t DROP COLUMN test_bogus;")
        wait_for(lambda: pg_schema.rows("SELECT count(*) FROM t") == [(10,)], timeout=40, what="the waiting rows")
    finally:
        assert d.stop() == 0
        fwd.down()
    exactly_once(pg_schema, 10)


def test_backlog_memcap_bounds_the_waiting_rows() -> None:
    from pylogd.log import Logger

    opts = {o.name: o.default for o in Pgsql.spec.options}
    opts |= {"db": "x", "user": "u", "table": "t", "procedure": "INSERT"}
    assert Pgsql("pg1", opts, Logger("pg1")).backlog_limits() == (200_000, 64 << 20)  # the runner's default
    opts["backlog_memcap"] = 3_000_000
    entries, nbytes = Pgsql("pg1", opts, Logger("pg1")).backlog_limits()
    assert nbytes == 3_000_000 and entries > 3_000_000 // 16


@pytest.mark.parametrize("committed", [True, False], ids=["answer-lost", "commit-lost"])
def test_a_cut_off_commit_is_settled_by_its_transaction_id(pg_schema: PgSchema, committed: bool) -> None:
    pg_schema.load("CREATE TABLE t (_id serial, test_n integer, test_text text);")
    section = pg_schema.section("pg1", host="", table="t", procedure="INSERT") + '[in1]\npath="/nonexistent/fifo"\n'
    s = SqlStack("in1:PIPEIN,pg1:PGSQL", section)
    plugin = s.plugin

    def cut(conn: Any, cur: Any) -> None:  # the connection breaks around COMMIT
        if committed:
            conn.commit()
        conn.close()
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    plugin.commit = cut
    entries = [s.entry({"test.n": n, "test.text": "x"}) for n in range(1, 6)]
    batch = list(entries)
    with pytest.raises(Exception, match="closed the connection"):
        plugin.write(batch)
    assert batch == entries  # the runner keeps them all: the outcome is not known yet
    del plugin.commit
    plugin.write(batch)
    assert [r[0] for r in pg_schema.rows("SELECT test_n FROM t ORDER BY _id")] == [1, 2, 3, 4, 5]
    s.stop()


PROCEDURES = """
CREATE TABLE t (_id serial, test_n integer, test_text text);
CREATE PROCEDURE add_row(n integer, x text) LANGUAGE SQL AS $$ INSERT INTO t (test_n, test_text) VALUES (n, x) $$;
CREATE FUNCTION add_fn(n integer, x text) RETURNS integer LANGUAGE SQL AS
    $$ INSERT INTO t (test_n, test_text) VALUES (n, x) RETURNING _id $$;
"""


@pytest.mark.parametrize(
    ("procedure", "statement"),
    [
        ("INSERT", "INSERT INTO {schema}.t (test_n, test_text) VALUES (%s, %s)"),
        ("insert into t", "insert into t (test_n, test_text) VALUES (%s, %s)"),
        ("CALL add_row", "CALL add_row(%s, %s)"),
        ("add_fn", "SELECT add_fn(%s, %s)"),
    ],
)
def test_every_procedure_form_writes_the_rows(pg_schema: PgSchema, procedure: str, statement: str) -> None:
    pg_schema.load(PROCEDURES)
    section = pg_schema.section("pg1", host="", table="t", procedure=procedure) + '[in1]\npath="/nonexistent/fifo"\n'
    s = SqlStack("in1:PIPEIN,pg1:PGSQL", section)
    assert s.write([s.entry({"test.n": n, "test.text": f"r{n}"}) for n in range(1, 251)]) == ([], [])
    assert s.plugin.statement == statement.format(schema=pg_schema.name)
    assert pg_schema.rows("SELECT test_n, test_text FROM t ORDER BY _id") == [(n, f"r{n}") for n in range(1, 251)]
    s.stop()


def test_a_function_takes_a_batch_in_one_statement_in_order_and_refuses_only_its_bad_rows(pg_schema: PgSchema) -> None:
    pg_schema.load(PROCEDURES + "ALTER TABLE t ADD CHECK (test_n % 1000 <> 777);")
    section = pg_schema.section("pg1", host="", table="t", procedure="add_fn") + '[in1]\npath="/nonexistent/fifo"\n'
    s = SqlStack("in1:PIPEIN,pg1:PGSQL", section)
    entries = [s.entry({"test.n": n, "test.text": f"r{n}"}) for n in range(1, 12001)]
    rejected, left = s.write(entries)
    assert s.plugin._staged is not None and s.plugin._staged[2].startswith("SELECT count(add_fn(a0, a1)) FROM")
    assert left == [] and [e[1] for e in rejected] == [n for n in range(1, 12001) if n % 1000 == 777]
    assert pg_schema.rows("SELECT test_n, test_text FROM t ORDER BY _id") == [
        (n, f"r{n}") for n in range(1, 12001) if n % 1000 != 777
    ]
    s.stop()


def pg_connect(db: str) -> Any:
    import psycopg

    return psycopg.connect(host=PG_SOCKET_DIR, user="postgres", dbname=db, autocommit=True)


def test_a_role_that_may_not_make_temporary_tables_calls_the_function_row_by_row(logged: Any) -> None:
    """A batch goes through a temporary table; a role without TEMPORARY on its database (revoked from
    PUBLIC) gets every row written all the same, one call each, and one line says so."""
    lines, sink = logged
    admin = pg_admin()
    db, role = f"pylogd_notemp_{os.getpid()}", "pylogd_notemp"
    admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    admin.execute(f"CREATE DATABASE {db}")
    if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchall():
        admin.execute(f"CREATE ROLE {role} LOGIN")
    try:
        admin.execute(f"REVOKE TEMPORARY ON DATABASE {db} FROM PUBLIC")
        with pg_connect(db) as conn:
            conn.execute(PROCEDURES + f"GRANT ALL ON t, t__id_seq TO {role};")
        section = (
            f'[pg1]\ndb="{db}"\nuser="{role}"\nhost=""\ntable="t"\nprocedure="add_fn"\n'
            '[in1]\npath="/nonexistent/fifo"\n'
        )
        s = SqlStack("in1:PIPEIN,pg1:PGSQL", section, start=False)
        s.plugin.log = Logger("pg1", sink)
        s.start()
        for first in (1, 101):
            batch = [s.entry({"test.n": n, "test.text": f"r{n}"}) for n in range(first, first + 100)]
            assert s.write(batch) == ([], [])
        s.stop()
        with pg_connect(db) as conn:
            assert conn.execute("SELECT test_n FROM t ORDER BY _id").fetchall() == [(n,) for n in range(1, 201)]
        assert sum("no TEMPORARY privilege on the database: calling the function row by row" in x for x in lines) == 1
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.close()


def test_an_overloaded_function_is_called_row_by_row(pg_schema: PgSchema) -> None:
    pg_schema.load(PROCEDURES + "CREATE FUNCTION add_fn(n integer) RETURNS integer LANGUAGE SQL AS $$ SELECT 0 $$;")
    section = pg_schema.section("pg1", host="", table="t", procedure="add_fn") + '[in1]\npath="/nonexistent/fifo"\n'
    s = SqlStack("in1:PIPEIN,pg1:PGSQL", section)
    assert s.write([s.entry({"test.n": n, "test.text": f"r{n}"}) for n in range(1, 101)]) == ([], [])
    assert s.plugin._staged is None
    assert pg_schema.rows("SELECT test_n FROM t ORDER BY _id") == [(n,) for n in range(1, 101)]
    s.stop()


SLOW_COMMIT = """
CREATE TABLE t (_id serial, test_n integer, test_text text);
CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN IF NEW.test_n = 1 THEN PERFORM pg_sleep(4); END IF; RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION slow_commit();
"""


@pytest.mark.parametrize("committed", [True, False], ids=["server-committed", "server-aborted"])
def test_a_daemon_killed_during_commit_settles_the_batch_at_the_next_start(
    pg_schema: PgSchema, tmp_path: Path, committed: bool
) -> None:
    """With a spool, the record of a batch is on disk before its COMMIT: pylogd killed (-9) while COMMIT
    is under way (here a deferred trigger holds it 4 s) leaves the batch in the spool and the record
    beside it, and the next start asks the server before writing the batch again."""
    pg_schema.load(SLOW_COMMIT)
    fwd = TcpForwarder(("127.0.0.1", 5432))
    spool = tmp_path / "spool"
    section = pg_schema.section("pg1", host="127.0.0.1", port=fwd.port, table="t", procedure="INSERT")
    d = PipeDaemon(tmp_path, "pg1:PGSQL", section, global_options=f'spool_dir="{spool}"\n')
    try:
        fwd.up()
        d.start()  # the table is read at start, then the server goes away: the rows wait, and are spooled at exit
        fwd.down()
        d.send(range(1, 51))
        wait_for(lambda: "rows wait" in read_text(d.log) or "wait in memory" in read_text(d.log), timeout=20)
        assert d.stop() == 0
        assert list(spool.glob("*/*.seg")), "nothing was spooled at exit"
        fwd.up()
        d.start()
        in_doubt = lambda: spooled_doubt(spool)  # noqa: E731
        wait_for(lambda: bool(in_doubt()), timeout=20, what="the batch's COMMIT under way")
        d.proc.kill()
        d.proc.wait()
        if not committed:
            assert pg_kill(pg_schema.admin, "pylogd pg1") == 1
        wait_for(
            lambda: (
                pg_schema.rows("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pylogd pg1'") == [(0,)]
            ),
            timeout=20,
            what="the killed daemon's server process to end",
        )
        assert pg_schema.rows("SELECT count(*) FROM t") == [(50 if committed else 0,)]
        assert in_doubt(), "the record of the batch in doubt is gone"
        d.start()
        wait_for(lambda: pg_schema.rows("SELECT count(*) FROM t") == [(50,)] and not in_doubt(), timeout=30)
        d.send(range(51, 61))
        wait_for(lambda: pg_schema.rows("SELECT count(*) FROM t") == [(60,)], timeout=30, what="the rows after")
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
        fwd.down()
    exactly_once(pg_schema, 60)
    if committed:
        assert "the 50 rows whose commit was cut off were committed" in read_text(d.log)


SLOW_ROWS = """
CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN IF NEW.test_n = 350 THEN PERFORM pg_sleep(1.5); END IF; RETURN NEW; END $$;
CREATE TRIGGER slow BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION slow_row();
"""


@pytest.mark.parametrize("procedure", ["INSERT", "add_fn"])
def test_a_frozen_server_process_costs_a_timeout_and_every_row_is_written_once(
    pg_schema: PgSchema, tmp_path: Path, procedure: str
) -> None:
    """The server process of pylogd's connection stopped (SIGSTOP) in the middle of a transaction for
    8 s under steady traffic: past io_timeout (3 s) pylogd drops the connection, finds the transaction
    still open on the stopped process, ends it and waits; once the process runs again the batch is
    settled, and every row is written once, in order."""
    pg_schema.load(PROCEDURES + SLOW_ROWS)
    # pg_stat_activity is the whole server's: under a name of its own, no other connection is taken for this
    # daemon's (the other tests' "pylogd pg1", ending or still open, another pytest's on the same server)
    iid = f"pgfrozen{os.getpid()}_{procedure.lower()}"
    section = pg_schema.section(iid, host="", table="t", procedure=procedure, io_timeout=3)
    d = PipeDaemon(tmp_path, f"{iid}:PGSQL", section).start()
    sent = 0

    def burst(n: int = 50) -> None:
        nonlocal sent
        d.send(range(sent + 1, sent + n + 1))
        sent += n

    count = lambda: pg_schema.rows("SELECT count(*) FROM t")[0][0]  # noqa: E731
    try:
        burst(100)
        wait_for(lambda: count() == 100, timeout=20, what="the first rows")
        burst(250)  # row 350 takes the server 1.5 s: its transaction is open for that long
        in_transaction = "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND backend_xid IS NOT NULL"
        backends = wait_for(
            lambda: [r[0] for r in pg_schema.rows(in_transaction, (f"pylogd {iid}",))], timeout=20, what="a transaction"
        )
        assert backends == pg_backends(pg_schema.admin, f"pylogd {iid}")
        with frozen(backends):
            end = time.monotonic() + 8
            while time.monotonic() < end:
                burst()
                time.sleep(0.1)
            assert "left a batch unanswered for 3 s" in read_text(d.log)
            assert "is still open on the server" in read_text(d.log)
        for _ in range(10):
            burst()
            time.sleep(0.1)
        wait_for(lambda: count() >= sent, timeout=60, what="every row")
        time.sleep(1)
    finally:
        assert d.stop() == 0
    numbers = [r[0] for r in pg_schema.rows("SELECT test_n FROM t ORDER BY _id")]
    assert numbers == list(range(1, sent + 1)), f"{len(numbers)} rows for {sent}"


@pytest.mark.parametrize("first_start", ["server-down", "server-up"])
def test_rows_spooled_by_a_run_that_did_not_see_the_table_are_written_by_one_that_did(
    pg_schema: PgSchema, tmp_path: Path, first_start: str
) -> None:
    """A run that starts without the server keeps every key of an event (the columns are not known);
    one that starts with it, only the columns'.  Whatever the first run spooled, the next, started the
    other way, writes it."""
    pg_schema.load("CREATE TABLE t (_id serial, test_n integer, test_text text);")
    fwd = TcpForwarder(("127.0.0.1", 5432))
    section = pg_schema.section("pg1", host="127.0.0.1", port=fwd.port, table="t", procedure="INSERT")
    d = PipeDaemon(tmp_path, "pg1:PGSQL", section, global_options=f'spool_dir="{tmp_path / "spool"}"\n')
    count = lambda: pg_schema.rows("SELECT count(*) FROM t")[0][0]  # noqa: E731
    try:
        if first_start == "server-up":
            fwd.up()
        d.start()
        fwd.down()
        d.send(range(1, 51))
        wait_for(lambda: "wait in memory" in read_text(d.log), timeout=20, what="the rows waiting")
        assert d.stop() == 0
        if first_start == "server-down":
            fwd.up()
        d.start()
        if first_start == "server-up":
            fwd.up()
        d.send(range(51, 61))
        wait_for(lambda: count() == 60, timeout=40, what="every row")
    finally:
        if d.proc is not None and d.proc.poll() is None:
            assert d.stop() == 0
        fwd.down()
    exactly_once(pg_schema, 60)
    assert "rejected=0" in read_text(d.log).split("starting with")[-1]
