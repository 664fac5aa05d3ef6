"""Shared test setup. Under CI=true a skipped test is a failure: CI must prove everything it claims."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from pylogd import compiled
from pylogd.log import LogSink

# CI runs the property tests on a fixed sequence of examples so that a red run can be reproduced
settings.register_profile("ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None)

ROOT = Path(__file__).resolve().parent.parent
TEST_PLUGINS = ROOT / "tests" / "plugins" / "testplugins.py"
PYLOGD = [sys.executable, "-m", "pylogd"]
IN_CI = os.environ.get("CI", "").lower() == "true"
# the daemons the tests start have no control socket unless a test gives them one (tests/test_stats.py)
os.environ["PYLOGD_CONTROL_SOCKET"] = ""
settings.load_profile("ci" if IN_CI else "dev")


def stale_compiled_modules() -> list[str]:
    """Compiled modules in the source tree older than their source: they would shadow the edit."""
    stale = []
    for path in compiled.HOT_MODULES.values():
        source = ROOT / path
        for built in source.parent.glob(f"{source.stem}.*.so"):
            if built.stat().st_mtime < source.stat().st_mtime:
                stale.append(str(built.relative_to(ROOT)))
    return stale


def pytest_configure(config: pytest.Config) -> None:
    if not compiled.pure_requested() and (stale := stale_compiled_modules()):
        pytest.exit(f"compiled modules older than their source: {', '.join(stale)}; run `make compiled`", 4)


def pytest_report_header() -> str:
    return f"pylogd build: {compiled.describe()}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped under CI=true, which is a failure: {reason}"


@pytest.fixture
def logged() -> tuple[list[str], LogSink]:
    """A log sink that keeps each message: (messages, sink); give it to a Logger."""
    sink = LogSink()
    lines: list[str] = []
    sink.write = lambda level, origin, message: lines.append(message)  # type: ignore[method-assign]
    return lines, sink


# the namespace rig's fixtures: rig, netns, netns_pair
# daemons: pylogd processes a test starts, killed at its end
from daemonkit import daemons_fixture  # noqa: E402, F401
from rig import netns_fixture, netns_pair_fixture, rig_fixture  # noqa: E402, F401
