"""Live reconfiguration on a real kernel: `pylogd reload` (the control socket) during steady traffic.

Packets leave a namespace's loopback at a steady rate; nft logs each of them to two NFLOG groups.
Stack 1 reads one group alone, stacks 2 and 3 share the other's input; the two configs differ in
stack 3 only (a filter added, or its output's file).  Through 100 reloads the unchanged stacks must
lose nothing (their sockets stay: no group is bound twice, the counters never restart), and the
changed stack must write every event exactly once, whichever of its versions took it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PYLOGD, TEST_PLUGINS
from daemonkit import Daemon, daemons_fixture, read  # noqa: F401 - daemons_fixture registers `daemons`
from rig import Netns, pylogd_command, read_text, rig_fixture, wait_for  # noqa: F401 - rig_fixture registers `rig`

from pylogd.control import request

G1, G2 = 41, 42
PORT = 9999
RULES = f"""
table inet t {{
  chain output {{
    type filter hook output priority 0;
    udp dport {PORT} log group {G1}
    udp dport {PORT} log group {G2}
  }}
}}
"""
RELOADS = 100
#: the sender's pace, packets per second: steady, and light enough for the pure-Python build
RATE = 1000

SENDER = """
import os, socket, sys, time
stop, count, rate = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n, start = 0, time.monotonic()
while not os.path.exists(stop):
    s.sendto(b"n%08d" % n, ("127.0.0.1", %(port)d))
    n += 1
    ahead = n / rate - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
