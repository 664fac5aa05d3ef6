"""ulogd 2.0.8 and pylogd on the same conntrack traffic, in turn, in a throwaway namespace.

    sudo .venv/bin/python bench/flow_path.py [--flows N] [--rates 5000,10000,0] [--repeat 3]
                                             [--live 100000] [--results bench/RESULTS.md]

Events: per mode (event: ``hash_enable=0``; hash: the default) and per rate, each daemon runs
``ct1:NFCT,ip2str1:IP2STR,print1:PRINTFLOW,emu1:LOGEMU`` (sync=0, 8 MiB socket buffer growing to
32 MiB, the same unmodified config for both) pinned to CPU 1, while a sender on CPU 0 creates N
one-datagram UDP flows at the rate (0: as fast as it can), each a NEW event.  Then
``conntrack -F`` ends them all at once: N DESTROY events in one burst, the worst case a firewall
meets (a flush, or the garbage collector reaping a wave of expired flows).  Lines expected: 2N in
event mode, N in hash mode.  CPU is the daemon's time on a CPU (schedstat) over the whole run,
divided by the 2N events the kernel offered; the median of ``--repeat`` runs is reported with
the largest loss seen.

Memory: pylogd and ulogd in hash mode while ``--live`` UDP flows stay alive (udp timeout 600 s):
RSS before and after the flows entered the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAEMONS = {"ulogd": ["/usr/sbin/ulogd"], "pylogd": [str(ROOT / ".venv/bin/pylogd")]}
READY = {"ulogd": "working in event mode", "pylogd": "entering main loop"}
MODES = {"event": "hash_enable=0\n", "hash": ""}

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


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def in_ns(ns: str, cpu: int, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, "taskset", "-c", str(cpu), *cmd]


def cpu_seconds(pid: int) -> float:
    """Time on a CPU, user and system, of all the process's threads: schedstat counts it in
    nanoseconds, where /proc/PID/stat's utime and stime move in 10 ms ticks."""
    return sum(int((task / "schedstat").read_text().split()[0]) for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9


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
    proc = subprocess.Popen(in_ns(ns, 1, *DAEMONS[daemon], "-c", str(path)), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while READY[daemon] not in (log.read_text() if log.exists() else ""):
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


def run_once(ns: str, tmp: Path, mode: str, rate: float, daemon: str, flows: int, index: int) -> Run:
    buf = "netlink_socket_buffer_size=8388608\nnetlink_socket_buffer_maxsize=33554432\n"
    name = f"{daemon}-{mode}-{int(rate)}-{index}"
    sh("ip", "netns", "exec", ns, "conntrack", "-F")
    proc = start(ns, daemon, conf(tmp, name, MODES[mode] + buf), tmp / f"{name}.log")
    out = tmp / f"{name}.out"
    try:
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.monotonic()
        sh(*in_ns(ns, 0, sys.executable, "-c", SENDER, str(flows), str(rate)))
        send_rate = flows / (time.monotonic() - t0)
        if mode == "event":
            settle(out)
        else:
            time.sleep(1)
        sh("ip", "netns", "exec", ns, "taskset", "-c", "0", "conntrack", "-F")
        written = settle(out)
        cpu = cpu_seconds(proc.pid) - cpu0
        rss = status_kb(proc.pid, "VmHWM")
    finally:
        stop(proc)
    expected = 2 * flows if mode == "event" else flows
    return Run(mode, rate, daemon, expected, written, cpu / (2 * flows) * 1e6, rss, send_rate)


def events_phase(ns: str, tmp: Path, args: argparse.Namespace) -> list[list[Run]]:
    groups = []
    for mode in args.modes.split(","):
        for rate in [float(r) for r in args.rates.split(",")]:
            for daemon in DAEMONS:
                if args.only and daemon != args.only:
                    continue
                runs = [run_once(ns, tmp, mode, rate, daemon, args.flows, i) for i in range(args.repeat)]
                groups.append(runs)
                print(summary_line(runs), flush=True)
    return groups


def summary(runs: list[Run]) -> tuple[Run, float, int]:
    """(a representative run, median CPU µs/event, the largest loss seen)."""
    cpu = statistics.median(r.cpu_us for r in runs)
    worst = max(r.expected - r.written for r in runs)
    return runs[0], cpu, worst


def summary_line(runs: list[Run]) -> str:
    r, cpu, worst = summary(runs)
    rate = "max" if not r.rate else f"{r.rate:.0f}/s"
    return (
        f"{r.mode:5} {rate:>7} {r.daemon:6} lines={min(x.written for x in runs)}/{r.expected} "
        f"worst loss={worst} cpu={cpu:.2f}µs/event (runs: {', '.join(f'{x.cpu_us:.1f}' for x in runs)}) "
        f"rss={max(x.rss_kb for x in runs) / 1024:.1f}MiB sent at {statistics.median(x.send_rate for x in runs):,.0f}/s"
    )


def render(groups: list[list[Run]], args: argparse.Namespace) -> str:
    lines = [
        f"### {time.strftime('%Y-%m-%d')} — {platform.node()}, {os.cpu_count()} cores, kernel {platform.release()}, "
        f"{args.flows} flows per run, median of {args.repeat} runs",
        "",
        "| mode | flows/s asked (sent) | daemon | lines expected | worst loss | CPU µs/event | peak RSS MiB "
        "| CPU ratio pylogd/ulogd |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by = {(g[0].mode, g[0].rate, g[0].daemon): summary(g) for g in groups}
    for g in groups:
        r, cpu, worst = summary(g)
        ratio = ""
        u = by.get((r.mode, r.rate, "ulogd"))
        if r.daemon == "pylogd" and u:
            ratio = f"{cpu / u[1]:.2f}"
        asked = "max" if not r.rate else f"{r.rate:.0f}"
        sent = statistics.median(x.send_rate for x in g)
        lines.append(
            f"| {r.mode} | {asked} ({sent:,.0f}) | {r.daemon} | {r.expected} | {worst} ({worst / r.expected:.1%}) "
            f"| {cpu:.2f} | {max(x.rss_kb for x in g) / 1024:.1f} | {ratio} |"
        )
    return "\n".join(lines)


def memory_phase(ns: str, tmp: Path, live: int) -> str:
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=600")
    sh("ip", "netns", "exec", ns, "conntrack", "-F")
    ct = f"hash_max_entries={live + 10000}\nnetlink_socket_buffer_size=33554432\n"
    procs = {d: start(ns, d, conf(tmp, f"{d}-m", ct), tmp / f"{d}-m.log") for d in DAEMONS}
    try:
        before = {n: status_kb(p.pid, "VmRSS") for n, p in procs.items()}
        sh(*in_ns(ns, 0, sys.executable, "-c", SENDER, str(live), "50000"))
        entries = 0
        deadline = time.monotonic() + 60
        while entries < live and time.monotonic() < deadline:
            procs["pylogd"].send_signal(signal.SIGUSR1)
            time.sleep(1)
            for line in (tmp / "pylogd-m.log").read_text().splitlines():
                if "hash_entries=" in line:
                    entries = int(line.split("hash_entries=")[1].split()[0])
        time.sleep(1)
        after = {n: status_kb(p.pid, "VmRSS") for n, p in procs.items()}
        table = int(sh("ip", "netns", "exec", ns, "conntrack", "-C").stdout.strip())
    finally:
        for p in procs.values():
            stop(p)
    out = [f"Hash mode with {table} live flows in the kernel table (pylogd's table: {entries}):", ""]
    for n in procs:
        d = after[n] - before[n]
        out.append(
            f"- {n}: RSS {before[n] / 1024:.1f} → {after[n] / 1024:.1f} MiB "
            f"(+{d / 1024:.1f} MiB, {d * 1024 / live:.0f} B/flow)"
        )
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flows", type=int, default=20_000)
    p.add_argument("--rates", default="5000,10000,0", help="flows per second, comma separated (0: as fast as possible)")
    p.add_argument("--modes", default="event,hash")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--live", type=int, default=100_000, help="live flows for the memory phase (0: skip)")
    p.add_argument("--only", choices=tuple(DAEMONS))
    p.add_argument("--results", help="append the Markdown tables to this file (e.g. bench/RESULTS.md)")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespace)", file=sys.stderr)
        return 2
    ns = f"plbenchflow{os.getpid()}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "nft", "-f", "-", input=RULES)
        with tempfile.TemporaryDirectory(prefix="pylogd-flowbench-") as d:
            text = render(events_phase(ns, Path(d), args), args)
            if args.live:
                text += "\n\n" + memory_phase(ns, Path(d), args.live)
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
