"""The report as tables: plain text for the terminal, GitHub Markdown for the docs
(``segments bench --show bench.json``). ``tabulate`` renders both from the same
rows, numbers right-aligned (the Markdown with its ``--:`` alignment row)."""

from __future__ import annotations

from tabulate import tabulate

from bench.results import PERCENTILES, Report

CPU_GROUPS = ("api", "wrk", "redis", "archiver", "postgres", "other")
"""CPU columns; "other" is every process outside the bench's: noise when high."""


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def _render(headers: list[str], rows: list[list[str]], markdown: bool, align: str = "") -> str:
    """``align``: "l" or "r" per column; by default the first left, the others right."""
    sides = {"l": "left", "r": "right"}
    colalign = [sides[a] for a in align or "l" + "r" * (len(headers) - 1)]
    fmt = "pipe" if markdown else "simple"
    return tabulate(rows, headers, tablefmt=fmt, colalign=colalign, disable_numparse=True)


def scenario_table(report: Report, markdown: bool = False) -> str:
    headers = [
        "scenario",
        "req/s",
        "x ceiling",
        *(f"p{p} ms" for p in PERCENTILES),
        "errors",
        *(f"cpu {g} %" for g in CPU_GROUPS),
    ]
    rows = []
    for s in report.scenarios:
        rps = _fmt(s.rps, 0)
        if s.items_per_request > 1:
            rps += f" ({s.rps * s.items_per_request:,.0f} users/s)"
        rows.append(
            [
                s.scenario,
                rps,
                _fmt(s.ratio_to_ceiling),
                *(_fmt(s.latency_ms.get(p)) for p in PERCENTILES),
                str(s.errors),
                *(_fmt(s.cpu_percent.get(g), 0) for g in CPU_GROUPS),
            ]
        )
    return _render(headers, rows, markdown)


def measurement_rows(report: Report) -> list[list[str]]:
    rows: list[list[str]] = []
    if s := report.seed:
        rows.append(
            [
                "seeding",
                f"{s.memberships:,} memberships ({s.with_deadline:,} with deadline) of "
                f"{s.users:,} users in {s.memberships_s:.1f} s ({s.requests_per_s:,.0f} changes/s)",
            ]
        )
    if m := report.memory:
        rows.append(
            [
                "Redis memory",
                f"{m.data_set_bytes_per_membership:.1f} bytes/membership for the whole data set "
                f"({(m.used_after - m.used_empty) / 2**20:.1f} MiB: {m.users:,} users, "
                f"{m.memberships:,} memberships); memberships alone {m.bytes_per_membership:.1f}",
            ]
        )
    if a := report.archiver:
        rows.append(
            ["archiver", f"{a.events_per_s:,.0f} events/s ({a.events:,} rows, {a.seconds:.1f} s)"]
        )
    for p in report.percent.phases if report.percent else []:
        members = f"{p.members:,} members, " if p.members is not None else ""
        rows.append(
            [
                p.name,
                f"{members}{p.seconds:.2f} s; longest script {_fmt(p.longest_script_ms)} ms "
                f"({p.longest_script or '-'}, {p.script_calls_over_1ms} calls over 1 ms); "
                f"probe lookup max {_fmt(p.probe_lookup_max_ms)} ms "
                f"(p99 {_fmt(p.probe_lookup_p99_ms)}), PING max {_fmt(p.probe_ping_max_ms)} ms",
            ]
        )
    if c := report.csv:
        rows.append(
            [
                "CSV report",
                f"{c.rows_per_s:,.0f} rows/s ({c.rows:,} rows, {c.bytes / 2**20:.1f} MiB, "
                f"{c.seconds:.2f} s; first byte after {c.first_byte_s:.2f} s, then "
                f"{c.streaming_rows_per_s:,.0f} rows/s); "
                f"API RSS +{_fmt(c.api_rss_growth_mb, 1)} MiB",
            ]
        )
    if h := report.hotpath:
        rows.append(
            [
                "hot path in-process",
                f"lookup p50 {h.p50_us:.0f} us, p99 {h.p99_us:.0f} us, p99.9 {h.p999_us:.0f} us, "
                f"max {h.max_us:,.0f} us ({h.calls:,} calls)",
            ]
        )
    return rows


def checks_table(report: Report, markdown: bool = False) -> str:
    marks = {True: "ok", False: "MISS", None: "n/a"}
    rows = [[c.name, _fmt(c.measured), c.target, marks[c.ok], c.note] for c in report.checks]
    return _render(["target", "measured", "goal", "", "note"], rows, markdown, "lrlll")


def tables(report: Report, markdown: bool = False) -> str:
    parts = [scenario_table(report, markdown)]
    if rows := measurement_rows(report):
        parts.append(_render(["measurement", "result"], rows, markdown, "ll"))
    if report.checks:
        parts.append(checks_table(report, markdown))
    return "\n\n".join(parts)
