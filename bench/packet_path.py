"""ulogd 2.0.8 and both builds of pylogd on the same packets, in turn, in a throwaway network namespace.

    sudo .venv/bin/python bench/packet_path.py [--packets N] [--rate PPS] [--repeat N]
        [--builds ulogd,compiled,pure | --only pylogd|ulogd|pure] [--cases 100000@0,200000@400000]
        [--config NAME ...] [--also TREE] [--rr] [--sustained SECONDS] [--results bench/RESULTS.md]

Rerun the table of bench/RESULTS.md: ``sudo .venv/bin/python bench/packet_path.py --packets 100000
--repeat 3 --results bench/RESULTS.md`` (after ``make compiled``); a quick look: ``--packets 2000
--config "no buffer options"``.

The daemons, by default in turn per configuration and repeat: ulogd, pylogd's compiled build (the
Cython modules ``make compiled`` builds in place; refused if ``pylogd -V`` does not say all the hot
modules are compiled) and its pure-Python build (the same program with ``PYLOGD_PURE_PYTHON=1``),
each row labelled with its build; ``--builds`` (or ``--only``) runs fewer.  For each daemon and
configuration it prints: packets sent, records written, loss, CPU µs per record (the daemon's time
on a CPU, user and system, all threads, while the packets flowed: schedstat), peak RSS (VmHWM),
each pylogd build's CPU ratio against ulogd in the same run, and how long the daemon waited for its
CPU (other work there).  With ``--repeat N`` the daemons take turns N times per configuration; the
table shows the median CPU per record, the largest loss and the largest peak RSS.  All daemons read
the same unmodified ulogd.conf (but for "kernel default buffer", where pylogd is told the kernel's
default that ulogd gets by naming none); the daemon is pinned to CPU 1 and the sender to CPU 0.
Packets are UDP datagrams to 127.0.0.1 inside the namespace, logged by an nft rule.

Issue 11's cases: ``--cases 100000@0,200000@400000,200000@200000 --config "no buffer options"
--config "example buffers (217088)" --config "kernel default buffer" --config "LOGEMU sync=1"``;
the highest rate held 10 s without loss (and CPU and peak RSS there): ``--sustained 10``.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GROUP = 7
PORT = 9999
PROBE_PORT = 9998

SENDER = r"""
import socket, sys, time
n, rate = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = b"x" * 32
addr = ("127.0.0.1", int(sys.argv[3]))
if rate <= 0:
    for _ in range(n):
        s.sendto(payload, addr)
else:
    start = time.perf_counter()
    chunk = max(1, int(rate / 1000))
    sent = 0
    while sent < n:
        for _ in range(min(chunk, n - sent)):
            s.sendto(payload, addr)
        sent += chunk
        delay = start + sent / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
