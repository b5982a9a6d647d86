"""The Litestar application: wiring of resources, routes and error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Litestar, MediaType, Request, Response
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, ServiceUnavailableException
from litestar.exceptions.responses import ExceptionResponseContent
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import RedisCluster
from swagger_ui_bundle import swagger_ui_path

from segments_core.clock import Clock
from segments_core.keys import load_keyspace
from segments_core.logging import register_secret
from segments_core.redis_client import connect
from service import hotpath, metrics, observe, openapi, sweeper
from service.api.changes import ROUTES as CHANGES_ROUTES
from service.api.history import ROUTES as HISTORY_ROUTES
from service.api.ops import OPS_ROUTES
from service.api.segments import SegmentController
from service.api.users import UserController
from service.auth import require_token
from service.errors import ANSWERED, answer_for
from service.feed import FeedHub, end_streams_on_exit, open_hub
from service.http_methods import exact_allow, head_as_get
from service.resp import RespConnection
from service.settings import Settings, load
from service.store import Store
from service.strict import strict_body

MAX_BODY_BYTES = 1024 * 1024
log = logging.getLogger("segments.api")


def _error(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """Every failure in ``errors.ANSWERED``, answered as the hot path answers it."""
    answer = answer_for(exc)
    return Response(
        answer.body, status_code=answer.status, headers=answer.headers, media_type=MediaType.JSON
    )


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Litestar's own HTTP errors (400, 405, 413...), always in JSON: by default
    a CSV or event-stream route labels the JSON body with its own media type."""
    content = ExceptionResponseContent(
        status_code=exc.status_code,
        detail=exc.detail,
        headers=exc.headers,
        extra=exc.extra,
        media_type=MediaType.JSON,
    )
    return content.to_response(request)


