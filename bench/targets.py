"""The speed targets of SPEC §5, checked against one bench report."""

from __future__ import annotations

from bench.results import Check, Report
from bench.schedule import relative

LOOKUP_VS_CEILING = 0.85
LOOKUP_P99_MS = 5.0
TARGET_CONNECTIONS = 64
CHANGE_VS_LOOKUP = 0.50
ARCHIVER_EVENTS_PER_S = 50_000
ARCHIVER_LAG_S = 1.0
PERCENT_USERS = 1_000_000
PERCENT_CREATE_S = 10.0
SCRIPT_MS = 50.0
CSV_ROWS_PER_S = 200_000
CSV_RSS_GROWTH_MB = 32.0
""""Flat memory": the API's RSS grows by less than this while streaming the report."""
MEMORY_USERS = 1_000_000
MEMORY_PER_USER = 5
BYTES_PER_MEMBERSHIP = 150.0


def _check(
    name: str, measured: float | None, target: str, ok: bool | None, note: str = ""
) -> Check:
    return Check(
        name=name, measured=measured, target=target, ok=None if measured is None else ok, note=note
    )


def checks(report: Report) -> list[Check]:
    by_name = {s.scenario: s for s in report.scenarios}
    out: list[Check] = []
    lookup = by_name.get("lookup")
    ratio = lookup.ratio_to_ceiling if lookup else None
    out.append(
        _check(
            "lookup / ceiling",
            ratio,
            f">= {LOOKUP_VS_CEILING:.2f}",
            ratio is not None and ratio >= LOOKUP_VS_CEILING,
        )
    )
    p99 = lookup.latency_ms.get("99") if lookup else None
    connections = report.settings.get("connections")
    out.append(
        _check(
            "lookup p99 (ms)",
            p99,
            f"< {LOOKUP_P99_MS:g} at {TARGET_CONNECTIONS} connections",
            p99 is not None and p99 < LOOKUP_P99_MS if connections == TARGET_CONNECTIONS else None,
            "" if connections == TARGET_CONNECTIONS else f"measured at {connections} connections",
        )
    )
    change = relative(report.scenarios, "change", "lookup")
    out.append(
        _check(
            "change / lookup",
            change,
            f">= {CHANGE_VS_LOOKUP:.2f}",
            change is not None and change >= CHANGE_VS_LOOKUP,
        )
    )
    drain = max((a.events_per_s for a in report.archiver), default=None)
    out.append(
        _check(
            "archiver events/s",
            drain,
            f">= {ARCHIVER_EVENTS_PER_S:,}",
            drain is not None and drain >= ARCHIVER_EVENTS_PER_S,
        )
    )
    lag = by_name["change"].archiver_lag_max_s if "change" in by_name else None
    out.append(
        _check(
            "archiver lag under change (s)",
            lag,
            f"< {ARCHIVER_LAG_S:g}",
            lag is not None and lag < ARCHIVER_LAG_S,
        )
    )
    pct = report.percent
    full_size = pct is not None and pct.known_users >= PERCENT_USERS
    size_note = "" if pct is None or full_size else f"over {pct.known_users:,} users only"
    out.append(
        _check(
            "10% segment creation (s)",
            pct.create_s if pct else None,
            f"< {PERCENT_CREATE_S:g} over {PERCENT_USERS:,} users",
            (pct.create_s < PERCENT_CREATE_S if full_size else None) if pct else None,
            size_note,
        )
    )
    longest = pct.longest_script_ms if pct else None
    checked = pct is not None and pct.slowlog_checked
    out.append(
        Check(
            name="longest script call (ms)",
            measured=longest,
            target=f"<= {SCRIPT_MS:g}",
            ok=(longest <= SCRIPT_MS) if longest is not None else (True if checked else None),
            note="no call over the 1 ms slow-log threshold" if checked and longest is None else "",
        )
    )
    csv = report.csv
    out.append(
        _check(
            "CSV rows/s",
            csv.rows_per_s if csv else None,
            f">= {CSV_ROWS_PER_S:,}",
            csv is not None and csv.rows_per_s >= CSV_ROWS_PER_S,
            f"{csv.rows:,} rows" if csv else "",
        )
    )
    growth = csv.api_rss_growth_mb if csv else None
    out.append(
        _check(
            "CSV API memory growth (MiB)",
            growth,
            f"< {CSV_RSS_GROWTH_MB:g}",
            growth is not None and growth < CSV_RSS_GROWTH_MB,
        )
    )
    mem = report.memory
    full = (
        mem is not None
        and mem.users >= MEMORY_USERS
        and mem.memberships >= MEMORY_USERS * MEMORY_PER_USER
    )
    out.append(
        _check(
            "Redis bytes per membership",
            mem.data_set_bytes_per_membership if mem else None,
            f"<= {BYTES_PER_MEMBERSHIP:g} at 1M users x 5",
            (mem.data_set_bytes_per_membership <= BYTES_PER_MEMBERSHIP if full else None)
            if mem
            else None,
            "" if mem is None or full else f"measured at {mem.users:,} users",
        )
    )
    return out
