"""Mutated configs never end in a traceback, a hang, runaway memory or a long message (issue 12).

Thousands of mutations of real configs (the shipped etc/pylogd.conf, Debian's /etc/ulogd.conf,
the configs other tests use; INI and the same models in YAML) go through the config loader and
stack building in-process; a sample goes through ``pylogd --check`` as a process with a memory
limit, and a sample of the accepted ones starts as a daemon in a network namespace, which must
stop cleanly on SIGTERM.  Every refusal is one line of at most 300 characters after its path.

The mutations are random from a seed: fixed under CI, else new each run and named in every
failure (``PYLOGD_FUZZ_SEED=N`` replays a run).  The netlink decoders have their own fuzz tests:
random, garbled and truncated NFLOG messages in tests/test_nflog.py, ctnetlink messages in
tests/test_nfct_decode.py.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import IN_CI, ROOT, TEST_PLUGINS
from rig import Netns, pylogd_command, read_text, wait_for

from pylogd.cli import describe_topology
from pylogd.config import ConfigError, load, parse_ini
from pylogd.log import Logger
from pylogd.registry import ULOGD_PLUGINS, Registry
from pylogd.stack import build

SEED = int(os.environ.get("PYLOGD_FUZZ_SEED") or (1212 if IN_CI else random.randrange(1 << 30)))
CASES = 2000  # in-process: about 1 ms each
CHECKED = 24  # through `pylogd --check` as a process
STARTED = 10  # accepted ones started in a namespace
MESSAGE_BOUND = 300  # characters of a refusal after its file name
CASE_SECONDS = 5  # one config may take this long in-process; more is a hang
CHECK_MEMORY = 1 << 30  # address space of a `pylogd --check` process
DAEMON_MEMORY = 8 << 30  # of a daemon: its read-ahead rings are address space (1 GiB each at most)

ULOGD_CONF = Path("/etc/ulogd.conf")
# the plugins a started sample may use: outputs that write only to files (SYSLOG would reach the host's
# syslog, JSON a collector), inputs that read the namespace or a file the test wrote
STARTABLE = {"NFLOG", "NFCT", "PCAPFILE", "PIPEIN", "UPPER", "ODDSTOP", "LOGEMU", "OPRINT", "CAPTURE"} | {
    name for name, cls in Registry().builtins().items() if cls.spec.kind.value == "filter"
}


# ---------------------------------------------------------------------------------------------
# seeds: real configs, their paths moved into the test's directory


def pcap_file() -> bytes:
    """A classic pcap file with one IPv4 UDP packet (PCAPFILE's seed reads it)."""
    udp = struct.pack(">HHHH", 40000, 53, 13, 0) + b"hello"
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, bytes([10, 0, 0, 1]), bytes(4))
    frame = ip + udp
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 101)  # LINKTYPE_RAW
    return header + struct.pack("<IIII", 1700000000, 0, len(frame), len(frame)) + frame


