"""The plugin API: one declarative spec per plugin, and the three plugin kinds.

A plugin module defines a class derived from :class:`Input`, :class:`Filter` or
:class:`Output` whose ``spec`` attribute declares its name, options and keys.
Everything else (``-i``, ``--check``, config validation, the generated docs)
reads that one declaration.

Per event the core calls the callable returned by :meth:`Filter.handler` or
:meth:`Output.handler` with the stack's record (a list, see :mod:`pylogd.keys`).
Handlers are built once per stack, after key resolution, so they can keep the
slot numbers they need in local variables instead of looking names up per event.

Lifecycle
---------
One plugin object is one instance (an id of the config, shared by every stack that names it).
The core calls, in this order for an object, never twice and never after ``stop``:

``__init__(id, options, log)``
    ``options`` are checked one by one already (types, bounds, choices), relative paths made absolute.
``configure()``
    Check the options as a whole; raise :class:`PluginError`.  Opens nothing and changes nothing
    outside the object: ``--check`` and every reload run it on objects that may never start, and a
    reload builds a new object for each instance of the new config before it knows which it keeps.
``start(loop)``
    Open sockets, files, connections.  Outputs start first, then filters, then inputs, so when an
    input starts the whole stack can take events; an input's ``feed`` is set before its ``start``.
    May raise :class:`PluginError` or OSError: at start-up the daemon then stops, at a reload that
    change is refused (new outputs and filters) or the input is left out and the reload reports it.
``handler(slots)`` (filters, outputs)
    Called once per stack that uses the instance, after ``start``: at start-up, and again at a reload
    for each new or changed stack.  An instance's handlers for several stacks may be alive at once,
    and a handler for a stack made after the others must work as well as the first one.
``fused(plan)`` (outputs)
    Right after ``handler`` for the same stack: a way from the input's keys straight to the entry when
    the stack's filters make nothing the output could not make itself (None: the stack runs as built).
``reopen()`` (through ``on_signal(SIGHUP)``)
    Reopen files and reconnect (logrotate): on SIGHUP and at every reload, for every running instance.
``refeed(feed)`` (inputs)
    A reload kept the instance (same plugin, same options) but changed the stacks it feeds: hand what
    was read ahead to the old feed, then feed ``feed``.  Return False when the input cannot; it is then
    stopped and a new object of the new config started in its place (what the old one held is lost).
``stop()``
    Release everything.  An input's last drain happens here (what it read goes to its stacks); an
    output is stopped only after every stack writing through it has written what it accepted.  At a
    reload an instance that is no longer used, or whose options changed, is stopped while the others
    run on; a new object takes its place (options changed) with ``configure`` and ``start``.
``abort()``
    Instead of ``stop`` when start-up (or a reload's start of new outputs and filters) failed after
    this one started.

Which instances a reload keeps: the same id, plugin and options (``options ==``).  A kept instance
is never told of the reload (beyond ``reopen`` and, for an input, ``refeed``): what it holds (a
socket, read-ahead, a conntrack table, a connection) stays.  State a plugin passes to the core must
therefore be declared, not left in attributes the core reads at one moment of start-up: the hooks
are :meth:`Output.writes_block` (was ``blocking`` set in ``configure()``), :meth:`Output.channel`
(an SQL output's per-stack transaction in doubt, settled by its spool: see :mod:`pylogd.sql`),
:meth:`Output.watch_runner`, :meth:`Input.refeed`.
"""

from __future__ import annotations

import enum
import signal as _signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .keys import Key, KeyFlag, KeyType

if TYPE_CHECKING:
    from .log import Logger
    from .loop import EventLoop
    from .stack import StackPlan

#: A filter handler returns STOP to end the event quietly (ulogd's ULOGD_IRET_STOP).
STOP = object()


class Kind(enum.Enum):
    INPUT = "input"
    FILTER = "filter"
    OUTPUT = "output"


class OptType(enum.Enum):
    INT = "Integer"
    STRING = "String"


@dataclass(frozen=True)
class Option:
    name: str
    type: OptType
    default: int | str | None
    help: str = ""
    mandatory: bool = False
    choices: tuple[str, ...] | None = None  # for strings, compared case-insensitively
    min: int | None = None
    max: int | None = None
    #: the value names a file or directory: a relative one is made absolute when the config is read,
    #: so it keeps naming the same file after ``-d`` moves the daemon to / (see :func:`path_option`)
    path: bool = False
    #: for a path option: values that name no file (logfile's ``syslog``), kept as they are
    not_paths: tuple[str, ...] = ()


