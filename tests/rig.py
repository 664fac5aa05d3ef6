"""Network-namespace test rig: throwaway namespaces, veth pairs, nft rulesets, processes, packets.

Everything a test creates lives in namespaces named after the test process's pid and is
removed at teardown, also when the test fails: processes started in them are killed,
the namespaces deleted (their veth ends go with them).  Nothing is created in the root
namespace.

Fixtures, registered under the names ``rig``, ``netns`` and ``netns_pair`` (a test module or
conftest.py imports them with ``from rig import rig_fixture, netns_fixture, netns_pair_fixture``):

* ``rig`` -- a :class:`Rig`; create namespaces with ``rig.netns()`` / ``rig.pair()``.
* ``netns`` -- one namespace with ``lo`` up.
* ``netns_pair`` -- two namespaces joined by a veth pair with IPv4 and IPv6 addresses.

Code runs inside a namespace three ways: ``ns.run([...])`` (``ip netns exec``), ``ns.spawn``
for a long-running process with its output in files, and ``ns.call(func, ...)`` which runs a
Python function in a forked child that has entered the namespace (fast: no exec, closures
work; the result comes back pickled).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import itertools
import os
import pickle
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CLONE_NEWNET = 0x40000000
_names = itertools.count()
_probe: str | None = None  # None: not probed yet; "" ok; else the reason it failed


def _env_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def need_root_and_netns() -> None:
    """Skip the test when not root or network namespaces cannot be created.

    With ``CI=true`` in the environment this fails instead: CI must run these tests.
    """
    global _probe
    if _probe is None:
        _probe = _probe_netns()
    if _probe:
        if _env_ci():
            pytest.fail(f"CI=true but network namespace tests cannot run: {_probe}", pytrace=False)
        pytest.skip(_probe)


def _probe_netns() -> str:
    if os.geteuid() != 0:
        return "needs root (network namespaces, nft, veth)"
    name = f"plprobe{os.getpid()}"
    try:
        res = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run `ip netns add`: {exc}"
    if res.returncode != 0:
        return f"`ip netns add` failed: {res.stderr.strip() or res.returncode}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
    return ""


def _libc_setns(fd: int) -> None:
    if hasattr(os, "setns"):
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll until ``predicate()`` is truthy and return its value; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def read_text(path: Path) -> str:
    """A file's text, "" while it does not exist."""
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""


def pylogd_command() -> list[str]:
    """The pylogd of the interpreter running the tests (the venv's console script when it has one)."""
    script = Path(sys.executable).with_name("pylogd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pylogd"]


def start_pylogd(where: Netns | Rig, conf: Path, logfile: Path, timeout: float = 20) -> Proc:
    """Run ``pylogd -c conf`` in a namespace (or, given the Rig, in the root namespace) and wait
    until its log (the config's logfile, loglevel 3 or lower) says it entered the main loop."""
    proc = where.spawn([*pylogd_command(), "-c", str(conf)], name="pylogd")
    wait_for(
        lambda: "entering main loop" in read_text(logfile) or not proc.alive(), timeout=timeout, what="pylogd start-up"
    )
    if not proc.alive():
        raise AssertionError(f"pylogd exited {proc.popen.returncode}:\n{read_text(logfile)}\n{proc.output()}")
    return proc


