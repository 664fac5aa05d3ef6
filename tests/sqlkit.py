"""Shared by the SQL output tests: stacks built in-process, throwaway PostgreSQL schemas and MariaDB
databases (unique per test, dropped after), ulogd's shipped schemas, and the packets and flows that
ulogd 2.0.8 and pylogd log side by side."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import IN_CI, PYLOGD, ROOT, TEST_PLUGINS
from rig import read_text, wait_for

from pylogd.config import parse_ini
from pylogd.log import Logger
from pylogd.plugin import RejectedEntries
from pylogd.registry import Registry
from pylogd.stack import build

ULOGD = "/usr/sbin/ulogd"
ULOGD_DOC = Path("/usr/share/doc/ulogd2")
PG_SOCKET_DIR = "/var/run/postgresql"
MYSQL_SOCKET = "/run/mysqld/mysqld.sock"


def shipped(name: str) -> str:
    """One of the schemas ulogd ships (pgsql-ulogd2.sql, ...), as text."""
    path = ULOGD_DOC / name
    if path.exists():
        return path.read_text()
    gz = ULOGD_DOC / (name + ".gz")
    if not gz.exists():
        pytest.skip(f"{gz} is missing (apt-get install ulogd2)")
    return gzip.decompress(gz.read_bytes()).decode()


def need_ulogd(plugin: str) -> None:
    so = Path(f"/usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_{plugin}.so")
    if not Path(ULOGD).exists() or not so.exists():
        pytest.skip(f"ulogd 2.0.8 with its {plugin} output is not installed (apt-get install ulogd2-{plugin.lower()})")


# ------------------------------------------------------------------------------------------------
# a stack built as the daemon builds it, its output driven by hand


class SqlStack:
    """``stack=`` built from a config; ``entry(keys)`` is the output's entry for an event whose valid
    keys are ``keys``; ``write(entries)`` calls the output's write() as the runner does."""

    def __init__(self, stack: str, sections: str, start: bool = True) -> None:
        raw = parse_ini("test.conf", f'[global]\nplugin="{TEST_PLUGINS}"\nstack={stack}\n{sections}\n')
        self.plan = build(raw, Registry(), Logger).stacks[0]
        self.plugin: Any = self.plan.instances[-1].plugin
        self.slots = {k.name: slot for k, slot in self.plan.slots[-1].wildcard}
        self.convert: Callable[[list], Any] | None = None
        if start:
            self.start()

    def start(self) -> None:
        self.plugin.start(None)
        self.convert = self.plugin.handler(self.plan.slots[-1])

    def entry(self, keys: dict[str, Any]) -> Any:
        values: list = [None] * self.plan.size
        for name, value in keys.items():
            values[self.slots[name]] = value
        assert self.convert is not None
        return self.convert(values)

    def write(self, entries: list) -> tuple[list, list]:
        """Write like the runner: returns (rejected entries, entries left after a failure)."""
        batch = list(entries)
        try:
            self.plugin.write(batch)
        except RejectedEntries as exc:
            return [e for e, _ in exc.rejected], []
        except Exception:
            return [], batch
        return [], []

    def stop(self) -> None:
        self.plugin.stop()


# ------------------------------------------------------------------------------------------------
# PostgreSQL


def _absent(what: str, exc: BaseException) -> None:
    reason = f"{what} is not reachable: {exc}"
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def pg_admin() -> Any:
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect(host=PG_SOCKET_DIR, user="postgres", dbname="test", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        _absent("PostgreSQL (unix socket, user postgres, database test)", exc)


class PgSchema:
    """A schema of its own in the database ``test``, for one test."""

    def __init__(self, admin: Any, name: str) -> None:
        self.admin = admin
        self.name = name

    def load(self, sql: str) -> None:
        """Run a script (ulogd's shipped schema) with this schema first in the search path."""
        self.admin.execute(f"SET search_path = {self.name}")
        try:
            self.admin.execute(sql)
        finally:
            self.admin.execute("SET search_path = public")

    def rows(self, query: str, params: tuple = ()) -> list[tuple]:
        self.admin.execute(f"SET search_path = {self.name}")
        try:
            return self.admin.execute(query, params).fetchall()
        finally:
            self.admin.execute("SET search_path = public")

    def section(self, iid: str, **options: Any) -> str:
        opts = {"db": "test", "user": "postgres", "schema": self.name, **options}
        return f"[{iid}]\n" + "".join(f'{k}="{v}"\n' for k, v in opts.items())


@pytest.fixture(name="pg_schema")
def pg_schema_fixture() -> Iterator[PgSchema]:
    admin = pg_admin()
    name = f"pylogd_t{os.getpid()}_{int(time.monotonic() * 1000) % 100000}"
    admin.execute(f"CREATE SCHEMA {name}")
    try:
        yield PgSchema(admin, name)
    finally:
        admin.execute(f"DROP SCHEMA {name} CASCADE")
        admin.close()


def pg_kill(admin: Any, application_name: str) -> int:
    """Terminate every connection pylogd's instance opened; the number terminated."""
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (application_name,)
    ).fetchall()
    return len(rows)


