"""Configuration: ulogd.conf's INI grammar (or the same model in YAML) and its validation.

Parsing yields a :class:`RawConfig` of sections holding located string entries.
Values are typed and checked against a plugin's spec by :func:`instance_options`,
so every error names file:line, the offending word and the valid choices.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

from .plugin import Option, OptType, PluginSpec

GLOBAL = "global"

#: a config file larger than this is refused (ulogd's own are a few KiB); it bounds what is read
MAX_CONFIG_BYTES = 4 << 20
#: the same for YAML, whose parser takes about 6 s and 120 MB per MiB
MAX_YAML_BYTES = 512 << 10
#: warnings of one kind shown before the rest are only counted
MAX_WARNINGS = 20
#: the most characters of a word, value or line that a message quotes
ECHO_LIMIT = 80
#: the most characters of a message after its file:line, hints included
MESSAGE_LIMIT = 280
#: the longest string value: PATH_MAX.  ulogd refuses 225 characters and more; pylogd has no fixed
#: buffer, but no file name, namespace name or filter list needs more
MAX_STRING = 4096
#: ulogd keeps an integer option in a C int: the range of an integer option that declares none
INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1
U16_MAX, U32_MAX = 0xFFFF, 0xFFFFFFFF


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """``text`` fit to quote in a one-line message: control characters escaped, at most ``limit``
    characters (a longer text ends in an ellipsis)."""
    head = text[: limit + 1]
    if not head.isprintable():
        head = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in head)
    if len(head) > limit or len(text) > limit + 1:
        return head[: limit - 1] + "…"
    return head


@dataclass(frozen=True)
class Loc:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class ConfigError(Exception):
    """A configuration mistake: where it is, what is wrong, and what would be valid."""

    def __init__(self, loc: Loc | None, message: str, hint: str = "") -> None:
        self.loc = loc
        self.message = message
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.loc}: " if self.loc else ""
        hint = f"; {self.hint}" if self.hint else ""
        # the parts quote clipped text already; this keeps any message one line of bounded length
        return where + clip(f"{self.message}{hint}", MESSAGE_LIMIT)


def closest(word: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """The choice ``word`` is most likely a misspelling of, if one is close (case aside)."""
    if len(word) > 2 * ECHO_LIMIT or len(choices) > 1000:  # a guess would cost more than it is worth
        return None
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if close:
        return close[0]
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def listing(names: list[str] | tuple[str, ...], limit: int = 120) -> str:
    """``a, b, c`` cut short (``… and N more``) once it grows past ``limit`` characters."""
    if not names:
        return "(none)"
    shown: list[str] = []
    length = 0
    for name in names:
        name = clip(name, 40)
        if shown and length + len(name) > limit:
            return f"{', '.join(shown)} … and {len(names) - len(shown)} more"
        shown.append(name)
        length += len(name) + 2
    return ", ".join(shown)


def choices_hint(word: str, choices: list[str] | tuple[str, ...], what: str = "valid choices") -> str:
    """``did you mean "x"? valid choices: a, b, c`` for an unknown word."""
    close = closest(word, choices)
    mean = f'did you mean "{close}"? ' if close else ""
    return f"{mean}{what}: {listing(choices)}"


@dataclass
class Entry:
    key: str
    value: str
    loc: Loc


@dataclass
class Section:
    name: str
    loc: Loc
    entries: list[Entry] = field(default_factory=list)


@dataclass
class RawConfig:
    path: str
    sections: dict[str, Section]
    warnings: list[tuple[Loc, str]] = field(default_factory=list)
    #: instance ids that commented-out stack= lines name: ulogd's sample configs keep their sections
    commented_ids: set[str] = field(default_factory=set)


# ---------------------------------------------------------------------------------------------
# INI (ulogd.conf)


def _split_word(text: str, loc: Loc) -> tuple[str, str]:
    """The first word of ``text`` (a quoted string may hold spaces, ``=`` and ``#``) and the rest."""
    if text.startswith('"'):
        end = text.find('"', 1)
        if end < 0:
            raise ConfigError(loc, f"unterminated quote in '{clip(text)}'", 'close the value with "')
        return text[1:end], text[end + 1 :]
    for i, ch in enumerate(text):
        if ch in " \t":
            return text[:i], text[i:]
    return text, ""


_COMMENTED_STACK = re.compile(r"#[#\s]*stack\s*=?\s*\"?([^\"#\s]+)")


def parse_ini(path: str, text: str) -> RawConfig:
    sections: dict[str, Section] = {}
    config = RawConfig(path, sections)
    current: Section | None = None
    ignored: list[Loc] = []  # lines with text after their value
    for lineno, raw in enumerate(text.splitlines(), 1):
        loc = Loc(path, lineno)
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            commented = _COMMENTED_STACK.match(line)
            if commented:
                config.commented_ids.update(t.split(":")[0].strip() for t in commented.group(1).split(","))
            continue
        if line.startswith("["):
            close = line.find("]")
            name = line[1:close].strip() if close > 0 else ""
            if close < 0 or not name or line[close + 1 :].strip().split("#")[0].strip():
                raise ConfigError(loc, f"malformed section header '{clip(line)}'", "write it as [name]")
            if name in sections:
                raise ConfigError(
                    loc, f'section "[{clip(name)}]" appears twice', f"first at line {sections[name].loc.line}"
                )
            current = sections[name] = Section(name, loc)
            continue
        key_end = len(line)
        for i, ch in enumerate(line):
            if ch in " \t=":
                key_end = i
                break
        key, rest = line[:key_end], line[key_end:].lstrip(" \t=").lstrip(" \t")
        if current is None:
            raise ConfigError(loc, f'option "{clip(key)}" stands before any [section]', "start the file with [global]")
        if key == "stack" and current.name == GLOBAL:
            value = rest.split("#", 1)[0].strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            trailing = ""
        else:
            value, trailing = _split_word(rest, loc)
        if not rest:
            raise ConfigError(loc, f'option "{clip(key)}" has no value', f'write {clip(key)}=VALUE or {clip(key)}=""')
        trailing = trailing.strip()
        if trailing and not trailing.startswith("#"):
            ignored.append(loc)
            if len(ignored) <= MAX_WARNINGS:
                config.warnings.append((loc, f"text after the value of {clip(key)} is ignored: '{clip(trailing)}'"))
        current.entries.append(Entry(key, value, loc))
    if len(ignored) > MAX_WARNINGS:
        more = len(ignored) - MAX_WARNINGS
        config.warnings.append((ignored[MAX_WARNINGS], f"and {more} more lines with text after their value"))
    return config


# ---------------------------------------------------------------------------------------------
# YAML: top-level mappings are sections; a sequence value repeats its key (plugin, stack).


def parse_yaml(path: str, text: str) -> RawConfig:
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = Loc(path, mark.line + 1) if mark else None
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc).split("\n")[0]
        raise ConfigError(loc, f"YAML syntax error: {clip(str(problem))}") from None
    except RecursionError:  # PyYAML composes nested nodes recursively
        raise ConfigError(
            None, f"{clip(path, 200)}: YAML nested too deeply", "a config needs three levels: section, option, list"
        ) from None
    sections: dict[str, Section] = {}
    if root is None:
        return RawConfig(path, sections)

    def loc_of(node: Any) -> Loc:
        return Loc(path, node.start_mark.line + 1)

    def scalar(node: Any) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise ConfigError(loc_of(node), "expected a single value here")
        return node.value

    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(loc_of(root), "the top level must be a mapping of sections (global:, log1:, ...)")
    for key_node, body in root.value:
        name = scalar(key_node)
        if name in sections:
            raise ConfigError(loc_of(key_node), f'section "{clip(name)}" appears twice')
        section = sections[name] = Section(name, loc_of(key_node))
        if isinstance(body, yaml.ScalarNode) and body.tag.endswith(":null"):
            continue
        if not isinstance(body, yaml.MappingNode):
            raise ConfigError(loc_of(body), f'section "{clip(name)}" must be a mapping of options')
        for opt_node, value_node in body.value:
            opt = scalar(opt_node)
            if isinstance(value_node, yaml.SequenceNode):
                for item in value_node.value:
                    if isinstance(item, yaml.SequenceNode):  # a stack written as a list of tokens
                        value = ",".join(scalar(t) for t in item.value)
                    else:
                        value = scalar(item)
                    section.entries.append(Entry(opt, value, loc_of(item)))
            else:
                section.entries.append(Entry(opt, scalar(value_node), loc_of(value_node)))
    return RawConfig(path, sections)


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def is_yaml(path: str) -> bool:
    return path.endswith((".yaml", ".yml"))


