"""GRAPHITE against a real carbon-cache (Debian's graphite-carbon), the values read back from its whisper
files: every value arrives with its time, also when pylogd starts before carbon and through a 10 s
outage (carbon killed, then started again), where ulogd 2.0.8 failed the start and lost the lines."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import IN_CI, PYLOGD, ROOT, TEST_PLUGINS
from daemonkit import read, wait_for
from rig import Netns, Rig, start_pylogd
from test_nfacct import ULOGD, accounting, in_bytes, udp

CARBON = "/usr/bin/carbon-cache"
SYSTEM_PYTHON = "/usr/bin/python3"  # carbon's and whisper's interpreter


def connectable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Carbon:
    """A carbon-cache of the test's own: its line receiver on a free port, every metric kept at 1 s."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "carbon"
        for sub in ("data", "log", "run"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (self.dir / "carbon.conf").write_text(
            "[cache]\n"
            f"STORAGE_DIR = {self.dir}/\nLOCAL_DATA_DIR = {self.dir}/data/\nWHITELISTS_DIR = {self.dir}/\n"
            f"CONF_DIR = {self.dir}/\nLOG_DIR = {self.dir}/log/\nPID_DIR = {self.dir}/run/\n"
            "ENABLE_LOGROTATION = False\nUSER =\nENABLE_TAGS = False\nMAX_CACHE_SIZE = inf\n"
            "MAX_UPDATES_PER_SECOND = inf\nMAX_CREATES_PER_MINUTE = inf\nWHISPER_AUTOFLUSH = True\n"
            f"LINE_RECEIVER_INTERFACE = 127.0.0.1\nLINE_RECEIVER_PORT = {self.port}\nENABLE_UDP_LISTENER = False\n"
            f"PICKLE_RECEIVER_INTERFACE = 127.0.0.1\nPICKLE_RECEIVER_PORT = {free_port()}\n"
            f"CACHE_QUERY_INTERFACE = 127.0.0.1\nCACHE_QUERY_PORT = {free_port()}\n"
        )
        (self.dir / "storage-schemas.conf").write_text("[all]\npattern = .*\nretentions = 1s:2h\n")
        self.proc: subprocess.Popen | None = None

    def start(self, ns: Netns | None = None) -> None:
        """Start carbon-cache, in network namespace ``ns`` when one is given."""
        where = ["ip", "netns", "exec", ns.name] if ns is not None else []
        self.proc = subprocess.Popen(
            [*where, CARBON, f"--config={self.dir}/carbon.conf", "--nodaemon", "start"],
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

        def listening() -> bool:
            if ns.call(connectable, self.port) if ns is not None else connectable(self.port):
                return True
            assert self.proc is not None and self.proc.poll() is None, "carbon-cache exited"
            return False

        wait_for(listening, timeout=30, what="carbon-cache listening")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        for pid in (self.dir / "run").glob("*.pid"):
            pid.unlink()

    def values(self, metric: str) -> dict[int, float]:
        """What carbon stored for ``metric``, by time."""
        path = self.dir / "data" / (metric.replace(".", "/") + ".wsp")
        if not path.exists():
            return {}
        script = (
            "import json, sys, time, whisper\n"
            "(start, end, step), vals = whisper.fetch(sys.argv[1], time.time() - 3600)\n"
            "print(json.dumps({start + i * step: v for i, v in enumerate(vals) if v is not None}))\n"
        )
        out = subprocess.run([SYSTEM_PYTHON, "-c", script, str(path)], capture_output=True, text=True, check=True)
        return {int(k): v for k, v in json.loads(out.stdout).items()}


@pytest.fixture
def carbon(tmp_path: Path):
    if not Path(CARBON).exists() or subprocess.run([SYSTEM_PYTHON, "-c", "import whisper"]).returncode != 0:
        reason = "graphite-carbon and python3-whisper are not installed (apt-get install graphite-carbon)"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    c = Carbon(tmp_path)
    yield c
    c.kill()
    shutil.rmtree(c.dir, ignore_errors=True)


class SumDaemon:
    """pylogd with the SUMIN test input (NFACCT's keys) feeding GRAPHITE."""

    def __init__(self, tmp: Path, port: int) -> None:
        self.log = tmp / "pylogd.log"
        self.fifo = tmp / "fifo"
        self.conf = tmp / "pylogd.conf"
        self.conf.write_text(
            f'[global]\nlogfile="{self.log}"\nloglevel=3\nplugin="{TEST_PLUGINS}"\n'
            f'stack=in1:SUMIN,gr1:GRAPHITE\n[in1]\npath="{self.fifo}"\n'
            f'[gr1]\nhost="127.0.0.1"\nport="{port}"\nprefix="fw1.acct"\n'
        )
        self.proc = subprocess.Popen([*PYLOGD, "-c", str(self.conf)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: "entering main loop" in read(self.log) or self.proc.poll() is not None, what="start-up")
        assert self.proc.poll() is None, self.proc.communicate()

    def send(self, name: str, pkts: int, nbytes: int, at: int) -> None:
        line = json.dumps({"sum.name": name, "sum.pkts": pkts, "sum.bytes": nbytes, "oob.time.sec": at}) + "\n"
        fd = os.open(self.fifo, os.O_WRONLY)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(30)


def test_values_arrive_with_their_times_also_when_carbon_starts_late_and_through_an_outage(
    tmp_path: Path, carbon: Carbon
) -> None:
    d = SumDaemon(tmp_path, carbon.port)  # carbon is not up yet: pylogd starts all the same
    base = int(time.time()) - 100
    try:
        d.send("ssh", 1, 60, base)
        carbon.start()
        wait_for(lambda: carbon.values("fw1.acct.ssh.pkts") == {base: 1.0}, timeout=30, what="the first value")
        carbon.kill()
        for i in range(1, 11):  # ten seconds of values while carbon is away
            d.send("ssh", 1 + i, 60 * (1 + i), base + i)
            time.sleep(1)
        carbon.start()
        want_pkts = {base + i: float(1 + i) for i in range(11)}
        wait_for(lambda: carbon.values("fw1.acct.ssh.pkts") == want_pkts, timeout=60, what="every value")
        assert carbon.values("fw1.acct.ssh.bytes") == {t: v * 60 for t, v in want_pkts.items()}
        long_name = "n" * 200  # ulogd cut its two lines at 256 bytes (a file name holds 255)
        d.send(long_name, 5, 500, base + 20)
        wait_for(lambda: carbon.values(f"fw1.acct.{long_name}.bytes") == {base + 20: 500.0}, timeout=30)
    finally:
        assert d.stop() == 0
    assert "Traceback" not in read(d.log)


def test_same_values_as_ulogd_from_real_counters(rig: Rig, tmp_path: Path, carbon: Carbon) -> None:
    """ulogd 2.0.8's GRAPHITE and pylogd's, each behind an NFACCT reading the same nfacct objects
    (zerocounter=0: neither resets the other's), into one carbon-cache in the namespace: the same values
    under each daemon's prefix."""
    if not Path(ULOGD).exists():
        pytest.skip("ulogd 2.0.8 is not installed (apt-get install ulogd2)")
    ns = rig.netns("gr")
    accounting(ns, "out1", "in1", "in2")  # out1 counts the daemons' own lines to carbon: not compared
    ns.call(udp, 3)  # counted before either starts
    carbon.start(ns)
    confs = {}
    for name in ("ulogd", "pylogd"):
        confs[name] = tmp_path / f"{name}.conf"
        confs[name].write_text(
            f'[global]\nlogfile="{tmp_path}/{name}.log"\nloglevel=3\nstack=acct1:NFACCT,gr1:GRAPHITE\n'
            f"[acct1]\npollinterval=1\nzerocounter=0\n[gr1]\nhost=127.0.0.1\nport={carbon.port}\nprefix={name}\n"
        )
    ns.spawn([ULOGD, "-c", str(confs["ulogd"])], name="ulogd")
    start_pylogd(ns, confs["pylogd"], tmp_path / "pylogd.log")
    want = {
        f"{name}.{unit}": value for name in ("in1", "in2") for unit, value in (("pkts", 3.0), ("bytes", in_bytes(3)))
    }

    def latest(prefix: str) -> dict[str, float | None]:
        found = {metric: carbon.values(f"{prefix}.{metric}") for metric in want}
        return {metric: values[max(values)] if values else None for metric, values in found.items()}

    wait_for(lambda: latest("ulogd") == want and latest("pylogd") == want, timeout=30, what="both daemons' values")
