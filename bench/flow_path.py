"""ulogd 2.0.8 and pylogd on the same conntrack events, at the same time, in a throwaway namespace.

    sudo .venv/bin/python bench/flow_path.py [--flows N] [--rate FPS] [--live 100000]

Phase 1 (events): both daemons listen at once (several ctnetlink listeners get the same
multicast stream) with ``ct1:NFCT(hash_enable=0),ip2str1:IP2STR,print1:PRINTFLOW,emu1:LOGEMU``;
a sender creates N one-datagram UDP flows (udp timeout 1 s, so each flow ends soon: one NEW and
one DESTROY event).  Per daemon: events written, lost (2N - written), the daemon's CPU µs per
written event (utime+stime from /proc while the events flowed) and peak RSS.
The daemons share the 2 CPUs with the sender and each other, so this is a same-run comparison,
not an absolute figure.

Phase 2 (memory): pylogd alone in hash mode while ``--live`` UDP flows are alive (udp timeout
600 s): RSS before and after the flows entered its table (hash_entries from SIGUSR1), and the
same for ulogd (its hash counts are not visible; its RSS is read after the same settling time).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PYLOGD = [str(ROOT / ".venv/bin/pylogd")]
ULOGD = ["/usr/sbin/ulogd"]

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


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


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


def conf(tmp: Path, name: str, ct: str, plugin_lines: str = "") -> Path:
    path = tmp / f"{name}.conf"
    path.write_text(
        f'[global]\nlogfile="{tmp}/{name}.log"\nloglevel=3\n{plugin_lines}'
        "stack=ct1:NFCT,ip2str1:IP2STR,print1:PRINTFLOW,emu1:LOGEMU\n"
        f"[ct1]\n{ct}\n[emu1]\nfile={tmp}/{name}.out\nsync=0\n"
    )
    return path


def start(ns: str, cmd: list[str], path: Path, ready: Path, needle: str) -> subprocess.Popen:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd, "-c", str(path)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while needle not in (ready.read_text() if ready.exists() else ""):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{cmd[0]} did not start")
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


def events_phase(ns: str, tmp: Path, flows: int, rate: float, only: str | None) -> None:
    buf = "netlink_socket_buffer_size=8388608\nnetlink_socket_buffer_maxsize=33554432\n"
    ct = f"hash_enable=0\n{buf}"
    procs = {
        "ulogd": start(ns, ULOGD, conf(tmp, "ulogd", ct), tmp / "ulogd.log", "working in event mode"),
        "pylogd": start(ns, PYLOGD, conf(tmp, "pylogd", ct), tmp / "pylogd.log", "entering main loop"),
    }
    if only:
        for name in [n for n in procs if n != only]:
            stop(procs.pop(name))
    try:
        cpu0 = {n: cpu_seconds(p.pid) for n, p in procs.items()}
        t0 = time.monotonic()
        sh("ip", "netns", "exec", ns, sys.executable, "-c", SENDER, str(flows), str(rate))
        send_rate = flows / (time.monotonic() - t0)
        sh("ip", "netns", "exec", ns, "conntrack", "-F")  # end what the 1 s timeout has not yet ended
        time.sleep(3)
        cpu = {n: cpu_seconds(p.pid) - cpu0[n] for n, p in procs.items()}
        rss = {n: status_kb(p.pid, "VmHWM") for n, p in procs.items()}
    finally:
        for p in procs.values():
            stop(p)
    print(f"\n{flows} flows sent at {send_rate:,.0f}/s -> {2 * flows} events expected")
    print(f"{'daemon':8} {'events':>9} {'lost':>8} {'CPU µs/event':>13} {'peak RSS MiB':>13}")
    for n in procs:
        got = count_lines(tmp / f"{n}.out")
        per = cpu[n] / got * 1e6 if got else float("nan")
        print(f"{n:8} {got:9} {2 * flows - got:8} {per:13.1f} {rss[n] / 1024:13.1f}")
    if "pylogd" in procs:  # its own exit counters say where a loss happened
        for line in (tmp / "pylogd.log").read_text().splitlines():
            if "ct1 (NFCT)" in line or line.split("stack ", 1)[-1].startswith("1 "):
                print("  pylogd:", line.split("> ", 1)[-1])


def memory_phase(ns: str, tmp: Path, live: int) -> None:
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=600")
    sh("ip", "netns", "exec", ns, "conntrack", "-F")
    ct = f"hash_max_entries={live + 10000}\nnetlink_socket_buffer_size=33554432\n"
    procs = {
        "ulogd": start(ns, ULOGD, conf(tmp, "ulogd-m", ct), tmp / "ulogd-m.log", "working in event mode"),
        "pylogd": start(ns, PYLOGD, conf(tmp, "pylogd-m", ct), tmp / "pylogd-m.log", "entering main loop"),
    }
    try:
        before = {n: status_kb(p.pid, "VmRSS") for n, p in procs.items()}
        sh("ip", "netns", "exec", ns, sys.executable, "-c", SENDER, str(live), "50000")
        entries = 0
        deadline = time.monotonic() + 60
        while entries < live and time.monotonic() < deadline:
            procs["pylogd"].send_signal(signal.SIGUSR1)
            time.sleep(1)
            for line in (tmp / "pylogd-m.log").read_text().splitlines():
                if "hash_entries=" in line:
                    entries = int(line.split("hash_entries=")[1].split()[0])
        after = {n: status_kb(p.pid, "VmRSS") for n, p in procs.items()}
        table = int(sh("ip", "netns", "exec", ns, "conntrack", "-C").stdout.strip())
    finally:
        for p in procs.values():
            stop(p)
    print(f"\nhash mode, {table} live flows in the kernel table; pylogd's table: {entries}")
    for n in procs:
        d = after[n] - before[n]
        print(
            f"{n:8} RSS {before[n] / 1024:7.1f} -> {after[n] / 1024:7.1f} MiB"
            f" (+{d / 1024:.1f}, {d * 1024 / live:.0f} B/flow)"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flows", type=int, default=50_000)
    p.add_argument("--rate", type=float, default=10_000, help="flows per second (0: as fast as possible)")
    p.add_argument("--live", type=int, default=100_000, help="live flows for the memory phase (0: skip)")
    p.add_argument("--only", choices=("pylogd", "ulogd"), help="phase 1 with one daemon (no contention)")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespace)", file=sys.stderr)
        return 2
    ns = f"plbenchflow{os.getpid()}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "nft", "-f", "-", input=RULES)
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=1")
        with tempfile.TemporaryDirectory(prefix="pylogd-flowbench-") as d:
            events_phase(ns, Path(d), args.flows, args.rate, args.only)
            if args.live:
                memory_phase(ns, Path(d), args.live)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
