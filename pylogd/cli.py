"""Command line: run the daemon, ``-i`` plugin information, ``--check`` a configuration."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import traceback
from typing import Any

from . import __version__, compiled
from .config import ConfigError, absolute_path, load
from .control import DEFAULT_PATH as DEFAULT_CONTROL_PATH
from .daemon import (
    Daemon,
    DaemonError,
    PidFile,
    daemonize,
    drop_privileges,
    has_net_admin,
    lookup_user,
    user_name,
)
from .log import SINK, Logger
from .plugin import Kind, OptType, Plugin, PluginSpec
from .registry import Registry
from .scheduling import run_realtime
from .stack import Topology, build

DEFAULT_CONFIG = "/etc/pylogd.conf"
#: where ``-d`` logs when the config names no logfile: once detached, stderr is /dev/null (ulogd's
#: default is /var/log/ulogd.log); the directory is the unit's LogsDirectory
DAEMON_LOGFILE = "/var/log/pylogd/pylogd.log"


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pylogd",
        description="Netfilter userspace logging daemon (NFLOG packets, conntrack flows), ulogd.conf compatible.",
        epilog="other commands: "
        + "; ".join(f"pylogd {name} ({what})" for name, (_, what) in COMMANDS.items())
        + "; each takes --help",
    )
    p.add_argument(
        "-c",
        "--configfile",
        default=DEFAULT_CONFIG,
        help=f"configuration file (default {DEFAULT_CONFIG}); .yaml/.yml for YAML",
    )
    p.add_argument("-d", "--daemon", action="store_true", help="detach and run in the background")
    p.add_argument("-v", "--verbose", action="store_true", help="also echo the log to stderr")
    p.add_argument("-l", "--loglevel", type=int, choices=(1, 3, 5, 7, 8), help="override the config's loglevel")
    p.add_argument("-p", "--pidfile", help="write and lock a pidfile")
    p.add_argument("-u", "--uid", metavar="USER[:GROUP]", help="drop privileges once inputs and files are open")
    p.add_argument("-i", "--info", metavar="PLUGIN", help="describe a plugin: a name, a ulogd .so path or a .py file")
    p.add_argument("--json", action="store_true", help="with -i: print the description as JSON")
    p.add_argument("--check", action="store_true", help="validate the config, print the resolved stacks, open nothing")
    p.add_argument(
        "--control-socket",
        default=DEFAULT_CONTROL_PATH,
        metavar="PATH",
        help=f"where `pylogd stats` reads the live counters (default {DEFAULT_CONTROL_PATH}; '' for none)",
    )
    p.add_argument("-V", "--version", action="version", version=f"pylogd {__version__} ({compiled.describe()})")
    return p


#: ``pylogd COMMAND ...``: the tools that are not the daemon, each a module with its own main(argv)
COMMANDS = {
    "doctor": ("pylogd.doctor", "check the kernel side: modules, sysctls, nf_log bindings, NFLOG groups, rules"),
    "stats": ("pylogd.stats", "a running daemon's live counters (table, --json, --prometheus)"),
    "reload": ("pylogd.reload", "have a running daemon read its config again, keeping what did not change"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        return _printing(module.main, argv[1:])
    args = make_parser().parse_args(argv)
    registry = Registry()
    if args.info:
        return _printing(info, registry, args.info, args.json)
    try:
        # -d moves the daemon to /: these name the same files as the config's paths do, from here on
        args.pidfile = args.pidfile and absolute_path(args.pidfile, what="-p")
        args.control_socket = args.control_socket and absolute_path(args.control_socket, what="--control-socket")
        raw = load(args.configfile)
        topology = build(raw, registry, Logger)
    except ConfigError as exc:
        # a config's mistake is one line; a bug (an internal error) also says where it is, before any log
        # is open: with -v, its traceback on stderr
        bug = internal_error(exc)
        hint = " (a bug in pylogd: -v shows its traceback)" if bug is not None and not args.verbose else ""
        print(f"pylogd: {exc}{hint}", file=sys.stderr)
        if bug is not None and args.verbose:
            print("".join(traceback.format_exception(bug)), end="", file=sys.stderr)
        return 1
    for loc, warning in raw.warnings:
        print(f"pylogd: warning: {loc}: {warning}", file=sys.stderr)
    if args.check:
        return _printing(print, describe_topology(topology), end="") or 0
    return run(args, topology)


def internal_error(exc: BaseException) -> BaseException | None:
    """The exception a bug raised, when ``exc`` reports one ("internal error"): the config or start-up
    error made of it keeps it as its cause, or as its context when raised ``from None`` to stay one line."""
    if "internal error" not in str(exc):
        return None
    return exc.__cause__ or exc.__context__


def log_traceback(log: Logger, bug: BaseException) -> None:
    """Where a bug happened, into the log: one line of it per traceback line (syslog keeps lines)."""
    for line in "".join(traceback.format_exception(bug)).splitlines():
        log.error(line)


def _printing(func: Any, *args: Any, **kwargs: Any) -> int:
    """Run a command that prints: a reader that stops early (`pylogd doctor | head`) ends it quietly."""
    try:
        return func(*args, **kwargs)
    except BrokenPipeError:
        # stdout is gone: point it at /dev/null so the interpreter's final flush does not complain too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def run(args: argparse.Namespace, topology: Topology) -> int:
    """Start, then run until a terminal signal.  Until start-up has succeeded nothing is written to
    the log file: a refused start reports on stderr and leaves a running daemon's files alone."""
    if refusal := missing_net_admin(topology):
        print(f"pylogd: {refusal}", file=sys.stderr)
        return 1
    if args.daemon:
        close_inherited_descriptors()
    log = Logger("core")
    opts = topology.global_options
    logfile = opts["logfile"] or (DAEMON_LOGFILE if args.daemon else None)
    SINK.level = args.loglevel or opts["loglevel"]
    SINK.echo_stderr = args.verbose and not args.daemon
    SINK.hold()
    pidfile = PidFile(args.pidfile) if args.pidfile else None
    daemon = Daemon(
        topology, log, args.control_socket or None, config_path=os.path.abspath(args.configfile), loglevel=args.loglevel
    )
    log.info(f"pylogd {__version__} ({compiled.describe()}) starting with {args.configfile}")
    try:
        user = lookup_user(args.uid) if args.uid else None
        if pidfile:
            pidfile.check()
        daemon.start()
        if daemon.control:  # while root: -u's user may have no right to make it
            daemon.control.open(user[1:] if user else None)
        try:
            if logfile == DAEMON_LOGFILE and not opts["logfile"]:
                os.makedirs(os.path.dirname(logfile), mode=0o750, exist_ok=True)
            SINK.release(logfile)
        except OSError as exc:
            raise DaemonError(f"cannot open logfile {logfile}: {exc.strerror}") from None
        if args.daemon:
            daemonize()
        if pidfile:
            pidfile.create(log)
        if opts["realtime"]:
            run_realtime(log)  # before the service user, who may not have CAP_SYS_NICE
        if user:
            daemon.hand_over(user[1], user[2])
            kept = drop_privileges(*user)
            caps = "keeping CAP_NET_ADMIN" if kept else "without CAP_NET_ADMIN: conntrack dumps will fail"
            log.info(f"running as {user[0]} (uid {user[1]}, gid {user[2]}), {caps}")
    except Exception as exc:
        # a DaemonError says what failed (and keeps a plugin's bug as its cause); anything else is a bug
        # of pylogd's own
        if isinstance(exc, DaemonError):
            failure, bug = str(exc), internal_error(exc)
        else:
            failure, bug = f"internal error starting: {type(exc).__name__}: {exc}", exc
        log.fatal(failure)
        if bug is not None:
            log_traceback(log, bug)
        daemon.abort()
        if SINK.held is not None:  # refused before start-up succeeded: stderr only
            for line in SINK.held_errors():
                print(f"pylogd: {line}", file=sys.stderr)
        elif SINK.target != "stderr" and not args.verbose:
            print(f"pylogd: {failure}", file=sys.stderr)
        return 1
    try:
        daemon.run()
    finally:
        if pidfile:
            pidfile.remove(log)
        log.info("exited")
    return 0


