"""Signals, pidfile, privileges and shutdown, tested on a real daemon process."""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import PYLOGD, ROOT
from daemonkit import Daemon, read, wait_for


def emu_daemon(tmp_path, daemons, args=None) -> Daemon:
    d = Daemon(tmp_path, ["in1:PIPEIN,emu1:LOGEMU"], f'[emu1]\nfile="{tmp_path}/emu.log"\nsync=1\n', args)
    daemons.append(d)
    return d


def lines(path) -> list[str]:
    return read(path).splitlines()


def test_hup_reopens_moved_files(tmp_path, daemons):
    d = emu_daemon(tmp_path, daemons).start()
    emu = tmp_path / "emu.log"
    d.send(*({"print": f"before {i}\n", "oob.time.sec": 1795388587} for i in range(3)))
    wait_for(lambda: len(lines(emu)) == 3, what="3 lines")
    os.rename(emu, tmp_path / "emu.log.1")
    os.rename(d.log, tmp_path / "pylogd.log.1")
    d.signal(signal.SIGHUP)
    wait_for(lambda: "reopened" in read(d.log), what="the reopen message in the new daemon log")
    d.send({"print": "after\n"})
    wait_for(lambda: len(lines(emu)) == 1, what="a line in the new file")
    assert [line.split(" ", 4)[-1] for line in lines(tmp_path / "emu.log.1")] == ["before 0", "before 1", "before 2"]
    # the packet time is used for the date prefix, like ulogd (local time)
    assert lines(tmp_path / "emu.log.1")[0].startswith(
        __import__("time").strftime("%b %e %H:%M:%S", __import__("time").localtime(1795388587))
    )
    assert lines(emu)[0].endswith(" after")
    assert "SIGHUP received" in read(tmp_path / "pylogd.log.1")
    assert d.stop() == 0


def test_usr1_logs_statistics(tmp_path, daemons):
    d = Daemon(
        tmp_path,
        ["in1:PIPEIN,odd:ODDSTOP,emu1:LOGEMU"],
        f'[emu1]\nfile="{tmp_path}/emu.log"\n',
    )
    daemons.append(d)
    d.start()
    d.send(*({"test.n": i, "print": f"{i}\n"} for i in range(5)))
    wait_for(lambda: len(lines(tmp_path / "emu.log")) == 3, what="3 even lines")
    d.signal(signal.SIGUSR1)
    expected = "stack 1 [in1:PIPEIN,odd:ODDSTOP,emu1:LOGEMU]: events=5 stopped=2 written=3 pending=0 errors=0 dropped=0"
    wait_for(lambda: expected in read(d.log), what="statistics")
    assert "input in1 (PIPEIN): received=5" in read(d.log)
    assert d.stop() == 0


@pytest.mark.parametrize("blocking", [0, 1])
def test_term_writes_everything_accepted_even_after_write_failures(tmp_path, daemons, blocking):
    marker = tmp_path / "disk-full"
    marker.touch()
    cap = tmp_path / "cap.json"
    d = Daemon(
        tmp_path,
        ["in1:PIPEIN,cap1:CAPTURE"],
        f'[cap1]\nfile="{cap}"\nfail_while="{marker}"\nblocking={blocking}\n',
    )
    daemons.append(d)
    d.start()
    d.send(*({"test.n": i} for i in range(200)))

    def held() -> bool:
        d.signal(signal.SIGUSR1)
        return "pending=200" in read(d.log)

    wait_for(held, what="200 entries held while writes fail")
    assert read(cap) == ""
    marker.unlink()
    assert d.stop() == 0
    got = [int(line.split(": ")[1].rstrip("}")) for line in lines(cap)]
    assert got == list(range(200))
    assert "written=200 pending=0" in read(d.log)
    assert "failed" in read(d.log)  # the failures were reported


def test_failed_writes_are_retried_by_the_timer(tmp_path, daemons):
    marker = tmp_path / "disk-full"
    marker.touch()
    cap = tmp_path / "cap.json"
    d = Daemon(tmp_path, ["in1:PIPEIN,cap1:CAPTURE"], f'[cap1]\nfile="{cap}"\nfail_while="{marker}"\n')
    daemons.append(d)
    d.start()
    d.send({"test.n": 1}, {"test.n": 2})
    wait_for(lambda: "write failed" in read(d.log), what="the write failure")
    marker.unlink()
    wait_for(lambda: len(lines(cap)) == 2, what="the retry without any new event")
    assert d.stop() == 0