open(count, "w").write(str(n))
""".replace("%(port)d", str(PORT))


def write_conf(tmp: Path, stack3: str, cap3_file: str, broken: bool = False) -> Path:
    conf = tmp / "pylogd.conf"
    stacks = ["log1:NFLOG,cap1:CAPTURE", "log2:NFLOG,cap2:CAPTURE", stack3]
    if broken:
        stacks.append("log2:NFLOG,nosuch:NOSUCHPLUGIN,cap2:CAPTURE")
    lines = "\n".join(f"stack={s}" for s in stacks)
    conf.write_text(
        f'[global]\nlogfile="{tmp}/pylogd.log"\nloglevel=3\nplugin="{TEST_PLUGINS}"\n{lines}\n'
        # log2 feeds the stack that changes: each packet comes alone (qthreshold 1), so each version of
        # the stack gets the packets of its own ~20 ms.  With the kernel's batches of 100 (one every
        # 100 ms at RATE) and reloads at a steady pace, every batch could land in the same version's
        # turn, and the other version wrote nothing (seen in 2 runs of 60)
        f"[log1]\ngroup={G1}\n[log2]\ngroup={G2}\nnetlink_qthreshold=1\n"
        f'[cap1]\nfile="{tmp}/cap1.json"\n[cap2]\nfile="{tmp}/cap2.json"\n[cap3]\nfile="{tmp}/{cap3_file}"\n'
    )
    return conf


def numbers(path: Path) -> list[int]:
    """The packet numbers of a capture file, in the order written (the payload ends each packet)."""
    out = []
    for line in read_text(path).splitlines():
        pkt = bytes.fromhex(json.loads(line)["raw.pkt"])
        out.append(int(pkt[-8:]))
    return out


def reload_cli(sock: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*pylogd_command(), "reload", "-s", str(sock)], capture_output=True, text=True, timeout=60)


def run_reloads(rig, tmp_path: Path, configs: list[tuple[str, str]]) -> tuple[Netns, Path, int]:
    """Start pylogd on the first config, reload RELOADS times alternating the configs under traffic,
    then refuse a broken one; returns the namespace, the control socket and the number of packets."""
    ns = rig.netns("rl")
    ns.nft(RULES)
    sock = tmp_path / "control.sock"
    conf = write_conf(tmp_path, *configs[0])
    logfile = tmp_path / "pylogd.log"
    daemon = ns.spawn([*pylogd_command(), "-c", str(conf), "--control-socket", str(sock)], name="pylogd")
    wait_for(lambda: "entering main loop" in read_text(logfile) or not daemon.alive(), timeout=20, what="start-up")
    assert daemon.alive(), daemon.output()
    stop, count = tmp_path / "stop", tmp_path / "count"
    ns.spawn(["python3", "-c", SENDER, str(stop), str(count), str(RATE)], name="sender")
    wait_for(lambda: numbers(tmp_path / "cap1.json"), what="the first packets")
    for i in range(1, RELOADS + 1):
        write_conf(tmp_path, *configs[i % len(configs)])
        answer = request(str(sock), "reload", timeout=30)
        assert answer["reload"] == "ok", answer
        time.sleep(0.02)
    # a broken config: refused, one line says why, and the running stacks go on
    write_conf(tmp_path, *configs[RELOADS % len(configs)], broken=True)
    refused = reload_cli(sock)
    assert refused.returncode == 1, refused
    assert "reload refused" in refused.stderr and "NOSUCHPLUGIN" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    before = len(numbers(tmp_path / "cap1.json"))
    wait_for(lambda: len(numbers(tmp_path / "cap1.json")) > before + 100, what="traffic after the refusal")
    stop.touch()
    total = int(wait_for(lambda: read_text(count), what="the sender's count"))
    # the stacks that stayed are written as the packets come: wait for the last before stopping
    wait_for(lambda: len(numbers(tmp_path / "cap1.json")) >= total, timeout=20, what="every packet in cap1")
    stats = request(str(sock))
    assert daemon.stop() == 0, daemon.output()
    log = read_text(logfile)
    assert log.count(f"listening to NFLOG group {G1}") == 1, "the unchanged input was restarted"
    assert log.count(f"listening to NFLOG group {G2}") == 1, "the shared input was restarted"
    assert log.count("reload refused") == 1
    assert log.count("reloaded ") == RELOADS
    for stack in stats["stacks"]:
        assert stack["dropped"] == 0 and stack["errors"] == 0, stack
    for plugin in stats["plugins"]:
        if plugin["plugin"] == "NFLOG":
            assert plugin["received"] == total and plugin["enobufs"] == 0, plugin  # counted from the start
    return ns, sock, total


def test_100_reloads_lose_nothing_and_write_the_changed_stack_once(rig, tmp_path: Path) -> None:
    """Stack 3 gains and loses a filter: its output instance (unchanged) keeps its file and backlog."""
    configs = [("log2:NFLOG,cap3:CAPTURE", "cap3.json"), ("log2:NFLOG,base1:BASE,cap3:CAPTURE", "cap3.json")]
    _, _, total = run_reloads(rig, tmp_path, configs)
    everything = list(range(total))
    assert numbers(tmp_path / "cap1.json") == everything  # unchanged, its own input: every packet, in order
    assert numbers(tmp_path / "cap2.json") == everything  # unchanged, its input shared with the changed stack
    assert numbers(tmp_path / "cap3.json") == everything  # changed: each packet once, by one version or the other
    lines = [json.loads(line) for line in read_text(tmp_path / "cap3.json").splitlines()]
    with_base = sum("ip.saddr" in rec for rec in lines)
    assert 0 < with_base < len(lines), "both versions of stack 3 wrote"


def test_100_reloads_of_a_changed_output_write_each_event_once(rig, tmp_path: Path) -> None:
    """Stack 3's output changes file each time: the old one writes what it accepted and stops, a new
    one starts; between them, each packet once."""
    configs = [("log2:NFLOG,cap3:CAPTURE", "cap3a.json"), ("log2:NFLOG,cap3:CAPTURE", "cap3b.json")]
    _, _, total = run_reloads(rig, tmp_path, configs)
    everything = list(range(total))
    assert numbers(tmp_path / "cap1.json") == everything
    assert numbers(tmp_path / "cap2.json") == everything
    a, b = numbers(tmp_path / "cap3a.json"), numbers(tmp_path / "cap3b.json")
    assert a and b
    assert sorted(a + b) == everything


# ---------------------------------------------------------------------------------------------
# what a reload keeps, hands over and stops, on the test plugins (a FIFO input, a JSON-lines output)


def conf_with(d: Daemon, stacks: list[str], sections: str, spool_dir: Path | None = None) -> Daemon:
    """Write ``d``'s config file anew (a Daemon object writes it as it is made)."""
    d = Daemon(d.tmp, stacks, sections, d.args)
    if spool_dir is not None:
        d.conf.write_text(d.conf.read_text().replace("[global]\n", f'[global]\nspool_dir="{spool_dir}"\n', 1))
    return d


