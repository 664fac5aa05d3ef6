"""``pylogd doctor``: the kernel side of logging, checked, explained and (``--fix``) set.

What pylogd needs from the kernel is set by hand today, and nothing says when it is missing:
flows arrive without byte counters, a group stays silent because ulogd still holds it or no rule
feeds it.  Each check here yields one :class:`Finding` (ok, warn or fail) and, for every problem,
the command that fixes it; ``--fix`` runs the sysctl, nf_log and modprobe ones and checks again.

Scopes: kernel modules are global; sysctls, nf_log bindings, bound groups and the ruleset belong
to a network namespace.  The checks of a namespace run with the calling thread inside it
(:func:`pylogd.netlink.netns_context`), so /proc/sys/net, /proc/thread-self/net and the ``nft``
it runs all see that namespace.  The config's NFLOG and NFCT inputs are checked in their own
``netns`` when they name one.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gzip
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .config import ConfigError, load
from .daemon import has_net_admin
from .log import Logger
from .netlink import (
    DEFAULT_RCVBUF,
    NETLINK_NETFILTER,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NLMSG_FULL,
    NetlinkError,
    iter_messages,
    netns_context,
    nlmsg_error,
)
from .nflog import bound_groups, find_netlink_owner
from .registry import Registry
from .stack import build

DEFAULT_CONFIG = "/etc/pylogd.conf"
OK, WARN, FAIL = "ok", "warn", "fail"

#: SO_RCVBUF(FORCE) clamps what it is given to INT_MAX / 2 before doubling it
RCVBUF_CEILING = 0x7FFFFFFF // 2

#: the protocol families whose nf_log binding pylogd (like ulogd) sets for group 0 or bind=1
NF_LOG_FAMILIES = {2: "IPv4", 10: "IPv6", 7: "bridge"}

#: module -> (kernel config symbol, what needs it)
MODULES = {
    "nfnetlink_log": ("CONFIG_NETFILTER_NETLINK_LOG", "NFLOG"),
    "nf_conntrack_netlink": ("CONFIG_NF_CT_NETLINK", "NFCT"),
}


@dataclass
class Finding:
    """One check's outcome.  ``fix`` is the command an operator runs; ``apply`` does the same
    from here (``--fix``), None where the remedy is the operator's decision (stop a process,
    write a rule)."""

    state: str
    check: str
    detail: str
    fix: str | None = None
    netns: str | None = None
    apply: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "check": self.check, "detail": self.detail, "fix": self.fix, "netns": self.netns}

    def line(self) -> str:
        where = f"[netns {self.netns}] " if self.netns else ""
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{self.state:<5} {where}{self.check}: {self.detail}{fix}"


@dataclass
class NflogUse:
    id: str
    group: int
    netns: str | None
    binds: bool  # group 0 or bind=1: pylogd binds nfnetlink_log to the families at start
    rcvbuf: int
    rcvbuf_max: int


@dataclass
class NfctUse:
    id: str
    netns: str | None
    events: bool  # event mode (pollinterval 0) needs nf_conntrack_events
    rcvbuf: int
    rcvbuf_max: int


@dataclass
class Uses:
    """What the config reads; ``config`` False: no config, every general check applies."""

    config: bool = False
    nflog: list[NflogUse] = field(default_factory=list)
    nfct: list[NfctUse] = field(default_factory=list)

    def scopes(self, netns: str | None) -> list[str | None]:
        """The namespaces to check: the doctor's own (``--netns``) first, then each input's."""
        out = [netns]
        for use in (*self.nflog, *self.nfct):
            ns = use.netns if use.netns is not None else netns
            if ns not in out:
                out.append(ns)
        return out


def read_uses(path: str) -> Uses:
    """The NFLOG and NFCT inputs of a config, built as the daemon builds it (nothing is opened)."""
    topology = build(load(path), Registry(), Logger)
    uses = Uses(config=True)
    seen: set[int] = set()
    for plan in topology.stacks:
        for inst in plan.instances:
            if id(inst.plugin) in seen:
                continue
            seen.add(id(inst.plugin))
            o = inst.plugin.options
            name = inst.spec.name
            if name == "NFLOG":
                uses.nflog.append(
                    NflogUse(
                        inst.id,
                        o["group"],
                        o["netns"],
                        o["group"] == 0 or o["bind"] > 0,
                        o["netlink_socket_buffer_size"],
                        o["netlink_socket_buffer_maxsize"],
                    )
                )
            elif name == "NFCT":
                uses.nfct.append(
                    NfctUse(
                        inst.id,
                        o["netns"],
                        o["pollinterval"] == 0,
                        o["netlink_socket_buffer_size"],
                        o["netlink_socket_buffer_maxsize"],
                    )
                )
    return uses


def in_netns(netns: str | None, command: str) -> str:
    """A command as it must be typed to act on ``netns``."""
    if netns is None:
        return command
    if "/" in netns:
        return f"nsenter --net={netns} {command}"
    return f"ip netns exec {netns} {command}"


def _ids(uses: Iterable[NflogUse | NfctUse]) -> str:
    return ", ".join(f"[{u.id}]" for u in uses)


# ---------------------------------------------------------------------------------------------
# sysctls


def sysctl_path(name: str) -> str:
    return "/proc/sys/" + name.replace(".", "/")


def read_sysctl(name: str) -> str | None:
    """The value in the calling thread's namespace; None when the kernel has no such switch."""
    try:
        with open(sysctl_path(name)) as f:
            return f.read().strip()
    except OSError:
        return None


