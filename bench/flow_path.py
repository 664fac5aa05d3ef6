"""ulogd 2.0.8 and both builds of pylogd on the same conntrack traffic, in turn, in a throwaway namespace.

    sudo .venv/bin/python bench/flow_path.py [--flows N] [--rates 5000,10000,0] [--modes event,hash]
        [--repeat 3] [--buffers default,example,kernel,large] [--builds ulogd,compiled,pure |
        --only pylogd|ulogd|pure] [--also TREE] [--live 100000] [--sustained SECONDS]
        [--results bench/RESULTS.md]

Rerun the tables of bench/RESULTS.md: ``sudo .venv/bin/python bench/flow_path.py --results
bench/RESULTS.md`` (after ``make compiled``); a quick look: ``--flows 1000 --rates 0 --modes event
--repeat 1 --live 0``.

The daemons, by default in turn per case and repeat: ulogd, pylogd's compiled build (the Cython
modules ``make compiled`` builds in place; refused if ``pylogd -V`` does not say all the hot modules
are compiled) and its pure-Python build (the same program with ``PYLOGD_PURE_PYTHON=1``), each row
labelled with its build; ``--builds`` (or ``--only``) runs fewer.  Each table has the peak RSS
(VmHWM) beside the CPU, and each pylogd build's CPU ratio against ulogd in the same run.

Events: per mode (event: ``hash_enable=0``; hash: the default) and per rate, each daemon runs
``ct1:NFCT,ip2str1:IP2STR,print1:PRINTFLOW,emu1:LOGEMU`` (sync=0, the same unmodified config for
all) pinned to CPU 1, while a sender on CPU 0 creates N one-datagram UDP flows at the rate (0: as
fast as it can; bench/blast.c's sendmmsg batches when gcc is there), each a NEW event.  Buffers
(``--buffers``): ``default`` names none (what most ulogd.conf files have), ``example`` the sizes of
ulogd's example config (217088, growing to 1085440), ``kernel`` the kernel's default for both
(ulogd names none, pylogd asks for half of 212992: the kernel doubles it), ``large`` 8 MiB growing
to 32 MiB.  Then
``conntrack -F`` ends them all at once: N DESTROY events in one burst, the worst case a firewall
meets (a flush, or the garbage collector reaping a wave of expired flows).  Lines expected: 2N in
event mode, N in hash mode.  CPU is the daemon's time on a CPU (schedstat) over the whole run,
divided by the 2N events the kernel offered; the median of ``--repeat`` runs is reported with
the largest loss and the largest peak RSS seen.

Issue 11's cases: ``--modes event --flows 30000 --rates 0 --buffers default,example,kernel`` (30,000
flows at full speed and their flush, 60,000 events) and ``--modes hash --flows 100000 --rates 0``
(a flush of 100,000 entries).

``--sustained SECONDS``: the highest rate of new flows each daemon follows for SECONDS in event mode
without losing a NEW event (doubling from 5,000/s, then a bisection to 5 %), with the CPU and peak
RSS at that rate.

Memory: the builds side by side in hash mode while ``--live`` UDP flows stay alive (udp timeout
600 s): RSS per flow for each way a flow enters the table (NEW events, the start-up dump), and after
an overrun and its resync on each (see :func:`memory_phase`).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packet_path import (  # bench/ is the script's directory
    add_build_options,
    daemon_command,
    daemon_labels,
    daemons_of_args,
    file_label,
    sender,
    sustained_search,
)

READY = {"ulogd": "working in event mode", "pylogd": "entering main loop"}
MODES = {"event": "hash_enable=0\n", "hash": ""}
BUFFERS = {
    "default": "",
    "example": "netlink_socket_buffer_size=217088\nnetlink_socket_buffer_maxsize=1085440\n",
    "kernel": None,  # ulogd: none; pylogd: half the kernel's 212992, which it doubles
    "large": "netlink_socket_buffer_size=8388608\nnetlink_socket_buffer_maxsize=33554432\n",
}
FLOW_PORT = 1024  # the first destination port of the flows (blast.c's flows mode counts up from it)


def buffer_options(buffers: str, daemon: str) -> str:
    text = BUFFERS[buffers]
    if text is None:
        return "" if daemon == "ulogd" else "netlink_socket_buffer_size=106496\n"
    return text


SENDER = r"""
import socket, sys, time
n, rate = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start = time.perf_counter()
for i in range(n):
    # a new flow each time: (destination address, port) never repeats within the run
    s.sendto(b"x", ("127.0.%d.%d" % (1 + (i // 60000) // 250, 1 + (i // 60000) % 250), 1024 + i % 60000))
    if rate > 0 and i % 100 == 99:
        delay = start + (i + 1) / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
"""

RULES = """
table inet t {
    chain out { type filter hook output priority 0; ct state new accept; }
}
"""


@dataclass
class Run:
    mode: str
    rate: float
    daemon: str
    expected: int
    written: int
    cpu_us: float  # per offered event
    rss_kb: int
    send_rate: float
    buffers: str = "large"
    sleeps: int = 0  # times the daemon's threads gave up the CPU (voluntary context switches)

    @property
    def cpu_written_us(self) -> float:
        """CPU per event written: what a line cost (an event the kernel dropped costs the daemon nothing)."""
        return self.cpu_us * self.expected_events / max(self.written_events, 1)

    @property
    def expected_events(self) -> int:
        return 2 * self.expected if self.mode == "hash" else self.expected

    @property
    def written_events(self) -> int:
        return 2 * self.written if self.mode == "hash" else self.written


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def in_ns(ns: str, cpu: int, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, "taskset", "-c", str(cpu), *cmd]


def cpu_seconds(pid: int) -> float:
    """Time on a CPU, user and system, of all the process's threads: schedstat counts it in
    nanoseconds, where /proc/PID/stat's utime and stime move in 10 ms ticks."""
    return sum(int((task / "schedstat").read_text().split()[0]) for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9


def voluntary_switches(pid: int) -> int:
    """How often the process's threads went to sleep (each is a wake-up later): the cost of
    reading a few events per wake-up shows here."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def conf(tmp: Path, name: str, ct: str) -> Path:
    path = tmp / f"{name}.conf"
    path.write_text(
        f'[global]\nlogfile="{tmp}/{name}.log"\nloglevel=3\n'
        "stack=ct1:NFCT,ip2str1:IP2STR,print1:PRINTFLOW,emu1:LOGEMU\n"
        f"[ct1]\n{ct}[emu1]\nfile={tmp}/{name}.out\nsync=0\n"
    )
    return path


def start(ns: str, daemon: str, path: Path, log: Path) -> subprocess.Popen:
    """``daemon``: ulogd, pylogd, pylogd:pure or pylogd@TREE (another tree's package, a variant to
    compare): see packet_path.daemon_command."""
    proc = subprocess.Popen(in_ns(ns, 1, *daemon_command(daemon, path)), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while READY["ulogd" if daemon == "ulogd" else "pylogd"] not in (log.read_text() if log.exists() else ""):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{daemon} did not start (see {log})")
        time.sleep(0.1)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def settle(path: Path, quiet: float = 1.0, limit: float = 30.0) -> int:
    """Lines in ``path`` once it has stopped growing for ``quiet`` seconds."""
    deadline, last, since = time.monotonic() + limit, -1, time.monotonic()
    while time.monotonic() < deadline:
        n = count_lines(path)
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
        time.sleep(0.2)
    return last


def send_flows(ns: str, flows: int, rate: float) -> float:
    """Create ``flows`` new UDP flows at ``rate`` (0: full speed) from CPU 0; returns the rate reached."""
    t0 = time.monotonic()
    try:
        cmd = sender(flows, rate, FLOW_PORT, flows=True)
    except RuntimeError:
        cmd = [sys.executable, "-c", SENDER, str(flows), str(rate)]
    sh(*in_ns(ns, 0, *cmd))
    return flows / (time.monotonic() - t0)


def run_once(
    ns: str, tmp: Path, mode: str, rate: float, daemon: str, flows: int, index: int, buffers: str = "large"
) -> Run:
    name = f"{file_label(daemon)}-{mode}-{int(rate)}-{buffers}-{flows}-{index}"
    sh("ip", "netns", "exec", ns, "conntrack", "-F")
    proc = start(ns, daemon, conf(tmp, name, MODES[mode] + buffer_options(buffers, daemon)), tmp / f"{name}.log")
    out = tmp / f"{name}.out"
    try:
        cpu0, sleeps0 = cpu_seconds(proc.pid), voluntary_switches(proc.pid)
        send_rate = send_flows(ns, flows, rate)
        if mode == "event":
            settle(out)
        else:
            time.sleep(1)
        sh("ip", "netns", "exec", ns, "taskset", "-c", "0", "conntrack", "-F")
        settle(out)
        cpu = cpu_seconds(proc.pid) - cpu0
        sleeps = voluntary_switches(proc.pid) - sleeps0
        rss = status_kb(proc.pid, "VmHWM")
    finally:
        stop(proc)
    written = count_lines(out)  # after the stop: ulogd's LOGEMU with sync=0 holds its last lines until exit
    expected = 2 * flows if mode == "event" else flows
    return Run(mode, rate, daemon, expected, written, cpu / (2 * flows) * 1e6, rss, send_rate, buffers, sleeps)


def events_phase(ns: str, tmp: Path, args: argparse.Namespace) -> list[list[Run]]:
    """Per mode, rate and buffer setting, the daemons take turns ``--repeat`` times."""
    groups = []
    for mode in args.modes.split(","):
        for rate in [float(r) for r in args.rates.split(",")]:
            for buffers in args.buffers.split(","):
                runs: dict[str, list[Run]] = {d: [] for d in args.daemons}
                for i in range(args.repeat):
                    for daemon in runs:
                        runs[daemon].append(run_once(ns, tmp, mode, rate, daemon, args.flows, i, buffers))
                for daemon_runs in runs.values():
                    groups.append(daemon_runs)
                    print(summary_line(daemon_runs), flush=True)
    return groups


def sustained_phase(ns: str, tmp: Path, args: argparse.Namespace, labels: dict[str, str]) -> str:
    """The highest rate of new flows each daemon follows for ``--sustained`` seconds in event mode
    without losing a NEW event.  The table is flushed before each probe with no daemon listening,
    and nf_conntrack_max (a host-wide sysctl) is raised for the run if the probes need more room."""
    seconds = args.sustained
    limit_path = Path("/proc/sys/net/netfilter/nf_conntrack_max")
    old_limit = int(limit_path.read_text())
    lines = [
        f"### {time.strftime('%Y-%m-%d')} — {platform.node()}, {os.cpu_count()} cores, kernel {platform.release()}, "
        f"highest rate of new flows followed {seconds:g} s without loss, event mode, NEW events "
        f"(bench/flow_path.py --sustained {seconds:g} --buffers {args.buffers})",
        "",
        "| buffers | daemon | highest flows/s asked without loss | CPU µs/event there | peak RSS MiB there "
        "| first rate that lost (flows/s, loss) |",
        "|---|---|---|---|---|---|",
    ]
    probes = iter(range(10**6))

    def attempt(daemon: str, buffers: str, rate: float) -> Run:
        flows = int(rate * seconds)
        if flows + 1000 > int(limit_path.read_text()):
            limit_path.write_text(str(flows + 1000))
        name = f"sus-{file_label(daemon)}-{buffers}-{next(probes)}"
        sh("ip", "netns", "exec", ns, "conntrack", "-F")
        proc = start(ns, daemon, conf(tmp, name, MODES["event"] + buffer_options(buffers, daemon)), tmp / f"{name}.log")
        out = tmp / f"{name}.out"
        try:
            cpu0 = cpu_seconds(proc.pid)
            send_rate = send_flows(ns, flows, rate)
            settle(out)
            cpu = cpu_seconds(proc.pid) - cpu0
            rss = status_kb(proc.pid, "VmHWM")
        finally:
            stop(proc)
        written = count_lines(out)  # after the stop: ulogd's LOGEMU with sync=0 holds its last lines until exit
        sh("ip", "netns", "exec", ns, "conntrack", "-F")
        r = Run("event", rate, daemon, flows, written, cpu / max(flows, 1) * 1e6, rss, send_rate, buffers)
        print(f"  {daemon} {buffers} {rate:.0f}/s: {written}/{flows} lines, sent at {send_rate:,.0f}/s", flush=True)
        return r

    try:
        for buffers in args.buffers.split(","):
            for daemon, label in labels.items():
                good, bad = sustained_search(
                    functools.partial(attempt, daemon, buffers), start=5_000, lost=lambda r: r.written < r.expected
                )
                held = f"{good.rate:.0f} (sent at {good.send_rate:,.0f})" if good else "none"
                cpu = f"{good.cpu_us:.2f}" if good else ""
                rss = f"{good.rss_kb / 1024:.1f}" if good else ""
                lost = f"{bad.rate:.0f} ({1 - bad.written / bad.expected:.2%})" if bad else "none (sender's limit)"
                lines.append(f"| {buffers} | {label} | {held} | {cpu} | {rss} | {lost} |")
                print(lines[-1], flush=True)
    finally:
        limit_path.write_text(str(old_limit))
    return "\n".join(lines)


def summary(runs: list[Run]) -> tuple[Run, float, int]:
    """(a representative run, median CPU µs/event, the largest loss seen)."""
    cpu = statistics.median(r.cpu_us for r in runs)
    worst = max(r.expected - r.written for r in runs)
    return runs[0], cpu, worst


def median_of(runs: list[Run], measure: Callable[[Run], float]) -> float:
    return statistics.median(measure(r) for r in runs)


def sleeps_per_100(r: Run) -> float:
    return 100 * r.sleeps / r.expected_events


def summary_line(runs: list[Run]) -> str:
    r, cpu, worst = summary(runs)
    rate = "max" if not r.rate else f"{r.rate:.0f}/s"
    return (
        f"{r.mode:5} {rate:>7} {r.buffers:7} {r.daemon:11} lines={min(x.written for x in runs)}/{r.expected} "
        f"worst loss={worst} cpu={cpu:.2f}µs/event (runs: {', '.join(f'{x.cpu_us:.1f}' for x in runs)}) "
        f"per written {median_of(runs, lambda x: x.cpu_written_us):.2f} "
        f"sleeps/100 events {median_of(runs, sleeps_per_100):.1f} "
        f"rss={max(x.rss_kb for x in runs) / 1024:.1f}MiB sent at {statistics.median(x.send_rate for x in runs):,.0f}/s"
    )


def render(groups: list[list[Run]], args: argparse.Namespace, labels: dict[str, str]) -> str:
    """One row per mode, rate, buffers and daemon (``labels``: variant -> its name in the table),
    each pylogd build's CPU ratios against the ulogd of the same case, measured in turn."""
    lines = [
        f"### {time.strftime('%Y-%m-%d')} — {platform.node()}, {os.cpu_count()} cores, kernel {platform.release()}, "
        f"{args.flows} flows per run, median of {args.repeat} runs",
        "",
        "CPU µs per event offered (every event the kernel sent) and per event written (what a line cost: an "
        "event the kernel dropped costs the daemon nothing); sleeps: the daemon's voluntary context switches "
        "per 100 events offered (a wake-up each).",
        "",
        "| mode | buffers | flows/s asked (sent) | daemon | lines expected | worst loss | CPU µs/event offered "
        "| CPU µs/event written | peak RSS MiB | CPU ratio to ulogd offered / written | sleeps per 100 events |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(g[0].mode, g[0].rate, g[0].buffers, g[0].daemon): g for g in groups}
    for g in groups:
        r, cpu, worst = summary(g)
        written_cpu = median_of(g, lambda x: x.cpu_written_us)
        ratio = ""
        u = by.get((r.mode, r.rate, r.buffers, "ulogd"))
        if r.daemon != "ulogd" and u:
            ratio = f"{cpu / summary(u)[1]:.2f} / {written_cpu / median_of(u, lambda x: x.cpu_written_us):.2f}"
        asked = "max" if not r.rate else f"{r.rate:.0f}"
        sent = statistics.median(x.send_rate for x in g)
        lines.append(
            f"| {r.mode} | {r.buffers} | {asked} ({sent:,.0f}) | {labels.get(r.daemon, r.daemon)} | {r.expected} "
            f"| {worst} ({worst / r.expected:.1%}) | {cpu:.2f} | {written_cpu:.2f} "
            f"| {max(x.rss_kb for x in g) / 1024:.1f} | {ratio} | {median_of(g, sleeps_per_100):.1f} |"
        )
    return "\n".join(lines)


#: the memory phase's overruns: short flows that come and go while the daemons are stopped, each a
#: NEW and a DESTROY event, more than the receive buffer holds (the kernel charges ~1 KiB each):
#: with 32 MiB asked (64 MiB granted), and with 106496 asked (the kernel's default 212992)
OVERRUN_LARGE, OVERRUN_SMALL = 50_000, 5000
OVERRUN_SENDER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[1])):
    s.sendto(b"x", ("127.0.250.1", 1024 + i))
"""
MEMORY_RESYNC_AFTER = 2  # netlink_resync_timeout of the memory phase's daemons (seconds)
MEMORY_SETTLE = 10  # seconds after a resync before RSS is read again


def pylogd_counter(log: Path, proc: subprocess.Popen, name: str) -> int:
    """A counter of pylogd's NFCT instance, from the statistics that SIGUSR1 writes to its log."""
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    value = -1
    for line in log.read_text().splitlines():
        if f" {name}=" in line:
            value = int(line.split(f" {name}=")[1].split()[0])
    return value


def memory_phase(ns: str, tmp: Path, live: int, labels: dict[str, str]) -> str:
    """RSS per flow in hash mode, ``live`` UDP flows alive (udp timeout 600 s), for each way a flow
    enters the table, the daemons of ``labels`` (variant -> its name in the table) side by side:

    1. NEW events: started on an empty table (32 MiB buffer), the flows created at 50,000/s;
       then an overrun and its resync on that table;
    2. the start-up dump: started on the live flows (the kernel's default buffer); then an
       overrun and its resync on that table.

    An overrun: the daemons are stopped (SIGSTOP) while short flows come and go (OVERRUN_*), more
    events than their buffer holds; the DESTROY events lost leave some of those flows in the
    tables until the resync ``netlink_resync_timeout`` seconds later purges them.  RSS is read
    once the resync is done (each pylogd's counters; ulogd: when it stops using the CPU) and again
    MEMORY_SETTLE seconds later.  Per flow is (RSS - the RSS of the daemon on the empty table) / live.
    It needs a pylogd build: pylogd's counters tell when the tables are full.
    """
    daemons = list(labels)
    pylogds = [d for d in daemons if d != "ulogd"]
    if not pylogds:
        return "(memory phase left out: it needs a pylogd build, whose counters tell when the tables are full)"
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=600")
    sh("ip", "netns", "exec", ns, "conntrack", "-F")
    common = f"hash_max_entries={live + OVERRUN_LARGE + 10000}\nnetlink_resync_timeout={MEMORY_RESYNC_AFTER}\n"
    rss: dict[str, dict[str, int]] = {d: {} for d in daemons}
    notes = []

    def log_of(d: str, step: str) -> Path:
        return tmp / f"{file_label(d)}-{step}.log"

    def start_all(step: str, ct: str) -> dict[str, subprocess.Popen]:
        return {d: start(ns, d, conf(tmp, f"{file_label(d)}-{step}", ct), log_of(d, step)) for d in daemons}

    def read_rss(procs: dict[str, subprocess.Popen], what: str) -> None:
        for d, p in procs.items():
            rss[d][what] = status_kb(p.pid, "VmRSS")

    def wait_for(procs: dict[str, subprocess.Popen], step: str, what: str, done) -> None:
        deadline = time.monotonic() + 120
        for d in pylogds:
            while not done(procs[d], log_of(d, step)):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{d}: {what} not seen in 120 s (see {log_of(d, step)})")
        time.sleep(1)

    def table_full(proc: subprocess.Popen, log: Path) -> bool:
        # ct.id is 32 bits of a hash: two flows of 100,000 may share one
        return abs(pylogd_counter(log, proc, "hash_entries") - live) <= 10

    def overrun_and_resync(procs: dict[str, subprocess.Popen], step: str, flows: int, what: str) -> None:
        for p in procs.values():
            p.send_signal(signal.SIGSTOP)
        try:
            sh(*in_ns(ns, 0, sys.executable, "-c", OVERRUN_SENDER, str(flows)))
            subprocess.run(["ip", "netns", "exec", ns, "conntrack", "-D", "-d", "127.0.250.1"], capture_output=True)
        finally:
            for p in procs.values():
                p.send_signal(signal.SIGCONT)
        resyncs = lambda p, log: pylogd_counter(log, p, "resyncs") >= 1 and table_full(p, log)  # noqa: E731
        wait_for(procs, step, "a resync", resyncs)
        for p in procs.values():  # ulogd's resync is its own: done when it stops using the CPU
            busy, deadline = cpu_seconds(p.pid), time.monotonic() + 60
            while time.monotonic() < deadline:
                time.sleep(1)
                if (now := cpu_seconds(p.pid)) - busy < 0.01:
                    break
                busy = now
        read_rss(procs, f"{what} resync")
        time.sleep(MEMORY_SETTLE)
        read_rss(procs, f"{what} settled")
        counts = []
        for d in pylogds:
            counters = {n: pylogd_counter(log_of(d, step), procs[d], n) for n in ("enobufs", "purged")}
            counts.append(f"{labels[d]} {counters['enobufs']} overruns, {counters['purged']} purged")
        notes.append(f"{what}: {flows} short flows, {', '.join(counts)}")

    # 1. NEW events, then an overrun
    procs = start_all("m1", common + "netlink_socket_buffer_size=33554432\n")
    try:
        time.sleep(1)
        read_rss(procs, "empty")
        sh(*in_ns(ns, 0, sys.executable, "-c", SENDER, str(live), "50000"))
        wait_for(procs, "m1", "the table full", table_full)
        read_rss(procs, "events")
        table = int(sh("ip", "netns", "exec", ns, "conntrack", "-C").stdout.strip())
        overrun_and_resync(procs, "m1", OVERRUN_LARGE, "events")
    finally:
        for p in procs.values():
            stop(p)

    # 2. the start-up dump, then an overrun
    procs = start_all("m2", common + "netlink_socket_buffer_size=106496\n")
    try:
        wait_for(procs, "m2", "the table full", table_full)
        read_rss(procs, "dump")
        overrun_and_resync(procs, "m2", OVERRUN_SMALL, "dump")
    finally:
        for p in procs.values():
            stop(p)

    def per_flow(d: str, when: str) -> str:
        return f"{(rss[d][when] - rss[d]['empty']) * 1024 / live:.0f}"

    out = [
        f"Hash mode, {table} live flows in the kernel table; B/flow = (RSS - RSS on the empty table) / {live}; "
        f"resyncs {MEMORY_RESYNC_AFTER} s after an overrun ({'; '.join(notes)}).",
        "",
        "| daemon | RSS empty table MiB | events B/flow | events, after a resync | 10 s later (RSS MiB) "
        "| start-up dump B/flow | dump, after a resync | 10 s later (RSS MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in daemons:
        out.append(
            f"| {labels[d]} | {rss[d]['empty'] / 1024:.1f} | {per_flow(d, 'events')} | {per_flow(d, 'events resync')} "
            f"| {per_flow(d, 'events settled')} ({rss[d]['events settled'] / 1024:.1f}) | {per_flow(d, 'dump')} "
            f"| {per_flow(d, 'dump resync')} | {per_flow(d, 'dump settled')} ({rss[d]['dump settled'] / 1024:.1f}) |"
        )
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flows", type=int, default=20_000)
    p.add_argument("--rates", default="5000,10000,0", help="flows per second, comma separated (0: as fast as possible)")
    p.add_argument("--modes", default="event,hash")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--live", type=int, default=100_000, help="live flows for the memory phase (0: skip)")
    add_build_options(p)
    p.add_argument("--buffers", default="default", help=f"comma separated, of: {', '.join(BUFFERS)}")
    p.add_argument(
        "--also", action="append", default=[], metavar="DIR", help="also run another tree's pylogd (pylogd@DIR)"
    )
    p.add_argument(
        "--sustained", type=float, metavar="SECONDS", help="find the highest rate of flows each daemon follows"
    )
    p.add_argument("--results", help="append the Markdown tables to this file (e.g. bench/RESULTS.md)")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespace)", file=sys.stderr)
        return 2
    args.daemons = daemons_of_args(args)
    labels = daemon_labels(args.daemons)
    ns = f"plbenchflow{os.getpid()}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "nft", "-f", "-", input=RULES)
        with tempfile.TemporaryDirectory(prefix="pylogd-flowbench-") as d:
            if args.sustained:
                text = sustained_phase(ns, Path(d), args, labels)
            else:
                text = render(events_phase(ns, Path(d), args), args, labels)
            if args.live and not args.sustained:  # the builds, not --also's trees
                builds = {k: v for k, v in labels.items() if "@" not in k}
                text += "\n\n" + memory_phase(ns, Path(d), args.live, builds)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    print()
    print(text)
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
