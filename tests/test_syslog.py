"""SYSLOG: priorities as ulogd really sends them, and the datagrams that reach /dev/log."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import syslog
import textwrap
from pathlib import Path

import pytest
from conftest import PYLOGD, ROOT, TEST_PLUGINS
from daemonkit import Daemon, read, wait_for
from pylogd.plugins.outputs.syslog import Syslog

from pylogd.cli import main
from pylogd.log import Logger
from pylogd.plugin import Slots

# reference 9.1 / 9.4: the print line of the TCP SYN, trailing newline included
TCPIN = (
    "TCPIN:  IN=rsva OUT= MAC=a6:0c:a2:bf:78:26:42:69:33:72:3a:73:08:00 SRC=10.77.0.2 DST=10.77.0.1 LEN=60 TOS=00 "
    "PREC=0x00 TTL=64 ID=26501 DF PROTO=TCP SPT=34358 DPT=2222 SEQ=3537804397 ACK=0 WINDOW=64240 SYN URGP=0 "
    "MARK=0x0 \n"
)


def make(**options: str) -> Syslog:
    opts = {o.name: o.default for o in Syslog.spec.options}
    opts.update(options)
    plugin = Syslog("sys1", opts, Logger("sys1"))
    plugin.configure()
    return plugin


@pytest.mark.parametrize(
    ("options", "priority"),
    [
        ({}, 29),  # LOG_KERN|LOG_NOTICE goes out as daemon.notice, as ulogd's does (reference 9.4)
        ({"facility": "LOG_KERN", "level": "LOG_EMERG"}, 24),
        ({"facility": "LOG_DAEMON", "level": "LOG_NOTICE"}, 29),
        ({"facility": "LOG_USER", "level": "LOG_WARNING"}, 8 + 4),
        ({"facility": "LOG_LOCAL0", "level": "LOG_INFO"}, 128 + 6),
        ({"facility": "LOG_LOCAL7", "level": "LOG_DEBUG"}, 184 + 7),
        ({"facility": "LOG_LOCAL3", "level": "LOG_ERR"}, 152 + 3),
        ({"facility": "log_local1", "level": "log_crit"}, 136 + 2),
        ({"level": "LOG_ALERT"}, 24 + 1),
    ],
)
def test_priority(options: dict, priority: int) -> None:
    assert make(**options).priority == priority


def test_writes_each_line_with_its_newline(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []
    monkeypatch.setattr(syslog, "openlog", lambda *a: calls.append(("openlog", *a)))
    monkeypatch.setattr(syslog, "syslog", lambda *a: calls.append(("syslog", *a)))
    plugin = make(facility="LOG_LOCAL5", level="LOG_INFO")
    plugin.start(None)  # type: ignore[arg-type]
    convert = plugin.handler(Slots({"print": 0}, {}, size=1))
    entries = [e for e in (convert([TCPIN]), convert([None]), convert(["second\n"])) if e is not None]
    plugin.write(entries)
    assert calls == [
        ("openlog", "ulogd", syslog.LOG_PID | syslog.LOG_NDELAY, syslog.LOG_DAEMON),
        ("syslog", syslog.LOG_LOCAL5 | syslog.LOG_INFO, TCPIN),
        ("syslog", syslog.LOG_LOCAL5 | syslog.LOG_INFO, "second\n"),
    ]


def test_unsendable_text_is_sent_anyway(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []

    def fake_syslog(priority: int, message: str) -> None:
        message.encode("utf-8")  # what the C module does; raises for surrogates
        if "\0" in message:
            raise ValueError("embedded null character")
        sent.append(message)

    monkeypatch.setattr(syslog, "syslog", fake_syslog)
    make().write(["bad \udce9 prefix\n", "nul \0 here\n"])
    assert sent == ["bad \ufffd prefix\n", "nul \\0 here\n"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("facility=LOG_FTP", 'option "facility" in [sys1] (SYSLOG): unknown value "LOG_FTP"'),
        ("level=NOTICE", 'did you mean "LOG_NOTICE"'),
    ],
)
def test_unknown_names_are_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    conf = tmp_path / "pylogd.conf"
    conf.write_text(
        textwrap.dedent(f"""\
            [global]
            plugin="{TEST_PLUGINS}"
            stack=in1:PIPEIN,sys1:SYSLOG
            [in1]
            path="{tmp_path}/fifo"
            [sys1]
            {line}
            """)
    )
    assert main(["--check", "-c", str(conf)]) == 1
    assert message in capsys.readouterr().err


def test_section_is_optional(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "pylogd.conf"
    conf.write_text(f'[global]\nplugin="{TEST_PLUGINS}"\nstack=in1:PIPEIN,sys1:SYSLOG\n[in1]\npath="{tmp_path}/f"\n')
    assert main(["--check", "-c", str(conf)]) == 0


# ---------------------------------------------------------------------------------------------
# the real thing: the daemon in a private mount namespace whose /dev/log is our socket


def can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


class NamespacedDaemon(Daemon):
    """A pylogd whose /dev (a private tmpfs) holds only null and a log socket bound to ours."""

    def __init__(self, *args: object, log_socket: str, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.log_socket = log_socket

    def start(self, wait: bool = True) -> Daemon:
        script = (
            "set -e; mount -t tmpfs tmpfs /dev; mknod -m 666 /dev/null c 1 3; touch /dev/log; "
            f'mount --bind "{self.log_socket}" /dev/log; exec "$@"'
        )
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *PYLOGD, "-c", str(self.conf)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: "entering main loop" in read(self.log) or self.proc.poll() is not None, what="start-up")
        assert self.proc.poll() is None, self.proc.communicate()
        return self


@pytest.mark.netns
@pytest.mark.skipif(not can_unshare(), reason="needs root and mount namespaces")
@pytest.mark.parametrize(("section", "priority"), [("", 29), ("facility=LOG_LOCAL3\nlevel=LOG_INFO\n", 158)])
def test_datagrams_at_dev_log(tmp_path: Path, section: str, priority: int) -> None:
    path = str(tmp_path / "log.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(15)
    d = NamespacedDaemon(tmp_path, ["in1:PIPEIN,sys1:SYSLOG"], f"[sys1]\n{section}", log_socket=path)
    try:
        d.start()
        d.send({"print": TCPIN}, {"test.n": 1}, {"print": " IN=rsva OUT= MAC= PROTO=UDP\n"})
        first, second = sock.recv(65536), sock.recv(65536)
        pid = d.proc.pid  # type: ignore[union-attr]
        # reference 9.4: b'<29>Nov 22 23:03:08 ulogd[7598]: TCPIN:  IN=rsva ... MARK=0x0 \n'
        stamp = rb"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d"
        assert re.fullmatch(rb"<%d>%s ulogd\[%d\]: " % (priority, stamp, pid) + re.escape(TCPIN.encode()), first)
        assert re.fullmatch(rb"<%d>%s ulogd\[%d\]:  IN=rsva OUT= MAC= PROTO=UDP\n" % (priority, stamp, pid), second)
        assert d.stop() == 0
    finally:
        d.kill()
        sock.close()
