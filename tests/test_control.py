"""The control socket never holds up the event loop: idle clients, clients that never read their reply and
a flood of connections cost the loop nothing while `pylogd stats` goes on being answered, and each such
client is dropped at its deadline by a timer (the old server answered each connection synchronously,
waiting up to 0.5 s on it inside the loop)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PYLOGD, ROOT
from daemonkit import Daemon, read, wait_for

from pylogd.control import MAX_REQUEST, ControlServer, request
from pylogd.log import Logger
from pylogd.loop import EventLoop

IDLE_CLIENTS = 50  # connect and never send anything
NON_READERS = 3  # send a request and never read the reply


def connected(path, count: int) -> list[socket.socket]:
    clients = []
    for _ in range(count):
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(30)
        # a unix socket's full listen backlog fails a connect with a timeout (EAGAIN): try again
        wait_for(lambda client=client: _connects(client, path), timeout=60, what="a connection")
        clients.append(client)
    return clients


def _connects(client: socket.socket, path) -> bool:
    try:
        client.connect(str(path))
    except BlockingIOError:
        return False
    return True


def still_open(client: socket.socket) -> bool:
    """The server has neither closed nor reset it: no end of stream to read (a reply waiting is fine)."""
    client.setblocking(False)
    try:
        return client.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def closed_by_server(client: socket.socket) -> bool:
    client.settimeout(30)
    try:
        while client.recv(1 << 20):  # what was sent before the close, if anything
            pass
    except ConnectionResetError:
        pass  # closed with our request or its reply still unread
    return True


# ---------------------------------------------------------------------------------------------
# the loop: writers


def test_a_writer_runs_once_the_peer_makes_room() -> None:
    loop = EventLoop()
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            ours.send(b"x" * 65536)  # full: the writer must wait for the peer
    calls: list[str] = []

    def writable() -> None:
        calls.append("writable")
        loop.remove_writer(ours.fileno())
        loop.stop()

    def make_room() -> None:
        calls.append("read")
        with contextlib.suppress(BlockingIOError):
            peer.setblocking(False)
            while peer.recv(1 << 20):
                pass

    try:
        loop.add_writer(ours.fileno(), writable)
        with pytest.raises(KeyError):
            loop.add_reader(ours.fileno(), writable)  # one direction at a time
        loop.call_later(0.2, make_room)
        loop.call_later(30, loop.stop)  # a hang guard
        loop.run()
    finally:
        loop.close()
        ours.close()
        peer.close()
    assert calls == ["read", "writable"]


# ---------------------------------------------------------------------------------------------
# the server in-process, on a loop of its own


class Served:
    """A ControlServer on a loop run by a thread; ``ticks`` counts a 10 ms timer of that loop."""

    def __init__(self, path, snapshot, **limits) -> None:
        self.loop = EventLoop()
        self.server = ControlServer(str(path), snapshot, Logger("control-test"), **limits)
        assert self.server.start(self.loop)
        self.ticks = 0
        self.loop.call_every(0.01, self._tick)
        self.thread = threading.Thread(target=self.loop.run, daemon=True)

    def _tick(self) -> None:
        self.ticks += 1

    def ticks_go_on(self, count: int = 20) -> bool:
        start = self.ticks
        wait_for(lambda: self.ticks >= start + count, timeout=30, what="the loop's timer")
        return True

    def close(self) -> None:
        self.loop.call_later(0, self.loop.stop)
        self.thread.join(30)
        self.server.close()
        self.loop.close()


@pytest.fixture
def served(tmp_path) -> Iterator:
    running: list[Served] = []

    def start(snapshot=lambda: {"counters": 1}, **limits) -> Served:
        s = Served(tmp_path / "ctl.sock", snapshot, **limits)
        s.thread.start()
        running.append(s)
        return s

    yield start
    for s in running:
        s.close()


def big_snapshot() -> dict:
    return {"stacks": [{"stack": str(i), "text": "x" * 1000} for i in range(8000)]}  # ~8 MB, beyond socket buffers


def test_idle_and_non_reading_clients_leave_the_loop_running_and_stats_answered(served, tmp_path) -> None:
    s = served(big_snapshot)
    path = tmp_path / "ctl.sock"
    idle = connected(path, IDLE_CLIENTS)
    non_readers = connected(path, NON_READERS)
    for client in non_readers:
        client.sendall(b"stats\n")
    wait_for(lambda: s.server.statistics()["clients"] == IDLE_CLIENTS + NON_READERS, what="every client accepted")
    assert s.ticks_go_on()  # the loop runs its timers while replies wait on clients that do not read
    reply = request(str(path), timeout=30)
    assert len(reply["stacks"]) == 8000 and reply["control"]["clients"] == IDLE_CLIENTS + NON_READERS + 1
    assert s.ticks_go_on()
    # answered while every one of them was held
    assert s.server.statistics()["clients"] == IDLE_CLIENTS + NON_READERS
    assert all(still_open(c) for c in idle + non_readers)
    for client in idle + non_readers:
        client.close()


def test_clients_not_done_by_the_deadline_are_dropped(served, tmp_path) -> None:
    s = served(big_snapshot, deadline=1.0)
    path = tmp_path / "ctl.sock"
    idle = connected(path, 5)
    non_readers = connected(path, 2)
    for client in non_readers:
        client.sendall(b"stats\n")
    assert all(closed_by_server(c) for c in idle + non_readers)
    wait_for(lambda: s.server.statistics()["clients"] == 0, what="the clients dropped")
    assert s.server.statistics() == {"clients": 0, "answered": 0, "refused": 0, "timed_out": 7}
    assert len(request(str(path), timeout=30)["stacks"]) == 8000  # and the server goes on answering
    for client in idle + non_readers:
        client.close()


def test_clients_beyond_the_limit_are_closed_at_once_and_counted(served, tmp_path) -> None:
    s = served(max_clients=4)
    path = tmp_path / "ctl.sock"
    held = connected(path, 4)
    wait_for(lambda: s.server.statistics()["clients"] == 4, what="four clients accepted")
    extra = connected(path, 3)
    for client in extra:
        client.settimeout(30)
        assert client.recv(100) == b""  # closed without an answer
    assert s.server.statistics()["refused"] == 3
    for client in held:
        client.close()
    wait_for(lambda: s.server.statistics()["clients"] == 0, what="the held clients gone")
    assert request(str(path), timeout=30)["control"]["refused"] == 3
    for client in extra:
        client.close()


def test_a_request_read_in_pieces_and_one_too_long(served, tmp_path) -> None:
    s = served()
    path = tmp_path / "ctl.sock"
    (client,) = connected(path, 1)
    client.sendall(b"sta")
    wait_for(lambda: [c.request for c in s.server._clients.values()] == [b"sta"], what="the first piece read")
    client.sendall(b"ts\n")
    assert json.loads(client.makefile("rb").readline())["counters"] == 1
    client.close()

    (client,) = connected(path, 1)
    client.sendall(b"s" * (MAX_REQUEST + 100))  # no newline ever: the size limit ends the request
    assert "longer than" in json.loads(client.makefile("rb").readline())["error"]
    client.close()

    (client,) = connected(path, 1)
    client.sendall(b"stop\n")
    assert "unknown request 'stop'" in json.loads(client.makefile("rb").readline())["error"]
    client.close()


# ---------------------------------------------------------------------------------------------
# a real daemon


def test_a_daemon_with_idle_clients_goes_on_handling_events_answering_and_exits_on_sigterm(tmp_path) -> None:
    sock = tmp_path / "ctl.sock"
    d = Daemon(
        tmp_path, ["in1:PIPEIN,emu1:LOGEMU"], f'[emu1]\nfile="{tmp_path}/emu.log"\n', ["--control-socket", str(sock)]
    )
    d.start()
    held: list[socket.socket] = []
    try:
        held = connected(sock, IDLE_CLIENTS) + connected(sock, NON_READERS)
        for client in held[IDLE_CLIENTS:]:
            client.sendall(b"stats\n")
        d.send(*({"test.n": i, "print": f"line {i}\n"} for i in range(500)))
        wait_for(lambda: len(read(tmp_path / "emu.log").splitlines()) == 500, timeout=60, what="the lines")
        doc = request(str(sock), timeout=30)
        (stack,) = doc["stacks"]
        assert (stack["events"], stack["written"]) == (500, 500)
        # the 50 idle clients were all accepted and still held when that answer came
        assert all(still_open(c) for c in held[:IDLE_CLIENTS])
        assert doc["control"]["clients"] >= IDLE_CLIENTS + 1
        assert d.stop() == 0  # SIGTERM, with every client still connected
    finally:
        d.kill()
        for client in held:
            client.close()
    assert not os.path.exists(sock)


# ---------------------------------------------------------------------------------------------
# -u: the socket is made while still root


def test_a_daemon_run_with_u_nobody_answers_stats_and_removes_its_socket(tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.skip("-u needs root")
    nobody = pwd.getpwnam("nobody")
    # the daemon, as nobody, must reach the socket's directory to remove the socket at exit: not under
    # /tmp/pytest-of-root, which is 0700
    top = Path(tempfile.mkdtemp(prefix="pylogd-control-", dir="/tmp"))
    top.chmod(0o755)
    sock = top / "run" / "ctl.sock"  # run/ does not exist: the daemon makes it, and gives it to nobody
    d = Daemon(
        tmp_path,
        ["in1:PIPEIN,emu1:LOGEMU"],
        f'[emu1]\nfile="{tmp_path}/emu.log"\n',
        ["-u", "nobody", "--control-socket", str(sock)],
    )
    try:
        d.start()
        assert "running as nobody" in read(d.log)
        d.send({"test.n": 1, "print": "line 1\n"})
        wait_for(lambda: "line 1" in read(tmp_path / "emu.log"), what="the line")
        answer = subprocess.run(
            [*PYLOGD, "stats", "-s", str(sock), "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert answer.returncode == 0, answer.stderr
        doc = json.loads(answer.stdout)
        assert doc["pylogd"]["pid"] == d.proc.pid and doc["stacks"][0]["written"] == 1
        info = sock.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (nobody.pw_uid, nobody.pw_gid, 0o660)
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o755 and sock.parent.stat().st_uid == nobody.pw_uid
        assert d.stop() == 0
        assert not sock.exists()  # removed at exit by nobody, the owner of its directory
    finally:
        d.kill()
        shutil.rmtree(top, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# issue 20: `pylogd stats` by an administrator who is not root


def test_a_root_daemons_socket_is_its_admin_groups_and_a_refused_user_is_told_why(tmp_path) -> None:
    """Started as root without -u, the socket goes to the group pylogd (the unit's) or else adm: a member
    reads the counters; anyone else is told "permission denied" and how to join, not "is pylogd running?"."""
    import grp

    from pylogd.control import CONTROL_GROUPS, control_group

    if os.geteuid() != 0:
        pytest.skip("setpriv to another user needs root")
    gid = control_group()
    if gid is None:
        pytest.skip(f"none of the groups {CONTROL_GROUPS} exists here")
    group = grp.getgrgid(gid).gr_name
    top = Path(tempfile.mkdtemp(prefix="pylogd-control-", dir="/tmp"))  # /tmp/pytest-of-root is 0700
    top.chmod(0o755)
    sock = top / "ctl.sock"
    d = Daemon(
        tmp_path, ["in1:PIPEIN,emu1:LOGEMU"], f'[emu1]\nfile="{tmp_path}/emu.log"\n', ["--control-socket", str(sock)]
    )
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup"]
    stats = [*PYLOGD, "stats", "-s", str(sock), "--json"]
    try:
        d.start()
        info = sock.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, gid, 0o660)
        refused = subprocess.run(
            [*as_nobody, "--clear-groups", *stats], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert refused.returncode == 1
        assert refused.stderr == (
            f"pylogd stats: permission denied on {sock}: the socket is for its owner and the group {group}; "
            f"join it (usermod -aG {group} $USER, then log in again) or use sudo\n"
        )
        member = subprocess.run(
            [*as_nobody, f"--groups={group}", *stats], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert member.returncode == 0, member.stderr
        assert json.loads(member.stdout)["pylogd"]["pid"] == d.proc.pid
        assert d.stop() == 0
        gone = subprocess.run(stats, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert gone.returncode == 1 and "is pylogd running?" in gone.stderr
    finally:
        d.kill()
        shutil.rmtree(top, ignore_errors=True)
