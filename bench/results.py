"""The bench report: typed records of one run, and the JSON file that holds them.

Times are milliseconds (``_ms``), microseconds (``_us``) or seconds (``_s``) as
the field says; CPU is percent of one core over the measured window (200 = both
cores of this box).
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
    """Redis ``used_memory`` right after the wipe (``empty``), after registering the
    users (``before``) and after their memberships (``after``); the history streams'
    own bytes are subtracted (they hold events only until the archiver has them)."""

    used_empty: int
    used_before: int
    used_after: int
    stream_bytes_before: int
    stream_bytes_after: int
    memberships: int
    users: int
    bytes_per_membership: float
    """The memberships alone: (after - before, streams excluded) / memberships."""
    data_set_bytes_per_membership: float
    """The whole data set (users registry too) over the memberships: the §5 figure."""


class ArchiverResult(msgspec.Struct, kw_only=True):
    """The seeding's events, left in the streams while the archiver was stopped, then
    drained: rows written to PostgreSQL, from the first rows seen to an empty backlog."""

    events: int
    seconds: float
    events_per_s: float


class PercentPhase(msgspec.Struct, kw_only=True):
    """One step of ``percent``, with what Redis and the lookups felt meanwhile."""

    name: str
    seconds: float
    members: int | None
    """Members of the segment the phase created (None for the other phases)."""
    script_calls_over_1ms: int | None
    """Script calls of our connections in the slow log (None: not read)."""
    longest_script_ms: float | None
    longest_script: str | None
    """The script of the longest call, by name."""
    probe_lookups: int
    probe_lookup_p99_ms: float | None
    probe_lookup_max_ms: float | None
    probe_ping_max_ms: float | None
    redis_bytes: int | None
    """``used_memory`` minus the history streams, after the phase."""


class PercentResult(msgspec.Struct, kw_only=True):
    known_users: int
    phases: list[PercentPhase]

    def phase(self, name: str) -> PercentPhase | None:
        return next((p for p in self.phases if p.name == name), None)


class CsvResult(msgspec.Struct, kw_only=True):
    rows: int
    bytes: int
    seconds: float
    first_byte_s: float
    """From the download's request to its first byte (the database's query start)."""
    rows_per_s: float
    """Rows over the whole download, first byte wait included (the §5 figure)."""
    streaming_rows_per_s: float
    """Rows over the time after the first byte."""
    api_rss_before_mb: float | None
    api_rss_max_mb: float | None
    api_rss_growth_mb: float | None


class HotPathResult(msgspec.Struct, kw_only=True):
    """Lookups answered in the bench's process by the service's hot path, one after
    the other: server-side time of a lookup without HTTP or queueing."""

    calls: int
    p50_us: float
    p99_us: float
    p999_us: float
    max_us: float


class Check(msgspec.Struct, kw_only=True):
    """One target of SPEC §5 against what this run measured."""

    name: str
    measured: float | None
    target: str
    ok: bool | None
    """None: not measured in this run, or measured at a size the target is not set for."""
    note: str = ""


class Report(msgspec.Struct, kw_only=True):
    version: int = 2
    started_at: str
    finished_at: str = ""
    machine: dict[str, str | int | float]
    settings: dict[str, str | int | float | bool | None]
    runs: list[RunRecord] = msgspec.field(default_factory=list)
    scenarios: list[ScenarioSummary] = msgspec.field(default_factory=list)
    seed: SeedResult | None = None
    memory: MemoryResult | None = None
    archiver: ArchiverResult | None = None
    percent: PercentResult | None = None
    csv: CsvResult | None = None
    hotpath: HotPathResult | None = None
    checks: list[Check] = msgspec.field(default_factory=list)
    notes: list[str] = msgspec.field(default_factory=list)


def write_json(report: Report, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    return path


def read_json(path: Path) -> Report:
    return msgspec.json.decode(path.read_bytes(), type=Report)
