"""Fault injection for crash tests: SIGKILL this process at a named point.

Inert unless its own environment variable is set: it is not one of the
archiver's settings, and production never sets it.
``SEGMENTS_ARCHIVER_CRASH_AT=point[:n]`` kills the archiver the n-th time
(1st by default) it reaches ``point``. Points, in the order a batch meets them:

- ``after_read``: entries delivered to this consumer, nothing written;
- ``after_copy``: rows copied into staging, transaction still open;
- ``before_commit``: rows inserted, transaction still open;
- ``after_commit``: committed in PostgreSQL, not yet acknowledged in Redis;
- ``after_ack``: acknowledged, stream not yet trimmed.

A real SIGKILL, not an exception: no ``finally`` block, no clean-up and no
socket shutdown runs, exactly as when the kernel's OOM killer strikes.
"""

from __future__ import annotations

import os
import signal

ENV = "SEGMENTS_ARCHIVER_CRASH_AT"

POINTS = frozenset(("after_read", "after_copy", "before_commit", "after_commit", "after_ack"))

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
    """Arm from ``SEGMENTS_ARCHIVER_CRASH_AT``; disarmed when it is unset."""
    arm(os.environ.get(ENV, "").strip() or None)


def reached(point: str) -> None:
    global _remaining
    if _target != point:
        return
    _remaining -= 1
    if _remaining <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
