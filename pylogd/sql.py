"""What the SQL outputs (SQLITE3, PGSQL, MYSQL) share: ulogd's column-to-key mapping, its statement
forms, value conversion, and one write loop with batches, savepoints and reconnection.

ulogd's generic database layer (util/db.c) defines the model the three follow:

* The table (or view) named by ``table`` is read at start; each column is an input key, named by the
  column with every ``_`` read as ``.`` (``ip_saddr_str`` is ``ip.saddr.str``).  Some columns are
  inactive (filled by the database): MySQL's first column always, PostgreSQL's first column when its
  name starts with ``_`` (an id from a sequence).  SQLite has none.
* ``procedure`` says what each row runs: ``INSERT`` inserts into the table, ``INSERT INTO t`` (any text
  starting with ``INSERT``) is used as written followed by the column list, ``CALL p`` calls a stored
  procedure, and anything else is a function called as ``SELECT f(...)``.  The function receives the
  active columns in column order (ulogd's shipped INSERT_PACKET_FULL, INSERT_CT, INSERT_OR_REPLACE_CT).

What pylogd adds in this layer:

* Values are always bound as driver parameters (ulogd spliced them into the SQL text).
* Rows go in batches, one transaction each.  When the server refuses a batch for its data (a
  constraint, a value out of range), the batch is written again row by row, each in a savepoint, so
  the refused rows are set aside (:class:`~pylogd.plugin.RejectedEntries`) and every other row is
  written.  A failure that may pass (the server went away, a lock, a missing table) leaves the rows
  waiting; the runner retries them with back-off after reconnecting.
* The server need not be up at start.  The stack's entries are then the values of every key of the
  stack, and the columns are matched when the first connection is made.  When it is up at start, a
  column without a key refuses the start with ulogd's message, naming the column.
* A column matches a key also when the key's name itself holds an ``_`` (``oob.ifindex_in`` is the
  column ``oob_ifindex_in``), which ulogd's replace-every-underscore rule cannot find.

Value conversion, by key type and by the kind of the column (its declared type):

* integers are integers (unsigned 32-bit values stay unsigned); BOOL is 0/1 (PostgreSQL: ``'0'``/
  ``'1'`` as ulogd sends them, which the server reads as boolean or integer as the column wants);
* IPADDR (a raw address key): into an integer column the IPv4 address in host order
  (10.0.0.1 is 167772161) and an IPv6 address as its 128-bit number (SQLite, whose integers are 64
  bits wide, stores IPv6 as text); into a text column the address as text; into a binary column 16
  bytes, IPv4 mapped to ``::ffff:a.b.c.d`` as IP2BIN does;
* RAWSTR (IP2BIN's ``0x...`` literals) are bytes (ulogd spliced them unquoted), RAW keys bytes,
  strings strings, a key not valid for the event NULL.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import re
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .keys import INTEGER_TYPES, Key, KeyType
from .log import ERROR
from .loop import EventLoop
from .plugin import Output, PluginError, RejectedEntries, Slots, int_option, str_option

#: rows in one statement batch / transaction unless an output says otherwise
BATCH_ROWS = 1000
#: ulogd's connect_timeout=0 means "no timeout"; a daemon that must never hang waits this long instead
DEFAULT_CONNECT_TIMEOUT = 10
#: seconds a server may leave a write unanswered (io_timeout=0) before the connection is given up
DEFAULT_IO_TIMEOUT = 60

INTEGER = "int"
TEXT = "text"
BINARY = "binary"
OTHER = "other"


class SchemaError(PluginError):
    """The table does not fit the stack (a column without a key): refuses the start."""


class Transient(Exception):
    """A failure that may pass: the rows wait and are tried again."""


# ---------------------------------------------------------------------------------------------
# columns and keys


@dataclass(frozen=True)
class Column:
    name: str
    kind: str = OTHER  # INTEGER, TEXT, BINARY or OTHER, from the declared type


def column_kind(declared: str) -> str:
    """The kind of a column from its declared SQL type (SQLite's affinity rules, extended for the
    types PostgreSQL and MariaDB name)."""
    t = declared.lower()
    if "int" in t or t in ("serial", "bigserial", "smallserial"):
        return INTEGER
    if any(word in t for word in ("blob", "binary", "bytea")):
        return BINARY
    if any(word in t for word in ("char", "text", "clob", "inet", "cidr", "macaddr", "enum")):
        return TEXT
    return OTHER


def key_of_column(column: str) -> str:
    """ulogd's rule: every ``_`` of a column name is a ``.`` of the key's."""
    return column.replace("_", ".")


def column_of_key(key: str) -> str:
    return key.replace(".", "_")


def active_columns(columns: Sequence[Column], first_inactive: str) -> list[Column]:
    """The columns rows fill: ``first_inactive`` is "always" (MySQL), "underscore" (PostgreSQL: when
    the first name starts with ``_``) or "never" (SQLite)."""
    if not columns:
        return []
    if first_inactive == "always" or (first_inactive == "underscore" and columns[0].name.startswith("_")):
        return list(columns[1:])
    return list(columns)


def match_keys(columns: Sequence[Column], keys: Sequence[Key]) -> tuple[list[int | None], list[Column]]:
    """For each column the index in ``keys`` of the key that fills it, and the columns no key fills."""
    by_name = {k.name: i for i, k in reversed(list(enumerate(keys)))}
    by_column = {column_of_key(k.name): i for i, k in reversed(list(enumerate(keys)))}
    found: list[int | None] = []
    missing = []
    for col in columns:
        i = by_name.get(key_of_column(col.name))
        if i is None:
            i = by_column.get(col.name)
        if i is None:
            missing.append(col)
        found.append(i)
    return found, missing


def missing_message(missing: Sequence[Column], table: str, known_at_start: bool = True) -> str:
    col = missing[0]
    more = f" (and {len(missing) - 1} more: {', '.join(c.name for c in missing[1:4])})" if len(missing) > 1 else ""
    hint = "add the plugin that provides it to the stack, or remove the column"
    if not known_at_start:
        hint += " (raw data keys are kept only when the table can be read at start)"
    return f"cannot find key `{key_of_column(col.name)}' in stack for column {col.name} of {table}{more}; {hint}"


# ---------------------------------------------------------------------------------------------
# statements

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


def check_identifier(name: str, what: str) -> None:
    """Table, schema and procedure names enter the SQL text (values never do): only plain names."""
    for part in name.split("."):
        if not _IDENT.match(part):
            raise PluginError(f'{what} "{name}" is not a plain SQL name (letters, digits, _ and $)', option=what)


def procedure_form(procedure: str) -> tuple[str, str]:
    """ulogd's forms of ``procedure``: ("insert", ""), ("insert_into", text), ("call", name) or
    ("select", name)."""
    p = procedure.strip()
    upper = p.upper()
    if upper == "INSERT":
        return "insert", ""
    if upper.startswith("INSERT "):
        return "insert_into", p
    if upper == "CALL" or upper.startswith("CALL "):
        return "call", p[4:].strip()
    return "select", p


def check_procedure(procedure: str) -> None:
    form, text = procedure_form(procedure)
    if form in ("call", "select"):
        check_identifier(text, "procedure")
    elif form == "insert_into":
        # INSERT INTO name, nothing after it: the column list and the values are added here
        m = re.fullmatch(r"(?i)INSERT\s+INTO\s+(\S+)", text)
        if not m:
            raise PluginError(
                f'procedure "{text}" must be INSERT, INSERT INTO <table>, CALL <name> or a name', "procedure"
            )
        check_identifier(m.group(1), "procedure")


def build_statement(procedure: str, table: str, schema: str | None, columns: Sequence[str], mark: str) -> str:
    """The statement a row runs, with one parameter marker per active column."""
    marks = ", ".join([mark] * len(columns))
    form, text = procedure_form(procedure)
    names = ", ".join(columns)
    if form == "insert":
        target = f"{schema}.{table}" if schema else table
        return f"INSERT INTO {target} ({names}) VALUES ({marks})"
    if form == "insert_into":
        return f"{text} ({names}) VALUES ({marks})"
    if form == "call":
        return f"CALL {text}({marks})"
    return f"SELECT {text}({marks})"


# ---------------------------------------------------------------------------------------------
# values


def _host_order(addr: bytes) -> int | str:
    return int.from_bytes(addr, "big")


def _address_text(addr: bytes) -> str:
    return str(ipaddress.ip_address(bytes(addr)))


_V4_MAPPED = bytes(10) + b"\xff\xff"


def _address_binary(addr: bytes) -> bytes:
    return _V4_MAPPED + addr if len(addr) == 4 else bytes(addr)


def _address_integer_64(addr: bytes) -> int | str:
    # SQLite integers are 64-bit: an IPv6 address does not fit, so it goes in as text
    return int.from_bytes(addr, "big") if len(addr) == 4 else _address_text(addr)


def _rawstr(value: str) -> bytes | str:
    if value[:2] in ("0x", "0X"):
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            return value
    return value


def _bool_text(value: int) -> str:
    return "1" if value else "0"


def value_function(ktype: KeyType, kind: str, dialect: str) -> Callable[[Any], Any] | None:
    """How a key's value becomes a parameter for a column of ``kind``; None: as it is."""
    if ktype is KeyType.BOOL:
        return _bool_text if dialect == "pgsql" else None
    if ktype in INTEGER_TYPES or ktype is KeyType.STRING:
        return None
    if ktype in (KeyType.IPADDR, KeyType.IP6ADDR):
        if kind == TEXT:
            return _address_text
        if kind == BINARY:
            return _address_binary
        return _address_integer_64 if dialect == "sqlite" else _host_order
    if ktype is KeyType.RAWSTR:
        return None if kind == TEXT else _rawstr
    if ktype is KeyType.RAW:
        return None  # made bytes when the entry is made
    return None


