"""Stacks: built and resolved once from the configuration, then run per event.

Building turns ``stack=`` lines into plugin instances, checks the plugin kinds,
and resolves every input key to the slot of the nearest earlier plugin that
outputs a key of that name.  Running an event is then a walk over prebuilt
handlers on one preallocated record per stack.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import (
    GLOBAL,
    MAX_WARNINGS,
    ConfigError,
    Loc,
    RawConfig,
    choices_hint,
    clip,
    closest,
    instance_options,
    listing,
    section_options,
)
from .keys import Key, types_compatible
from .log import ERROR, NAMED_DESTINATIONS, Logger
from .plugin import STOP, Feed, Input, Kind, Output, Plugin, PluginError, Slots, int_option, path_option, str_option
from .registry import Registry
from .runner import OutputRunner
from .spool import Spool

_TOKEN = re.compile(r"^([A-Za-z0-9_.\-]+):([A-Za-z0-9_]+)$")
#: ulogd's 254-character lines hold about 60 plugins; nobody needs more, and the bounds keep a
#: mutated or hostile config from costing minutes and gigabytes before it is refused
MAX_STACK_PLUGINS = 64
MAX_STACKS = 1024


@dataclass
class StackDecl:
    text: str
    loc: Loc
    tokens: list[tuple[str, str]]  # (instance id, plugin name)


def parse_stack(text: str, loc: Loc) -> StackDecl:
    tokens = []
    raws = text.split(",")
    if len(raws) > MAX_STACK_PLUGINS:
        raise ConfigError(loc, f"a stack of {len(raws)} plugins", f"at most {MAX_STACK_PLUGINS}")
    for raw in raws:
        token = raw.strip()
        m = _TOKEN.match(token)
        if not m:
            raise ConfigError(
                loc,
                f'malformed stack token "{clip(token)}" in "{clip(text)}"',
                "each token is id:PLUGIN, e.g. log1:NFLOG,base1:BASE,emu1:LOGEMU",
            )
        tokens.append((m.group(1), m.group(2)))
    return StackDecl(text, loc, tokens)


@dataclass
class Instance:
    id: str
    plugin: Plugin
    loc: Loc  # where it was first used

    @property
    def spec(self):
        return self.plugin.spec


@dataclass
class StackPlan:
    """A resolved stack: instances in order, each with its Slots, and the record size."""

    number: int
    decl: StackDecl
    instances: list[Instance]
    slots: list[Slots]
    size: int
    sources: list[dict[str, str]] = field(default_factory=list)  # per plugin: input key -> source id

    def reads(self) -> set[int]:
        """The slots some plugin of the stack reads."""
        return set().union(*(slots.read() for slots in self.slots))


@dataclass
class Topology:
    instances: dict[str, Instance]
    stacks: list[StackPlan]
    global_options: dict[str, Any]


GLOBAL_OPTIONS = (
    path_option("logfile", None, "where the daemon logs: a file path, syslog or stdout", not_paths=NAMED_DESTINATIONS),
    # the levels -l takes; ulogd would take any number, but no message has a level in between
    int_option(
        "loglevel",
        5,
        "lowest level logged: 1 debug, 3 info, 5 notice, 7 error, 8 fatal",
        choices=("1", "3", "5", "7", "8"),
    ),
    str_option("plugin", None, "a plugin to load: a ulogd .so path (selects the built-in), a .py file or a module"),
    str_option("stack", None, "a stack: id:PLUGIN,id:PLUGIN,..."),
    path_option(
        "spool_dir",
        None,
        "where what an output has not written waits on disk once a write failed or it waited a second (a "
        "directory per output and stack is made in it): written, in order, once the output works again, also "
        "after a restart or kill -9. Unset: it waits in memory, and past that bound is dropped (counted, logged)",
    ),
    int_option(
        "realtime",
        1,
        "1: the thread reading the kernel runs under SCHED_RR at the highest priority, as ulogd's does "
        "(needs root or CAP_SYS_NICE; the systemd unit sets it); 0: the normal scheduler",
        choices=("0", "1"),
    ),
    int_option(
        "spool_max_bytes",
        1 << 30,
        "the most disk each output's spool may take, in bytes; past that new entries are dropped",
        min=1 << 20,
        max=1 << 50,
    ),
)


def build(raw: RawConfig, registry: Registry, log_factory: Callable[[str], Logger]) -> Topology:
    """Instances and resolved stacks from a parsed config.  Every failure is a ConfigError (a
    config never ends in a traceback); sections no stack uses are added to ``raw.warnings``."""
    try:
        topology = _build(raw, registry, log_factory)
    except ConfigError:
        raise
    except Exception as exc:  # a bug of pylogd's or of a plugin's: still one line, and named as such
        raise ConfigError(
            None, f"internal error checking {clip(raw.path, 200)}: {type(exc).__name__}: {clip(str(exc))}"
        ) from None
    raw.warnings.extend(_unused_sections(raw, topology))
    return topology


def _unused_sections(raw: RawConfig, topology: Topology) -> list[tuple[Loc, str]]:
    """A warning for each section no stack uses, naming the used id it may be a misspelling of.
    Not an error: ulogd's sample configs keep sections for stacks left commented out."""
    used = list(dict.fromkeys(inst.id for inst in topology.instances.values()))
    unused = [
        section
        for name, section in raw.sections.items()
        if name != GLOBAL and name not in topology.instances and name not in raw.commented_ids
    ]
    warnings = []
    for section in unused[:MAX_WARNINGS]:
        close = closest(section.name, used)
        mean = f"; did you mean [{close}]?" if close else ""
        warnings.append((section.loc, f"section [{clip(section.name)}] is used by no stack{mean}"))
    if len(unused) > MAX_WARNINGS:
        warnings.append((unused[MAX_WARNINGS].loc, f"and {len(unused) - MAX_WARNINGS} more sections no stack uses"))
    return warnings


