"""Prometheus metrics of the archiver and of history reports.

All live in prometheus_client's default registry, so the API's ``/metrics``
shows them when the archiver runs in the same process (``segments dev``); a
standalone archiver serves them itself on ``SEGMENTS_ARCHIVER_METRICS_PORT``.
The lag gauges are filled by ``refresh_lag``, which ``/metrics`` awaits
before rendering (a scrape must not block on Redis in a sync collector).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from archiver.lag import AnyRedis, archiver_lag

ARCHIVED = Counter(
    "segments_archiver_events_total",
    "Stream entries written to PostgreSQL (new rows).",
    ["stream"],
)
DUPLICATES = Counter(
    "segments_archiver_duplicates_total",
    "Entries delivered again whose row was already in PostgreSQL (skipped).",
    ["stream"],
)
DEAD_LETTERED = Counter(
    "segments_archiver_dead_letters_total",
    "Entries moved to the dead-letter stream.",
    ["stream"],
)
CLAIMED = Counter(
    "segments_archiver_claimed_total",
    "Entries claimed from consumers idle too long.",
    ["stream"],
)
FAILURES = Counter(
    "segments_archiver_failures_total",
    "Failed attempts (PostgreSQL or Redis unavailable, or a rejected batch).",
    ["stage"],
)
BATCH_SECONDS = Histogram(
    "segments_archiver_batch_seconds",
    "Time to write one batch to PostgreSQL, commit included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_ROWS = Histogram(
    "segments_archiver_batch_rows",
    "Entries per batch.",
    buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000),
)

REPORT_LINKS = Counter(
    "segments_report_links_total",
    "Report link requests, by outcome (ok, timeout: the archiver lagged, 503).",
    ["outcome"],
)
REPORT_WAIT_SECONDS = Histogram(
    "segments_report_wait_seconds",
    "Time a report request waited for the archiver to catch up.",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
REPORT_DOWNLOADS = Counter(
    "segments_report_downloads_total",
    "Report downloads, by outcome (ok, forbidden, failed: broke off mid-stream).",
    ["outcome"],
)
REPORT_BYTES = Counter("segments_report_bytes_total", "CSV bytes streamed.")

LAG_SECONDS = Gauge(
    "segments_archiver_lag_seconds",
    "Age of the oldest entry not yet archived, per stream.",
    ["stream"],
)
PENDING = Gauge(
    "segments_archiver_pending",
    "Entries delivered to an archiver and not yet acknowledged, per stream.",
    ["stream"],
)


async def refresh_lag(redis: AnyRedis) -> None:
    """Update the lag gauges from Redis; await it in ``/metrics`` before rendering."""
    lag = await archiver_lag(redis)
    for s in lag.streams:
        LAG_SECONDS.labels(s.stream).set(s.lag_s)
        PENDING.labels(s.stream).set(s.pending)