"""

_BLAST: list[str] = []  # the compiled C sender, once per run


def sender(packets: int, rate: float, port: int, flows: bool = False) -> list[str]:
    """The command that sends the burst: bench/blast.c (sendmmsg batches, ~5x the Python loop) when a
    C compiler is there, else the Python loop.  With ``flows`` each datagram opens a new conntrack
    entry (blast.c only)."""
    if not _BLAST and shutil.which("gcc"):
        binary = Path(tempfile.mkdtemp(prefix="pylogd-blast-")) / "blast"
        done = subprocess.run(["gcc", "-O2", "-o", str(binary), str(ROOT / "bench/blast.c")], capture_output=True)
        _BLAST.append(str(binary) if done.returncode == 0 else "")
    if _BLAST and _BLAST[0]:
        return [_BLAST[0], str(packets), str(rate), str(port), *(["flows"] if flows else [])]
    if flows:
        raise RuntimeError("the flow sender needs gcc (bench/blast.c)")
    return [sys.executable, "-c", SENDER, str(packets), str(rate), str(port)]


#: what the kernel gives a socket whose owner sets no size (net.core.rmem_default on Debian): ulogd's
#: receive buffer under a config without buffer options
KERNEL_DEFAULT_RCVBUF = 212992

CONFIGS = {
    # what most ulogd.conf files have: no netlink buffer options (ulogd: the kernel's ~208 KiB; pylogd: 16 MiB)
    "no buffer options": {"sync": 1, "qthreshold": 0, "buffers": None},
    # the sizes of ulogd's example ulogd.conf (the kernel doubles the size asked: 434176 bytes)
    "example buffers (217088)": {"sync": 1, "qthreshold": 0, "buffers": (217088, 1085440)},
    # both daemons at the kernel's default: ulogd without options, pylogd told half of it (the kernel
    # doubles what is asked), so neither side has more room than the other
    "kernel default buffer": {"sync": 1, "qthreshold": 0, "buffers": "kernel"},
    "LOGEMU sync=1": {"sync": 1, "qthreshold": 0},
    "LOGEMU sync=0": {"sync": 0, "qthreshold": 0},
    "LOGEMU sync=1 qthreshold=32": {"sync": 1, "qthreshold": 32},
}

#: the buffers of the configs that name none: 8 MiB growing to 16 MiB
LARGE_BUFFERS = (8388608, 16777216)


def config_text(
    tmp: Path,
    name: str,
    sync: int,
    qthreshold: int,
    buffers: tuple[int, int] | str | None = LARGE_BUFFERS,
    daemon: str = "pylogd",
) -> str:
    q = f"netlink_qthreshold={qthreshold}\nnetlink_qtimeout=10\n" if qthreshold else ""
    if buffers == "kernel":
        buffers = None if daemon == "ulogd" else (KERNEL_DEFAULT_RCVBUF // 2, 0)
    b = ""
    if buffers:
        b = f"netlink_socket_buffer_size={buffers[0]}\n"
        if buffers[1]:
            b += f"netlink_socket_buffer_maxsize={buffers[1]}\n"
    return (
        f'[global]\nlogfile="{tmp}/{name}.log"\nloglevel=5\n'
        "stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU\n"
        f"[log1]\ngroup={GROUP}\n{b}{q}"
        f'[emu1]\nfile="{tmp}/{name}.out"\nsync={sync}\n'
    )


@dataclass
class Result:
    daemon: str
    config: str
    sent: int
    written: int
    cpu_s: float
    peak_rss_kb: int
    send_rate: float = 0.0
    worst_written: int | None = None  # of several runs: the one that lost the most
    rate: float = 0.0  # packets per second asked of the sender (0: full speed)
    waited_s: float = 0.0  # runnable but waiting for the CPU (other work on it) while the packets flowed

    @property
    def loss(self) -> float:
        return 1 - self.written / self.sent if self.sent else 0.0

    @property
    def worst_loss(self) -> float:
        written = self.written if self.worst_written is None else self.worst_written
        return 1 - written / self.sent if self.sent else 0.0

    @property
    def us_per_record(self) -> float:
        return self.cpu_s / self.written * 1e6 if self.written else float("nan")


def queue_wait_seconds(pid: int) -> float:
    """Time the process's threads were runnable but waited for a CPU (schedstat's second field):
    what other work on the daemon's CPU took from it.  A daemon preempted for longer than its
    receive buffer lasts loses packets whatever it does."""
    return sum(int((task / "schedstat").read_text().split()[1]) for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9


def cpu_seconds(pid: int) -> float:
    """Time on a CPU, user and system, of all the process's threads: schedstat counts it in
    nanoseconds, where /proc/PID/stat's utime and stime move in 10 ms ticks."""
    return sum(int((task / "schedstat").read_text().split()[0]) for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def count_lines(path: Path, needle: bytes = b"\n") -> int:
    """Occurrences of ``needle`` in the file, read in chunks (a needle may straddle two chunks)."""
    count, tail, keep = 0, b"", len(needle) - 1  # the tail kept is too short to hold a whole needle
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                data = tail + chunk
                count += data.count(needle)
                tail = data[len(data) - keep :] if keep else b""
    except FileNotFoundError:
        return 0
    return count


BURST_MARK = f"DPT={PORT} ".encode()  # probes go to another port, so only burst lines are counted


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def make_namespace(ns: str, ports: tuple[int, ...]) -> None:
    """A network namespace whose input hook logs UDP datagrams to ``ports`` to NFLOG group GROUP."""
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    rules = (
        "table inet bench {\n chain input {\n  type filter hook input priority 0;\n"
        f"  udp dport {{ {', '.join(map(str, ports))} }} log group {GROUP}\n }}\n}}\n"
    )
    sh("ip", "netns", "exec", ns, "nft", "-f", "-", input=rules)


def publish(title: str, columns: list[str], rows: list[str], results: str | None) -> None:
    """Print a Markdown table of ``rows`` (already ``| a | b |`` lines) under ``title``, and append it
    to the file ``results`` when one is named."""
    table = "\n".join([f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), *rows, ""])
    print(table)
    if results:
        with open(results, "a") as f:
            f.write("\n" + table)


