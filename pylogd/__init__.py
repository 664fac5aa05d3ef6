"""pylogd: a netfilter userspace logging daemon, compatible with ulogd2's configuration and outputs."""

__version__ = "0.1.0"
