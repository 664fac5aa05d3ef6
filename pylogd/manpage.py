"""pylogd(8) and pylogd.conf(5), generated from the command line parser and the plugin specs, so they never drift.

python -m pylogd.manpage DIR      # writes DIR/man8/pylogd.8 and DIR/man5/pylogd.conf.5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import __version__
from .cli import COMMANDS, make_parser
from .plugin import Kind, PluginSpec
from .registry import Registry
from .stack import GLOBAL_OPTIONS


def roff(text: str) -> str:
    """Text as roff reads it literally: backslashes, hyphens, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in text.split("\n"))


def _header(name: str, section: int, title: str) -> list[str]:
    date = time.strftime("%Y-%m-%d", time.gmtime())
    return [
        f'.TH {name.upper()} {section} "{date}" "pylogd {__version__}" "{title}"',
        ".SH NAME",
        roff(f"{name} - " + ("netfilter userspace logging daemon" if section == 8 else "pylogd configuration file")),
    ]


def _option_line(action: argparse.Action) -> str:
    flags = ", ".join(f"\\fB{roff(f)}\\fR" for f in action.option_strings)
    if action.nargs == 0:
        return flags
    meta = action.metavar or action.dest.upper()
    return f"{flags} \\fI{roff(str(meta))}\\fR"


def pylogd_8() -> str:
    parser = make_parser()
    out = _header("pylogd", 8, "System Administration")
    out += [
        ".SH SYNOPSIS",
        "\\fBpylogd\\fR [\\fIOPTIONS\\fR]",
        ".br",
        *(f"\\fBpylogd {name}\\fR [\\fIOPTIONS\\fR]\n.br" for name in COMMANDS),
        ".SH DESCRIPTION",
        roff(
            "pylogd reads the packets that nft `log group N` (or iptables -j NFLOG) hands to userspace and the "
            "conntrack event stream, runs them through the plugin stacks of its configuration and writes them "
            "as ulogd 2.0.8 does, from an unmodified ulogd.conf. The configuration is described in pylogd.conf(5)."
        ),
        ".SH OPTIONS",
    ]
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        out += [".TP", _option_line(action), roff(action.help or "")]
    out.append(".SH COMMANDS")
    for name, (_, what) in COMMANDS.items():
        out += [".TP", f"\\fBpylogd {name}\\fR", roff(f"{what}; pylogd {name} --help lists its options")]
    out += [
        ".SH SIGNALS",
        ".TP\n\\fBSIGHUP\\fR\n"
        + roff(
            "reopen every file and the daemon's log (logrotate), reconnect outputs; "
            "pylogd reload also reads the config again"
        ),
        ".TP\n\\fBSIGUSR1\\fR\n" + roff("log the counters of every stack and plugin"),
        ".TP\n\\fBSIGUSR2\\fR\n" + roff("passed to the inputs: NFCT writes its conntrack table"),
        ".TP\n\\fBSIGTERM\\fR, \\fBSIGINT\\fR\n" + roff("stop reading, write everything accepted, exit 0"),
        ".SH FILES",
        ".TP\n\\fI/etc/pylogd.conf\\fR\n" + roff("the configuration (pylogd.conf(5))"),
        ".TP\n\\fI/run/pylogd/pylogd.sock\\fR\n" + roff("the control socket of pylogd stats and pylogd reload"),
        ".SH SEE ALSO",
        "\\fBpylogd.conf\\fR(5), \\fBnft\\fR(8), \\fBconntrack\\fR(8), \\fBulogd\\fR(8)",
    ]
    return "\n".join(out) + "\n"


def _plugin_section(spec: PluginSpec) -> list[str]:
    out = [".SS " + spec.name, roff(spec.help)]
    for o in spec.options:
        default = "" if o.default is None else f" (default: {o.default})"
        bounds = ""
        if o.choices:
            bounds = f"; one of {', '.join(o.choices)}"
        elif o.min is not None or o.max is not None:
            bounds = f"; {o.min if o.min is not None else ''}..{o.max if o.max is not None else ''}"
        mandatory = "; mandatory" if o.mandatory else ""
        out += [
            ".TP",
            f"\\fB{roff(o.name)}\\fR={o.type.value.lower()}{roff(default)}",
            roff(o.help + bounds + mandatory),
        ]
    if spec.kind is not Kind.INPUT and spec.inputs:
        out.append(roff("Reads: " + ", ".join(k.name for k in spec.inputs) + "."))
    if spec.wildcard_inputs:
        out.append(roff("Reads every key of its stack."))
    if spec.outputs:
        out.append(roff("Gives: " + ", ".join(k.name for k in spec.outputs) + "."))
    return out


def pylogd_conf_5() -> str:
    out = _header("pylogd.conf", 5, "File Formats")
    out += [
        ".SH DESCRIPTION",
        roff(
            "pylogd reads ulogd.conf's format: a [global] section, then one [section] per plugin instance "
            "named by its id. Lines are key=value; a value may be quoted; # starts a comment. The same model "
            "may be written in YAML (a file ending in .yaml or .yml). pylogd --check validates a file and "
            "prints every stack with every option's effective value."
        ),
        ".SH GLOBAL OPTIONS",
    ]
    for o in GLOBAL_OPTIONS:
        default = "" if o.default is None else f" (default: {o.default})"
        out += [".TP", f"\\fB{roff(o.name)}\\fR{roff(default)}", roff(o.help)]
    out += [
        ".SH STACKS",
        roff(
            "Each stack= line is id:PLUGIN,id:PLUGIN,...: one input, any filters, one output. Every plugin's "
            "input keys are resolved at start-up to the nearest earlier plugin giving a key of that name."
        ),
    ]
    registry = Registry()
    builtins = registry.builtins()
    for kind, title in ((Kind.INPUT, "INPUTS"), (Kind.FILTER, "FILTERS"), (Kind.OUTPUT, "OUTPUTS")):
        out.append(f".SH {title}")
        for name in sorted(builtins):
            if builtins[name].spec.kind is kind:
                out += _plugin_section(builtins[name].spec)
    out += [".SH SEE ALSO", "\\fBpylogd\\fR(8), \\fBulogd\\fR(8)"]
    return "\n".join(out) + "\n"


def write(directory: str) -> list[Path]:
    root = Path(directory)
    pages = [(root / "man8" / "pylogd.8", pylogd_8()), (root / "man5" / "pylogd.conf.5", pylogd_conf_5())]
    for path, text in pages:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return [path for path, _ in pages]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)
    for page in write(sys.argv[1]):
        print(page)