def _build(raw: RawConfig, registry: Registry, log_factory: Callable[[str], Logger]) -> Topology:
    global_section = raw.sections.get(GLOBAL)
    if global_section is None:
        raise ConfigError(Loc(raw.path, 1), "no [global] section", "add [global] with at least one stack= line")
    options, _ = section_options(GLOBAL_OPTIONS, global_section, "[global]", multi=frozenset({"plugin", "stack"}))
    plugin_entries = [e for e in global_section.entries if e.key == "plugin"]
    for entry in plugin_entries:
        registry.load(entry.value, entry.loc, lazy=True)
    stack_entries = [e for e in global_section.entries if e.key == "stack"]
    if not stack_entries:
        raise ConfigError(global_section.loc, "no stack= line in [global]", "add e.g. stack=log1:NFLOG,base1:BASE,...")
    if len(stack_entries) > MAX_STACKS:
        raise ConfigError(stack_entries[MAX_STACKS].loc, f"{len(stack_entries)} stacks", f"at most {MAX_STACKS}")

    instances: dict[str, Instance] = {}
    plans = []
    for number, entry in enumerate(stack_entries, 1):
        decl = parse_stack(entry.value, entry.loc)
        plans.append(_build_stack(number, decl, raw, registry, instances, log_factory))
    _check_exclusive(instances)
    return Topology(instances, plans, options)


def _check_exclusive(instances: dict[str, Instance]) -> None:
    """Two instances that need the same exclusive thing (an NFLOG group) could not both start."""
    holders: dict[str, Instance] = {}
    for inst in instances.values():
        for claim in inst.plugin.exclusive():
            first = holders.setdefault(claim, inst)
            if first is not inst:
                raise ConfigError(
                    inst.loc,
                    f"{inst.id}:{inst.spec.name} and {first.id}:{first.spec.name} (at {first.loc}) both read {claim}",
                    "one socket gets a group's packets: use one instance in both stacks, or another group",
                )