def seeds(tmp: Path) -> dict[str, str]:
    (tmp / "one.pcap").write_bytes(pcap_file())
    log = f'logfile="{tmp}/pylogd.log"'
    found = {
        "etc/pylogd.conf": (ROOT / "etc" / "pylogd.conf")
        .read_text()
        .replace("/var/log/pylogd/", f"{tmp}/")
        .replace('logfile="stdout"', log),
        "pcapfile": (
            f"[global]\n{log}\nloglevel=3\n"
            "stack=p1:PCAPFILE,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,mac1:HWHDR,print1:PRINTPKT,emu1:LOGEMU\n"
            "stack=p1:PCAPFILE,base1:BASE,ip2bin1:IP2BIN,hbin1:IP2HBIN,mark1:MARK,op1:OPRINT\n"
            f'[p1]\nfile="{tmp}/one.pcap"\nexit_at_end=1\nprefix="IN: "\nmark=0x10\nhook=2\nrate=0\n'
            f'[mark1]\nmark=0x10\nmask=0xffffffff\n[emu1]\nfile="{tmp}/pcap.log"\nsync=1\n'
            f'[op1]\nfile="{tmp}/oprint.log"\n'
        ),
        "nfct": (
            f"[global]\n{log}\nloglevel=1\n"
            "stack=ct1:NFCT,ip2str1:IP2STR,print1:PRINTFLOW,emu1:LOGEMU\n"
            "stack=ct2:NFCT,op1:OPRINT\n"
            "[ct1]\nhash_enable=1\nhash_max_entries=1024\nevent_mask=7\nnetlink_socket_buffer_size=217088\n"
            "netlink_socket_buffer_maxsize=1085440\nnetlink_resync_timeout=30\nreliable=1\n"
            'accept_src_filter="10.0.0.0/8,!10.9.0.0/16,::1/128"\naccept_proto_filter="tcp,udp,!icmp"\n'
            f'[ct2]\npollinterval=5\n[emu1]\nfile="{tmp}/flows.log"\n[op1]\nfile="{tmp}/ct.log"\nsync=0\n'
        ),
        "nflog options": (
            f"[global]\n{log}\nloglevel=5\n"
            "stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU\n"
            "[log1]\ngroup=3\nbufsize=150000\nseq_local=1\nseq_global=1\nnumeric_label=1\n"
            "netlink_qthreshold=10\nnetlink_qtimeout=100\nnetlink_backlog_size=16777216\nattach_conntrack=1\n"
            f'copy_mode="packet"\ncopy_range=128\n[emu1]\nfile="{tmp}/packets.log"\n'
        ),
        "test plugins": (
            f'[global]\n{log}\nloglevel=1\nplugin="{TEST_PLUGINS}"\n'
            "stack=in1:PIPEIN,up:UPPER,cap1:CAPTURE\n"
            "stack=in1:PIPEIN , odd:ODDSTOP , emu1:LOGEMU\n"
            f'[in1]\npath="{tmp}/fifo"\n[cap1]\nfile="{tmp}/cap.json"\nformat=repr\n'
            f"[emu1]\nfile={tmp}/emu.log\nsync=1\n"
        ),
    }
    if ULOGD_CONF.exists():
        found["/etc/ulogd.conf"] = (
            ULOGD_CONF.read_text().replace("/var/log/ulog/", f"{tmp}/").replace('logfile="syslog"', log)
        )
    for name, text in list(found.items()):
        found[f"{name} (yaml)"] = to_yaml(text)
    return found


def to_yaml(ini: str) -> str:
    """The same model in YAML: sections are mappings, plugin= and stack= lines lists."""
    raw = parse_ini("seed", ini)
    out = []
    for name, section in raw.sections.items():
        out.append(f"{json.dumps(name)}:")
        lists: dict[str, list[str]] = {}
        for entry in section.entries:
            lists.setdefault(entry.key, []).append(entry.value)
        for key, values in lists.items():
            if name == "global" and key in ("plugin", "stack"):
                out.append(f"  {key}:")
                out.extend(f"    - {json.dumps(v)}" for v in values)
            else:
                out.append(f"  {key}: {json.dumps(values[0])}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# mutations

EDGES = [
    *("-1", "0", "1", "7", "255", "65535", "65536", "2147483647", "2147483648", "4294967295", "4294967296"),
    *("0x7fffffff", "0xffffffffffffffff", "18446744073709551616", "1" + "0" * 30, "-0", "+7", "0777", "08"),
    *("0x", "", '""', '"', "yes", "a\0b", "\0", "é", "LOG_LOCAL7", "!10.0.0.0/8", "tcp,!udp", "/", "..", "stdout"),
    *("[", "]", "{", "}", "&a", "*a", "!!binary", "- x", "a: b", "#", ":", ",", "x:NFLOG"),
]
PLUGINS = sorted({*Registry().builtins(), *ULOGD_PLUGINS, "PIPEIN", "CAPTURE", "ODDSTOP", "UPPER", "NOPE"})
OPTIONS = sorted(
    {o.name for cls in Registry().builtins().values() for o in cls.spec.options}
    | {"logfile", "loglevel", "plugin", "stack", "path", "format", "blocking"}
)


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def flip(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data) or 1)
    return data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]


