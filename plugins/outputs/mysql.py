"""MYSQL: every event one row in MariaDB or MySQL, through ulogd's table, view or function, with PyMySQL.

ulogd's options and its model (:mod:`pylogd.sql`): the columns of ``table`` name the keys (``_`` for
``.``; the first column, an auto-increment id, is always left to the server), and ``procedure`` says
what a row runs: ``INSERT`` (into the table), ``INSERT INTO t``, ``CALL p``, or a function's name,
called as ``SELECT f(...)`` with the columns in order.  The schemas ulogd ships work unchanged::

    [mysql1]                         # stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2bin1:IP2BIN,
    db="ulog2"                       #       mac2str1:HWHDR,mysql1:MYSQL
    host="localhost"                 # the server's unix socket, as the MySQL client library reads it
    user="ulog"
    pass="secret"
    table="ulog"                     # the view of mysql-ulogd2.sql
    procedure="INSERT_PACKET_FULL"

    [mysql2]                         # stack=ct1:NFCT,ip2bin1:IP2BIN,mysql2:MYSQL
    table="conntrack"
    procedure="INSERT_CT"

``host="localhost"`` means the server's unix socket, as in the MySQL client library: the path in
``socket``, else ``$MYSQL_UNIX_PORT``, else /run/mysqld/mysqld.sock.  So a daemon in a network
namespace, whose 127.0.0.1 is not the server's, still reaches it.  A host starting with ``/`` is a
socket path; any other host is reached over TCP (``port`` 0 is 3306).  The password is ``pass``;
when that is empty, the first line of the file ``pass_file``, else the environment variable
``PYLOGD_<ID>_PASS`` (the instance id in capitals, other characters as ``_``: ``PYLOGD_MYSQL1_PASS``).

Rows are written from a worker thread in batches (up to 5000 rows), one transaction each, the values
bound as parameters (a table takes each batch as one multi-row INSERT; a function's calls go a
thousand to a ``DO`` statement, each value escaped by the driver). The server need not be up at
start; while it is away (stopped, restarted, connections killed) rows wait (in memory,
``backlog_memcap`` bytes if set, or in ``[global] spool_dir``) and are written once, in order, after
reconnecting with back-off.
Each batch is an XA transaction: when a connection is lost around COMMIT, XA RECOVER tells after
reconnecting whether the batch was prepared (it is then committed) or not (it is written again), so
no row is lost or written twice; a batch prepared by a pylogd that was killed before committing it
is committed by the next start, and for rows read back from ``[global] spool_dir`` the batch's
record (in the spool's progress with the position of its first row, kept from before XA PREPARE)
lets that start tell whether the batch the spool gives it again was committed; each stack keeps its
own record, also when stacks share the output. A server that leaves a read or
write unanswered for ``io_timeout`` seconds (0: 60) loses the connection; the rows wait and go
again. A row the server refuses (a CHECK constraint, a value out of range in strict mode) is logged
and set aside and the others are written. When the server is up at start, an unknown database or
user, a wrong password, a missing table or function, or a column no key of the stack fills refuses
the start naming it. SIGHUP reconnects.

Differences from ulogd 2.0.8
----------------------------
* The server may be down at start (ulogd failed the stack); rows are not lost while it is away
  (ulogd dropped them, or kept formatted statements in ``backlog_memcap`` only).  ``reconnect``,
  ``ring_buffer_size`` and ``backlog_oneshot_requests`` are accepted and have no effect: pylogd
  always writes from a worker thread and backs off by itself (up to 30 s).
* Values are bound as parameters, never spliced into the SQL text; rows go in batches, one
  transaction each (ulogd ran one autocommitted statement per row).
* ``CALL p`` calls ``p`` (ulogd wrote ``CALL CALL p(``).  ``connect_timeout`` 0 waits 10 s.
  ``pass_file`` and ``PYLOGD_<ID>_PASS`` (with ``pass=""``, which stays mandatory as in ulogd) and
  ``socket`` are new.
* IP2BIN's binary literals are bound as bytes, so ``binary(16)`` columns hold the same 16 bytes;
  raw address keys (``ip.saddr``) go into integer columns in host order (ulogd: the network-order
  bytes read as a little-endian number) and IPv6 addresses are written (ulogd wrote malformed SQL).
* IP2BIN also gives ``reply.ip.daddr.bin`` (ulogd never set it), so the ``conntrack`` view's
  reply_ip_daddr_bin is filled where ulogd left it NULL.
* A column also matches a key whose name holds ``_``.
* Like ulogd, the shipped schema refuses IPv6 packets with a MAC header (``mac.mac_protocol`` is a signed
  smallint, IPv6's ethertype 0x86dd does not fit); pylogd logs such rows as rejected, ulogd logged
  "execute failed".
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, ClassVar

from pylogd.plugin import Kind, PluginError, PluginSpec, int_option, path_option, str_option
from pylogd.sql import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IO_TIMEOUT,
    Column,
    SchemaError,
    SqlOutput,
    Transient,
    column_kind,
    db_options,
    io_timeout_option,
    procedure_form,
    read_password,
    require_module,
)

DEFAULT_SOCKET = "/run/mysqld/mysqld.sock"
#: function calls per DO statement (measured on INSERT_PACKET_FULL: 1000 a statement and 5000 rows a
#: transaction write 4650 rows/s, 100 and 1000 3070 rows/s; 1000 calls are ~400 KB of SQL, far below
#: the smallest max_allowed_packet a server has by default, 4 MiB)
DO_ROWS = 1000

#: server errors that concern the server, the session or the schema rather than a row
_TRANSIENT_CODES = frozenset(
    {
        1040,  # too many connections
        1044,  # access denied to the database
        1045,  # access denied
        1049,  # unknown database
        1053,  # server shutdown in progress
        1054,  # unknown column (the table changed)
        1142,  # command denied
        1146,  # table does not exist
        1205,  # lock wait timeout
        1213,  # deadlock
        1290,  # read-only (--read-only)
        1305,  # function does not exist
        1317,  # query interrupted
        1792,  # read-only transaction
        1927,  # connection killed (MariaDB)
        4031,  # disconnected by the server for inactivity
    }
)


class Mysql(SqlOutput):
    spec = PluginSpec(
        name="MYSQL",
        kind=Kind.OUTPUT,
        help="Writes each event as a row into MariaDB or MySQL: a table or view whose columns name the keys, "
        "through INSERT or a function such as ulogd's INSERT_PACKET_FULL.",
        options=(
            *db_options(),
            str_option("db", None, "the database", mandatory=True),
            str_option("host", None, 'server host; "localhost" or a path: its unix socket', mandatory=True),
            str_option("user", None, "user name", mandatory=True),
            str_option("pass", "", 'password; "" takes it from pass_file or PYLOGD_<ID>_PASS', mandatory=True),
            int_option("port", 0, "server port (0: 3306)", min=0, max=65535),
            path_option("socket", "", f"the unix socket for host=localhost (default {DEFAULT_SOCKET})"),
            path_option("pass_file", "", "a file whose first line is the password"),
            io_timeout_option(),
        ),
        wildcard_inputs=True,
        section_required=True,
    )

    first_inactive: ClassVar[str] = "always"
    dialect: ClassVar[str] = "mysql"
    mark: ClassVar[str] = "%s"
    #: rows per (XA) transaction: a commit costs two more round trips and a log flush or two
    batch_rows = 5000

    def __init__(self, instance_id: str, options: dict[str, Any], log: Any) -> None:
        super().__init__(instance_id, options, log)
        self.pymysql: Any = None
        self._serial = 0
        self._do_call = ""
        self._insert: tuple[str, str] | None = None  # an INSERT's head and row form
        self._xa: list | None = None  # [xid, prepared] of the open batch
        self._thread_id = 0  # the server's id of the connection, to end it should it hold a batch in doubt
        self._orphans_committed: set[str] = set()
        self._orphans_checked = False  # at the first write: see _commit_orphans

    def configure(self) -> None:
        super().configure()
        if not self.options["host"]:
            raise PluginError('host is empty; "localhost" is the server\'s unix socket', option="host")
        self.pymysql = require_module("pymysql", "PyMySQL", "mysql", "MYSQL")

    def target(self) -> str:
        return f"table {self.options['db']}.{self.options['table']}"

    def socket_path(self) -> str | None:
        host = self.options["host"]
        if host.startswith("/"):
            return host
        if host == "localhost":
            return self.options["socket"] or os.environ.get("MYSQL_UNIX_PORT") or DEFAULT_SOCKET
        return None

    # -- the connection -----------------------------------------------------------------------------

    def connect(self) -> Any:
        o = self.options
        kw: dict[str, Any] = {
            "user": o["user"],
            "password": read_password(o, self.id) or "",
            "database": o["db"],
            "connect_timeout": o["connect_timeout"] or DEFAULT_CONNECT_TIMEOUT,
            # a server that stops answering (stopped, a network that drops packets) fails the write
            "read_timeout": o["io_timeout"] or DEFAULT_IO_TIMEOUT,
            "write_timeout": o["io_timeout"] or DEFAULT_IO_TIMEOUT,
            "autocommit": False,
            "charset": "utf8mb4",
        }
        path = self.socket_path()
        if path:
            kw["unix_socket"] = path
        else:
            kw["host"] = o["host"]
            kw["port"] = o["port"] or 3306
        conn = self.pymysql.connect(**kw)
        try:
            self._check_procedure(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_procedure(self, conn: Any) -> None:
        form, name = procedure_form(self.options["procedure"])
        if form not in ("select", "call"):
            return
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE() "
                "AND ROUTINE_NAME = %s AND ROUTINE_TYPE = %s",
                (name, "PROCEDURE" if form == "call" else "FUNCTION"),
            )
            if cur.fetchone()[0] == 0:
                kind = "procedure" if form == "call" else "function"
                raise SchemaError(f"{kind} {name} not found in database {self.options['db']}", option="procedure")
        conn.commit()

    def _commit_orphans(self, conn: Any) -> None:
        """Batches an earlier pylogd of this instance prepared and never committed (it was killed in
        between) hold rows nobody else has and locks: commit them.  Done before the first write, once
        the stacks have adopted their records of transactions in doubt: a branch such a record names is
        left to that stack's settle, which marks the record prepared on disk before it commits, so a
        kill right after the commit cannot make the next start take the batch for rolled back."""
        named = {c.in_doubt.get("xid") for c in self._channels if c.in_doubt is not None}
        prefix = f"pylogd-{self.id[:20]}-"
        mine = f"{prefix}{os.getpid()}-"
        conn.autocommit(True)
        try:
            with conn.cursor() as cur:
                cur.execute("XA RECOVER")
                for row in cur.fetchall():
                    xid = row[3].decode() if isinstance(row[3], bytes) else row[3]
                    if xid.startswith(prefix) and not xid.startswith(mine) and xid not in named:
                        cur.execute("XA COMMIT %s", (xid,))
                        self._orphans_committed.add(xid)  # a batch in doubt at the last stop: settled
                        self.log.notice(f"committed batch {xid}, prepared by an earlier pylogd that stopped before")
        except Exception as exc:
            if not _denied(exc):
                raise
        finally:
            conn.autocommit(False)

    def read_columns(self, conn: Any) -> list[Column]:
        table = self.options["table"]
        with conn.cursor() as cur:
            cur.execute(
                "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
                (table,),
            )
            rows = cur.fetchall()
        conn.commit()
        if not rows:
            raise SchemaError(f"table {self.options['db']}.{table} is empty or missing", option="table")
        return [Column(name, column_kind(decl)) for name, decl in rows]

    # -- exactly once across a cut-off COMMIT: each batch is an XA transaction ------------------------
    #
    # After a lost connection, XA RECOVER tells whether the batch was prepared (then it is committed
    # from the new connection) and PREPARE's answer whether it may have been committed already.

    def statement_for(self, columns: list[Column]) -> str:
        form, name = procedure_form(self.options["procedure"])
        marks = ", ".join(["%s"] * len(columns))
        # a function's calls go many to a DO statement: one round trip and no result set for each
        # DO_ROWS rows (ulogd's SELECT, one per row, spends most of its time waiting for answers)
        self._do_call = f"{name}({marks})" if form == "select" else ""
        statement = super().statement_for(columns)
        # an INSERT's rows go DO_ROWS to a statement, each row's values in the driver's escaping as well
        # (PyMySQL's executemany builds the same statement through mogrify, 60 µs a row of ulogd's flat table)
        head, values, row = statement.rpartition(" VALUES ")
        self._insert = (head + values, row) if form in ("insert", "insert_into") else None
        return statement

    def run_batch(self, cur: Any, rows: list[tuple]) -> None:
        call = self._do_call
        if call:
            for i in range(0, len(rows), DO_ROWS):
                cur.execute("DO " + ", ".join(self._escaped(cur, call, rows[i : i + DO_ROWS])))
                # DO turns a call's error into a warning and undoes the whole statement: fail the batch, so
                # its rows go again one by one, where each error is the row's own
                result = getattr(cur, "_result", None)
                if result is None or result.warning_count:
                    for level, code, message in cur.connection.show_warnings() or ():
                        if level == "Error":
                            raise self.pymysql.err.DataError(code, message)
            return
        if self._insert is None:  # CALL: one row a statement
            cur.executemany(self.statement, rows)
            return
        head, row = self._insert
        for i in range(0, len(rows), DO_ROWS):
            cur.execute(head + ", ".join(self._escaped(cur, row, rows[i : i + DO_ROWS])))

    @staticmethod
    def _escaped(cur: Any, form: str, rows: list[tuple]) -> list[str]:
        """``form`` (with a %s per value) for each row, the values as the driver binds them: its own
        Connection.escape, which execute() and mogrify() apply to each value, called directly with NULL
        and integers spelled inline (an eighth of mogrify's CPU per row)."""
        escape = cur.connection.escape
        return [
            form % tuple([("NULL" if v is None else str(v) if v.__class__ is int else escape(v)) for v in row])
            for row in rows
        ]

    def begin(self, conn: Any) -> None:
        self._serial += 1
        xid = f"pylogd-{self.id[:20]}-{os.getpid()}-{self._serial}"
        self._xa = None
        with conn.cursor() as cur:
            cur.execute("XA START %s", (xid,))
        self._xa = [xid, False]
        self._thread_id = conn.thread_id()

    def commit(self, conn: Any, cur: Any) -> None:
        assert self._xa is not None
        xid = self._xa[0]
        cur.execute("XA END %s", (xid,))
        # on disk (with a spool) before PREPARE and again after it: a later start that finds the branch
        # neither prepared nor pending knows by the flag whether it was committed or rolled back; and by
        # the session, which it ends first, that the branch is not still attached to it (the server
        # refuses to commit a branch a live session holds, and a network that dropped the connection
        # silently leaves that session for hours)
        record = {"xid": xid, "thread": self._thread_id, **self._batch}
        self.save_state({**record, "prepared": False})
        cur.execute("XA PREPARE %s", (xid,))
        self._xa[1] = True
        self.save_state({**record, "prepared": True})
        cur.execute("XA COMMIT %s", (xid,))
        self._xa = None

    def _rollback(self, conn: Any) -> None:
        if self._xa is None:
            return
        xid = self._xa[0]
        try:
            with conn.cursor() as cur:
                if not self._xa[1]:
                    with contextlib.suppress(Exception):
                        cur.execute("XA END %s", (xid,))
                cur.execute("XA ROLLBACK %s", (xid,))
        except Exception:
            return  # the connection is gone: the batch stays in doubt until XA RECOVER says
        self._xa = None

    def open_transaction(self) -> dict[str, Any] | None:
        xa, self._xa = self._xa, None
        return None if xa is None else {"xid": xa[0], "prepared": xa[1], "thread": self._thread_id}

    def _write(self, entries: list) -> None:
        if not self._orphans_checked:
            conn = self._ensure()
            try:
                self._commit_orphans(conn)
            except Exception as exc:
                self._close()  # the next try starts on a fresh connection, as after a failed batch
                raise Transient(f"cannot commit the batches an earlier pylogd prepared: {exc}") from exc
            self._orphans_checked = True
        if self._in_doubt is not None:
            self._settle(entries)
        super()._write(entries)

    def _settle(self, entries: list) -> None:
        record = self._in_doubt
        assert record is not None
        xid, prepared, n = record["xid"], record["prepared"], record["rows"]
        conn = self._ensure()
        try:
            # XA COMMIT of a branch another session prepared is refused inside a local transaction,
            # which autocommit=0 opens with any statement
            conn.autocommit(True)
            try:
                with conn.cursor() as cur:
                    if record.get("thread"):
                        self._end_session(cur, record["thread"])
                    cur.execute("XA RECOVER")
                    pending = {row[3].decode() if isinstance(row[3], bytes) else row[3] for row in cur.fetchall()}
                    if xid in pending:
                        # prepared, so committed from here on if this COMMIT's answer is lost as well:
                        # the next settle must not take "not pending" for "never prepared"; and it
                        # ends this session first, should the COMMIT still be on its way
                        record.update(prepared=True, thread=cur.connection.thread_id())
                        self.save_state(record)
                        cur.execute("XA COMMIT %s", (xid,))
                        committed = True
                    else:
                        # prepared and gone: committed (by that pylogd, or at this start); never prepared:
                        # rolled back when its session ended
                        committed = prepared or xid in self._orphans_committed
            finally:
                conn.autocommit(False)
        except Exception as exc:
            if self.transient(exc) and not _denied(exc):
                self._close()
                raise Transient(f"cannot settle the batch cut off before: {exc}") from None
            self.log.error(f"cannot tell whether {n} rows cut off at COMMIT were written ({exc}); writing them again")
            committed = False
        self._in_doubt = None
        self.take_settled(entries, record, committed)

    def doubt_problem(self, record: Any) -> str | None:
        xid = record.get("xid") if isinstance(record, dict) else None
        if not isinstance(xid, str) or not xid.startswith("pylogd-"):
            return f"xid is {xid!r}"
        if not isinstance(record.get("prepared"), bool):
            return "prepared is not true or false"
        thread = record.get("thread", 0)
        if type(thread) is not int or thread < 0:
            return f"thread is {thread!r}"
        return super().doubt_problem(record)

    def _end_session(self, cur: Any, thread: int) -> None:
        """The session that wrote the batch may still be on the server (the server froze, or the
        network dropped the connection without a word): end it, so its branch is either prepared and
        listed by XA RECOVER or rolled back, not still on its way."""
        if thread == cur.connection.thread_id():
            return
        # only a session of this user on this database: after a server restart the id may be another's
        cur.execute(
            "SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID = %s "
            "AND USER = SUBSTRING_INDEX(USER(), '@', 1) AND DB = DATABASE()",
            (thread,),
        )
        if cur.fetchone()[0] == 0:
            return
        with contextlib.suppress(self.pymysql.err.MySQLError):  # 1094: that session is gone already
            cur.execute(f"KILL {int(thread)}")
        for _ in range(50):
            cur.execute("SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID = %s", (thread,))
            if cur.fetchone()[0] == 0:
                return
            time.sleep(0.1)
        raise Transient(f"the session {thread} that wrote the batch in doubt does not end")

    def refused(self, exc: BaseException) -> bool:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        return code in (1044, 1045, 1049)  # access denied (to the database), unknown database

    def transient(self, exc: BaseException) -> bool:
        if isinstance(exc, Transient | OSError):
            return True
        err = self.pymysql.err if self.pymysql is not None else None
        if err is None:
            return False
        if isinstance(exc, err.InterfaceError):
            return True
        if isinstance(exc, err.MySQLError):
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
            # 2000 to 2999 are the client library's own errors: a lost or refused connection
            return code in _TRANSIENT_CODES or 2000 <= code < 3000 or code == 0
        return False


def _denied(exc: BaseException) -> bool:
    """XA RECOVER needs a privilege a plain logging user may lack."""
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
    return code in (1044, 1045, 1142, 1227)
