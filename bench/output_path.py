"""ulogd 2.0.8 and both builds of pylogd writing the same packets to JSON, PCAP, SQLITE3, PGSQL and MYSQL, in turn.

    sudo .venv/bin/python bench/output_path.py [--packets N] [--rate PPS] [--repeat N] [--output NAME ...]
        [--builds ulogd,compiled,pure | --only pylogd|ulogd|pure] [--results bench/RESULTS.md]

Rerun the table of bench/RESULTS.md: ``sudo .venv/bin/python bench/output_path.py --packets 20000
--repeat 3 --results bench/RESULTS.md`` (after ``make compiled``); a quick look: ``--packets 2000
--output PCAP --output JSON``; a PostgreSQL outage: ``--output PGSQL --packets 1500 --rate 500
--outage 1:10``.

The daemons, by default in turn per output and repeat: ulogd, pylogd's compiled build (the Cython
modules ``make compiled`` builds in place; refused if ``pylogd -V`` does not say all the hot modules
are compiled) and its pure-Python build (the same program with ``PYLOGD_PURE_PYTHON=1``), each row
labelled with its build; ``--builds`` (or ``--only``) runs fewer.  Each output is configured as
ulogd's example ulogd.conf has it (no buffer options, no tuning: what a user runs), the daemon
pinned to CPU 1 and the sender to CPU 0, in a throwaway network namespace; an nft rule logs UDP
datagrams to 127.0.0.1 with the prefix ``burst`` (``probe`` for the packets that tell the daemon is
ready).  Per daemon and output it prints: packets sent, records written (lines, pcap records or
rows with the burst prefix), loss, CPU µs per record (schedstat, every thread), peak RSS (VmHWM),
each pylogd build's CPU ratio against ulogd in the same run, rows or records per second (written /
the time from the first packet until the count stopped growing) and its ratio against ulogd.  With
``--repeat N`` the table shows the median CPU per record, the largest loss and the largest peak
RSS.  The databases are the machine's PostgreSQL and MariaDB, reached through their unix sockets,
each run in a database of its own with ulogd's shipped schema loaded.  PGSQL and MYSQL call
INSERT_PACKET_FULL per row as the example does; PGSQL-flat and MYSQL-flat load ulogd's flat schemas
and insert into their plain table (``procedure="INSERT"``, ``table="ulog2"``).
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packet_path import (
    SENDER,
    add_build_options,
    cpu_seconds,
    daemon_command,
    daemon_labels,
    daemons_of_args,
    file_label,
    peak_rss_kb,
    sender,
    sh,
    stop,
    summary,
)

GROUP, PORT, PROBE_PORT = 7, 9999, 9998
DOC = Path("/usr/share/doc/ulogd2")
PACKET_KEYS = "log1:NFLOG,base1:BASE,ifi1:IFINDEX"


@dataclass
class Output:
    stack: str
    section: Callable[[Path, str], str]  # (tmp, run name) -> the output's [section]
    count: Callable[[Path, str, str], int]  # (tmp, run name, prefix) -> records written with that prefix
    setup: Callable[[Path, str], None] = lambda tmp, name: None
    teardown: Callable[[Path, str], None] = lambda tmp, name: None


def count_text(path: Path, needle: bytes) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(needle) for chunk in f)
    except FileNotFoundError:
        return 0


def count_pcap(path: Path, port: int) -> int:
    """Records whose IPv4/UDP destination port is ``port``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    n, offset = 0, 24
    while offset + 16 <= len(data):
        incl = struct.unpack_from("<I", data, offset + 8)[0]
        pkt = data[offset + 16 : offset + 16 + incl]
        if len(pkt) >= 24 and pkt[9] == 17 and struct.unpack_from("!H", pkt, (pkt[0] & 15) * 4 + 2)[0] == port:
            n += 1
        offset += 16 + incl
    return n


def sqlite_count(tmp: Path, name: str, prefix: str) -> int:
    try:
        with sqlite3.connect(f"file:{tmp / name}.db?mode=ro", uri=True, timeout=1) as db:
            return db.execute("select count(*) from ulog_pkt where oob_prefix = ?", (prefix,)).fetchone()[0]
    except sqlite3.Error:
        return 0