def captured(path: Path) -> list[dict]:
    return [json.loads(line) for line in read(path).splitlines()]


def reload_ok(sock: Path) -> str:
    answer = request(str(sock), "reload", timeout=30)
    assert answer["reload"] == "ok", answer
    return answer["message"]


def stack_stats(sock: Path, output: str) -> dict:
    return next(s for s in request(str(sock))["stacks"] if s["output"] == output)


@pytest.mark.parametrize("spool", [False, True], ids=["memory", "spool"])
def test_a_changed_stack_whose_output_is_kept_writes_its_backlog_once_in_order(tmp_path, daemons, spool) -> None:
    """cap1 fails while 50 events wait; a filter is added to its stack: its output instance (the
    same options) is kept with what waits, which is written first, once, when it works again."""
    sock, marker, spool_dir = tmp_path / "control.sock", tmp_path / "down", tmp_path / "spool"
    marker.touch()
    sections = f'[cap1]\nfile="{tmp_path}/cap1.json"\nfail_while="{marker}"\n[cap2]\nfile="{tmp_path}/cap2.json"\n'
    spooled = spool_dir if spool else None
    d = Daemon(tmp_path, ["in1:PIPEIN"], "", ["--control-socket", str(sock)])
    d = conf_with(d, ["in1:PIPEIN,cap1:CAPTURE", "in1:PIPEIN,cap2:CAPTURE"], sections, spooled)
    daemons.append(d.start())
    d.send(*({"test.n": n, "test.text": f"t{n}"} for n in range(50)))
    wait_for(lambda: stack_stats(sock, "cap1")["pending"] == 50, what="50 entries waiting")
    before = [n for n in os.listdir(spool_dir) if n.startswith("cap1.")] if spool else []
    conf_with(d, ["in1:PIPEIN,up1:UPPER,cap1:CAPTURE", "in1:PIPEIN,cap2:CAPTURE"], sections, spooled)
    assert "1 with the backlog of their output" in reload_ok(sock)
    assert stack_stats(sock, "cap1")["pending"] == 50
    if spool:  # renamed after the new line: a restart with this config finds it
        after = [n for n in os.listdir(spool_dir) if n.startswith("cap1.")]
        assert len(before) == len(after) == 1 and after != before
    d.send(*({"test.n": n, "test.text": f"t{n}"} for n in range(50, 100)))
    wait_for(lambda: stack_stats(sock, "cap1")["pending"] == 100, what="100 entries waiting")
    marker.unlink()
    wait_for(lambda: len(captured(tmp_path / "cap1.json")) >= 100, what="cap1 written")
    assert d.stop() == 0
    lines = captured(tmp_path / "cap1.json")
    assert [r["test.n"] for r in lines] == list(range(100))
    assert all("print" not in r for r in lines[:50]) and all(r["print"] == f"T{r['test.n']}\n" for r in lines[50:])
    assert [r["test.n"] for r in captured(tmp_path / "cap2.json")] == list(range(100))


def test_a_removed_stack_writes_what_it_accepted_and_its_output_stops(tmp_path, daemons) -> None:
    sock = tmp_path / "control.sock"
    sections = f'[cap1]\nfile="{tmp_path}/cap1.json"\n[cap2]\nfile="{tmp_path}/cap2.json"\nblocking=1\n'
    args = ["--control-socket", str(sock)]
    d = Daemon(tmp_path, ["in1:PIPEIN,cap1:CAPTURE", "in1:PIPEIN,cap2:CAPTURE"], sections, args)
    daemons.append(d.start())
    d.send(*({"test.n": n} for n in range(200)))
    wait_for(lambda: stack_stats(sock, "cap2")["events"] == 200, what="200 events accepted")
    conf_with(d, ["in1:PIPEIN,cap1:CAPTURE"], sections)
    assert "1 stacks kept, 0 started (0 with the backlog of their output), 1 stopped" in reload_ok(sock)
    assert [r["test.n"] for r in captured(tmp_path / "cap2.json")] == list(range(200))  # before the answer
    snapshot = request(str(sock))
    assert [s["output"] for s in snapshot["stacks"]] == ["cap1"]
    assert "cap2" not in {p["id"] for p in snapshot["plugins"]}
    d.send({"test.n": 200})
    wait_for(lambda: len(captured(tmp_path / "cap1.json")) == 201, what="cap1 goes on")
    assert d.stop() == 0
    assert len(captured(tmp_path / "cap2.json")) == 200