def pg_backends(admin: Any, application_name: str) -> list[int]:
    """The server processes of pylogd's instance's connections."""
    rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application_name,))
    return [r[0] for r in rows.fetchall()]


@contextlib.contextmanager
def frozen(pids: list[int]) -> Iterator[None]:
    """The processes stopped (SIGSTOP) for the block: a server that no longer answers, its connections open."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


# ------------------------------------------------------------------------------------------------
# MariaDB


def mysql_admin(database: str | None = None) -> Any:
    pymysql = pytest.importorskip("pymysql")
    try:
        return pymysql.connect(
            unix_socket=MYSQL_SOCKET, user="root", password="", database=database, autocommit=True, connect_timeout=5
        )
    except pymysql.err.MySQLError as exc:
        _absent("MariaDB (unix socket, user root, empty password)", exc)


class MyDb:
    """A database of its own on the MariaDB server, for one test."""

    def __init__(self, admin: Any, name: str) -> None:
        self.admin = admin
        self.name = name

    def load(self, sql: str) -> None:
        """Run a script with the mariadb client (ulogd's schemas use its DELIMITER command)."""
        client = shutil.which("mariadb") or shutil.which("mysql")
        if client is None:
            pytest.skip("the mariadb client is not installed")
        res = subprocess.run(
            [client, f"--socket={MYSQL_SOCKET}", "-uroot", self.name], input=sql, text=True, capture_output=True
        )
        assert res.returncode == 0, res.stderr

    def rows(self, query: str, params: tuple = ()) -> list[tuple]:
        with self.admin.cursor() as cur:
            cur.execute(f"USE {self.name}")
            cur.execute(query, params)
            return list(cur.fetchall())

    def execute(self, query: str, params: tuple = ()) -> None:
        with self.admin.cursor() as cur:
            cur.execute(f"USE {self.name}")
            cur.execute(query, params)

    def section(self, iid: str, **options: Any) -> str:
        opts = {"db": self.name, "host": "localhost", "user": "root", "pass": "", **options}
        return f"[{iid}]\n" + "".join(f'{k}="{v}"\n' for k, v in opts.items())


@pytest.fixture(name="my_db")
def my_db_fixture() -> Iterator[MyDb]:
    admin = mysql_admin()
    name = f"pylogd_t{os.getpid()}_{int(time.monotonic() * 1000) % 100000}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield MyDb(admin, name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE {name}")
        admin.close()


def my_kill(admin: Any, database: str, spare: tuple[int, ...] = ()) -> int:
    """KILL every connection to ``database`` but this one and those in ``spare`` (the test's own)."""
    with admin.cursor() as cur:
        cur.execute(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()", (database,)
        )
        ids = [r[0] for r in cur.fetchall() if r[0] not in spare]
        for i in ids:
            with contextlib.suppress(Exception):
                cur.execute(f"KILL {int(i)}")
    return len(ids)


# ------------------------------------------------------------------------------------------------
# a daemon fed by the PIPEIN test input (test.n, test.text, ...), for outages and rejected rows


