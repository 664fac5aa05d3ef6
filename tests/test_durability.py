"""The durability promise with real servers (issue 22): with ``spool_dir``, what pylogd accepted survives
kill -9 while the database is down, a crash during the write-back or at a cut COMMIT writes nothing
twice, a full or read-only spool disk never stops a database that works, a damaged spool costs only
its damaged records (counted), and the records of transactions in doubt are kept per stack and never
block the rows behind them.  Real daemons, real PostgreSQL and MariaDB, real kill -9."""

from __future__ import annotations

import contextlib
import random
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import IN_CI
from daemonkit import wait_for
from sqlkit import (
    PgSchema,
    PipeDaemon,
    SqlStack,
    TcpForwarder,
    my_db_fixture,  # noqa: F401  (the fixture my_db)
    pg_schema_fixture,  # noqa: F401  (the fixture pg_schema)
    read_text,
)

from pylogd.control import request
from pylogd.log import Logger
from pylogd.runner import OutputRunner
from pylogd.spool import RECORD_HEAD, Spool, _record_at
from pylogd.sql import batch_mark

TABLE = {
    "pgsql": "CREATE TABLE t (_id serial, test_n integer, test_text text)",
    "mysql": "CREATE TABLE t (id serial, test_n integer, test_text text)",
}


class Db:
    """One test's table on PostgreSQL or MariaDB, reached over TCP through a forwarder that the test
    takes down and up (the database going away and coming back)."""

    def __init__(self, kind: str, handle: Any) -> None:
        self.kind = kind
        self.handle = handle
        self.fwd = TcpForwarder(("127.0.0.1", 5432 if kind == "pgsql" else 3306))
        if kind == "pgsql":
            handle.load(TABLE[kind] + ";")
        else:
            handle.execute(TABLE[kind])
        self.plugin = "PGSQL" if kind == "pgsql" else "MYSQL"

    def section(self, iid: str, through_forwarder: bool = True) -> str:
        port = self.fwd.port if through_forwarder else (5432 if self.kind == "pgsql" else 3306)
        return self.handle.section(iid, host="127.0.0.1", port=port, table="t", procedure="INSERT")

    def rows(self) -> list[tuple[int, str]]:
        order = "_id" if self.kind == "pgsql" else "id"
        return [(r[0], r[1]) for r in self.handle.rows(f"SELECT test_n, test_text FROM t ORDER BY {order}")]

    def count(self) -> int:
        return self.handle.rows("SELECT count(*) FROM t")[0][0]


@pytest.fixture(params=["pgsql", "mysql"])
def db(request: pytest.FixtureRequest) -> Any:
    handle = request.getfixturevalue("pg_schema" if request.param == "pgsql" else "my_db")
    database = Db(request.param, handle)
    yield database
    database.fwd.down()


def exactly_once(db: Db, numbers: range, text: str = "t") -> None:
    got = [n for n, t in db.rows() if t.startswith(text)]
    missing = sorted(set(numbers) - set(got))
    twice = sorted({n for n in got if got.count(n) > 1})
    assert not missing and not twice and len(got) == len(numbers), (
        f"{len(got)} rows for {len(numbers)}; missing {missing[:10]} ({len(missing)}), "
        f"twice {twice[:10]} ({len(twice)})"
    )
    assert got == sorted(got)  # in order


def no_traceback(d: PipeDaemon) -> None:
    assert "Traceback" not in read_text(d.log)
    if d.proc is not None and d.proc.stderr is not None and d.proc.poll() is not None:
        assert "Traceback" not in d.proc.stderr.read()


def kill9(d: PipeDaemon) -> None:
    assert d.proc is not None
    d.proc.kill()
    d.proc.wait()
    no_traceback(d)


def accepted(control: Path) -> int:
    """What the running daemon's stack has accepted from its input (its events counter); -1 while its
    control socket is not there yet."""
    try:
        return request(str(control))["stacks"][0]["events"]
    except OSError:
        return -1


