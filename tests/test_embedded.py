"""The test fixtures' servers are real, and the embedded servers behave as documented."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from segments_dev.embedded import (
    EmbeddedError,
    EmbeddedPostgres,
    EmbeddedRedis,
    create_database,
    drop_database,
    free_port,
    with_database,
)
from tests.support.cluster import client as cluster_client
from tests.support.cluster import every_master


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="segments-embedded-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _pg_up(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


def _redis_up(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


# -- the fixtures -----------------------------------------------------------------------


def test_redis_fixture_is_reachable_and_clean(clean_redis_url: str) -> None:
    client = cluster_client(clean_redis_url)
    try:
        assert client.dbsize(**every_master(client)) == 0
        client.set("segments-test", "1")
        assert client.get("segments-test") == b"1"
    finally:
        client.close()


def test_clean_redis_url_flushes(redis_url: str, request: pytest.FixtureRequest) -> None:
    client = cluster_client(redis_url)
    try:
        client.set("left-by-an-earlier-test", "1")
        assert client.dbsize(**every_master(client)) > 0
        # The fixture runs now, after the write: it must empty the database.
        assert request.getfixturevalue("clean_redis_url") == redis_url
        assert client.dbsize(**every_master(client)) == 0
    finally:
        client.close()


def test_pg_url_is_a_private_database(pg_url: str, pg_server_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    assert row[0].startswith("segments_test_")
    assert pg_url == with_database(pg_server_url, row[0])


def test_fresh_pg_url_is_empty(fresh_pg_url: str) -> None:
    with psycopg.connect(fresh_pg_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert row == (0,)


def test_private_pg_stops_and_starts_on_the_same_url(private_pg: EmbeddedPostgres) -> None:
    url = private_pg.url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    private_pg.stop()
    assert not private_pg.running
    assert not _pg_up(url)
    private_pg.start()
    assert private_pg.url == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT n FROM kept").fetchall() == [(42,)]


def test_private_pg_is_not_the_configured_server(
    private_pg: EmbeddedPostgres, pg_server_url: str
) -> None:
    assert private_pg.url != pg_server_url


def test_private_redis_stops_and_starts(private_redis: EmbeddedRedis) -> None:
    url = private_redis.url
    assert _redis_up(url)
    private_redis.stop()
    assert not _redis_up(url)
    private_redis.start()
    assert private_redis.url == url
    assert _redis_up(url)


# -- embedded servers -----------------------------------------------------------------------


def test_persistent_redis_keeps_data_between_runs(data_dir: Path) -> None:
    with EmbeddedRedis(data_dir, persistent=True) as server:
        client = redis.Redis.from_url(server.url)
        client.set("kept", "yes")
        client.close()
        port = server.port
    assert (data_dir / "appendonly.aof").exists()
    with EmbeddedRedis(data_dir, persistent=True) as server:
        assert server.port == port  # the last port is reused when free
        client = redis.Redis.from_url(server.url)
        assert client.get("kept") == b"yes"
        client.close()


def test_postgres_keeps_data_between_runs(data_dir: Path) -> None:
    with EmbeddedPostgres(data_dir, durable=False) as server:
        url = create_database(server.url, "kept")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (n int)")
            conn.execute("INSERT INTO t VALUES (1), (2), (3)")
    with EmbeddedPostgres(data_dir, durable=False) as server:
        with psycopg.connect(server.database_url("kept")) as conn:
            assert conn.execute("SELECT n FROM t ORDER BY n").fetchall() == [(1,), (2,), (3,)]
        drop_database(server.url, "kept")


def test_one_folder_one_server(data_dir: Path) -> None:
    with (
        EmbeddedRedis(data_dir),
        pytest.raises(EmbeddedError, match="in use by another process"),
    ):
        EmbeddedRedis(data_dir).start()


def test_port_in_use_is_a_clear_error(data_dir: Path) -> None:
    with EmbeddedRedis(data_dir / "a") as first:
        second = EmbeddedRedis(data_dir / "b", port=first.port)
        with pytest.raises(EmbeddedError, match="already in use"):
            second.start()
        assert not second.running


def test_failed_start_shows_the_log(data_dir: Path) -> None:
    (data_dir / "pgdata").mkdir()
    (data_dir / "pgdata" / "PG_VERSION").write_text("9\n")  # a cluster it cannot run
    if os.geteuid() == 0:
        shutil.chown(data_dir / "pgdata", "segments-pg", "segments-pg")
    with pytest.raises(EmbeddedError, match=r"postgres\.log \(last lines\)") as info:
        EmbeddedPostgres(data_dir, durable=False, start_timeout=20).start()
    assert "exited with code" in str(info.value)


def test_leftover_server_of_a_killed_process_is_replaced(data_dir: Path) -> None:
    """A process killed with SIGKILL leaves its servers running; the next start stops them."""
    port = free_port()
    script = (
        "import sys, time\n"
        "from segments_dev.embedded import EmbeddedRedis, EmbeddedPostgres\n"
        f"EmbeddedRedis({str(data_dir / 'redis')!r}, port={port}).start()\n"
        f"EmbeddedPostgres({str(data_dir / 'pg')!r}, durable=False).start()\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _redis_up(f"redis://127.0.0.1:{port}/0")
    with EmbeddedRedis(data_dir / "redis", port=port) as server:
        assert _redis_up(server.url)
    with EmbeddedPostgres(data_dir / "pg", durable=False) as server:
        assert _pg_up(server.url)
    deadline = time.monotonic() + 5
    while _redis_up(f"redis://127.0.0.1:{port}/0") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _redis_up(f"redis://127.0.0.1:{port}/0")
