"""Small parts of the bench: CPU math, seeding plan, options, stores, slow log."""

from __future__ import annotations

import pytest

from bench import cli, cpu, scenarios, seed, stores
from bench.context import Options
from bench.percent import script_calls


def test_cpu_percent_of_one_core() -> None:
    before = {"api": {1: 10.0, 2: 5.0}, "redis": {3: 1.0}}
    after = {"api": {1: 12.0, 2: 6.0, 4: 0.5}, "redis": {3: 1.5}}
    usage = cpu.percent(before, after, wall_s=2.0)
    assert usage["api"] == pytest.approx(175.0)  # 3.5 s of CPU in 2 s; pid 4 born meanwhile
    assert usage["redis"] == pytest.approx(25.0)
    with pytest.raises(ValueError):
        cpu.percent(before, after, wall_s=0)


def test_cpu_snapshot_of_this_process() -> None:
    import os

    snap = cpu.snapshot({"me": cpu.tree(os.getpid()), "gone": cpu.tree(2**22 + 12345)})
    assert os.getpid() in snap["me"]
    assert snap["gone"] == {}


def test_memberships_of_a_user() -> None:
    slugs = seed.pool(20)
    assert slugs[0] == "BENCH_00" and slugs[-1] == "BENCH_19"
    items = seed.memberships_of(7, slugs, 5, seed=1)
    assert items == seed.memberships_of(7, slugs, 5, seed=1)
    assert len({i.slug for i in items}) == 5 and {i.slug for i in items} <= set(slugs)
    assert all(i.deadline_ms == 0 and i.ttl_ms in (0, seed.SEED_TTL_MS) for i in items)
    with_ttl = sum(
        i.ttl_ms > 0 for u in range(1, 1001) for i in seed.memberships_of(u, slugs, 5, 1)
    )
    assert with_ttl == 1000  # one add in DEADLINE_EVERY = 5


def test_scenario_names() -> None:
    assert scenarios.parse("lookup, change,lookup,ceiling") == ["lookup", "change"]
    assert scenarios.parse("all") == [*scenarios.DEFAULT, "percent-100"]
    with pytest.raises(ValueError, match="unknown scenario 'lokup'"):
        scenarios.parse("lokup")


def _opts(*argv: str) -> Options:
    return cli.options(cli.build_parser().parse_args(list(argv)))


def test_options_own_service_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEGMENTS_BENCH_REDIS_URL", raising=False)
    monkeypatch.delenv("SEGMENTS_BENCH_DATABASE_URL", raising=False)
    opts = _opts()
    assert opts.own_service
    assert opts.redis_url == cli.DEFAULT_REDIS_URL
    assert opts.database_url == cli.DEFAULT_DATABASE_URL
    assert (opts.connections, opts.users, opts.memberships) == (64, 100_000, 5)
    assert opts.scenarios == scenarios.DEFAULT
    assert opts.shards is None and opts.settings()["auth"] is False


def test_options_shards_and_token_in_the_settings() -> None:
    opts = _opts("--shards", "64", "--token", "secret", "--scenarios", "lookup,csv")
    settings = opts.settings()
    assert settings["shards"] == 64 and settings["scenarios"] == "lookup,csv"
    assert settings["auth"] is True and "secret" not in settings.values()


def test_options_with_url_wipe_nothing_by_default() -> None:
    opts = _opts("--url", "http://127.0.0.1:8000/", "--scenarios", "lookup", "--skip-seed")
    assert not opts.own_service
    assert opts.url == "http://127.0.0.1:8000"
    assert opts.redis_url is None and opts.database_url is None


@pytest.mark.parametrize(
    "argv",
    [
        ["--skip-seed"],
        ["--users", "0"],
        ["--memberships", "30"],
        ["--segments", "2", "--memberships", "1"],
        ["--duration", "0.5"],
        ["--scenarios", "nope"],
        ["--shards", "0"],
        ["--url", "http://127.0.0.1:8000", "--shards", "64"],
        ["--url", "http://127.0.0.1:8000"],  # seeding needs --redis-url
        ["--profile", "csv"],
    ],
)
def test_bad_options(argv: list[str]) -> None:
    with pytest.raises(ValueError):
        _opts(*argv)


def test_main_reports_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--users", "0"]) == 2
    assert "--users" in capsys.readouterr().err


def test_store_names() -> None:
    assert stores.redis_db("redis://127.0.0.1:6379/12") == 12
    assert stores.redis_db("redis://127.0.0.1:6379") == 0
    assert stores.pg_dbname("postgresql://127.0.0.1:5432/segments_bench") == "segments_bench"
    assert stores.pg_dbname("postgresql://127.0.0.1:5432") == "postgres"


def test_script_calls_of_our_clients_named() -> None:
    # as redis-py gives them: bytes, even with decode_responses
    entries: list[dict[str, object]] = [
        {"duration": 90_000, "command": b"EVALSHA aaa 1 k", "client_address": b"127.0.0.1:9"},
        {"duration": 70_000, "command": b"KEYS *", "client_address": b"127.0.0.1:1"},
        {"duration": 12_500, "command": b"EVALSHA bbb 6 k", "client_address": b"127.0.0.1:1"},
        {"duration": 3_000, "command": b"evalsha ccc 6 k", "client_address": b"127.0.0.1:2"},
    ]
    names = {"bbb": "rolloutSegment"}
    ours = script_calls(entries, {"127.0.0.1:1", "127.0.0.1:2"}, names)
    assert ours == [(pytest.approx(12.5), "rolloutSegment"), (pytest.approx(3.0), "ccc")]
    assert max(script_calls(entries, None, names))[0] == pytest.approx(90.0)
    assert script_calls([], None, names) == []


def test_slow_log_finds_a_slow_script_of_our_db(clean_redis_url: str) -> None:
    """Against a real Redis, as redis-py returns the entries (a busy script of 3 ms)."""
    import redis

    from bench.percent import clients_of_db, slow_log

    busy = "local t = redis.call('TIME'); local s = t[1] * 1e6 + t[2]; local n = s\n"
    busy += "while n - s < 3000 do t = redis.call('TIME'); n = t[1] * 1e6 + t[2] end\nreturn 1"
    with slow_log(clean_redis_url) as client, redis.Redis.from_url(clean_redis_url) as ours:
        sha = ours.script_load(busy)
        client.slowlog_reset()
        ours.evalsha(sha, 0)
        db = stores.redis_db(clean_redis_url)
        calls = script_calls(client.slowlog_get(1000), clients_of_db(client, db), {sha: "busy"})
    assert [name for _, name in calls] == ["busy"] and calls[0][0] >= 3.0
