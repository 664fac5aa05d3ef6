"""The registry imports a built-in plugin when a stack names it: a daemon carries the modules of its own
stacks, not every output's libraries (TLS, SQLite, the database drivers), even when its ulogd.conf names
every plugin in plugin= lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT

from pylogd.registry import Registry

ULOGD_EXAMPLE = Path("/usr/share/doc/ulogd2/examples/ulogd.conf")


def test_each_built_in_is_found_by_its_name_alone() -> None:
    scanned = Registry().builtins()
    assert len(scanned) >= 30
    for name, cls in scanned.items():
        fresh = Registry()
        assert fresh.has_builtin(name)
        assert fresh.builtin(name) is cls, f"{name} is not in a module named {name.lower()}"
    assert not Registry().has_builtin("NOSUCH") and Registry().builtin("nflog") is None


PROBE = """
import sys
from pylogd.config import parse_ini
from pylogd.log import Logger
from pylogd.registry import Registry
from pylogd.stack import build
plugins = "".join(f'plugin="/usr/lib/x86_64-linux-gnu/ulogd/ulogd_{kind}_{name}.so"\\n' for kind, name in (
    ("inppkt", "NFLOG"), ("inpflow", "NFCT"), ("filter", "BASE"), ("filter", "IFINDEX"), ("filter", "IP2STR"),
    ("filter", "PRINTPKT"), ("output", "LOGEMU"), ("output", "JSON"), ("output", "SQLITE3"), ("output", "PGSQL"),
    ("output", "MYSQL"), ("output", "SYSLOG"), ("output", "IPFIX"), ("output", "PCAP"), ("output", "XML")))
raw = parse_ini("t.conf", "[global]\\n" + plugins +
    "stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,print1:PRINTPKT,emu1:LOGEMU\\n"
    '[log1]\\ngroup=1\\n[emu1]\\nfile="/dev/null"\\n')
build(raw, Registry(), Logger)
print(" ".join(sorted(m for m in sys.modules if m.startswith(("pylogd.plugins.", "ssl", "sqlite3", "psycopg",
    "pymysql", "pylogd.transport", "pylogd.sql")))))
"""


def test_a_stack_imports_only_its_own_plugins_whatever_plugin_lines_name() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, check=True)
    loaded = set(out.stdout.split())
    modules = {m for m in loaded if m.count(".") == 3}
    assert modules == {
        "pylogd.plugins.inputs.nflog",
        "pylogd.plugins.filters.base",
        "pylogd.plugins.filters.ifindex",
        "pylogd.plugins.filters.ip2str",
        "pylogd.plugins.filters.printpkt",
        "pylogd.plugins.outputs.logemu",
    }, loaded
    assert not loaded & {"ssl", "sqlite3", "psycopg", "pymysql", "pylogd.transport", "pylogd.sql"}, loaded


def test_a_plugin_line_naming_what_pylogd_lacks_is_still_told(tmp_path: Path) -> None:
    registry = Registry()
    assert registry.load("/usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_DBI.so", lazy=True) == []
    assert "DBI" in registry.unavailable
    assert registry.load("/usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_JSON.so", lazy=True) == []
    assert "JSON" not in registry.unavailable
    (cls,) = registry.load("/usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_JSON.so")  # as -i asks
    assert cls.spec.name == "JSON"