def netns_names() -> set[str]:
    """The names `ip netns list` shows now."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


class Proc:
    """A long-running process started by :meth:`Netns.spawn`, its stdout and stderr in files."""

    def __init__(self, popen: subprocess.Popen, argv: Sequence[str], stdout: Path, stderr: Path) -> None:
        self.popen = popen
        self.argv = list(argv)
        self.stdout = stdout
        self.stderr = stderr

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, signum)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL to the whole process group after ``timeout``; returns the exit code."""
        if self.alive():
            self._killpg(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._killpg(signal.SIGKILL)
                self.popen.wait(10)
        # children that outlived the leader (the group id is still the leader's pid)
        self._killpg(signal.SIGKILL)
        return self.popen.returncode

    def _killpg(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)

    def output(self) -> str:
        """stdout and stderr so far, for assertion messages."""
        parts = []
        for label, path in (("stdout", self.stdout), ("stderr", self.stderr)):
            text = path.read_text(errors="replace") if path.exists() else ""
            if text:
                parts.append(f"--- {label} of {self.argv[0]}:\n{text}")
        return "\n".join(parts)


def _spawn(
    prefix: list[str],
    argv: Sequence[str],
    workdir: Path,
    procs: list[Proc],
    name: str | None,
    env: dict[str, str] | None,
    cwd: str | os.PathLike | None,
) -> Proc:
    tag = name or Path(argv[0]).name
    n = next(_names)
    stdout = workdir / f"{tag}.{n}.stdout"
    stderr = workdir / f"{tag}.{n}.stderr"
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        popen = subprocess.Popen(
            [*prefix, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    proc = Proc(popen, argv, stdout, stderr)
    procs.append(proc)
    return proc


class Netns:
    """One network namespace (created by :class:`Rig`)."""

    def __init__(self, name: str, workdir: Path, procs: list[Proc]) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"
        self.workdir = workdir
        self._procs = procs

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    # -- commands -------------------------------------------------------------------------------

    def run(
        self, cmd: Sequence[str] | str, check: bool = True, input: str | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace (a list, or a string for ``sh -c``)."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        res = subprocess.run(
            ["ip", "netns", "exec", self.name, *argv], input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and res.returncode != 0:
            raise AssertionError(f"in {self.name}: {argv} exited {res.returncode}:\n{res.stdout}{res.stderr}")
        return res

    def nft(self, ruleset: str) -> None:
        """Load an nft ruleset (the text of an ``nft -f`` file)."""
        self.run(["nft", "-f", "-"], input=ruleset)

    def python(self, code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``python -c code`` inside the namespace with the test interpreter."""
        return self.run([sys.executable, "-c", code], timeout=timeout)

    def spawn(
        self,
        argv: Sequence[str],
        name: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
    ) -> Proc:
        """Start a long-running process inside; stdout/stderr go to files in the rig's workdir.

        It runs in its own session so teardown can kill it and anything it forked.
        """
        return _spawn(["ip", "netns", "exec", self.name], argv, self.workdir, self._procs, name, env, cwd)

    def call(self, func: Callable[..., Any], *args: Any, timeout: float = 30, **kwargs: Any) -> Any:
        """Run ``func(*args, **kwargs)`` in a forked child inside this namespace and return its result.

        Exceptions in the child are raised here.  The child never returns into pytest.
        """
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            status = 0
            try:
                os.close(r)
                fd = os.open(self.path, os.O_RDONLY)
                _libc_setns(fd)
                os.close(fd)
                result: tuple = ("ok", func(*args, **kwargs))
            except BaseException as exc:
                exc.add_note(f"raised inside {self.name}:\n{traceback.format_exc()}")
                result = ("err", exc)
            try:
                data = pickle.dumps(result)
            except Exception as exc:
                data = pickle.dumps(("err", RuntimeError(f"unpicklable result: {exc!r}; {result!r}")))
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(w, view) :]
            except BaseException:
                status = 1
            os._exit(status)
        os.close(w)
        chunks = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([r], [], [], remaining)[0]:
                    os.kill(pid, signal.SIGKILL)
                    raise AssertionError(
                        f"{getattr(func, '__name__', func)} in {self.name} timed out after {timeout} s"
                    )
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(r)
            os.waitpid(pid, 0)
        if not chunks:
            raise AssertionError(f"{getattr(func, '__name__', func)} in {self.name} died without a result")
        kind, value = pickle.loads(b"".join(chunks))
        if kind == "err":
            raise value
        return value

    # -- facts ----------------------------------------------------------------------------------

    def ifindex(self, ifname: str) -> int:
        return self.call(socket.if_nametoindex, ifname)

    def mac(self, ifname: str) -> bytes:
        return self.call(_hwaddr, ifname)

    def pids(self) -> list[int]:
        res = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        return [int(p) for p in res.stdout.split()]

    # -- traffic --------------------------------------------------------------------------------

    def send_udp(
        self, dst: str, port: int, payload: bytes = b"pylogd", count: int = 1, src_port: int = 0, mark: int = 0
    ) -> int:
        """Send ``count`` UDP datagrams from inside; returns the source port used."""
        return self.call(_send_udp, dst, port, payload, count, src_port, mark)

    def send_tcp(self, dst: str, port: int, payload: bytes = b"", timeout: float = 1.0) -> bool:
        """Open a TCP connection from inside (at least a SYN goes out); True if it was accepted."""
        return self.call(_send_tcp, dst, port, payload, timeout)

    def send_frames(self, frames: Sequence[bytes], iface: str) -> None:
        """Send raw link-layer frames (e.g. ``bytes(scapy_packet)``) out of ``iface`` with AF_PACKET."""
        self.call(_send_frames, list(frames), iface)

    def scapy_sendp(self, packets: Sequence[Any], iface: str) -> None:
        """scapy ``sendp`` from inside the namespace (layer 2)."""
        self.call(_scapy_send, list(packets), iface, True)

    def scapy_send(self, packets: Sequence[Any]) -> None:
        """scapy ``send`` from inside the namespace (layer 3, routed)."""
        self.call(_scapy_send, list(packets), None, False)


def _hwaddr(ifname: str) -> bytes:
    # /sys shows the namespace that mounted it, so ask the kernel from inside (SIOCGIFHWADDR)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16s16x", ifname.encode())
        return fcntl.ioctl(s.fileno(), 0x8927, req)[18:24]


def _send_udp(dst: str, port: int, payload: bytes, count: int, src_port: int, mark: int) -> int:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        if mark:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", src_port))
        for _ in range(count):
            while True:
                try:
                    s.sendto(payload, (dst, port))
                    break
                except (BlockingIOError, ConnectionRefusedError):
                    continue
                except OSError as exc:  # a full transmit queue on a burst: retry
                    if exc.errno != 105:  # ENOBUFS
                        raise
                    time.sleep(0.0005)
        return s.getsockname()[1]


def _send_tcp(dst: str, port: int, payload: bytes, timeout: float) -> bool:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((dst, port))
        except OSError:
            return False
        if payload:
            s.sendall(payload)
        return True


def _send_frames(frames: list[bytes], iface: str) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        for frame in frames:
            s.send(frame)


def _scapy_send(packets: list, iface: str | None, layer2: bool) -> None:
    from scapy.all import conf, send, sendp

    conf.verb = 0
    # scapy caches interfaces and routes per process: a fork inherits the parent namespace's
    conf.ifaces.reload()
    conf.route.resync()
    conf.route6.resync()
    if layer2:
        sendp(packets, iface=iface)
    else:
        send(packets)


@dataclass
class Pair:
    """Two namespaces joined by a veth pair: ``a`` has ``a_if`` with the ``a_*`` addresses, ``b`` likewise."""

    a: Netns
    b: Netns
    a_if: str
    b_if: str
    a_ip4: str
    b_ip4: str
    a_ip6: str
    b_ip6: str


class Rig:
    """Creates namespaces and processes, and removes all of them in :meth:`close`."""

    def __init__(self, workdir: Path | None = None) -> None:
        """``workdir`` holds the processes' output files; without one a temporary directory
        is made and removed again by :meth:`close`."""
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="pylogd-rig-")) if workdir is None else Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.namespaces: list[Netns] = []
        self.procs: list[Proc] = []
        self._pairs = 0

    def netns(self, tag: str = "ns") -> Netns:
        """A new namespace named ``pl<tag><pid>n<k>`` with loopback up."""
        name = f"pl{tag}{os.getpid()}n{next(_names)}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        ns = Netns(name, self.workdir, self.procs)
        self.namespaces.append(ns)
        ns.run(["ip", "link", "set", "lo", "up"])
        return ns

    def pair(self, a_if: str = "veth0", b_if: str = "veth1") -> Pair:
        """Two namespaces and a veth pair between them, 10.<k>.0.1-2/24 and fd00:<k>::1-2/64 (nodad)."""
        self._pairs += 1
        k = 200 + self._pairs % 50
        a, b = self.netns("a"), self.netns("b")
        subprocess.run(
            ["ip", "link", "add", a_if, "netns", a.name, "type", "veth", "peer", "name", b_if, "netns", b.name],
            check=True,
            capture_output=True,
        )
        p = Pair(a, b, a_if, b_if, f"10.{k}.0.1", f"10.{k}.0.2", f"fd00:{k}::1", f"fd00:{k}::2")
        for ns, ifname, ip4, ip6 in ((a, a_if, p.a_ip4, p.a_ip6), (b, b_if, p.b_ip4, p.b_ip6)):
            ns.run(f"ip addr add {ip4}/24 dev {ifname} && ip addr add {ip6}/64 dev {ifname} nodad")
            ns.run(["ip", "link", "set", ifname, "up"])
        return p

    def spawn(
        self,
        argv: Sequence[str],
        name: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
    ) -> Proc:
        """Start a long-running process in the root namespace (e.g. a daemon reading a namespace
        from outside); it is killed at teardown like the others."""
        return _spawn([], argv, self.workdir, self.procs, name, env, cwd)

    def close(self) -> None:
        """Kill every process started here, then delete every namespace. Safe to call twice."""
        problems = []
        for proc in reversed(self.procs):
            try:
                proc.stop(timeout=5)
            except Exception as exc:
                problems.append(f"stopping {proc.argv}: {exc!r}")
        self.procs.clear()
        for ns in reversed(self.namespaces):
            # anything still running in our namespace was started by this rig (e.g. a daemon's child)
            for pid in ns.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            res = subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, text=True)
            if res.returncode != 0 and os.path.exists(ns.path):
                problems.append(f"ip netns del {ns.name}: {res.stderr.strip()}")
        self.namespaces.clear()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if problems:
            raise RuntimeError("rig teardown: " + "; ".join(problems))

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture(name="rig")
def rig_fixture(tmp_path: Path) -> Iterator[Rig]:
    """A Rig whose namespaces and processes are removed after the test, whatever its outcome."""
    need_root_and_netns()
    r = Rig(tmp_path / "rig")
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(name="netns")
def netns_fixture(rig: Rig) -> Netns:
    """One throwaway namespace with loopback up."""
    return rig.netns()


@pytest.fixture(name="netns_pair")
def netns_pair_fixture(rig: Rig) -> Pair:
    """Two namespaces joined by a veth pair with IPv4 and IPv6 addresses."""
    return rig.pair()
