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

CARBON = "/usr/bin/carbon-cache"
SYSTEM_PYTHON = "/usr/bin/python3"  # carbon's and whisper's interpreter


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

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [CARBON, f"--config={self.dir}/carbon.conf", "--nodaemon", "start"],
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                assert self.proc is not None and self.proc.poll() is None, "carbon-cache exited"
                return False
            return True

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
