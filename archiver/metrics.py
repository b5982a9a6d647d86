"""Prometheus metrics of the archiver.

A standalone archiver serves them itself on ``SEGMENTS_ARCHIVER_METRICS_PORT``.
Under ``segments dev`` it shares the API's metrics folder
(``PROMETHEUS_MULTIPROC_DIR``, ``segments_core.metrics_dir``), so the API's
``/metrics`` shows them too. The lag per stream is the API's to report (read
from Redis at each scrape), whichever archiver runs.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
