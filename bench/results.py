"""The bench report: typed records of one run, and the JSON file that holds them.

Times are milliseconds (``_ms``) or seconds (``_s``) as the field says; CPU is
percent of one core over the measured window (200 = both cores of this box).
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from bench.wrk import Errors

PERCENTILES = ("50", "90", "99", "99.9")
"""The latency percentiles every table and chart shows."""


class RunRecord(msgspec.Struct, kw_only=True):
    """One wrk run of one scenario."""

    index: int
    scenario: str
    repeat: int
    rps: float
    requests: int
    duration_s: float
    errors: Errors
    latency_ms: dict[str, float]
    """Percentile ("50", "99.9", ...) -> ms, plus "max"."""
    cpu_percent: dict[str, float]
    """Process group ("api", "wrk", "redis", ...) -> percent of one core."""
    ratio_to_ceiling: float | None = None
    """rps / mean rps of the ceiling runs right before and after this one."""
    archiver_lag_max_s: float | None = None
    """Largest archiver lag seen while this run went on (sampled)."""


class ScenarioSummary(msgspec.Struct, kw_only=True):
    """All runs of one scenario: medians of throughput, ratio and latencies."""

    scenario: str
    runs: int
    rps: float
    ratio_to_ceiling: float | None
    latency_ms: dict[str, float]
    errors: int
    cpu_percent: dict[str, float]
    archiver_lag_max_s: float | None = None
    items_per_request: int = 1
    """Users per request (100 for lookup-batch), for a users/s figure."""


class SeedResult(msgspec.Struct, kw_only=True):
    users: int
    segments: int
    memberships: int
    with_deadline: int
    register_s: float
    memberships_s: float
    requests_per_s: float


class MemoryResult(msgspec.Struct, kw_only=True):
    """Redis INFO used_memory at three points of the seeding: before anything,
    after the users were registered, after their memberships.

    The history streams are left out: they hold events only until the
    archiver has them (the bench lets it drain them first, so they are
    nearly empty either way)."""

    used_empty: int
    used_before: int
    """After registering the users, before their memberships."""
    used_after: int
    stream_bytes_before: int
    stream_bytes_after: int
    memberships: int
    users: int
    bytes_per_membership: float
    """(used growth over the memberships - stream growth) / memberships."""
    data_set_bytes_per_membership: float
    """The whole data set (users registry too) over the memberships: what the
    SPEC §5 target is checked against."""
    gross_bytes_per_membership: float
    """used growth over the memberships / memberships, streams included."""


class ArchiverResult(msgspec.Struct, kw_only=True):
    """A backlog left in the streams while the archiver was stopped, then drained."""

    events: int
    seconds: float
    events_per_s: float
    method: str
    """How events were counted: "postgres rows" or "stream backlog"."""


class PercentResult(msgspec.Struct, kw_only=True):
    known_users: int
    register_s: float
    create_s: float
    """The POST that creates the segment (it returns once every known user is in)."""
    members: int
    longest_script_ms: float | None
    longest_command: str | None
    slowlog_checked: bool
    """The slow log was read (needs --redis-url with --url)."""
    slowlog_entries: int
    probe_lookups: int
    probe_lookup_max_ms: float | None
    probe_lookup_p99_ms: float | None
    probe_ping_max_ms: float | None
    latency_monitor_max_ms: float | None


class CsvResult(msgspec.Struct, kw_only=True):
    rows: int
    bytes: int
    seconds: float
    first_byte_s: float
    """From the download's request to its first byte (the database's query start)."""
    rows_per_s: float
    """Rows over the whole download, first byte wait included (the §5 figure)."""
    streaming_rows_per_s: float = 0.0
    """Rows over the time after the first byte (0 in reports of older bench versions)."""
    api_rss_before_mb: float | None
    api_rss_max_mb: float | None
    api_rss_growth_mb: float | None


class Check(msgspec.Struct, kw_only=True):
    """One target of SPEC §5 against what this run measured."""

    name: str
    measured: float | None
    target: str
    ok: bool | None
    """None: not measured in this run, or measured at a size the target is not set for."""
    note: str = ""


class Report(msgspec.Struct, kw_only=True):
    version: int = 1
    started_at: str
    finished_at: str = ""
    machine: dict[str, str | int | float]
    settings: dict[str, str | int | float | bool | None]
    runs: list[RunRecord] = msgspec.field(default_factory=list)
    scenarios: list[ScenarioSummary] = msgspec.field(default_factory=list)
    seed: SeedResult | None = None
    memory: MemoryResult | None = None
    archiver: list[ArchiverResult] = msgspec.field(default_factory=list)
    percent: PercentResult | None = None
    csv: CsvResult | None = None
    checks: list[Check] = msgspec.field(default_factory=list)
    notes: list[str] = msgspec.field(default_factory=list)


def write_json(report: Report, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    return path


def read_json(path: Path) -> Report:
    return msgspec.json.decode(path.read_bytes(), type=Report)