#: the builds a run compares by default, each a daemon variant of :func:`daemon_command`, in this order
BUILDS = {"ulogd": "ulogd", "compiled": "pylogd", "pure": "pylogd:pure"}
PURE_ENV = "PYLOGD_PURE_PYTHON"  # pylogd/compiled.py: set, pylogd imports its .py files only


def split_variant(daemon: str) -> tuple[str, set[str]]:
    """``pylogd@DIR:pure:rr`` -> (``pylogd@DIR``, {"pure", "rr"})."""
    name, *mods = daemon.split(":")
    unknown = set(mods) - {"pure", "rr"}
    if unknown:
        raise SystemExit(f"{daemon}: unknown variant {', '.join(sorted(unknown))} (known: pure, rr)")
    return name, set(mods)


def daemon_command(daemon: str, conf: Path) -> list[str]:
    """ulogd, pylogd of this tree, or ``pylogd@DIR``: the pylogd of another tree (a variant being
    compared), installed in that tree's own ``.venv`` (``make run`` or ``make compiled`` there).
    Suffixes, in any combination: ``:pure`` runs the pure-Python build (``PYLOGD_PURE_PYTHON=1`` in
    its environment; without it the variable is removed, so the compiled modules load where they are
    built); ``:rr`` runs it under SCHED_RR priority 99, the scheduling ulogd 2.0.8 gives itself at
    start.  Each wrapper (chrt, env) exec()s in place: the process started is the daemon's own pid.

    Why a venv per tree: this tree's interpreter with PYTHONPATH=DIR ran this tree's code all the
    same (``-m`` puts the working directory, this tree, first on sys.path, and this venv's editable
    install maps ``pylogd.plugins`` to this tree's plugins/ whatever the path says)."""
    name, mods = split_variant(daemon)
    if name == "ulogd":
        if mods:
            raise SystemExit(f"{daemon}: the variants are pylogd's")
        return ["/usr/sbin/ulogd", "-c", str(conf)]
    prefix = ["chrt", "--rr", "99"] if "rr" in mods else []
    prefix += ["env", f"{PURE_ENV}=1"] if "pure" in mods else ["env", "-u", PURE_ENV]
    return [*prefix, pylogd_program(name), "-c", str(conf)]


def pylogd_program(name: str) -> str:
    if name.startswith("pylogd@"):
        program = Path(name.split("@", 1)[1]).resolve() / ".venv/bin/pylogd"
        if not program.exists():
            raise SystemExit(f"{program} is missing: run `make compiled` in that tree first")
        return str(program)
    if name != "pylogd":
        raise SystemExit(f"{name}: not a daemon (ulogd, pylogd, pylogd@DIR)")
    return str(ROOT / ".venv/bin/pylogd")


