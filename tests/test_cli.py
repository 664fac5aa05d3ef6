"""The command line: -i in ulogd's layout (checked against ulogd 2.0.8's own -i), --json, --check on ulogd's configs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import IN_CI, PYLOGD, ROOT, TEST_PLUGINS

from pylogd.cli import main, spec_text
from pylogd.registry import Registry

REFERENCE = ROOT.parent / "shared" / "reference" / "ulogd-2.0.8-plugin-info.txt"
ULOGD_PLUGIN_DIR = Path("/usr/lib/x86_64-linux-gnu/ulogd")


def ulogd_info_blocks() -> dict[str, list[str]]:
    """ulogd's -i output per plugin name, from the reference dump or, when present, the real ulogd."""
    blocks: dict[str, list[str]] = {}
    if REFERENCE.exists():
        for chunk in REFERENCE.read_text().split("=== ")[1:]:
            lines = chunk.splitlines()[1:]
            name = lines[0].removeprefix("Name: ")
            blocks[name] = lines
    if shutil.which("ulogd"):
        for so in sorted(ULOGD_PLUGIN_DIR.glob("ulogd_*.so")):
            out = subprocess.run(["ulogd", "-i", str(so)], capture_output=True, text=True, timeout=30).stdout
            lines = [line for line in out.splitlines() if line and not line.startswith(("ulogd", "("))]
            if lines and lines[0].startswith("Name: "):
                blocks[lines[0].removeprefix("Name: ")] = lines
    return blocks


def is_subsequence(needles: list[str], haystack: list[str]) -> bool:
    it = iter(haystack)
    return all(any(n == h for h in it) for n in needles)


BLOCKS = ulogd_info_blocks()
BUILTINS = Registry().builtins()


def test_reference_is_available():
    if not BLOCKS:
        if IN_CI:
            pytest.fail("neither the reference -i dump nor ulogd is available")
        pytest.skip("no ulogd -i output to compare with")


def _string_not_address(line: str) -> str:
    return line.replace(".str (IP addr)", ".str (string)")


# where pylogd's declaration deliberately differs from ulogd's -i, and how to read ulogd's line instead
INFO_DIFFERENCES = {
    # ulogd declares PRINTFLOW's orig/reply.ip.*.str inputs as IP addresses, yet they are IP2STR's strings;
    # pylogd checks types when it resolves keys, so it declares what they are
    "PRINTFLOW": _string_not_address,
    # ulogd declares PCAP's packet (a pointer) as an integer; pylogd declares the raw data it is
    "PCAP": lambda line: line.replace("raw.pkt (unsigned int 32)", "raw.pkt (raw data)"),
}


@pytest.mark.parametrize("name", sorted(set(BUILTINS) & set(BLOCKS)))
def test_info_contains_every_line_ulogd_prints(name):
    ours = spec_text(BUILTINS[name].spec).splitlines()
    fix = INFO_DIFFERENCES.get(name, lambda line: line)
    theirs = [fix(line) for line in BLOCKS[name] if line.strip() != "Var:  (Unknown)"]
    assert is_subsequence(theirs, ours), "\n".join(["ulogd:", *theirs, "pylogd:", *ours])


def test_info_by_ulogd_path_and_by_name_agree(capsys):
    assert main(["-i", str(ULOGD_PLUGIN_DIR / "ulogd_output_LOGEMU.so")]) == 0
    by_path = capsys.readouterr().out
    assert main(["-i", "LOGEMU"]) == 0
    assert capsys.readouterr().out == by_path
    assert by_path.startswith(
        "Name: LOGEMU\nConfig options:\n\tVar: file (String, Default: /var/log/ulogd_syslogemu.log)\n"
    )


