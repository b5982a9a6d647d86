"""Interleaving of the runs with the ceiling, ratios, and summaries."""

from __future__ import annotations

import pytest

from bench.results import RunRecord
from bench.schedule import CEILING, plan, ratios, relative, summarize
from bench.wrk import Errors


def test_plan_puts_a_ceiling_run_between_every_two_runs() -> None:
    names = [s.scenario for s in plan(["a", "b"], repeats=2)]
    assert names == [CEILING, "a", CEILING, "b", CEILING, "a", CEILING, "b", CEILING]


def test_plan_numbers_slots_and_repeats() -> None:
    slots = plan(["a", CEILING, "b"], repeats=2)
    assert [s.index for s in slots] == list(range(9))
    assert [s.repeat for s in slots if s.scenario == "a"] == [0, 1]
    assert [s.repeat for s in slots if s.scenario == CEILING] == [0, 1, 2, 3, 4]


def test_plan_needs_a_repeat() -> None:
    with pytest.raises(ValueError):
        plan(["a"], repeats=0)


def test_ratio_is_over_the_mean_of_the_ceilings_around() -> None:
    names = [CEILING, "a", CEILING, "b", CEILING]
    rps = [1000.0, 900.0, 800.0, 400.0, 800.0]
    assert ratios(names, rps) == [None, pytest.approx(1.0), None, pytest.approx(0.5), None]


def test_ratio_skips_a_failed_ceiling_for_the_next_one_out() -> None:
    names = [CEILING, "a", CEILING, "b", CEILING]
    rps = [1000.0, 500.0, None, 500.0, 1000.0]
    assert ratios(names, rps) == [None, pytest.approx(0.5), None, pytest.approx(0.5), None]


def test_ratio_with_one_side_only_and_failed_runs() -> None:
    assert ratios(["a", CEILING, "b"], [300.0, 600.0, None]) == [pytest.approx(0.5), None, None]
    assert ratios(["a"], [1.0]) == [None]


def test_ratio_lengths_must_match() -> None:
    with pytest.raises(ValueError):
        ratios([CEILING], [])


def _run(name: str, rps: float, ratio: float | None, p99: float, repeat: int = 0) -> RunRecord:
    return RunRecord(
        index=0,
        scenario=name,
        repeat=repeat,
        rps=rps,
        requests=int(rps * 10),
        duration_s=10.0,
        errors=Errors(status=1),
        latency_ms={"50": p99 / 4, "99": p99},
        cpu_percent={"api": rps / 100},
        ratio_to_ceiling=ratio,
        archiver_lag_max_s=0.1 * repeat,
    )


def test_summary_takes_medians_and_sums_errors() -> None:
    runs = [
        _run(CEILING, 1000.0, None, 2.0),
        _run("a", 800.0, 0.8, 4.0, 0),
        _run("a", 900.0, 0.9, 6.0, 1),
        _run("a", 700.0, 0.7, 5.0, 2),
    ]
    by_name = {s.scenario: s for s in summarize(runs, {"a": 100})}
    a = by_name["a"]
    assert (a.runs, a.rps, a.ratio_to_ceiling) == (3, 800.0, 0.8)
    assert a.latency_ms["99"] == 5.0
    assert a.errors == 3
    assert a.cpu_percent["api"] == pytest.approx(8.0)
    assert a.archiver_lag_max_s == pytest.approx(0.2)
    assert a.items_per_request == 100
    assert by_name[CEILING].ratio_to_ceiling is None
    assert [s.scenario for s in summarize(runs)] == [CEILING, "a"]


def test_relative_goes_through_the_ceiling_ratios() -> None:
    summaries = summarize([_run("lookup", 900.0, 0.9, 1.0), _run("change", 300.0, 0.6, 1.0)])
    assert relative(summaries, "change", "lookup") == pytest.approx(0.6 / 0.9)
    assert relative(summaries, "change", "missing") is None
    raw = summarize([_run("lookup", 900.0, None, 1.0), _run("change", 300.0, None, 1.0)])
    assert relative(raw, "change", "lookup") == pytest.approx(1 / 3)
