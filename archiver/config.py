"""The archiver's knobs: each a named default with its reason, overridable
from the environment (``SEGMENTS_ARCHIVER_<NAME>``, declared on the fields of
``ArchiverConfig``).

A bad value stops start-up with a message naming the variable, as
``service.settings`` does for the rest of the configuration. The crash-test
hook is not a setting: ``archiver.faults`` reads its own variable.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Annotated

import msgspec

from segments_core import config
from segments_core.config import ConfigError, Setting, boolean, number, text, whole
from segments_core.retention import RETENTION_MS
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


def _prefixed(name: str) -> str:
    return "SEGMENTS_ARCHIVER_" + name


def _metrics_port(raw: str) -> int | None:
    return whole(0)(raw) or None


class ArchiverConfig(msgspec.Struct, kw_only=True, frozen=True):
    """The archiver's settings, each field declared with its variable
    (``segments_core.config``); the defaults are the constants above."""

    consumer: Annotated[
        str,
        Setting(
            _prefixed("NAME"),
            text,
            "consumer name; stable across restarts, its own for each archiver on one host",
            default="the host name",
        ),
    ] = msgspec.field(default_factory=socket.gethostname)
    """This archiver's name in the group. Stable across restarts (host name by
    default), so a restarted archiver drains its own pending entries first;
    give each archiver on one host its own name."""
    group: Annotated[str, Setting(_prefixed("GROUP"), text, "consumer group")] = GROUP
    batch_size: Annotated[
        int,
        Setting(
            _prefixed("BATCH_SIZE"),
            whole(1),
            "entries per read per stream, so per transaction",
        ),
    ] = BATCH_SIZE
    block_ms: Annotated[
        int, Setting(_prefixed("BLOCK_MS"), whole(1), "how long a read waits for new entries")
    ] = BLOCK_MS
    linger_ms: Annotated[
        int,
        Setting(
            _prefixed("LINGER_MS"),
            whole(0),
            "after a batch smaller than the batch size, wait this long before reading again:"
            " fewer, larger transactions under a steady trickle (0: off)",
        ),
    ] = LINGER_MS
    claim_idle_ms: Annotated[
        int,
        Setting(
            _prefixed("CLAIM_IDLE_MS"),
            whole(1),
            "idle time after which another consumer's entry is claimed",
        ),
    ] = CLAIM_IDLE_MS
    claim_interval_ms: Annotated[
        int,
        Setting(
            _prefixed("CLAIM_INTERVAL_MS"),
            whole(1),
            "how often each stream is scanned for idle entries",
        ),
    ] = CLAIM_INTERVAL_MS
    max_attempts: Annotated[
        int,
        Setting(
            _prefixed("MAX_ATTEMPTS"),
            whole(1),
            "rejections of one row before it is dead-lettered",
        ),
    ] = MAX_ATTEMPTS
    pg_connections: Annotated[
        int,
        Setting(
            _prefixed("PG_CONNECTIONS"),
            whole(1),
            "PostgreSQL connections (batches commit in parallel)",
        ),
    ] = PG_CONNECTIONS
    retry_min_s: Annotated[
        float,
        Setting(_prefixed("RETRY_MIN_S"), number, "first back-off after a failure, seconds"),
    ] = RETRY_MIN_S
    retry_max_s: Annotated[
        float,
        Setting(_prefixed("RETRY_MAX_S"), number, "longest back-off after failures, seconds"),
    ] = RETRY_MAX_S
    trim_interval_ms: Annotated[
        int,
        Setting(_prefixed("TRIM_INTERVAL_MS"), whole(1), "how often a stream is trimmed"),
    ] = TRIM_INTERVAL_MS
    retention_ms: Annotated[
        int,
        Setting(
            _prefixed("RETENTION_MS"),
            whole(0),
            "archived entries younger than this stay in the streams for the change feed"
            " (0: trim as soon as archived)",
        ),
    ] = RETENTION_MS
    """Entries younger than this stay in the streams even once archived, so the
    change feed can replay them (SPEC §4); 0 trims as soon as archived."""
    partition_check_s: Annotated[
        float,
        Setting(
            _prefixed("PARTITION_CHECK_S"),
            number,
            "how often the month partitions ahead are (re)created, seconds",
        ),
    ] = PARTITION_CHECK_S
    partitions_ahead: Annotated[
        int,
        Setting(
            _prefixed("PARTITIONS_AHEAD"),
            whole(0),
            "month partitions kept ready after the current one",
        ),
    ] = PARTITIONS_AHEAD
    trim: Annotated[
        bool,
        Setting(
            _prefixed("TRIM"),
            boolean,
            "`false` keeps archived entries in Redis (a replay window)",
        ),
    ] = True
    """Trim streams below what is archived (turn off to keep a replay window)."""
    metrics_port: Annotated[
        int | None,
        Setting(
            _prefixed("METRICS_PORT"),
            _metrics_port,
            "serve Prometheus metrics on this port (0: off)",
        ),
    ] = None
    """Serve Prometheus metrics on this port (standalone archiver only)."""

    def __post_init__(self) -> None:
        if self.retry_max_s < self.retry_min_s:
            raise ConfigError(
                f"{_prefixed('RETRY_MAX_S')} must not be below {_prefixed('RETRY_MIN_S')}"
            )


def load(env: Mapping[str, str] | None = None) -> ArchiverConfig:
    """The archiver's settings from ``env`` (default ``os.environ``)."""
    return config.load(ArchiverConfig, env)