def durable(control: Path, n: int) -> bool:
    """Whether the running daemon accepted ``n`` events and each is written or on disk in its spool (none
    waits in memory only: what a kill -9 would cost)."""
    try:
        stack = request(str(control))["stacks"][0]
    except OSError:
        return False
    return stack["events"] == n and stack["pending"] == stack["spooled"]


def up(fwd: TcpForwarder) -> None:
    if fwd._listener is None:
        fwd.up()


def finish(d: PipeDaemon, db: Db, sent: int) -> None:
    """The database back for good: events 1..sent are written exactly once, in order, and no daemon
    ended in a traceback."""
    up(db.fwd)
    wait_for(lambda: db.count() >= sent, timeout=120, what=f"{sent} rows")
    time.sleep(0.5)  # anything written twice would arrive by now
    assert d.stop() == 0
    no_traceback(d)
    exactly_once(db, range(1, sent + 1))


def start_then_cut(db: Db, d: PipeDaemon) -> None:
    """The daemon reads the table at start, then the database goes away."""
    db.fwd.up()
    d.start()
    db.fwd.down()


def stop_if_running(d: PipeDaemon) -> None:
    """After a test that failed between a kill and a restart: no daemon is left behind."""
    if d.proc is not None and d.proc.poll() is None:
        d.stop()


def spool_daemon(db: Db, tmp: Path, iid: str, args: list[str] | None = None) -> tuple[PipeDaemon, Path]:
    control = tmp / "control.sock"
    d = PipeDaemon(
        tmp,
        f"{iid}:{db.plugin}",
        db.section(iid),
        global_options=f'spool_dir="{tmp / "spool"}"\n',
        args=["--control-socket", str(control), *(args or [])],
    )
    return d, control


# ------------------------------------------------------------------------------------------------
# item 5: kill -9 while the database is down


def test_kill_9_while_the_database_is_down_loses_nothing_accepted(db: Db, tmp_path: Path) -> None:
    """Six kills while the database is away, each right after the daemon accepted a burst: every
    accepted event is written once, in order, when it is back (before: 99 % of them were lost with
    the memory backlog, which only went to disk past 64 MiB)."""
    d, control = spool_daemon(db, tmp_path, "out1")
    start_then_cut(db, d)
    d.send([1])
    sent = 1
    # pylogd has seen the outage (entries accepted before it saw one wait in memory for up to a second)
    wait_for(lambda: "write failed" in read_text(d.log), timeout=20, what="the outage seen")
    try:
        this_run = 1
        for _ in range(6):
            d.send(range(sent + 1, sent + 51))
            sent += 50
            this_run += 50
            wait_for(lambda n=this_run: accepted(control) == n, timeout=20, what="the burst accepted")
            kill9(d)
            d.start()
            this_run = 0
        finish(d, db, sent)
    finally:
        stop_if_running(d)


# ------------------------------------------------------------------------------------------------
# item 6: kill -9 during the write-back; seeded kills at random points, the database going up and down


def test_seeded_kills_during_writing_and_write_back_write_every_event_once(db: Db, tmp_path: Path) -> None:
    """Fault injection, seeded: rounds of traffic with the database going away and coming back and
    pylogd killed (-9) at random points, while it writes, while it writes back what it spooled, or
    at rest.  At the end every event accepted is written exactly once and in order, and no daemon
    ever ended in a traceback (before: the first burst sent while the database was away stayed in memory
    only, so the kill could not even be made safely; the write-back's own kills are the next test's)."""
    rng = random.Random(2212)
    d, control = spool_daemon(db, tmp_path, "out2")
    sent = 0
    db.fwd.up()
    d.start()
    try:
        for _ in range(8):
            db.fwd.down()
            if rng.random() < 0.5:
                db.fwd.up()
            burst = rng.choice([50, 400, 3000])
            d.send(range(sent + 1, sent + burst + 1))
            sent += burst
            # the kill comes once nothing waits in memory only (that last second is the promise's bound)
            wait_for(lambda b=burst: durable(control, b), timeout=30, what="the burst written or spooled")
            if rng.random() < 0.6:
                up(db.fwd)  # the write-back starts: kill it somewhere along the way
            time.sleep(rng.uniform(0, 0.4))
            kill9(d)
            d.start()
        finish(d, db, sent)
    finally:
        stop_if_running(d)


