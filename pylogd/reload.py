"""``pylogd reload``: have a running daemon read its config file again, through its control socket.

The daemon checks the new config completely first; a wrong one changes nothing (the running stacks go
on) and this command prints why and exits 1.  Stacks that did not change keep running untouched (their
sockets, read-ahead, conntrack tables, backlogs); removed stacks write what they accepted and stop;
new and changed ones start.  Files are reopened too, as on SIGHUP (logrotate).  The unit's
``ExecReload`` runs this command, so ``systemctl reload pylogd`` fails when the reload did.
"""

from __future__ import annotations

import argparse
import sys

from .control import DEFAULT_PATH, request

#: how long the daemon may take: the new config is checked, new plugins start, removed stacks write
#: what they accepted (at most 5 s), database connections are made
TIMEOUT = 60.0


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pylogd reload", description=__doc__.split("\n\n")[0])
    p.add_argument("-s", "--socket", default=DEFAULT_PATH, help=f"the daemon's control socket (default {DEFAULT_PATH})")
    return p


def main(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    try:
        answer = request(args.socket, "reload", timeout=TIMEOUT)
    except (OSError, ValueError) as exc:
        print(f"pylogd reload: no answer on {args.socket} ({exc}): is pylogd running?", file=sys.stderr)
        return 1
    if "error" in answer:  # a daemon that predates reload
        print(f"pylogd reload: {answer['error']}", file=sys.stderr)
        return 1
    ok = answer.get("reload") == "ok"
    print(f"pylogd reload: {answer.get('message', '')}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1
