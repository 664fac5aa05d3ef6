"""``pylogd doctor`` in throwaway namespaces: each kernel switch on and off, a group held by another
listener, groups with and without a rule feeding them, nf_log bindings, ``--fix``.

Every switch changed here is changed inside a namespace the test made (the conntrack switches and
nf_log bindings are per namespace); the host's are only read, and checked to be unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rig import Netns, Rig, pylogd_command, read_text, start_pylogd, wait_for

from pylogd import doctor

NFLOG_STACK = "log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU"
NFCT_STACK = "ct1:NFCT,ip2str2:IP2STR,print2:PRINTFLOW,emu2:LOGEMU"


def write_conf(tmp_path: Path, nflog: str | None = None, nfct: str | None = None) -> Path:
    """A config with an NFLOG stack (``nflog``: the [log1] section's body) and/or an NFCT one."""
    parts = ["[global]", f'logfile="{tmp_path}/pylogd.log"', "loglevel=3"]
    if nflog is not None:
        parts.append(f"stack={NFLOG_STACK}")
    if nfct is not None:
        parts.append(f"stack={NFCT_STACK}")
    if nflog is not None:
        parts += ["[log1]", nflog, "[emu1]", f'file="{tmp_path}/packets.log"']
    if nfct is not None:
        parts += ["[ct1]", nfct, "[emu2]", f'file="{tmp_path}/flows.log"']
    conf = tmp_path / "pylogd.conf"
    conf.write_text("\n".join(parts) + "\n")
    return conf


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    """``pylogd doctor ARGS --json`` in this process: (exit code, the JSON document)."""
    code = doctor.main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def only(doc: dict[str, Any], check: str) -> dict[str, Any]:
    """The one finding whose check starts with ``check``."""
    found = [f for f in doc["findings"] if f["check"].startswith(check)]
    assert len(found) == 1, f"{check!r}: {found or doc['findings']}"
    return found[0]


def sysctl(ns: Netns, name: str, value: str | None = None) -> str:
    """Read (or set, then read) a sysctl inside the namespace."""
    if value is not None:
        ns.run(["sysctl", "-q", "-w", f"{name}={value}"])
    return ns.run(["sysctl", "-n", name]).stdout.strip()


def host_sysctl(name: str) -> str:
    return Path(doctor.sysctl_path(name)).read_text().strip()


def pylogd_doctor(*args: str) -> subprocess.CompletedProcess[str]:
    """The real ``pylogd doctor`` as a process."""
    return subprocess.run([*pylogd_command(), "doctor", *args], capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------------------------------
# conntrack switches


@pytest.mark.parametrize(
    ("name", "bad", "bad_state", "good"),
    [
        ("net.netfilter.nf_conntrack_acct", "0", "warn", "1"),
        ("net.netfilter.nf_conntrack_timestamp", "0", "warn", "1"),
        ("net.netfilter.nf_conntrack_events", "0", "fail", "1"),
        ("net.netfilter.nf_conntrack_events", "2", "warn", "1"),
    ],
)
def test_conntrack_switch_off_is_reported_with_its_fix_and_on_is_ok(
    netns: Netns, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, bad: str, bad_state: str, good: str
) -> None:
    conf = write_conf(tmp_path, nfct="hash_enable=0")
    sysctl(netns, name, bad)
    code, doc = run(capsys, "-c", str(conf), "--netns", netns.name)
    f = only(doc, name)
    assert (f["state"], f["netns"]) == (bad_state, netns.name)
    assert f["fix"] == f"ip netns exec {netns.name} sysctl -w {name}={good}"
    assert "[ct1]" in f["detail"]
    assert code == (1 if bad_state == "fail" else 0)

    sysctl(netns, name, good)
    code, doc = run(capsys, "-c", str(conf), "--netns", netns.name)
    f = only(doc, name)
    assert (f["state"], f["fix"]) == ("ok", None)
    assert code == 0


def test_events_off_is_fine_for_a_polling_nfct(
    netns: Netns, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sysctl(netns, "net.netfilter.nf_conntrack_events", "0")
    polling = write_conf(tmp_path, nfct="pollinterval=10")
    code, doc = run(capsys, "-c", str(polling), "--netns", netns.name)
    assert only(doc, "net.netfilter.nf_conntrack_events")["state"] == "ok"
    assert code == 0
    events = write_conf(tmp_path, nfct="hash_enable=1")
    code, doc = run(capsys, "-c", str(events), "--netns", netns.name)
    assert only(doc, "net.netfilter.nf_conntrack_events")["state"] == "fail"
    assert code == 1


def test_a_config_without_nfct_skips_the_conntrack_switches(
    netns: Netns, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sysctl(netns, "net.netfilter.nf_conntrack_acct", "0")
    _code, doc = run(capsys, "-c", str(write_conf(tmp_path, nflog="group=7")), "--netns", netns.name)
    assert not [f for f in doc["findings"] if "nf_conntrack_acct" in f["check"]]
    _code, doc = run(capsys, "--no-config", "--netns", netns.name)
    assert only(doc, "net.netfilter.nf_conntrack_acct")["state"] == "warn"


def test_conntrack_off_until_a_rule_needs_it_and_the_fix_turns_it_on(
    netns: Netns, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("-c", str(write_conf(tmp_path, nfct="hash_enable=0")), "--netns", netns.name)
    count = "net.netfilter.nf_conntrack_count"
    netns.send_udp("127.0.0.1", 9)
    assert sysctl(netns, count) == "0"  # the premise: a fresh namespace tracks nothing
    _code, doc = run(capsys, *args)
    f = only(doc, "conntrack in use")
    assert f["state"] == "warn" and "NFCT [ct1] receives nothing" in f["detail"]
    assert f["fix"].startswith(f"ip netns exec {netns.name} nft '")

    subprocess.run(f["fix"], shell=True, check=True)
    netns.send_udp("127.0.0.1", 9)
    assert int(sysctl(netns, count)) > 0  # the suggested rule does turn tracking on
    _code, doc = run(capsys, *args)
    f = only(doc, "conntrack in use")
    assert f["state"] == "ok" and "nft inet pylogd conntrack" in f["detail"]


def test_nat_chains_and_iptables_state_matches_count_as_conntrack_users() -> None:
    rules = doctor.Ruleset()
    doc = {
        "nftables": [{"chain": {"family": "ip", "table": "nat", "name": "post", "type": "nat", "hook": "postrouting"}}]
    }
    doctor.parse_nft_json(doc, rules)
    doctor.parse_iptables_save("*filter\n-A INPUT -m conntrack --ctstate NEW -j ACCEPT\nCOMMIT\n", "ipt", rules)
    doctor.parse_iptables_save("*filter\n-A INPUT -p tcp -j ACCEPT\nCOMMIT\n", "ipt6", rules)
    assert rules.conntrack == ["nft ip nat post (a nat chain)", "ipt -t filter INPUT"]


# ---------------------------------------------------------------------------------------------
# NFLOG groups held by another listener

HOLD = """
import sys, time
from pylogd.nflog import NflogSocket
sock = NflogSocket(group=int(sys.argv[1]))
print("bound", flush=True)
time.sleep(600)
"""


def test_group_bound_by_another_process_fails_naming_it(rig: Rig, netns: Netns, tmp_path: Path) -> None:
    conf = write_conf(tmp_path, nflog="group=7")
    holder = netns.spawn([sys.executable, "-c", HOLD, "7"], name="holder")
    wait_for(lambda: "bound" in read_text(holder.stdout) or not holder.alive(), what="the other listener")
    assert holder.alive(), holder.output()

    res = pylogd_doctor("-c", str(conf), "--netns", netns.name)
    assert res.returncode == 1, res.stdout + res.stderr
    line = next(x for x in res.stdout.splitlines() if "NFLOG group 7 [log1]" in x)
    assert line.startswith(f"fail  [netns {netns.name}] NFLOG group 7 [log1]: already bound by another listener")
    assert f"pid {holder.pid} (python" in line
    assert line.endswith(f"fix: kill {holder.pid}")
    assert res.stdout.splitlines()[-1].endswith("1 failure(s)")

    holder.stop()
    res = pylogd_doctor("-c", str(conf), "--netns", netns.name)
    line = next(x for x in res.stdout.splitlines() if "NFLOG group 7 [log1]" in x)
    assert line.startswith("ok ") and "not bound" in line
    assert res.returncode == 0, res.stdout


def test_group_bound_by_a_socket_of_this_process(
    netns: Netns, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pylogd.nflog import NflogSocket

    conf = write_conf(tmp_path, nflog="group=9")
    with NflogSocket(group=9, netns=netns.name):
        code, doc = run(capsys, "-c", str(conf), "--netns", netns.name)
    f = only(doc, "NFLOG group 9")
    assert f["state"] == "fail"
    assert f"pid {os.getpid()} (" in f["detail"]
    assert code == 1


def test_group_held_by_a_running_pylogd_is_ok(rig: Rig, netns: Netns, tmp_path: Path) -> None:
    conf = write_conf(tmp_path, nflog="group=11")
    daemon = start_pylogd(netns, conf, tmp_path / "pylogd.log")
    res = pylogd_doctor("-c", str(conf), "--netns", netns.name, "--json")
    f = only(json.loads(res.stdout), "NFLOG group 11")
    assert f["state"] == "ok"
    assert f"pid {daemon.pid} (" in f["detail"] and "a running pylogd reads it" in f["detail"]


def test_an_inputs_own_netns_is_checked_there(netns: Netns, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pylogd.nflog import NflogSocket

    conf = write_conf(tmp_path, nflog=f"group=13\nnetns={netns.name}")
    with NflogSocket(group=13, netns=netns.name):
        code, doc = run(capsys, "-c", str(conf))  # no --netns: the input's own namespace
    f = only(doc, "NFLOG group 13")
    assert (f["state"], f["netns"]) == ("fail", netns.name)
    assert code == 1


# ---------------------------------------------------------------------------------------------
# rules feeding the configured groups


def test_a_configured_group_no_rule_feeds_warns_until_a_rule_does(
    netns: Netns, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_conf(tmp_path, nflog="group=7")
    args = ("-c", str(conf), "--netns", netns.name)
    code, doc = run(capsys, *args)
    f = only(doc, "rules for NFLOG group 7")
    assert f["state"] == "warn" and "no rule logs to group 7" in f["detail"]
    assert f["fix"].startswith(f"ip netns exec {netns.name} nft '") and f["fix"].endswith("log group 7'")
    assert code == 0  # a warning alone

    # rules for other groups do not count, and a group nothing reads is a finding of its own
    netns.nft(
        'table inet t {\n chain input {\n type filter hook input priority 0;\n log group 8\n log prefix "k"\n }\n}\n'
    )
    _code, doc = run(capsys, *args)
    assert only(doc, "rules for NFLOG group 7")["state"] == "warn"
    unread = only(doc, "rules for NFLOG group 8")
    assert unread["state"] == "warn" and "nothing reads" in unread["detail"]
    assert "1 `log` statement(s) without a group" in only(doc, "rules logging to the kernel log")["detail"]

    # the suggested command is the fix: it uses the existing input chain
    fix = only(doc, "rules for NFLOG group 7")["fix"]
    assert fix == f"ip netns exec {netns.name} nft add rule inet t input log group 7"
    subprocess.run(fix, shell=True, check=True)
    _code, doc = run(capsys, *args)
    f = only(doc, "rules for NFLOG group 7")
    assert f["state"] == "ok" and "nft inet t input" in f["detail"]


def test_iptables_nflog_rules_feed_groups_too(netns: Netns, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not shutil.which("iptables-legacy"):
        pytest.skip("iptables is not installed (scripts/test-deps installs it)")
    conf = write_conf(tmp_path, nflog="group=22")
    args = ("-c", str(conf), "--netns", netns.name)
    _code, doc = run(capsys, *args)
    assert only(doc, "rules for NFLOG group 22")["state"] == "warn"
    # legacy tables are invisible to nft: iptables-legacy-save tells
    netns.run(["iptables-legacy", "-A", "INPUT", "-p", "tcp", "-j", "NFLOG", "--nflog-group", "22"])
    netns.run(["ip6tables-legacy", "-A", "FORWARD", "-j", "NFLOG"])
    _code, doc = run(capsys, *args)
    f = only(doc, "rules for NFLOG group 22")
    assert f["state"] == "ok" and "iptables-legacy-save -t filter INPUT" in f["detail"]
    unread = only(doc, "rules for NFLOG group 0")
    assert unread["state"] == "warn" and "ip6tables-legacy-save -t filter FORWARD" in unread["detail"]
    # iptables-nft's NFLOG is an nft `log group`: counted once, as the nft rule
    netns.run(["iptables-nft", "-A", "INPUT", "-j", "NFLOG", "--nflog-group", "24"])
    _code, doc = run(capsys, "-c", str(write_conf(tmp_path, nflog="group=24")), "--netns", netns.name)
    assert only(doc, "rules for NFLOG group 24")["detail"] == "fed by 1 rule(s): nft ip filter INPUT (handle 2)"


# ---------------------------------------------------------------------------------------------
# nf_log bindings


def test_nf_log_binding_none_vs_nfnetlink_log(netns: Netns, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    group0 = write_conf(tmp_path, nflog="group=0")
    args = ("-c", str(group0), "--netns", netns.name)
    netns.run("echo NONE > /proc/sys/net/netfilter/nf_log/2")
    _code, doc = run(capsys, *args)
    f = only(doc, "nf_log IPv4")
    assert f["state"] == "warn" and f["detail"].startswith("NONE:") and "go to nowhere" in f["detail"]
    assert f["fix"] == f"ip netns exec {netns.name} sysctl -w net.netfilter.nf_log.2=nfnetlink_log"

    netns.run("echo nfnetlink_log > /proc/sys/net/netfilter/nf_log/2")
    _code, doc = run(capsys, *args)
    f = only(doc, "nf_log IPv4")
    assert f["state"] == "ok" and "go to NFLOG group 0" in f["detail"]

    # the kernel's default in a new namespace, the syslog logger
    netns.run("echo nf_log_ipv6 > /proc/sys/net/netfilter/nf_log/10")
    _code, doc = run(capsys, *args)
    assert only(doc, "nf_log IPv6")["state"] == "warn"
    assert "go to the kernel log" in only(doc, "nf_log IPv6")["detail"]

    # a config whose inputs do not read group 0 expects nothing of the binding
    netns.run("echo NONE > /proc/sys/net/netfilter/nf_log/2")
    _code, doc = run(capsys, "-c", str(write_conf(tmp_path, nflog="group=7")), "--netns", netns.name)
    assert only(doc, "nf_log IPv4")["state"] == "ok"


INVALID_AND_PLAIN_LOG = """
import socket, struct
from pylogd.nflog import NflogSocket
with NflogSocket(group=0) as sock:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.sendto(b"x", ("127.0.0.1", 9))  # the plain `log` rule's packet
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    raw.sendto(struct.pack("!HHIIBBHHH", 1234, 80, 1, 0, 0x50, 0x3F, 1024, 0, 0), ("127.0.0.1", 0))  # every flag
    print(sorted(p.prefix for p in sock.packets(timeout=1)))
"""


def test_what_the_nf_log_binding_sends_to_group_0(netns: Netns) -> None:
    """The doctor's account of the binding, checked on the kernel: bound to nfnetlink_log, conntrack's
    invalid-packet messages reach group 0; a plain `log` rule names its own (kernel-log) logger and never does."""
    netns.run("echo nfnetlink_log > /proc/sys/net/netfilter/nf_log/2")
    sysctl(netns, "net.netfilter.nf_conntrack_log_invalid", "255")
    netns.nft(
        "table ip t {\n chain out {\n type filter hook output priority 0;\n"
        ' udp dport 9 log prefix "plain"\n ct state invalid counter\n }\n}\n'
    )
    seen = netns.python(INVALID_AND_PLAIN_LOG).stdout
    assert "nf_ct_proto_6: invalid tcp flag combination" in seen
    assert "plain" not in seen
    netns.run("echo NONE > /proc/sys/net/netfilter/nf_log/2")
    assert netns.python(INVALID_AND_PLAIN_LOG).stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# --fix, --no-config, a broken config, the socket buffers


def test_fix_turns_warnings_and_failures_into_ok_inside_the_namespace_only(netns: Netns, tmp_path: Path) -> None:
    switches = ("net.netfilter.nf_conntrack_acct", "net.netfilter.nf_conntrack_timestamp")
    events = "net.netfilter.nf_conntrack_events"
    host_before = {name: host_sysctl(name) for name in (*switches, events, "net.netfilter.nf_log.2")}
    conf = write_conf(tmp_path, nflog="group=0", nfct="hash_enable=0")
    for name in switches:
        sysctl(netns, name, "0")
    sysctl(netns, events, "0")
    netns.run("echo NONE > /proc/sys/net/netfilter/nf_log/2")
    args = ("-c", str(conf), "--netns", netns.name, "--json")

    before = pylogd_doctor(*args)
    assert before.returncode == 1, before.stdout  # events off: a failure
    res = pylogd_doctor(*args, "--fix")
    doc = json.loads(res.stdout)
    fixed = {item["fix"] for item in doc["fixed"] if item["done"]}
    prefix = f"ip netns exec {netns.name} sysctl -w "
    assert {
        f"{prefix}{switches[0]}=1",
        f"{prefix}{switches[1]}=1",
        f"{prefix}{events}=1",
        f"{prefix}net.netfilter.nf_log.2=nfnetlink_log",
    } <= fixed
    for check in (*switches, events, "nf_log IPv4"):
        assert only(doc, check)["state"] == "ok"
    assert res.returncode == 0, res.stdout
    assert [sysctl(netns, name) for name in (*switches, events)] == ["1", "1", "1"]
    assert read_text(Path("/proc/sys/net/netfilter/nf_log/2")) == host_before["net.netfilter.nf_log.2"] + "\n"
    assert netns.run("cat /proc/sys/net/netfilter/nf_log/2").stdout.strip() == "nfnetlink_log"
    assert {name: host_sysctl(name) for name in host_before} == host_before


def test_no_config_runs_only_the_general_checks(netns: Netns, capsys: pytest.CaptureFixture[str]) -> None:
    from pylogd.nflog import NflogSocket

    sysctl(netns, "net.netfilter.nf_conntrack_acct", "0")
    with NflogSocket(group=5, netns=netns.name):
        code, doc = run(capsys, "--no-config", "--netns", netns.name)
    held = only(doc, "NFLOG group 5")  # who holds what: told, not judged, without a config
    assert held["state"] == "ok" and f"pid {os.getpid()} (" in held["detail"]
    checks = [f["check"] for f in doc["findings"]]
    assert "module nfnetlink_log" in checks and "module nf_conntrack_netlink" in checks
    assert "net.core.rmem_max" in checks and any(c.startswith("nf_log IPv4") for c in checks)
    assert not [c for c in checks if c.startswith("config") or "[" in c]
    # a host-only switch: read from the host whatever --netns says
    all_netns = host_sysctl("net.netfilter.nf_log_all_netns")
    assert only(doc, "net.netfilter.nf_log_all_netns")["detail"].startswith(f"{all_netns}: ")
    assert code == 0 and doc["ok"] is True  # the acct warning alone does not fail


def test_a_config_that_does_not_load_is_a_failure(
    netns: Netns, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("[global]\nstack=log1:NFLOGG\n")
    code, doc = run(capsys, "-c", str(bad), "--netns", netns.name)
    f = only(doc, f"config {bad}")
    assert f["state"] == "fail" and "NFLOGG" in f["detail"]
    assert f["fix"] == f"pylogd --check -c {bad} shows every error"
    assert code == 1
    code, doc = run(capsys, "-c", str(tmp_path / "missing.conf"), "--netns", netns.name)
    assert only(doc, "config")["fix"] == "name the config with -c FILE, or --no-config for the general checks"
    assert code == 1
    code, doc = run(capsys, "-c", str(write_conf(tmp_path, nflog="group=7")), "--netns", netns.name)
    assert only(doc, "config")["state"] == "ok"


def test_an_unknown_namespace_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor.main(["--no-config", "--netns", f"pylogd-no-such-ns-{os.getpid()}"]) == 1
    assert "not found" in capsys.readouterr().err


def test_an_inputs_missing_namespace_fails_and_the_rest_is_checked(
    netns: Netns, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"pylogd-no-such-ns-{os.getpid()}"
    conf = write_conf(tmp_path, nflog=f"group=7\nnetns={missing}", nfct="hash_enable=0")
    code, doc = run(capsys, "-c", str(conf), "--netns", netns.name)
    f = only(doc, f"netns {missing}")
    assert f["state"] == "fail" and "not found" in f["detail"] and "[log1]" in f["detail"]
    assert f["fix"] == f"ip netns add {missing}"
    assert only(doc, "net.netfilter.nf_conntrack_acct")["netns"] == netns.name  # [ct1] is still checked
    assert code == 1


def test_socket_buffers_against_rmem_max(netns: Netns, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pylogd.netlink import DEFAULT_RCVBUF

    rmem_max = int(host_sysctl("net.core.rmem_max"))
    big, huge, small = rmem_max + 4096, doctor.RCVBUF_CEILING + 1, min(rmem_max, 65536)
    conf = write_conf(
        tmp_path,
        nflog="group=7",  # no size: pylogd's default
        nfct=f"hash_enable=0\nnetlink_socket_buffer_size={small}\nnetlink_socket_buffer_maxsize={huge}",
    )
    _code, doc = run(capsys, "-c", str(conf), "--netns", netns.name)
    f = only(doc, "NFLOG [log1] netlink_socket_buffer_size")
    assert f["state"] == "ok" and f["detail"].startswith(f"unset: pylogd asks for {DEFAULT_RCVBUF}")
    applies = "applies all the same (SO_RCVBUFFORCE" if rmem_max < DEFAULT_RCVBUF else "within net.core.rmem_max"
    assert applies in f["detail"]
    f = only(doc, "NFCT [ct1] netlink_socket_buffer_size")
    assert f["state"] == "ok" and f["detail"] == f"{small}, within net.core.rmem_max {rmem_max}: applies"
    f = only(doc, "NFCT [ct1] netlink_socket_buffer_maxsize")
    assert f["state"] == "warn" and f["fix"] == f"set netlink_socket_buffer_maxsize={doctor.RCVBUF_CEILING} in [ct1]"

    conf = write_conf(tmp_path, nflog=f"group=7\nnetlink_socket_buffer_size={big}")
    _code, doc = run(capsys, "-c", str(conf), "--netns", netns.name)
    f = only(doc, "NFLOG [log1] netlink_socket_buffer_size")
    assert f["state"] == "ok" and f["detail"].startswith(f"{big} > net.core.rmem_max {rmem_max}: applies all the same")


# ---------------------------------------------------------------------------------------------
# pieces that need no kernel


def test_ctnetlink_answers_in_a_namespace(netns: Netns) -> None:
    # the probe used where no module can be loaded: ctnetlink is in every kernel NFCT runs on
    assert netns.call(doctor.ctnetlink_answers) is True


def test_module_state_reads_proc_modules_sys_module_and_modules_builtin(tmp_path: Path) -> None:
    release = os.uname().release
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/modules").write_text("nfnetlink_log 20480 0 - Live 0x0000000000000000\n")
    assert doctor.module_state("nfnetlink_log", str(tmp_path)) == "loaded"
    assert doctor.module_state("nf_conntrack_netlink", str(tmp_path)) == "missing"
    (tmp_path / "sys/module/nf_conntrack_netlink").mkdir(parents=True)
    assert doctor.module_state("nf_conntrack_netlink", str(tmp_path)) == "built in"
    (tmp_path / "sys/module/nf_conntrack_netlink/initstate").write_text("live\n")
    assert doctor.module_state("nf_conntrack_netlink", str(tmp_path)) == "loaded"
    (tmp_path / f"lib/modules/{release}").mkdir(parents=True)
    (tmp_path / f"lib/modules/{release}/modules.builtin").write_text("kernel/net/netfilter/nf_foo.ko\n")
    assert doctor.module_state("nf_foo", str(tmp_path)) == "built in"
    assert doctor.module_state("nf_bar", str(tmp_path)) == "missing"


def test_iptables_save_nflog_rules_and_their_groups() -> None:
    rules = doctor.Ruleset()
    text = (
        "*filter\n:INPUT ACCEPT [0:0]\n"
        '-A INPUT -p tcp -m tcp --dport 22 -j NFLOG --nflog-prefix "ssh" --nflog-group 5\n'
        "-A INPUT -j LOG --log-prefix NFLOG\n"
        "COMMIT\n*raw\n-A PREROUTING -j NFLOG\nCOMMIT\n"
    )
    doctor.parse_iptables_save(text, "iptables-nft-save", rules)
    assert rules.fed == {5: ["iptables-nft-save -t filter INPUT"], 0: ["iptables-nft-save -t raw PREROUTING"]}


def test_fix_commands_name_the_namespace() -> None:
    assert doctor.in_netns(None, "sysctl -w a=1") == "sysctl -w a=1"
    assert doctor.in_netns("fw", "sysctl -w a=1") == "ip netns exec fw sysctl -w a=1"
    assert doctor.in_netns("/proc/1/ns/net", "nft list ruleset") == "nsenter --net=/proc/1/ns/net nft list ruleset"


def test_module_findings_and_what_fix_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    states = {"nfnetlink_log": "missing", "nf_conntrack_netlink": "loaded"}
    monkeypatch.setattr(doctor, "module_state", lambda name: states[name])
    monkeypatch.setattr(doctor, "loadable", lambda name: True)
    loaded: list[str] = []
    monkeypatch.setattr(doctor, "_modprobe", loaded.append)
    findings = {f.check: f for f in doctor.check_modules(doctor.Uses())}
    missing, present = findings["module nfnetlink_log"], findings["module nf_conntrack_netlink"]
    assert (missing.state, missing.fix) == ("warn", "modprobe nfnetlink_log")
    assert (present.state, present.detail, present.fix) == ("ok", "loaded", None)
    assert doctor.apply_fixes(list(findings.values())) == [
        {"fix": "modprobe nfnetlink_log", "netns": None, "done": True, "error": None}
    ]
    assert loaded == ["nfnetlink_log"]

    monkeypatch.setattr(doctor, "loadable", lambda name: False)
    uses = doctor.Uses(config=True, nflog=[doctor.NflogUse("log1", 0, None, True, 0, 0)])
    (only_nflog,) = doctor.check_modules(uses)  # a config without NFCT does not need ctnetlink
    assert only_nflog.state == "fail" and "NFLOG ([log1]) cannot work" in only_nflog.detail


# ---------------------------------------------------------------------------------------------
# issue 20: run by an ordinary user


def test_doctor_without_root_asks_for_root_not_for_nftables(tmp_path: Path) -> None:
    """nft is installed and the kernel refused it: the fix is to run as root, never to install nftables."""
    if os.geteuid() != 0:
        pytest.skip("setpriv to another user needs root")
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    done = subprocess.run(
        [*as_nobody, sys.executable, "-m", "pylogd", "doctor", "--no-config", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(Path(doctor.__file__).resolve().parent.parent)},
    )
    doc = json.loads(done.stdout)
    f = only(doc, "ruleset")
    assert f["state"] == "warn" and "needs root or CAP_NET_ADMIN" in f["detail"], f
    assert f["fix"] == "run pylogd doctor as root (sudo pylogd doctor)" and "\n" not in f["detail"]
    assert "apt-get" not in done.stdout


def test_the_rules_fix_names_nftables_only_when_no_tool_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "has_net_admin", lambda: True)
    missing = doctor.check_rules(doctor.Ruleset(), [], None)[0]
    assert missing.fix == "apt-get install nftables" and "neither nft nor iptables" in missing.detail
    failed = doctor.Ruleset()
    failed.errors.append("nft -j list ruleset: Error: something\nelse")
    f = doctor.check_rules(failed, [], None)[0]
    assert f.fix is None and f.detail == "cannot read the rules: nft -j list ruleset: Error: something; else"
    monkeypatch.setattr(doctor, "has_net_admin", lambda: False)
    assert doctor.check_rules(failed, [], None)[0].fix == "run pylogd doctor as root (sudo pylogd doctor)"
    assert doctor.check_rules(doctor.Ruleset(), [], None)[0].fix == "apt-get install nftables"
