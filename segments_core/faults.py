"""Fault injection for the crash tests: SIGKILL this process at a named point.

One hook per program (the archiver, ``segments restore``), each with its own
environment variable and points. Inert unless that variable is set to
``point[:n]`` (tests only: no program lists it among its settings, production
never sets it): the process kills itself the n-th time (1st by default) it
reaches ``point``.

A real SIGKILL, not an exception: no ``finally`` block, no clean-up and no
socket shutdown runs, exactly as when the kernel's OOM killer strikes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Set


class CrashHook:
    """The crash point of one program, armed from ``env`` (one of ``points``)."""

    def __init__(self, env: str, points: Set[str]) -> None:
        self.env = env
        self.points = frozenset(points)
        self.target: str | None = None
        self.remaining = 0

    def arm(self, spec: str | None) -> None:
        """Set the crash point from ``point[:n]``; None disarms."""
        if not spec:
            self.target, self.remaining = None, 0
            return
        point, _, count = spec.partition(":")
        if point not in self.points:
            raise ValueError(f"unknown crash point {point!r}; one of {sorted(self.points)}")
        self.target, self.remaining = point, int(count or "1")

    def arm_from_environment(self) -> None:
        """Arm from the hook's variable; disarmed when it is unset."""
        self.arm(os.environ.get(self.env, "").strip() or None)

    def reached(self, point: str) -> None:
        if self.target != point:
            return
        self.remaining -= 1
        if self.remaining <= 0:
            os.kill(os.getpid(), signal.SIGKILL)