def row_function(
    types: Sequence[KeyType], positions: Sequence[int], kinds: Sequence[str], dialect: str
) -> Callable[[tuple], tuple]:
    """A function from an entry (a tag, then values) to a row of parameters: column ``j`` takes the
    value at ``positions[j]`` of the entry's values.  Built once per layout and table."""
    ns: dict[str, Any] = {}
    parts = []
    for j, (pos, kind) in enumerate(zip(positions, kinds, strict=True)):
        func = value_function(types[pos], kind, dialect)
        item = f"e[{pos + 1}]"
        if func is None:
            parts.append(item)
        else:
            name = f"_f{j}"
            ns[name] = func
            parts.append(f"(None if (x := {item}) is None else {name}(x))")
    if (
        list(positions) == list(range(len(types)))
        and len(parts) == len(types)
        and all(p.startswith("e[") for p in parts)
    ):
        return lambda e: e[1:]
    source = f"lambda e: ({', '.join(parts)}{',' if len(parts) == 1 else ''})"
    return eval(source, ns)  # only slot numbers and bound names enter the source


def entry_size(entry: tuple) -> int:
    """An entry's bytes, roughly: its slots and the text and bytes it holds."""
    n = 16 * len(entry)
    for x in entry:
        if x.__class__ is str or x.__class__ is bytes:
            n += len(x)
    return n


