"""Configuration: ulogd.conf's INI grammar (or the same model in YAML) and its validation.

Parsing yields a :class:`RawConfig` of sections holding located string entries.
Values are typed and checked against a plugin's spec by :func:`instance_options`,
so every error names file:line, the offending word and the valid choices.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from .plugin import Option, OptType, PluginSpec

GLOBAL = "global"


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
        return f"{where}{self.message}{hint}"


def choices_hint(word: str, choices: list[str] | tuple[str, ...], what: str = "valid choices") -> str:
    """``did you mean "x"? valid choices: a, b, c`` for an unknown word."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        if word.lower() in lowered:
            close = [lowered[word.lower()]]
    listed = ", ".join(choices) if choices else "(none)"
    mean = f'did you mean "{close[0]}"? ' if close else ""
    return f"{mean}{what}: {listed}"


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


# ---------------------------------------------------------------------------------------------
# INI (ulogd.conf)


def _split_word(text: str, loc: Loc) -> tuple[str, str]:
    """The first word of ``text`` (a quoted string may hold spaces, ``=`` and ``#``) and the rest."""
    if text.startswith('"'):
        end = text.find('"', 1)
        if end < 0:
            raise ConfigError(loc, f"unterminated quote in {text!r}", 'close the value with "')
        return text[1:end], text[end + 1 :]
    for i, ch in enumerate(text):
        if ch in " \t":
            return text[:i], text[i:]
    return text, ""


def parse_ini(path: str, text: str) -> RawConfig:
    sections: dict[str, Section] = {}
    config = RawConfig(path, sections)
    current: Section | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        loc = Loc(path, lineno)
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            close = line.find("]")
            name = line[1:close].strip() if close > 0 else ""
            if close < 0 or not name or line[close + 1 :].strip().split("#")[0].strip():
                raise ConfigError(loc, f"malformed section header {line!r}", "write it as [name]")
            if name in sections:
                raise ConfigError(loc, f'section "[{name}]" appears twice', f"first at line {sections[name].loc.line}")
            current = sections[name] = Section(name, loc)
            continue
        key_end = len(line)
        for i, ch in enumerate(line):
            if ch in " \t=":
                key_end = i
                break
        key, rest = line[:key_end], line[key_end:].lstrip(" \t=").lstrip(" \t")
        if current is None:
            raise ConfigError(loc, f'option "{key}" stands before any [section]', "start the file with [global]")
        if key == "stack" and current.name == GLOBAL:
            value = rest.split("#", 1)[0].strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            trailing = ""
        else:
            value, trailing = _split_word(rest, loc)
        if not rest:
            raise ConfigError(loc, f'option "{key}" has no value', f'write {key}=VALUE or {key}=""')
        trailing = trailing.strip()
        if trailing and not trailing.startswith("#"):
            config.warnings.append((loc, f"text after the value of {key} is ignored: {trailing!r}"))
        current.entries.append(Entry(key, value, loc))
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
        raise ConfigError(loc, f"YAML syntax error: {getattr(exc, 'problem', exc)}") from None
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
            raise ConfigError(loc_of(key_node), f'section "{name}" appears twice')
        section = sections[name] = Section(name, loc_of(key_node))
        if isinstance(body, yaml.ScalarNode) and body.tag.endswith(":null"):
            continue
        if not isinstance(body, yaml.MappingNode):
            raise ConfigError(loc_of(body), f'section "{name}" must be a mapping of options')
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


def load(path: str) -> RawConfig:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(None, f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(None, f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if path.endswith((".yaml", ".yml")):
        return parse_yaml(path, text)
    return parse_ini(path, text)


# ---------------------------------------------------------------------------------------------
# typed values


def parse_int(text: str) -> int:
    """strtoul's base-0 spelling: decimal, 0x hex, leading-0 octal, optional sign."""
    s = text.strip().lower()
    sign = -1 if s.startswith("-") else 1
    s = s.lstrip("+-")
    if s.startswith("0x"):
        return sign * int(s[2:], 16)
    if len(s) > 1 and s.startswith("0"):
        return sign * int(s[1:], 8)
    if not s.isdigit():
        raise ValueError(text)
    return sign * int(s, 10)


def typed_value(opt: Option, entry: Entry, where: str) -> int | str:
    if opt.type is OptType.INT:
        try:
            value = parse_int(entry.value)
        except ValueError:
            raise ConfigError(
                entry.loc,
                f'option "{opt.name}" in {where} needs an integer, not "{entry.value}"',
                "write decimal, 0x hex or 0-prefixed octal",
            ) from None
        lo, hi = opt.min, opt.max
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            rng = f"{lo if lo is not None else '…'} to {hi if hi is not None else '…'}"
            raise ConfigError(entry.loc, f'option "{opt.name}" in {where}: {value} is out of range', f"valid: {rng}")
        return value
    if opt.choices is not None:
        lowered = {c.lower(): c for c in opt.choices}
        if entry.value.lower() not in lowered:
            raise ConfigError(
                entry.loc,
                f'option "{opt.name}" in {where}: unknown value "{entry.value}"',
                choices_hint(entry.value, opt.choices),
            )
        return lowered[entry.value.lower()]
    return entry.value


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
                f'unknown option "{entry.key}" in {where}',
                choices_hint(entry.key, list(index), "valid options"),
            )
        if entry.key in multi:
            values[entry.key] = [*(values[entry.key] or []), typed_value(opt, entry, where)]
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