def _sysctl_setter(name: str, value: str, netns: str | None) -> Callable[[], None]:
    def apply() -> None:
        with netns_context(netns), open(sysctl_path(name), "w") as f:
            f.write(value)

    return apply


def _sysctl_finding(name: str, want: str, netns: str | None, bad: str, state: str, why: str) -> Finding:
    return Finding(
        state,
        name,
        f"{bad}: {why}",
        in_netns(netns, f"sysctl -w {name}={want}"),
        netns,
        _sysctl_setter(name, want, netns),
    )


def check_conntrack_sysctls(nfct: list[NfctUse], config: bool, netns: str | None) -> list[Finding]:
    """nf_conntrack_acct, _timestamp, _events in one namespace (each is per namespace)."""
    flows = f"the flows of {_ids(nfct)}" if nfct else "flows"
    if config and not nfct:
        return []
    out = []
    acct = read_sysctl("net.netfilter.nf_conntrack_acct")
    if acct is None:
        return [
            Finding(
                WARN,
                "nf_conntrack",
                "not loaded: the net.netfilter.nf_conntrack_* switches do not exist yet",
                "modprobe nf_conntrack_netlink",
                netns,
                lambda: _modprobe("nf_conntrack_netlink"),
            )
        ]
    name = "net.netfilter.nf_conntrack_acct"
    if acct == "0":
        why = f"{flows} carry no packet or byte counters (PKTS=0 BYTES=0); applies to connections tracked from now on"
        out.append(_sysctl_finding(name, "1", netns, "0", WARN, why))
    else:
        out.append(Finding(OK, name, f"{acct}: flows carry packet and byte counters", netns=netns))
    name = "net.netfilter.nf_conntrack_timestamp"
    stamp = read_sysctl(name)
    if stamp == "0":
        why = (
            f"{flows} carry no kernel start and stop stamps: flow.start and flow.end are when pylogd received "
            "the events (a flow older than the daemon has no true start); applies to new connections"
        )
        out.append(_sysctl_finding(name, "1", netns, "0", WARN, why))
    else:
        out.append(Finding(OK, name, f"{stamp}: flows carry their start and end times", netns=netns))
    name = "net.netfilter.nf_conntrack_events"
    events = read_sysctl(name)
    listeners = [u for u in nfct if u.events] if config else nfct
    who = f" {_ids(listeners)}" if listeners else ""
    if events == "0" and (listeners or not config):
        why = f"the kernel sends no conntrack events: NFCT in event mode{who} receives nothing"
        out.append(_sysctl_finding(name, "1", netns, "0", FAIL, why))
    elif events == "0":
        out.append(Finding(OK, name, f"0: no events, and {_ids(nfct)} poll the table instead", netns=netns))
    elif events == "2" and (listeners or not config):
        # since Linux 5.19, 2 gives a connection events only if a listener exists when it starts
        why = (
            "a connection gets events only if a listener exists when it starts: flows begun while "
            f"pylogd{who} was not running (a restart, an upgrade) never send DESTROY"
        )
        out.append(_sysctl_finding(name, "1", netns, "2", WARN, why))
    else:
        out.append(Finding(OK, name, f"{events}: every new connection sends events", netns=netns))
    return out


