"""ulogd 2.0.8's IPFIX and pylogd's, in turn, on the same conntrack flows, into nfdump's nfcapd.

    sudo .venv/bin/python bench/ipfix_export.py [--flows N] [--rates 10000,0] [--modes hash,event]
                                                [--repeat 3] [--results bench/RESULTS.md]

Each daemon runs ulogd's own stack ``ct1:NFCT,ipfix1:IPFIX`` with ulogd's defaults (no buffer
options, ``mtu`` 512, ``send_template`` once) and ``proto=udp`` to an nfcapd in the same namespace,
pinned to CPU 1 while the sender (bench/blast.c) and nfcapd share CPU 0.  N one-datagram UDP flows
are made at the rate (0: as fast as the sender can), then ``conntrack -F`` ends them in one burst.
Records expected: N in hash mode (one per flow, at its end), 2N in event mode (NEW and DESTROY).
CPU is the daemon's time on a CPU (schedstat) over the run divided by the records expected; loss is
what nfcapd did not store (``nfdump -q``, the benchmark's flows only).  pylogd is measured as
installed in .venv (the compiled build when ``make compiled`` made it; PYLOGD_PURE_PYTHON=1 in the
environment measures the pure-Python one).
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

from flow_path import RULES, cpu_seconds, in_ns, send_flows, sh, status_kb  # bench/ is the script's directory
from packet_path import daemon_command, publish

READY = {"ulogd": "entering main loop", "pylogd": "entering main loop"}
MODES = {"event": "hash_enable=0\n", "hash": ""}
#: what blast.c's flows mode opens (the export's own flow to the collector is left out by its port)
FLOW_PORTS = "dst port >= 1024 and dst port < 61024 and proto udp"
NFCAPD, NFDUMP = "/usr/bin/nfcapd", "/usr/bin/nfdump"


@dataclass
class Run:
    daemon: str
    mode: str
    rate: float
    expected: int
    stored: int
    cpu_us: float  # per expected record
    rss_kb: int
    rcvbuf_drops: int  # datagrams the kernel dropped at the collector's full receive buffer


def config(tmp: Path, name: str, mode: str, port: int, extra: str = "") -> Path:
    path = tmp / f"{name}.conf"
    path.write_text(
        f'[global]\nlogfile="{tmp}/{name}.log"\nloglevel=3\nstack=ct1:NFCT,ipfix1:IPFIX\n'
        f"[ct1]\n{MODES[mode]}[ipfix1]\noid=1\nhost=127.0.0.1\nport={port}\nproto=udp\n{extra}"
    )
    return path


def run_once(ns: str, tmp: Path, daemon: str, mode: str, rate: float, flows: int, index: int, extra: str) -> Run:
    name = f"{daemon}-{mode}-{int(rate)}-{index}"
    store = tmp / name
    store.mkdir()
    port = 4739 + index % 100
    sh("ip", "netns", "exec", ns, "conntrack", "-F")
    collector = subprocess.Popen(
        in_ns(ns, 0, NFCAPD, "-w", str(store), "-b", "127.0.0.1", "-p", str(port), "-t", "3600"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    log = tmp / f"{name}.log"
    conf = config(tmp, name, mode, port, extra if daemon == "pylogd" else "")
    proc = subprocess.Popen(in_ns(ns, 1, *daemon_command(daemon, conf)), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while READY[daemon] not in (log.read_text() if log.exists() else ""):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{daemon} did not start (see {log})")
        time.sleep(0.1)
    drops0 = rcvbuf_errors(ns)
    try:
        cpu0 = cpu_seconds(proc.pid)
        send_flows(ns, flows, rate)
        time.sleep(1)
        sh("ip", "netns", "exec", ns, "taskset", "-c", "0", "conntrack", "-F")
        time.sleep(3)  # the flush's events are read and exported
        cpu = cpu_seconds(proc.pid) - cpu0
        rss = status_kb(proc.pid, "VmHWM")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        time.sleep(0.5)
        collector.send_signal(signal.SIGINT)
        collector.wait(30)
    out = subprocess.run(
        [NFDUMP, "-q", "-R", str(store), "-o", "fmt:%pr", f"{FLOW_PORTS} and not dst port {port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    stored = len([line for line in out.splitlines() if line.strip()])
    expected = 2 * flows if mode == "event" else flows
    return Run(daemon, mode, rate, expected, stored, cpu / expected * 1e6, rss, rcvbuf_errors(ns) - drops0)


def rcvbuf_errors(ns: str) -> int:
    out = sh("ip", "netns", "exec", ns, "nstat", "-az", "UdpRcvbufErrors").stdout
    return int(out.split("UdpRcvbufErrors")[1].split()[0])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flows", type=int, default=20_000)
    p.add_argument("--rates", default="10000,0")
    p.add_argument("--modes", default="hash,event")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--options", default="", help='more [ipfix1] lines for pylogd, ";"-separated ("udp_rate=0")')
    p.add_argument("--results")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark makes a network namespace")
    ns = f"plbenchipfix{os.getpid()}"
    sh("ip", "netns", "add", ns)
    tmp = Path(tempfile.mkdtemp(prefix="pylogd-ipfix-bench-"))
    rows = []
    try:
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "nft", "-f", "-", input=RULES)
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1")
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.netfilter.nf_conntrack_timestamp=1")
        index = 0
        for mode in args.modes.split(","):
            for rate in [float(r) for r in args.rates.split(",")]:
                runs: dict[str, list[Run]] = {"ulogd": [], "pylogd": []}
                for _ in range(args.repeat):
                    for daemon in runs:
                        extra = "".join(f"{line}\n" for line in args.options.split(";") if line)
                        runs[daemon].append(run_once(ns, tmp, daemon, mode, rate, args.flows, index, extra))
                        index += 1
                u, q = runs["ulogd"], runs["pylogd"]
                cpu_u = statistics.median(r.cpu_us for r in u)
                cpu_p = statistics.median(r.cpu_us for r in q)
                row = (
                    f"| {mode} | {'full speed' if rate == 0 else f'{rate:.0f}/s'} | {cpu_u:.2f} | {cpu_p:.2f} | "
                    f"{cpu_p / cpu_u:.2f}x | {max(1 - r.stored / r.expected for r in u):.1%} | "
                    f"{max(1 - r.stored / r.expected for r in q):.1%} | {max(r.rss_kb for r in u) / 1024:.1f} | "
                    f"{max(r.rss_kb for r in q) / 1024:.1f} |"
                )
                rows.append(row)
                print(row, "collector drops:", [r.rcvbuf_drops for r in u], [r.rcvbuf_drops for r in q], flush=True)
    finally:
        subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    build = "pure Python" if os.environ.get("PYLOGD_PURE_PYTHON") else "compiled where built"
    publish(
        f"IPFIX export, {time.strftime('%Y-%m-%d')}, {args.flows} flows, {platform.machine()}, pylogd {build}, "
        f"Python {sys.version.split()[0]}",
        ["NFCT mode", "rate", "ulogd µs/record", "pylogd µs/record", "ratio", "ulogd loss (max)",
         "pylogd loss (max)", "ulogd RSS MiB", "pylogd RSS MiB"],
        rows,
        args.results,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
