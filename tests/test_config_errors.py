"""Every config mistake stops start-up with one message naming file:line, the word and the valid choices."""

from __future__ import annotations

import subprocess
import textwrap

import pytest
from conftest import PYLOGD, ROOT, TEST_PLUGINS

from pylogd.cli import main

GOOD_SECTIONS = """
[in1]
path="/tmp/pylogd-test.fifo"
[cap1]
file="/tmp/pylogd-test.json"
[emu1]
file="/tmp/pylogd-test.log"
"""


def conf(global_lines: str, sections: str = GOOD_SECTIONS) -> str:
    return f'[global]\nplugin="{TEST_PLUGINS}"\n{textwrap.dedent(global_lines).strip()}\n{sections}'


STACK = "stack=in1:PIPEIN,cap1:CAPTURE"
EMU = "stack=in1:PIPEIN,emu1:LOGEMU"

# (name, config text, line, fragments the message must contain)
CASES = [
    (
        "unknown option",
        conf(EMU, GOOD_SECTIONS.replace('file="/tmp/pylogd-test.log"', "fiel=/x")),
        10,
        ['unknown option "fiel" in [emu1]', 'did you mean "file"', "valid options: file, sync"],
    ),
    (
        "unknown global option",
        conf(f"{STACK}\nlogfle=stdout"),
        4,
        ['unknown option "logfle" in [global]', 'did you mean "logfile"'],
    ),
    (
        "duplicate option",
        conf(EMU, GOOD_SECTIONS + 'file="/tmp/b"\n').replace("[emu1]\nfile", "[emu1]\nfile"),
        11,
        ['option "file" set twice in [emu1]', "first set at line 10"],
    ),
    (
        "duplicate global option",
        conf(f"{STACK}\nloglevel=3\nloglevel=5"),
        5,
        ['option "loglevel" set twice in [global]', "first set at line 4"],
    ),
    (
        "bad integer",
        conf(EMU, GOOD_SECTIONS + "sync=yes\n"),
        11,
        ['option "sync" in [emu1] (LOGEMU) needs an integer, not "yes"', "0x hex"],
    ),
    ("bad hex", conf(EMU, GOOD_SECTIONS + "sync=0xZZ\n"), 11, ['needs an integer, not "0xZZ"']),
    ("bad octal", conf(EMU, GOOD_SECTIONS + "sync=09\n"), 11, ['needs an integer, not "09"']),
    (
        "out of range",
        conf(f"{STACK}\nloglevel=9"),
        4,
        ['option "loglevel" in [global]: 9 is out of range', "valid: 1 to 8"],
    ),
    ("out of range hex", conf(f"{STACK}\nloglevel=0x10"), 4, ["16 is out of range", "valid: 1 to 8"]),
    ("negative", conf(EMU, GOOD_SECTIONS + "sync=-1\n"), 11, ["-1 is out of range", "valid: 0 to"]),
    (
        "missing mandatory",
        conf(STACK, GOOD_SECTIONS.replace('path="/tmp/pylogd-test.fifo"', "")),
        5,
        ['missing mandatory option "path" in [in1] (PIPEIN)'],
    ),
    (
        "missing section",
        conf("stack=in1:PIPEIN,emu9:LOGEMU"),
        3,
        ["no [emu9] section: LOGEMU needs one", "add [emu9] (it may be empty)"],
    ),
    (
        "unknown plugin",
        conf("stack=in1:PIPEIN,emu1:LOGEMUX"),
        3,
        ['unknown plugin "LOGEMUX"', 'did you mean "LOGEMU"', "available plugins:"],
    ),
    ("lowercase plugin", conf("stack=in1:PIPEIN,emu1:logemu"), 3, ['unknown plugin "logemu"', 'did you mean "LOGEMU"']),
    (
        "token without colon",
        conf("stack=in1PIPEIN,cap1:CAPTURE"),
        3,
        ['malformed stack token "in1PIPEIN"', "each token is id:PLUGIN"],
    ),
    ("empty token", conf("stack=in1:PIPEIN,,cap1:CAPTURE"), 3, ['malformed stack token ""']),
    ("token with two colons", conf("stack=in1:PIPEIN:X,cap1:CAPTURE"), 3, ['malformed stack token "in1:PIPEIN:X"']),
    (
        "first not input",
        conf("stack=cap1:CAPTURE,in1:PIPEIN"),
        3,
        ['first plugin in stack "cap1:CAPTURE" is a output, not an input', "input plugins:", "PIPEIN"],
    ),
    (
        "last not output",
        conf("stack=in1:PIPEIN,odd:ODDSTOP"),
        3,
        ['last plugin in stack "odd:ODDSTOP" is a filter, not an output', "output plugins:", "CAPTURE", "LOGEMU"],
    ),
    (
        "input inside",
        conf("stack=in1:PIPEIN,in2:PIPEIN,cap1:CAPTURE"),
        3,
        ['"in2:PIPEIN" is an input plugin; only filters may stand inside a stack', "filter plugins:", "ODDSTOP"],
    ),
    (
        "unresolvable key",
        conf("stack=in1:PIPEIN,nx:NEEDX,cap1:CAPTURE"),
        3,
        [
            'nx:NEEDX needs key "test.textx", which no plugin before it provides',
            'did you mean "test.text"',
            "keys available there: test.n, test.text, print",
        ],
    ),
    (
        "type mismatch",
        conf("stack=in1:PIPEIN,ws:WANTSTR,cap1:CAPTURE"),
        3,
        ['type mismatch: ws:WANTSTR reads "test.n" as STRING but in1:PIPEIN provides UINT32'],
    ),
    (
        "option before any section",
        "loglevel=3\n" + conf(STACK),
        1,
        ['option "loglevel" stands before any [section]', "start the file with [global]"],
    ),
    (
        "malformed header",
        conf(STACK, GOOD_SECTIONS.replace("[emu1]", "[emu1")),
        9,
        ["malformed section header '[emu1'"],
    ),
    ("empty header", conf(STACK, GOOD_SECTIONS + "[]\n"), 11, ["malformed section header '[]'"]),
    (
        "duplicate section",
        conf(STACK, GOOD_SECTIONS + "[emu1]\n"),
        11,
        ['section "[emu1]" appears twice', "first at line 9"],
    ),
    (
        "unterminated quote",
        conf(STACK, GOOD_SECTIONS.replace('file="/tmp/pylogd-test.log"', 'file="/tmp/x')),
        10,
        ["unterminated quote", 'close the value with "'],
    ),
    ("bare key", conf(STACK, GOOD_SECTIONS + "sync\n"), 11, ['option "sync" has no value', "write sync=VALUE"]),
    ("no global", GOOD_SECTIONS.lstrip("\n"), 1, ["no [global] section"]),
    ("no stack", conf("loglevel=3"), 1, ["no stack= line in [global]"]),
    (
        "id reused for another plugin",
        conf(f"{STACK}\nstack=in1:PIPEIN,cap1:LOGEMU"),
        4,
        ['instance id "cap1" names a LOGEMU here but a CAPTURE at', "use another id"],
    ),
    (
        "id twice in one stack",
        conf("stack=in1:PIPEIN,odd:ODDSTOP,odd:ODDSTOP,cap1:CAPTURE"),
        3,
        ['instance id "odd" appears twice in one stack'],
    ),
    ("one-plugin stack", conf("stack=in1:PIPEIN"), 3, ['stack "in1:PIPEIN" needs at least an input and an output']),
    (
        "plugin file missing",
        '[global]\nplugin="/nonexistent/x.py"\nstack=a:B,c:D\n',
        2,
        ["plugin file /nonexistent/x.py does not exist"],
    ),
    (
        "bad choice",
        conf(STACK, GOOD_SECTIONS.replace("[emu1]", 'format="yaml"\n[emu1]')),
        9,
        ['option "format" in [cap1] (CAPTURE): unknown value "yaml"', "valid choices: json, repr"],
    ),
    (
        "plugin refuses option",
        conf(STACK, GOOD_SECTIONS.replace('"/tmp/pylogd-test.fifo"', "relative.fifo")),
        6,
        ["[in1] (PIPEIN): path must be absolute"],
    ),
    (
        "ulogd plugin pylogd lacks",
        conf('plugin="/usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_NOPE.so"\nstack=in1:PIPEIN,x1:NOPE'),
        4,
        ['pylogd has no plugin "NOPE" (named by the plugin= line at', "available plugins:"],
    ),
]