def _not_a_file(path: str, st: os.stat_result, limit: int) -> ConfigError | None:
    """Why ``st`` cannot be a config file (not a regular file, too large), or None."""
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a regular file")
        return ConfigError(None, f"config file {path} is {kind}", "name a regular file")
    if st.st_size > limit:
        return ConfigError(None, f"config file {path} is {st.st_size} bytes", f"at most {limit} are read")
    return None


def read_text(path: str) -> str:
    """A config file's text: a regular UTF-8 file of at most MAX_CONFIG_BYTES (YAML: MAX_YAML_BYTES).
    Anything else (a device, a FIFO, a huge file) is refused before it is read, and a FIFO is
    never waited on."""
    shown = clip(path, 200)
    limit = MAX_YAML_BYTES if is_yaml(path) else MAX_CONFIG_BYTES
    try:
        problem = _not_a_file(shown, os.stat(path), limit)
        if problem:
            raise problem
        # O_NONBLOCK: had a FIFO replaced the file since stat, open would wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(None, f"cannot read config file {shown}: {exc.strerror}") from None
    except ValueError as exc:  # a NUL byte in the path
        raise ConfigError(None, f"cannot read config file {shown}: {exc}") from None
    try:
        problem = _not_a_file(shown, os.fstat(fd), limit)
        if problem:
            raise problem
        chunks, size = [], 0
        while size <= limit:  # a file may grow after fstat: read one byte past the limit at most
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(None, f"cannot read config file {shown}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise ConfigError(None, f"config file {shown} is larger than {limit} bytes")
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(None, f"config file {shown} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def load(path: str) -> RawConfig:
    """Read and parse a config file (YAML for .yaml/.yml, else ulogd.conf's grammar).  Every
    failure is a ConfigError: a config must end in one line, never a traceback."""
    text = read_text(path)
    try:
        if is_yaml(path):
            return parse_yaml(path, text)
        return parse_ini(path, text)
    except ConfigError:
        raise
    except Exception as exc:  # a parser bug: still one line, and marked as pylogd's fault
        raise ConfigError(
            None, f"internal error reading {clip(path, 200)}: {type(exc).__name__}: {clip(str(exc))}"
        ) from None


# ---------------------------------------------------------------------------------------------
# typed values


_INTEGER = re.compile(r"\s*([+-]?)(0x([0-9a-f]+)|0([0-7]*)|([1-9][0-9]*))\s*", re.ASCII | re.IGNORECASE)
#: more significant digits than any option can hold (64 bits take 22 octal ones)
_MAX_DIGITS = 24


def parse_int(text: str) -> int:
    """strtoul's base-0 spelling: decimal, 0x hex, leading-0 octal, optional sign (ASCII digits only).

    Raises ValueError for anything else and OverflowError for more digits than 64 bits take,
    before converting them (int() refuses very long numbers, and converting one costs time)."""
    m = _INTEGER.fullmatch(text)
    if not m:
        raise ValueError(text)
    sign = -1 if m.group(1) == "-" else 1
    for digits, base in ((m.group(3), 16), (m.group(4), 8), (m.group(5), 10)):
        if digits is not None:
            digits = digits.lstrip("0")
            if len(digits) > _MAX_DIGITS:
                raise OverflowError(text)
            return sign * int(digits or "0", base)
    raise AssertionError(text)  # the pattern has three alternatives


def _check_int(opt: Option, entry: Entry, where: str) -> int:
    try:
        value: int | None = parse_int(entry.value)
    except OverflowError:
        value = None
    except ValueError:
        raise ConfigError(
            entry.loc,
            f'option "{opt.name}" in {where} needs an integer, not "{clip(entry.value)}"',
            "write decimal, 0x hex or 0-prefixed octal",
        ) from None
    shown = clip(entry.value) if value is None else value
    if opt.choices is not None:
        if value is None or str(value) not in opt.choices:
            raise ConfigError(
                entry.loc, f'option "{opt.name}" in {where}: {shown} is not allowed', f"valid: {', '.join(opt.choices)}"
            )
        return value
    # an option that declares no range gets ulogd's C int, so no value is too large for the code using it
    lo = INT_MIN if opt.min is None else opt.min
    hi = INT_MAX if opt.max is None else opt.max
    if value is None or not lo <= value <= hi:
        raise ConfigError(entry.loc, f'option "{opt.name}" in {where}: {shown} is out of range', f"valid: {lo} to {hi}")
    return value


def typed_value(opt: Option, entry: Entry, where: str) -> int | str:
    """An entry's value as ``opt`` declares it, or a ConfigError.  No string value holds a NUL
    byte (no file name, namespace or syslog word can) or more than MAX_STRING characters."""
    if opt.type is OptType.INT:
        return _check_int(opt, entry, where)
    text = entry.value
    if "\0" in text:
        raise ConfigError(
            entry.loc, f'option "{opt.name}" in {where}: the value "{clip(text)}" holds a NUL byte', "remove it"
        )
    if len(text) > MAX_STRING:
        raise ConfigError(
            entry.loc,
            f'option "{opt.name}" in {where}: a value of {len(text)} characters is too long',
            f"at most {MAX_STRING}",
        )
    if opt.choices is not None:
        lowered = {c.lower(): c for c in opt.choices}
        if text.lower() not in lowered:
            raise ConfigError(
                entry.loc,
                f'option "{opt.name}" in {where}: unknown value "{clip(text)}"',
                choices_hint(text, opt.choices),
            )
        return lowered[text.lower()]
    if opt.path and text and text not in opt.not_paths:
        return absolute_path(text, entry, f'option "{opt.name}" in {where}')
    return text


def absolute_path(text: str, entry: Entry | None = None, what: str = "a path") -> str:
    """``text`` made absolute against the working directory, once, before the daemon moves to /.

    Only ``.`` components and repeated slashes are dropped: ``..`` stays, since after a symlinked
    directory it leads somewhere else than the text suggests, and the kernel must decide where."""
    if text.startswith("/"):
        return text
    try:
        base = os.getcwd()
    except OSError as exc:  # the directory pylogd was started in has been removed
        raise ConfigError(
            entry.loc if entry else None,
            f'{what}: the relative path "{clip(text)}" cannot be resolved: {exc.strerror}',
            "give an absolute path",
        ) from None
    parts = [part for part in text.split("/") if part not in ("", ".")]
    return os.path.join(base, *parts)


def section_options(
    options: tuple[Option, ...], section: Section | None, where: str, multi: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], dict[str, Entry]]:
    """Type-check a section against declared options: values (defaults filled in) and where each was set."""
    index = {o.name: o for o in options}
    values: dict[str, Any] = {o.name: o.default for o in options}
    seen: dict[str, Entry] = {}
    for entry in section.entries if section else ():
        opt = index.get(entry.key)
        if opt is None:
            raise ConfigError(
                entry.loc,
                f'unknown option "{clip(entry.key)}" in {where}',
                choices_hint(entry.key, list(index), "valid options"),
            )
        if entry.key in multi:
            if entry.key not in seen:  # a list of its own, appended to: a copy per entry is quadratic
                seen[entry.key] = entry
                values[entry.key] = list(values[entry.key] or [])
            values[entry.key].append(typed_value(opt, entry, where))
            continue
        if entry.key in seen:
            raise ConfigError(
                entry.loc, f'option "{entry.key}" set twice in {where}', f"first set at line {seen[entry.key].loc.line}"
            )
        seen[entry.key] = entry
        values[entry.key] = typed_value(opt, entry, where)
    return values, seen


def instance_options(spec: PluginSpec, instance_id: str, section: Section | None, used_at: Loc) -> dict[str, Any]:
    where = f"[{instance_id}] ({spec.name})"
    if section is None and spec.section_required:
        raise ConfigError(
            used_at, f"no [{instance_id}] section: {spec.name} needs one", f"add [{instance_id}] (it may be empty)"
        )
    values, _ = section_options(spec.options, section, where)
    for opt in spec.options:
        if opt.mandatory and values[opt.name] is None:
            loc = section.loc if section else used_at
            raise ConfigError(loc, f'missing mandatory option "{opt.name}" in {where}', opt.help)
    return values
