"""History reports: periods, signed links, the wait for the archiver, the CSV.

HTTP tests go through the real application (``service.app.create_app``) with
tokens configured: asking for a link takes a read token, and the link itself
is then downloaded with no credentials at all (its signature is enough).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import psutil
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from service.app import create_app
from service.reports import (
    BadReportRequest,
    LinkRejected,
    ReportQuery,
    link_params,
    sign,
    verify,
)
from service.settings import Settings, Tokens
from tests.support.history import (
    Event,
    add_events,
    archiver_in_thread,
    fill_history,
    prepare_database,
)

KEY = b"test-signing-key-0123456789"


def ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


# -- units ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "period",
    [
        "2024-13",
        "2024-00",
        "2024-1",
        "24-01",
        "2024-01-01",
        "",
        "x",
        "1969-12",
        "\uff12\uff10\uff12\uff14-01",
    ],
)
def test_bad_periods(period: str) -> None:
    with pytest.raises(BadReportRequest):
        ReportQuery.parse(period)


def test_period_bounds_and_filename() -> None:
    q = ReportQuery.parse("2023-12", "42", "AVITO_X")
    assert q.bounds_ms == (
        int(dt.datetime(2023, 12, 1, tzinfo=dt.UTC).timestamp()) * 1000,
        int(dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp()) * 1000,
    )
    assert q.user_id == 42
    assert q.filename == "segments-history_2023-12_user-42_segment-AVITO_X.csv"
    assert ReportQuery.parse("2024-02").filename == "segments-history_2024-02.csv"


@pytest.mark.parametrize("user_id", ["0", "-1", "01", "9223372036854775808", "1e3", " 1"])
def test_bad_user_ids(user_id: str) -> None:
    with pytest.raises(BadReportRequest):
        ReportQuery.parse("2024-01", user_id)


def test_signed_params_verify_and_any_change_is_rejected() -> None:
    q = ReportQuery.parse("2024-02", 7, "SEG")
    expires = int(time.time()) + 60
    params = link_params(KEY, q, expires)
    assert list(params) == ["period", "user_id", "segment", "expires", "sig"]
    assert verify(KEY, params) == q
    for name, value in [
        ("period", "2024-03"),
        ("user_id", "8"),
        ("segment", "SEG2"),
        ("expires", str(expires + 1)),
        ("sig", sign(KEY, q, expires + 1)),
    ]:
        with pytest.raises(LinkRejected):
            verify(KEY, {**params, name: value})
    for name in ("user_id", "segment", "sig", "expires", "period"):
        with pytest.raises(LinkRejected):
            verify(KEY, {k: v for k, v in params.items() if k != name})
    with pytest.raises(LinkRejected):
        verify(b"another-key-0123456789", params)
    with pytest.raises(LinkRejected, match="expired"):
        verify(KEY, params, now=expires)


def test_absent_filters_are_part_of_the_signature() -> None:
    whole = ReportQuery.parse("2024-02")
    params = link_params(KEY, whole, int(time.time()) + 60)
    with pytest.raises(LinkRejected):
        verify(KEY, {**params, "user_id": "1"})


# -- over HTTP --------------------------------------------------------------------------------


READ = {"authorization": "Bearer reader"}
"""Asking for a report link is a read (the tokens of ``settings_for``)."""


def settings_for(redis_url: str, database_url: str, **kw: Any) -> Settings:
    return Settings(
        **{
            "redis_url": redis_url,
            "database_url": database_url,
            "signing_key": KEY,
            "tokens": Tokens.parse("reader:read,writer:write"),
            "report_wait_s": 5.0,
            "sweep_interval_s": 3600.0,  # these tests add history events by hand
            **kw,
        }
    )


@contextlib.asynccontextmanager
async def archiving(redis_url: str, database_url: str) -> AsyncIterator[None]:
    # On its own thread: the test client blocks this loop during each request.
    with archiver_in_thread(redis_url, database_url):
        yield


@contextlib.asynccontextmanager
async def client_for(settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


async def fetch_csv(
    client: AsyncTestClient[Litestar], **params: Any
) -> tuple[str, list[list[str]]]:
    link = await client.get("/api/v1/history/report", params=params, headers=READ)
    assert link.status_code == 200, link.text
    response = await client.get(link.json()["url"])  # no token: the signature is enough
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    body = response.content.decode()
    return body, list(csv.reader(io.StringIO(body, newline="")))


FEB = [
    Event(user_id=1, segment="A", ts_ms=ms("2024-02-01T00:00:00Z")),
    Event(user_id=2, segment="A", ts_ms=ms("2024-02-10T12:00:00.250Z"), reason="percent"),
    Event(
        user_id=1,
        segment="B",
        ts_ms=ms("2024-02-11T00:00:00Z"),
        deadline_ms=ms("2024-03-11T00:00:00Z"),
    ),
    Event(user_id=2, segment="B", ts_ms=ms("2024-02-11T00:00:01Z")),
    # One call, two events, one instant: the order they were appended in.
    Event(
        user_id=1,
        segment="A",
        ts_ms=ms("2024-02-15T08:30:00Z"),
        operation="remove",
        reason="user_deleted",
    ),
    Event(
        user_id=1,
        segment="B",
        ts_ms=ms("2024-02-15T08:30:00Z"),
        operation="remove",
        reason="user_deleted",
    ),
    Event(
        user_id=2,
        segment="A",
        ts_ms=ms("2024-02-29T23:59:59.999Z"),
        operation="remove",
        reason="segment_deleted",
    ),
    # Appended last but stamped earlier (a sweep noticing a passed deadline):
    # reports are ordered by the time the change took effect.
    Event(
        user_id=2, segment="B", ts_ms=ms("2024-02-20T00:00:00Z"), operation="remove", reason="ttl"
    ),
]
OUTSIDE = [
    Event(user_id=1, segment="A", ts_ms=ms("2024-01-31T23:59:59.999Z")),
    Event(user_id=1, segment="A", ts_ms=ms("2024-03-01T00:00:00Z")),
]
HEADER = ["user_id", "segment", "operation", "timestamp", "reason"]


async def test_report_csv_rows_order_and_format(
    redis: Redis, clean_redis_url: str, db: str
) -> None:
    await add_events(redis, [*FEB, *OUTSIDE])
    async with (
        archiving(clean_redis_url, db),
        client_for(settings_for(clean_redis_url, db)) as client,
    ):
        link = await client.get(
            "/api/v1/history/report", params={"period": "2024-02"}, headers=READ
        )
        assert link.status_code == 200
        body = link.json()
        assert body["url"].startswith("http://testserver.local/api/v1/history/report.csv?")
        expires_at = dt.datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
        assert 3500 < (expires_at - dt.datetime.now(dt.UTC)).total_seconds() <= 3601
        response = await client.get(body["url"])
    assert response.status_code == 200
    assert response.headers["content-disposition"] == (
        'attachment; filename="segments-history_2024-02.csv"'
    )
    text = response.content.decode()
    # RFC 4180: CRLF after every record, the last one included.
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows == [
        HEADER,
        ["1", "A", "add", "2024-02-01T00:00:00.000Z", "manual"],
        ["2", "A", "add", "2024-02-10T12:00:00.250Z", "percent"],
        ["1", "B", "add", "2024-02-11T00:00:00.000Z", "manual"],
        ["2", "B", "add", "2024-02-11T00:00:01.000Z", "manual"],
        ["1", "A", "remove", "2024-02-15T08:30:00.000Z", "user_deleted"],
        ["1", "B", "remove", "2024-02-15T08:30:00.000Z", "user_deleted"],
        ["2", "B", "remove", "2024-02-20T00:00:00.000Z", "ttl"],
        ["2", "A", "remove", "2024-02-29T23:59:59.999Z", "segment_deleted"],
    ]


async def test_report_filters(redis: Redis, clean_redis_url: str, db: str) -> None:
    await add_events(redis, [*FEB, *OUTSIDE])
    async with (
        archiving(clean_redis_url, db),
        client_for(settings_for(clean_redis_url, db)) as client,
    ):
        _, by_user = await fetch_csv(client, period="2024-02", user_id=1)
        _, by_segment = await fetch_csv(client, period="2024-02", segment="B")
        _, both = await fetch_csv(client, period="2024-02", user_id=2, segment="B")
        _, empty = await fetch_csv(client, period="2023-07", segment="B")
    assert [(r[1], r[2]) for r in by_user[1:]] == [
        ("A", "add"),
        ("B", "add"),
        ("A", "remove"),
        ("B", "remove"),
    ]
    assert {r[0] for r in by_user[1:]} == {"1"}
    assert [(r[0], r[2]) for r in by_segment[1:]] == [
        ("1", "add"),
        ("2", "add"),
        ("1", "remove"),
        ("2", "remove"),
    ]
    assert both == [
        HEADER,
        ["2", "B", "add", "2024-02-11T00:00:01.000Z", "manual"],
        ["2", "B", "remove", "2024-02-20T00:00:00.000Z", "ttl"],
    ]
    assert empty == [HEADER]


async def test_links_use_public_url_and_work_without_other_credentials(
    clean_redis_url: str, db: str
) -> None:
    settings = settings_for(clean_redis_url, db, public_url="https://segments.example/base")
    async with client_for(settings) as client:
        link = await client.get(
            "/api/v1/history/report", params={"period": "2024-02"}, headers=READ
        )
        url = link.json()["url"]
        assert url.startswith("https://segments.example/base/api/v1/history/report.csv?")
        # The same link, served by this app: only path and query matter.
        parts = urlsplit(url)
        path = parts.path.removeprefix("/base")
        ok = await client.get(path, params=dict(parse_qsl(parts.query)))
        assert ok.status_code == 200


async def test_asking_for_a_link_takes_a_read_token_the_download_none(
    clean_redis_url: str, db: str
) -> None:
    path = "/api/v1/history/report"
    async with client_for(settings_for(clean_redis_url, db)) as client:
        assert (await client.get(path, params={"period": "2024-02"})).status_code == 401
        unknown = {"authorization": "Bearer nope"}
        assert (
            await client.get(path, params={"period": "2024-02"}, headers=unknown)
        ).status_code == 403
        writer = {"authorization": "Bearer writer"}
        link = await client.get(path, params={"period": "2024-02"}, headers=writer)
        assert link.status_code == 200  # a write token may read
        download = await client.get(link.json()["url"], headers=unknown)
        assert download.status_code == 200  # the link's own signature decides, not a token


async def test_tampered_or_expired_links_are_403(clean_redis_url: str, db: str) -> None:
    async with client_for(settings_for(clean_redis_url, db)) as client:
        link = await client.get(
            "/api/v1/history/report", params={"period": "2024-02", "user_id": 5}, headers=READ
        )
        params = dict(parse_qsl(urlsplit(link.json()["url"]).query))
        path = "/api/v1/history/report.csv"
        assert (await client.get(path, params=params)).status_code == 200
        for change in [
            {"user_id": "6"},
            {"period": "2024-03"},
            {"expires": str(int(params["expires"]) + 3600)},
            {"sig": params["sig"][:-2] + "AA"},
            {"user_id": "not-a-number"},
            {"period": "garbage"},
        ]:
            response = await client.get(path, params={**params, **change})
            assert response.status_code == 403, change
        without_user = {k: v for k, v in params.items() if k != "user_id"}
        assert (await client.get(path, params=without_user)).status_code == 403
        assert (await client.get(path)).status_code == 403
        expired = link_params(KEY, ReportQuery.parse("2024-02"), int(time.time()) - 1)
        response = await client.get(path, params=expired)
        assert response.status_code == 403 and "expired" in response.text


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"period": "2024-13"},
        {"period": "2024-2"},
        {"period": "2024-02", "user_id": "0"},
        {"period": "2024-02", "user_id": "x"},
        {"period": "2024-02", "user_id": str(2**63)},
        {"period": "2024-02", "segment": "-bad"},
        {"period": "2024-02", "segment": "x" * 101},
    ],
)
async def test_bad_report_requests_are_400(
    params: dict[str, str], clean_redis_url: str, db: str
) -> None:
    async with client_for(settings_for(clean_redis_url, db)) as client:
        response = await client.get("/api/v1/history/report", params=params, headers=READ)
    assert response.status_code == 400, response.text


async def test_503_with_retry_after_when_the_archiver_is_behind(
    redis: Redis, clean_redis_url: str, db: str
) -> None:
    await add_events(redis, FEB)  # and no archiver running
    settings = settings_for(clean_redis_url, db, report_wait_s=0.3)
    async with client_for(settings) as client:
        started = time.monotonic()
        response = await client.get(
            "/api/v1/history/report", params={"period": "2024-02"}, headers=READ
        )
        assert time.monotonic() - started >= 0.3
    assert response.status_code == 503
    assert 1 <= int(response.headers["retry-after"]) <= 30


async def test_a_report_asked_right_after_a_change_contains_it(
    redis: Redis, clean_redis_url: str, db: str
) -> None:
    now = dt.datetime.now(dt.UTC)
    async with (
        archiving(clean_redis_url, db),
        client_for(settings_for(clean_redis_url, db)) as client,
    ):
        for i in range(10):
            event = Event(user_id=100 + i, segment=f"NOW_{i}", ts_ms=int(time.time() * 1000))
            await add_events(redis, [event])  # and at once:
            _, rows = await fetch_csv(client, period=f"{now:%Y-%m}", user_id=100 + i)
            assert rows[-1][:2] == [str(100 + i), f"NOW_{i}"]


async def test_download_with_postgres_down_is_503_not_a_truncated_200(
    clean_redis_url: str, private_pg: Any
) -> None:
    db = prepare_database(private_pg.url)
    async with client_for(settings_for(clean_redis_url, db)) as client:
        link = await client.get(
            "/api/v1/history/report", params={"period": "2024-02"}, headers=READ
        )
        url = link.json()["url"]
        assert (await client.get(url)).status_code == 200
        await asyncio.to_thread(private_pg.stop)
        try:
            response = await client.get(url)
        finally:
            await asyncio.to_thread(private_pg.start)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        # And the pool recovers once PostgreSQL is back.
        assert (await client.get(url)).status_code == 200


# -- a large report, streamed by a real server ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SERVER = """
import uvicorn
from service.app import create_app
uvicorn.run(create_app(), host="127.0.0.1", port={port}, log_level="warning")
"""


@contextlib.contextmanager
def report_server(redis_url: str, database_url: str) -> Iterator[tuple[str, psutil.Process]]:
    port = _free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "SEGMENTS_SIGNING_KEY": KEY.decode(),
        "SEGMENTS_TOKENS": "reader:read",
    }
    code = SERVER.format(port=port)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/api/v1/history/report.csv", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        yield base, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.scale
def test_a_million_row_report_streams_with_flat_memory(
    clean_redis_url: str, fresh_pg_url: str
) -> None:
    rows = 1_000_000
    fill_history(fresh_pg_url, rows, "2019-06")
    with report_server(clean_redis_url, fresh_pg_url) as (base, server):
        link = httpx.get(
            f"{base}/api/v1/history/report", params={"period": "2019-06"}, headers=READ
        )
        url = link.json()["url"]
        # Warm up (imports, first connection), then measure from there.
        with httpx.stream("GET", url.replace("2019-06", "2019-05")) as r:
            assert r.status_code == 403
        before = server.memory_info().rss
        peak = before
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, server.memory_info().rss)
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        lines = size = 0
        started = time.perf_counter()
        try:
            with httpx.stream("GET", url, timeout=60) as response:
                assert response.status_code == 200
                for chunk in response.iter_raw():
                    size += len(chunk)
                    lines += chunk.count(b"\n")
        finally:
            done.set()
            sampler.join()
        seconds = time.perf_counter() - started
    assert lines == rows + 1
    growth_mb = (peak - before) / 2**20
    print(
        f"\n{rows} rows, {size / 2**20:.0f} MiB in {seconds:.2f} s: {rows / seconds:,.0f} rows/s,"
        f" server RSS growth {growth_mb:.1f} MiB"
    )
    # Loose: the report is ~55 MiB; a server that held it would grow by that much.
    assert growth_mb < 25