def sqlite_setup(tmp: Path, name: str) -> None:
    with sqlite3.connect(tmp / f"{name}.db") as db:
        db.executescript((DOC / "sqlite3.table").read_text())


def db_name(name: str) -> str:
    return "bench_" + "".join(c if c.isalnum() else "_" for c in name).lower()


def psql(sql: str, db: str = "test") -> str:
    return sh("psql", "-h", "/var/run/postgresql", "-U", "postgres", "-d", db, "-qtAc", sql).stdout.strip()


def pg_setup(tmp: Path, name: str, schema_file: str = "pgsql-ulogd2.sql.gz") -> None:
    db = db_name(name)
    psql(f"drop database if exists {db}")
    psql(f"create database {db}")
    schema = gzip.decompress((DOC / schema_file).read_bytes()).decode()
    sh("psql", "-h", "/var/run/postgresql", "-U", "postgres", "-d", db, "-q", "-v", "ON_ERROR_STOP=0", input=schema)


def pg_count(tmp: Path, name: str, prefix: str) -> int:
    try:
        return int(psql(f"select count(*) from ulog2 where oob_prefix = '{prefix}'", db_name(name)) or 0)
    except subprocess.CalledProcessError:
        return 0


def pg_teardown(tmp: Path, name: str) -> None:
    psql(f"drop database if exists {db_name(name)} with (force)")


def mysql(sql: str, db: str | None = None) -> str:
    return sh("mariadb", "-uroot", "-N", "-B", *([db] if db else []), "-e", sql).stdout.strip()


def my_setup(tmp: Path, name: str, schema_file: str = "mysql-ulogd2.sql.gz") -> None:
    db = db_name(name)
    mysql(f"drop database if exists {db}; create database {db}")
    schema = gzip.decompress((DOC / schema_file).read_bytes()).decode()
    sh("mariadb", "-uroot", db, input=schema)


def my_count(tmp: Path, name: str, prefix: str) -> int:
    try:
        return int(mysql(f"select count(*) from ulog2 where oob_prefix = '{prefix}'", db_name(name)) or 0)
    except subprocess.CalledProcessError:
        return 0


def my_teardown(tmp: Path, name: str) -> None:
    mysql(f"drop database if exists {db_name(name)}")


OUTPUTS = {
    "JSON": Output(
        f"{PACKET_KEYS},ip2str1:IP2STR,mac2str1:HWHDR,json1:JSON",
        lambda tmp, name: f'[json1]\nsync=1\nfile="{tmp}/{name}.json"\n',
        lambda tmp, name, prefix: count_text(tmp / f"{name}.json", f'"oob.prefix": "{prefix}"'.encode()),
    ),
    "PCAP": Output(
        "log1:NFLOG,base1:BASE,pcap1:PCAP",
        lambda tmp, name: f'[pcap1]\nsync=1\nfile="{tmp}/{name}.pcap"\n',
        lambda tmp, name, prefix: count_pcap(tmp / f"{name}.pcap", PORT if prefix == "burst" else PROBE_PORT),
    ),
    "SQLITE3": Output(
        "log1:NFLOG,sqlite3_pkt:SQLITE3",
        lambda tmp, name: f'[sqlite3_pkt]\ntable="ulog_pkt"\ndb="{tmp}/{name}.db"\n',
        sqlite_count,
        sqlite_setup,
    ),
    "PGSQL": Output(
        f"{PACKET_KEYS},ip2str1:IP2STR,mac2str1:HWHDR,pgsql1:PGSQL",
        lambda tmp, name: (
            f'[pgsql1]\ndb="{db_name(name)}"\nhost=""\nuser="postgres"\ntable="ulog"\npass=""\n'
            'procedure="INSERT_PACKET_FULL"\n'
        ),
        pg_count,
        pg_setup,
        pg_teardown,
    ),
    "MYSQL": Output(
        f"{PACKET_KEYS},ip2bin1:IP2BIN,mac2str1:HWHDR,mysql1:MYSQL",
        lambda tmp, name: (
            f'[mysql1]\ndb="{db_name(name)}"\nhost="localhost"\nuser="root"\ntable="ulog"\npass=""\n'
            'procedure="INSERT_PACKET_FULL"\n'
        ),
        my_count,
        my_setup,
        my_teardown,
    ),
    # ulogd's flat schemas: one plain table, rows by INSERT (pylogd: COPY / multi-row INSERT per batch)
    "PGSQL-flat": Output(
        f"{PACKET_KEYS},ip2str1:IP2STR,mac2str1:HWHDR,pgsql1:PGSQL",
        lambda tmp, name: (
            f'[pgsql1]\ndb="{db_name(name)}"\nhost=""\nuser="postgres"\ntable="ulog2"\npass=""\nprocedure="INSERT"\n'
        ),
        pg_count,
        lambda tmp, name: pg_setup(tmp, name, "pgsql-ulogd2-flat.sql.gz"),
        pg_teardown,
    ),
    "MYSQL-flat": Output(
        f"{PACKET_KEYS},ip2bin1:IP2BIN,mac2str1:HWHDR,mysql1:MYSQL",
        lambda tmp, name: (
            f'[mysql1]\ndb="{db_name(name)}"\nhost="localhost"\nuser="root"\ntable="ulog2"\npass=""\n'
            'procedure="INSERT"\n'
        ),
        my_count,
        lambda tmp, name: my_setup(tmp, name, "mysql-ulogd2-flat.sql.gz"),
        my_teardown,
    ),
}


