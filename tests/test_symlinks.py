"""A symlink someone else planted where pylogd writes (a shared, world-writable log directory) is not
followed, at start or on a SIGHUP reopen; links made by root or by the daemon's user still are."""

from __future__ import annotations

import errno
import os
import pwd
import signal
import stat
from pathlib import Path

import pytest
from conftest import IN_CI
from daemonkit import Daemon, read, wait_for
from pylogd.plugins.outputs.pcap import HEADER, Pcap

from pylogd import files
from pylogd.log import Logger, LogSink
from pylogd.loop import EventLoop

NOBODY = pwd.getpwnam("nobody").pw_uid
PRECIOUS = "precious\n"


def stat_of(uid: int, mode: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))


@pytest.mark.parametrize(
    ("link_owner", "dir_owner", "dir_mode", "euid", "followed"),
    [
        (0, 0, 0o777, 0, True),  # root's link, anywhere
        (1000, 0, 0o777, 1000, True),  # the daemon's user's own link (after -u)
        (NOBODY, 0, 0o777, 0, False),  # anyone could have made it
        (NOBODY, NOBODY, 0o777, 0, False),  # also the directory's owner: anyone could have replaced it
        (NOBODY, 0, 0o775, 0, False),  # group-writable is the same
        (NOBODY, 0, 0o1777, 0, False),  # sticky: only the directory owner's links (fs.protected_symlinks)
        (NOBODY, NOBODY, 0o1777, 0, True),
        (NOBODY, NOBODY, 0o755, 0, True),  # the owner's own directory, no one else writes there
        (NOBODY, 0, 0o755, 0, False),  # a stranger's link in a directory that is not theirs
    ],
)
def test_which_symlinks_are_followed(link_owner, dir_owner, dir_mode, euid, followed) -> None:
    link = stat_of(link_owner, stat.S_IFLNK | 0o777)
    directory = stat_of(dir_owner, stat.S_IFDIR | dir_mode)
    assert (files.symlink_refusal(link, directory, euid) is None) is followed


