"""The ulogd.conf grammar, YAML equivalence, key resolution and per-event record handling."""

from __future__ import annotations

import json

import pytest
from conftest import TEST_PLUGINS

from pylogd.cli import describe_topology
from pylogd.config import load, parse_ini, parse_int
from pylogd.log import Logger
from pylogd.plugin import Input
from pylogd.registry import Registry
from pylogd.stack import InputFeed, Stack, build


def topology_of(tmp_path, text: str, name: str = "c.conf"):
    path = tmp_path / name
    path.write_text(text)
    return build(load(str(path)), Registry(), Logger)


def test_ulogd_grammar_variants():
    text = (
        "# comment\n"
        "[global]\n"
        "loglevel = 3\n"
        "stack=a:X, b:Y ,c:Z   # trailing comment\n"
        "[ emu1 ]\n"
        'file "/var/log/with space # and hash=.log"\n'
        "sync=0x1 # ulogd reads only the first word\n"
        "  # indented comment\n"
        "mask 017\n"
        'empty=""\n'
        "last=1"  # no newline at the end
    )
    raw = parse_ini("t.conf", text)
    g = raw.sections["global"].entries
    assert [(e.key, e.value, e.loc.line) for e in g] == [("loglevel", "3", 3), ("stack", "a:X, b:Y ,c:Z", 4)]
    emu = {e.key: e.value for e in raw.sections["emu1"].entries}
    assert emu == {
        "file": "/var/log/with space # and hash=.log",
        "sync": "0x1",
        "mask": "017",
        "empty": "",
        "last": "1",
    }
    assert raw.warnings == []


def test_text_after_value_is_a_warning():
    raw = parse_ini("t.conf", "[global]\nloglevel=3 junk\n")
    assert raw.warnings and raw.warnings[0][0].line == 2 and "junk" in raw.warnings[0][1]


@pytest.mark.parametrize(("text", "value"), [("10", 10), ("0x1f", 31), ("0X1F", 31), ("017", 15), ("0", 0), ("-1", -1)])
def test_integers_as_strtoul(text, value):
    assert parse_int(text) == value


@pytest.mark.parametrize("text", ["1_000", "0xf_f", "\u0661\u0662", "--1", "0x", "09", "1e3", "0x 1"])
def test_integers_are_ascii_digits_only(text):
    """int() also takes underscores and any script's digits; strtoul takes neither."""
    with pytest.raises(ValueError):
        parse_int(text)


def test_integer_with_more_digits_than_64_bits_overflows_without_converting():
    with pytest.raises(OverflowError):
        parse_int("9" * 100_000)  # int() would refuse it with a ValueError about its digit limit
    assert parse_int("0" * 100_000 + "17") == 0o17  # leading zeros: octal, as strtoul reads it


def conf_text(tmp_path) -> str:
    return (
        f'[global]\nloglevel=1\nplugin="{TEST_PLUGINS}"\n'
        "stack=in1:PIPEIN,up:UPPER,cap1:CAPTURE\n"
        "stack=in1:PIPEIN , odd:ODDSTOP , emu1:LOGEMU\n"
        f'[in1]\npath="{tmp_path}/fifo"\n[cap1]\nfile="{tmp_path}/cap.json"\nformat=repr\n'
        f"[emu1]\nfile={tmp_path}/emu.log\nsync=1\n"
    )


def test_yaml_gives_identical_stacks(tmp_path):
    ini = topology_of(tmp_path, conf_text(tmp_path))
    yaml_text = f"""
global:
  loglevel: 1
  plugin: {TEST_PLUGINS}
  stack:
    - in1:PIPEIN,up:UPPER,cap1:CAPTURE
    - [in1:PIPEIN, odd:ODDSTOP, emu1:LOGEMU]
in1:
  path: "{tmp_path}/fifo"
cap1:
  file: {tmp_path}/cap.json
  format: repr
emu1:
  file: {tmp_path}/emu.log
  sync: 0x1
"""
    yml = topology_of(tmp_path, yaml_text, "c.yaml")

    def shape(topo):  # the text without locations and the stack line's spacing
        return [line.split(": ", 1)[-1].replace(" ", "") for line in describe_topology(topo).splitlines()]

    assert shape(ini) == shape(yml)
    assert yml.instances["emu1"].plugin.options["sync"] == 1


def test_nearest_source_wins_and_optional_stays_unresolved(tmp_path):
    topo = topology_of(tmp_path, conf_text(tmp_path))
    plan = topo.stacks[0]
    # UPPER outputs print too: CAPTURE's wildcard print must come from UPPER (nearest), not PIPEIN
    assert plan.sources[2]["print"] == "up"
    assert plan.sources[1] == {"test.text": "in1"}
    up_slots = plan.slots[1]
    assert up_slots.inp("test.absent") is None
    names = [k.name for k, _ in plan.slots[2].wildcard]
    assert names == ["test.n", "test.text", "print", "oob.time.sec", "oob.mark", "oob.family"]
    print_slot = dict((k.name, i) for k, i in plan.slots[2].wildcard)["print"]
    assert print_slot == up_slots.out("print")