class PipeDaemon:
    """pylogd with ``in1:PIPEIN`` feeding the given output section; ``send(n)`` sends test.n values."""

    def __init__(
        self,
        tmp: Path,
        out: str,
        section: str,
        filters: str = "",
        global_options: str = "",
        args: list[str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.args = args or []
        self.log = tmp / "pylogd.log"
        self.fifo = tmp / "fifo"
        self.conf = tmp / "pylogd.conf"
        self.conf.write_text(
            f'[global]\nlogfile="{self.log}"\nloglevel=3\nplugin="{TEST_PLUGINS}"\n{global_options}'
            f"stack=in1:PIPEIN,{filters}{out}\n"
            f'[in1]\npath="{self.fifo}"\n{section}'
        )
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> PipeDaemon:
        self.proc = subprocess.Popen(
            [*PYLOGD, "-c", str(self.conf), *self.args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if wait:
            wait_for(
                lambda: "entering main loop" in read_text(self.log) or self.proc.poll() is not None,
                timeout=30,
                what="pylogd start-up",
            )
            assert self.proc.poll() is None, (self.proc.communicate(), read_text(self.log))
        return self

    def send(self, numbers: range | list[int], text: str = "t") -> None:
        fd = os.open(self.fifo, os.O_WRONLY)
        try:
            data = "".join(
                json.dumps({"test.n": n, "test.text": f"{text}{n}", "oob.family": 2}) + "\n" for n in numbers
            )
            view = memoryview(data.encode())
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def spooled_doubt(spool_dir: Path) -> list[dict]:
    """The records of transactions in doubt that the spools under ``spool_dir`` keep (newest progress slot
    of each output's spool)."""
    found = []
    for directory in spool_dir.iterdir() if spool_dir.is_dir() else ():
        best: dict | None = None
        for slot in directory.glob("progress.[01]"):
            with contextlib.suppress(ValueError, OSError):
                record = json.loads(slot.read_bytes().split(b"\n")[0])
                if best is None or record["seq"] > best["seq"]:
                    best = record
        if best is not None and best.get("doubt"):
            found.append(best["doubt"])
    return found


class Repeater:
    """Calls ``func`` every ``interval`` seconds in a thread until stopped; counts what it returned."""

    def __init__(self, func: Callable[[], int], interval: float) -> None:
        self.func, self.interval = func, interval
        self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.total += self.func()
            self._stop.wait(self.interval)

    def __enter__(self) -> Repeater:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def run_outage(
    daemon: PipeDaemon, kill: Callable[[], int], count: Callable[[], int], seconds: float = 10.0, rate: int = 50
) -> int:
    """Steady traffic (``rate`` events per 0.1 s) before, during and after ``seconds`` of killed
    connections; returns how many events were sent (numbered from 1)."""
    sent = 0

    def burst() -> None:
        nonlocal sent
        daemon.send(range(sent + 1, sent + rate + 1))
        sent += rate

    for _ in range(10):
        burst()
        time.sleep(0.1)
    wait_for(lambda: count() > 0, timeout=20, what="the first rows")
    with Repeater(kill, 0.05) as killer:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            burst()
            time.sleep(0.1)
    assert killer.total > 0, "no connection was killed: the outage did not happen"
    for _ in range(10):
        burst()
        time.sleep(0.1)
    return sent


class TcpForwarder:
    """A TCP port that forwards to a database server while ``up``; ``down()`` closes the port and every
    connection through it (a server that is away), ``up()`` opens the same port again.  ``freeze()``
    holds every byte in either direction, connections and port left open (a server that stopped
    answering, or a network that drops everything); ``thaw()`` delivers what was held and goes on."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self._hold_at: list[bytes] = []  # commands still to be seen, in order, before freezing
        self._deliver_last = True
        self._silent = False
        self._epoch = 0  # thaw(drop=True) moves it on: a chunk held across that is dropped
        self.held = threading.Event()

    def freeze(self) -> None:
        self._flowing.clear()

    def freeze_after(self, *commands: bytes, deliver_last: bool = True) -> None:
        """Freeze once a client has sent ``commands`` in that order: the last reaches the server (or, with
        ``deliver_last`` false, waits with what follows); the server's answer waits too (a client killed
        then dies at exactly that point)."""
        self.held.clear()
        self._hold_at = list(commands)
        self._deliver_last = deliver_last

    def drop_silently(self) -> None:
        """From now on a client that goes leaves its server connection open, as a network that lost the
        connection without a word does: the server's session lives on with whatever it held."""
        self._silent = True

    def thaw(self, drop: bool = False) -> None:
        """Let bytes flow again; with ``drop``, what was held is lost (a network that lost it)."""
        if drop:
            self._epoch += 1
        self._flowing.set()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._conns += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(src, dst, src is client), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        tail = b""  # the end of the last chunk: a command split between two reads is still seen
        try:
            while data := src.recv(65536):
                seen, held = tail + data, False
                with self._lock:  # one list for every connection's pipes
                    while from_client and self._hold_at and self._hold_at[0] in seen:
                        seen = seen[seen.index(self._hold_at.pop(0)) + 1 :]
                        held = not self._hold_at
                if held and not self._deliver_last:
                    self._flowing.clear()
                    self.held.set()
                epoch = self._epoch
                self._flowing.wait()
                if epoch != self._epoch:
                    continue
                dst.sendall(data)
                if held and self._deliver_last:
                    self._flowing.clear()
                    self.held.set()
                tail = seen[-64:]
        except OSError:
            pass
        finally:
            client = src if from_client else dst
            for s in (src, dst) if not self._silent else (client,):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


# ------------------------------------------------------------------------------------------------
# ulogd 2.0.8 and pylogd side by side on the same packets and flows


TRANSPORT = ("tcp_", "udp_", "icmp_", "sctp_")


def expected_row(
    ulogd_row: dict[str, Any], pylogd_row: dict[str, Any], unset_by_ulogd: tuple[str, ...] = ()
) -> dict[str, Any]:
    """ulogd's row as pylogd writes it: BASE's fixes (test_compat_ulogd.DIFFERENCES, by key), no transport
    columns for a later fragment (ulogd filled them from the payload), and the columns of
    ``unset_by_ulogd`` as pylogd has them (their own tests check those)."""
    from test_compat_ulogd import DIFFERENCES

    want = dict(ulogd_row)
    later_fragment = (ulogd_row.get("ip_fragoff") or 0) & 0x1FFF
    for column, value in ulogd_row.items():
        key = column.replace("_", ".")
        if later_fragment and column.startswith(TRANSPORT):
            want[column] = None
        elif column in unset_by_ulogd and value is None:
            want[column] = pylogd_row[column]
        elif key in DIFFERENCES and value is not None:
            want[column] = DIFFERENCES[key](value, {k.replace("_", "."): v for k, v in pylogd_row.items()})
    return want


def side_by_side_packets(
    pair: tuple, tmp: Path, stack: str, sections: dict[str, str], count: Callable[[str], int], min_rows: int = 20
) -> None:
    """Both daemons in namespace A, ulogd on NFLOG group 5 and pylogd on group 6, each with ``stack``
    and its own ``sections[name]``; the compat corpus is sent from B.  Returns once both wrote the
    same number of rows (``count(name)``) and nothing more came for a second."""
    from test_compat_ulogd import run_both_on_corpus, wait_equal_and_quiet

    for name, group in (("ulogd", 5), ("pylogd", 6)):
        (tmp / f"{name}.conf").write_text(
            f'[global]\nlogfile="{tmp}/{name}.daemon.log"\nloglevel=3\nstack={stack}\n'
            f"[log1]\ngroup={group}\n{sections[name]}"
        )
    run_both_on_corpus(pair, tmp)
    wait_equal_and_quiet(lambda: [count("ulogd"), count("pylogd")], "rows", minimum=min_rows)


def side_by_side_flows(rig: Any, tmp: Path, stack: str, sections: dict[str, str], count: Callable[[str], int]) -> None:
    """Both daemons in one namespace on its conntrack events (NFCT event mode); the compat flows
    (TCP, UDP, UDP over IPv6, ICMP), then a flush.  Returns once both wrote 8 rows."""
    from test_nfct_compat import CT_RULES, traffic

    ns = rig.netns("cq")
    ns.nft(CT_RULES)
    ns.run("sysctl -qw net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_timestamp=1")
    for name in ("ulogd", "pylogd"):
        (tmp / f"{name}.conf").write_text(
            f'[global]\nlogfile="{tmp}/{name}.daemon.log"\nloglevel=3\nstack={stack}\n'
            f"[ct1]\nhash_enable=0\n{sections[name]}"
        )
    ns.spawn([ULOGD, "-c", str(tmp / "ulogd.conf")], name="ulogd")
    ns.spawn([*PYLOGD, "-c", str(tmp / "pylogd.conf")], name="pylogd", cwd=ROOT)
    wait_for(lambda: "entering main loop" in read_text(tmp / "pylogd.daemon.log"), timeout=20, what="pylogd start")
    wait_for(lambda: "working in event mode" in read_text(tmp / "ulogd.daemon.log"), what="ulogd start")
    ns.call(traffic)
    ns.run(["conntrack", "-F"])
    wait_for(lambda: count("ulogd") >= 8 and count("pylogd") >= 8, timeout=20, what="8 flow rows each")
    time.sleep(0.5)


#: a TCP SYN and an IPv6 UDP datagram as a packet stack gives them to an SQL output, without the
#: address keys (IP2STR's text or IP2BIN's bytes: each test file adds the ones its schema takes)
PACKET_SYN = {
    "oob.time.sec": 1795388587,
    "oob.time.usec": 721317,
    "oob.hook": 1,
    "oob.prefix": "TCPIN: ",
    "oob.mark": 0,
    "oob.in": "rsva",
    "oob.out": "",
    "oob.family": 2,
    "oob.protocol": 2048,
    "ip.protocol": 6,
    "ip.ttl": 64,
    "ip.totlen": 60,
    "tcp.sport": 34358,
    "tcp.dport": 2222,
    "tcp.seq": 3537804397,
    "tcp.ackseq": 0,
    "tcp.syn": 1,
    "tcp.ack": 0,
    "tcp.window": 64240,
    "raw.type": 1,
    "mac.saddr.str": "42:69:33:72:3a:73",
    "mac.daddr.str": "a6:0c:a2:bf:78:26",
    "mac.str": "a6:0c:a2:bf:78:26:42:69:33:72:3a:73:08:00",
    "raw.label": 0,
}
PACKET_UDP6 = {
    "oob.prefix": "X6 ",
    "oob.family": 10,
    "ip.protocol": 17,
    "ip6.hoplimit": 64,
    "udp.sport": 40001,
    "udp.dport": 7777,
    "udp.len": 11,
}
