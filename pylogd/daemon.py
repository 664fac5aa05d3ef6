"""The running daemon: starting instances, signals, statistics, shutdown; pidfile, privileges, daemonizing."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import grp
import os
import pwd
import signal
import struct
import time

from . import __version__
from .config import ConfigError, load
from .control import ControlServer
from .log import SINK, Logger
from .loop import EventLoop
from .notify import Notifier
from .plugin import Input, Kind, Output, Plugin, PluginError
from .registry import Registry
from .runner import OutputRunner
from .spool import Spool, SpoolError
from .stack import InputFeed, Instance, Stack, StackPlan, Topology, build, spool_for, spool_path

#: at a reload, how long a removed stack's output may take to write what the stack accepted
RETIRE_WRITE_FOR = 5.0


class DaemonError(Exception):
    """A start-up failure that is not a config mistake (pidfile, user, a plugin that cannot start)."""


class Daemon:
    def __init__(
        self,
        topology: Topology,
        log: Logger,
        control_path: str | None = None,
        config_path: str | None = None,
        loglevel: int | None = None,
    ) -> None:
        self.topology = topology
        self.log = log
        self.config_path = config_path  # what a reload reads again
        # where relative paths of the config were resolved at start: -d moves the daemon to /, and a
        # reload must read them as the start did
        try:
            self.start_dir: str | None = os.getcwd()
        except OSError:
            self.start_dir = None
        self.loglevel = loglevel  # -l: it outranks the config's loglevel, at a reload too
        actions = {"reload": self.reload_request} if config_path else {}
        self.control = ControlServer(control_path, self.snapshot, log, actions=actions) if control_path else None
        self.started_at = time.time()
        self.loop = EventLoop()
        self.stacks: list[Stack] = []
        self.feeds: list[InputFeed] = []
        self._started: list = []
        self.notifier: Notifier | None = None

    def _ordered(self, kind: Kind) -> list:
        return [inst for inst in self.topology.instances.values() if inst.spec.kind is kind]

    def start(self) -> None:
        """Open every output, then filters, then inputs, so nothing arrives before it can be written."""
        for kind in (Kind.OUTPUT, Kind.FILTER, Kind.INPUT):
            if kind is Kind.INPUT:  # handlers are built from started plugins, before any event can come
                options = self.topology.global_options
                for plan in self.topology.stacks:
                    try:
                        self.stacks.append(Stack(plan, self.log, spool_for(plan, options, self.log)))
                    except SpoolError as exc:
                        raise DaemonError(str(exc)) from None
                    except PluginError as exc:  # a handler refuses what its plugin found at start (a table)
                        raise DaemonError(f"stack {plan.number} [{plan.decl.text}]: {exc}") from None
            for inst in self._ordered(kind):
                if kind is Kind.INPUT:
                    feed = InputFeed(inst.plugin, [s for s in self.stacks if s.plan.instances[0] is inst])
                    inst.plugin.feed = feed
                    self.feeds.append(feed)
                self._start_instance(inst)
                self._started.append(inst)

    def run(self) -> None:
        """Start the output workers and signal handling, then loop until a terminal signal.

        This runs after daemonizing: worker threads would not survive the fork."""
        for stack in self.stacks:
            stack.runner.start()
        loop = self.loop
        loop.add_signal(signal.SIGTERM, self._terminate)
        loop.add_signal(signal.SIGINT, self._terminate)
        loop.add_signal(signal.SIGHUP, self._hangup)
        loop.add_signal(signal.SIGUSR1, self._statistics)
        loop.add_signal(signal.SIGUSR2, self._to_inputs)
        loop.call_every(0.25, self._retry_writes)  # each runner backs off on its own
        # made here, after daemonizing: the watchdog is meant for the process that runs the loop
        notifier = self.notifier = Notifier()
        if notifier.watchdog_interval:
            loop.call_every(notifier.watchdog_interval, notifier.watchdog)
        if notifier.enabled:
            loop.call_every(10.0, lambda: notifier.status(self.status_line()))
        if self.control:
            self.control.start(loop)
        # what start-up made lives as long as the process: out of the collector's sight, a full
        # collection no longer walks it (~10 ms over ~60,000 objects, time in which a burst fills a
        # small receive buffer while the reader waits)
        gc.collect()
        gc.freeze()
        self.log.info("initialization finished, entering main loop")
        notifier.ready(self.status_line())
        try:
            self.loop.run()
        finally:
            self.shutdown()

    def _terminate(self, signum: int) -> None:
        self.log.notice(f"{signal.Signals(signum).name} received, flushing and exiting")
        self.loop.stop()

    def _hangup(self, signum: int) -> None:
        self.log.notice("SIGHUP received: reopening files and connections")
        if self.notifier:
            self.notifier.reloading()
        self._reopen()
        if self.notifier:
            self.notifier.ready(self.status_line())

    def _to_inputs(self, signum: int) -> None:
        self.log.notice(f"{signal.Signals(signum).name} received: passing it to the inputs")
        for inst in self._started:
            if isinstance(inst.plugin, Input):
                self._deliver(inst, signum)

    def _deliver(self, inst, signum: int) -> None:
        try:
            inst.plugin.on_signal(signum)
        except Exception as exc:
            self.log.error(f"{inst.id} ({inst.spec.name}) failed handling {signal.Signals(signum).name}: {exc!r}")

    # -- live reconfiguration -------------------------------------------------------------------

    def reload_request(self) -> dict:
        """The control socket's ``reload``: what :meth:`reload` did, for ``pylogd reload``."""
        ok, message = self.reload()
        return {"reload": "ok" if ok else "failed", "message": message}

    def reload(self) -> tuple[bool, str]:
        """Read the config file again and apply it without a restart; returns (applied, one line).

        Files are reopened first, whatever the new config holds (logrotate's postrotate may run
        ``systemctl reload``).  The new config is then checked completely (as ``--check`` does); a
        wrong one changes nothing.  An instance whose plugin and options are unchanged is kept (its
        sockets, read-ahead, tables, connections); a stack whose line and instances are unchanged is
        kept whole (its record, its runner's backlog and spool).  Removed and changed stacks' inputs
        hand what they read ahead to the old stacks, whose runners then write it and close; a changed
        stack whose output instance is kept takes over the old stack's runner (its backlog)."""
        self.log.info(f"reloading {self.config_path}")
        if self.notifier:
            self.notifier.reloading()
        try:
            self._reopen()
            try:
                ok, message = self._reload()
            except Exception as exc:  # a bug: named as one, the daemon goes on with what runs
                ok, message = False, f"reload failed: internal error: {type(exc).__name__}: {exc}"
                self.log.error(message)
                from .cli import log_traceback  # the CLI's helper; imported late, it imports this module

                log_traceback(self.log, exc)
        finally:
            if self.notifier:
                self.notifier.ready(self.status_line())
        return ok, message

    def _reopen(self) -> None:
        SINK.reopen()
        for inst in self._started:
            self._deliver(inst, signal.SIGHUP)

    def _reload(self) -> tuple[bool, str]:
        assert self.config_path is not None
        try:
            new = self._read_config()
        except ConfigError as exc:
            return self._refused(str(exc))
        old = self.topology
        running = {id(inst.plugin) for inst in self._started}
        fresh: dict[int, Plugin] = {}  # id(new Instance) -> the plugin the new config made for it
        for key, inst in new.instances.items():
            fresh[id(inst)] = inst.plugin
            prev = old.instances.get(key)
            if (
                prev is not None
                and id(prev.plugin) in running
                and prev.spec.name == inst.spec.name
                and prev.plugin.options == inst.plugin.options
            ):
                inst.plugin = prev.plugin  # kept: the new plans use the running plugin
        kept = {id(inst.plugin) for inst in new.instances.values()} & running
        same_spool = all(old.global_options[k] == new.global_options[k] for k in ("spool_dir", "spool_max_bytes"))

        # stacks: the same line over the same running plugins is the same stack, kept whole
        by_text: dict[str, list[Stack]] = {}
        for stack in self.stacks:
            by_text.setdefault(stack.plan.decl.text, []).append(stack)
        stacks: list[Stack | None] = []  # per new plan: the kept stack, else (below) a new one
        for plan in new.stacks:
            candidates = by_text.get(plan.decl.text, []) if same_spool else []
            match = next((s for s in candidates if _same_plugins(s.plan, plan)), None)
            if match is not None:
                candidates.remove(match)
            stacks.append(match)
        kept_stacks = {id(s) for s in stacks if s is not None}
        retired = [s for s in self.stacks if id(s) not in kept_stacks]
        # a changed stack whose output instance is kept takes over a retired stack's runner: its backlog
        carried: dict[int, OutputRunner] = {}  # new plan number -> runner
        moves: list[tuple[Spool, str]] = []  # a carried spool takes the name of its new stack line
        if same_spool:
            donors = list(retired)
            for plan, stack in zip(new.stacks, stacks, strict=True):
                output = plan.instances[-1].plugin
                donor = next((s for s in donors if s.runner.output is output), None) if stack is None else None
                if donor is None:
                    continue
                spool = donor.runner.spool
                target = spool_path(plan, new.global_options)
                if spool is not None and target != spool.directory:
                    if target is None or os.path.lexists(target):
                        continue  # a spool of the new line's name exists: each keeps its own
                    moves.append((spool, target))
                donors.remove(donor)
                carried[plan.number] = donor.runner
        carried_ids = {id(r) for r in carried.values()}
        closing = [s.runner for s in retired if id(s.runner) not in carried_ids]  # written, then closed
        busy_spools = {r.spool.directory for r in closing if r.spool is not None}

        def ordered(kind: Kind) -> list[Instance]:
            return [inst for inst in new.instances.values() if inst.spec.kind is kind]

        # 1. new outputs and filters start, new stacks are built: a failure here changes nothing
        problems: list[str] = []
        started: list[Instance] = []
        made: list[OutputRunner] = []  # the runners of new stacks, started at the end
        deferred: set[int] = set()  # new stacks whose spool a closing runner holds: attached once it is closed
        try:
            for kind in (Kind.OUTPUT, Kind.FILTER):
                for inst in ordered(kind):
                    if id(inst.plugin) not in kept:
                        self._start_instance(inst)
                        started.append(inst)
            for i, plan in enumerate(new.stacks):
                if stacks[i] is not None:
                    continue
                runner = carried.get(plan.number)
                spool = None
                if runner is None and spool_path(plan, new.global_options) in busy_spools:
                    deferred.add(i)  # opened once the closing runner has let it go
                elif runner is None:
                    spool = spool_for(plan, new.global_options, self.log)
                stacks[i] = self._make_stack(plan, spool, runner)
                if runner is None:
                    made.append(stacks[i].runner)
        except (DaemonError, SpoolError) as exc:
            for inst in reversed(started):
                self._abort(inst)
            for runner in made:
                if runner.spool is not None:
                    runner.spool.close()
            return self._refused(str(exc))

        for spool, target in moves:  # so that a restart with this config finds what waits there
            try:
                spool.move(target)
            except OSError as exc:
                problems.append(f"cannot rename spool {spool.directory} to {target}: {exc.strerror}")

        # 2. inputs: those that go stop, those whose stacks changed feed the new ones; either way what
        # they read ahead goes to the stacks there were when it came
        old_feeds = {id(feed.input): feed for feed in self.feeds}
        to_start: list[Instance] = []
        feeds: list[InputFeed] = []
        for inst in self._started:
            if isinstance(inst.plugin, Input) and id(inst.plugin) not in kept:
                self._stop(inst)
        for inst in ordered(Kind.INPUT):
            if id(inst.plugin) not in kept:
                to_start.append(inst)
                continue
            feed = old_feeds[id(inst.plugin)]
            fed = [stacks[i] for i, plan in enumerate(new.stacks) if plan.instances[0] is inst]
            if fed != feed.stacks:
                new_feed = InputFeed(inst.plugin, fed)  # type: ignore[arg-type]
                if not inst.plugin.refeed(new_feed):  # type: ignore[union-attr]
                    # it cannot keep its socket for other stacks: it stops, and a new instance starts
                    # in its place
                    self._stop(inst)
                    inst.plugin = fresh[id(inst)]
                    to_start.append(inst)
                    continue
                feed = new_feed
            feeds.append(feed)

        # 3. retired stacks write what they accepted and close; plugins no longer used stop
        deadline = time.monotonic() + RETIRE_WRITE_FOR
        for runner in closing:
            runner.close(deadline)
        used = {id(inst.plugin) for inst in new.instances.values()}
        for inst in reversed(self._started):
            if id(inst.plugin) not in used and not isinstance(inst.plugin, Input):
                self._stop(inst)

        # 4. the spools that closing runners held, then the inputs to start
        for i in sorted(deferred):
            try:
                stacks[i].runner.attach_spool(spool_for(new.stacks[i], new.global_options, self.log))  # type: ignore[union-attr, arg-type]
            except SpoolError as exc:
                problems.append(f"stack {new.stacks[i].number} runs without its spool: {exc}")
        for inst in to_start:
            ready = [s for s, plan in zip(stacks, new.stacks, strict=True) if s and plan.instances[0] is inst]
            if not ready:
                problems.append(f"input {inst.id} ({inst.spec.name}) not started: none of its stacks could start")
                continue
            feed = InputFeed(inst.plugin, ready)  # type: ignore[arg-type]
            inst.plugin.feed = feed  # type: ignore[union-attr]
            try:
                self._start_instance(inst)
            except DaemonError as exc:
                problems.append(str(exc))
                continue
            started.append(inst)
            feeds.append(feed)

        # 5. the new configuration is the running one
        inputs = {id(feed.input) for feed in feeds}
        live: list[Stack] = []
        for plan, stack in zip(new.stacks, stacks, strict=True):
            if stack is None:
                continue
            stack.plan = plan  # a kept stack: the same slots and plugins; its number and line may move
            if id(plan.instances[0].plugin) in inputs:
                live.append(stack)
                stack.name = stack.runner.stack_name = str(plan.number)
            elif stack.runner in made:  # its input could not start: nothing came in
                made.remove(stack.runner)
                stack.runner.close(time.monotonic())
        for runner in made:
            runner.start()
        running = {id(inst.plugin) for inst in started} | kept
        self._started = [
            inst
            for kind in (Kind.OUTPUT, Kind.FILTER, Kind.INPUT)
            for inst in ordered(kind)
            if id(inst.plugin) in running and (kind is not Kind.INPUT or id(inst.plugin) in inputs)
        ]
        self.topology, self.stacks, self.feeds = new, live, feeds
        SINK.level = self.loglevel or new.global_options["loglevel"]
        logfile = new.global_options["logfile"]
        if logfile and logfile != old.global_options["logfile"]:
            try:
                SINK.open(logfile)
            except OSError as exc:
                problems.append(f"cannot open logfile {logfile}: {exc.strerror}")
        changes = (
            f"{len(kept_stacks)} stacks kept, {len(stacks) - len(kept_stacks)} started "
            f"({len(carried)} with the backlog of their output), {len(retired)} stopped"
        )
        if problems:
            message = f"reload applied in part ({changes}): " + "; ".join(problems)
            self.log.error(message)
            return False, message
        message = f"reloaded {self.config_path}: {changes}"
        self.log.notice(message)
        return True, message

    def _read_config(self) -> Topology:
        """The config file built (checked completely) with its relative paths resolved as at start."""
        assert self.config_path is not None
        here = os.getcwd()
        if self.start_dir is not None and self.start_dir != here:
            try:
                os.chdir(self.start_dir)
            except OSError as exc:
                raise ConfigError(
                    None,
                    f"the directory pylogd was started in ({self.start_dir}) cannot be entered ({exc.strerror}): "
                    "relative paths of the config would name other files",
                ) from None
        try:
            return build(load(self.config_path), Registry(), Logger)
        finally:
            os.chdir(here)

    def _refused(self, why: str) -> tuple[bool, str]:
        message = f"reload refused, the running configuration goes on: {why}"
        self.log.error(message)
        return False, message

    def _make_stack(self, plan: StackPlan, spool: Spool | None, runner: OutputRunner | None = None) -> Stack:
        try:
            return Stack(plan, self.log, spool, runner=runner)
        except PluginError as exc:
            raise DaemonError(f"stack {plan.number} [{plan.decl.text}]: {exc}") from None

    def _start_instance(self, inst: Instance) -> None:
        try:
            inst.plugin.start(self.loop)
        except (PluginError, OSError) as exc:
            raise DaemonError(f"cannot start {inst.id} ({inst.spec.name}): {exc}") from None
        except Exception as exc:  # a bug: named as one, its traceback kept for the log (pylogd.cli)
            raise DaemonError(
                f"cannot start {inst.id} ({inst.spec.name}): internal error: {type(exc).__name__}: {exc}"
            ) from exc

    def _abort(self, inst: Instance) -> None:
        try:
            inst.plugin.abort()
        except Exception as exc:
            self.log.error(f"{inst.id} ({inst.spec.name}) failed to stop cleanly: {exc!r}")

    def statistics_lines(self, saved: dict[str, dict[str, int]] | None = None) -> list[str]:
        lines = []
        for stack in self.stacks:
            counters = " ".join(f"{k}={v}" for k, v in stack.statistics().items())
            lines.append(f"stack {stack.name} [{stack.plan.decl.text}]: {counters}")
        for inst in self._started:
            extra = saved[inst.id] if saved and inst.id in saved else inst.plugin.statistics()
            if extra:
                counters = " ".join(f"{k}={v}" for k, v in extra.items())
                lines.append(f"{inst.spec.kind.value} {inst.id} ({inst.spec.name}): {counters}")
        return lines

    def status_line(self) -> str:
        """One line for systemd's STATUS=: what came in and what went out, over all stacks."""
        totals = dict.fromkeys(("events", "written", "pending", "dropped"), 0)
        for stack in self.stacks:
            counters = stack.statistics()
            for name in totals:
                totals[name] += counters[name]
        return f"{len(self.stacks)} stacks; " + ", ".join(f"{k} {v}" for k, v in totals.items())

    def snapshot(self) -> dict:
        """Every counter, for ``pylogd stats``: the daemon, each stack with its output's backlog, each plugin."""
        stacks = []
        for stack in self.stacks:
            runner = stack.runner
            stacks.append(
                {
                    "stack": stack.name,
                    "text": stack.plan.decl.text,
                    "output": runner.output.id,
                    **stack.statistics(),
                    "pending_bytes": runner.pending_bytes(),
                    "spooled": runner.spool.entries if runner.spool is not None else 0,
                    "failing_seconds": round(runner.failing_seconds(), 3),
                    "error": runner.current_error(),
                }
            )
        plugins = [
            {"id": inst.id, "plugin": inst.spec.name, "kind": inst.spec.kind.value, **inst.plugin.statistics()}
            for inst in self._started
        ]
        return {
            "pylogd": {
                "version": __version__,
                "pid": os.getpid(),
                "uptime_seconds": round(time.time() - self.started_at),
                "gc_frozen_objects": gc.get_freeze_count(),
            },
            "stacks": stacks,
            "plugins": plugins,
        }

    def _statistics(self, _signum: int) -> None:
        for line in self.statistics_lines():
            self.log.notice(line)

    def _retry_writes(self) -> None:
        for stack in self.stacks:
            stack.runner.retry()

    def shutdown(self, write_for: float = 10.0) -> None:
        """Stop reading, write everything accepted (a failing output gets ``write_for`` seconds), close
        every plugin."""
        if self.notifier:
            self.notifier.stopping()
        if self.control:
            self.control.close()
        for inst in reversed(self._started):
            if isinstance(inst.plugin, Input):
                self._stop(inst)  # an input's last drain happens here: count after it
        deadline = time.monotonic() + write_for
        for stack in self.stacks:
            stack.runner.close(deadline)
        saved = {inst.id: inst.plugin.statistics() for inst in self._started}  # before outputs close
        for inst in self._started:
            if not isinstance(inst.plugin, Input):
                self._stop(inst)
        for line in self.statistics_lines(saved):
            self.log.info(line)
        self._started.clear()
        self.loop.close()

    def abort(self) -> None:
        """Start-up was refused: release what started, and remove what it created that holds nothing
        (no empty output file is left behind by a daemon that never ran)."""
        if self.control:
            self.control.close()  # opened at start-up, before the failure
        for inst in reversed(self._started):
            try:
                inst.plugin.abort()
            except Exception as exc:
                self.log.error(f"{inst.id} ({inst.spec.name}) failed to stop cleanly: {exc!r}")
        self._started.clear()
        self.loop.close()

    def _stop(self, inst) -> None:
        try:
            inst.plugin.stop()
        except Exception as exc:
            self.log.error(f"{inst.id} ({inst.spec.name}) failed to stop cleanly: {exc!r}")

    def hand_over(self, uid: int, gid: int) -> None:
        """Before running as another user: what the daemon keeps writing to as it runs (the spools) becomes its."""
        for stack in self.stacks:
            spool = stack.runner.spool
            if spool is not None:
                try:
                    spool.hand_over(uid, gid)
                except OSError as exc:
                    raise DaemonError(f"cannot hand {spool.directory} over to uid {uid}: {exc.strerror}") from None

    def outputs(self) -> list[Output]:
        return [inst.plugin for inst in self._ordered(Kind.OUTPUT)]