def test_one_input_instance_feeds_every_stack(tmp_path):
    topo = topology_of(tmp_path, conf_text(tmp_path))
    assert topo.stacks[0].instances[0] is topo.stacks[1].instances[0]
    assert isinstance(topo.instances["in1"].plugin, Input)


class _Collect(list):
    pass


@pytest.mark.parametrize("how", ["emit", "emit_keys"])
def test_records_are_per_stack_and_nothing_leaks(tmp_path, how):
    topo = topology_of(tmp_path, conf_text(tmp_path))
    for inst in topo.instances.values():
        if inst.spec.kind.value == "output":
            inst.plugin.start(None)
    stacks = [Stack(plan, Logger("t")) for plan in topo.stacks]
    feed = InputFeed(topo.instances["in1"].plugin, stacks)
    preallocated = [id(s.values) for s in stacks]
    names = [k.name for k in topo.instances["in1"].plugin.spec.outputs]

    def event(**keys: object) -> None:
        keys = {name.replace("_", "."): value for name, value in keys.items()}
        if how == "emit":  # the input writes its slots
            for name, value in keys.items():
                feed.values[feed.slot(name)] = value
            feed.emit()
        else:  # the input hands over all its keys at once
            feed.emit_keys(tuple(keys.get(name) for name in names))

    event(test_n=1, test_text="first", print="p1\n")
    event(test_n=2)  # no text, no print this time: nothing of event 1 may show up
    feed.flush()
    assert [s.events for s in stacks] == [2, 2]
    assert [id(s.values) for s in stacks] == preallocated
    assert all(v is None for s in stacks for v in s.values)
    cap_lines = (tmp_path / "cap.json").read_text().splitlines()
    assert cap_lines == [
        repr([("test.n", 1), ("test.text", "first"), ("print", "FIRST\n")]),
        repr([("test.n", 2)]),
    ]
    # stack 2 stopped the odd event and wrote nothing for the even one (it had no print)
    assert stacks[1].statistics()["stopped"] == 1
    assert stacks[1].statistics()["written"] == 0
    assert not (tmp_path / "emu.log").read_text()


def test_failing_filter_is_counted_not_fatal(tmp_path):
    topo = topology_of(tmp_path, conf_text(tmp_path))
    topo.instances["cap1"].plugin.start(None)
    topo.instances["emu1"].plugin.start(None)
    stacks = [Stack(plan, Logger("t")) for plan in topo.stacks]
    feed = InputFeed(topo.instances["in1"].plugin, stacks)
    feed.values[feed.slot("test.text")] = 42  # not a string: UPPER raises
    feed.values[feed.slot("test.n")] = 2
    feed.emit()
    feed.flush()
    assert stacks[0].statistics()["errors"] == 1
    assert stacks[0].statistics()["written"] == 0


def test_check_prints_effective_options(tmp_path, capsys):
    from pylogd.cli import main

    path = tmp_path / "c.conf"
    path.write_text(conf_text(tmp_path))
    assert main(["--check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert f'emu1:LOGEMU (output) file="{tmp_path}/emu.log" sync=1' in out
    assert "cap1:CAPTURE (output) file=" in out and 'fail_while="" blocking=0 format="repr"' in out
    assert "reads test.text<-in1" in out
    assert "2 stack(s), 5 instance(s): configuration OK" in out
    assert not (tmp_path / "fifo").exists(), "--check must open nothing"


def test_wildcard_json_safe(tmp_path):
    topo = topology_of(tmp_path, conf_text(tmp_path).replace("format=repr\n", ""))
    topo.instances["cap1"].plugin.start(None)
    topo.instances["emu1"].plugin.start(None)
    stacks = [Stack(plan, Logger("t")) for plan in topo.stacks]
    feed = InputFeed(topo.instances["in1"].plugin, stacks)
    feed.values[feed.slot("test.n")] = 4
    feed.values[feed.slot("print")] = "x\n"
    feed.values[feed.slot("test.text")] = "é"
    feed.emit()
    feed.flush()
    assert json.loads((tmp_path / "cap.json").read_text()) == {"test.n": 4, "test.text": "é", "print": "É\n"}
    assert (tmp_path / "emu.log").read_text().endswith(" x\n")


def test_stack_knows_which_input_keys_are_read(tmp_path):
    """An input may skip making keys no plugin of its stacks reads (InputFeed.used); a wildcard
    output reads all."""
    text = (
        "[global]\nstack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU\n"
        "stack=log2:NFLOG,op1:OPRINT\n"
        "[log2]\ngroup=2\n[emu1]\n[op1]\n"
    )
    topo = topology_of(tmp_path, text)
    keys = [k.name for k in topo.instances["log1"].plugin.spec.outputs]
    read = {keys[slot] for slot in topo.stacks[0].reads() if slot < len(keys)}
    assert {"raw.pkt", "oob.family", "raw.mac", "oob.ifindex_in", "oob.prefix"} <= read  # BASE, PRINTPKT, IFINDEX
    assert not {"raw", "raw.mac.saddr", "ct", "oob.seq.local"} & read
    assert set(range(len(keys))) <= topo.stacks[1].reads()
