"""Streaming rate of the monthly CSV report, and the API's memory meanwhile.

Asks for this month's report link, downloads the CSV as it streams, counts
rows (lines after the header) and bytes, and samples the resident memory of
the API processes every ``RSS_EVERY_S``: a streamed report keeps it flat,
one built in memory grows with the report.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from bench.cpu import Lister, rss_bytes
from bench.httpclient import Connection, Target
from bench.results import CsvResult

RSS_EVERY_S = 0.05
REPORT_TIMEOUT_S = 300.0
MB = 1024 * 1024


def this_month() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m")


def link_path(url: str) -> str:
    """Path and query of a report link (the bench fetches it from its own target)."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


async def _sample_rss(api: Lister, stop: asyncio.Event, out: list[int]) -> None:
    while not stop.is_set():
        out.append(await asyncio.to_thread(rss_bytes, api))
        await asyncio.sleep(RSS_EVERY_S)


async def measure(
    target: Target,
    token: str | None,
    api: Lister | None,
    log: Callable[[str], None],
    period: str | None = None,
) -> CsvResult:
    period = period or this_month()
    conn = Connection(target, token)
    try:
        resp = await conn.request("GET", f"/api/v1/history/report?period={period}")
        body = resp.json() if resp.status == 200 else None
        if not isinstance(body, dict) or "url" not in body:
            raise RuntimeError(f"report link: HTTP {resp.status}: {resp.body[:300]!r}")
        path = link_path(str(body["url"]))
        rss: list[int] = []
        stop = asyncio.Event()
        before = await asyncio.to_thread(rss_bytes, api) if api else None
        sampler = asyncio.create_task(_sample_rss(api, stop, rss)) if api else None
        started = time.perf_counter()
        first_byte: float | None = None
        newlines = 0
        size = 0
        try:
            status, _, chunks = await conn.stream(path)
            if status != 200:
                raise RuntimeError(f"report download: HTTP {status}")
            async with asyncio.timeout(REPORT_TIMEOUT_S):
                async for chunk in chunks:
                    if first_byte is None:
                        first_byte = time.perf_counter() - started
                    newlines += chunk.count(b"\n")
                    size += len(chunk)
        finally:
            stop.set()
            if sampler is not None:
                await sampler
        seconds = time.perf_counter() - started
    finally:
        await conn.close()
    rows = max(0, newlines - 1)
    peak = max(rss) if rss else None
    first = first_byte if first_byte is not None else seconds
    streaming = seconds - first
    result = CsvResult(
        rows=rows,
        bytes=size,
        seconds=seconds,
        first_byte_s=first,
        rows_per_s=rows / seconds if seconds > 0 else 0.0,
        streaming_rows_per_s=rows / streaming if streaming > 0 else 0.0,
        api_rss_before_mb=before / MB if before is not None else None,
        api_rss_max_mb=peak / MB if peak is not None else None,
        api_rss_growth_mb=(peak - before) / MB if peak is not None and before is not None else None,
    )
    log(f"CSV {period}: {rows:,} rows, {size / MB:.1f} MiB in {seconds:.2f} s")
    return result