#: where each of three kills lands in a write-back: the commands a batch has sent (the last reached the
#: server, its answer and everything after it held back) when pylogd dies
KILL_POINTS = {
    "mysql": [(b"XA START", b"INSERT"), (b"XA PREPARE",), (b"XA COMMIT",)],
    "pgsql": [(b"txid_current", b"COPY"), (b"txid_current",), (b"txid_current", b"COMMIT")],
}


def test_kill_9_during_the_write_back_writes_nothing_twice(db: Db, tmp_path: Path) -> None:
    """30,000 entries spooled while the database was away; it is back, and pylogd is killed (-9) three
    times while it writes them back, each time at a chosen point of a batch: rows sent, not committed; the
    batch prepared (MariaDB's XA); the COMMIT applied by the server and its answer never read.  Each row
    is written once (before: the read position moved once per record, and three kills wrote 8,000 to
    12,000 rows again).  The forwarder holds the batch at that point, so a kill cannot come after the
    whole spool was written (a test that waited for rows to appear and then killed could)."""
    d, _ = spool_daemon(db, tmp_path, "out7")
    start_then_cut(db, d)
    sent = 30_000
    d.send(range(1, sent + 1))
    assert d.stop() == 0  # what waits goes to the spool at exit
    db.fwd.up()
    try:
        for commands in KILL_POINTS[db.kind]:
            db.fwd.freeze_after(*commands)
            d.start()
            assert db.fwd.held.wait(30), f"no batch reached {commands[-1]!r}"
            kill9(d)
            db.fwd.thaw()
            assert db.count() < sent  # the kill came during the write-back
        d.start()
        finish(d, db, sent)
    finally:
        db.fwd.thaw()
        stop_if_running(d)


def test_a_batch_in_doubt_whose_session_outlived_pylogd_is_written_once(db: Db, tmp_path: Path) -> None:
    """pylogd is killed with a batch at its COMMIT (MariaDB: prepared; PostgreSQL: the COMMIT not yet
    arrived) and the network keeps the server's end of the connection open, so the session lives on
    holding the batch.  The next start ends that session first, then settles the batch: each row once.
    Before, the record on disk did not name the session: MariaDB refused to commit a branch a live
    session holds (XAER_NOTA) and the batch was written twice; PostgreSQL answered "in progress" at
    every try and the rows behind waited for as long as the server kept the session (hours)."""
    d, _ = spool_daemon(db, tmp_path, "out8")
    start_then_cut(db, d)
    sent = 10_000
    d.send(range(1, sent + 1))
    assert d.stop() == 0
    db.fwd.up()
    if db.kind == "mysql":
        db.fwd.freeze_after(b"XA PREPARE")
    else:
        db.fwd.freeze_after(b"txid_current", b"COMMIT", deliver_last=False)
    db.fwd.drop_silently()
    try:
        d.start()
        assert db.fwd.held.wait(30), "no batch reached its COMMIT"
        kill9(d)
        db.fwd.thaw(drop=True)
        d.start()
        finish(d, db, sent)
        assert "ending it" in read_text(d.log) or db.kind == "mysql"
        # the old session's connection ends at last: nothing it held may come back as rows (a prepared
        # branch the settle left to it would be committed by the next start's write)
        db.fwd.down()
        d.start()
        d.send([sent + 1])
        finish(d, db, sent + 1)
    finally:
        db.fwd.thaw()
        stop_if_running(d)


