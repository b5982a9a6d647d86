"""`segments migrate`: the schema, applied once, in order, concurrently safe."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from archiver.migrate import available, migrate


def test_migrations_are_numbered_in_order() -> None:
    names = [m.name for m in available()]
    assert names and names == sorted(names)
    assert names[0] == "0001_history"


def test_migrate_creates_the_schema_once(fresh_pg_url: str) -> None:
    assert migrate(fresh_pg_url) == [m.name for m in available()]
    assert migrate(fresh_pg_url) == []
    with psycopg.connect(fresh_pg_url) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        }
        versions = conn.execute("SELECT version FROM schema_migrations").fetchall()
    assert {"history", "segment_events", "archive_progress", "schema_migrations"} <= tables
    # This month and the next two exist ahead of any event.
    month = dt.datetime.now(dt.UTC).date().replace(day=1)
    for _ in range(3):
        assert f"history_p{month:%Y_%m}" in tables
        month = (month + dt.timedelta(days=32)).replace(day=1)
    assert len(versions) == len(available())


def test_concurrent_migrations_apply_each_once(fresh_pg_url: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(migrate, [fresh_pg_url] * 4))
    applied = [name for result in results for name in result]
    assert sorted(applied) == [m.name for m in available()]


def test_partitions_are_utc_months_whatever_the_session_time_zone(fresh_pg_url: str) -> None:
    migrate(fresh_pg_url)
    with psycopg.connect(fresh_pg_url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'Asia/Tokyo'")
        for day in ("2021-03-15", "2021-03-01", "2021-04-30"):
            conn.execute("SELECT history_ensure_partition(%s::date)", (day,))
        for ts in ("2021-03-31T23:59:59.999Z", "2021-04-01T00:00:00Z", "2021-03-01T00:00:00Z"):
            conn.execute(
                "INSERT INTO history (ts, user_id, segment, operation, reason, stream,"
                " entry_ms, entry_seq) VALUES (%s, 1, 'S', 'add', 'manual', 's', 1, 0)",
                (ts,),
            )
        where = dict(
            conn.execute(
                "SELECT to_char(ts AT TIME ZONE 'UTC', 'MM-DD HH24:MI:SS'),"
                " tableoid::regclass::text FROM history"
            ).fetchall()
        )
    assert where == {
        "03-31 23:59:59": "history_p2021_03",
        "04-01 00:00:00": "history_p2021_04",
        "03-01 00:00:00": "history_p2021_03",
    }


def test_history_rejects_a_second_copy_of_an_event(fresh_pg_url: str) -> None:
    migrate(fresh_pg_url)
    insert = (
        "INSERT INTO history (ts, user_id, segment, operation, reason, stream, entry_ms,"
        " entry_seq) VALUES (date_trunc('month', now()) + interval '1 day', 1, 'S', 'add',"
        " 'manual', '{s01}:events', 5, 0)"
    )
    with psycopg.connect(fresh_pg_url, autocommit=True) as conn:
        conn.execute(insert)
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(insert)
        assert conn.execute(insert + " ON CONFLICT DO NOTHING").rowcount == 0
