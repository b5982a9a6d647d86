"""A whole ``segments bench`` run, tiny: its own service on the tests' Redis and a
fresh PostgreSQL database, every measurement, the JSON report. The figures are
not judged (no timing is asserted); that each was taken, and is consistent
with the data set the bench built, is. Needs wrk."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import redis

from bench import cli
from bench.results import read_json
from segments_core.keys import GLOBAL

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed"),
]

USERS = 300
PERCENT_USERS = 3_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_small_run_measures_everything(
    single_redis_url: str, fresh_pg_url: str, tmp_path: Path
) -> None:
    # The bench measures one Redis (it wipes the database it is given): on a
    # cluster run of the suite it gets a private single server.
    clean_redis_url = single_redis_url
    code = cli.main(
        [
            *("--redis-url", clean_redis_url, "--database-url", fresh_pg_url),
            *("--port", str(_free_port()), "--workers", "1", "--shards", "4"),
            *("--users", str(USERS), "--percent-users", str(PERCENT_USERS)),
            *("--scenarios", "lookup,change,percent,percent-100,hotpath,csv"),
            *("--duration", "1", "--warmup", "0", "--connections", "4"),
            *("--out", str(tmp_path), "--no-chart"),
        ]
    )
    assert code == 0
    (run_dir,) = tmp_path.iterdir()
    report = read_json(run_dir / "bench.json")
    assert not report.notes, report.notes
    with redis.Redis.from_url(clean_redis_url) as client:
        assert client.get(GLOBAL.shards) == b"4"  # --shards set up the deployment
    assert report.settings["shards"] == 4

    assert report.seed is not None and report.seed.memberships == USERS * 5
    assert report.archiver is not None and report.archiver.events >= USERS * 5
    # At 1,500 memberships the allocator's noise (tens of KiB) outweighs the
    # memberships alone, which may come out negative; the whole data set may not.
    assert report.memory is not None and report.memory.memberships == USERS * 5
    assert report.memory.data_set_bytes_per_membership > 0

    assert [r.scenario for r in report.runs] == [
        "ceiling",
        "lookup",
        "ceiling",
        "change",
        "ceiling",
    ]
    assert all(r.errors.total == 0 and r.requests > 0 for r in report.runs)
    assert {s.scenario for s in report.scenarios} == {"ceiling", "lookup", "change"}

    assert report.percent is not None and report.percent.known_users == PERCENT_USERS
    phases = {p.name: p for p in report.percent.phases}
    assert list(phases) == [
        f"register to {PERCENT_USERS:,} users",
        *("create 10%", "delete 10%", "create 100%", "delete 100%"),
    ]
    # 100%: every known user; 10%: about a tenth (the probe may make a few more known)
    assert PERCENT_USERS <= (phases["create 100%"].members or 0) <= PERCENT_USERS + 200
    assert 150 <= (phases["create 10%"].members or 0) <= 500
    assert all(p.script_calls_over_1ms is not None and p.probe_lookups > 0 for p in phases.values())

    assert report.hotpath is not None and report.hotpath.calls > 0
    # the CSV holds this month's history: at least the seeding and the 100% rollout
    assert report.csv is not None and report.csv.rows >= USERS * 5 + PERCENT_USERS
    assert {c.name for c in report.checks if c.measured is not None} >= {
        "lookup / ceiling",
        "change / lookup",
        "archiver events/s",
        "10% segment creation (s)",
        "CSV rows/s",
        "Redis bytes per membership",
    }