# ------------------------------------------------------------------------------------------------
# item 9 with a real server: a damaged spool costs its damaged records only, counted


def test_a_damaged_spool_costs_only_its_damaged_records_and_says_how_many(db: Db, tmp_path: Path) -> None:
    rng = random.Random(2209)
    d, _ = spool_daemon(db, tmp_path, "out3")
    start_then_cut(db, d)
    sent = 0
    for _ in range(6):  # several records
        d.send(range(sent + 1, sent + 201))
        sent += 200
        time.sleep(0.1)
    assert d.stop() == 0
    (directory,) = (tmp_path / "spool").iterdir()
    segments = sorted(directory.glob("*.seg"))
    records = []
    for seg in segments:
        data = seg.read_bytes()
        offset = 0
        while (found := _record_at(data, offset)) is not None:
            records.append((seg, offset, found))
            offset += RECORD_HEAD + found[0]
    assert len(records) >= 3
    hit = rng.sample(records, 2)
    lost = 0
    for seg, offset, (size, count, _, _) in hit:
        raw = bytearray(seg.read_bytes())
        raw[offset + RECORD_HEAD + rng.randrange(size)] ^= 1 << rng.randrange(8)  # a bit in its payload
        seg.write_bytes(bytes(raw))
        lost += count
    (directory / "backup.seg").write_bytes(b"stray")
    db.fwd.up()
    d.start()
    wait_for(lambda: db.count() >= sent - lost, timeout=60, what=f"{sent - lost} rows")
    time.sleep(0.5)
    assert d.stop() == 0
    no_traceback(d)
    got = [n for n, _ in db.rows()]
    assert len(got) == len(set(got)) == sent - lost and got == sorted(got)
    said = sum(int(m) for m in re.findall(r"its (\d+) entries are lost", read_text(d.log)))
    assert said == lost


# ------------------------------------------------------------------------------------------------
# item 3: a full or read-only spool disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    mount = tmp_path / "spool"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if res.returncode != 0:
        if IN_CI:
            pytest.fail(f"CI=true but cannot mount a tmpfs: {res.stderr}")
        pytest.skip(f"cannot mount a tmpfs: {res.stderr}")
    yield mount
    while subprocess.run(["umount", "-l", str(mount)], capture_output=True).returncode == 0:
        pass  # the tmpfs, and a read-only bind mount over it


def remount_read_only(bind_mount: Path) -> None:
    """Make a bind mount read-only.  The kernel refuses (EBUSY) while a file is open for writing through
    it: pylogd's progress write (a temporary file, written, renamed) may be open through the new bind
    mount at that instant, for a few milliseconds; the remount goes through once it is closed."""
    for _ in range(500):
        res = subprocess.run(["mount", "-o", "remount,bind,ro", str(bind_mount)], capture_output=True, text=True)
        if res.returncode == 0:
            return
        assert "busy" in res.stderr, res.stderr
        time.sleep(0.01)
    raise AssertionError(f"{bind_mount} stayed busy: a file is held open for writing through it")


