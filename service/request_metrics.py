"""The per-request metrics, shared by every worker process at a microsecond a request.

Recorded on every request, the hot path included: request count by method,
route template and status, request duration by method and route (a
histogram), Lua script calls by script. prometheus_client's own classes
take a lock, look the process id up and pack bytes on every change (about
4 us a request for these); here a change is one store of a double:

- each process owns two files in the metrics folder
  (``segments_core.metrics_dir``): ``segments-requests-<pid>.values``, a
  fixed array of :data:`SLOTS` doubles mapped into memory, and
  ``segments-requests-<pid>.series``, one JSON line per series naming its
  labels and its first slot, appended when a series is first met;
- a scrape, in whichever process, reads every pair of files and adds them
  up (:class:`RequestsCollector`): the same totals from every worker, up
  to the request being answered.

Only the event loop's thread records (no lock); a reader may see a series
line before its first count, never a count without its line. Label values
are bounded by the caller (route templates, not paths), so the slots do not
run out; if they did, new series would be dropped, said once in the log.
"""

from __future__ import annotations

import bisect
import glob
import json
import logging
import mmap
import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

SLOTS = 16_384
"""Doubles per process (128 KiB): room for thousands of label sets."""
DURATION_BUCKETS = (
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Seconds; lookups take well under a millisecond of server time, reports seconds."""
_SPAN = len(DURATION_BUCKETS) + 2
"""Slots of one duration series: a count per bucket, the +Inf bucket, the sum."""
_SUM = _SPAN - 1
_bucket = bisect.bisect_left

REQUESTS = "segments_http_requests"
DURATION = "segments_http_request_duration_seconds"
SCRIPT_CALLS = "segments_lua_script_calls"
HELP = {
    REQUESTS: "HTTP requests answered, by method, route template and status.",
    DURATION: "Time from a request's arrival to the end of its response, by method and"
    " route template.",
    SCRIPT_CALLS: "Lua script calls, by script.",
}
_PREFIX = "segments-requests-"

log = logging.getLogger("segments.metrics")


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Recorder:
    """This process's per-request numbers, in its two files under ``directory``
    (a folder, or a function that names it), opened at the first record."""

    def __init__(self, directory: str | Callable[[], str]) -> None:
        self.enabled = True
        """False: nothing is recorded (SEGMENTS_REQUEST_METRICS=false, to measure the cost)."""
        self._where = directory
        self._dir: str | None = None
        self._values: memoryview | None = None
        self._routes: dict[tuple[str, str], tuple[int, dict[int, int]]] = {}
        """(method, route) -> (first slot of its durations, status -> slot of its count)."""
        self._scripts: dict[str, int] = {}
        self._next = 0
        self._full = False

    @property
    def directory(self) -> str:
        if self._dir is None:
            self._dir = self._where if isinstance(self._where, str) else self._where()
        return self._dir

    def reset(self) -> None:
        """Forget the files without closing them (a forked child opens its own)."""
        self._dir = self._values = None
        self._routes, self._scripts, self._next, self._full = {}, {}, 0, False

    def _open(self) -> memoryview:
        base = os.path.join(self.directory, f"{_PREFIX}{os.getpid()}")
        with open(base + ".values", "w+b") as values:
            values.truncate(SLOTS * 8)
            self._map = mmap.mmap(values.fileno(), SLOTS * 8)
        self._series = open(base + ".series", "a", encoding="utf-8")  # noqa: SIM115 (kept open)
        self._values = memoryview(self._map).cast("d")
        return self._values

    def _allocate(self, kind: str, labels: list[str], width: int) -> int:
        """The first of ``width`` new slots, announced in the series file; -1 when full."""
        if self._values is None:
            self._open()
        if self._next + width > SLOTS:
            if not self._full:
                self._full = True
                log.error("per-request metrics: all %d slots in use; new series dropped", SLOTS)
            return -1
        slot, self._next = self._next, self._next + width
        self._series.write(json.dumps([kind, labels, slot]) + "\n")
        self._series.flush()
        return slot

    def _route(self, method: str, route: str) -> tuple[int, dict[int, int]] | None:
        # Methods are few (the HTTP parser knows a fixed set); any but these is "OTHER".
        label = method if method in _METHODS else "OTHER"
        base = self._allocate(DURATION, [label, route], _SPAN)
        if base < 0:
            return None
        entry = self._routes[(method, route)] = (base, {})
        return entry

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        """One answered request (``route``: its template, or a fixed label)."""
        if not self.enabled:
            return
        entry = self._routes.get((method, route)) or self._route(method, route)
        if entry is None:
            return
        base, statuses = entry
        slot = statuses.get(status)
        if slot is None:
            label = method if method in _METHODS else "OTHER"
            slot = statuses[status] = self._allocate(REQUESTS, [label, route, str(status)], 1)
        values: Any = self._values
        if slot >= 0:
            values[slot] += 1.0
        # the bucket of the first bound >= seconds (Prometheus's "le"), +Inf last
        values[base + _bucket(DURATION_BUCKETS, seconds)] += 1.0
        values[base + _SUM] += seconds

    def script_calls(self, script: str, calls: int = 1) -> None:
        """``calls`` calls of one Lua script (a pipelined lookup makes many at once)."""
        if not self.enabled:
            return
        slot = self._scripts.get(script)
        if slot is None:
            slot = self._scripts[script] = self._allocate(SCRIPT_CALLS, [script], 1)
        if slot >= 0:
            self._values[slot] += calls  # type: ignore[index]

    def close(self) -> None:
        if self._values is not None:
            self._values.release()
            self._map.close()
            self._series.close()
            self.reset()


def _read(base: str) -> Iterator[tuple[str, tuple[str, ...], list[float]]]:
    """(kind, labels, values) of every series one process wrote."""
    try:
        with open(base + ".series", encoding="utf-8") as f:
            lines = f.read().split("\n")[:-1]  # a line being written has no newline yet
        with open(base + ".values", "rb") as f:
            data = memoryview(f.read()).cast("d")
    except FileNotFoundError:  # removed meanwhile (a new run's folder)
        return
    for line in lines:
        kind, labels, slot = json.loads(line)
        width = _SPAN if kind == DURATION else 1
        yield kind, tuple(labels), list(data[slot : slot + width])


class RequestsCollector(Collector):
    """Every process's per-request numbers in ``directory``, added up, as metric families."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Any]:
        counts: dict[str, dict[tuple[str, ...], float]] = defaultdict(lambda: defaultdict(float))
        durations: dict[tuple[str, ...], list[float]] = {}
        for path in glob.glob(os.path.join(self.directory, f"{_PREFIX}*.series")):
            for kind, labels, values in _read(path.removesuffix(".series")):
                if kind == DURATION:
                    total = durations.setdefault(labels, [0.0] * _SPAN)
                    for i, v in enumerate(values):
                        total[i] += v
                else:
                    counts[kind][labels] += values[0]
        names = ["method", "route", "status"]
        requests = CounterMetricFamily(REQUESTS, HELP[REQUESTS], labels=names)
        for labels, value in sorted(counts[REQUESTS].items()):
            requests.add_metric(list(labels), value)
        yield requests
        histogram = HistogramMetricFamily(DURATION, HELP[DURATION], labels=["method", "route"])
        bounds = [*map(floatToGoString, DURATION_BUCKETS), "+Inf"]
        for labels, values in sorted(durations.items()):
            cumulative, running = [], 0.0
            for bound, n in zip(bounds, values[:-1], strict=True):
                running += n
                cumulative.append((bound, running))
            histogram.add_metric(list(labels), cumulative, values[-1])
        yield histogram
        scripts = CounterMetricFamily(SCRIPT_CALLS, HELP[SCRIPT_CALLS], labels=["script"])
        for labels, value in sorted(counts[SCRIPT_CALLS].items()):
            scripts.add_metric(list(labels), value)
        yield scripts
