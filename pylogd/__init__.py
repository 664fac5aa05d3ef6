"""pylogd: a netfilter userspace logging daemon, compatible with ulogd2's configuration and outputs."""

from . import compiled as _compiled

__version__ = "0.1.0"

if _compiled.pure_requested():
    # before any other submodule is imported: compiled modules, where installed, are passed over
    _compiled.prefer_source()
