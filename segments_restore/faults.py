"""The crash points of ``segments restore`` (``segments_core.faults``).

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

from segments_core.faults import CrashHook

ENV = "SEGMENTS_RESTORE_CRASH_AT"
POINTS = frozenset(("after_marker", "after_wipe", "after_flush"))

HOOK = CrashHook(ENV, POINTS)
arm = HOOK.arm
arm_from_environment = HOOK.arm_from_environment
reached = HOOK.reached