@dataclass
class Result:
    daemon: str
    output: str
    sent: int
    written: int
    cpu_s: float
    seconds: float  # first packet to the last record written
    peak_rss_kb: int
    worst_written: int | None = None

    @property
    def loss(self) -> float:
        written = self.written if self.worst_written is None else self.worst_written
        return 1 - written / self.sent if self.sent else 0.0

    @property
    def us_per_record(self) -> float:
        return self.cpu_s / self.written * 1e6 if self.written else float("nan")

    @property
    def per_second(self) -> float:
        return self.written / self.seconds if self.seconds else 0.0


def make_namespace(ns: str) -> None:
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    rules = (
        "table inet bench {\n chain input {\n  type filter hook input priority 0;\n"
        f'  udp dport {PORT} log prefix "burst" group {GROUP}\n'
        f'  udp dport {PROBE_PORT} log prefix "probe" group {GROUP}\n }}\n}}\n'
    )
    sh("ip", "netns", "exec", ns, "nft", "-f", "-", input=rules)


def restart_postgres(after: float, down: float) -> threading.Thread:
    """Stop PostgreSQL ``after`` seconds from now (its clients' connections die), start it ``down`` s later."""
    version = sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(p) for p in v.split(".")])[-1]

    def outage() -> None:
        time.sleep(after)
        sh("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "stop", "-m", "fast")
        time.sleep(down)
        sh("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start")

    thread = threading.Thread(target=outage)
    thread.start()
    return thread


def run_one(
    ns: str, daemon: str, output: str, packets: int, rate: float, tmp: Path, run: int, outage: tuple | None = None
) -> Result:
    out = OUTPUTS[output]
    name = f"{file_label(daemon)}-{output}-{run}"
    conf = tmp / f"{name}.conf"
    conf.write_text(
        f'[global]\nlogfile="{tmp}/{name}.log"\nloglevel=5\nstack={out.stack}\n[log1]\ngroup={GROUP}\n'
        + out.section(tmp, name)
    )
    out.setup(tmp, name)
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, "taskset", "-c", "1", *daemon_command(daemon, conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while out.count(tmp, name, "probe") == 0:
            if proc.poll() is not None:
                raise RuntimeError(f"{daemon} exited: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{daemon} never wrote the probe packet: {(tmp / f'{name}.log').read_text()[-2000:]}"
                )
            sh("ip", "netns", "exec", ns, sys.executable, "-c", SENDER, "1", "0", str(PROBE_PORT))
            time.sleep(0.3)
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.monotonic()
        restart = restart_postgres(*outage) if outage else None
        sh("ip", "netns", "exec", ns, "taskset", "-c", "0", *sender(packets, rate, PORT))
        if restart:
            restart.join()
        # past the kernel's 1 s batch timer and a database's commit; after an outage, past a back-off
        quiet = 40.0 if outage else 3.0
        last, changed = -1, time.monotonic()
        while time.monotonic() - changed < quiet:
            n = out.count(tmp, name, "burst")
            if n != last:
                last, changed = n, time.monotonic()
            time.sleep(0.2)
        cpu = cpu_seconds(proc.pid) - cpu0
        rss = peak_rss_kb(proc.pid)
        stop(proc)
        written = out.count(tmp, name, "burst")
        return Result(daemon, output, packets, written, cpu, max(changed - t0, 1e-3) if written else 0, rss)
    finally:
        stop(proc)
        out.teardown(tmp, name)


def render(results: list[Result], args: argparse.Namespace, labels: dict[str, str]) -> str:
    """One row per output and daemon (``labels``: variant -> its name in the table), each pylogd
    build's ratios against the ulogd of the same output, measured in turn."""
    rate = "full speed" if not args.rate else f"{args.rate:.0f} pps"
    runs = f", median of {args.repeat} runs (loss: the largest)" if args.repeat > 1 else ""
    lines = [
        f"### {time.strftime('%Y-%m-%d')} — outputs, {platform.node()}, {os.cpu_count()} cores, kernel "
        f"{platform.release()}, {args.packets} packets at {rate}, ulogd's example config (no buffer options){runs}"
        + (f", PostgreSQL stopped {args.outage.replace(':', ' s in for ')} s" if args.outage else ""),
        "",
        "| output | daemon | sent | written | loss | CPU µs/record | peak RSS MiB | CPU ratio to ulogd | records/s "
        "| records/s ratio to ulogd |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.output, r.daemon), []).append(r)
    by = {k: summary(v) for k, v in groups.items()}
    for (output, daemon), r in by.items():
        cpu_ratio = rate_ratio = ""
        u = by.get((output, "ulogd"))
        if daemon != "ulogd" and u and u.written and r.written:
            cpu_ratio = f"{r.us_per_record / u.us_per_record:.2f}"
            rate_ratio = f"{r.per_second / u.per_second:.1f}"
        lines.append(
            f"| {output} | {labels.get(daemon, daemon)} | {r.sent} | {r.written} | {r.loss:.1%} "
            f"| {r.us_per_record:.2f} | {r.peak_rss_kb / 1024:.1f} | {cpu_ratio} | {r.per_second:.0f} | {rate_ratio} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--packets", type=int, default=20_000)
    p.add_argument("--rate", type=float, default=0, help="packets per second; 0 = as fast as the sender can")
    p.add_argument("--repeat", type=int, default=1, help="runs per daemon and output, taking turns")
    p.add_argument("--output", choices=list(OUTPUTS), action="append")
    add_build_options(p)
    p.add_argument("--results", help="append the Markdown table to this file (e.g. bench/RESULTS.md)")
    p.add_argument(
        "--outage",
        metavar="AFTER:DOWN",
        help="PGSQL only: stop PostgreSQL AFTER seconds into the burst, start it DOWN seconds later (use --rate)",
    )
    args = p.parse_args()
    outage = tuple(float(x) for x in args.outage.split(":")) if args.outage else None
    if os.geteuid() != 0 or not shutil.which("nft") or not Path("/usr/sbin/ulogd").exists():
        print("needs root, nft, ip and ulogd2 with its output plugins", file=sys.stderr)
        return 1
    daemons = daemons_of_args(args)
    labels = daemon_labels(daemons)
    ns = f"pylogd-obench-{os.getpid()}"
    results: list[Result] = []
    try:
        make_namespace(ns)
        with tempfile.TemporaryDirectory(prefix="pylogd-obench-") as tmpdir:
            tmp = Path(tmpdir)
            os.chmod(tmp, 0o755)
            for output in args.output or list(OUTPUTS):
                for run in range(args.repeat):
                    for daemon in daemons:
                        r = run_one(ns, daemon, output, args.packets, args.rate, tmp, run, outage)
                        results.append(r)
                        print(
                            f"{daemon:11} {output:8} sent={r.sent} written={r.written} loss={r.loss:.1%} "
                            f"cpu={r.us_per_record:.2f}µs/record {r.per_second:.0f}/s "
                            f"rss={r.peak_rss_kb / 1024:.1f}MiB",
                            flush=True,
                        )
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    table = render(results, args, labels)
    print()
    print(table)
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n" + table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
