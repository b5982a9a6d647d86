"""The archiver's crash points (``segments_core.faults``): SIGKILL it at a named point.

Inert unless its own environment variable is set: it is not one of the
archiver's settings, and production never sets it.
``SEGMENTS_ARCHIVER_CRASH_AT=point[:n]`` kills the archiver the n-th time
(1st by default) it reaches ``point``. Points, in the order a batch meets them:

- ``after_read``: entries delivered to this consumer, nothing written;
- ``after_copy``: rows copied into staging, transaction still open;
- ``before_commit``: rows inserted, transaction still open;
- ``after_commit``: committed in PostgreSQL, not yet acknowledged in Redis;
- ``after_ack``: acknowledged, stream not yet trimmed.
"""

from __future__ import annotations

from segments_core.faults import CrashHook

ENV = "SEGMENTS_ARCHIVER_CRASH_AT"

POINTS = frozenset(("after_read", "after_copy", "before_commit", "after_commit", "after_ack"))

HOOK = CrashHook(ENV, POINTS)
arm = HOOK.arm
arm_from_environment = HOOK.arm_from_environment
reached = HOOK.reached
