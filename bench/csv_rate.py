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

import httpx

from bench.context import expect
from bench.cpu import Lister, rss_bytes
from bench.results import CsvResult

RSS_EVERY_S = 0.05
REPORT_TIMEOUT_S = 300.0
MB = 1024 * 1024


async def _sample_rss(api: Lister, stop: asyncio.Event, out: list[int]) -> None:
    while not stop.is_set():
        out.append(await asyncio.to_thread(rss_bytes, api))
        await asyncio.sleep(RSS_EVERY_S)


async def measure(
    http: httpx.AsyncClient, api: Lister | None, log: Callable[[str], None]
) -> CsvResult:
    period = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    resp = expect(await http.get(f"/api/v1/history/report?period={period}"), "report link", 200)
    link = urlsplit(str(resp.json()["url"]))  # fetched from the bench's own target
    rss: list[int] = []
    stop = asyncio.Event()
    before = await asyncio.to_thread(rss_bytes, api) if api else None
    sampler = asyncio.create_task(_sample_rss(api, stop, rss)) if api else None
    started = time.perf_counter()
    first_byte: float | None = None
    newlines = size = 0
    try:
        async with (
            asyncio.timeout(REPORT_TIMEOUT_S),
            http.stream("GET", f"{link.path}?{link.query}") as download,
        ):
            if download.status_code != 200:
                raise RuntimeError(f"report download: HTTP {download.status_code}")
            async for chunk in download.aiter_bytes():
                first_byte = first_byte or time.perf_counter() - started
                newlines += chunk.count(b"\n")
                size += len(chunk)
    finally:
        stop.set()
        if sampler is not None:
            await sampler
    seconds = time.perf_counter() - started
    rows = max(0, newlines - 1)
    peak = max(rss) if rss else None
    first = first_byte or seconds
    log(f"CSV {period}: {rows:,} rows, {size / MB:.1f} MiB in {seconds:.2f} s")
    return CsvResult(
        rows=rows,
        bytes=size,
        seconds=seconds,
        first_byte_s=first,
        rows_per_s=rows / seconds if seconds > 0 else 0.0,
        streaming_rows_per_s=rows / (seconds - first) if seconds > first else 0.0,
        api_rss_before_mb=before / MB if before is not None else None,
        api_rss_max_mb=peak / MB if peak is not None else None,
        api_rss_growth_mb=(peak - before) / MB if peak is not None and before is not None else None,
    )