def int_option(name: str, default: int | None, help: str, **kw: Any) -> Option:
    return Option(name, OptType.INT, default, help, **kw)


def str_option(name: str, default: str | None, help: str, **kw: Any) -> Option:
    return Option(name, OptType.STRING, default, help, **kw)


#: what ``-i`` and the man page say of every path option
PATH_NOTE = "; a relative path is taken from the working directory at start"


def path_option(name: str, default: str | None, help: str, *, not_paths: tuple[str, ...] = (), **kw: Any) -> Option:
    """A string option that names a file or directory.  The daemon detaches into / (``-d``) and
    opens some files later (a SIGHUP reopen, a spool file, a reconnect): resolving a relative path
    once, against the directory pylogd was started in, keeps it naming one file for the daemon's life."""
    return Option(name, OptType.STRING, default, help + PATH_NOTE, path=True, not_paths=not_paths, **kw)


def key(name: str, type: KeyType, help: str = "", *, optional: bool = False, cim: str | None = None) -> Key:
    return Key(name, type, KeyFlag.OPTIONAL if optional else KeyFlag.NONE, help, cim)


@dataclass(frozen=True)
class PluginSpec:
    name: str
    kind: Kind
    help: str
    options: tuple[Option, ...] = ()
    inputs: tuple[Key, ...] = ()
    outputs: tuple[Key, ...] = ()
    #: the plugin reads every key of its stack (JSON, SQL outputs)
    wildcard_inputs: bool = False
    #: ulogd fails a stack whose instance has no [section] for these plugins (LOGEMU, JSON, PCAP, NFCT, ...)
    section_required: bool = False
    option_index: dict[str, Option] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "option_index", {o.name: o for o in self.options})


class Slots:
    """Where a plugin's keys live in its stack's record, resolved once when the stack is built."""

    def __init__(
        self,
        inputs: dict[str, int | None],
        outputs: dict[str, int],
        wildcard: list[tuple[Key, int]] | None = None,
        size: int = 0,
    ) -> None:
        self._inputs = inputs
        self._outputs = outputs
        #: for wildcard plugins: every key of the stack, first occurrence of each name, in stack order
        self.wildcard = wildcard or []
        #: the number of slots in the record
        self.size = size

    def inp(self, name: str) -> int | None:
        """The slot an input key reads, or None when an optional key stayed unresolved."""
        return self._inputs[name]

    def out(self, name: str) -> int:
        return self._outputs[name]

    def read(self) -> set[int]:
        """The slots this plugin reads."""
        return {slot for slot in self._inputs.values() if slot is not None}


