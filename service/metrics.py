"""Prometheus metrics, gathered when scraped (nothing on the request path)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from service.keys import GLOBAL, SHARD_KEYS
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
    for k in SHARD_KEYS:
        pipe.scard(k.users)
        pipe.xlen(k.events)
        pipe.zcard(k.due)
    replies = await pipe.execute()
    segments.set(replies[0])
    stream.set(replies[1] + sum(replies[3::3]))
    known.set(sum(replies[2::3]))
    due.set(sum(replies[4::3]))
    return generate_latest(registry), CONTENT_TYPE_LATEST
