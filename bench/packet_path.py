"""ulogd 2.0.8 and pylogd on the same packets, in turn, in a throwaway network namespace.

    sudo .venv/bin/python bench/packet_path.py [--packets N] [--rate PPS] [--repeat N] [--only pylogd|ulogd]

For each daemon and each configuration it prints: packets sent, records written, loss, CPU µs per
record (the daemon's time on a CPU, user and system, all threads, while the packets flowed: schedstat),
peak RSS, and the ratio pylogd/ulogd.  With ``--repeat N`` the daemons take turns N times per
configuration; the table shows the median CPU per record and the largest loss.  Both daemons
read the same unmodified ulogd.conf; the daemon is pinned to CPU 1 and the sender to CPU 0.
Packets are UDP datagrams to 127.0.0.1 inside the namespace, logged by an nft rule.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
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


def sender(packets: int, rate: float, port: int) -> list[str]:
    """The command that sends the burst: bench/blast.c (sendmmsg batches, ~5x the Python loop) when a
    C compiler is there, else the Python loop."""
    if not _BLAST and shutil.which("gcc"):
        binary = Path(tempfile.mkdtemp(prefix="pylogd-blast-")) / "blast"
        done = subprocess.run(["gcc", "-O2", "-o", str(binary), str(ROOT / "bench/blast.c")], capture_output=True)
        _BLAST.append(str(binary) if done.returncode == 0 else "")
    if _BLAST and _BLAST[0]:
        return [_BLAST[0], str(packets), str(rate), str(port)]
    return [sys.executable, "-c", SENDER, str(packets), str(rate), str(port)]


CONFIGS = {
    # what most ulogd.conf files have: no netlink buffer options (ulogd: the kernel's ~208 KiB; pylogd: 16 MiB)
    "no buffer options": {"sync": 1, "qthreshold": 0, "buffers": False},
    "LOGEMU sync=1": {"sync": 1, "qthreshold": 0},
    "LOGEMU sync=0": {"sync": 0, "qthreshold": 0},
    "LOGEMU sync=1 qthreshold=32": {"sync": 1, "qthreshold": 32},
}


def config_text(tmp: Path, name: str, sync: int, qthreshold: int, buffers: bool = True) -> str:
    q = f"netlink_qthreshold={qthreshold}\nnetlink_qtimeout=10\n" if qthreshold else ""
    b = "netlink_socket_buffer_size=8388608\nnetlink_socket_buffer_maxsize=16777216\n" if buffers else ""
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


def run_one(ns: str, daemon: str, config: str, opts: dict, packets: int, rate: float, tmp: Path, run: int) -> Result:
    name = f"{daemon}-{config.replace(' ', '_').replace('=', '')}-{run}"  # each run its own files
    conf = tmp / f"{name}.conf"
    conf.write_text(config_text(tmp, name, **opts))
    out = tmp / f"{name}.out"
    cmd = (
        ["/usr/sbin/ulogd", "-c", str(conf)] if daemon == "ulogd" else [str(ROOT / ".venv/bin/pylogd"), "-c", str(conf)]
    )
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, "taskset", "-c", "1", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
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
        cpu0 = cpu_seconds(pid)
        t0 = time.monotonic()
        sh("ip", "netns", "exec", ns, "taskset", "-c", "0", *sender(packets, rate, PORT))
        send_rate = packets / (time.monotonic() - t0)
        last, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < 2.5:  # past the kernel's 1 s batch timer
            n = count_lines(out)
            if n != last:
                last, stable_since = n, time.monotonic()
            time.sleep(0.1)
        cpu = cpu_seconds(pid) - cpu0
        rss = peak_rss_kb(pid)
        stop(proc)  # ulogd with sync=0 writes its last buffered lines at exit
        return Result(daemon, config, packets, count_lines(out, BURST_MARK), cpu, rss, send_rate)
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--packets", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=0, help="packets per second; 0 = as fast as the sender can")
    p.add_argument("--only", choices=("pylogd", "ulogd"))
    p.add_argument("--repeat", type=int, default=1, help="runs per daemon and configuration, taking turns")
    p.add_argument("--config", choices=list(CONFIGS), action="append")
    p.add_argument("--results", help="append a Markdown table to this file (e.g. bench/RESULTS.md)")
    p.add_argument(
        "--soak", type=int, metavar="SECONDS", help="run pylogd alone at --rate (default 2000) and watch RSS"
    )
    args = p.parse_args()
    if os.geteuid() != 0 or not shutil.which("nft"):
        print("needs root, nft and ip (apt-get install nftables iproute2)", file=sys.stderr)
        return 1
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
            for config in args.config or list(CONFIGS):
                for run in range(args.repeat):
                    for daemon in ("ulogd", "pylogd"):
                        if args.only and daemon != args.only:
                            continue
                        opts = CONFIGS[config]
                        results.append(run_one(ns, daemon, config, opts, args.packets, args.rate, tmp, run))
                        print_result(results[-1])
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    table = render(results, args)
    print()
    print(table)
    if args.results:
        with open(args.results, "a") as f:
            f.write(table + "\n")
    return 0


def print_result(r: Result) -> None:
    print(
        f"{r.daemon:6} {r.config:30} sent={r.sent} written={r.written} loss={r.loss:.1%} "
        f"cpu={r.us_per_record:.2f}µs/record rss={r.peak_rss_kb / 1024:.1f}MiB sent at {r.send_rate:.0f} pps",
        flush=True,
    )


def summary(runs: list) -> Any:
    """The median run by CPU per record, with the largest loss and peak RSS of all the runs (any result
    with us_per_record, loss, written, peak_rss_kb and worst_written: output_path.py's too)."""
    ranked = sorted(runs, key=lambda r: r.us_per_record)
    worst = max(runs, key=lambda r: r.loss)
    return replace(ranked[len(ranked) // 2], peak_rss_kb=max(r.peak_rss_kb for r in runs), worst_written=worst.written)


def render(results: list[Result], args: argparse.Namespace) -> str:
    rate = "full speed" if not args.rate else f"{args.rate:.0f} pps"
    runs = f", median of {args.repeat} runs (loss: the largest)" if args.repeat > 1 else ""
    lines = [
        f"### {time.strftime('%Y-%m-%d')} — {platform.node()}, {os.cpu_count()} cores, kernel {platform.release()}, "
        f"{args.packets} packets at {rate}{runs}",
        "",
        "| config | daemon | sent | sent at pps | written | loss | CPU µs/record | peak RSS MiB "
        "| CPU ratio pylogd/ulogd |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.config, r.daemon), []).append(r)
    by = {k: summary(v) for k, v in groups.items()}
    for (config, daemon), r in by.items():
        ratio = ""
        u = by.get((config, "ulogd"))
        if daemon == "pylogd" and u and u.written and r.written:
            ratio = f"{r.us_per_record / u.us_per_record:.2f}"
        lines.append(
            f"| {config} | {daemon} | {r.sent} | {r.send_rate:.0f} | {r.written} | {r.worst_loss:.1%} "
            f"| {r.us_per_record:.2f} | {r.peak_rss_kb / 1024:.1f} | {ratio} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
