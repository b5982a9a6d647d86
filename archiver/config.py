"""The archiver's knobs: each a named default with its reason, overridable
from the environment (``SEGMENTS_ARCHIVER_<NAME>``).

A bad value stops start-up with a message naming the variable, as
``service.settings`` does for the rest of the configuration.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import msgspec

from segments_core.config import ConfigError
from segments_core.streams import GROUP

BATCH_SIZE = 5000
"""Entries read from one stream per batch: large enough that a commit's fixed
cost (fsync) is spread thin, small enough that a batch commits in tens of ms."""

BLOCK_MS = 1000
"""How long a read waits for new entries; also bounds how long a stop takes."""

LINGER_MS = 100
"""After a batch smaller than BATCH_SIZE, wait this long before reading
again, so a steady trickle of events is archived in fewer, larger
transactions: under the bench's change load, batches of ~20 rows (443
commits/s) took the archiver and PostgreSQL a whole core. Adds at most this
much to the lag; 0 turns it off."""

CLAIM_IDLE_MS = 30_000
"""An entry delivered this long ago and still unacknowledged is presumed
orphaned by a dead archiver and claimed by a live one. Far above a batch's
time, so a live archiver rarely loses its entries (and if it does, the unique
event id absorbs the duplicate write)."""

CLAIM_INTERVAL_MS = 5_000
"""How often each stream is scanned for orphaned entries."""

MAX_ATTEMPTS = 5
"""Failures of one entry (a value PostgreSQL rejects) before it goes to the
dead-letter stream, so one bad entry cannot hold back the stream."""

PG_CONNECTIONS = 4
"""PostgreSQL connections per archiver; batches of different streams commit
in parallel on them (more buys little on a 2-core host)."""

RETRY_MIN_S = 0.1
"""First back-off after a failure of PostgreSQL or Redis; doubles each time."""

RETRY_MAX_S = 5.0
"""Back-off ceiling: the longest an archiver waits before trying again once
PostgreSQL is back."""

TRIM_INTERVAL_MS = 1_000
"""How often a stream is trimmed below its oldest unarchived entry."""

PARTITION_CHECK_S = 3600.0
"""How often the month partitions ahead of time are (re)created."""

PARTITIONS_AHEAD = 2
"""Month partitions kept ready after the current one."""


class ArchiverConfig(msgspec.Struct, kw_only=True, frozen=True):
    consumer: str
    """This archiver's name in the group. Stable across restarts (host name by
    default), so a restarted archiver drains its own pending entries first;
    give each archiver on one host its own name."""
    group: str = GROUP
    batch_size: int = BATCH_SIZE
    block_ms: int = BLOCK_MS
    linger_ms: int = LINGER_MS
    claim_idle_ms: int = CLAIM_IDLE_MS
    claim_interval_ms: int = CLAIM_INTERVAL_MS
    max_attempts: int = MAX_ATTEMPTS
    pg_connections: int = PG_CONNECTIONS
    retry_min_s: float = RETRY_MIN_S
    retry_max_s: float = RETRY_MAX_S
    trim_interval_ms: int = TRIM_INTERVAL_MS
    partition_check_s: float = PARTITION_CHECK_S
    partitions_ahead: int = PARTITIONS_AHEAD
    trim: bool = True
    """Trim streams below what is archived (turn off to keep a replay window)."""
    crash_at: str | None = None
    """Test hook: ``point[:n]`` SIGKILLs the process at the n-th time (default
    1st) it reaches ``point``; see ``archiver.faults``."""
    metrics_port: int | None = None
    """Serve Prometheus metrics on this port (standalone archiver only)."""


_PREFIX = "SEGMENTS_ARCHIVER_"


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(_PREFIX + name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{_PREFIX}{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{_PREFIX}{name} must be at least {minimum}, got {raw!r}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(_PREFIX + name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{_PREFIX}{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{_PREFIX}{name} must be positive, got {raw!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(_PREFIX + name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{_PREFIX}{name} must be true or false, got {raw!r}")


def load(env: Mapping[str, str] | None = None) -> ArchiverConfig:
    env = os.environ if env is None else env
    retry_min = _float(env, "RETRY_MIN_S", RETRY_MIN_S)
    retry_max = _float(env, "RETRY_MAX_S", RETRY_MAX_S)
    if retry_max < retry_min:
        raise ConfigError(f"{_PREFIX}RETRY_MAX_S must not be below {_PREFIX}RETRY_MIN_S")
    port = _int(env, "METRICS_PORT", 0, minimum=0)
    return ArchiverConfig(
        consumer=env.get(_PREFIX + "NAME", "").strip() or socket.gethostname(),
        group=env.get(_PREFIX + "GROUP", "").strip() or GROUP,
        batch_size=_int(env, "BATCH_SIZE", BATCH_SIZE),
        block_ms=_int(env, "BLOCK_MS", BLOCK_MS),
        linger_ms=_int(env, "LINGER_MS", LINGER_MS, minimum=0),
        claim_idle_ms=_int(env, "CLAIM_IDLE_MS", CLAIM_IDLE_MS),
        claim_interval_ms=_int(env, "CLAIM_INTERVAL_MS", CLAIM_INTERVAL_MS),
        max_attempts=_int(env, "MAX_ATTEMPTS", MAX_ATTEMPTS),
        pg_connections=_int(env, "PG_CONNECTIONS", PG_CONNECTIONS),
        retry_min_s=retry_min,
        retry_max_s=retry_max,
        trim_interval_ms=_int(env, "TRIM_INTERVAL_MS", TRIM_INTERVAL_MS),
        partition_check_s=_float(env, "PARTITION_CHECK_S", PARTITION_CHECK_S),
        partitions_ahead=_int(env, "PARTITIONS_AHEAD", PARTITIONS_AHEAD, minimum=0),
        trim=_bool(env, "TRIM", True),
        crash_at=env.get(_PREFIX + "CRASH_AT", "").strip() or None,
        metrics_port=port or None,
    )
