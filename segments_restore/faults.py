"""Fault injection for the crash tests: SIGKILL ``segments restore`` at a named point.

Inert unless ``SEGMENTS_RESTORE_CRASH_AT=point[:n]`` is set (tests only; no
setting of the service): the process kills itself the n-th time (1st by
default) it reaches ``point``. Points, in the order a restore meets them:

- ``after_marker``: the marker is set, nothing else written;
- ``after_wipe``: the state is gone, nothing restored yet;
- ``after_flush``: after a pipeline of users (and removals) was written.

A real SIGKILL: no ``finally`` runs, the lock stays until it expires, as
when the OOM killer strikes.
"""

from __future__ import annotations

import os
import signal

ENV = "SEGMENTS_RESTORE_CRASH_AT"
POINTS = frozenset(("after_marker", "after_wipe", "after_flush"))

_target: str | None = None
_remaining = 0


def arm(spec: str | None) -> None:
    """Set the crash point from ``point[:n]``; None disarms."""
    global _target, _remaining
    if not spec:
        _target, _remaining = None, 0
        return
    point, _, count = spec.partition(":")
    if point not in POINTS:
        raise ValueError(f"unknown crash point {point!r}; one of {sorted(POINTS)}")
    _target, _remaining = point, int(count or "1")


def arm_from_environment() -> None:
    arm(os.environ.get(ENV, "").strip() or None)


def reached(point: str) -> None:
    global _remaining
    if _target != point:
        return
    _remaining -= 1
    if _remaining <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