def check_nf_log_all_netns() -> Finding:
    """A global switch (init namespace only), told for completeness: it matters to the kernel log,
    never to NFLOG groups, which work in every namespace."""
    name = "net.netfilter.nf_log_all_netns"
    value = read_sysctl(name)
    if value is None:
        return Finding(OK, name, "not visible here: it exists in the host namespace only")
    if value == "0":
        what = "kernel-log (syslog) loggers stay silent outside the host namespace"
    else:
        what = "kernel-log (syslog) loggers also log in every other namespace"
    return Finding(OK, name, f"{value}: {what}; NFLOG groups, which pylogd reads, work in every namespace")


def check_rmem(uses: Uses) -> list[Finding]:
    """Socket buffers against net.core.rmem_max.  Every netlink input of pylogd needs CAP_NET_ADMIN
    (nfnetlink refuses everything else), and with it SO_RCVBUFFORCE is not capped by rmem_max:
    the configured sizes apply; only the kernel's own ceiling of INT_MAX/2 does."""
    name = "net.core.rmem_max"
    rmem_max = read_sysctl(name)
    default = read_sysctl("net.core.rmem_default")
    if rmem_max is None:
        return []
    out = [
        Finding(
            OK,
            name,
            f"{rmem_max} (rmem_default {default}): caps SO_RCVBUF; pylogd sets its netlink buffers "
            "with SO_RCVBUFFORCE, which the CAP_NET_ADMIN its inputs need lets exceed it",
        )
    ]
    limit = int(rmem_max)
    for use in (*uses.nflog, *uses.nfct):
        kind = "NFLOG" if isinstance(use, NflogUse) else "NFCT"
        sizes = {"netlink_socket_buffer_size": use.rcvbuf or DEFAULT_RCVBUF}
        if use.rcvbuf_max:
            sizes["netlink_socket_buffer_maxsize"] = use.rcvbuf_max
        for option, size in sizes.items():
            check = f"{kind} [{use.id}] {option}"
            told = f"{size}" if option.endswith("maxsize") or use.rcvbuf else f"unset: pylogd asks for {size}"
            if size > RCVBUF_CEILING:
                why = f"{told}: the kernel caps a socket buffer at {RCVBUF_CEILING} bytes whatever is asked"
                out.append(Finding(WARN, check, why, f"set {option}={RCVBUF_CEILING} in [{use.id}]"))
            elif size > limit:
                why = f"{told} > {name} {limit}: applies all the same (SO_RCVBUFFORCE with CAP_NET_ADMIN)"
                out.append(Finding(OK, check, why))
            else:
                out.append(Finding(OK, check, f"{told}, within {name} {limit}: applies"))
    return out


# ---------------------------------------------------------------------------------------------
# modules