def missing_net_admin(topology: Topology) -> str | None:
    """Why the daemon cannot start without CAP_NET_ADMIN, in one line, when an input needs it and the
    process lacks it; None otherwise.  Said before anything is opened: the failures that would follow
    (the log file's "Permission denied", the kernel's "Operation not permitted" on a group) name the
    symptom, not the cause."""
    inputs = sorted({i.spec.name for i in topology.instances.values() if getattr(i.plugin, "needs_net_admin", False)})
    if not inputs or has_net_admin():
        return None
    uid = os.geteuid()
    need = "needs" if len(inputs) == 1 else "need"
    return (
        f"not started: {', '.join(inputs)} {need} root or CAP_NET_ADMIN to read netfilter's netlink, and pylogd "
        f"runs as {user_name(uid)} (uid {uid}) without it; start it as root (sudo, or its systemd unit, which "
        "keeps only that capability) or give it CAP_NET_ADMIN"
    )


def close_inherited_descriptors() -> None:
    """Before detaching: close every descriptor above 2 that the caller left open (pylogd has opened
    none yet), so a pipe or a terminal of the caller is not kept open for the daemon's lifetime."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
                os.close(fd)


# ---------------------------------------------------------------------------------------------
# -i


def resolve_plugins(registry: Registry, what: str) -> list[type[Plugin]]:
    """A plugin name, a ulogd .so path (its built-in), or a .py file / module (every plugin it defines)."""
    if what.endswith(".so"):
        classes = registry.load(what)
        if not classes:
            raise ConfigError(None, f"pylogd has no built-in plugin for {what}")
        return classes
    if what.endswith(".py") or os.sep in what:
        return registry.load(what)
    return [registry.require(what, None)]


def info(registry: Registry, what: str, as_json: bool) -> int:
    try:
        classes = resolve_plugins(registry, what)
    except ConfigError as exc:
        print(f"pylogd: {exc}", file=sys.stderr)
        return 1
    if as_json:
        specs = [{**spec_dict(cls.spec), "differences": differences(cls)} for cls in classes]
        print(json.dumps(specs[0] if len(specs) == 1 else specs, indent=2))
    else:
        print("\n".join(spec_text(cls.spec) + differences_text(differences(cls)) for cls in classes), end="")
    return 0


DIFFERENCES_TITLE = "Differences from ulogd 2.0.8"


def differences(cls: type[Plugin]) -> str:
    """The "Differences from ulogd 2.0.8" section of the docstring of the module defining ``cls``
    (its body, without the title and its underline), or '' when it has none.  The docstring is the one
    place the differences are written, so -i, the README's promise and the code cannot drift apart."""
    module = sys.modules.get(cls.__module__)
    lines = ((module and module.__doc__) or "").splitlines()
    if DIFFERENCES_TITLE not in lines:
        return ""
    body = lines[lines.index(DIFFERENCES_TITLE) + 1 :]
    if body and body[0].strip() and not body[0].strip("-"):
        body = body[1:]
    for i in range(len(body) - 1):  # up to the next section: a title underlined with dashes
        if body[i].strip() and body[i + 1].strip() and not body[i + 1].strip("-="):
            body = body[:i]
            break
    return "\n".join(body).strip("\n")