def test_a_reload_reopens_files_and_a_failing_start_is_refused(tmp_path, daemons) -> None:
    """A reload reopens as SIGHUP does (a postrotate running `systemctl reload` still rotates); a new
    plugin that cannot start refuses the reload: what started for it stops, the old config runs on."""
    sock = tmp_path / "control.sock"
    sections = f'[cap1]\nfile="{tmp_path}/cap1.json"\n[cap3]\nfile="{tmp_path}/cap3.json"\n[b1]\nfail_in="start"\n'
    d = Daemon(tmp_path, ["in1:PIPEIN,cap1:CAPTURE"], sections, ["--control-socket", str(sock)])
    daemons.append(d.start())
    d.send({"test.n": 0})
    wait_for(lambda: captured(tmp_path / "cap1.json"), what="the first event")
    (tmp_path / "cap1.json").rename(tmp_path / "cap1.json.1")
    reload_ok(sock)
    d.send({"test.n": 1})
    wait_for(lambda: captured(tmp_path / "cap1.json"), what="the reopened file")
    conf_with(d, ["in1:PIPEIN,cap1:CAPTURE", "in1:PIPEIN,b1:BROKEN,cap3:CAPTURE"], sections)
    refused = reload_cli(sock)
    assert refused.returncode == 1 and "reload refused" in refused.stderr and "cannot start b1" in refused.stderr
    assert [s["output"] for s in request(str(sock))["stacks"]] == ["cap1"]
    d.send({"test.n": 2})
    wait_for(lambda: len(captured(tmp_path / "cap1.json")) == 2, what="the old config goes on")
    conf_with(d, ["in1:PIPEIN,cap1:CAPTURE"], sections)
    ok = reload_cli(sock)
    assert ok.returncode == 0 and "reloaded" in ok.stdout, ok
    assert d.stop() == 0
    assert "internal error" in read(d.log)  # the bug's traceback is logged


def test_reload_without_a_daemon_says_so(tmp_path) -> None:
    done = reload_cli(tmp_path / "nobody.sock")
    assert done.returncode == 1 and "is pylogd running?" in done.stderr


def test_nfct_keeps_its_table_through_reloads_of_a_stack_it_feeds(rig, tmp_path: Path) -> None:
    """NFCT in hash mode feeds an unchanged stack and one that changes: ten reloads keep its socket and
    its table (no dump after the first, no resync), so the flows begun before end with their start."""
    from test_nfct import CT_RULES, flush_table, udp_from

    ns = rig.netns("rc")
    ns.nft(CT_RULES)
    sock, logfile = tmp_path / "control.sock", tmp_path / "pylogd.log"

    def write(changed: bool) -> None:
        stack2 = "ct1:NFCT,ip2str1:IP2STR,cap2:CAPTURE" if changed else "ct1:NFCT,cap2:CAPTURE"
        (tmp_path / "pylogd.conf").write_text(
            f'[global]\nlogfile="{logfile}"\nloglevel=3\nplugin="{TEST_PLUGINS}"\n'
            f"stack=ct1:NFCT,cap1:CAPTURE\nstack={stack2}\n[ct1]\nhash_enable=1\n"
            f'[cap1]\nfile="{tmp_path}/cap1.json"\n[cap2]\nfile="{tmp_path}/cap2.json"\n'
        )

    write(False)
    argv = [*pylogd_command(), "-c", str(tmp_path / "pylogd.conf"), "--control-socket", str(sock)]
    daemon = ns.spawn(argv, name="pylogd")
    wait_for(lambda: "entering main loop" in read_text(logfile) or not daemon.alive(), timeout=20, what="start-up")
    assert daemon.alive(), daemon.output()
    ports = [ns.call(udp_from, "127.0.0.1", "127.0.0.1", 9000 + i) for i in range(5)]

    def ct1() -> dict:
        return next(p for p in request(str(sock))["plugins"] if p["id"] == "ct1")

    wait_for(lambda: ct1()["hash_entries"] >= 5, what="5 flows in the table")
    for i in range(10):
        write(i % 2 == 0)
        assert request(str(sock), "reload", timeout=30)["reload"] == "ok"
    stats = ct1()
    assert stats["dumps"] == 1 and stats["resyncs"] == 0 and stats["hash_entries"] >= 5, stats
    flush_table(ns)
    for cap in ("cap1", "cap2"):

        def ended(cap: str = cap) -> list[dict]:
            recs = [json.loads(line) for line in read_text(tmp_path / f"{cap}.json").splitlines()]
            return [r for r in recs if r.get("orig.l4.sport") in ports and r["ct.event"] == 4]

        recs = wait_for(ended, what=f"the 5 flows' DESTROY in {cap}")
        assert len(recs) == 5 and all("flow.start.sec" in r for r in recs), recs
    assert daemon.stop() == 0, daemon.output()
    assert read_text(logfile).count("NFCT plugin working in hash mode") == 1