def test_info_json(capsys):
    assert main(["-i", "LOGEMU", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "LOGEMU" and data["kind"] == "output"
    assert [o["name"] for o in data["options"]] == ["file", "sync"]
    assert data["inputs"][1] == {
        "name": "oob.time.sec",
        "type": "UINT32",
        "optional": True,
        "help": data["inputs"][1]["help"],
    }


def test_info_unknown_plugin(capsys):
    assert main(["-i", "LOGEMUX"]) == 1
    assert 'unknown plugin "LOGEMUX"; did you mean "LOGEMU"' in capsys.readouterr().err


def test_info_third_party_file(capsys):
    assert main(["-i", str(ROOT / "tests" / "plugins" / "testplugins.py")]) == 0
    out = capsys.readouterr().out
    assert "Name: PIPEIN\nConfig options:\n\tVar: path (String, Default: , Mandatory)\n" in out
    assert "Name: CAPTURE\n" in out and "Name: ODDSTOP\n" in out


def test_version_and_help():
    out = subprocess.run([*PYLOGD, "-V"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and re.match(r"pylogd \d+\.\d+", out.stdout)
    out = subprocess.run([*PYLOGD, "-h"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and "--check" in out.stdout and "--configfile" in out.stdout


ULOGD_CONFIGS = [Path("/etc/ulogd.conf"), Path("/usr/share/doc/ulogd2/examples/ulogd.conf")]
ULOGD_CONFIGS += [p.with_suffix(".conf.gz") for p in ULOGD_CONFIGS[1:]]


@pytest.mark.parametrize("path", [p for p in ULOGD_CONFIGS if p.exists()] or [ULOGD_CONFIGS[0]], ids=str)
def test_ulogd_stock_configs_pass_check_unchanged(path, tmp_path, capsys):
    if not path.exists():
        pytest.skip(f"{path} missing: install Debian's ulogd2 package")
    if path.suffix == ".gz":
        import gzip

        plain = tmp_path / "ulogd.conf"
        plain.write_bytes(gzip.decompress(path.read_bytes()))
        path = plain
    assert main(["--check", "-c", str(path)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU" in out
    assert 'emu1:LOGEMU (output) file="/var/log/ulog/syslogemu.log" sync=1' in out
    assert "configuration OK" in out


def test_readme_plugin_example_loads_and_runs(tmp_path):
    """The plugin shown in the README is real: -i describes it and a daemon writes through it."""
    readme = (ROOT / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    plugin = tmp_path / "hello.py"
    plugin.write_text(code)
    out = subprocess.run([*PYLOGD, "-i", str(plugin)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("Name: HELLO\n"), out.stderr
    import signal

    from daemonkit import Daemon, read, wait_for

    d = Daemon(tmp_path, ["in1:PIPEIN,h1:HELLO"], '[h1]\ngreeting="hi"\n')
    d.conf.write_text(d.conf.read_text().replace("[global]\n", f'[global]\nplugin="{plugin}"\n'))
    d.start()
    try:
        d.send({"print": "there\n"})

        def written() -> bool:
            d.signal(signal.SIGUSR1)  # until the statistics show the event was written
            return "written=1" in read(d.log)

        wait_for(written, what="the event written")
        assert d.stop() == 0
        assert d.proc.stdout.read() == "hi there\n"
    finally:
        d.kill()


def test_info_text_gives_each_options_help(capsys):
    assert main(["-i", "LOGEMU"]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("\tVar: file (String, Default: /var/log/ulogd_syslogemu.log)")
    help_line = "\t\tfile to append the lines to; a relative path is taken from the working directory at start"
    assert lines[at + 1] == help_line


@pytest.mark.parametrize("command", [["-i", "JSON"], ["--check", "-c", "etc/pylogd.conf"], ["doctor", "--no-config"]])
def test_a_reader_that_stops_early_ends_the_output_quietly(command):
    """`pylogd doctor | head` and the like: no BrokenPipeError traceback on stderr."""
    r, w = os.pipe()
    os.close(r)  # the reader is gone before anything is written
    try:
        done = subprocess.run([*PYLOGD, *command], stdout=w, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=60)
    finally:
        os.close(w)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 1


# ---------------------------------------------------------------------------------------------
# issue 20: an internal error (a bug) at start-up shows where it happened, not only its one line

BUG_LINE = "KeyError: 'a key nobody put there'"


def broken_config(tmp_path: Path, fail_in: str) -> Path:
    """A stack with BROKEN (tests/plugins/testplugins.py), whose bug is in ``fail_in``."""
    conf = tmp_path / "broken.conf"
    conf.write_text(
        f'[global]\nlogfile="{tmp_path / "pylogd.log"}"\nplugin="{TEST_PLUGINS}"\n'
        "stack=p1:PIPEIN,b1:BROKEN,c1:CAPTURE\n"
        f'[p1]\npath="{tmp_path / "fifo"}"\n[b1]\nfail_in="{fail_in}"\n[c1]\nfile="{tmp_path / "out.json"}"\n'
    )
    return conf


@pytest.mark.parametrize(
    "args", [["--check"], [], ["-v", "--check"], ["-v"]], ids=["check", "start", "check-v", "start-v"]
)
def test_an_internal_error_in_configure_shows_its_traceback_with_v(tmp_path, args):
    """Before any log is open: one line, as for any config error, that says it is a bug; with -v the
    traceback follows it on stderr."""
    conf = broken_config(tmp_path, "configure")
    done = subprocess.run([*PYLOGD, *args, "-c", str(conf)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    first, *rest = done.stderr.splitlines()
    line = f"pylogd: {conf}:7: [b1] (BROKEN): internal error: {BUG_LINE}"
    if "-v" not in args:
        assert done.stderr == f"{line} (a bug in pylogd: -v shows its traceback)\n"
        return
    assert first == line
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == BUG_LINE, done.stderr
    assert f'File "{TEST_PLUGINS}"' in done.stderr and "in _a_bug_in_a_plugin" in done.stderr
    assert not (tmp_path / "pylogd.log").exists()


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "v"])
def test_an_internal_error_in_start_logs_its_traceback(tmp_path, verbose):
    """A plugin's bug in start(): the fatal line names the instance, the traceback follows it in the log,
    line by line.  Start-up was refused, so the held log is shown on stderr and the log file is left
    alone (it may be a running daemon's); -v echoes each line as it is logged."""
    conf = broken_config(tmp_path, "start")
    args = [*PYLOGD, *(["-v"] if verbose else []), "-c", str(conf)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    shown = [line.removeprefix("pylogd: core: ") for line in done.stderr.splitlines() if line.startswith("pylogd: ")]
    assert shown[0] == f"cannot start b1 (BROKEN): internal error: {BUG_LINE}", done.stderr
    assert shown[1] == "Traceback (most recent call last):" and shown[-1] == BUG_LINE, done.stderr
    assert any(line.endswith(", in _a_bug_in_a_plugin") for line in shown), done.stderr
    echoed = [line.split("> core: ", 1)[1] for line in done.stderr.splitlines() if "> core: " in line]
    if verbose:
        assert echoed[echoed.index(shown[0]) :][: len(shown)] == shown, done.stderr
    else:
        assert echoed == [], done.stderr
    assert not (tmp_path / "pylogd.log").exists()


def test_a_bug_of_pylogds_own_at_start_logs_its_traceback(tmp_path):
    """Outside any plugin (here Daemon.start itself): named an internal error, with its traceback."""
    conf = broken_config(tmp_path, "start")  # not reached: the core fails first
    script = (
        "import sys\nfrom pylogd import cli, daemon\n"
        "def start(self):\n    raise ZeroDivisionError('a bug in the core')\n"
        f"daemon.Daemon.start = start\nsys.exit(cli.main(['-c', {str(conf)!r}]))\n"
    )
    done = subprocess.run([*PYLOGD[:-2], "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    shown = [line.removeprefix("pylogd: core: ") for line in done.stderr.splitlines()]
    assert shown[0] == "internal error starting: ZeroDivisionError: a bug in the core", done.stderr
    assert shown[1] == "Traceback (most recent call last):" and shown[-1] == "ZeroDivisionError: a bug in the core"


def test_an_internal_error_checking_a_config_shows_its_traceback(tmp_path, monkeypatch, capsys):
    """The failure issue 20 met (a TypeError from a Cython release, in pylogd.stack): where it was."""
    import pylogd.stack

    def broken(*args, **kwargs):
        raise TypeError("Expected list, got tuple")

    monkeypatch.setattr(pylogd.stack, "_build", broken)
    conf = broken_config(tmp_path, "start")
    assert main(["-v", "--check", "-c", str(conf)]) == 1
    first, *rest = capsys.readouterr().err.splitlines()
    assert first == f"pylogd: internal error checking {conf}: TypeError: Expected list, got tuple"
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "TypeError: Expected list, got tuple"
    assert any(line.endswith(", in broken") for line in rest), rest


# ---------------------------------------------------------------------------------------------
# issue 20: -i shows how the plugin differs from ulogd 2.0.8; a file that is no plugin is said so


@pytest.mark.parametrize("name", sorted(n for n, cls in BUILTINS.items() if cls.spec.kind.value in ("input", "output")))
def test_info_shows_the_differences_from_ulogd_after_ulogds_lines(name, capsys):
    """Every input and output documents its differences in its module's docstring; -i prints that
    section after ulogd's layout (which test_info_contains_every_line_ulogd_prints checks), so the
    README's promise holds."""
    assert main(["-i", name]) == 0
    out = capsys.readouterr().out
    layout = spec_text(BUILTINS[name].spec)
    assert out.startswith(layout), out
    title, first, *rest = out[len(layout) :].splitlines()
    assert title == "Differences from ulogd 2.0.8:" and first.startswith("\t") and first.strip(), out
    assert "----" not in out and all(line.startswith("\t") or not line for line in rest), out
    assert main(["-i", name, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["differences"].splitlines()[0] == first[1:]


def test_info_on_a_file_that_is_no_plugin_says_so(capsys):
    assert main(["-i", "/etc/passwd"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pylogd: cannot load plugin /etc/passwd: not a Python file; a plugin is a .py file"), err
    assert "AssertionError" not in err and err.count("\n") == 1