class SegmentsApp(Litestar):
    """Litestar, with the lookup hot path answered before routing (service.hotpath),
    and every HTTP request observed (id, metrics, 500s: service.observe)."""

    observer = observe.Observer()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self.observer(self._answer, scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def _answer(self, scope: Any, receive: Any, send: Any) -> str:
        """Answers an HTTP request; returns its route's template."""
        if scope["method"] == "HEAD":
            scope, send = head_as_get(scope, send)  # a GET without its body
        fast = getattr(self.state, "hot_path", None)
        if fast is not None:
            receive = await fast.handle(scope, receive, send)
            if receive is None:
                return metrics.HOT_ROUTE
        await super().__call__(scope, receive, send)
        return scope.get("path_template") or metrics.UNMATCHED


def create_app(
    settings: Settings | None = None, *, clock: Clock | None = None, hot_path: bool = True
) -> Litestar:
    """The app; resources open in its lifespan. ``clock`` lets tests drive time;
    ``hot_path=False`` sends every request through the framework (the parity
    test compares the two)."""
    settings = settings or load()
    if settings.redis_url is None:
        raise RuntimeError("REDIS_URL is not set (`segments dev` starts an embedded Redis)")
    redis_url = settings.redis_url
    if settings.signing_key is None:
        # Links then work only with this process: fine for one process, and
        # `segments dev` keeps a key in its data folder. Say so once.
        log.warning("SEGMENTS_SIGNING_KEY is not set: report links are signed with a random key")
        settings = msgspec.structs.replace(settings, signing_key=secrets.token_bytes(32))
    for secret in (settings.signing_key, *settings.read_tokens):
        register_secret(secret)  # never in a log line
    metrics.REQUESTS.enabled = settings.request_metrics

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        redis = await connect(redis_url, wait_replicas=settings.wait_replicas)
        # Scripts go through the lean pipelined connection on a single Redis;
        # a Cluster is left to redis-py, which routes by key.
        fast = (
            None
            if isinstance(redis, RedisCluster) or not redis_url.startswith("redis://")
            else RespConnection(redis_url)
        )
        keyspace = await load_keyspace(redis, settings.shards)
        store = Store(redis, clock=clock, scripts_via=fast, keyspace=keyspace)
        app.state.redis = redis
        app.state.store = store
        app.state.hot_path = hotpath.HotPath(store, settings) if hot_path else None
        pg = None
        if settings.database_url is not None:
            pg = AsyncConnectionPool(
                settings.database_url,
                min_size=1,
                max_size=8,
                timeout=5,
                kwargs={"autocommit": True},
                open=False,
            )
            # Not waiting: the API serves lookups while PostgreSQL is down.
            await pg.open(wait=False)
        app.state.pg = pg
        upkeep = asyncio.create_task(sweeper.run(store, settings.sweep_interval_s))
        # The change feed's one reader of the streams for this process.
        feed = await open_hub(redis_url, keyspace)
        app.state.feed = feed
        restore_signals = end_streams_on_exit(feed)
        # Objects made at start-up live for ever: keep the collector off them,
        # which takes the long GC pauses out of the latency tail.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            restore_signals()
            await feed.stop()
            upkeep.cancel()
            # Bounded: a task cancelled while redis-py is opening a connection
            # can take long to unwind, and shutdown must not hang on it.
            await asyncio.wait([upkeep], timeout=1.0)
            if fast is not None:
                await fast.aclose()
            if pg is not None:
                await pg.close()
            await redis.aclose()

    def provide_store(state: State) -> Store:
        return state.store  # type: ignore[no-any-return]

    def provide_redis(state: State) -> Any:
        return state.redis

    def provide_settings(state: State) -> Settings:
        return state.settings  # type: ignore[no-any-return]

    def provide_feed(state: State) -> FeedHub:
        return state.feed  # type: ignore[no-any-return]

    def provide_pg(state: State) -> AsyncConnectionPool:
        if state.pg is None:
            raise ServiceUnavailableException("history database not configured (DATABASE_URL)")
        return state.pg  # type: ignore[no-any-return]

    assets = swagger_ui_path
    app = SegmentsApp(
        route_handlers=[
            SegmentController,
            UserController,
            *OPS_ROUTES,
            *HISTORY_ROUTES,
            *CHANGES_ROUTES,
            create_static_files_router(path="/schema/assets", directories=[assets]),
        ],
        # No tokens configured: no guard at all (it costs a handler copy per request).
        guards=[require_token] if settings.auth_enabled else [],
        before_request=strict_body,
        before_send=[exact_allow],
        dependencies={
            "store": Provide(provide_store, sync_to_thread=False),
            "redis": Provide(provide_redis, sync_to_thread=False),
            "settings": Provide(provide_settings, sync_to_thread=False),
            "pg": Provide(provide_pg, sync_to_thread=False),
            "feed": Provide(provide_feed, sync_to_thread=False),
        },
        # 500: every other exception, and Litestar's own 500s, logged with
        # their traceback by answer_for (through the "segments.api" logger,
        # where the request id is added) and answered in JSON.
        exception_handlers={
            **dict.fromkeys(ANSWERED, _error),
            HTTPException: _http_error,
            500: _error,
        },
        after_exception=[observe.remember_exception],
        # Logging is set up by the process (segments_core.logging), not by Litestar,
        # whose default would replace the root handler and its format.
        logging_config=None,
        lifespan=[lifespan],
        state=State({"settings": settings, "pg": None}),
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=OpenAPIConfig(
            title="Segments",
            version="1.0.0",
            description="Dynamic user segmentation: segments, memberships with deadlines, "
            "percent rollouts, and history reports.",
            render_plugins=[
                SwaggerRenderPlugin(
                    js_url="/schema/assets/swagger-ui-bundle.js",
                    css_url="/schema/assets/swagger-ui.css",
                    standalone_preset_js_url="/schema/assets/swagger-ui-standalone-preset.js",
                    favicon="",  # the default points at a CDN: nothing external here
                )
            ],
        ),
        debug=False,
    )
    openapi.refine(app)  # the schema says exactly what is accepted (service/openapi.py)
    return app


__all__ = ["HTTPException", "create_app"]