def test_a_full_spool_disk_does_not_stop_a_database_that_works(db: Db, tmp_path: Path, small_disk: Path) -> None:
    """The spool's disk is full: rows still go to a database that works (before: the record of each
    batch was written there before its COMMIT, so nothing committed at all)."""
    d, _ = spool_daemon(db, tmp_path, "out4")
    db.fwd.up()
    d.start()
    try:
        with contextlib.suppress(OSError), open(small_disk / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        d.send(range(1, 501))
        wait_for(lambda: db.count() >= 500, timeout=30, what="500 rows")
    finally:
        assert d.stop() == 0
    exactly_once(db, range(1, 501))


def test_a_read_only_spool_disk_is_written_back_and_does_not_stop_the_database(
    db: Db, tmp_path: Path, small_disk: Path
) -> None:
    """Spooled during an outage, then the spool's filesystem goes read-only: what it holds is written
    back once, the failing progress writes are logged, and new rows keep going."""
    d, control = spool_daemon(db, tmp_path, "out5")
    start_then_cut(db, d)
    try:
        d.send(range(1, 301))
        # every entry in the spool: its segment is open before the bind mount below (entries accepted wait
        # up to a second in memory, and a segment opened through the bind mount would keep it busy)
        wait_for(lambda: durable(control, 300), timeout=20, what="300 spooled")
        # read-only from now on for every new open (the open segment, as after errors=remount-ro, keeps
        # its descriptor): a bind mount of itself, remounted read-only
        subprocess.run(["mount", "--bind", str(small_disk), str(small_disk)], check=True)
        remount_read_only(small_disk)
        db.fwd.up()
        d.send(range(301, 401))
        wait_for(lambda: db.count() >= 400, timeout=60, what="400 rows")
    finally:
        assert d.stop() == 0
    no_traceback(d)
    exactly_once(db, range(1, 401))
    assert "Read-only file system" in read_text(d.log)


# ------------------------------------------------------------------------------------------------
# item 1: -u USER with a spool


def test_a_daemon_run_as_another_user_writes_with_a_spool(db: Db, tmp_path: Path) -> None:
    """With -u nobody and spool_dir the database got no row at all: root made the spool's directories
    0700 before the privilege drop, and each batch failed there."""
    tmp_path.chmod(0o755)  # nobody reaches the spool below it
    d, _ = spool_daemon(db, tmp_path, "out6", args=["-u", "nobody"])
    db.fwd.up()
    d.start()
    try:
        d.send(range(1, 501))
        wait_for(lambda: db.count() >= 500, timeout=30, what="500 rows")
        db.fwd.down()  # and the spool works for nobody too
        d.send(range(501, 601))
        time.sleep(0.5)
        db.fwd.up()
        wait_for(lambda: db.count() >= 600, timeout=60, what="600 rows")
    finally:
        assert d.stop() == 0
    no_traceback(d)
    exactly_once(db, range(1, 601))
    owner = {p.stat().st_uid for p in (tmp_path / "spool").rglob("*")}
    assert owner <= {65534}, owner


# ------------------------------------------------------------------------------------------------
# item 4: one output instance in two stacks


class TwoStacks(PipeDaemon):
    """Two PIPEIN inputs feeding one output instance (two stacks, one output)."""

    def __init__(self, tmp: Path, plugin: str, section: str, spool: Path) -> None:
        super().__init__(tmp, f"out:{plugin}", section, global_options=f'spool_dir="{spool}"\n')
        self.fifo_b = tmp / "fifo_b"
        text = self.conf.read_text().replace("stack=in1:PIPEIN,", f"stack=in2:PIPEIN,out:{plugin}\nstack=in1:PIPEIN,")
        self.conf.write_text(text + f'[in2]\npath="{self.fifo_b}"\n')

    def send_b(self, numbers: range) -> None:
        fifo, self.fifo = self.fifo, self.fifo_b
        try:
            self.send(numbers, text="b")
        finally:
            self.fifo = fifo


SLOW_COMMIT_PG = """
CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN IF NEW.test_n % 1000 = 1 AND NEW.test_text LIKE 'a%' THEN PERFORM pg_sleep(1.5); END IF;
    RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION slow_commit();
"""


def test_an_output_shared_by_two_stacks_writes_a_batch_cut_off_at_commit_once(
    pg_schema: PgSchema, tmp_path: Path
) -> None:
    """Stack a's COMMIT is under way (a deferred trigger holds it) when the connection is cut: the
    server commits it, pylogd never hears.  Stack b writes through the same output meanwhile.  Each
    stack settles its own batch: every row once (before: b's worker settled a's record against its own
    rows and cleared it, and a wrote its batch again, 100 duplicates a cut)."""
    db = Db("pgsql", pg_schema)
    pg_schema.load(SLOW_COMMIT_PG)
    d = TwoStacks(tmp_path, "PGSQL", db.section("out"), tmp_path / "spool")
    db.fwd.up()
    d.start()
    try:
        for cut in range(3):
            first = cut * 1000 + 1
            d.send(range(first, first + 100), text="a")
            wait_for(
                lambda: (
                    pg_schema.rows(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pylogd out' "
                        "AND query = 'COMMIT' AND state = 'active'"
                    )[0][0]
                    > 0
                ),
                timeout=20,
                what="a's COMMIT under way",
            )
            db.fwd.down()
            d.send_b(range(first, first + 100))
            time.sleep(2)  # the server finishes a's COMMIT
            db.fwd.up()
            wait_for(lambda c=cut: db.count() >= (c + 1) * 200, timeout=60, what="both stacks' rows")
        time.sleep(0.5)
    finally:
        assert d.stop() == 0
    no_traceback(d)
    got = db.rows()
    for text in ("a", "b"):
        numbers = [n for n, t in got if t.startswith(text)]
        want = [c * 1000 + 1 + i for c in range(3) for i in range(100)]
        assert sorted(numbers) == want, (text, len(numbers))


# ------------------------------------------------------------------------------------------------
# item 2: a record of a transaction in doubt that cannot be settled


def unusable_records(kind: str) -> list[dict]:
    """Each with "mark" set to the batch's by the test."""
    mark = ""
    if kind == "pgsql":
        return [
            {},
            {"txid": "abc", "rows": 5, "mark": mark},
            # ahead of the server's (a cluster restored or replaced since): "transaction ID is in the future"
            {"txid": "ahead", "rows": 5, "mark": mark},
        ]
    return [{}, {"rows": 5, "mark": mark}, {"xid": 5, "prepared": True, "rows": 5, "mark": mark}]


def test_an_unusable_record_of_a_transaction_in_doubt_never_blocks_the_rows(
    db: Db, tmp_path: Path, logged: Any
) -> None:
    """Records of a COMMIT in doubt that load but cannot be settled ({}; a txid that is no number; a
    txid the server says is in the future; no xid) blocked the output for good: every try failed
    again.  Now the record is refused (or the server's answer taken as "not committed") and logged,
    and the rows it named are written."""
    lines, sink = logged
    section = db.section("out", through_forwarder=False) + '[in1]\npath="/nonexistent/fifo"\n'
    stack = SqlStack(f"in1:PIPEIN,out:{db.plugin}", section)
    stack.plugin.log = Logger("out", sink)
    n = 0
    for number, record in enumerate(unusable_records(db.kind)):
        batch = [stack.entry({"test.n": n + i, "test.text": "t"}) for i in range(1, 6)]
        if "mark" in record:
            record["mark"] = batch_mark(batch)
        if record.get("txid") == "ahead":
            record["txid"] = db.handle.rows("SELECT txid_current()")[0][0] + 1_000_000
        directory = tmp_path / f"spool{number}"
        spool = Spool(str(directory), 1 << 30, Logger("spool", sink))
        spool.append(batch)
        spool.read(load=False)  # the record just stored: its position names it
        spool.save_progress(spool.progress({**record, "position": spool.position()}))
        spool.close()
        spool = Spool(str(directory), 1 << 30, Logger("spool", sink))
        runner = OutputRunner(stack.plugin, str(number), Logger("core", sink), spool=spool)
        runner.start()
        wait_for(lambda r=runner: r.pending() == 0, timeout=30, what="the rows of the record")
        runner.close(time.monotonic() + 5)
        n += 5
    stack.stop()
    exactly_once(db, range(1, n + 1))
    said = "\n".join(lines)
    assert said.count("cannot be used") == (2 if db.kind == "pgsql" else 3)
    if db.kind == "pgsql":
        assert "is in the future" in said