def _modprobe(name: str) -> None:
    res = subprocess.run(["modprobe", name], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise OSError(res.returncode, res.stderr.strip() or f"modprobe {name} exited {res.returncode}")


def kernel_config() -> dict[str, str]:
    """The running kernel's build options (/proc/config.gz, else /boot/config-RELEASE); {} when neither exists."""
    release = os.uname().release
    for path, opener in (("/proc/config.gz", gzip.open), (f"/boot/config-{release}", open)):
        try:
            with opener(path, "rt") as f:
                return dict(line.strip().split("=", 1) for line in f if line.startswith("CONFIG_") and "=" in line)
        except OSError:
            continue
    return {}


def module_state(name: str, root: str = "/") -> str:
    """ "loaded", "built in", "missing" or "unknown" (no way to tell).

    /proc/modules lists loaded modules; a built-in one shows only in /sys/module (when it has
    parameters), modules.builtin or the kernel config.  nfnetlink_log also proves itself by its
    /proc/net/netfilter file, which exists in every namespace once it is in the kernel."""

    def path(p: str) -> str:
        return os.path.join(root, p.lstrip("/"))

    with contextlib.suppress(OSError), open(path("/proc/modules")) as f:
        if any(line.split(" ", 1)[0] == name for line in f):
            return "loaded"
    if os.path.isdir(path(f"/sys/module/{name}")):
        return "loaded" if os.path.exists(path(f"/sys/module/{name}/initstate")) else "built in"
    release = os.uname().release
    with contextlib.suppress(OSError), open(path(f"/lib/modules/{release}/modules.builtin")) as f:
        if any(os.path.basename(line.strip()) == f"{name}.ko" for line in f):
            return "built in"
    if name == "nfnetlink_log" and os.path.exists(path("/proc/net/netfilter/nfnetlink_log")):
        return "built in"  # in the kernel, and not among the loaded modules read above
    symbol = MODULES.get(name, ("", ""))[0]
    config = kernel_config() if root == "/" else {}
    if config.get(symbol) == "y":
        return "built in"
    if not os.path.exists(path("/proc/modules")):
        # a kernel without module support: only what is built in exists
        if name == "nf_conntrack_netlink" and root == "/":
            return "built in" if ctnetlink_answers() else "missing"
        return "missing" if config else "unknown"
    return "missing"


def ctnetlink_answers() -> bool:
    """Ask ctnetlink for its statistics: EOPNOTSUPP means the subsystem is not in the kernel.
    Only used where modules cannot be loaded, so the question cannot load it as a side effect."""
    get_stats = (1 << 8) | 5  # IPCTNL_MSG_CT_GET_STATS
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)  # nfgenmsg: family, version, res_id
    msg = NLMSG_FULL.pack(16 + len(body), get_stats, NLM_F_REQUEST | NLM_F_ACK, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER) as s:
        s.settimeout(5)
        s.sendto(msg, (0, 0))
        while True:
            try:
                data = s.recv(65536)
            except OSError:
                return False
            for mtype, _flags, start, end in iter_messages(data):
                if mtype == NLMSG_ERROR:
                    return nlmsg_error(memoryview(data), start, end) != errno.EOPNOTSUPP
                if mtype >> 8 == 1:  # any ctnetlink answer
                    return True


def loadable(name: str) -> bool:
    """modprobe finds the module (a dry run loads nothing)."""
    if not shutil.which("modprobe"):
        return False
    res = subprocess.run(["modprobe", "-n", "-q", name], capture_output=True, timeout=30)
    return res.returncode == 0


def check_modules(uses: Uses) -> list[Finding]:
    out = []
    for name, (symbol, needed_by) in MODULES.items():
        users = uses.nflog if needed_by == "NFLOG" else uses.nfct
        if uses.config and not users:
            continue
        state = module_state(name)
        check = f"module {name}"
        if state in ("loaded", "built in"):
            out.append(Finding(OK, check, state))
        elif state == "unknown":
            out.append(Finding(WARN, check, f"cannot tell whether the kernel has it ({symbol})"))
        elif not shutil.which("modprobe"):
            out.append(
                Finding(WARN, check, "not loaded, and without modprobe no module can be found", "apt-get install kmod")
            )
        elif loadable(name):
            out.append(
                Finding(
                    WARN,
                    check,
                    f"not loaded ({needed_by} loads it on first use when module autoloading works)",
                    f"modprobe {name}",
                    apply=lambda name=name: _modprobe(name),
                )
            )
        else:
            where = f" ({_ids(users)})" if users else ""
            out.append(
                Finding(
                    FAIL,
                    check,
                    f"not in this kernel and no module to load: {needed_by}{where} cannot work",
                    f"a kernel built with {symbol}=m or =y",
                )
            )
    return out


# ---------------------------------------------------------------------------------------------
# nf_log


def read_nf_log() -> dict[int, tuple[str, list[str]]]:
    """/proc/net/netfilter/nf_log of the calling thread's namespace: family -> (bound logger or
    NONE, loggers available)."""
    out = {}
    with contextlib.suppress(OSError), open("/proc/thread-self/net/netfilter/nf_log") as f:
        for line in f:
            m = re.match(r"\s*(\d+)\s+(\S+)\s+\((.*)\)", line)
            if m:
                out[int(m.group(1))] = (m.group(2), [x for x in m.group(3).split(",") if x])
    return out


def _destination(logger: str) -> str:
    if logger == "NONE":
        return "nowhere"
    if logger == "nfnetlink_log":
        return "NFLOG group 0"
    if logger.startswith(("nf_log_", "ipt_LOG", "ip6t_LOG", "ebt_log")):
        return "the kernel log"
    return logger