def _same_plugins(a: StackPlan, b: StackPlan) -> bool:
    """Two plans of the same stack line: whether each position runs the same plugin object."""
    return all(x.plugin is y.plugin for x, y in zip(a.instances, b.instances, strict=True))


# ---------------------------------------------------------------------------------------------
# pidfile


class PidFile:
    """An exclusive, locked pidfile; a stale one (no live holder of its lock) is replaced."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def check(self) -> int | None:
        """Raise if another daemon holds the pidfile; return the pid of a stale file, if any."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DaemonError(f"cannot open pidfile {self.path}: {exc.strerror}") from None
        try:
            pid = _read_pid(fd)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise DaemonError(
                        f"another pylogd is already running with pid {pid} (pidfile {self.path})"
                    ) from None
                raise
            return pid
        finally:
            os.close(fd)

    def create(self, log: Logger) -> None:
        stale = self.check()
        if stale is not None or os.path.exists(self.path):
            log.notice(f"removing stale pidfile {self.path} of pid {stale}")
            os.unlink(self.path)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise DaemonError(f"pidfile {self.path} appeared while starting: another pylogd is starting") from None
        except OSError as exc:
            raise DaemonError(f"cannot create pidfile {self.path}: {exc.strerror}") from None
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def remove(self, log: Logger) -> None:
        """Remove the pidfile at exit.  After ``-u`` its directory may not let us: then it is emptied
        through the descriptor still open, so it names no process, and the next start replaces it."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            os.ftruncate(self.fd, 0)
            log.notice(f"pidfile {self.path} emptied, not removed ({exc.strerror}); the next start replaces it")
        os.close(self.fd)
        self.fd = None


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.read(fd, 32).decode().strip())
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# privileges and daemonizing


def lookup_user(spec: str) -> tuple[str, int, int]:
    """USER[:GROUP] → (user, uid, gid); the group defaults to the user's primary group."""
    user, _, group = spec.partition(":")
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise DaemonError(f'unknown user "{user}" (from -u {spec})') from None
    gid = pw.pw_gid
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise DaemonError(f'unknown group "{group}" (from -u {spec})') from None
    return user, pw.pw_uid, gid


