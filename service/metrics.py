"""Prometheus metrics of the API.

Three kinds:

- **Per request** (:data:`REQUESTS`): request count by method, route template
  and status, request duration by method and route, Lua script calls by
  script. Recorded on every request, the hot path included, at a
  microsecond or so: ``service.request_metrics``.
- **Events** (counters of ``prometheus_client``): script errors, Redis errors
  by kind, sweeper removals, report links; the archiver's own
  (``archiver.metrics``). Rare, so the library's own classes.
- **State** (:func:`render`): segments, known users, stream lengths, archiver
  lag per stream, read from Redis when scraped.

Across worker processes: ``segments serve`` (and ``segments dev``) point
``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before uvicorn starts its
workers (``segments_core.metrics_dir``). Every process writes its numbers
there (the events in prometheus_client's multiprocess mode), and a scrape,
whichever worker answers it, adds up every process's files: the same totals
from any worker. Without that variable (an app in a test: one process) the
per-request files live in a private folder and the events in the default
registry.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from segments_core import unavailable
from segments_core.keys import GLOBAL
from segments_core.metrics_dir import memory_folder
from segments_core.streams import archiver_lag
from segments_core.unavailable import REDIS_CLIENT_ERRORS
from service.request_metrics import Recorder, RequestsCollector

if TYPE_CHECKING:
    from service.store import Store

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

HOT_ROUTE = "/api/v1/users/{user_id}/segments"
"""The route template of the two requests ``service.hotpath`` answers."""
UNMATCHED = "unmatched"
"""The route label of a request no route matched (404, 405): one value, so
random paths cannot grow the number of series."""
_private: str | None = None


def _private_dir() -> str:
    """This process's own folder for the per-request files (no multiprocess folder set)."""
    global _private
    if _private is None:
        _private = tempfile.mkdtemp(prefix="segments-metrics-", dir=memory_folder())
        atexit.register(shutil.rmtree, _private, True)
    return _private


def _directory() -> str:
    return os.environ.get(MULTIPROC_ENV) or _private_dir()


REQUESTS = Recorder(_directory)
"""This process's per-request metrics (``service.request_metrics``)."""


def _after_fork() -> None:
    global _private
    _private = None
    REQUESTS.reset()


os.register_at_fork(after_in_child=_after_fork)


# -- events ---------------------------------------------------------------------------------

SCRIPT_ERRORS = Counter(
    "segments_lua_script_errors",
    "Lua script calls that failed, by script and kind (see segments_redis_errors_total).",
    ["script", "kind"],
)
REDIS_ERRORS = Counter(
    "segments_redis_errors",
    "Redis calls of the API that failed, by kind: connection, timeout, cluster, an error"
    " code of Redis (LOADING, BUSY, READONLY, MOVED, TRYAGAIN, ...) or response (any other).",
    ["kind"],
)
SWEEPER_EXPIRED = Counter(
    "segments_sweeper_expired",
    "Memberships removed by the background sweeper because their deadline passed.",
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

_COUNTED = "segments_counted"
"""Attribute set on an exception already counted in REDIS_ERRORS (by the script
layer), so the request's exception hook does not count it again."""


def error_kind(exc: BaseException) -> str:
    """A short, bounded name for a Redis failure (a label value)."""
    if isinstance(exc, RedisTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, RedisConnectionError | ConnectionError):
        return "connection"
    if isinstance(exc, ResponseError):
        code = unavailable.error_code(exc)
        if code and code.isalpha() and code.isupper() and len(code) <= 16:
            return code
        return "response"
    if isinstance(exc, RedisClusterException):
        return "cluster"
    return "other"


def redis_error(exc: BaseException, script: str | None = None) -> None:
    """Count a failed Redis call once (and against its script, when it ran one)."""
    if getattr(exc, _COUNTED, False):
        return
    kind = error_kind(exc)
    REDIS_ERRORS.labels(kind).inc()
    if script is not None:
        SCRIPT_ERRORS.labels(script, kind).inc()
    with contextlib.suppress(AttributeError):  # an exception type without a __dict__
        setattr(exc, _COUNTED, True)


# -- scrape ---------------------------------------------------------------------------------


class _Families(Collector):
    """Ready-made metric families (read from Redis for this scrape) as a collector.

    Families, not ``Gauge`` objects: in multiprocess mode those would be
    written to the shared folder, and every process's old values read back."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


async def _state(store: Store) -> bytes:
    """Gauges read from Redis now: the same whichever process is asked."""
    pipe = store.redis.pipeline(transaction=False)
    pipe.hlen(GLOBAL.segments)
    pipe.xlen(GLOBAL.events)
    for k in store.keyspace.shard_keys:
        pipe.scard(k.users)
        pipe.xlen(k.events)
        pipe.zcard(k.due)
    replies = await pipe.execute()
    lag = await archiver_lag(store.redis, store.keyspace.history_streams())
    lag_seconds = GaugeMetricFamily(
        "segments_archiver_lag_seconds",
        "Age of the oldest entry not yet archived, per stream (0: none waits).",
        labels=["stream"],
    )
    pending = GaugeMetricFamily(
        "segments_archiver_pending",
        "Entries delivered to an archiver and not yet acknowledged, per stream.",
        labels=["stream"],
    )
    for s in lag.streams:
        lag_seconds.add_metric([s.stream], s.lag_s)
        pending.add_metric([s.stream], s.pending)
    families = [
        GaugeMetricFamily("segments_segments", "Segments in the catalogue", value=replies[0]),
        GaugeMetricFamily(
            "segments_known_users", "Known users", value=sum(replies[2::3])
        ),
        GaugeMetricFamily(
            "segments_history_stream_length",
            "History events in Redis streams",
            value=replies[1] + sum(replies[3::3]),
        ),
        GaugeMetricFamily(
            "segments_memberships_with_deadline",
            "Memberships with a deadline",
            value=sum(replies[4::3]),
        ),
        lag_seconds,
        pending,
    ]
    registry = CollectorRegistry()
    registry.register(_Families(families))
    return generate_latest(registry)


def recorded() -> bytes:
    """Every process's per-request and event metrics (see the module's docstring)."""
    registry = CollectorRegistry()
    registry.register(RequestsCollector(REQUESTS.directory))
    shared = os.environ.get(MULTIPROC_ENV)
    if shared:
        MultiProcessCollector(registry, path=shared)
        return generate_latest(registry)
    return generate_latest(registry) + generate_latest(REGISTRY)


async def render(store: Store) -> tuple[bytes, str]:
    """The body and content type of ``/metrics``. With Redis unavailable the
    state gauges are left out (``segments_redis_up`` says so) and the rest is
    served: the error counters matter most then."""
    up = GaugeMetricFamily(
        "segments_redis_up", "1 when this scrape could read the state from Redis, else 0"
    )
    try:
        state = await _state(store)
        up.add_metric([], 1)
    except REDIS_CLIENT_ERRORS as exc:
        redis_error(exc)
        state = b""
        up.add_metric([], 0)
    registry = CollectorRegistry()
    registry.register(_Families([up]))
    return generate_latest(registry) + state + recorded(), CONTENT_TYPE_LATEST
