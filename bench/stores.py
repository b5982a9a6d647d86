"""The Redis database and PostgreSQL database the bench owns, and may wipe.

The bench flushes its Redis db and recreates its PostgreSQL schema before
each run. To never wipe anybody's data by mistake, it marks what it owns (a
key in the Redis db, a comment on the PostgreSQL database) and refuses to
wipe anything that holds data without that mark, unless told ``--force``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
from psycopg import sql

from segments_core.keys import Keyspace
from segments_core.redis_client import connect
from service.resp import RespConnection
from service.store import Store

REDIS_MARK = "segments-bench:owned"
"""Present in a Redis db the bench may flush (set right after flushing it)."""
PG_MARK = "segments-bench: this database is wiped by every bench run"
"""COMMENT ON DATABASE of a PostgreSQL database the bench may wipe."""


class NotOwned(RuntimeError):
    """The store holds data the bench did not write; wiping needs --force."""


def redis_db(url: str) -> int:
    parts = urlsplit(url)
    path = parts.path.strip("/")
    return int(path) if path.isdigit() else 0


def claim_redis(url: str, force: bool) -> int:
    """Flush the Redis db of ``url`` if it is empty, marked, or ``force``;
    returns how many keys it held."""
    with redis.Redis.from_url(url) as client:
        keys = int(client.dbsize())
        if keys and not client.exists(REDIS_MARK) and not force:
            raise NotOwned(
                f"Redis db {redis_db(url)} at {url} holds {keys} keys the bench did not write. "
                "The bench FLUSHES its db: point --redis-url at a spare db "
                "(e.g. redis://127.0.0.1:6379/12), or pass --force to flush this one."
            )
        client.flushdb()
        client.set(REDIS_MARK, "1")
        return keys


def redis_info(url: str, section: str) -> dict[str, object]:
    with redis.Redis.from_url(url) as client:
        return dict(client.info(section))


def memory(url: str, keyspace: Keyspace) -> tuple[int, int]:
    """(``used_memory``, bytes of the history streams: ``MEMORY USAGE`` summed)."""
    with redis.Redis.from_url(url) as client:
        pipe = client.pipeline(transaction=False)
        pipe.info("memory")
        for key in keyspace.history_streams():
            pipe.memory_usage(key, samples=0)
        info, *streams = pipe.execute()
    return int(info["used_memory"]), sum(int(v or 0) for v in streams)


def state_bytes(url: str, keyspace: Keyspace) -> int:
    """``used_memory`` without the history streams (they hold events only until
    the archiver has them)."""
    used, streams = memory(url, keyspace)
    return used - streams


@contextlib.asynccontextmanager
async def service_store(url: str, keyspace: Keyspace) -> AsyncIterator[Store]:
    """The service's own store on the deployment's Redis, scripts through the
    pipelined connection as the API runs them (a single Redis)."""
    redis = await connect(url)
    fast = RespConnection(url)
    try:
        yield Store(redis, scripts_via=fast, keyspace=keyspace)
    finally:
        await fast.aclose()
        await redis.aclose()


def _with_db(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def pg_dbname(url: str) -> str:
    return urlsplit(url).path.strip("/") or "postgres"


def claim_postgres(url: str, force: bool) -> bool:
    """Make the database of ``url`` an empty one the bench owns: created (and
    marked) when missing, else its ``public`` schema dropped and recreated if
    it is marked, has no tables, or ``force``. Returns True if it was created."""
    name = pg_dbname(url)
    created = False
    with psycopg.connect(_with_db(url, "postgres"), autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            created = True
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database"
            " WHERE datname = current_database()"
        ).fetchone()
        marked = row is not None and row[0] == PG_MARK
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
        if tables and tables[0] and not marked and not force:
            raise NotOwned(
                f"PostgreSQL database {name!r} holds tables the bench did not create. "
                "The bench WIPES its database: point --database-url at a spare one "
                "(e.g. postgresql://127.0.0.1:5432/segments_bench, created if missing), "
                "or pass --force."
            )
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")
        if not marked:
            with contextlib.suppress(psycopg.Error):
                conn.execute(
                    sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        sql.Identifier(name), sql.Literal(PG_MARK)
                    )
                )
    return created