# ---------------------------------------------------------------------------------------------
# options


def db_options() -> tuple:
    """ulogd's generic database options (DB_CES), in its order."""
    return (
        str_option("table", None, "the table or view whose columns name the keys to write", mandatory=True),
        int_option("reconnect", 2, "ulogd: seconds before reconnecting; pylogd backs off by itself", min=0),
        int_option("connect_timeout", 0, f"seconds to wait for a connection (0: {DEFAULT_CONNECT_TIMEOUT})", min=0),
        str_option(
            "procedure", None, "INSERT, INSERT INTO <table>, CALL <procedure>, or a function's name", mandatory=True
        ),
        int_option("backlog_memcap", 0, "bytes of rows kept in memory while the database is away (0: default)", min=0),
        int_option("backlog_oneshot_requests", 10, "ulogd: backlog rows per event; pylogd writes them in batches"),
        int_option("ring_buffer_size", 0, "ulogd: rows in its ring; pylogd always writes from a worker thread", min=0),
    )


def io_timeout_option() -> Any:
    return int_option(
        "io_timeout",
        0,
        "seconds the server may take over a batch (PGSQL) or leave a read or write unanswered (MYSQL) before "
        f"pylogd gives the connection up; the rows wait for the next try (0: {DEFAULT_IO_TIMEOUT})",
        min=0,
        max=86400,
    )