def differences_text(text: str) -> str:
    """The section after ulogd's -i layout, indented as its blocks are."""
    if not text:
        return ""
    return f"{DIFFERENCES_TITLE}:\n" + "".join(f"\t{line}\n" if line else "\n" for line in text.splitlines())


def spec_text(spec: PluginSpec) -> str:
    """ulogd's ``-i`` layout."""
    out = [f"Name: {spec.name}\n"]
    if spec.options:
        out.append("Config options:\n")
        for o in spec.options:
            default = "" if o.default is None else o.default
            mandatory = ", Mandatory" if o.mandatory else ""
            out.append(f"\tVar: {o.name} ({o.type.value}, Default: {default}{mandatory})\n")
            if o.help:  # beyond ulogd's layout: what the option does
                out.append(f"\t\t{o.help}\n")
    out.append("Input keys:\n")
    if spec.kind is Kind.INPUT:
        out.append("\tInput plugin, No keys\n")
    elif not spec.inputs:
        out.append("\tNo statically defined keys\n")
    for k in spec.inputs:
        out.append(f"\tKey: {k.name} ({k.type.label}{', optional' if k.optional else ''})\n")
    out.append("Output keys:\n")
    if spec.kind is Kind.OUTPUT:
        out.append("\tOutput plugin, No keys\n")
    elif not spec.outputs:
        out.append("\tNo statically defined keys\n")
    for k in spec.outputs:
        out.append(f"\tKey: {k.name} ({k.type.label})\n")
    return "".join(out)


def spec_dict(spec: PluginSpec) -> dict[str, Any]:
    def keys(ks: tuple) -> list[dict[str, Any]]:
        return [
            {
                "name": k.name,
                "type": k.type.name,
                "optional": k.optional,
                "help": k.help,
                **({"json_name": k.cim} if k.cim else {}),
            }
            for k in ks
        ]

    return {
        "name": spec.name,
        "kind": spec.kind.value,
        "help": spec.help,
        "options": [
            {
                "name": o.name,
                "type": "int" if o.type is OptType.INT else "string",
                "default": o.default,
                "mandatory": o.mandatory,
                "help": o.help,
                **({"path": True} if o.path else {}),
                **({"choices": list(o.choices)} if o.choices else {}),
                **({"min": o.min} if o.min is not None else {}),
                **({"max": o.max} if o.max is not None else {}),
            }
            for o in spec.options
        ],
        "wildcard_inputs": spec.wildcard_inputs,
        "inputs": keys(spec.inputs),
        "outputs": keys(spec.outputs),
    }


# ---------------------------------------------------------------------------------------------
# --check


def describe_topology(topology: Topology) -> str:
    out = []
    g = topology.global_options
    logfile = g["logfile"] or f"(stderr; with -d {DAEMON_LOGFILE})"
    out.append(f"global: logfile={logfile} loglevel={g['loglevel']}\n")
    for plan in topology.stacks:
        out.append(f"stack {plan.number} ({plan.decl.loc}): {plan.decl.text}\n")
        for inst, sources in zip(plan.instances, plan.sources, strict=True):
            opts = " ".join(f"{k}={_show(v)}" for k, v in inst.plugin.options.items())
            out.append(f"  {inst.id}:{inst.spec.name} ({inst.spec.kind.value}){' ' + opts if opts else ''}\n")
            if sources:
                fed = ", ".join(f"{k}<-{src}" for k, src in sources.items())
                out.append(f"    reads {fed}\n")
    out.append(f"{len(topology.stacks)} stack(s), {len(topology.instances)} instance(s): configuration OK\n")
    return "".join(out)


def _show(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    return "(unset)" if value is None else str(value)