def delete(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data) or 1)
    return data[:i] + data[i + rng.randint(1, 40) :]


def delete_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    del lines[rng.randrange(len(lines))]
    return b"\n".join(lines)


def duplicate_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    line = rng.choice(lines)
    lines.insert(rng.randrange(len(lines) + 1), line)
    return b"\n".join(lines)


def swap_lines(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


def edge_value(rng: random.Random, data: bytes) -> bytes:
    """A value replaced by a boundary case, a huge number or a long word."""
    lines = _lines(data)
    at = [i for i, line in enumerate(lines) if b"=" in line or b": " in line]
    if not at:
        return data
    i = rng.choice(at)
    sep = b"=" if b"=" in lines[i] else b": "
    key = lines[i].split(sep, 1)[0]
    kind = rng.random()
    if kind < 0.6:
        value = rng.choice(EDGES).encode()
    elif kind < 0.8:
        value = (rng.choice(["", "0x", "-"]) + "9" * rng.choice([20, 400, 5000, 100_000])).encode()
    else:
        value = rng.choice([b"a", b"/x", b"\xc3\xa9", b"\0"]) * rng.choice([100, 4096, 4097, 50_000])
    lines[i] = key + sep + value
    return b"\n".join(lines)


def long_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    unit = rng.choice([b"x", b"a=", b"[", b"stack=a:NFLOG,", b"# ", b"\t", b"\xff", b"k: v, "])
    lines.insert(rng.randrange(len(lines) + 1), unit * rng.choice([300, 5000, 60_000]))
    return b"\n".join(lines)


def nul(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + b"\0" * rng.randint(1, 3) + data[i:]


def nesting(rng: random.Random, data: bytes) -> bytes:
    """Deep nesting: YAML flow collections in a value, or brackets opening an INI line."""
    depth = rng.choice([10, 200, 600, 5000])
    opener, closer = rng.choice([(b"[", b"]"), (b"{a: ", b"}"), (b"- ", b"")])
    lines = _lines(data)
    i = rng.randrange(len(lines))
    nested = opener * depth + b"x" + closer * depth
    if b": " in lines[i]:
        lines[i] = lines[i].split(b": ", 1)[0] + b": " + nested
    else:
        lines.insert(i, nested)
    return b"\n".join(lines)


def swap_plugin(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    at = [i for i, line in enumerate(lines) if b"stack" in line and b":" in line]
    if not at:
        return data
    i = rng.choice(at)
    parts = lines[i].split(b",")
    j = rng.randrange(len(parts))
    head = parts[j].rsplit(b":", 1)[0]
    parts[j] = head + b":" + rng.choice(PLUGINS).encode()
    lines[i] = b",".join(parts)
    return b"\n".join(lines)


def add_option(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    at = [i for i, line in enumerate(lines) if line.startswith(b"[") or (line.endswith(b":") and line[:1] != b" ")]
    if not at:
        return data
    i = rng.choice(at)
    name, value = rng.choice(OPTIONS), rng.choice([*EDGES, "1", "0", "3"])
    line = f"{name}={value}" if lines[i].startswith(b"[") else f"  {name}: {json.dumps(value)}"
    lines.insert(i + 1, line.encode())
    return b"\n".join(lines)


def indent(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i = rng.randrange(len(lines))
    lines[i] = lines[i].lstrip() if rng.random() < 0.5 else b" " * rng.randint(1, 6) + lines[i]
    return b"\n".join(lines)


MUTATIONS = [
    flip,
    delete,
    delete_line,
    duplicate_line,
    swap_lines,
    edge_value,
    edge_value,
    long_line,
    nul,
    nesting,
    swap_plugin,
    add_option,
    add_option,
    indent,
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        data = rng.choice(MUTATIONS)(rng, data)
    return data


# ---------------------------------------------------------------------------------------------
# running one config


@dataclass
class Outcome:
    path: Path
    accepted: bool
    lines: list[str]  # what the command line would print on stderr
    plugins: set[str]
    files: list[tuple[str, str]]  # (plugin, path) of every file, path and logfile option when accepted
    nflog_instances: int = 0
    origin: str = ""  # the seed it is a mutation of
    netns: bool = False  # an input reads another network namespace: one the test did not make


def assert_one_line(line: str, path: Path, context: str) -> None:
    assert "\n" not in line and "\r" not in line, f"{context}: a message of several lines: {line[:500]!r}"
    assert len(line) - len(str(path)) <= MESSAGE_BOUND, f"{context}: {len(line)} characters: {line[:500]!r}"
    assert "internal error" not in line, f"{context}: {line}"


class _Hang(Exception):
    pass


def _alarm(_signum: int, _frame: object) -> None:
    raise _Hang


def in_process(path: Path, context: str) -> Outcome:
    """What `pylogd --check` does, without a process: load, build, describe."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        raw = load(str(path))
        topology = build(raw, Registry(), Logger)
        describe_topology(topology)
    except ConfigError as exc:
        line = f"pylogd: {exc}"
        assert_one_line(line, path, context)
        return Outcome(path, False, [line], set(), [])
    except _Hang:
        raise AssertionError(f"{context}: no verdict after {CASE_SECONDS} s") from None
    except Exception as exc:
        raise AssertionError(f"{context}: {type(exc).__name__}: {str(exc)[:300]}") from exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    lines = [f"pylogd: warning: {loc}: {warning}" for loc, warning in raw.warnings]
    for line in lines:
        assert_one_line(line, path, context)
    files = [("global", str(topology.global_options["logfile"]))]
    files += [
        (i.spec.name, str(i.plugin.options[k]))
        for i in topology.instances.values()
        for k in ("file", "path")
        if k in i.plugin.options
    ]
    return Outcome(
        path,
        True,
        lines,
        {i.spec.name for i in topology.instances.values()},
        files,
        sum(i.spec.name == "NFLOG" for i in topology.instances.values()),
        netns=any(i.plugin.options.get("netns") for i in topology.instances.values()),
    )


def _limit(size: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (size, size))

    return apply


def check_process(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*pylogd_command(), "--check", "-c", str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        cwd=ROOT,
        timeout=60,
        preexec_fn=_limit(CHECK_MEMORY),
    )


# ---------------------------------------------------------------------------------------------
# the tests


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Outcome]]:
    """Every mutated config run in-process: the outcomes (the tests below sample them)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    rng = random.Random(SEED)
    bases = {name: text.encode() for name, text in seeds(tmp).items()}
    outcomes = []
    for n in range(CASES):
        name = rng.choice(sorted(bases))
        suffix = ".yaml" if name.endswith("(yaml)") else ".conf"
        path = tmp / f"case{n}{suffix}"
        path.write_bytes(mutate(rng, bases[name]))
        outcome = in_process(path, f"seed {SEED}, case {n} (from {name}, kept at {path})")
        outcome.origin = name
        outcomes.append(outcome)
    return tmp, outcomes


def test_seeds_are_accepted(tmp_path: Path) -> None:
    """The unmutated configs pass: refusals below come from the mutations."""
    for name, text in seeds(tmp_path).items():
        path = tmp_path / ("seed.yaml" if name.endswith("(yaml)") else "seed.conf")
        path.write_text(text)
        outcome = in_process(path, name)
        assert outcome.accepted, (name, outcome.lines)


def test_mutated_configs_in_process(fuzzed: tuple[Path, list[Outcome]]) -> None:
    """Every mutation ended in a verdict (in_process fails the fixture otherwise); both kinds occur."""
    _tmp, outcomes = fuzzed
    accepted = sum(o.accepted for o in outcomes)
    assert len(outcomes) == CASES
    assert CASES // 20 < accepted < CASES - CASES // 20, f"seed {SEED}: {accepted} of {CASES} accepted"


def test_mutated_configs_through_check(fuzzed: tuple[Path, list[Outcome]]) -> None:
    """A sample as `pylogd --check` processes with 1 GiB of address space and a timeout: the same
    verdict as in-process, every stderr line one bounded `pylogd:` line, no traceback."""
    _tmp, outcomes = fuzzed
    rng = random.Random(SEED + 1)
    sample = rng.sample([o for o in outcomes if o.accepted], CHECKED // 3)
    sample += rng.sample([o for o in outcomes if not o.accepted], CHECKED - len(sample))
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda o: check_process(o.path), sample))
    for outcome, proc in zip(sample, results, strict=True):
        context = f"seed {SEED}: pylogd --check -c {outcome.path}"
        assert "Traceback" not in proc.stderr, f"{context}:\n{proc.stderr[-3000:]}"
        assert proc.returncode == (0 if outcome.accepted else 1), f"{context}: {proc.returncode} {proc.stderr[-500:]}"
        lines = proc.stderr.splitlines()
        assert lines == outcome.lines, context
        for line in lines:
            assert line.startswith("pylogd: "), f"{context}: {line[:300]!r}"


def _startable(tmp: Path, o: Outcome) -> bool:
    """Whether a config can start whatever it says: its files are distinct, new and in the test's
    directory, its pcap file is the one the seed wrote, one NFLOG instance at most (two cannot
    bind one group), no input reading a network namespace by name (it exists nowhere here).  Other start
    failures are the environment's, not the config's."""
    paths = [path for _plugin, path in o.files]
    return (
        o.accepted
        and o.plugins <= STARTABLE
        and o.nflog_instances <= 1
        and not o.netns
        and len(set(paths)) == len(paths)
        and all(os.path.dirname(p) == str(tmp) and not os.path.basename(p).startswith("case") for p in paths)
        and all(path == f"{tmp}/one.pcap" for plugin, path in o.files if plugin == "PCAPFILE")
    )


def _fresh(tmp: Path) -> None:
    """Only the configs and the seed's pcap file, as the fixture wrote them."""
    for path in tmp.iterdir():
        if not path.name.startswith("case"):
            path.unlink()
    (tmp / "one.pcap").write_bytes(pcap_file())


def test_accepted_configs_start_and_stop_in_a_namespace(fuzzed: tuple[Path, list[Outcome]], netns: Netns) -> None:
    """A sample of the accepted configs runs as a daemon (memory limited): it reaches its main loop
    or ends on its own with 0 (a PCAPFILE with exit_at_end), and SIGTERM ends it with 0, no traceback."""
    tmp, outcomes = fuzzed
    rng = random.Random(SEED + 2)
    candidates = [o for o in outcomes if _startable(tmp, o)]
    assert len(candidates) >= STARTED, f"seed {SEED}: only {len(candidates)} startable configs"
    limit = f"resource.setrlimit(resource.RLIMIT_AS, ({DAEMON_MEMORY}, {DAEMON_MEMORY}))"
    wrapper = f"import os, resource, sys; {limit}; os.execv(sys.argv[1], sys.argv[1:])"
    rng.shuffle(candidates)
    # one of each seed first: Debian's long config takes most mutations in its comments
    picked = list({o.origin: o for o in reversed(candidates)}.values())[:STARTED]
    picked += [o for o in candidates if o not in picked][: STARTED - len(picked)]
    for outcome in picked:
        _fresh(tmp)
        logfile = Path(dict(outcome.files)["global"])
        command = [sys.executable, "-c", wrapper, *pylogd_command()]
        proc = netns.spawn([*command, "-c", str(outcome.path), "-l", "3"], name="pylogd")
        context = f"seed {SEED}: pylogd -c {outcome.path}"
        wait_for(
            lambda log=logfile, p=proc: "entering main loop" in read_text(log) or not p.alive(),
            timeout=30,
            what=f"{context} to start",
        )
        time.sleep(0.2)  # let it run a little: a pcap file is read, a dump is taken
        status = proc.stop(timeout=20)
        text = read_text(logfile) + proc.output()
        assert status == 0, f"{context}: exit {status}\n{text[-3000:]}"
        assert "Traceback" not in text, f"{context}:\n{text[-3000:]}"
