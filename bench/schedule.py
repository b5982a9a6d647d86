"""The order of the wrk runs, and the ratio of each run to its ceiling.

Every scenario run sits between two runs of ``ceiling`` (the constant JSON
endpoint): ``ceiling A ceiling B ceiling ... `` repeated, so slow drift of the
machine (thermal, noisy neighbours, a growing data set) touches a scenario and
its reference alike. A run's ratio is its throughput over the mean of the two
ceiling runs around it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bench.results import RunRecord, ScenarioSummary

CEILING = "ceiling"


@dataclass(frozen=True, slots=True)
class Slot:
    index: int
    scenario: str
    repeat: int


def plan(scenarios: Sequence[str], repeats: int = 1) -> list[Slot]:
    """``ceiling, s1, ceiling, s2, ..., ceiling``, the whole list ``repeats`` times
    (a ceiling run closing one round opens the next)."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    names = [s for s in scenarios if s != CEILING]
    order: list[tuple[str, int]] = [(CEILING, 0)]
    ceiling_runs = 1
    for r in range(repeats):
        for name in names:
            order.append((name, r))
            order.append((CEILING, ceiling_runs))
            ceiling_runs += 1
    return [Slot(i, name, rep) for i, (name, rep) in enumerate(order)]


def neighbour_ceilings(
    scenarios: Sequence[str], rps: Sequence[float | None], i: int
) -> list[float]:
    """Throughput of the nearest successful ceiling run on each side of run ``i``."""
    found: list[float] = []
    for step in (-1, 1):
        j = i + step
        while 0 <= j < len(scenarios):
            value = rps[j]
            if scenarios[j] == CEILING and value is not None:
                found.append(value)
                break
            j += step
    return found


def ratios(scenarios: Sequence[str], rps: Sequence[float | None]) -> list[float | None]:
    """Each non-ceiling run's throughput over the mean of its neighbour ceilings.

    ``None`` for ceiling runs, failed runs (rps None) and runs with no
    ceiling on either side.
    """
    if len(scenarios) != len(rps):
        raise ValueError("scenarios and rps differ in length")
    out: list[float | None] = []
    for i, (name, value) in enumerate(zip(scenarios, rps, strict=True)):
        ceilings = neighbour_ceilings(scenarios, rps, i)
        if name == CEILING or value is None or not ceilings:
            out.append(None)
        else:
            reference = statistics.fmean(ceilings)
            out.append(value / reference if reference > 0 else None)
    return out


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def summarize(
    runs: Sequence[RunRecord], items_per_request: dict[str, int] | None = None
) -> list[ScenarioSummary]:
    """One summary per scenario, in order of first appearance: medians over repeats."""
    items = items_per_request or {}
    by_name: dict[str, list[RunRecord]] = {}
    for run in runs:
        by_name.setdefault(run.scenario, []).append(run)
    summaries = []
    for name, group in by_name.items():
        ratio_values = [r.ratio_to_ceiling for r in group if r.ratio_to_ceiling is not None]
        lags = [r.archiver_lag_max_s for r in group if r.archiver_lag_max_s is not None]
        keys = sorted({k for r in group for k in r.latency_ms})
        cpu_keys = sorted({k for r in group for k in r.cpu_percent})
        summaries.append(
            ScenarioSummary(
                scenario=name,
                runs=len(group),
                rps=_median([r.rps for r in group]),
                ratio_to_ceiling=_median(ratio_values) if ratio_values else None,
                latency_ms={
                    k: _median([r.latency_ms[k] for r in group if k in r.latency_ms]) for k in keys
                },
                errors=sum(r.errors.total for r in group),
                cpu_percent={
                    k: statistics.fmean([r.cpu_percent.get(k, 0.0) for r in group])
                    for k in cpu_keys
                },
                archiver_lag_max_s=max(lags) if lags else None,
                items_per_request=items.get(name, 1),
            )
        )
    return summaries


def relative(summaries: Sequence[ScenarioSummary], name: str, reference: str) -> float | None:
    """Throughput of ``name`` relative to ``reference``, through their ceiling ratios
    when both have one (drift cancels), else through their raw medians."""
    found = {s.scenario: s for s in summaries}
    a, b = found.get(name), found.get(reference)
    if a is None or b is None:
        return None
    if a.ratio_to_ceiling is not None and b.ratio_to_ceiling:
        return a.ratio_to_ceiling / b.ratio_to_ceiling
    return a.rps / b.rps if b.rps > 0 else None
