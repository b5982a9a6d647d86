"""The report as plain-text tables for the terminal (and Markdown for docs)."""

from __future__ import annotations

from collections.abc import Sequence

from bench.results import PERCENTILES, Report

CPU_GROUPS = ("api", "wrk", "redis", "archiver", "postgres", "other")
"""CPU columns; "other" is every process outside the bench's: noise when high."""


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def render(
    headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False, left: int = 1
) -> str:
    """Columns padded to their widest cell; the first ``left`` left-aligned, the rest right."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            str(c).ljust(w) if i < left else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return ("| " + " | ".join(padded) + " |") if markdown else "  ".join(padded)

    if markdown:
        rule = (
            "|"
            + "|".join(
                ("-" * (w + 1) + ":") if i >= left else (":" + "-" * (w + 1))
                for i, w in enumerate(widths)
            )
            + "|"
        )
    else:
        rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


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
    return render(headers, rows, markdown)


def measurement_rows(report: Report) -> list[list[str]]:
    rows: list[list[str]] = []
    if report.seed:
        s = report.seed
        rows.append(
            [
                "seeding",
                f"{s.memberships:,} memberships ({s.with_deadline:,} with deadline) "
                f"of {s.users:,} users in {s.memberships_s:.1f} s "
                f"({s.requests_per_s:,.0f} changes/s)",
            ]
        )
    if report.memory:
        m = report.memory
        rows.append(
            [
                "Redis memory",
                f"{m.data_set_bytes_per_membership:.1f} bytes/membership for the whole data set "
                f"({(m.used_after - m.used_empty) / 2**20:.1f} MiB: {m.users:,} users, "
                f"{m.memberships:,} memberships); memberships alone "
                f"{m.bytes_per_membership:.1f}",
            ]
        )
    for a in report.archiver:
        rows.append(
            ["archiver", f"{a.events_per_s:,.0f} events/s ({a.events:,} rows, {a.seconds:.1f} s)"]
        )
    if report.percent:
        p = report.percent
        rows.append(
            [
                "10% segment",
                f"{p.members:,} members of {p.known_users:,} known users in {p.create_s:.2f} s; "
                f"longest script {_fmt(p.longest_script_ms)} ms; "
                f"probe lookup max {_fmt(p.probe_lookup_max_ms)} ms "
                f"(p99 {_fmt(p.probe_lookup_p99_ms)}), PING max {_fmt(p.probe_ping_max_ms)} ms",
            ]
        )
    if report.csv:
        c = report.csv
        rows.append(
            [
                "CSV report",
                f"{c.rows_per_s:,.0f} rows/s ({c.rows:,} rows, {c.bytes / 2**20:.1f} MiB, "
                f"{c.seconds:.2f} s; first byte after {c.first_byte_s:.2f} s, then "
                f"{c.streaming_rows_per_s:,.0f} rows/s); "
                f"API RSS +{_fmt(c.api_rss_growth_mb, 1)} MiB",
            ]
        )
    return rows


def checks_table(report: Report, markdown: bool = False) -> str:
    marks = {True: "ok", False: "MISS", None: "n/a"}
    rows = [[c.name, _fmt(c.measured), c.target, marks[c.ok], c.note] for c in report.checks]
    return render(["target", "measured", "goal", "", "note"], rows, markdown, left=1)


def full(report: Report) -> str:
    parts = [scenario_table(report)]
    rows = measurement_rows(report)
    if rows:
        parts.append(render(["measurement", "result"], rows, left=2))
    if report.checks:
        parts.append(checks_table(report))
    return "\n\n".join(parts)
