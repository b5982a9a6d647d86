"""The speed targets of SPEC §5, checked against one bench report."""

from __future__ import annotations

import operator
from collections.abc import Callable

from bench.results import Check, Report
from bench.schedule import relative

TARGET_CONNECTIONS = 64
"""§5 sets the lookup p99 at 64 connections."""
PERCENT_USERS = 1_000_000
MEMORY_USERS = 1_000_000
MEMORY_PER_USER = 5
CSV_RSS_GROWTH_MB = 32.0
""""Flat memory": the API's RSS grows by less than this while streaming the report."""

Compare = Callable[[float, float], bool]
AT_LEAST: Compare = operator.ge
BELOW: Compare = operator.lt
AT_MOST: Compare = operator.le


def _row(
    name: str, measured: float | None, compare: Compare, goal: float, text: str, off_size: str = ""
) -> Check:
    """``off_size``: why this run's figure is not held to the target (another size)."""
    ok = None if measured is None or off_size else compare(measured, goal)
    return Check(name=name, measured=measured, target=text, ok=ok, note=off_size)


def checks(report: Report) -> list[Check]:
    by_name = {s.scenario: s for s in report.scenarios}
    lookup, change = by_name.get("lookup"), by_name.get("change")
    connections = report.settings.get("connections")
    pct = report.percent.phase("create 10%") if report.percent else None
    known = report.percent.known_users if report.percent else 0
    csv, mem = report.csv, report.memory
    full_memory = (
        mem is not None
        and mem.users >= MEMORY_USERS
        and (mem.memberships >= MEMORY_USERS * MEMORY_PER_USER)
    )
    script = _row(
        "longest script call (ms)",
        pct.longest_script_ms if pct else None,
        AT_MOST,
        50.0,
        "<= 50, creating the 10%",
    )
    if pct and pct.longest_script_ms is None and pct.script_calls_over_1ms == 0:
        script.ok, script.note = True, "no call over the slow log's 1 ms"
    return [
        _row("lookup / ceiling", lookup and lookup.ratio_to_ceiling, AT_LEAST, 0.85, ">= 0.85"),
        _row(
            "lookup p99 (ms)",
            lookup.latency_ms.get("99") if lookup else None,
            BELOW,
            5.0,
            f"< 5 at {TARGET_CONNECTIONS} connections",
            "" if connections == TARGET_CONNECTIONS else f"measured at {connections} connections",
        ),
        _row(
            "change / lookup",
            relative(report.scenarios, "change", "lookup"),
            AT_LEAST,
            0.5,
            ">= 0.50",
        ),
        _row(
            "archiver events/s",
            report.archiver.events_per_s if report.archiver else None,
            AT_LEAST,
            50_000,
            ">= 50,000",
        ),
        _row(
            "archiver lag under change (s)",
            change.archiver_lag_max_s if change else None,
            BELOW,
            1.0,
            "< 1",
        ),
        _row(
            "10% segment creation (s)",
            pct.seconds if pct else None,
            BELOW,
            10.0,
            f"< 10 over {PERCENT_USERS:,} users",
            "" if known >= PERCENT_USERS else f"over {known:,} users only",
        ),
        script,
        _row("CSV rows/s", csv.rows_per_s if csv else None, AT_LEAST, 200_000, ">= 200,000"),
        _row(
            "CSV API memory growth (MiB)",
            csv.api_rss_growth_mb if csv else None,
            BELOW,
            CSV_RSS_GROWTH_MB,
            f"< {CSV_RSS_GROWTH_MB:g}",
        ),
        _row(
            "Redis bytes per membership",
            mem.data_set_bytes_per_membership if mem else None,
            AT_MOST,
            150.0,
            "<= 150 at 1M users x 5",
            "" if mem is None or full_memory else f"measured at {mem.users:,} users",
        ),
    ]