@pytest.fixture
def shared(tmp_path) -> Path:
    """A log directory anyone may write to, not sticky (root may plant and chown links in it)."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI=true but not root: symlinks owned by another user need root", pytrace=False)
        pytest.skip("needs root: a symlink owned by another user")
    path = tmp_path / "shared"
    path.mkdir()
    path.chmod(0o777)
    return path


def plant(link: Path, target: Path, uid: int = NOBODY) -> Path:
    """``link`` made anew, pointing at ``target``, owned by ``uid``."""
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)
    os.lchown(link, uid, -1)
    return link


@pytest.fixture
def victim(tmp_path) -> Path:
    path = tmp_path / "victim"
    path.write_text(PRECIOUS)
    return path


def test_a_planted_link_is_refused_naming_the_path_the_owner_and_why(shared, victim) -> None:
    link = plant(shared / "emu.log", victim)
    with pytest.raises(files.UntrustedSymlink) as refused:
        files.open_append(str(link))
    message = str(refused.value)
    assert message.startswith(f"refusing to follow symlink {link} (in {shared}): it is owned by nobody (uid {NOBODY})")
    assert "mode 0777, not sticky" in message and refused.value.errno == errno.EPERM
    assert victim.read_text() == PRECIOUS


def test_a_planted_dangling_link_creates_nothing(shared, tmp_path) -> None:
    target = tmp_path / "cron-job"
    link = plant(shared / "emu.log", target)
    with pytest.raises(files.UntrustedSymlink):
        files.open_append(str(link))
    assert not target.exists()


def test_a_link_to_a_planted_link_is_refused_too(shared, victim, tmp_path) -> None:
    planted = plant(shared / "other.log", victim)
    mine = plant(tmp_path / "emu.log", planted, uid=0)
    with pytest.raises(files.UntrustedSymlink, match=f"refusing to follow symlink {planted} "):
        files.open_append(str(mine))
    assert victim.read_text() == PRECIOUS


def test_roots_links_are_followed_also_relative_and_dangling(shared, tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    plant(shared / "emu.log", Path("../data/emu.log"), uid=0)  # dangling: made through the link
    fd = files.open_append(str(shared / "emu.log"))
    os.write(fd, b"line\n")
    os.close(fd)
    assert (data / "emu.log").read_text() == "line\n"


def test_a_missing_directory_names_the_whole_path(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as missing:
        files.open_append(str(tmp_path / "no-such-dir" / "emu.log"))
    assert missing.value.filename == str(tmp_path / "no-such-dir" / "emu.log")


def test_pcap_refuses_a_planted_link_at_start_and_on_reopen(shared, victim, tmp_path, logged) -> None:
    messages, sink = logged
    pcap = Pcap("pcap1", {"file": str(shared / "x.pcap"), "sync": 0}, Logger("pcap1", sink))
    plant(shared / "x.pcap", victim)
    with pytest.raises(files.UntrustedSymlink):
        pcap.start(EventLoop())
    assert victim.read_text() == PRECIOUS
    plant(shared / "x.pcap", tmp_path / "first.pcap", uid=0)
    pcap.start(EventLoop())
    plant(shared / "x.pcap", victim)
    pcap.reopen()
    assert "cannot reopen" in messages[-1] and "refusing to follow symlink" in messages[-1]
    pcap.write([b"record"])  # still the old file
    pcap.stop()
    assert (tmp_path / "first.pcap").read_bytes() == HEADER + b"record"
    assert victim.read_text() == PRECIOUS


def test_the_daemon_log_refuses_a_planted_link(shared, victim) -> None:
    sink = LogSink()
    link = plant(shared / "pylogd.log", victim)
    with pytest.raises(files.UntrustedSymlink):
        sink.open(str(link))
    assert sink.target == "stderr" and victim.read_text() == PRECIOUS


@pytest.mark.parametrize("planted", ["emu", "json", "log"])
def test_a_daemon_refuses_to_start_on_a_planted_link(shared, victim, tmp_path, daemons, planted) -> None:
    d = Daemon(
        tmp_path,
        ["in1:PIPEIN,emu1:LOGEMU", "in1:PIPEIN,json1:JSON"],
        f'[emu1]\nfile="{shared}/emu.log"\n[json1]\nfile="{shared}/out.json"\n',
    )
    daemons.append(d)
    path = {"emu": shared / "emu.log", "json": shared / "out.json", "log": d.log}[planted]
    if planted == "log":  # the daemon's log in the shared directory too
        path = shared / "pylogd.log"
        d.conf.write_text(d.conf.read_text().replace(f'logfile="{d.log}"', f'logfile="{path}"'))
    plant(path, victim)
    d.start(wait=False)
    assert d.proc.wait(30) == 1
    stderr = d.proc.stderr.read()
    assert f"refusing to follow symlink {path} (in {shared}): it is owned by nobody" in stderr, stderr
    assert victim.read_text() == PRECIOUS


def test_sighup_refuses_planted_links_keeps_the_old_files_and_follows_roots(shared, victim, tmp_path, daemons):
    """Root's links at start (dangling: the files are made through them), links planted by nobody at a
    SIGHUP (refused, the old files kept), root's links again at the next SIGHUP (followed)."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    names = ("emu.log", "out.json", "pylogd.log")
    for name in names:
        plant(shared / name, first / name, uid=0)
    d = Daemon(
        tmp_path,
        ["in1:PIPEIN,emu1:LOGEMU", "in1:PIPEIN,json1:JSON"],
        f'[emu1]\nfile="{shared}/emu.log"\n[json1]\nfile="{shared}/out.json"\n',
    )
    d.conf.write_text(d.conf.read_text().replace(f'logfile="{d.log}"', f'logfile="{shared}/pylogd.log"'))
    d.log = first / "pylogd.log"  # where start() looks for the start-up line
    daemons.append(d)
    d.start()
    d.send({"print": "one\n", "test.n": 1})
    wait_for(lambda: "one" in read(first / "emu.log") and "1" in read(first / "out.json"), what="the first event")

    for name in names:
        plant(shared / name, victim)
    d.signal(signal.SIGHUP)
    log = first / "pylogd.log"
    wait_for(lambda: read(log).count("refusing to follow symlink") == 3, what="three refused reopens")
    for name in names:
        assert f"refusing to follow symlink {shared / name} (in {shared}): it is owned by nobody" in read(log)
    d.send({"print": "two\n", "test.n": 2})
    wait_for(lambda: "two" in read(first / "emu.log") and "2" in read(first / "out.json"), what="the old files")

    for name in names:
        plant(shared / name, second / name, uid=0)
    d.signal(signal.SIGHUP)
    wait_for(
        lambda: f"reopened {shared}/out.json" in read(second / "pylogd.log"), what="the reopen through root's links"
    )
    d.send({"print": "three\n", "test.n": 3})
    wait_for(lambda: "three" in read(second / "emu.log") and "3" in read(second / "out.json"), what="the new files")
    assert d.stop() == 0
    assert victim.read_text() == PRECIOUS
    assert "one" in read(first / "emu.log") and "three" not in read(first / "emu.log")