PR_SET_KEEPCAPS = 8
CAP_NET_ADMIN = 12
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def has_net_admin(status: str = "/proc/self/status") -> bool:
    """Whether this process holds CAP_NET_ADMIN (root has it; so does a unit's AmbientCapabilities=):
    what binding an NFLOG group, subscribing to conntrack events and reading nfacct counters need."""
    try:
        with open(status, encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0  # no /proc: only root can be assumed to have it


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def drop_privileges(user: str, uid: int, gid: int) -> bool:
    """Become ``user`` but keep CAP_NET_ADMIN, which a running daemon still needs: conntrack table
    dumps (SIGUSR2, hash-mode resyncs) and socket buffer growth after an overrun.  Returns whether
    the capability was kept (not when it was not there to keep)."""
    libc = ctypes.CDLL(None, use_errno=True)
    keep = libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) == 0  # permitted capabilities survive setuid
    try:
        os.setgroups([])
        os.initgroups(user, gid)
        os.setgid(gid)
        os.setuid(uid)
    except OSError as exc:
        raise DaemonError(f"cannot switch to user {user} (uid {uid}, gid {gid}): {exc.strerror}") from None
    if not keep:
        return False
    libc.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0)
    header = struct.pack("=Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    bit = 1 << CAP_NET_ADMIN
    data = struct.pack("=6I", bit, bit, 0, 0, 0, 0)  # effective, permitted, inheritable; twice (64 bits)
    return libc.capset(header, data) == 0


def daemonize() -> None:
    """Detach from the terminal (classic double fork); the parent exits 0."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
