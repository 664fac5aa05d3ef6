"""pylogd: a netfilter userspace logging daemon, compatible with ulogd2's configuration and outputs."""

import os as _os

__version__ = "0.1.0"

if _os.environ.get("PYLOGD_PURE_PYTHON", "") not in ("", "0"):
    # before any submodule is imported: compiled modules, where installed, are passed over
    from . import compiled as _compiled

    _compiled.prefer_source()