def batch_mark(entries: Sequence[tuple]) -> str:
    """Tells a batch again after a restart, when it comes back from the spool: its first and last
    entries and its length (entries hold plain values, whose repr survives the spool's round trip)."""
    return hashlib.blake2b(repr((entries[0], entries[-1], len(entries))).encode(), digest_size=16).hexdigest()


def password_env(instance_id: str) -> str:
    """The environment variable that may hold an instance's password: PYLOGD_<ID>_PASS, the id in
    capitals with every other character than a letter or digit as _."""
    return "PYLOGD_" + re.sub(r"[^A-Z0-9]", "_", instance_id.upper()) + "_PASS"


def read_password(options: dict[str, Any], instance_id: str) -> str | None:
    """``pass``, else the first line of ``pass_file``, else $PYLOGD_<ID>_PASS, else None."""
    if options.get("pass"):
        return options["pass"]
    path = options.get("pass_file")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except OSError as exc:
            raise Transient(f"cannot read pass_file {path}: {exc.strerror}") from None
    return os.environ.get(password_env(instance_id))


# ---------------------------------------------------------------------------------------------
# the output


class Layout:
    """The keys one stack's entries carry, in entry order: the active columns' keys when the table was
    known when the stack was built, else every key of the stack."""

    def __init__(self, keys: list[Key], from_table: bool, spooled_only: bool = False) -> None:
        self.keys = keys
        self.types = [k.type for k in keys]
        self.from_table = from_table
        self.spooled_only = spooled_only  # no stack makes entries of it: only a spool may hold some


class Channel:
    """One stack's way into an SQL output: the stack's own transaction in doubt, and where the
    entries of its current write stand in its spool."""

    def __init__(self, output: SqlOutput, name: str, keep: Callable[[dict[str, Any]], None] | None) -> None:
        self.output = output
        self.name = name
        self.keep = keep
        #: the transaction whose COMMIT was cut off: {"rows": n, "mark": ..., "position": ..., the driver's id}
        self.in_doubt: dict[str, Any] | None = None
        #: [record id, index] in the spool of the first entry written now; None: not read back from a spool
        self.position: list[int] | None = None

    def write(self, entries: list) -> None:
        self.output.write_through(self, entries)

    def adopt(self, record: Any) -> None:
        """The record of a transaction in doubt when the last run stopped: settled before the next write."""
        problem = self.output.doubt_problem(record)
        if problem is not None:
            rows = record.get("rows") if isinstance(record, dict) else None
            self.output.log.error(
                f"stack {self.name}: the record of a transaction in doubt at the last stop cannot be used "
                f"({problem}): if that transaction committed, its {rows or 'unknown number of'} rows are written again"
            )
            return
        self.in_doubt = record
        self.output.log.notice(
            f"stack {self.name}: the last run stopped with {record['rows']} rows in doubt at COMMIT; settling first"
        )

    def place(self, position: list[int] | None) -> None:
        """The batch in doubt now stands at ``position`` in the spool (what waited in memory went there)."""
        if self.in_doubt is not None and self.in_doubt.get("position") is None and position is not None:
            self.in_doubt["position"] = position

    def durable_doubt(self) -> dict[str, Any] | None:
        """The transaction in doubt, when the spool holds its rows (so a record on disk can name them)."""
        record = self.in_doubt
        return record if record is not None and record.get("position") is not None else None

    def before_commit(self, record: dict[str, Any]) -> None:
        if self.keep is not None and self.position is not None:
            self.keep({**record, "position": self.position})