def test_pidfile_is_exclusive_and_stale_files_are_replaced(tmp_path, daemons):
    pidfile = tmp_path / "pylogd.pid"
    pidfile.write_text("999999\n")  # stale: nobody holds its lock
    d = emu_daemon(tmp_path, daemons, ["-p", str(pidfile)]).start()
    assert pidfile.read_text() == f"{d.proc.pid}\n"
    assert "removing stale pidfile" in read(d.log)
    second = subprocess.run(
        [*PYLOGD, "-c", str(d.conf), "-p", str(pidfile)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 1
    assert f"another pylogd is already running with pid {d.proc.pid}" in second.stderr + read(d.log)
    assert d.stop() == 0
    assert not pidfile.exists()


def test_drops_privileges_after_opening(tmp_path, daemons):
    nobody = pwd.getpwnam("nobody")
    d = emu_daemon(tmp_path, daemons, ["-u", "nobody"]).start()
    wait_for(lambda: "running as nobody" in read(d.log), what="the privilege drop")
    status = open(f"/proc/{d.proc.pid}/status").read()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4
    d.send({"print": "still writing\n"})  # the file was opened as root before the drop
    wait_for(lambda: "still writing" in read(tmp_path / "emu.log"), what="a line written after the drop")
    assert d.stop() == 0


def test_unknown_user_is_an_error(tmp_path, daemons):
    d = emu_daemon(tmp_path, daemons, ["-u", "no-such-user-xyz"]).start(wait=False)
    assert d.proc.wait(30) == 1
    assert 'unknown user "no-such-user-xyz"' in d.proc.stderr.read() + read(d.log)


def test_daemon_mode_detaches(tmp_path, daemons):
    pidfile = tmp_path / "pylogd.pid"
    d = emu_daemon(tmp_path, daemons, ["-d", "-p", str(pidfile)]).start(wait=False)
    assert d.proc.wait(30) == 0  # the foreground process returns at once
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the pidfile"))
    assert pid != d.proc.pid
    try:
        d.send({"print": "detached\n"})
        wait_for(lambda: "detached" in read(tmp_path / "emu.log"), what="a line from the detached daemon")
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pidfile.exists(), what="the pidfile removed at exit")


def test_start_failure_names_the_instance(tmp_path, daemons):
    d = Daemon(tmp_path, ["in1:PIPEIN,emu1:LOGEMU"], '[emu1]\nfile="/nonexistent-dir/x.log"\n')
    daemons.append(d)
    d.start(wait=False)
    assert d.proc.wait(30) == 1
    assert "cannot start emu1 (LOGEMU): [Errno 2] No such file or directory" in d.proc.stderr.read() + read(d.log)


@pytest.fixture
def small_fs(tmp_path):
    """A 64 KiB tmpfs, to fill up for real."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (root needed): {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_loses_and_repeats_nothing(tmp_path, daemons, small_fs):
    log_file = small_fs / "emu.log"
    d = Daemon(tmp_path, ["in1:PIPEIN,emu1:LOGEMU"], f'[emu1]\nfile="{log_file}"\n')
    daemons.append(d)
    d.start()
    filler = small_fs / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 1024)
        except OSError:
            pass  # the disk is full
    d.send(*({"print": f"line {i:04d} " + "x" * 60 + "\n"} for i in range(300)))
    wait_for(lambda: "write failed" in read(d.log), what="the write failure")
    filler.unlink()
    wait_for(lambda: len(lines(log_file)) >= 300, timeout=20, what="all lines after space came back")
    got = [re.search(r" line (\d{4}) x{60}$", line).group(1) for line in lines(log_file)]
    assert got == [f"{i:04d}" for i in range(300)], "lines lost, repeated or torn"
    assert "No space left on device" in read(d.log)
    assert d.stop() == 0


def fill(mnt) -> None:
    with open(mnt / "filler", "wb", buffering=0) as f:
        for size in (65536, 1024):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass  # full at this granularity


def counters(log_text: str, stack: str = "1") -> dict[str, int]:
    found = re.findall(rf"stack {stack} \[[^\]]*\]: ((?:\w+=\d+ ?)+)", log_text)
    assert found, "no statistics line"
    return {k: int(v) for k, v in (kv.split("=") for kv in found[-1].split())}


def test_disk_full_overflow_drops_only_whole_lines_and_counts_every_one(tmp_path, daemons, small_fs) -> None:
    """More than the backlog's 200,000 entries arrive while the disk is full: new entries are dropped
    whole, the drops are logged with their count, the line the disk cut is finished, and the counters
    match the file exactly."""
    subprocess.run(["mount", "-o", "remount,size=24m", str(small_fs)], check=True)
    log_file = small_fs / "emu.log"
    d = Daemon(tmp_path, ["in1:PIPEIN,emu1:LOGEMU"], f'[emu1]\nfile="{log_file}"\n')
    daemons.append(d)
    d.start()
    total = 230_000

    def event(i: int) -> dict:
        return {"print": f"line {i:06d} {'x' * 40}\n"}

    d.send(*(event(i) for i in range(10)))
    wait_for(lambda: len(lines(log_file)) == 10, what="the first lines")
    fill(small_fs)  # the log file's last page still has room: the next write is cut inside a line
    d.send(*(event(i) for i in range(10, total)))
    wait_for(lambda: "new entries: the backlog is full" in read(d.log), timeout=60, what="drops logged")
    (small_fs / "filler").unlink()

    def settled() -> bool:
        d.signal(signal.SIGUSR1)
        time.sleep(0.2)
        return "stack 1 [" in read(d.log) and counters(read(d.log))["pending"] == 0

    wait_for(settled, timeout=60, what="the backlog written")
    assert d.stop() == 0
    stats = counters(read(d.log))
    got = []
    for text in lines(log_file):
        m = re.search(r" line (\d{6}) x{40}$", text)
        assert m and text.count(" line ") == 1, f"torn line: {text[:200]!r}"
        got.append(int(m.group(1)))
    assert got == sorted(set(got)), "lines reordered or repeated"
    assert got[:200_000] == list(range(200_000)), "an accepted line was lost"
    assert stats["events"] == total
    assert stats["written"] == len(got) and stats["written"] + stats["dropped"] == total
    reported = sum(int(n) for n in re.findall(r"dropped (\d+) new entries", read(d.log)))
    assert reported == stats["dropped"] > 0
    print(f"disk full: {total} events, {len(got)} lines written, {stats['dropped']} dropped whole, 0 torn")


def test_term_is_never_lost_behind_a_signal_storm(tmp_path, daemons) -> None:
    d = emu_daemon(tmp_path, daemons).start()
    d.send({"print": "before the storm\n"})
    wait_for(lambda: "before the storm" in read(tmp_path / "emu.log"), what="a line")

    def storm() -> None:
        for _ in range(10_000):
            os.kill(d.proc.pid, signal.SIGHUP)
            os.kill(d.proc.pid, signal.SIGUSR1)

    storm()  # each kind of signal is acted on after it arrives, however many came
    wait_for(lambda: "SIGHUP received" in read(d.log) and "stack 1 [" in read(d.log), what="HUP and USR1 handled")
    storm()
    os.kill(d.proc.pid, signal.SIGTERM)
    try:
        code = d.proc.wait(20)
    except subprocess.TimeoutExpired:
        pytest.fail("SIGTERM after 10,000 SIGHUP+SIGUSR1 pairs was lost: the daemon still runs")
    assert code == 0
    assert "SIGTERM received" in read(d.log)


@pytest.fixture
def open_dir():
    """A root-owned directory others may enter but not write (pytest's own tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="pylogd-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_failed_log_reopen_keeps_the_old_log_and_the_next_hup_retries(open_dir, daemons) -> None:
    nobody = pwd.getpwnam("nobody")
    d = emu_daemon(open_dir, daemons, ["-u", "nobody"]).start()
    wait_for(lambda: "running as nobody" in read(d.log), what="the privilege drop")
    rotated = open_dir / "pylogd.log.1"
    d.log.rename(rotated)  # logrotate moves the file; nobody cannot create a new one here
    d.signal(signal.SIGHUP)
    wait_for(lambda: "cannot reopen logfile" in read(rotated), what="the failed reopen, logged in the old file")
    d.signal(signal.SIGUSR1)
    wait_for(lambda: "stack 1 [" in read(rotated), what="later lines still in the old file")
    os.chown(open_dir, nobody.pw_uid, nobody.pw_gid)
    d.signal(signal.SIGHUP)
    wait_for(lambda: d.log.exists(), what="the log file opened again")
    d.signal(signal.SIGUSR1)
    wait_for(lambda: "stack 1 [" in read(d.log), what="statistics in the new file")
    assert d.stop() == 0
    assert "SIGTERM received" in read(d.log)


def test_pidfile_in_a_root_owned_directory_after_dropping_privileges(open_dir, daemons) -> None:
    pidfile = open_dir / "pylogd.pid"
    d = emu_daemon(open_dir, daemons, ["-u", "nobody", "-p", str(pidfile)]).start()
    assert pidfile.read_text() == f"{d.proc.pid}\n"
    assert d.stop() == 0
    assert d.proc.stderr.read() == ""
    assert not pidfile.exists() or pidfile.read_text() == ""  # names no process
    assert "pidfile" in read(d.log) and "the next start replaces it" in read(d.log)
    again = emu_daemon(open_dir, daemons, ["-p", str(pidfile)]).start(wait=False)
    wait_for(lambda: pidfile.exists() and pidfile.read_text() == f"{again.proc.pid}\n", what="the new pidfile")
    assert again.stop() == 0


def test_daemon_mode_closes_descriptors_it_inherited(tmp_path, daemons) -> None:
    pidfile = tmp_path / "pylogd.pid"
    d = emu_daemon(tmp_path, daemons, ["-d", "-p", str(pidfile)])
    r, w = os.pipe()
    # a free descriptor above the usual ones: dup2 onto a fixed number would close whatever pytest keeps there
    null = os.open(os.devnull, os.O_RDONLY)
    high = fcntl.fcntl(null, fcntl.F_DUPFD, 50)
    os.close(null)
    try:
        proc = subprocess.Popen([*PYLOGD, "-c", str(d.conf), *d.args], cwd=ROOT, pass_fds=(w, high))
    finally:
        os.close(w)
        os.close(high)
    try:
        assert proc.wait(30) == 0
        pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the pidfile"))
        fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert os.devnull not in [target for fd, target in fds.items() if fd > 2], fds
        ready, _, _ = select.select([r], [], [], 10)
        assert ready and os.read(r, 1) == b"", "the detached daemon still holds the caller's pipe"
    finally:
        os.close(r)
        if pidfile.exists() and pidfile.read_text().strip():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
    wait_for(lambda: not pidfile.exists(), what="the daemon's exit")


@pytest.mark.parametrize("blocking", [0, 1])
def test_spool_keeps_an_outage_across_a_restart(tmp_path, daemons, blocking) -> None:
    """The output fails, more arrives than memory may hold, the daemon is stopped and started again:
    once the output works, every entry is written once, in order, before the new ones."""
    marker = tmp_path / "server-down"
    marker.touch()
    cap = tmp_path / "cap.json"
    spool = tmp_path / "spool"
    sections = f'[cap1]\nfile="{cap}"\nfail_while="{marker}"\nblocking={blocking}\nbacklog=100\n'
    d = Daemon(tmp_path, ["in1:PIPEIN,cap1:CAPTURE"], sections)
    d.conf.write_text(d.conf.read_text().replace("[global]\n", f'[global]\nspool_dir="{spool}"\n'))
    daemons.append(d)
    d.start()
    d.send(*({"test.n": i} for i in range(1000)))
    wait_for(lambda: "keeping what waits in" in read(d.log), what="the spill to disk")
    assert d.stop() == 0
    log = read(d.log)
    assert "entries kept in the spool for the next start" in log and "dropped=0" in log
    marker.unlink()
    d.start(wait=False)
    wait_for(lambda: "entries wait in the spool; they are written first" in read(d.log), what="the restart")
    d.send(*({"test.n": i} for i in range(1000, 1010)))
    wait_for(lambda: len(lines(cap)) >= 1010, what="every entry written")
    assert d.stop() == 0
    got = [json.loads(line)["test.n"] for line in lines(cap)]
    assert got == list(range(1010))
    assert not [p for p in spool.rglob("*.seg")]


def test_new_files_are_created_0640(tmp_path, daemons) -> None:
    old = os.umask(0o022)  # the usual umask: would give 0644
    try:
        d = emu_daemon(tmp_path, daemons).start()
    finally:
        os.umask(old)
    d.send({"print": "x\n"})
    wait_for(lambda: read(tmp_path / "emu.log"), what="a line")
    assert d.stop() == 0
    assert (tmp_path / "emu.log").stat().st_mode & 0o777 == 0o640
    assert d.log.stat().st_mode & 0o777 == 0o640


def test_after_dropping_privileges_hup_reopens_files_in_the_users_directory(open_dir, daemons) -> None:
    nobody = pwd.getpwnam("nobody")
    os.chown(open_dir, nobody.pw_uid, nobody.pw_gid)
    d = emu_daemon(open_dir, daemons, ["-u", "nobody"]).start()
    wait_for(lambda: "running as nobody" in read(d.log), what="the privilege drop")
    emu = open_dir / "emu.log"
    d.send({"print": "before\n"})
    wait_for(lambda: "before" in read(emu), what="a line")
    emu.rename(open_dir / "emu.log.1")
    d.signal(signal.SIGHUP)
    wait_for(lambda: f"reopened {emu}" in read(d.log), what="the reopen")
    d.send({"print": "after\n"})
    wait_for(lambda: "after" in read(emu), what="a line in the new file")
    st = emu.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (nobody.pw_uid, 0o640)
    assert "before" not in read(emu) and d.stop() == 0


# ---------------------------------------------------------------------------------------------
# issue 20: what a new user trips over

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def test_without_root_or_cap_net_admin_one_line_says_so(open_dir, daemons) -> None:
    """Started by an ordinary user: one line naming the cause, before anything is opened (it was the log
    file's "Permission denied", then the kernel's "Operation not permitted" on the NFLOG group)."""
    if os.geteuid() != 0:
        pytest.skip("setpriv to another user needs root")
    os.chmod(open_dir, 0o777)  # the log file is writable: the refusal is about the capability only
    conf = open_dir / "nflog.conf"
    conf.write_text(
        f'[global]\nlogfile="{open_dir}/pylogd.log"\nstack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,'
        f'print1:PRINTPKT,emu1:LOGEMU\n[log1]\ngroup=7\n[emu1]\nfile="{open_dir}/emu.log"\n'
    )
    done = subprocess.run([*AS_NOBODY, *PYLOGD, "-c", str(conf)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr == (
        "pylogd: not started: NFLOG needs root or CAP_NET_ADMIN to read netfilter's netlink, and pylogd runs as "
        f"nobody (uid {pwd.getpwnam('nobody').pw_uid}) without it; start it as root (sudo, or its systemd unit, "
        "which keeps only that capability) or give it CAP_NET_ADMIN\n"
    )
    assert not (open_dir / "pylogd.log").exists() and not (open_dir / "emu.log").exists()
    # a stack that reads no netlink (here a FIFO) runs as anyone
    d = emu_daemon(open_dir, daemons)
    d.args = []
    d.proc = subprocess.Popen(
        [*AS_NOBODY, *PYLOGD, "-c", str(d.conf)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: "entering main loop" in read(d.log) or d.proc.poll() is not None, what="start-up")
    assert d.proc.poll() is None, d.proc.communicate()
    assert d.stop() == 0


def test_v_echoes_every_line_once_whatever_the_logfile_says(tmp_path, daemons) -> None:
    """-v: a log file gets each line once and stderr each line once (start-up lines were echoed twice);
    with logfile=syslog stderr gets them too (it got nothing)."""
    for logfile in (str(tmp_path / "pylogd.log"), "syslog"):
        d = emu_daemon(tmp_path, daemons, ["-v"])
        d.conf.write_text(re.sub(r'logfile="[^"]*"', f'logfile="{logfile}"', d.conf.read_text()))
        d.start(wait=False)
        wait_for(lambda d=d: d.fifo.exists(), what="the FIFO")  # made by PIPEIN's start
        d.send({"print": "a line\n"})
        wait_for(lambda: "a line" in read(tmp_path / "emu.log"), what="the line")
        assert d.stop() == 0
        err = d.proc.stderr.read()
        for message in ("starting with", "initialization finished, entering main loop", "SIGTERM received", "exited"):
            assert sum(message in line for line in err.splitlines()) == 1, (logfile, message, err)
        if logfile != "syslog":
            assert read(d.log).count("entering main loop") == 1
        (tmp_path / "emu.log").unlink()
        d.fifo.unlink()


def test_d_without_a_logfile_logs_to_var_log_pylogd(tmp_path, daemons) -> None:
    """Detached, stderr is /dev/null: with no logfile the log goes where ulogd's would (/var/log/ulogd.log)."""
    from pylogd.cli import DAEMON_LOGFILE

    assert DAEMON_LOGFILE == "/var/log/pylogd/pylogd.log"
    pidfile = tmp_path / "pylogd.pid"
    d = emu_daemon(tmp_path, daemons, ["-d", "-p", str(pidfile)])
    d.conf.write_text(re.sub(r'logfile="[^"]*"\n', "", d.conf.read_text()))
    checked = subprocess.run([*PYLOGD, "--check", "-c", str(d.conf)], cwd=ROOT, capture_output=True, text=True)
    assert checked.stdout.startswith(f"global: logfile=(stderr; with -d {DAEMON_LOGFILE}) "), checked
    d.start(wait=False)
    assert d.proc.wait(30) == 0
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the pidfile"))
    try:
        started = f"starting with {d.conf}"  # this test's config: its own line in a shared file
        wait_for(lambda: started in read(Path(DAEMON_LOGFILE)), what="the start in " + DAEMON_LOGFILE)
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pidfile.exists(), what="the pidfile removed at exit")
    assert not d.log.exists()