@pytest.mark.parametrize(("text", "line", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_broken_config(tmp_path, capsys, text, line, fragments):
    path = tmp_path / "bad.conf"
    path.write_text(text)
    assert main(["--check", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, f"one message expected, got: {err!r}"
    assert f"{path}:{line}: " in err, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"


def test_at_least_thirty_cases():
    assert len(CASES) >= 30


def test_plugin_file_with_syntax_error(tmp_path, capsys):
    bad = tmp_path / "broken_plugin.py"
    bad.write_text("def oops(:\n")
    path = tmp_path / "c.conf"
    path.write_text(f'[global]\nplugin="{bad}"\nstack=a:B,c:D\n')
    assert main(["--check", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:2: cannot load plugin {bad}: SyntaxError" in err


def test_plugin_file_without_plugin(tmp_path, capsys):
    empty = tmp_path / "empty_plugin.py"
    empty.write_text("X = 1\n")
    path = tmp_path / "c.conf"
    path.write_text(f'[global]\nplugin="{empty}"\nstack=a:B,c:D\n')
    assert main(["--check", "-c", str(path)]) == 1
    assert "defines no plugin" in capsys.readouterr().err


def test_missing_config_file(tmp_path, capsys):
    assert main(["--check", "-c", str(tmp_path / "nope.conf")]) == 1
    assert "cannot read config file" in capsys.readouterr().err


def test_yaml_error_names_the_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(
        f"global:\n  plugin: {TEST_PLUGINS}\n  stack: in1:PIPEIN,cap1:CAPTURE\n"
        "in1:\n  path: /tmp/f\n  colour: red\ncap1:\n  file: /tmp/x\n"
    )
    assert main(["--check", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert f'{path}:6: unknown option "colour" in [in1] (PIPEIN)' in err


def test_yaml_syntax_error(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("global:\n  stack: [a:B\nx: 1\n")
    assert main(["--check", "-c", str(path)]) == 1
    assert "YAML syntax error" in capsys.readouterr().err


def test_error_exit_status_and_stderr_of_real_process(tmp_path):
    """Errors before any log is open go to stderr of the process, with exit status 1."""
    path = tmp_path / "bad.conf"
    path.write_text(conf("stack=in1:PIPEIN,emu1:LOGEMUX"))
    for extra in ([], ["--check"]):
        proc = subprocess.run([*PYLOGD, "-c", str(path), *extra], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert proc.returncode == 1
        assert f'{path}:3: unknown plugin "LOGEMUX"' in proc.stderr
        assert proc.stdout == ""
