"""PGSQL: every event one row in PostgreSQL, through ulogd's table, view or function, with psycopg 3.

ulogd's options and its model (:mod:`pylogd.sql`): the columns of ``table`` in ``schema`` name the
keys (``_`` for ``.``; a first column starting with ``_`` is left to the database), and
``procedure`` says what a row runs: ``INSERT`` (into the table), ``INSERT INTO t``, ``CALL p``, or a
function's name, called as ``SELECT f(...)`` with the columns in order.  The schemas ulogd ships work
unchanged::

    [pgsql1]                         # stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,
    db="ulog2"                       #       mac2str1:HWHDR,pgsql1:PGSQL
    host=""                          # "": the server's unix socket (also from a network namespace)
    user="ulog"
    table="ulog"                     # the view of pgsql-ulogd2.sql
    procedure="INSERT_PACKET_FULL"

    [pgsql2]                         # stack=ct1:NFCT,ip2str1:IP2STR,pgsql2:PGSQL
    table="ulog2_ct"
    procedure="INSERT_OR_REPLACE_CT" # NEW rows completed by their DESTROY (NFCT hash_enable=0)

``host`` empty or a directory is the server's unix socket (libpq's rule), anything else a host
name or address; ``port`` 0 is 5432; ``connstring`` replaces db, host, port and user as ulogd does.
The password is ``pass``, else the first line of the file ``pass_file``, else the environment
variable ``PYLOGD_<ID>_PASS`` (the instance id in capitals, other characters as ``_``:
``PYLOGD_PGSQL1_PASS``), else libpq's own (``PGPASSWORD``, ``~/.pgpass``).

Rows are written from a worker thread in batches (up to 5000 rows), one transaction each, the values
bound as parameters. With ``procedure="INSERT"`` into a table (not a view) each batch goes by COPY,
which takes a third of the time and a tenth of the CPU; a function (ulogd's INSERT_PACKET_FULL)
takes a batch by COPY into a temporary table of its argument types (``pg_temp.pylogd_batch_*``,
emptied at each commit), then one statement calls it on every row in order, without a round trip per
row (a role refused TEMPORARY on the database gets one call per row).
The server need not be up at start; while it is away (stopped, restarted, connections killed) rows
wait (in memory, ``backlog_memcap`` bytes if set, or in ``[global] spool_dir``) and are written once,
in order, after reconnecting with back-off. A transaction whose COMMIT was cut off is looked up by its
id after reconnecting (``txid_status``), so it is neither lost nor written twice; for rows read back
from the spool its record is on disk too (in the spool's progress, with the position of its first
row, from just before COMMIT), so a pylogd killed meanwhile settles it at the next start before
writing the spooled batch again. Each stack keeps its own record, also when stacks share the output;
a record that cannot be settled (damaged, or a transaction the server no longer knows or calls in the
future) is logged and its rows written again rather than blocking the rows behind it. A server that
has not finished a batch after ``io_timeout`` seconds (0: 60; stopped, swapped out, a network that
drops everything) loses the connection: the rows wait and go again, and a transaction still open on
the old server process is ended and settled first. A row the server refuses (a constraint, a value
out of range) is logged and set aside and the others are written. When the server is up at start, a
missing table, schema, function, database or user, a wrong password, or a column no key of the stack
fills, refuses the start naming it. SIGHUP reconnects.

Differences from ulogd 2.0.8
----------------------------
* The server may be down at start (ulogd failed the stack); rows are not lost while it is away
  (ulogd dropped them, or kept formatted statements in ``backlog_memcap`` only), and each is
  written once.  ``reconnect``, ``ring_buffer_size`` and ``backlog_oneshot_requests`` are accepted
  and have no effect: pylogd always writes from a worker thread and backs off by itself (up to 30 s).
* Values are bound as parameters, never spliced into the SQL text; rows go in batches, one
  transaction each (ulogd ran one autocommitted statement per row).
* ``CALL p`` calls ``p`` (ulogd wrote ``CALL CALL p(``).  ``connect_timeout`` 0 waits 10 s
  (ulogd: forever).
* Raw address keys (``ip.saddr``) are written in host order into integer columns and as text into
  inet/text columns (ulogd wrote the network-order bytes read as a little-endian number); IPv6
  addresses and IP2BIN's literals (as bytea) are written (ulogd wrote malformed SQL for them).
* A column also matches a key whose name holds ``_``.  ``pass_file`` and ``PYLOGD_<ID>_PASS`` are new.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import zlib
from collections.abc import Iterator
from typing import Any, ClassVar

from pylogd.plugin import Kind, PluginSpec, int_option, path_option, str_option
from pylogd.sql import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IO_TIMEOUT,
    Column,
    SchemaError,
    SqlOutput,
    Transient,
    _reason,
    build_statement,
    check_identifier,
    column_kind,
    db_options,
    io_timeout_option,
    procedure_form,
    read_password,
    require_module,
)

#: SQLSTATEs that concern the table or the session, not a row: the rows wait for the cause to pass
_TRANSIENT_STATES = frozenset(
    {
        "42P01",  # undefined table
        "42703",  # undefined column
        "42501",  # insufficient privilege
        "3F000",  # invalid schema
        "3D000",  # invalid catalog (database)
        "25006",  # read-only transaction (a standby after a failover)
        "25P02",  # in failed transaction
    }
)


class Pgsql(SqlOutput):
    spec = PluginSpec(
        name="PGSQL",
        kind=Kind.OUTPUT,
        help="Writes each event as a row into PostgreSQL: a table or view whose columns name the keys, "
        "through INSERT or a function such as ulogd's INSERT_PACKET_FULL.",
        options=(
            *db_options(),
            str_option("db", None, "the database", mandatory=True),
            str_option("host", "", 'server host; "" or a directory: its unix socket'),
            str_option("user", None, "user name", mandatory=True),
            str_option("pass", "", "password (see also pass_file)"),
            int_option("port", 0, "server port (0: 5432)", min=0, max=65535),
            str_option("schema", "public", "the schema of the table"),
            str_option("connstring", "", "a libpq connection string, used instead of db, host, port and user"),
            path_option("pass_file", "", "a file whose first line is the password"),
            io_timeout_option(),
        ),
        wildcard_inputs=True,
        section_required=True,
    )

    first_inactive: ClassVar[str] = "underscore"
    dialect: ClassVar[str] = "pgsql"
    mark: ClassVar[str] = "%s"
    #: rows per transaction: a batch is one statement (a function over arrays, or COPY), so a larger one
    #: costs the server no more per row and spares a commit and two round trips per thousand rows
    batch_rows = 5000

    def __init__(self, instance_id: str, options: dict[str, Any], log: Any) -> None:
        super().__init__(instance_id, options, log)
        self.psycopg: Any = None
        self._xid: int | None = None
        self._backend = 0  # the server process of the connection, to end it should it hold a transaction in doubt
        self._plain = False  # the table is a table (not a view): batches go by COPY with procedure=INSERT
        self._copy = ""
        self._arg_types: list[str] = []  # the function's argument types (procedure names a function)
        self._said_no_temporary = False
        self._staged: tuple[str, str, str] | None = None  # a function's batch: create, COPY, call (statement_for)

    def configure(self) -> None:
        super().configure()
        check_identifier(self.options["schema"], "schema")
        self.psycopg = require_module("psycopg", "psycopg", "pgsql", "PGSQL")

    def target(self) -> str:
        return f"table {self.options['schema']}.{self.options['table']}"

    # -- the connection -----------------------------------------------------------------------------

    def connect(self) -> Any:
        o = self.options
        timeout = o["connect_timeout"] or DEFAULT_CONNECT_TIMEOUT
        kw: dict[str, Any] = {
            "connect_timeout": timeout,
            "autocommit": False,
            "application_name": f"pylogd {self.id}",
            # a server that vanishes without a word (a cable, a firewall) is found within ~30 s
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            # data sent and not acknowledged for io_timeout (a host that went away) ends the connection too
            "tcp_user_timeout": (o["io_timeout"] or DEFAULT_IO_TIMEOUT) * 1000,
        }
        password = read_password(o, self.id)
        if password is not None:
            kw["password"] = password
        if o["connstring"]:
            conn = self.psycopg.connect(o["connstring"], **kw)
        else:
            kw.update(dbname=o["db"], user=o["user"])
            if o["host"]:
                kw["host"] = o["host"]
            if o["port"]:
                kw["port"] = o["port"]
            conn = self.psycopg.connect(**kw)
        try:
            self._session(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _session(self, conn: Any) -> None:
        schema = self.options["schema"]
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
            if cur.fetchone() is None:
                raise SchemaError(f"schema {schema} not found", option="schema")
            if schema != "public":
                # the names were checked to be plain identifiers: ulogd's search path, as text
                cur.execute(f'SET search_path = {schema}, "$user", public')
            form, name = procedure_form(self.options["procedure"])
            if form in ("select", "call"):
                cur.execute(
                    "SELECT count(*) FROM pg_proc WHERE proname = %s AND pg_function_is_visible(oid)",
                    (name.lower() if name == name.strip('"') else name,),
                )
                if cur.fetchone()[0] == 0:
                    kind = "procedure" if form == "call" else "function"
                    raise SchemaError(f"{kind} {name} not found in schema {schema}", option="procedure")
            self._arg_types = self._function_arguments(cur, name) if form == "select" else []
            if self._arg_types:
                # a batch goes through a temporary table (statement_for), which the role may be refused
                cur.execute("SELECT has_database_privilege(current_database(), 'TEMPORARY')")
                if not cur.fetchone()[0]:
                    self._arg_types = []
                    if not self._said_no_temporary:
                        self._said_no_temporary = True
                        self.log.notice("no TEMPORARY privilege on the database: calling the function row by row")
        conn.commit()

    @staticmethod
    def _function_arguments(cur: Any, name: str) -> list[str]:
        """The argument types of the function ``name`` when it has one form only (no overloads, no
        defaults, not variadic), as the server names them; else []: its calls go one row each."""
        cur.execute(
            "SELECT p.oid, p.pronargdefaults, p.provariadic <> 0, "
            "array(SELECT format_type(t, NULL) FROM unnest(p.proargtypes) WITH ORDINALITY a(t, i) ORDER BY i) "
            "FROM pg_proc p WHERE p.proname = %s AND p.prokind = 'f' AND pg_function_is_visible(p.oid)",
            (name.lower() if name == name.strip('"') else name,),
        )
        found = cur.fetchall()
        if len(found) != 1 or found[0][1] or found[0][2]:
            return []
        return list(found[0][3])

    def read_columns(self, conn: Any) -> list[Column]:
        table, schema = self.options["table"], self.options["schema"]
        rows: list = []
        with conn.cursor() as cur:
            # an unquoted name in SQL is folded to lower case: ulogd's "ulog" and "ULOG" are one table
            for name in dict.fromkeys((table, table.lower())):
                cur.execute(
                    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), c.relkind FROM pg_attribute a "
                    "JOIN pg_class c ON a.attrelid = c.oid JOIN pg_namespace n ON c.relnamespace = n.oid "
                    "WHERE c.relname = %s AND n.nspname = %s AND a.attnum > 0 AND NOT a.attisdropped "
                    "ORDER BY a.attnum",
                    (name, schema),
                )
                rows = cur.fetchall()
                if rows:
                    break
        conn.commit()
        if not rows:
            raise SchemaError(f"table {schema}.{table} is empty or missing", option="table")
        # a plain table takes a batch by COPY: a third of the time of INSERTs, a tenth of the CPU
        self._plain = rows[0][2] in ("r", "p")
        return [Column(name, column_kind(decl)) for name, decl, _ in rows]

    def statement_for(self, columns: list[Column]) -> str:
        names = [c.name for c in columns]
        o = self.options
        form, function = procedure_form(o["procedure"])
        self._copy = (
            f"COPY {o['schema']}.{o['table']} ({', '.join(names)}) FROM STDIN"
            if form == "insert" and self._plain
            else ""
        )
        self._staged = None
        if form == "select" and len(self._arg_types) == len(names):
            # a batch goes by COPY into a temporary table of the function's argument types, then one
            # statement calls the function on each row in order: no round trip per row, and the client
            # formats rows in psycopg's C code (arrays of the rows' values, one per argument, cost twice
            # ulogd's CPU per row: psycopg quotes each element of a text array in Python)
            args = ", ".join(f"a{i}" for i in range(len(names)))
            declared = ", ".join(f"a{i} {t}" for i, t in enumerate(self._arg_types))  # as the server wrote them
            table = f"pg_temp.pylogd_batch_{zlib.crc32(declared.encode()):08x}"  # one per argument list
            self._staged = (
                f"CREATE TEMPORARY TABLE IF NOT EXISTS {table} "
                f"(n bigint GENERATED ALWAYS AS IDENTITY, {declared}) ON COMMIT DELETE ROWS",
                f"COPY {table} ({args}) FROM STDIN",
                f"SELECT count({function}({args})) FROM (SELECT * FROM {table} ORDER BY n) AS rows",
            )
        return build_statement(o["procedure"], o["table"], o["schema"], names, "%s")

    def run_batch(self, cur: Any, rows: list[tuple]) -> None:
        if self._staged is not None:
            create, copy_rows, call = self._staged
            # in the batch's transaction: a batch rolled back takes a table it made with it, so each
            # batch makes sure of it (the server answers "exists, skipping" from its catalog cache)
            try:
                cur.execute(create)
            except self.psycopg.errors.InsufficientPrivilege:
                # TEMPORARY revoked since the connection began: the retry calls the function row by row
                self._staged = None
                raise
            with cur.copy(copy_rows) as copy:
                write = copy.write_row
                for row in rows:
                    write(row)
            cur.execute(call, prepare=True)
            return
        if not self._copy:
            cur.executemany(self.statement, rows)
            return
        with cur.copy(self._copy) as copy:
            write = copy.write_row
            for row in rows:
                write(row)

    def refused(self, exc: BaseException) -> bool:
        # libpq reports a refused connection as text only (no SQLSTATE): the server's own words
        text = str(exc)
        return "FATAL:" in text and any(
            words in text for words in ("does not exist", "password authentication failed", "no pg_hba.conf entry")
        )

    def transient(self, exc: BaseException) -> bool:
        if isinstance(exc, Transient | OSError):
            return True
        pg = self.psycopg
        if pg is None:
            return False
        if isinstance(exc, pg.InterfaceError | pg.OperationalError):
            return True
        state = getattr(exc, "sqlstate", None) or ""
        return state in _TRANSIENT_STATES or state.startswith("XX") or state.startswith("08")

    # -- exactly once across a cut-off COMMIT ----------------------------------------------------------

    def begin(self, conn: Any) -> None:
        # until the id is known the transaction holds nothing: a failure before then leaves nothing in doubt
        self._xid = None
        with conn.cursor() as cur:
            cur.execute("SELECT txid_current()")
            self._xid = cur.fetchone()[0]
        self._backend = conn.info.backend_pid

    def commit(self, conn: Any, cur: Any) -> None:
        # the backend too: a later start ends it should it still hold the transaction (a network that
        # dropped the connection silently leaves it open for hours, and the rows behind would wait)
        self.save_state({"txid": self._xid, "backend": self._backend, **self._batch})
        conn.commit()
        self._xid = None

    def open_transaction(self) -> dict[str, Any] | None:
        # the backend, to end it should it still hold the transaction (a server that froze)
        return None if self._xid is None else {"txid": self._xid, "backend": self._backend}

    def _write(self, entries: list) -> None:
        with self._watchdog():
            if self._in_doubt is not None:
                try:
                    self._settle(entries)
                except Exception as exc:
                    self._close()  # the next try starts on a fresh connection, as after a failed batch
                    if isinstance(exc, Transient) or self.transient(exc):
                        raise Transient(f"cannot settle the batch cut off before: {exc}") from exc
                    # the server's definite answer that it cannot tell: asking again would block the rows
                    # behind for ever, so the batch is written again (at worst twice, never lost)
                    record, self._in_doubt = self._in_doubt, None
                    self.log.error(
                        f"cannot tell whether the {record.get('rows')} rows cut off at COMMIT were written "
                        f"({_reason(exc)}); writing them again"
                    )
            super()._write(entries)

    def _settle(self, entries: list) -> None:
        """The last transaction failed on its way: if the server committed it after all, its rows
        are written and leave ``entries``."""
        record = self._in_doubt
        assert record is not None
        conn = self._ensure()
        with conn.cursor() as cur:
            try:
                cur.execute("SELECT txid_status(%s)", (record["txid"],))
                status = cur.fetchone()[0]
            except self.psycopg.errors.InvalidParameterValue as exc:
                # "transaction ID ... is in the future": a cluster restored or replaced since; it never
                # committed that transaction
                conn.rollback()
                self.log.error(f"the server does not know transaction {record['txid']} ({_reason(exc)})")
                status = None
            if status == "in progress":
                # its backend has not seen its client go (a server that was stopped, a network that
                # dropped the connection silently): end it, and ask again at the next try
                if record.get("backend") and not record.get("ending"):
                    record["ending"] = True
                    self.log.notice(
                        f"the transaction of {record['rows']} rows cut off before is still open on the server "
                        f"(process {record['backend']}); ending it, its rows wait until it has ended"
                    )
                    cur.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE pid = %s AND backend_xid::text::bigint = %s",
                        (record["backend"], record["txid"] & 0xFFFFFFFF),
                    )
                conn.commit()
                raise Transient("the transaction cut off at COMMIT is still open on the server")
        conn.commit()
        self._in_doubt = None
        if status is None:
            self.log.error(f"the server no longer knows transaction {record['txid']}; its rows are written again")
        self.take_settled(entries, record, status == "committed")

    def doubt_problem(self, record: Any) -> str | None:
        txid = record.get("txid") if isinstance(record, dict) else None
        if type(txid) is not int or txid < 0:
            return f"txid is {txid!r}"
        backend = record.get("backend", 0)
        if type(backend) is not int or backend < 0:
            return f"backend is {backend!r}"
        return super().doubt_problem(record)

    # -- a server that stops answering ----------------------------------------------------------------

    @contextlib.contextmanager
    def _watchdog(self) -> Iterator[None]:
        """libpq waits for an answer for ever, and TCP keepalives do not help when the server's host is
        up but the server is not (stopped, swapped out, a unix socket): past io_timeout the connection
        is shut down under the waiting call, which then fails like a lost connection."""
        timer = threading.Timer(self.options["io_timeout"] or DEFAULT_IO_TIMEOUT, self._cut)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _cut(self) -> None:
        conn = self.conn
        if conn is None:
            return
        try:
            fd = conn.pgconn.socket
            sock = socket.socket(fileno=os.dup(fd))
        except Exception:
            return
        with sock, contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # libpq keeps its descriptor; the connection is over
        self.log.error(
            f"the database left a batch unanswered for {self.options['io_timeout'] or DEFAULT_IO_TIMEOUT} s; "
            "dropping the connection (the rows wait and go again)"
        )
