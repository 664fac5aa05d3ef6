"""Append-only log files for outputs: one write() per batch, reopened on SIGHUP, nothing lost on a full disk."""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import stat

from .config import INT_MAX
from .loop import EventLoop
from .plugin import Option, Output, int_option


def open_append(path: str) -> int:
    """An append-only descriptor for a log file: each batch is one write() at the end of the file."""
    return open_output(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)


#: the most symlinks followed from one path, as the kernel's MAXSYMLINKS
MAX_SYMLINKS = 40


class UntrustedSymlink(PermissionError):
    """A file to write is a symlink that someone else could have made: it is not followed."""

    def __str__(self) -> str:
        return self.strerror


def open_output(path: str, flags: int, mode: int = 0o640) -> int:
    """``os.open`` for a file the daemon writes (an output, its own log), but a symlink in the last
    component is followed only when :func:`symlink_refusal` trusts it; otherwise UntrustedSymlink.

    pylogd often runs as root and writes where others may write too (a shared log directory): a link
    planted there by another user would make it append to any file (ulogd 2.0.8 follows it).  The
    kernel's fs.protected_symlinks does not help: it may be off, and it leaves out directories that
    are writable by others but not sticky.  Race-free: the file is opened with O_NOFOLLOW from a
    descriptor of its directory; only when that finds a link is the link itself opened (O_PATH), its
    owner judged and its target read through that descriptor, so what is judged is what is followed.
    Directories on the way are followed as the path names them: the operator chose them."""
    flags |= os.O_CLOEXEC
    shown = path  # the path of the current link, for messages
    dir_fd: int | None = None  # the directory of the previous link: a relative target starts there
    try:
        for _ in range(MAX_SYMLINKS + 1):
            head, name = os.path.split(path)
            parent = os.open(head or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
            if dir_fd is not None:
                os.close(dir_fd)
            dir_fd = parent
            try:
                return os.open(name, flags | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
            path = _trusted_link_target(name, dir_fd, shown)
            shown = os.path.join(os.path.dirname(shown), path)
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), shown)
    except UntrustedSymlink:
        raise
    except OSError as exc:  # name the whole path, not the part opened from a directory descriptor
        raise OSError(exc.errno, exc.strerror, shown) from None
    finally:
        if dir_fd is not None:
            os.close(dir_fd)


def _trusted_link_target(name: str, dir_fd: int, shown: str) -> str:
    """The target of the link ``name`` in ``dir_fd`` when it may be followed, else UntrustedSymlink.
    A link replaced by a file since the O_NOFOLLOW open gives its own name back: open it again."""
    link_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        link = os.fstat(link_fd)
        if not stat.S_ISLNK(link.st_mode):
            return name
        refusal = symlink_refusal(link, os.fstat(dir_fd), os.geteuid())
        if refusal:
            where = os.path.dirname(shown) or "."
            raise UntrustedSymlink(errno.EPERM, f"refusing to follow symlink {shown} (in {where}): {refusal}", shown)
        return os.readlink("", dir_fd=link_fd)  # the link judged above, whatever its name holds now
    finally:
        os.close(link_fd)


def symlink_refusal(link: os.stat_result, directory: os.stat_result, euid: int) -> str | None:
    """Why a symlink owned as ``link`` in ``directory`` must not be followed by a process of ``euid``,
    or None.  Followed: a link owned by root or by ``euid`` (they could write the target anyway); in
    a directory no one but its owner may write to, or a sticky one, also a link of the directory's
    owner (as fs.protected_symlinks has it).  In a directory others may write to that is not
    sticky, anyone could have replaced any link: only root's and ``euid``'s are followed there."""
    owner = link.st_uid
    if owner in (0, euid):
        return None
    perms = stat.S_IMODE(directory.st_mode)
    trusted = "root" if euid == 0 else f"root or {_user(euid)}"
    if perms & (stat.S_IWGRP | stat.S_IWOTH) and not perms & stat.S_ISVTX:
        return (
            f"it is owned by {_user(owner)} and others may write to the directory (mode {perms:04o}, "
            f"not sticky), so anyone could have made it; only a link owned by {trusted} is followed there"
        )
    if owner != directory.st_uid:
        return (
            f"it is owned by {_user(owner)}, who is neither {trusted} nor the directory's owner "
            f"({_user(directory.st_uid)}); only their links are followed"
        )
    return None


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def write_all(fd: int, entries: list[bytes]) -> None:
    """Write the entries; on failure remove the ones written so a retry neither loses nor repeats a line."""
    data = memoryview(b"".join(entries))
    done = 0
    try:
        while done < len(data):
            done += os.write(fd, data[done:])
    except OSError:
        written = 0
        while entries and written + len(entries[0]) <= done:
            written += len(entries.pop(0))
        if entries and done > written:  # half a line is out: keep the other half
            entries[0] = entries[0][done - written :]
        raise


def sync_option(what: str = "lines") -> Option:
    return int_option(
        "sync",
        0,
        f"accepted for ulogd compatibility: pylogd always writes each batch of {what} with one write()",
        min=0,
        max=INT_MAX,
    )


class FileOutput(Output):
    """An output whose entries are bytes appended to the file named by its ``file`` option."""

    fd: int = -1
    created = False  # start() made the file: a refused start-up removes it again while it is empty

    def start(self, loop: EventLoop) -> None:
        # lexists: a dangling link is not the file start() makes, and abort must not remove it
        self.created = not os.path.lexists(self.options["file"])
        self.fd = open_append(self.options["file"])

    def abort(self) -> None:
        fd = self.fd
        self.stop()
        if self.created and fd >= 0:
            path = self.options["file"]
            with contextlib.suppress(OSError):
                if os.path.getsize(path) == 0:
                    os.unlink(path)

    def reopen(self) -> None:
        try:
            fd = open_append(self.options["file"])
        except OSError as exc:
            self.log.error(f"cannot reopen {self.options['file']}: {exc.strerror}; still writing to the old file")
            return
        os.close(self.fd)
        self.fd = fd
        self.log.notice(f"reopened {self.options['file']}")

    def stop(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def write(self, entries: list) -> None:
        write_all(self.fd, entries)