def check_nf_log(nflog: list[NflogUse], netns: str | None) -> list[Finding]:
    """A family's binding is the logger of what netfilter logs with no target of its own
    (nf_conntrack_log_invalid and the like; `log` rules always name theirs).  Bound to
    nfnetlink_log, that goes to NFLOG group 0, which is what ulogd and pylogd set up for group 0."""
    bindings = read_nf_log()
    binders = [u for u in nflog if u.binds]
    out = []
    if not bindings:
        return [
            Finding(
                WARN,
                "nf_log",
                "/proc/net/netfilter/nf_log is missing: netfilter logging is not in the kernel",
                netns=netns,
            )
        ]
    for family, label in NF_LOG_FAMILIES.items():
        if family not in bindings:
            continue
        bound, available = bindings[family]
        check = f"nf_log {label} (net.netfilter.nf_log.{family})"
        goes = f"{bound}: netfilter's own messages (nf_conntrack_log_invalid) go to {_destination(bound)}"
        if bound == "nfnetlink_log" or not binders:
            out.append(Finding(OK, check, goes, netns=netns))
            continue
        name = f"net.netfilter.nf_log.{family}"
        need_module = "" if "nfnetlink_log" in available else "modprobe nfnetlink_log && "
        out.append(
            Finding(
                WARN,
                check,
                f"{goes}, not to group 0, which {_ids(binders)} reads (pylogd binds it at start, as ulogd does)",
                need_module + in_netns(netns, f"sysctl -w {name}=nfnetlink_log"),
                netns,
                _sysctl_setter(name, "nfnetlink_log", netns),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# groups and rules


def _owner_pid(owner: str | None) -> int | None:
    m = re.match(r"pid (\d+)", owner or "")
    return int(m.group(1)) if m else None


def _is_pylogd(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return any(os.path.basename(a) == b"pylogd" or a == b"pylogd" for a in argv[:3])


def _unit_of(pid: int) -> str | None:
    """The systemd service whose main process this is (its cgroup names the unit; systemd
    confirms the pid), so the fix stops the service instead of a process systemd restarts."""
    unit = None
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            m = re.search(r"/([^/]+\.service)(/|$)", line.strip())
            if m:
                unit = m.group(1)
    if unit is None or not shutil.which("systemctl"):
        return None
    try:
        res = subprocess.run(
            ["systemctl", "show", "--property=MainPID", "--value", unit], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return unit if res.stdout.strip() == str(pid) else None


def check_groups(nflog: list[NflogUse], config: bool, netns: str | None) -> list[Finding]:
    """Each configured group against /proc/net/netfilter/nfnetlink_log: a group has one listener.
    Without a config, who holds which group (what a migration from ulogd must stop first)."""
    bound = bound_groups(None)
    out = []
    if not config:
        for group, port in sorted(bound.items()):
            owner = find_netlink_owner(port, None) or "process not found"
            out.append(Finding(OK, f"NFLOG group {group}", f"bound by netlink port id {port}, {owner}", netns=netns))
    for use in nflog:
        check = f"NFLOG group {use.group} [{use.id}]"
        port = bound.get(use.group)
        if port is None:
            out.append(Finding(OK, check, "not bound: pylogd can bind it", netns=netns))
            continue
        owner = find_netlink_owner(port, None)
        pid = _owner_pid(owner)
        if pid is not None and _is_pylogd(pid):
            out.append(Finding(OK, check, f"bound by {owner}: a running pylogd reads it", netns=netns))
            continue
        who = f"netlink port id {port}" + (
            f", {owner}" if owner else ", process not found (another PID namespace, or not root?)"
        )
        unit = _unit_of(pid) if pid is not None else None
        if unit:
            fix = f"systemctl disable --now {unit}"
        elif pid is not None:
            fix = f"kill {pid}"
        else:
            fix = in_netns(netns, "ss -f netlink -p") + f" names the holder of port id {port}; stop it"
        out.append(
            Finding(
                FAIL,
                check,
                f"already bound by another listener ({who}): pylogd cannot bind it",
                fix,
                netns,
            )
        )
    return out


#: nft statements and expressions that make the kernel track connections in their namespace
CT_USERS = frozenset(("ct", "snat", "dnat", "masquerade", "redirect", "flow", "synproxy", "ct helper", "ct timeout"))


@dataclass
class Ruleset:
    """What the rules of one namespace log: group -> where, and what nft cannot say."""

    fed: dict[int, list[str]] = field(default_factory=dict)
    to_kernel_log: int = 0  # `log` statements without a group
    xt_nflog: int = 0  # iptables-nft NFLOG targets, whose group nft does not show
    base_chains: list[tuple[str, str, str, str]] = field(default_factory=list)  # family, table, chain, hook
    conntrack: list[str] = field(default_factory=list)  # rules and chains that make the kernel track connections
    errors: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


def parse_nft_json(doc: dict[str, Any], rules: Ruleset) -> None:
    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            log = node.get("log")
            if isinstance(log, dict) or (log is None and "log" in node):
                group = (log or {}).get("group")
                if group is None:
                    rules.to_kernel_log += 1
                else:
                    rules.fed.setdefault(int(group), []).append(where)
            xt = node.get("xt")
            if isinstance(xt, dict) and xt.get("name") == "NFLOG":
                rules.xt_nflog += 1
            if CT_USERS & node.keys() and (not rules.conntrack or rules.conntrack[-1] != where):
                rules.conntrack.append(where)
            for value in node.values():
                walk(value, where)
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    for item in doc.get("nftables", ()):
        rule = item.get("rule")
        if rule:
            where = f"nft {rule.get('family')} {rule.get('table')} {rule.get('chain')} (handle {rule.get('handle')})"
            walk(rule.get("expr", []), where)
        chain = item.get("chain")
        if chain and chain.get("hook") and chain.get("type", "filter") == "filter":
            rules.base_chains.append((chain["family"], chain["table"], chain["name"], chain["hook"]))
        if chain and chain.get("type") == "nat":
            rules.conntrack.append(f"nft {chain['family']} {chain['table']} {chain['name']} (a nat chain)")


def parse_iptables_save(text: str, command: str, rules: Ruleset) -> None:
    """``-j NFLOG`` rules of an iptables-save dump; --nflog-group defaults to 0."""
    table = "filter"
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            if table == "nat":  # a legacy nat table registers conntrack as it is created
                rules.conntrack.append(f"{command} -t nat")
        elif line.startswith("-A ") and re.search(
            r" -m (state|conntrack) | -j (CT|SNAT|DNAT|MASQUERADE|REDIRECT)\b", line
        ):
            rules.conntrack.append(f"{command} -t {table} {line.split()[1]}")
        if not line.startswith("-A ") or not re.search(r"(^|\s)-j NFLOG(\s|$)", line):
            continue
        m = re.search(r"--nflog-group (\d+)", line)
        chain = line.split()[1]
        rules.fed.setdefault(int(m.group(1)) if m else 0, []).append(f"{command} -t {table} {chain}")


def read_ruleset() -> Ruleset:
    rules = Ruleset()
    if shutil.which("nft"):
        try:
            res = subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True, text=True, timeout=30)
            if res.returncode == 0:
                parse_nft_json(json.loads(res.stdout or "{}"), rules)
                rules.sources.append("nft")
            else:
                rules.errors.append(f"nft -j list ruleset: {res.stderr.strip() or res.returncode}")
        except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
            rules.errors.append(f"nft -j list ruleset: {exc}")
    # iptables-nft's rules are nf_tables rules, NFLOG among them a `log group` nft shows: ask
    # iptables-nft-save only without nft.  Legacy tables only when the kernel has them: listing
    # them would otherwise load ip_tables.
    nft_only = "nft" in rules.sources and not rules.xt_nflog  # xt: a target nft could not translate
    saves = [] if nft_only else ["iptables-nft-save", "ip6tables-nft-save"]
    if os.path.exists("/proc/thread-self/net/ip_tables_names"):
        saves.append("iptables-legacy-save")
    if os.path.exists("/proc/thread-self/net/ip6_tables_names"):
        saves.append("ip6tables-legacy-save")
    for command in saves:
        if not shutil.which(command):
            continue
        try:
            res = subprocess.run([command], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            rules.errors.append(f"{command}: {exc}")
            continue
        if res.returncode == 0:
            parse_iptables_save(res.stdout, command, rules)
            rules.sources.append(command)
    return rules


def _rule_example(group: int, rules: Ruleset, netns: str | None) -> str:
    for family, table, chain, hook in rules.base_chains:
        if hook == "input" and family in ("inet", "ip", "ip6"):
            return in_netns(netns, f"nft add rule {family} {table} {chain} log group {group}")
    table = "pylogd"
    script = (
        f"add table inet {table}; add chain inet {table} input {{ type filter hook input priority 0; }}; "
        f"add rule inet {table} input log group {group}"
    )
    return in_netns(netns, f"nft '{script}'")


def check_rules(rules: Ruleset, nflog: list[NflogUse], netns: str | None) -> list[Finding]:
    """Which configured group no rule feeds, and which group rules feed that nothing reads."""
    out = []
    if not rules.sources:
        why = re.sub(r"\s*\n\s*", "; ", "; ".join(rules.errors)) or "neither nft nor iptables is installed"
        fix: str | None = None  # the tools are there and failed: what they said is the lead
        if not rules.errors:
            fix = "apt-get install nftables"
        elif not has_net_admin():  # nft is there, the kernel refused it: installing it again cures nothing
            why = f"reading them needs root or CAP_NET_ADMIN ({why})"
            fix = "run pylogd doctor as root (sudo pylogd doctor)"
        return [Finding(WARN, "ruleset", f"cannot read the rules: {why}", fix, netns)]
    unseen = ""
    if rules.xt_nflog and not any(s.endswith("-nft-save") for s in rules.sources):
        unseen = f"; {rules.xt_nflog} iptables-nft NFLOG rule(s) whose group nft does not show (install iptables)"
    for use in nflog:
        check = f"rules for NFLOG group {use.group} [{use.id}]"
        where = rules.fed.get(use.group)
        if where:
            out.append(Finding(OK, check, f"fed by {len(where)} rule(s): {', '.join(where[:3])}", netns=netns))
        else:
            out.append(
                Finding(
                    WARN,
                    check,
                    f"no rule logs to group {use.group}: [{use.id}] will receive nothing{unseen}",
                    _rule_example(use.group, rules, netns),
                    netns,
                )
            )
    read = {u.group for u in nflog}
    bound = bound_groups(None)
    for group, where in sorted(rules.fed.items()):
        if group in read or group in bound:
            continue
        out.append(
            Finding(
                WARN,
                f"rules for NFLOG group {group}",
                f"{len(where)} rule(s) log to group {group} ({', '.join(where[:3])}), which nothing reads: "
                "those packets are logged nowhere",
                f"add an NFLOG input with group={group} to the config",
                netns,
            )
        )
    if rules.to_kernel_log:
        out.append(
            Finding(
                OK,
                "rules logging to the kernel log",
                f"{rules.to_kernel_log} `log` statement(s) without a group write to the kernel log, not to pylogd",
                netns=netns,
            )
        )
    return out


def check_conntrack_on(rules: Ruleset, nfct: list[NfctUse], netns: str | None) -> Finding:
    """A namespace tracks connections only once something needs it (a ct match, NAT; since Linux
    4.10 conntrack hooks in per namespace on demand): until then NFCT receives nothing."""
    check = "conntrack in use"
    if rules.conntrack:
        shown = ", ".join(rules.conntrack[:3]) + (" ..." if len(rules.conntrack) > 3 else "")
        return Finding(OK, check, f"rules make the kernel track connections: {shown}", netns=netns)
    count = read_sysctl("net.netfilter.nf_conntrack_count")
    if count not in (None, "0"):
        return Finding(
            OK, check, f"{count} connections tracked (something other than these rules needs conntrack)", netns=netns
        )
    who = f"NFCT {_ids(nfct)} receives" if nfct else "NFCT would receive"
    script = (
        "add table inet pylogd; add chain inet pylogd conntrack { type filter hook prerouting priority -150; }; "
        "add rule inet pylogd conntrack ct state new counter"
    )
    return Finding(
        WARN,
        check,
        "no rule needs conntrack and it tracks no connection: the kernel tracks connections only once a rule "
        f"needs it (a ct match, NAT), so {who} nothing",
        in_netns(netns, f"nft '{script}'"),
        netns,
    )


# ---------------------------------------------------------------------------------------------
# running


def check_scope(
    nflog: list[NflogUse], nfct: list[NfctUse], general: bool, config: bool, scope: str | None
) -> list[Finding]:
    """The checks of one namespace, from inside it."""
    findings = []
    with netns_context(scope):
        findings += check_nf_log(nflog, scope)
        rules = read_ruleset() if general or nflog or nfct else Ruleset()
        if general or nfct:
            findings += check_conntrack_sysctls(nfct, config, scope)
            if rules.sources:
                findings.append(check_conntrack_on(rules, nfct, scope))
        if general or nflog:
            findings += check_groups(nflog, config, scope)
            findings += check_rules(rules, nflog, scope)
    return findings


def run_checks(uses: Uses, netns: str | None) -> list[Finding]:
    """Every check: global ones in the caller's namespace, the rest in each namespace in scope."""
    findings = check_modules(uses)
    findings.append(check_nf_log_all_netns())
    with netns_context(netns):
        findings += check_rmem(uses)
    for scope in uses.scopes(netns):
        nflog = [u for u in uses.nflog if (u.netns if u.netns is not None else netns) == scope]
        nfct = [u for u in uses.nfct if (u.netns if u.netns is not None else netns) == scope]
        try:
            findings += check_scope(nflog, nfct, not uses.config and scope == netns, uses.config, scope)
        except NetlinkError as exc:
            if scope == netns:
                raise  # --netns itself: nothing to check
            # an input's own namespace (a container not started yet): the rest is still worth telling
            fix = f"ip netns add {scope}" if "/" not in scope else f"create {scope} before pylogd starts"
            why = f"{exc.strerror}: {_ids([*nflog, *nfct])} cannot open their sockets"
            findings.append(Finding(FAIL, f"netns {scope}", why, fix))
    return findings


def apply_fixes(findings: list[Finding]) -> list[dict[str, Any]]:
    done = []
    for f in findings:
        if f.state == OK or f.apply is None:
            continue
        try:
            f.apply()
        except OSError as exc:
            done.append({"fix": f.fix, "netns": f.netns, "done": False, "error": str(exc.strerror or exc)})
        else:
            done.append({"fix": f.fix, "netns": f.netns, "done": True, "error": None})
    return done


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pylogd doctor",
        description="Check the kernel side of logging: modules, conntrack switches, nf_log bindings, "
        "NFLOG groups held by other processes, rules feeding the configured groups.  "
        "Exit status 1 when a check fails (warnings alone: 0).",
    )
    p.add_argument(
        "-c", "--configfile", default=DEFAULT_CONFIG, help=f"config to check against (default {DEFAULT_CONFIG})"
    )
    p.add_argument("--no-config", action="store_true", help="only the general checks, without a config")
    p.add_argument("--netns", metavar="NAME", help="check inside this network namespace (a name or a path)")
    p.add_argument("--fix", action="store_true", help="apply the sysctl, nf_log and modprobe fixes, then check again")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    return p


def main(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    uses = Uses()
    head: list[Finding] = []
    if not args.no_config:
        try:
            uses = read_uses(args.configfile)
        except ConfigError as exc:
            uses = Uses()
            if os.path.exists(args.configfile):
                fix = f"pylogd --check -c {args.configfile} shows every error"
            else:
                fix = "name the config with -c FILE, or --no-config for the general checks"
            head.append(Finding(FAIL, f"config {args.configfile}", str(exc), fix))
        else:
            head.append(
                Finding(OK, f"config {args.configfile}", f"{len(uses.nflog)} NFLOG and {len(uses.nfct)} NFCT input(s)")
            )
    try:
        findings = head + run_checks(uses, args.netns)
        fixed: list[dict[str, Any]] = []
        if args.fix:
            fixed = apply_fixes(findings)
            if fixed:
                findings = head + run_checks(uses, args.netns)
    except NetlinkError as exc:
        print(f"pylogd doctor: {exc.strerror or exc}", file=sys.stderr)
        return 1
    failed = any(f.state == FAIL for f in findings)
    if args.json:
        print(json.dumps({"ok": not failed, "fixed": fixed, "findings": [f.as_dict() for f in findings]}, indent=2))
    else:
        for item in fixed:
            print(f"fixed {item['fix']}" if item["done"] else f"could not fix ({item['error']}): {item['fix']}")
        for f in findings:
            print(f.line())
        counts = {state: sum(f.state == state for f in findings) for state in (OK, WARN, FAIL)}
        print(f"{counts[OK]} ok, {counts[WARN]} warning(s), {counts[FAIL]} failure(s)")
        if any(f.state != OK and f.fix and "sysctl -w" in f.fix and f.netns is None for f in findings):
            print("sysctl -w lasts until reboot: put the settings in /etc/sysctl.d/90-pylogd.conf to keep them")
    return 1 if failed else 0