def build_of(daemon: str) -> str:
    """What the build of ``daemon`` says of itself: ``pylogd -V`` run as the daemon will run
    (program and environment), the text in its parentheses, e.g. "compiled: all 20 hot modules",
    the line pylogd also logs at start."""
    name, mods = split_variant(daemon)
    env = {k: v for k, v in os.environ.items() if k != PURE_ENV} | ({PURE_ENV: "1"} if "pure" in mods else {})
    done = subprocess.run([pylogd_program(name), "-V"], capture_output=True, text=True, env=env)
    text = (done.stdout or done.stderr).strip()
    return text[text.find("(") + 1 : text.rfind(")")] if "(" in text else text or "build unknown"


def daemon_labels(daemons: list[str]) -> dict[str, str]:
    """The table's name of each daemon variant, saying which build it is: "pylogd (compiled)" only
    when ``pylogd -V`` says all the hot modules are compiled, "pylogd (pure Python)"; another
    build's own words otherwise.  This tree's compiled build not in place is refused: its row would
    measure the Python source under the compiled build's name."""
    labels = {}
    for daemon in daemons:
        name, mods = split_variant(daemon)
        if name == "ulogd":
            labels[daemon] = "ulogd"
            continue
        build = build_of(daemon)
        kind = build
        if build.startswith("compiled: all "):
            kind = "compiled"
        elif build.startswith("pure Python"):
            kind = "pure Python"
        if name == "pylogd" and "pure" not in mods and kind != "compiled":
            raise SystemExit(
                f"{daemon}: the compiled build is not in place (`pylogd -V`: {build}): run `make compiled`, "
                "or leave it out (--builds ulogd,pure)"
            )
        extra = ", SCHED_RR" if "rr" in mods else ""
        labels[daemon] = f"{name} ({kind}{extra})"
        print(f"{daemon}: {labels[daemon]} (pylogd -V: {build})", flush=True)
    return labels


def add_build_options(p: argparse.ArgumentParser) -> None:
    """--builds and --only, shared by the three scripts."""
    p.add_argument(
        "--builds",
        default=",".join(BUILDS),
        help=f"comma separated, of {', '.join(BUILDS)} (pylogd with PYLOGD_PURE_PYTHON=1): the daemons run in "
        "turn per case and repeat, in this order (default: all three)",
    )
    p.add_argument(
        "--only",
        choices=("pylogd", "ulogd", "pure"),
        help="one build alone: pylogd is the compiled one (short for --builds compiled)",
    )


def daemons_of_args(args: argparse.Namespace) -> list[str]:
    """The daemon variants of --builds (or --only), then --also's trees and --rr when the script has them."""
    builds = ["compiled" if args.only == "pylogd" else args.only] if args.only else args.builds.split(",")
    unknown = [b for b in builds if b not in BUILDS]
    if unknown or not builds:
        raise SystemExit(f"--builds: {', '.join(unknown) or 'none'}: choose among {', '.join(BUILDS)}")
    daemons = [BUILDS[b] for b in builds]
    daemons += [f"pylogd@{tree}" for tree in getattr(args, "also", [])]
    daemons += ["pylogd:rr"] if getattr(args, "rr", False) else []
    return daemons


def file_label(daemon: str) -> str:
    """``daemon`` as a part of file and database names."""
    return daemon.replace("/", "_").replace("@", "-").replace(":", "-")