class PluginError(Exception):
    """A plugin refuses its configuration or cannot start; ``option`` names the culprit if one does."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class Plugin:
    spec: ClassVar[PluginSpec]

    def __init__(self, instance_id: str, options: dict[str, Any], log: Logger) -> None:
        self.id = instance_id
        self.options = options
        self.log = log

    def configure(self) -> None:
        """Check the options as a whole; raise PluginError. Opens nothing (``--check`` runs this)."""

    def start(self, loop: EventLoop) -> None:
        """Open sockets and files."""

    def exclusive(self) -> tuple[str, ...]:
        """What only one instance may hold (an NFLOG group in a namespace): two instances of a
        config claiming the same thing are refused at validation, not at start."""
        return ()

    def on_signal(self, signum: int) -> None:
        if signum == _signal.SIGHUP:
            self.reopen()

    def reopen(self) -> None:
        """SIGHUP: reopen files, reconnect (logrotate)."""

    def stop(self) -> None:
        """Release everything; outputs have been flushed before this is called."""

    def abort(self) -> None:
        """The daemon's start-up failed after this plugin started: release what ``start`` took and
        remove what it created that holds nothing yet."""
        self.stop()

    def statistics(self) -> dict[str, int]:
        """Counters shown by SIGUSR1 besides the per-stack ones."""
        return {}


class Input(Plugin):
    """An event source. The core sets ``self.feed`` before ``start``."""

    feed: Feed

    def refeed(self, feed: Feed) -> bool:
        """A reload changed the stacks this running input feeds (see the module's lifecycle): what
        was read ahead goes to the old ``self.feed``, then events go to ``feed``.  False: the input
        cannot, and is restarted instead."""
        return False


class Filter(Plugin):
    def handler(self, slots: Slots) -> Callable[[list], Any]:
        """Return the per-event callable for one stack; it returns STOP to drop the event."""
        raise NotImplementedError


class Output(Plugin):
    #: an output that can block (network, database) runs its writes in a worker thread (the default of
    #: :meth:`writes_block`; an output that decides by its options overrides that method)
    blocking: ClassVar[bool] = False
    #: an entry's size in bytes, for the bound on what may wait while writes fail (bytes and str: len)
    entry_size: ClassVar[Callable[[Any], int]] = len
    #: the longest back-off between two tries of a failing write, in seconds
    max_retry_delay: ClassVar[float] = 5.0

    def writes_block(self) -> bool:
        """Whether the output's writes may block (a socket, a database): then they run in the stack
        runner's worker thread.  Asked when each stack's runner starts, after ``start``."""
        return self.blocking

    def channel(self, name: str, keep: Callable[[dict], None] | None) -> Any:
        """A stack's own way into the output (its ``write`` and its transaction in doubt, see
        :class:`pylogd.sql.Channel`), or None: the stack writes through :meth:`write`."""
        return None

    def watch_runner(self, runner: Any) -> None:
        """Told of each stack runner writing through it (an output that reports losses downstream)."""

    def wildcard_reads(self, key: Key) -> bool:
        """For a wildcard output: whether it reads ``key`` of an earlier plugin.  A key no plugin
        reads is not even made by the input, so leaving out what the output never writes saves its
        cost per event."""
        return True

    def backlog_limits(self) -> tuple[int, int]:
        """How many entries, and how many bytes of them, may wait in memory while writes fail
        (an output with ulogd's backlog_memcap option returns it here)."""
        return 200_000, 64 << 20

    def handler(self, slots: Slots) -> Callable[[list], Any]:
        """Return the per-event callable for one stack: it turns the record into an entry
        (whatever ``write`` wants: a line, a row) or returns None to write nothing."""
        raise NotImplementedError

    def fused(self, plan: StackPlan) -> Callable[[Sequence], Any] | None:
        """A way from the input's keys straight to the entry for the stack ``plan``
        (:class:`pylogd.stack.StackPlan`), or None.  Where the stack's filters make nothing this output
        could not make more cheaply from the input's keys (PCAP needs of BASE only a length, which it
        reads from the packet), the stack runs no filter and no :meth:`handler`: the callable gets a
        sequence whose input keys are at their slots and returns the entry the filters and handler
        would have made, or None.  Called after :meth:`handler`; the tests hold the two ways to each
        other."""
        return None

    def write(self, entries: list) -> None:
        """Write a batch of entries, with one of three outcomes:

        * return: every entry is written;
        * raise :class:`RejectedEntries`: the destination refused those entries for good (a
          constraint, a bad value) and wrote every other one; they are set aside, never retried;
        * raise anything else: a failure that may pass (a full disk, a server that went away).
          ``entries`` must then hold exactly what was not written: remove the entries written
          whole, replace a first entry written in part by its rest.  The runner retries the rest
          after a back-off, in order, so nothing is lost or written twice.
        """
        raise NotImplementedError


class RejectedEntries(Exception):
    """What :meth:`Output.write` raises when the destination refused some entries for good and
    wrote all the others: ``rejected`` holds (entry, reason) pairs."""

    def __init__(self, rejected: list[tuple[Any, str]]) -> None:
        super().__init__(f"{len(rejected)} entries rejected: {rejected[0][1] if rejected else ''}")
        self.rejected = rejected


class Feed:
    """What an input sees of the stacks it feeds.

    The input writes its keys into ``values`` (slots 0..n-1, the same in every stack it
    feeds) and calls ``emit()`` once per event, or hands all of them to ``emit_keys()``;
    it calls ``flush()`` once per batch of events.  Every slot is None when an event begins.
    """

    values: list
    emit: Callable[[], None]
    flush: Callable[[], None]

    def emit_keys(self, keys: Sequence) -> None:
        """One event whose keys are ``keys``: the input's first len(keys) values in its key order,
        the others None (one step for an input that has them in a sequence already)."""
        self.values[: len(keys)] = keys
        self.emit()

    def slot(self, name: str) -> int:
        raise NotImplementedError

    def used(self, name: str) -> bool:
        """Whether a plugin of some stack this input feeds reads its key ``name``.  The input may
        leave the keys nobody reads unset, and so save making their values."""
        return True