def _build_stack(
    number: int,
    decl: StackDecl,
    raw: RawConfig,
    registry: Registry,
    instances: dict[str, Instance],
    log_factory: Callable[[str], Logger],
) -> StackPlan:
    loc = decl.loc
    if len(decl.tokens) < 2:
        raise ConfigError(loc, f'stack "{clip(decl.text)}" needs at least an input and an output')
    members: list[Instance] = []
    for position, (iid, name) in enumerate(decl.tokens):
        cls = registry.require(name, loc)
        token, shown_id = clip(f"{iid}:{name}"), clip(iid)
        kind = cls.spec.kind
        if position == 0 and kind is not Kind.INPUT:
            raise ConfigError(
                loc,
                f'first plugin in stack "{token}" is a {kind.value}, not an input',
                _kind_hint(registry, Kind.INPUT),
            )
        if position == len(decl.tokens) - 1 and kind is not Kind.OUTPUT:
            raise ConfigError(
                loc,
                f'last plugin in stack "{token}" is a {kind.value}, not an output',
                _kind_hint(registry, Kind.OUTPUT),
            )
        if 0 < position < len(decl.tokens) - 1 and kind is not Kind.FILTER:
            raise ConfigError(
                loc,
                f'"{token}" is an {kind.value} plugin; only filters may stand inside a stack',
                _kind_hint(registry, Kind.FILTER),
            )
        if any(m.id == iid for m in members):
            raise ConfigError(
                loc, f'instance id "{shown_id}" appears twice in one stack', "give each plugin of a stack its own id"
            )
        key = iid
        inst = instances.get(key)
        if inst is not None and inst.spec.name != name:
            # ulogd makes an instance per stack, each configured from the id's section: the same id may
            # name another plugin in another stack (its example config has print1:PRINTPKT and
            # print1:PRINTFLOW).  pylogd shares an id's instance between stacks, one per plugin.
            key = f"{iid}:{name}"
            inst = instances.get(key)
        if inst is None:
            section = raw.sections.get(iid)
            options = instance_options(cls.spec, iid, section, loc)
            plugin = cls(iid, options, log_factory(iid))
            try:
                plugin.configure()
            except Exception as exc:
                where = section.loc if section else loc
                option = getattr(exc, "option", None)
                if option and section:
                    where = next((e.loc for e in section.entries if e.key == option), where)
                # a PluginError is the plugin's own message; anything else is a bug, named as one
                what = "" if isinstance(exc, PluginError) else f"internal error: {type(exc).__name__}: "
                raise ConfigError(where, f"[{shown_id}] ({name}): {what}{clip(str(exc), 160)}") from None
            inst = instances[key] = Instance(iid, plugin, loc)
        members.append(inst)
    return _resolve(number, decl, members, registry)


def _kind_hint(registry: Registry, kind: Kind) -> str:
    names = [n for n in registry.names() if registry.get(n).spec.kind is kind]  # type: ignore[union-attr]
    return f"{kind.value} plugins: {', '.join(names)}"


def _resolve(number: int, decl: StackDecl, members: list[Instance], registry: Registry) -> StackPlan:
    bases = []
    size = 0
    # key name -> (member, index of its first output of that name), in stack order
    providers: dict[str, list[tuple[int, int]]] = {}
    for j, inst in enumerate(members):
        bases.append(size)
        size += len(inst.spec.outputs)
        for i, k in enumerate(inst.spec.outputs):
            found = providers.setdefault(k.name, [])
            if not found or found[-1][0] != j:
                found.append((j, i))
    all_slots: list[Slots] = []
    sources: list[dict[str, str]] = []
    for position, inst in enumerate(members):
        outputs = {k.name: bases[position] + i for i, k in enumerate(inst.spec.outputs)}
        wanted: list[Key] = list(inst.spec.inputs)
        wildcard: list[tuple[Key, int]] = []
        if inst.spec.wildcard_inputs:
            reads = inst.plugin.wildcard_reads  # type: ignore[attr-defined]
            for earlier in members[:position]:
                wanted.extend(k for k in earlier.spec.outputs if reads(k))
        inputs: dict[str, int | None] = {}
        src_names: dict[str, str] = {}
        for k in wanted:
            if k.inactive or k.name in inputs:
                continue
            found = _nearest(members, bases, providers, position, k.name)
            if found is None:
                if k.optional:
                    inputs[k.name] = None
                    continue
                available = [o.name for m in members[:position] for o in m.spec.outputs]
                raise ConfigError(
                    decl.loc,
                    f'{clip(inst.id)}:{inst.spec.name} needs key "{k.name}", which no plugin before it provides',
                    _provider_hint(registry, k.name)
                    or choices_hint(k.name, list(dict.fromkeys(available)), "keys available there"),
                )
            source, okey, slot = found
            if not types_compatible(k.type, okey.type):
                raise ConfigError(
                    decl.loc,
                    f'type mismatch: {clip(inst.id)}:{inst.spec.name} reads "{k.name}" as {k.type.name} '
                    f"but {clip(source.id)}:{source.spec.name} provides {okey.type.name}",
                )
            inputs[k.name] = slot
            src_names[k.name] = source.id
            if inst.spec.wildcard_inputs and k not in inst.spec.inputs:
                wildcard.append((okey, slot))
        all_slots.append(Slots(inputs, outputs, wildcard, size))
        sources.append(src_names)
    return StackPlan(number, decl, members, all_slots, size, sources)


