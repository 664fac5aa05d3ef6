"""The scheduling policy of pylogd's threads: the kernel reader real-time, as ulogd's loop, the output
workers normal."""

from __future__ import annotations

import os

from .log import Logger


def run_realtime(log: Logger) -> None:
    """As ulogd does at start: the thread that drains the kernel queues runs under SCHED_RR at the
    highest priority.  Why: a burst fills a receive buffer of ulogd's sizes in well under a
    scheduler tick, so a reader that other work on its CPU keeps waiting loses what the kernel
    queued (measured: runs that lost packets at the kernel's default buffer had waited 250-475 ms
    for the CPU).  Only the calling thread: output workers set themselves back to the normal
    scheduler (:func:`run_normal`).  The systemd unit sets the policy itself, before the service
    user and RestrictRealtime apply."""
    try:
        if os.sched_getscheduler(0) == os.SCHED_RR:
            return
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(os.sched_get_priority_max(os.SCHED_RR)))
    except OSError as exc:
        log.notice(f"scheduler configuration failed: {exc.strerror}; reading under the normal scheduler")


def run_normal() -> None:
    """For an output's worker thread: the normal scheduler, so that a slow database or a full disk
    never holds a CPU at real-time priority."""
    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError:
        pass  # a thread that cannot leave real-time still writes
