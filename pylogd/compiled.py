"""The optional compiled build: which modules Cython compiles, and how to run without them.

The hot modules are compiled from their unchanged Python source (setup.py reads :data:`HOT_MODULES`
from this file).  The pure-Python source stays the reference: ``PYLOGD_PURE_PYTHON=1`` in the
environment makes pylogd import the ``.py`` files even where compiled modules are installed, which is
how the tests run against both builds, and a way out should a compiled module ever misbehave.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence

PURE_ENV = "PYLOGD_PURE_PYTHON"

#: module name -> source path in the repository: the packet and flow paths, per record (measured hot
#: by py-spy in bench/nflog_replay.py and bench/output_path.py)
HOT_MODULES = {
    "pylogd.stack": "pylogd/stack.py",
    "pylogd.nflog": "pylogd/nflog.py",
    "pylogd.netlink": "pylogd/netlink.py",
    "pylogd.files": "pylogd/files.py",
    "pylogd.conntrack": "pylogd/conntrack.py",
    "pylogd.loop": "pylogd/loop.py",
    "pylogd.runner": "pylogd/runner.py",
    "pylogd.transport": "pylogd/transport.py",
    "pylogd.ipfix": "pylogd/ipfix.py",
    "pylogd.plugins.inputs.nflog": "plugins/inputs/nflog.py",
    "pylogd.plugins.inputs.nfct": "plugins/inputs/nfct.py",
    "pylogd.plugins.filters.base": "plugins/filters/base.py",
    "pylogd.plugins.filters.ifindex": "plugins/filters/ifindex.py",
    "pylogd.plugins.filters.ip2str": "plugins/filters/ip2str.py",
    "pylogd.plugins.filters.printpkt": "plugins/filters/printpkt.py",
    "pylogd.plugins.filters.printflow": "plugins/filters/printflow.py",
    "pylogd.plugins.outputs.logemu": "plugins/outputs/logemu.py",
    "pylogd.plugins.outputs.json": "plugins/outputs/json.py",
    "pylogd.plugins.outputs.pcap": "plugins/outputs/pcap.py",
    "pylogd.plugins.outputs.ipfix": "plugins/outputs/ipfix.py",
}


def pure_requested() -> bool:
    return os.environ.get(PURE_ENV, "") not in ("", "0")


class SourceOnlyFinder:
    """Finds pylogd's modules as ``.py`` files only, so installed compiled modules are passed over."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if path is None or not fullname.startswith("pylogd."):
            return None
        for entry in path:
            finder = importlib.machinery.FileFinder(
                entry, (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)
            )
            spec = finder.find_spec(fullname)
            if spec is not None and spec.loader is not None:
                return spec
        return None


def prefer_source() -> None:
    if not any(isinstance(f, SourceOnlyFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, SourceOnlyFinder())


def is_compiled(module_name: str) -> bool:
    spec = importlib.util.find_spec(module_name)
    return bool(spec and spec.origin and spec.origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)))


def describe() -> str:
    """What `pylogd -V` and the start-up line say about the build that is running."""
    if pure_requested():
        return f"pure Python: {PURE_ENV} is set"
    compiled = [name for name in HOT_MODULES if is_compiled(name)]
    if not compiled:
        return "pure Python: no compiled modules installed"
    if len(compiled) == len(HOT_MODULES):
        return f"compiled: all {len(compiled)} hot modules"
    missing = ", ".join(sorted(set(HOT_MODULES) - set(compiled)))
    return f"compiled: {len(compiled)} of {len(HOT_MODULES)} hot modules; pure Python: {missing}"
