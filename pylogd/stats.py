"""``pylogd stats``: a running daemon's live counters, read from its control socket.

A table for people, ``--json`` for scripts, ``--prometheus`` for the text exposition format, and
``--listen HOST:PORT`` to serve that format over HTTP at ``/metrics`` for scraping (each scrape
asks the daemon afresh).
"""

from __future__ import annotations

import argparse
import grp
import http.server
import json
import os
import re
import socket
import sys
from typing import Any

from .control import DEFAULT_PATH, request

#: counters that only go up (Prometheus counters); every other number is a gauge
COUNTERS = frozenset(
    {
        "events",
        "stopped",
        "written",
        "errors",
        "dropped",
        "rejected",
        "received",
        "enobufs",
        "lost",
        "truncated",
        "filtered",
        "hash_full",
        "resyncs",
        "purged",
        "dumps",
        "connects",
        "oversized",
        "answered",
        "refused",
        "timed_out",
        "resent",
    }
)
#: per stack, the columns of the table (the JSON has every counter)
STACK_COLUMNS = ("events", "stopped", "written", "pending", "dropped", "rejected", "errors", "failing_seconds")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pylogd stats", description=__doc__.split("\n\n")[0])
    p.add_argument("-s", "--socket", default=DEFAULT_PATH, help=f"the daemon's control socket (default {DEFAULT_PATH})")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="the counters as one JSON document")
    form.add_argument("--prometheus", action="store_true", help="Prometheus text exposition format")
    form.add_argument("--listen", metavar="HOST:PORT", help="serve the Prometheus format over HTTP at /metrics")
    return p


def main(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    if args.listen:
        return serve(args.socket, args.listen)
    try:
        stats = request(args.socket)
    except PermissionError:
        print(f"pylogd stats: {refused(args.socket)}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"pylogd stats: no answer on {args.socket} ({exc}): is pylogd running?", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(stats, indent=2))
    elif args.prometheus:
        print(prometheus(stats), end="")
    else:
        print(table(stats), end="")
    return 0


def refused(path: str) -> str:
    """What to say when the socket's permissions refuse this user: it is there, pylogd may well run."""
    try:
        gid = os.stat(path).st_gid
    except OSError:  # a directory on the way refused us: its permissions, not the socket's
        return f"permission denied on {path} (a directory on its path is closed to you); try sudo"
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return (
        f"permission denied on {path}: the socket is for its owner and the group {group}; join it "
        f"(usermod -aG {group} $USER, then log in again) or use sudo"
    )


def table(stats: dict[str, Any]) -> str:
    d = stats["pylogd"]
    out = [f"pylogd {d['version']}, pid {d['pid']}, up {d['uptime_seconds']} s\n\n"]
    rows = [("stack", *STACK_COLUMNS, "output")]
    for s in stats["stacks"]:
        rows.append((s["stack"], *(str(s.get(c, "")) for c in STACK_COLUMNS), s["output"]))
    out.append(_columns(rows))
    for s in stats["stacks"]:
        if s.get("error"):
            out.append(f"stack {s['stack']}: writes failing for {s['failing_seconds']:.0f} s: {s['error']}\n")
    out.append("\n")
    for p in stats["plugins"]:
        counters = {k: v for k, v in p.items() if k not in ("id", "plugin", "kind")}
        if counters:
            shown = " ".join(f"{k}={v}" for k, v in counters.items())
            out.append(f"{p['kind']} {p['id']} ({p['plugin']}): {shown}\n")
    if control := stats.get("control"):
        out.append("control socket: " + " ".join(f"{k}={v}" for k, v in control.items()) + "\n")
    return "".join(out)


def _columns(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows)


def _metric(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus(stats: dict[str, Any]) -> str:
    """The text exposition format: one family per counter, labelled by stack or plugin instance."""
    families: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}

    def add(prefix: str, name: str, labels: dict[str, str], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return
        counter = name in COUNTERS
        metric = f"pylogd_{prefix}_{_metric(name)}" + ("_total" if counter else "")
        kinds[metric] = "counter" if counter else "gauge"
        shown = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        families.setdefault(metric, []).append(f"{metric}{{{shown}}} {value}" if shown else f"{metric} {value}")

    d = stats["pylogd"]
    add("daemon", "uptime_seconds", {"version": d["version"]}, d["uptime_seconds"])
    for s in stats["stacks"]:
        labels = {"stack": s["stack"], "output": s["output"], "definition": s["text"]}
        for name, value in s.items():
            add("stack", name, labels, value)
    for p in stats["plugins"]:
        labels = {"instance": p["id"], "plugin": p["plugin"]}
        for name, value in p.items():
            add(p["kind"], name, labels, value)
    for name, value in stats.get("control", {}).items():
        add("control", name, {}, value)
    out = []
    for metric, samples in families.items():
        out.append(f"# TYPE {metric} {kinds[metric]}\n")
        out.extend(sample + "\n" for sample in samples)
    return "".join(out)


def listen_address(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[ADDR]:PORT`` for IPv6; an empty host is 127.0.0.1) -> (host, port); ValueError
    saying what is wrong otherwise."""
    host, colon, port = listen.rpartition(":")
    if not colon:
        raise ValueError("no port")
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"port {port!r} is not a number from 0 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("an IPv6 address goes in brackets: [ADDR]:PORT")
    return host or "127.0.0.1", int(port)


def serve(socket_path: str, listen: str) -> int:
    try:
        host, port = listen_address(listen)
    except ValueError as exc:
        print(f"pylogd stats: --listen needs HOST:PORT, not {listen!r}: {exc}", file=sys.stderr)
        return 2

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics is here")
                return
            try:
                body = prometheus(request(socket_path)).encode()
            except (OSError, ValueError) as exc:
                self.send_error(503, f"pylogd does not answer on {socket_path}: {exc}")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a scrape every few seconds is not news

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    try:
        server = Server((host, port), Metrics)
    except OSError as exc:  # the port taken, an address not here, a name that does not resolve
        print(f"pylogd stats: cannot listen on {listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    shown = f"[{host}]" if ":" in host else host
    print(f"pylogd stats: serving http://{shown}:{server.server_port}/metrics", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
