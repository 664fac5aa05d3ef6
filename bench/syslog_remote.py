"""SYSLOG to a remote rsyslogd over tcp and relp, beside LOGEMU to a file, on the same NFLOG packets.

    sudo .venv/bin/python bench/syslog_remote.py [--packets N] [--rates 20000,0] [--repeat 3]
                                                 [--results bench/RESULTS.md]

pylogd runs ``log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,OUT`` (no buffer
options) pinned to CPU 1, where OUT is LOGEMU (sync=0; ulogd 2.0.8's LOGEMU runs the same stack as
the reference), SYSLOG ``mode=tcp`` (rfc3164, octet counting) or SYSLOG ``mode=relp``, each to an
rsyslogd (8.2302, imtcp / imrelp into omfile, its main queue Direct) on CPU 0 with the sender.  N
packets go at the rate (0: as fast as bench/blast.c sends); a line is counted when it is in the
receiver's file.  Lines per second: lines delivered over the time from the first packet to the last
line; CPU: the daemon's time on a CPU (schedstat) over the run, per packet sent.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from packet_path import GROUP, PORT, PROBE_PORT, SENDER, count_lines, cpu_seconds, daemon_command, publish, sender

RSYSLOGD = "/usr/sbin/rsyslogd"
STACK = "log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,"
OUTPUTS = {
    "ulogd LOGEMU": ("ulogd", "emu1:LOGEMU", "[emu1]\nfile={out}\nsync=0\n"),
    "pylogd LOGEMU": ("pylogd", "emu1:LOGEMU", "[emu1]\nfile={out}\nsync=0\n"),
    "pylogd SYSLOG tcp": ("pylogd", "sys1:SYSLOG", "[sys1]\nmode=tcp\nhost=127.0.0.1\nport={port}\n"),
    "pylogd SYSLOG relp": ("pylogd", "sys1:SYSLOG", "[sys1]\nmode=relp\nhost=127.0.0.1\nport={port}\n"),
}
RSYSLOG_CONF = """global(workDirectory="{dir}")
main_queue(queue.type="Direct")
module(load="imtcp")
module(load="imrelp")
template(name="msg" type="string" string="%msg%\\n")
input(type="{input}" port="{port}" ruleset="out")
ruleset(name="out") {{ action(type="omfile" file="{out}" template="msg") }}
"""


@dataclass
class Run:
    output: str
    rate: float
    sent: int
    delivered: int
    seconds: float
    cpu_us: float  # per packet sent


def ns_cmd(ns: str, cpu: int, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, "taskset", "-c", str(cpu), *cmd]


def wait_lines(path: Path, needle: bytes, want: int, quiet: float = 2.5, limit: float = 120) -> tuple[int, float]:
    """Lines in ``path`` once it holds ``want`` or stops growing for ``quiet`` s; and when the last came."""
    deadline, last, since = time.monotonic() + limit, -1, time.monotonic()
    while time.monotonic() < deadline:
        n = count_lines(path, needle)
        if n != last:
            last, since = n, time.monotonic()
            if n >= want:
                break
        elif time.monotonic() - since >= quiet:
            break
        time.sleep(0.05)
    return last, since


def run_once(ns: str, tmp: Path, output: str, packets: int, rate: float, index: int) -> Run:
    daemon, token, section = OUTPUTS[output]
    name = f"{output.replace(' ', '-')}-{int(rate)}-{index}"
    out = tmp / f"{name}.out"
    port = 20514 + index
    receiver = None
    if "SYSLOG" in output:
        rdir = tmp / f"{name}.rsyslog"
        rdir.mkdir()
        kind = "imrelp" if "relp" in output else "imtcp"
        (rdir / "rsyslog.conf").write_text(RSYSLOG_CONF.format(dir=rdir, input=kind, port=port, out=out))
        receiver = subprocess.Popen(
            ns_cmd(ns, 0, RSYSLOGD, "-n", "-f", str(rdir / "rsyslog.conf"), "-i", str(rdir / "pid")),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1)
    conf = tmp / f"{name}.conf"
    conf.write_text(
        f'[global]\nlogfile="{tmp}/{name}.log"\nloglevel=5\nstack={STACK}{token}\n[log1]\ngroup={GROUP}\n'
        + section.format(out=out, port=port)
    )
    proc = subprocess.Popen(ns_cmd(ns, 1, *daemon_command(daemon, conf)), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while count_lines(out) == 0:  # ready when a probe packet comes out the other end
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{output} did not start (see {tmp}/{name}.log)")
            subprocess.run(ns_cmd(ns, 0, sys.executable, "-c", SENDER, "1", "0", str(PROBE_PORT)), check=True)
            time.sleep(0.2)
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.monotonic()
        subprocess.run(ns_cmd(ns, 0, *sender(packets, rate, PORT)), check=True, capture_output=True)
        delivered, last = wait_lines(out, f"DPT={PORT} ".encode(), packets)
        cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        if receiver is not None:
            receiver.send_signal(signal.SIGTERM)
            receiver.wait(30)
    return Run(output, rate, packets, delivered, last - t0, cpu / packets * 1e6)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--packets", type=int, default=50_000)
    p.add_argument("--rates", default="20000,0")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--results")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark makes a network namespace")
    if not shutil.which(RSYSLOGD):
        raise SystemExit("rsyslogd is missing: apt-get install rsyslog rsyslog-relp")
    ns = f"plbenchsyslog{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    tmp = Path(tempfile.mkdtemp(prefix="pylogd-syslog-bench-"))
    rows = []
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        rules = (
            "table inet t {\n chain in {\n type filter hook input priority 0;\n"
            f" udp dport {{ {PORT}, {PROBE_PORT} }} log group {GROUP}\n }}\n}}\n"
        )
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True, check=True)
        index = 0
        for rate in [float(r) for r in args.rates.split(",")]:
            for output in OUTPUTS:
                runs = []
                for _ in range(args.repeat):
                    runs.append(run_once(ns, tmp, output, args.packets, rate, index))
                    index += 1
                speed = statistics.median(r.delivered / r.seconds for r in runs)
                row = (
                    f"| {output} | {'full speed' if rate == 0 else f'{rate:.0f}/s'} | {speed:,.0f} | "
                    f"{statistics.median(r.cpu_us for r in runs):.2f} | "
                    f"{max(1 - r.delivered / r.sent for r in runs):.1%} |"
                )
                rows.append(row)
                print(row, flush=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    publish(
        f"SYSLOG remote, {time.strftime('%Y-%m-%d')}, {args.packets} packets a run, {platform.machine()}, "
        f"Python {sys.version.split()[0]}",
        ["output", "rate asked", "lines/s delivered", "CPU µs/packet", "loss (max)"],
        rows,
        args.results,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
