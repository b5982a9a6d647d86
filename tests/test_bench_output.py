"""The bench report: JSON file, PNG chart, terminal table and target checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import table
from bench.results import (
    ArchiverResult,
    CsvResult,
    HotPathResult,
    MemoryResult,
    PercentPhase,
    PercentResult,
    Report,
    RunRecord,
    read_json,
    write_json,
)
from bench.schedule import summarize
from bench.targets import checks
from bench.wrk import Errors


def _run(name: str, rps: float, ratio: float | None, p99: float) -> RunRecord:
    return RunRecord(
        index=0,
        scenario=name,
        repeat=0,
        rps=rps,
        requests=int(rps * 10),
        duration_s=10.0,
        errors=Errors(),
        latency_ms={"50": 0.5, "90": 1.0, "99": p99, "99.9": p99 * 2, "max": 20.0},
        cpu_percent={"api": 150.0, "wrk": 30.0, "redis": 15.0},
        ratio_to_ceiling=ratio,
        archiver_lag_max_s=0.3 if name == "change" else None,
    )


def _percent(known: int, create_s: float, longest: float | None) -> PercentResult:
    def phase(name: str, seconds: float, members: int | None) -> PercentPhase:
        return PercentPhase(
            name=name,
            seconds=seconds,
            members=members,
            script_calls_over_1ms=0 if longest is None else 3,
            longest_script_ms=longest,
            longest_script=None if longest is None else "rolloutSegment",
            probe_lookups=900,
            probe_lookup_p99_ms=4.0,
            probe_lookup_max_ms=12.0,
            probe_ping_max_ms=9.0,
            redis_bytes=50_000_000,
        )

    return PercentResult(
        known_users=known,
        phases=[phase("create 10%", create_s, known // 10), phase("delete 10%", 2.0, None)],
    )


@pytest.fixture
def report() -> Report:
    runs = [
        _run("ceiling", 10_000.0, None, 3.0),
        _run("lookup", 9_000.0, 0.9, 4.0),
        _run("lookup-batch", 900.0, 0.09, 9.0),
        _run("change", 4_000.0, 0.4, 8.0),
    ]
    return Report(
        started_at="2026-01-01T00:00:00+00:00",
        machine={"cpus": 2},
        settings={"connections": 64, "users": 100_000},
        runs=runs,
        scenarios=summarize(runs, {"lookup-batch": 100}),
        memory=MemoryResult(
            used_empty=900_000,
            used_before=1_000_000,
            used_after=71_000_000,
            stream_bytes_before=0,
            stream_bytes_after=1000,
            memberships=500_000,
            users=100_000,
            bytes_per_membership=140.0,
            data_set_bytes_per_membership=140.2,
        ),
        archiver=ArchiverResult(events=500_000, seconds=5.0, events_per_s=100_000.0),
        percent=_percent(1_000_000, 4.0, 20.0),
        csv=CsvResult(
            rows=600_000,
            bytes=30_000_000,
            seconds=2.0,
            first_byte_s=0.1,
            rows_per_s=300_000.0,
            streaming_rows_per_s=315_000.0,
            api_rss_before_mb=200.0,
            api_rss_max_mb=204.0,
            api_rss_growth_mb=4.0,
        ),
        hotpath=HotPathResult(calls=1000, p50_us=80.0, p99_us=150.0, p999_us=400.0, max_us=900.0),
    )


def test_json_round_trip(report: Report, tmp_path: Path) -> None:
    path = write_json(report, tmp_path / "run" / "bench.json")
    assert read_json(path) == report
    assert b'"ratio_to_ceiling"' in path.read_bytes()


def test_png_is_written(report: Report, tmp_path: Path) -> None:
    from bench.chart import write_png

    path = write_png(report, tmp_path / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checks_against_the_targets(report: Report) -> None:
    found = {c.name: c for c in checks(report)}
    assert found["lookup / ceiling"].ok is True
    assert found["lookup p99 (ms)"].ok is True
    assert found["change / lookup"].ok is False  # 0.4 / 0.9
    assert found["change / lookup"].measured == pytest.approx(0.4 / 0.9)
    assert found["archiver events/s"].ok is True
    assert found["archiver lag under change (s)"].ok is True
    assert found["10% segment creation (s)"].ok is True
    assert found["longest script call (ms)"].ok is True
    assert found["CSV rows/s"].ok is True
    assert found["CSV API memory growth (MiB)"].ok is True
    # 100,000 users: measured, but the target is set for 1M users x 5
    assert found["Redis bytes per membership"].ok is None
    assert "100,000" in found["Redis bytes per membership"].note


def test_checks_not_measured_or_off_size(report: Report) -> None:
    report.settings["connections"] = 32
    report.percent = _percent(50_000, 0.5, None)
    report.csv = None
    report.archiver = None
    found = {c.name: c for c in checks(report)}
    assert found["lookup p99 (ms)"].ok is None
    assert found["10% segment creation (s)"].ok is None
    assert found["longest script call (ms)"].ok is True  # none over 1 ms
    assert found["longest script call (ms)"].measured is None
    assert found["CSV rows/s"].ok is None
    assert found["archiver events/s"].ok is None


def test_terminal_and_markdown_tables(report: Report) -> None:
    report.checks = checks(report)
    text = table.tables(report)
    for name in ("ceiling", "lookup", "90,000 users/s", "bytes/membership", "MISS", "delete 10%"):
        assert name in text
    assert "rolloutSegment" in text and "p99 150 us" in text
    md = table.tables(report, markdown=True)
    scenario_lines = md.split("\n\n")[0].splitlines()
    assert scenario_lines[0].startswith("| scenario")
    assert scenario_lines[1].startswith("|:-") and scenario_lines[1].endswith(":|")
    assert len({line.count("|") for line in scenario_lines}) == 1


def test_show_prints_a_saved_report(
    report: Report, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import cli

    path = write_json(report, tmp_path / "bench.json")
    assert cli.main(["--show", str(path)]) == 0
    assert "| lookup-batch" in capsys.readouterr().out
