"""The daemon's own log, with ulogd's levels and destinations (a file, syslog or stdout).

Until a logfile is opened, messages go to stderr: ulogd hides early errors in syslog.
"""

from __future__ import annotations

import os
import sys
import syslog
import time
from typing import TextIO

from .files import open_output

DEBUG, INFO, NOTICE, ERROR, FATAL = 1, 3, 5, 7, 8
#: the logfile values that name no file
NAMED_DESTINATIONS = ("stdout", "stderr", "syslog")
LEVEL_NAMES = {DEBUG: "debug", INFO: "info", NOTICE: "notice", ERROR: "error", FATAL: "fatal"}
_SYSLOG_PRIORITY = {
    DEBUG: syslog.LOG_DEBUG,
    INFO: syslog.LOG_INFO,
    NOTICE: syslog.LOG_NOTICE,
    ERROR: syslog.LOG_ERR,
    FATAL: syslog.LOG_CRIT,
}


class LogSink:
    """Where log lines go; shared by every Logger of the process."""

    def __init__(self) -> None:
        self.level = NOTICE
        self.target = "stderr"
        self.stream: TextIO = sys.stderr
        self.echo_stderr = False  # -v: also echo to stderr
        self.held: list[tuple[int, str, str]] | None = None  # start-up lines, until start-up succeeds

    def hold(self) -> None:
        """Keep lines in memory until :meth:`release`: a start that is refused (say, a second daemon
        on the same config) must not write into the log file of the daemon already running."""
        self.held = []

    def release(self, target: str | None) -> None:
        """Start-up succeeded: open ``target`` (None: stay on stderr) and write the held lines there.
        Raises OSError (the lines stay held) when the target cannot be opened."""
        if target:
            self.open(target)
        held, self.held = self.held or [], None
        echo, self.echo_stderr = self.echo_stderr, False  # -v echoed them as they were logged
        if echo and self.target == "stderr":
            held = []  # and stderr is where they would go: once is enough
        try:
            for level, origin, message in held:
                self.write(level, origin, message)
        finally:
            self.echo_stderr = echo

    def held_errors(self) -> list[str]:
        """Start-up failed: the held lines worth showing on stderr."""
        return [f"{origin}: {message}" for level, origin, message in self.held or () if level >= ERROR]

    def open(self, target: str) -> None:
        """Switch to ``stdout``, ``syslog``, ``stderr`` or a file path (opened for appending).

        A file that cannot be opened raises OSError and leaves the current destination as it was."""
        stream: TextIO | None = None
        if target not in NAMED_DESTINATIONS:
            fd = open_output(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # a planted symlink is refused
            stream = open(fd, "a", encoding="utf-8", errors="replace")
        self.close()
        if target == "stdout":
            self.stream = sys.stdout
        elif target == "stderr":
            self.stream = sys.stderr
        elif target == "syslog":
            syslog.openlog("pylogd", syslog.LOG_PID, syslog.LOG_DAEMON)
        else:
            assert stream is not None
            self.stream = stream
        self.target = target

    def reopen(self) -> None:
        """SIGHUP (logrotate): open the log file's path again.  When that fails the log goes on into
        the file already open (as the outputs do), the failure is logged there, and the next SIGHUP
        tries again."""
        if self.target in NAMED_DESTINATIONS:
            return
        try:
            self.open(self.target)
        except OSError as exc:
            self.write(ERROR, "core", f"cannot reopen logfile {self.target}: {exc.strerror}; still writing here")

    def close(self) -> None:
        if self.target == "syslog":
            syslog.closelog()
        elif self.target not in ("stdout", "stderr"):
            self.stream.close()
        self.target, self.stream = "stderr", sys.stderr

    def write(self, level: int, origin: str, message: str) -> None:
        if level < self.level:
            return
        line = f"{time.ctime()} <{level}> {origin}: {message}\n"
        if self.held is not None:
            self.held.append((level, origin, message))
        elif self.target == "syslog":
            syslog.syslog(_SYSLOG_PRIORITY.get(level, syslog.LOG_WARNING), f"{origin}: {message}")
        else:
            try:
                self.stream.write(line)
                self.stream.flush()
            except OSError:
                pass  # a full disk must not take the daemon down through its own log
        # -v: every line on stderr too, whatever the destination (syslog and stdout included), once
        if self.echo_stderr and (self.held is not None or self.target != "stderr"):
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except OSError:
                pass


SINK = LogSink()


class Logger:
    """A named logger (``core``, an instance id); ``every`` rate-limits repeated messages."""

    def __init__(self, origin: str, sink: LogSink = SINK) -> None:
        self.origin = origin
        self.sink = sink
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, message: str) -> None:
        self.sink.write(level, self.origin, message)

    def debug(self, message: str) -> None:
        self.sink.write(DEBUG, self.origin, message)

    def info(self, message: str) -> None:
        self.sink.write(INFO, self.origin, message)

    def notice(self, message: str) -> None:
        self.sink.write(NOTICE, self.origin, message)

    def error(self, message: str) -> None:
        self.sink.write(ERROR, self.origin, message)

    def fatal(self, message: str) -> None:
        self.sink.write(FATAL, self.origin, message)

    def every(self, seconds: float, level: int, topic: str, message: str) -> None:
        """Log at most once per ``seconds`` per topic, saying how many were held back."""
        now = time.monotonic()
        if now - self._last.get(topic, -1e9) < seconds:
            self._suppressed[topic] = self._suppressed.get(topic, 0) + 1
            return
        held = self._suppressed.pop(topic, 0)
        self._last[topic] = now
        if held:
            message = f"{message} ({held} similar messages suppressed)"
        self.sink.write(level, self.origin, message)
