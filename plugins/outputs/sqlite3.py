"""SQLITE3: every event one row in an SQLite table, with ulogd's options and column-to-key mapping.

Each column of ``table`` in the file ``db`` names a key of the stack, ``_`` standing for ``.``:
the ``ulog_pkt`` and ``ulog_ct`` tables of the ``sqlite3.table`` ulogd ships work unchanged
(``log1:NFLOG,base1:BASE,sqlite1:SQLITE3`` and ``ct1:NFCT,sqlite2:SQLITE3``).  Every column must
name a key of the stack, or the start is refused naming the column; keys without a column are not
written.  A key not valid for an event is NULL.

Rows are written from a worker thread, ``buffer`` rows to a transaction (at most; a quiet stack
commits each batch at once), with one prepared statement.  A row SQLite refuses (a CHECK or NOT NULL
constraint, a value too large) is logged and set aside, and the rest of the batch is written; a
busy or locked database makes the rows wait and be tried again, with back-off, so another
process holding a lock loses nothing.  ``create_table=1`` creates a missing table with a column per
key of the stack (integers INTEGER, strings and addresses TEXT, raw data BLOB), also in a file that
replaced the first one (rotated, removed).  SIGHUP reopens the file.

Values (see :mod:`pylogd.sql`): integers as integers, unsigned 32-bit values unsigned; an address key
(``ip.saddr``) in an INTEGER column is the IPv4 address in host order (10.77.0.2 is 172818434) and
an IPv6 address as text; in a TEXT column the address as text, in a BLOB column 16 bytes.

Differences from ulogd 2.0.8
----------------------------
* IPv4 addresses in INTEGER columns are in host order: ulogd stored the network-order bytes read as
  a little-endian number (10.77.0.2 became 33574154).
* IPv6 addresses are stored (as text in INTEGER columns); ulogd wrote the first 8 bytes as a
  number (fd77::2 became 30717).
* UINT32 values at or above 2^31 (TCP sequence numbers, marks) are stored unsigned; ulogd bound
  them as signed 32-bit numbers and stored negative values.
* Strings, IP2BIN's binary literals (as 16-byte BLOBs) and raw keys (BLOBs) are stored; ulogd
  logged "unknown type" for RAW, RAWSTR and IP6ADDR on every row and kept the previous row's value.
* Rows go ``buffer`` to a transaction (ulogd 2.0.8 had no buffer and committed every row alone); a
  busy database delays rows instead of dropping them; a refused row is logged, not silently lost.
* A column also matches a key whose name holds ``_`` (``oob_ifindex_in`` is ``oob.ifindex_in``).
* ``create_table`` is new; a missing table without it refuses the start as ulogd did.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Any, ClassVar

from pylogd.keys import KeyType
from pylogd.loop import EventLoop
from pylogd.plugin import Kind, PluginError, PluginSpec, Slots, int_option, path_option, str_option
from pylogd.sql import (
    Column,
    SchemaError,
    SqlOutput,
    Transient,
    check_identifier,
    column_kind,
    column_of_key,
)

BUSY_TIMEOUT = 5.0


def _sql_type(t: KeyType) -> str:
    if t is KeyType.RAW or t is KeyType.RAWSTR:
        return "BLOB"
    if t in (KeyType.STRING, KeyType.IPADDR, KeyType.IP6ADDR):
        return "TEXT"
    if t is KeyType.NONE:
        return ""
    return "INTEGER"


class Sqlite3(SqlOutput):
    spec = PluginSpec(
        name="SQLITE3",
        kind=Kind.OUTPUT,
        help="Writes each event as a row of an SQLite table whose columns name the keys (_ for .).",
        options=(
            path_option("db", None, "the database file", not_paths=(":memory:",), mandatory=True),
            str_option("table", None, "the table; its columns name the keys to write", mandatory=True),
            int_option("buffer", 1000, "rows per transaction, at most", min=1, max=1_000_000),
            int_option("create_table", 0, "1: create a missing table with a column per key of the stack", min=0, max=1),
        ),
        wildcard_inputs=True,
        section_required=True,
    )

    dialect: ClassVar[str] = "sqlite"
    mark: ClassVar[str] = "?"

    def __init__(self, instance_id: str, options: dict[str, Any], log: Any) -> None:
        super().__init__(instance_id, options, log)
        self.batch_rows = options["buffer"]
        self._created = False
        self._create_sql = ""  # create_table=1: the table for the (first) stack's keys

    def configure(self) -> None:
        if not self.options["db"]:
            raise PluginError("db is empty", option="db")
        check_identifier(self.options["table"], "table")

    def target(self) -> str:
        return f"table `{self.options['table']}' in {self.options['db']}"

    # -- the connection -----------------------------------------------------------------------------

    def connect(self) -> sqlite3.Connection:
        # autocommit off at the driver level: BEGIN and COMMIT are issued here, one per batch
        conn = sqlite3.connect(self.options["db"], timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        return conn

    def read_columns(self, conn: Any) -> list[Column]:
        table = self.options["table"]
        rows = conn.execute(f"PRAGMA table_info({table})").fetchall()
        if not rows and self._create_sql:
            # create_table=1 and the file was replaced (rotated, removed) since: make the table again
            conn.execute(self._create_sql)
            self.log.notice(f"created table {table} in {self.options['db']}")
            rows = conn.execute(f"PRAGMA table_info({table})").fetchall()
        return [Column(name, column_kind(decl or "")) for _, name, decl, *_ in rows]

    def start(self, loop: EventLoop) -> None:
        # a local file is always "reachable": any failure to open it or read the table refuses the start
        path = self.options["db"]
        self._created = not os.path.exists(path)
        try:
            conn = self.connect()
            columns = self.read_columns(conn)
        except sqlite3.Error as exc:
            raise PluginError(f"cannot open {path}: {exc}") from None
        if not columns and not self.options["create_table"]:
            conn.close()
            raise SchemaError(
                f"table `{self.options['table']}' is empty or missing in file `{path}'; create it (ulogd's "
                "sqlite3.table) or set create_table=1",
                option="table",
            )
        self.conn = conn
        self.connects += 1
        if columns:
            self.columns = self._active(columns)

    def abort(self) -> None:
        self.stop()
        if self._created:
            try:
                if os.path.getsize(self.options["db"]) == 0:
                    os.unlink(self.options["db"])
            except OSError:
                pass

    def handler(self, slots: Slots):
        if self.options["create_table"] and not self._create_sql:
            seen: dict[str, str] = {}
            for k, _ in slots.wildcard:
                seen.setdefault(column_of_key(k.name), _sql_type(k.type))
            cols = ", ".join(f'"{name}" {decl}'.rstrip() for name, decl in seen.items())
            self._create_sql = f"CREATE TABLE IF NOT EXISTS {self.options['table']} ({cols})"
            if self.columns is None and self.conn is not None:
                try:
                    self.columns = self._active(self.read_columns(self.conn))
                except sqlite3.Error as exc:
                    raise SchemaError(f"cannot create table {self.options['table']}: {exc}", option="table") from None
        return super().handler(slots)

    def transient(self, exc: BaseException) -> bool:
        if isinstance(exc, Transient):
            return True
        # busy, locked, I/O, a full disk, "no such table": the rows wait; a constraint or a value the
        # driver cannot bind concerns a row (IntegrityError, OverflowError, ...)
        return isinstance(exc, sqlite3.OperationalError)

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN")

    def commit(self, conn: Any, cur: Any) -> None:
        conn.execute("COMMIT")

    def _rollback(self, conn: Any) -> None:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def statement_for(self, columns: list[Column]) -> str:
        names = ", ".join(f'"{c.name}"' for c in columns)
        marks = ", ".join("?" * len(columns))
        return f"INSERT INTO {self.options['table']} ({names}) VALUES ({marks})"