def _provider_hint(registry: Registry, key_name: str) -> str:
    """Which plugins provide a key a stack lacks: a filter to add, else the inputs that have it.
    Empty when none does (then the key's name is likely misspelt)."""
    providers: dict[Kind, list[str]] = {Kind.FILTER: [], Kind.INPUT: []}
    for name in registry.names():
        spec = registry.get(name).spec  # type: ignore[union-attr]
        if spec.kind in providers and any(k.name == key_name for k in spec.outputs):
            providers[spec.kind].append(name)
    filters, inputs = providers[Kind.FILTER], providers[Kind.INPUT]
    if len(filters) == 1:
        return f"add {filters[0]} before it, which provides {key_name}"
    if filters:
        return f"add one of {listing(filters)} before it: each provides {key_name}"
    if inputs:
        return f"{key_name} comes from the input {listing(inputs)}"
    return ""


def _nearest(
    members: list[Instance], bases: list[int], providers: dict[str, list[tuple[int, int]]], position: int, name: str
) -> tuple[Instance, Key, int] | None:
    """The output named ``name`` of the nearest plugin before ``position``: its instance, key and slot."""
    # the default is a list, as the annotation says: Cython 3.3.0 types what .get() returns from the
    # dict's declared value type and refused a tuple default at run time ("Expected list, got tuple")
    for j, i in reversed(providers.get(name, [])):
        if j < position:
            return members[j], members[j].spec.outputs[i], bases[j] + i
    return None


# ---------------------------------------------------------------------------------------------
# runtime


def spool_for(plan: StackPlan, options: dict[str, Any], log: Logger) -> Spool | None:
    """The spool of a stack's output, when ``[global] spool_dir`` is set: its directory is named after
    the output and the stack's text, so a restart with the same stack finds what it left."""
    path = spool_path(plan, options)
    return None if path is None else Spool(path, options["spool_max_bytes"], log)


def spool_path(plan: StackPlan, options: dict[str, Any]) -> str | None:
    """The directory :func:`spool_for` uses (None: no spool_dir)."""
    if not options.get("spool_dir"):
        return None
    return os.path.join(options["spool_dir"], f"{plan.instances[-1].id}.{zlib.crc32(plan.decl.text.encode()):08x}")