class SqlOutput(Output):
    """An SQL output: subclasses connect, list columns and classify errors; this class makes the entries
    and writes them."""

    blocking: ClassVar[bool] = True
    entry_size: ClassVar[Callable[[Any], int]] = staticmethod(entry_size)  # type: ignore[assignment]
    max_retry_delay: ClassVar[float] = 30.0

    #: "always", "underscore" or "never": which first column is left to the database
    first_inactive: ClassVar[str] = "never"
    dialect: ClassVar[str] = ""
    mark: ClassVar[str] = "?"
    #: rows per transaction
    batch_rows: int = BATCH_ROWS

    def __init__(self, instance_id: str, options: dict[str, Any], log: Any) -> None:
        super().__init__(instance_id, options, log)
        self.conn: Any = None
        self.columns: list[Column] | None = None  # the active columns, once the table was read
        # by tag, the first value of each entry: a number made from the layout's key names, so entries
        # a spool kept from an earlier run find their layout again
        self.layouts: dict[int, Layout] = {}
        self._stack_keys: list[list[Key]] = []  # stacks whose table was not known at start: all their keys
        self._rows: dict[int, Callable[[tuple], tuple]] = {}  # layout -> row function, for self.columns
        self.statement = ""
        self._lock = threading.Lock()  # the connection, between the workers, SIGHUP and stop()
        self._reconnect = False
        self.connects = 0
        self._warned_down = False
        self._batch: dict[str, Any] = {}  # the rows and mark of the batch being written
        # each stack writes through its own channel (its own transaction in doubt); direct writes go
        # through this one; _channel is the one whose write holds the lock
        self._direct = Channel(self, "", None)
        self._channel = self._direct
        self._channels: list[Channel] = []  # the stacks' channels

    # -- for subclasses -----------------------------------------------------------------------

    def target(self) -> str:
        """The table as messages name it."""
        return self.options["table"]

    def connect(self) -> Any:
        """A new connection; raise anything on failure."""
        raise NotImplementedError

    def read_columns(self, conn: Any) -> list[Column]:
        """Every column of the table in order; raise SchemaError when the table is missing."""
        raise NotImplementedError

    def close_connection(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            conn.close()

    def transient(self, exc: BaseException) -> bool:
        """Whether an error may pass (connection, lock, missing table) rather than concern the rows."""
        raise NotImplementedError

    def refused(self, exc: BaseException) -> bool:
        """Whether a failed connection is the server's definite no (unknown database or user, wrong password)."""
        return False

    def begin(self, conn: Any) -> None:
        """Start a transaction (drivers that open one implicitly do nothing)."""

    def run_batch(self, cur: Any, rows: list[tuple]) -> None:
        cur.executemany(self.statement, rows)

    def statement_for(self, columns: list[Column]) -> str:
        return build_statement(
            self.options.get("procedure", "INSERT"),
            self.options["table"],
            None,
            [c.name for c in columns],
            self.mark,
        )

    # -- a transaction in doubt ------------------------------------------------------------------
    #
    # A transaction whose COMMIT was cut off (a lost connection) may have committed: before its rows
    # are written again the server is asked (the drivers' _settle).  Each stack writes through its own
    # channel, so an output shared by two stacks never settles one stack's batch against the other's
    # rows.  A stack with a spool keeps the record on disk with the spool's read position: written
    # before COMMIT when the batch comes from the spool, so a pylogd killed meanwhile leaves the next
    # start a question to ask rather than a guess.

    def channel(self, name: str, keep: Callable[[dict[str, Any]], None] | None) -> Channel:
        """A stack's way in: ``keep`` stores a transaction's record before its COMMIT (None: no spool)."""
        channel = Channel(self, name, keep)
        self._channels.append(channel)
        return channel

    def write(self, entries: list) -> None:
        self.write_through(self._direct, entries)

    def write_through(self, channel: Channel, entries: list) -> None:
        with self._lock:
            self._channel = channel
            try:
                self._write(entries)
            finally:
                self._channel = self._direct

    @property
    def _in_doubt(self) -> dict[str, Any] | None:
        return self._channel.in_doubt

    @_in_doubt.setter
    def _in_doubt(self, record: dict[str, Any] | None) -> None:
        self._channel.in_doubt = record

    def save_state(self, record: dict[str, Any]) -> None:
        """The transaction is about to COMMIT (or, settled, to be committed): its record on disk first."""
        self._channel.before_commit(record)

    def doubt_problem(self, record: Any) -> str | None:
        """Why a record of a transaction in doubt, read from disk, cannot be settled (None: it can)."""
        if not isinstance(record, dict):
            return "not a record"
        rows = record.get("rows")
        if type(rows) is not int or rows < 1:
            return f"rows is {rows!r}"
        if not isinstance(record.get("mark"), str):
            return "no mark"
        position = record.get("position")
        if position is not None and not (
            isinstance(position, list) and len(position) == 2 and all(type(x) is int for x in position)
        ):
            return f"position is {position!r}"
        return None

    def take_settled(self, entries: list, record: dict[str, Any], committed: bool) -> None:
        """The batch in doubt was committed after all: its rows leave ``entries`` when they are it
        (the same place in the spool, when the record names one, and the same first and last rows)."""
        n = record.get("rows") or 0
        position = record.get("position")
        if position is not None and position != self._channel.position:
            return  # a record of rows the spool has passed: they were written and counted then
        if committed and 0 < n <= len(entries) and batch_mark(entries[:n]) == record.get("mark"):
            self.log.notice(f"the {n} rows whose commit was cut off were committed; not writing them again")
            del entries[:n]

    # -- configuration ----------------------------------------------------------------------------

    def configure(self) -> None:
        check_identifier(self.options["table"], "table")
        if self.options.get("pass") and self.options.get("pass_file"):
            raise PluginError("pass and pass_file both set; keep one", option="pass_file")
        if "procedure" in self.options:
            check_procedure(self.options["procedure"])
        memcap = self.options.get("backlog_memcap") or 0
        if memcap and memcap < 1 << 20:
            self.log.notice(f"backlog_memcap {memcap} holds few rows; rows beyond it are dropped while writes fail")

    def backlog_limits(self) -> tuple[int, int]:
        entries, nbytes = super().backlog_limits()
        memcap = self.options.get("backlog_memcap") or 0
        if memcap:
            return 1 << 30, memcap
        return entries, nbytes

    # -- start ------------------------------------------------------------------------------------

    def start(self, loop: EventLoop) -> None:
        try:
            conn = self.connect()
        except SchemaError:
            raise
        except Exception as exc:
            if self.refused(exc) or not (self.transient(exc) or isinstance(exc, Transient | OSError)):
                # the server answered and said no (no such database or user, a wrong password): a
                # mistake to show now, as ulogd did, not rows to keep for a server that will never take them
                raise PluginError(f"cannot connect to the database: {_reason(exc)}") from None
            self.log.error(f"database not reachable at start ({_reason(exc)}); rows wait and are written once it is")
            return
        try:
            self.columns = self._active(self.read_columns(conn))
        except Exception:
            self.close_connection(conn)
            raise
        self.conn = conn
        self.connects += 1
        self.log.notice(f"connected; {self.target()} has {len(self.columns)} columns to fill")

    def _active(self, columns: list[Column]) -> list[Column]:
        active = active_columns(columns, self.first_inactive)
        if not active:
            raise SchemaError(f"{self.target()} is empty or missing", option="table")
        return active

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        keys = [k for k, _ in slots.wildcard]
        slot_of = {k.name: s for k, s in slots.wildcard}
        # every key a column may name, but raw data (a copy of each packet and netlink message), which
        # ulogd's tables never hold: the entries of a stack whose table is not known at start
        all_keys = [k for k in keys if k.type is not KeyType.RAW]
        if self.columns is not None:
            found, missing = match_keys(self.columns, keys)
            if missing:
                raise SchemaError(missing_message(missing, self.target()), option="table")
            layout_keys = [keys[i] for i in found if i is not None]
            self._layout(all_keys, False, spooled_only=True)  # what a run that started without the server spooled
        else:
            layout_keys = all_keys
            self._stack_keys.append(all_keys)
        tag = self._layout(layout_keys, self.columns is not None)
        read = [slot_of[k.name] for k in layout_keys]
        raw = [j for j, k in enumerate(layout_keys) if k.type is KeyType.RAW]
        if not raw:
            if not read:
                return lambda v: (tag,)
            ns = {"tag": tag}
            source = f"lambda v: (tag, {', '.join(f'v[{s}]' for s in read)},)"
            return eval(source, ns)  # only slot numbers enter the source

        def entry(v: list) -> tuple:
            row = [v[s] for s in read]
            for j in raw:
                if row[j] is not None:
                    row[j] = bytes(row[j])
            return (tag, *row)

        return entry

    def _layout(self, keys: list[Key], from_table: bool, spooled_only: bool = False) -> int:
        tag = zlib.crc32("\0".join(k.name for k in keys).encode())
        known = self.layouts.get(tag)
        if known is None or (known.spooled_only and not spooled_only):
            self.layouts[tag] = Layout(keys, from_table, spooled_only)
        return tag

    # -- writing ----------------------------------------------------------------------------------

    def reopen(self) -> None:
        self._reconnect = True
        self.log.notice("reconnecting to the database before the next write")

    def stop(self) -> None:
        # a worker stuck on a server that stopped answering must not hold the daemon's exit for long
        if self._lock.acquire(timeout=5):
            try:
                self._close()
            finally:
                self._lock.release()
        else:
            self.log.error("the database does not answer; leaving its connection to the exit")

    def _close(self) -> None:
        if self.conn is not None:
            self.close_connection(self.conn)
            self.conn = None

    def statistics(self) -> dict[str, int]:
        return {"connects": self.connects}

    def _ensure(self) -> Any:
        if self._reconnect:
            self._reconnect = False
            self._close()
        if self.conn is None:
            try:
                conn = self.connect()
            except Exception as exc:
                raise Transient(f"cannot connect: {_reason(exc)}") from None
            try:
                columns = self._active(self.read_columns(conn))
            except Exception as exc:
                self.close_connection(conn)
                raise Transient(_reason(exc)) from None
            self.conn = conn
            self.connects += 1
            if columns != self.columns or not self._rows:
                self.columns = columns
                self._rows.clear()
            if self.connects > 1 or self._warned_down:
                self.log.notice(f"connected to the database again ({self.target()}: {len(columns)} columns)")
        if not self._rows:
            assert self.columns is not None
            self.statement = self.statement_for(self.columns)
            for keys in self._stack_keys:
                # what a run that read this table at start spooled carries the columns' keys only
                found, missing = match_keys(self.columns, keys)
                if not missing:
                    self._layout([keys[i] for i in found if i is not None], True, spooled_only=True)
            for tag, layout in list(self.layouts.items()):
                found, missing = match_keys(self.columns, layout.keys)
                if missing and layout.spooled_only:
                    continue  # its entries, if a spool holds any, are set aside
                if missing:
                    # the next try reads the table again: it may have been fixed by then
                    self._rows.clear()
                    self._close()
                    raise Transient(missing_message(missing, self.target(), layout.from_table))
                positions = [i for i in found if i is not None]
                kinds = [c.kind for c in self.columns]
                self._rows[tag] = row_function(layout.types, positions, kinds, self.dialect)
        return self.conn

    def _write(self, entries: list) -> None:
        try:
            conn = self._ensure()
        except Transient:
            self._warned_down = True
            raise
        rows_of = self._rows
        rejected: list[tuple[Any, str]] = []
        done = 0
        if any(e[0] not in rows_of for e in entries):
            unknown = [e for e in entries if e[0] not in rows_of]
            entries[:] = [e for e in entries if e[0] in rows_of]
            rejected.extend(
                (e, "kept by an earlier run for a table of other columns, which this run cannot map") for e in unknown
            )
        try:
            while done < len(entries):
                chunk = entries[done : done + self.batch_rows]
                rows = [rows_of[e[0]](e) for e in chunk]
                rejected.extend(self._write_chunk(conn, chunk, rows))
                done += len(chunk)
        except Exception as exc:
            del entries[:done]
            if rejected:
                self._log_rejected_lost(rejected)
            # whatever failed (a lost connection, a lock), the next try starts on a fresh connection
            self._close()
            raise Transient(_reason(exc)) from exc
        if rejected:
            raise RejectedEntries(rejected)

    def _write_chunk(self, conn: Any, chunk: list, rows: list[tuple]) -> list[tuple[Any, str]]:
        """Write one transaction; returns the rows refused for their data (the others are committed).
        A connection lost with the transaction open leaves it in doubt: it may have committed."""
        self._batch = {"rows": len(chunk), "mark": batch_mark(chunk)}
        try:
            return self._transaction(conn, chunk, rows)
        except Exception as exc:
            record = self.open_transaction()
            if record is not None and self.transient(exc):
                self._in_doubt = {**record, **self._batch, "position": self._channel.position}
            raise

    def open_transaction(self) -> dict[str, Any] | None:
        """After a failed transaction: what identifies it on the server, to ask later whether it
        committed (None: nothing to ask).  The transaction is over for this connection either way."""
        return None

    def _transaction(self, conn: Any, chunk: list, rows: list[tuple]) -> list[tuple[Any, str]]:
        try:
            self.begin(conn)
            cur = conn.cursor()
            self.run_batch(cur, rows)
            self.commit(conn, cur)
            return []
        except Exception as exc:
            self._rollback(conn)
            if self.transient(exc):
                raise
            first = exc
        # the server refused something in the batch: each row again, alone in a savepoint
        return self._row_by_row(conn, chunk, rows, first)

    def commit(self, conn: Any, cur: Any) -> None:
        conn.commit()

    def _rollback(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            conn.rollback()

    def _row_by_row(self, conn: Any, chunk: list, rows: list[tuple], first: BaseException) -> list[tuple[Any, str]]:
        rejected = []
        try:
            self.begin(conn)
            cur = conn.cursor()
            for entry, row in zip(chunk, rows, strict=True):
                cur.execute("SAVEPOINT pylogd_row")
                try:
                    cur.execute(self.statement, row)
                except Exception as exc:
                    if self.transient(exc):
                        raise
                    cur.execute("ROLLBACK TO SAVEPOINT pylogd_row")
                    rejected.append((entry, _reason(exc)))
                else:
                    cur.execute("RELEASE SAVEPOINT pylogd_row")
            self.commit(conn, cur)
        except Exception:
            self._rollback(conn)
            raise
        if not rejected:
            # the batch failed but no row alone does (a statement the batch form cannot run): say so once
            self.log.every(60, ERROR, "batch", f"a batch failed ({_reason(first)}) but each of its rows succeeded")
        return rejected

    def _log_rejected_lost(self, rejected: list[tuple[Any, str]]) -> None:
        self.log.error(
            f"{len(rejected)} rows refused by the server are dropped: {rejected[0][1]}: {rejected[0][0]!r}"[:600]
        )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def require_module(name: str, package: str, extra: str, plugin: str) -> Any:
    """Import a database driver, or refuse the config naming the package to install."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise PluginError(
            f"{plugin} needs the Python package {package}: pip install '{package}' (or pylogd[{extra}])"
        ) from None
