"""/api/v1/history: report links and the signed CSV download.

``GET /api/v1/history/report?period=YYYY-MM[&user_id=N][&segment=SLUG]``
waits for the archiver, then answers ``{"url", "expires_at"}``; the url is
``<base>/api/v1/history/report.csv?period=..[&user_id=..][&segment=..]&expires=..&sig=..``
and needs no other credentials (``opt={"public": True}`` lets it past the
token guard): its HMAC is the credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any
from urllib.parse import urlencode

import msgspec
import psycopg
from litestar import Request, get
from litestar.di import NamedDependency
from litestar.exceptions import ServiceUnavailableException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, QueryParameter
from litestar.response import Stream
from psycopg_pool import AsyncConnectionPool

from segments_core import rules
from service import metrics
from service.api.params import QueryUserId
from service.models import ErrorBody
from service.reports import (
    ArchiverBehind,
    LinkRejected,
    ReportQuery,
    link_params,
    retry_after_s,
    stream_csv,
    verify,
    wait_until_archived,
)
from service.settings import Settings
from service.store import Store

log = logging.getLogger("segments.reports")

REPORT_PATH = "/api/v1/history/report"
DOWNLOAD_PATH = "/api/v1/history/report.csv"


class ReportLink(msgspec.Struct, kw_only=True):
    url: str
    """Absolute link to the CSV; works without a token until ``expires_at``."""
    expires_at: dt.datetime


Period = Annotated[
    str,
    QueryParameter(
        pattern=rules.PERIOD_PATTERN, description="UTC month, YYYY-MM (1970-01 .. 9999-12)"
    ),
]


@get(
    REPORT_PATH,
    summary="Link to a month's history as CSV",
    description=(
        "Waits (a few seconds at most) until every change made before this request is"
        " archived, then returns a signed link to the CSV. 503 with Retry-After if the"
        " archiver is behind."
    ),
    tags=["history"],
    responses={
        503: ResponseSpec(
            ErrorBody, description="The archiver is behind; retry after Retry-After seconds"
        )
    },
)
async def report_link(
    request: Request[Any, Any, Any],
    settings: NamedDependency[Settings],
    # Redis or RedisCluster; a union of two classes is no valid DI annotation.
    redis: NamedDependency[Any],
    store: NamedDependency[Store],
    period: Period,
    user_id: QueryUserId = None,
    segment: Annotated[
        str | None,
        QueryParameter(pattern=rules.SLUG_PATTERN, description="Only this segment's events"),
    ] = None,
) -> ReportLink:
    query = ReportQuery.parse(period, user_id, segment)
    started = time.monotonic()
    # A membership whose deadline passed before this request must be in the
    # report, with its `ttl` event at the deadline. The background sweeper
    # may be a second behind: sweep now, before the targets are taken.
    # (Cut short safely: each sweep step is one atomic script.)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(store.sweep(), settings.report_wait_s)
    remaining = max(0.0, settings.report_wait_s - (time.monotonic() - started))
    waited = await wait_until_archived(redis, store.keyspace.history_streams(), remaining)
    metrics.REPORT_WAIT_SECONDS.observe(waited.waited_s)
    if not waited.caught_up:
        metrics.REPORT_LINKS.labels("timeout").inc()
        behind = ArchiverBehind(retry_after_s(waited))
        raise ServiceUnavailableException(
            detail=behind.detail,
            headers={"Retry-After": str(behind.retry_after_s)},
            extra=behind.extra,
        )
    if settings.signing_key is None:  # the app generates one when unset
        raise RuntimeError("settings.signing_key is not set")
    # Whole seconds, rounded up: a link never expires before its TTL.
    expires = math.ceil(time.time() + settings.report_link_ttl_s)
    base = settings.public_url or str(request.base_url).rstrip("/")
    query_string = urlencode(link_params(settings.signing_key, query, expires))
    metrics.REPORT_LINKS.labels("ok").inc()
    return ReportLink(
        url=f"{base}{DOWNLOAD_PATH}?{query_string}",
        expires_at=dt.datetime.fromtimestamp(expires, dt.UTC),
    )


@get(
    DOWNLOAD_PATH,
    summary="A signed history report, as CSV",
    description=(
        "RFC 4180, header `user_id,segment,operation,timestamp,reason`, ordered by time,"
        " streamed. 403 if the signature does not match or the link expired."
    ),
    tags=["history"],
    media_type="text/csv",
    opt={"public": True},
    responses={
        403: ResponseSpec(ErrorBody, description="Signature does not match, or link expired"),
        503: ResponseSpec(ErrorBody, description="The history database is unavailable"),
    },
)
async def report_csv(
    request: Request[Any, Any, Any],
    settings: NamedDependency[Settings],
    pg: NamedDependency[AsyncConnectionPool],
    period: FromQuery[str | None] = None,
    user_id: FromQuery[str | None] = None,
    segment: FromQuery[str | None] = None,
    expires: FromQuery[str | None] = None,
    sig: FromQuery[str | None] = None,
) -> Stream:
    # The parameters are declared for the schema; the signature is checked
    # over the raw query string (``verify``), so any change to a link is a
    # 403, never a 400 that tells what was wrong.
    if settings.signing_key is None:
        raise RuntimeError("settings.signing_key is not set")
    try:
        query = verify(settings.signing_key, request.scope["query_string"].decode("latin-1"))
    except LinkRejected:
        metrics.REPORT_DOWNLOADS.labels("forbidden").inc()
        raise
    chunks = stream_csv(pg, query)
    # Start the query before answering, so that PostgreSQL being down is a
    # 503 rather than a 200 cut short.
    try:
        first = await anext(chunks)
    except (psycopg.OperationalError, OSError) as exc:
        await chunks.aclose()
        log.warning("report query failed: %s", exc)
        raise ServiceUnavailableException(
            detail="history database unavailable, retry shortly", headers={"Retry-After": "5"}
        ) from None
    return Stream(
        _counted(first, chunks),
        media_type="text/csv; charset=utf-8; header=present",
        headers={
            "Content-Disposition": f'attachment; filename="{query.filename}"',
            "Cache-Control": "no-store",
        },
    )


async def _counted(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    sent = len(first)
    outcome = "failed"
    try:
        yield first
        async for chunk in rest:
            sent += len(chunk)
            yield chunk
        outcome = "ok"
    finally:
        # Closed explicitly: a client gone mid-report must give its
        # connection back to the pool now, not when the collector runs.
        await rest.aclose()
        metrics.REPORT_BYTES.inc(sent)
        metrics.REPORT_DOWNLOADS.labels(outcome).inc()


ROUTES = [report_link, report_csv]
