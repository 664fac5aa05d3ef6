"""Finding plugins: built-ins by name, ulogd .so paths mapped to built-ins, third-party .py files or modules."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import sys
from types import ModuleType

from .config import ConfigError, Loc, choices_hint, clip, listing
from .plugin import Filter, Input, Kind, Output, Plugin

BUILTIN_PACKAGES = ("pylogd.plugins.inputs", "pylogd.plugins.filters", "pylogd.plugins.outputs")
_ULOGD_SO = re.compile(r"ulogd_(?:inppkt|inpflow|filter|output|raw2packet)_(\w+)\.so$")

#: every plugin ulogd 2.0.8 ships, by kind: a stack naming one pylogd lacks is told so, not
#: offered a look-alike (whether pylogd has it is asked of the registry)
ULOGD_PLUGINS: dict[str, Kind] = {
    **dict.fromkeys(("NFLOG", "NFCT", "NFACCT", "ULOG", "UNIXSOCK"), Kind.INPUT),
    **dict.fromkeys(
        ("BASE", "HWHDR", "IFINDEX", "IP2BIN", "IP2HBIN", "IP2STR", "MARK", "PRINTFLOW", "PRINTPKT", "PWSNIFF"),
        Kind.FILTER,
    ),
    **dict.fromkeys(
        (
            *("LOGEMU", "OPRINT", "GPRINT", "SYSLOG", "JSON", "XML", "PCAP", "NACCT", "GRAPHITE", "IPFIX"),
            *("SQLITE3", "PGSQL", "MYSQL", "DBI"),
        ),
        Kind.OUTPUT,
    ),
}


def plugin_classes(module: ModuleType) -> list[type[Plugin]]:
    """The plugin classes a module defines (not the ones it imports)."""
    return [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, (Input, Filter, Output)) and obj.__module__ == module.__name__ and "spec" in obj.__dict__
    ]


class Registry:
    """Built-in plugins are imported when a stack names them: a daemon runs with the modules of its own
    stacks only (each plugin module is ``<package>.<name in lower case>``), not with every output's
    libraries (TLS, SQLite, the database drivers) resident; listing them all imports every one."""

    def __init__(self) -> None:
        self._builtins: dict[str, type[Plugin]] | None = None
        self._imported: dict[str, type[Plugin] | None] = {}  # built-ins imported by name
        self.loaded: dict[str, type[Plugin]] = {}
        #: ulogd plugin files named in plugin= lines that pylogd has no built-in for
        self.unavailable: dict[str, Loc] = {}

    def builtin(self, name: str) -> type[Plugin] | None:
        """The built-in plugin ``name``, importing its module only."""
        if self._builtins is not None:
            return self._builtins.get(name)
        if name not in self._imported:
            self._imported[name] = None
            if re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
                for package_name in BUILTIN_PACKAGES:
                    module_name = f"{package_name}.{name.lower()}"
                    if importlib.util.find_spec(module_name) is None:
                        continue
                    found = [c for c in plugin_classes(importlib.import_module(module_name)) if c.spec.name == name]
                    if found:
                        self._imported[name] = found[0]
                        break
        return self._imported[name]

    def has_builtin(self, name: str) -> bool:
        """Whether a built-in plugin ``name`` exists, importing nothing."""
        if self._builtins is not None or name in self._imported:
            return self.builtin(name) is not None
        return re.fullmatch(r"[A-Z][A-Z0-9_]*", name) is not None and any(
            importlib.util.find_spec(f"{package_name}.{name.lower()}") is not None for package_name in BUILTIN_PACKAGES
        )

    def builtins(self) -> dict[str, type[Plugin]]:
        if self._builtins is None:
            found: dict[str, type[Plugin]] = {}
            for package_name in BUILTIN_PACKAGES:
                package = importlib.import_module(package_name)
                for info in pkgutil.iter_modules(package.__path__):
                    module = importlib.import_module(f"{package_name}.{info.name}")
                    for cls in plugin_classes(module):
                        found[cls.spec.name] = cls
            self._builtins = found
        return self._builtins

    def names(self) -> list[str]:
        return sorted({*self.builtins(), *self.loaded})

    def get(self, name: str) -> type[Plugin] | None:
        return self.loaded.get(name) or self.builtin(name)

    def require(self, name: str, loc: Loc | None) -> type[Plugin]:
        cls = self.get(name)
        if cls is not None:
            return cls
        if name == "ULOG":
            raise ConfigError(
                loc,
                '"ULOG" reads ipt_ULOG, which Linux removed in 3.17',
                "use NFLOG: log1:NFLOG in the stack, [log1] group=1, and rules that log to group 1 "
                "(iptables -j NFLOG --nflog-group 1, or nft log group 1)",
            )
        shown = clip(name)
        named = f" (named by the plugin= line at {self.unavailable[name]})" if name in self.unavailable else ""
        kind = ULOGD_PLUGINS.get(name)
        if kind is not None:
            same_kind = [n for n in self.names() if self.get(n).spec.kind is kind]  # type: ignore[union-attr]
            raise ConfigError(
                loc,
                f'"{shown}" is a ulogd {kind.value} plugin that pylogd does not provide{named}',
                f"pylogd's {kind.value} plugins: {listing(same_kind)}",
            )
        if named:
            raise ConfigError(
                loc, f'pylogd has no plugin "{shown}"{named}', choices_hint(name, self.names(), "available plugins")
            )
        raise ConfigError(loc, f'unknown plugin "{shown}"', choices_hint(name, self.names(), "available plugins"))

    def load(self, value: str, loc: Loc | None = None, lazy: bool = False) -> list[type[Plugin]]:
        """Handle one plugin= value. Returns the classes it provides (with ``lazy``, a ulogd .so path
        imports nothing and returns [])."""
        so = _ULOGD_SO.search(value)
        if so:
            name = so.group(1)
            # ulogd.conf names every plugin it may use: a built-in is imported once a stack names it
            if not self.has_builtin(name):
                self.unavailable[name] = loc or Loc("-", 0)
                return []
            if lazy:
                return []
            cls = self.builtin(name)
            return [cls] if cls is not None else []
        module = self._import(value, loc)
        classes = plugin_classes(module)
        if not classes:
            raise ConfigError(
                loc, f"{clip(value)} defines no plugin", "a plugin is a subclass of Input, Filter or Output with a spec"
            )
        for cls in classes:
            name = cls.spec.name
            if self.has_builtin(name) or (name in self.loaded and self.loaded[name] is not cls):
                raise ConfigError(
                    loc, f'plugin "{clip(name)}" from {clip(value)} is already registered', "give it another name"
                )
            self.loaded[name] = cls
        return classes

    def _import(self, value: str, loc: Loc | None) -> ModuleType:
        try:
            if value.endswith(".py") or os.sep in value:
                path = os.path.abspath(value)
                if not os.path.isfile(path):
                    raise ConfigError(loc, f"plugin file {clip(value)} does not exist")
                mod_name = "pylogd_ext_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
                spec = importlib.util.spec_from_file_location(mod_name, path)
                if spec is None or spec.loader is None:  # no loader for the name: /etc/passwd, a .so of no ulogd's
                    raise ConfigError(
                        loc,
                        f"cannot load plugin {clip(value)}: not a Python file",
                        "a plugin is a .py file, an importable module or a ulogd .so path (ulogd_*_NAME.so)",
                    )
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                spec.loader.exec_module(module)
                return module
            return importlib.import_module(value)
        except ConfigError:
            raise
        except Exception as exc:  # a third-party module can fail in any way; say which and where
            problem = f"{type(exc).__name__}: {clip(str(exc))}"
            raise ConfigError(loc, f"cannot load plugin {clip(value)}: {problem}") from None
