"""Prometheus metrics, gathered when scraped (nothing on the request path)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from segments_core.keys import GLOBAL
from segments_core.streams import AnyRedis, archiver_lag
from service.store import Store


async def render_metrics(store: Store) -> tuple[bytes, str]:
    registry = CollectorRegistry()
    segments = Gauge("segments_segments", "Segments in the catalogue", registry=registry)
    known = Gauge("segments_known_users", "Known users", registry=registry)
    stream = Gauge(
        "segments_history_stream_length", "History events in Redis streams", registry=registry
    )
    due = Gauge("segments_memberships_with_deadline", "Memberships with a deadline",
                registry=registry)
    pipe = store.redis.pipeline(transaction=False)
    pipe.hlen(GLOBAL.segments)
    pipe.xlen(GLOBAL.events)
    for k in store.keyspace.shard_keys:
        pipe.scard(k.users)
        pipe.xlen(k.events)
        pipe.zcard(k.due)
    replies = await pipe.execute()
    segments.set(replies[0])
    stream.set(replies[1] + sum(replies[3::3]))
    known.set(sum(replies[2::3]))
    due.set(sum(replies[4::3]))
    return generate_latest(registry), CONTENT_TYPE_LATEST


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


async def refresh_lag(redis: AnyRedis, streams: list[str]) -> None:
    """Update the lag gauges from Redis; await it in ``/metrics`` before rendering."""
    lag = await archiver_lag(redis, streams)
    for s in lag.streams:
        LAG_SECONDS.labels(s.stream).set(s.lag_s)
        PENDING.labels(s.stream).set(s.pending)