def test_a_changed_output_with_the_same_stack_line_takes_over_its_spool(tmp_path, daemons) -> None:
    """The spool is named after the output and the stack line: the output's options change, the line does
    not.  The old output gives the spool up (what waits stays there), the new one writes it, once."""
    sock, marker, spool_dir = tmp_path / "control.sock", tmp_path / "down", tmp_path / "spool"
    marker.touch()
    cap1 = f'[cap1]\nfile="{tmp_path}/cap1.json"\nfail_while="{marker}"\n'
    d = Daemon(tmp_path, ["in1:PIPEIN"], "", ["--control-socket", str(sock)])
    d = conf_with(d, ["in1:PIPEIN,cap1:CAPTURE", "in1:PIPEIN,cap2:CAPTURE"], cap1 + _CAP2.format(tmp_path), spool_dir)
    daemons.append(d.start())
    d.send(*({"test.n": n} for n in range(50)))
    wait_for(lambda: stack_stats(sock, "cap1")["spooled"] == 50, what="50 entries spooled")
    changed = cap1 + "backlog=1000\n" + _CAP2.format(tmp_path)
    conf_with(d, ["in1:PIPEIN,cap1:CAPTURE", "in1:PIPEIN,cap2:CAPTURE"], changed, spool_dir)
    assert "1 stacks kept, 1 started (0 with the backlog of their output), 1 stopped" in reload_ok(sock)
    assert stack_stats(sock, "cap1")["spooled"] == 50
    d.send(*({"test.n": n} for n in range(50, 100)))
    marker.unlink()
    wait_for(lambda: len(captured(tmp_path / "cap1.json")) >= 100, what="cap1 written")
    assert d.stop() == 0
    assert [r["test.n"] for r in captured(tmp_path / "cap1.json")] == list(range(100))
    assert [r["test.n"] for r in captured(tmp_path / "cap2.json")] == list(range(100))


_CAP2 = '[cap2]\nfile="{}/cap2.json"\n'


def test_after_detaching_a_reload_reads_relative_paths_as_the_start_did(tmp_path, daemons) -> None:
    """-d moves the daemon to /: the config's relative paths still name files in the directory it was
    started in, so an unchanged instance is kept and a new one writes there."""
    sock, pidfile = tmp_path / "control.sock", tmp_path / "pylogd.pid"
    args = ["-d", "-p", str(pidfile), "--control-socket", str(sock)]
    sections = '[emu1]\nfile="emu1.log"\n[emu2]\nfile="emu2.log"\n'
    d = Daemon(tmp_path, ["in1:PIPEIN,emu1:LOGEMU"], sections, args)
    daemons.append(d)
    d.proc = subprocess.Popen([*PYLOGD, "-c", str(d.conf), *args], cwd=tmp_path)
    assert d.proc.wait(30) == 0
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the pidfile"))
    try:
        conf_with(d, ["in1:PIPEIN,emu1:LOGEMU", "in1:PIPEIN,emu2:LOGEMU"], sections)
        assert "1 stacks kept, 1 started" in reload_ok(sock)
        d.send({"print": "after the reload\n"})
        wait_for(lambda: "after the reload" in read(tmp_path / "emu1.log"), what="emu1")
        wait_for(lambda: "after the reload" in read(tmp_path / "emu2.log"), what="emu2 where the start put emu1")
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pidfile.exists(), what="the daemon's exit")