class Stack:
    """A running stack: one preallocated record and the prebuilt handler chain."""

    def __init__(
        self, plan: StackPlan, log: Logger, spool: Spool | None = None, runner: OutputRunner | None = None
    ) -> None:
        """``runner``: at a reload, the runner of the stack this one replaces, whose output instance
        is kept: what waits there (memory, spool) is written by this stack's output, in order."""
        self.plan = plan
        self.name = str(plan.number)
        self.log = log
        self.values: list = [None] * plan.size
        self.stopped = 0
        self.errors = 0
        members = plan.instances
        self.filters = [
            inst.plugin.handler(slots)  # type: ignore[attr-defined]
            for inst, slots in zip(members[1:-1], plan.slots[1:-1], strict=True)
        ]
        output = members[-1].plugin
        assert isinstance(output, Output)
        self.convert = output.handler(plan.slots[-1])
        self.fused = output.fused(plan)
        if runner is None:
            runner = OutputRunner(output, self.name, log, *output.backlog_limits(), spool=spool)
        self.runner = runner
        self.run = self._make_run()

    def _make_run(self) -> Callable[..., None]:
        if self.fused is not None:
            return self._make_fused_run(self.fused)
        values = self.values
        blank = [None] * len(values)
        filters = tuple(self.filters)
        convert = self.convert
        append = self.runner.batch.append
        stack = self
        events = 0

        def run(keys: Sequence | None = None) -> None:
            """One event: the input's keys are in the record already, or they are ``keys`` (the
            first len(keys) of them; the others stay None)."""
            nonlocal events
            events += 1  # a closure variable: cheaper than an attribute, read by count()
            if keys is not None:
                values[: len(keys)] = keys
            try:
                for handler in filters:
                    if handler(values) is STOP:
                        stack.stopped += 1
                        break
                else:
                    entry = convert(values)
                    if entry is not None:
                        append(entry)
            except Exception as exc:
                stack.failed(exc)
            values[:] = blank

        def count() -> int:
            return events

        self._events = count
        return run

    def _make_fused_run(self, fused: Callable[[Sequence], Any]) -> Callable[..., None]:
        """run() for an output that makes its entry from the input's keys (:meth:`Output.fused`): no
        filter runs, and keys handed over are not copied into the record."""
        values = self.values
        blank = [None] * len(values)
        append = self.runner.batch.append
        stack = self
        events = 0

        def run(keys: Sequence | None = None) -> None:
            nonlocal events
            events += 1
            try:
                entry = fused(values if keys is None else keys)
                if entry is not None:
                    append(entry)
            except Exception as exc:
                stack.failed(exc)
            if keys is None:
                values[:] = blank

        def count() -> int:
            return events

        self._events = count
        return run

    def reads(self) -> set[int]:
        """The slots something of this stack reads: its output's alone when no filter runs."""
        return self.plan.slots[-1].read() if self.fused is not None else self.plan.reads()

    @property
    def events(self) -> int:
        return self._events()

    def failed(self, exc: BaseException) -> None:
        """An event that raised in a plugin: counted, and logged at most every 10 s."""
        self.errors += 1
        self.log.every(10, ERROR, "event", f"stack {self.name}: {self._culprit(exc)} failed on an event: {exc!r}")

    def _culprit(self, exc: BaseException) -> str:
        modules = {type(inst.plugin).__module__: f"{inst.id}:{inst.spec.name}" for inst in self.plan.instances}
        tb, name = exc.__traceback__, "a plugin"
        while tb is not None:
            name = modules.get(tb.tb_frame.f_globals.get("__name__", ""), name)
            tb = tb.tb_next
        return name

    def statistics(self) -> dict[str, int]:
        r = self.runner
        return {
            "events": self.events,
            "stopped": self.stopped,
            "written": r.written,
            "pending": r.pending(),
            "errors": self.errors + r.write_errors,
            "dropped": r.dropped,
            "rejected": r.rejected,
        }


class InputFeed(Feed):
    """Feeds one input's events to every stack that starts with it, each with its own record."""

    def __init__(self, inp: Input, stacks: list[Stack]) -> None:
        self.input = inp
        self.stacks = stacks
        self.values = stacks[0].values
        self._slots = {k.name: i for i, k in enumerate(inp.spec.outputs)}
        # the input's keys are at the same slots in every stack it feeds
        self._read = set().union(*(s.reads() for s in stacks))
        runners = [s.runner for s in stacks]
        self.emit, self.emit_keys = self._make_emits()

        def flush() -> None:
            for r in runners:
                r.flush()

        self.flush = flush

    def slot(self, name: str) -> int:
        return self._slots[name]

    def used(self, name: str) -> bool:
        return self._slots[name] in self._read

    def _make_emits(self) -> tuple[Callable[[], None], Callable[[Sequence], None]]:
        """emit() and emit_keys() for the stacks of this input."""
        first = self.stacks[0]
        if len(self.stacks) == 1:
            return first.run, first.run
        n = len(self.input.spec.outputs)
        values, run_first = first.values, first.run
        runs = [s.run for s in self.stacks]
        others = runs[1:]

        def emit() -> None:
            keys = values[:n]  # the first stack's record holds what the input wrote
            for run in others:
                run(keys)
            run_first()

        def emit_keys(keys: Sequence) -> None:
            for run in runs:
                run(keys)

        return emit, emit_keys