def run_one(ns: str, daemon: str, config: str, opts: dict, packets: int, rate: float, tmp: Path, run: int) -> Result:
    label = file_label(daemon)
    setting = config.replace(" ", "_").replace("=", "").replace("(", "").replace(")", "")
    name = f"{label}-{setting}-{packets}-{rate:.0f}-{run}"  # each run its own files
    conf = tmp / f"{name}.conf"
    conf.write_text(config_text(tmp, name, **opts, daemon="ulogd" if daemon == "ulogd" else "pylogd"))
    out = tmp / f"{name}.out"
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, "taskset", "-c", "1", *daemon_command(daemon, conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # ready when a probe packet comes out the other end
        deadline = time.monotonic() + 20
        while count_lines(out) == 0:
            if proc.poll() is not None:
                raise RuntimeError(f"{daemon} exited: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{daemon} never logged the probe packet")
            sh("ip", "netns", "exec", ns, sys.executable, "-c", SENDER, "1", "0", str(PROBE_PORT))
            time.sleep(0.2)
        pid = daemon_pid(proc.pid)
        cpu0, wait0 = cpu_seconds(pid), queue_wait_seconds(pid)
        t0 = time.monotonic()
        sh("ip", "netns", "exec", ns, "taskset", "-c", "0", *sender(packets, rate, PORT))
        send_rate = packets / (time.monotonic() - t0)
        last, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < 2.5:  # past the kernel's 1 s batch timer
            n = count_lines(out)
            if n != last:
                last, stable_since = n, time.monotonic()
            time.sleep(0.1)
        cpu, waited = cpu_seconds(pid) - cpu0, queue_wait_seconds(pid) - wait0
        rss = peak_rss_kb(pid)
        stop(proc)  # ulogd with sync=0 writes its last buffered lines at exit
        written = count_lines(out, BURST_MARK)
        return Result(daemon, config, packets, written, cpu, rss, send_rate, rate=rate, waited_s=waited)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def daemon_pid(wrapper_pid: int) -> int:
    """ip netns exec and taskset exec() in place, so the pid is the daemon's own."""
    return wrapper_pid


def soak(ns: str, seconds: int, rate: float, tmp: Path) -> str:
    """pylogd alone at a steady rate; RSS sampled every 10 s. Memory must stay flat."""
    conf = tmp / "soak.conf"
    text = config_text(tmp, "soak", sync=1, qthreshold=0).replace("loglevel=5", "loglevel=3")
    conf.write_text(text.replace("[log1]\n", "[log1]\nseq_local=1\n"))  # sequence numbers make every loss visible
    log = tmp / "soak.log"
    proc = subprocess.Popen(["ip", "netns", "exec", ns, str(ROOT / ".venv/bin/pylogd"), "-c", str(conf)])
    try:
        wait_until = time.monotonic() + 20
        while not (log.exists() and "entering main loop" in log.read_text()):
            if time.monotonic() > wait_until or proc.poll() is not None:
                raise RuntimeError(f"pylogd did not start: {log.read_text() if log.exists() else ''}")
            time.sleep(0.1)
        packets = int(seconds * rate)
        sender = subprocess.Popen(
            ["ip", "netns", "exec", ns, "taskset", "-c", "0", sys.executable, "-c", SENDER, str(packets), str(rate),
             str(PORT)]
        )  # fmt: skip
        samples = []
        start = time.monotonic()
        while sender.poll() is None:
            samples.append((time.monotonic() - start, rss_kb(proc.pid)))
            time.sleep(10)
        time.sleep(3)
        samples.append((time.monotonic() - start, rss_kb(proc.pid)))
        written = count_lines(tmp / "soak.out", BURST_MARK)
    finally:
        stop(proc)
    counters = [
        line.split(": ", 1)[1] for line in log.read_text().splitlines() if "stack 1" in line or "input log1" in line
    ]
    first = samples[1][1] if len(samples) > 1 else samples[0][1]  # after the first 10 s of warm-up
    growth = max(r for _, r in samples[1:]) - first if len(samples) > 1 else 0
    rows = ", ".join(f"{t:.0f}s:{r / 1024:.1f}" for t, r in samples)
    return (
        f"soak: {seconds}s at {rate:.0f} pps, {packets} sent, {written} written; RSS MiB {rows}; "
        f"growth after warm-up {growth / 1024:.2f} MiB; pylogd's counters at exit: {' | '.join(counters[-2:])}"
    )


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def parse_cases(text: str) -> list[tuple[int, float]]:
    """``100000@0,200000@400000``: (packets, rate) pairs, rate 0 for full speed."""
    cases = []
    for item in text.split(","):
        packets, _, rate = item.partition("@")
        cases.append((int(packets), float(rate or 0)))
    return cases


#: the cases of issue 11's table: a full-speed burst, then fixed rates below and above what ulogd holds
ISSUE_CASES = "100000@0,200000@400000,200000@200000"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--packets", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=0, help="packets per second; 0 = as fast as the sender can")
    p.add_argument(
        "--cases",
        help=f"several bursts, PACKETS@RATE comma separated, instead of --packets/--rate (issue 11: {ISSUE_CASES})",
    )
    add_build_options(p)
    p.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="DIR",
        help="also run the pylogd package of another tree (a variant to compare), shown as pylogd@DIR",
    )
    p.add_argument(
        "--rr",
        action="store_true",
        help="also run pylogd under SCHED_RR 99 (ulogd sets that for itself: it then never waits for its CPU)",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per daemon and configuration, taking turns")
    p.add_argument("--config", choices=list(CONFIGS), action="append")
    p.add_argument("--results", help="append a Markdown table to this file (e.g. bench/RESULTS.md)")
    p.add_argument(
        "--soak", type=int, metavar="SECONDS", help="run pylogd alone at --rate (default 2000) and watch RSS"
    )
    p.add_argument(
        "--sustained",
        type=float,
        metavar="SECONDS",
        help="find the highest rate each daemon holds for SECONDS without loss (with --config)",
    )
    args = p.parse_args()
    if os.geteuid() != 0 or not shutil.which("nft"):
        print("needs root, nft and ip (apt-get install nftables iproute2)", file=sys.stderr)
        return 1
    cases = parse_cases(args.cases) if args.cases else [(args.packets, args.rate)]
    daemons = daemons_of_args(args)
    labels = {} if args.soak else daemon_labels(daemons)
    ns = f"pylogd-bench-{os.getpid()}"
    results: list[Result] = []
    try:
        make_namespace(ns, (PROBE_PORT, PORT))
        with tempfile.TemporaryDirectory(prefix="pylogd-bench-") as tmpdir:
            tmp = Path(tmpdir)
            if args.soak:
                line = soak(ns, args.soak, args.rate or 2000, tmp)
                print(line)
                if args.results:
                    with open(args.results, "a") as f:
                        f.write(f"\n{time.strftime('%Y-%m-%d')} {platform.node()}: {line}\n")
                return 0
            if args.sustained:
                table = sustained(ns, tmp, labels, args.config or ["no buffer options"], args.sustained)
            else:
                for packets, rate in cases:
                    for config in args.config or list(CONFIGS):
                        for run in range(args.repeat):
                            for daemon in daemons:
                                opts = CONFIGS[config]
                                results.append(run_one(ns, daemon, config, opts, packets, rate, tmp, run))
                                print_result(results[-1])
                table = render(results, args, labels)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    print()
    print(table)
    if args.results:
        with open(args.results, "a") as f:
            f.write(table + "\n")
    return 0


def sustained(ns: str, tmp: Path, labels: dict[str, str], configs: list[str], seconds: float) -> str:
    """The highest rate each daemon (``labels``: variant -> its name in the table) holds for
    ``seconds`` with no packet lost: the rate doubles from 25,000/s until a run loses, then a
    bisection to within 5 %; every probe is a fresh daemon."""
    lines = [
        f"### {time.strftime('%Y-%m-%d')} — {platform.node()}, {os.cpu_count()} cores, kernel {platform.release()}, "
        f"highest rate held {seconds:g} s without loss (bench/packet_path.py --sustained {seconds:g})",
        "",
        "| config | daemon | highest rate asked without loss (pps) | CPU µs/record there | peak RSS MiB there "
        "| first rate that lost (pps, loss) |",
        "|---|---|---|---|---|---|",
    ]
    probes = iter(range(1000, 10**6))  # each probe its own files

    def attempt(daemon: str, config: str, rate: float) -> Result:
        r = run_one(ns, daemon, config, CONFIGS[config], int(rate * seconds), rate, tmp, next(probes))
        print_result(r)
        return r

    for config in configs:
        for daemon, label in labels.items():
            good, bad = sustained_search(functools.partial(attempt, daemon, config))
            held = f"{good.rate:.0f} (sent at {good.send_rate:,.0f})" if good else "none"
            cpu = f"{good.us_per_record:.2f}" if good else ""
            rss = f"{good.peak_rss_kb / 1024:.1f}" if good else ""
            lost = f"{bad.rate:.0f} ({bad.loss:.2%})" if bad else "none (sender's limit)"
            lines.append(f"| {config} | {label} | {held} | {cpu} | {rss} | {lost} |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


def sustained_search(
    attempt: Callable[[float], Any],
    start: float = 25_000,
    top: float = 2_000_000,
    lost: Callable[[Any], bool] = lambda r: r.written < r.sent,
) -> tuple:
    """(the fastest lossless result, the slowest lossy one) by doubling then bisecting the rate to
    within 5 %; a run that could not send at the rate asked (the sender's own limit) ends the climb.
    Shared by bench/flow_path.py, whose runs say what they lost in their own terms (``lost``)."""
    good = bad = None
    rate = start
    while rate <= top:
        r = attempt(rate)
        if lost(r):
            bad = r
            break
        good = r
        if r.send_rate < 0.9 * rate:
            return good, None
        rate *= 2
    low = good.rate if good else start / 16  # losing even at the start: look no lower than this
    while bad is not None and bad.rate - low > 0.05 * bad.rate:
        rate = (low + bad.rate) / 2
        r = attempt(rate)
        if lost(r):
            bad = r
        else:
            good, low = r, rate
    return good, bad


def print_result(r: Result) -> None:
    print(
        f"{r.daemon:11} {r.config:30} sent={r.sent} written={r.written} loss={r.loss:.1%} "
        f"cpu={r.us_per_record:.2f}µs/record rss={r.peak_rss_kb / 1024:.1f}MiB sent at {r.send_rate:.0f} pps "
        f"waited for the CPU {r.waited_s * 1000:.0f} ms",
        flush=True,
    )


def summary(runs: list) -> Any:
    """The median run by CPU per record, with the largest loss and peak RSS of all the runs (any result
    with us_per_record, loss, written, peak_rss_kb and worst_written: output_path.py's too)."""
    ranked = sorted(runs, key=lambda r: r.us_per_record)
    worst = max(runs, key=lambda r: r.loss)
    return replace(ranked[len(ranked) // 2], peak_rss_kb=max(r.peak_rss_kb for r in runs), worst_written=worst.written)


def render(results: list[Result], args: argparse.Namespace, labels: dict[str, str]) -> str:
    """One row per burst, config and daemon (``labels``: variant -> its name in the table), each
    pylogd build's CPU ratio against the ulogd of the same burst and config, measured in turn."""
    runs = f", median of {args.repeat} runs (loss: the largest)" if args.repeat > 1 else ""
    lines = [
        f"### {time.strftime('%Y-%m-%d')} — {platform.node()}, {os.cpu_count()} cores, kernel {platform.release()}, "
        f"NFLOG→BASE→IFINDEX→IP2STR→PRINTPKT→LOGEMU{runs}",
        "",
        "| burst | config | daemon | sent | sent at pps | written | loss | CPU µs/record | peak RSS MiB "
        "| CPU ratio to ulogd | most ms waiting for the CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[int, float, str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.sent, r.rate, r.config, r.daemon), []).append(r)
    by = {k: summary(v) for k, v in groups.items()}
    for (sent, rate, config, daemon), r in by.items():
        ratio = ""
        u = by.get((sent, rate, config, "ulogd"))
        if daemon != "ulogd" and u and u.written and r.written:
            ratio = f"{r.us_per_record / u.us_per_record:.2f}"
        burst = f"{sent} at {'full speed' if not rate else f'{rate:.0f}/s'}"
        lines.append(
            f"| {burst} | {config} | {labels.get(daemon, daemon)} | {r.sent} | {r.send_rate:.0f} | {r.written} "
            f"| {r.worst_loss:.1%} "
            f"| {r.us_per_record:.2f} | {r.peak_rss_kb / 1024:.1f} | {ratio} "
            f"| {max(x.waited_s for x in groups[sent, rate, config, daemon]) * 1000:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
