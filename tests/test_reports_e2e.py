"""History end to end: changes through the HTTP API, the archiver running,
then the report: rows, order, reasons, timestamps; and a report asked with
no wait after a change holds that change."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from service.app import create_app
from service.settings import Settings
from tests.support.history import archiver_in_thread, prepare_database

KEY = b"e2e-signing-key-0123456789"
REPORT = "/api/v1/history/report"


def _app(settings: Settings, clock: Any) -> Litestar:
    app = create_app(settings, clock=clock)
    assert any(REPORT in route.path for route in app.routes), "history routes not served"
    return app


@pytest.fixture
def history_client(clean_redis_url: str, pg_url: str, clock: Any) -> Iterator[TestClient[Any]]:
    db = prepare_database(pg_url)
    settings = Settings(
        redis_url=clean_redis_url, database_url=db, signing_key=KEY, sweep_interval_s=3600
    )
    app = _app(settings, clock)
    with archiver_in_thread(clean_redis_url, db), TestClient(app) as client:
        client.database_url = db  # type: ignore[attr-defined]
        yield client


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def report(client: TestClient[Any], **params: Any) -> list[list[str]]:
    link = client.get(REPORT, params=params)
    assert link.status_code == 200, link.text
    response = client.get(link.json()["url"])
    assert response.status_code == 200, response.text
    rows = list(csv.reader(io.StringIO(response.content.decode(), newline="")))
    assert rows[0] == ["user_id", "segment", "operation", "timestamp", "reason"]
    return rows[1:]


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response


def test_history_of_changes_expiry_and_deletions(
    history_client: TestClient[Any], clock: Any
) -> None:
    c = history_client
    stamps: dict[str, int] = {}

    def step(name: str) -> None:
        # A distinct instant per call, so the expected order is the time order.
        clock.advance(10)
        stamps[name] = clock()

    for slug in ("A", "B", "C"):
        ok(c.post("/api/v1/segments", json={"slug": slug}), 201)
    step("add1")
    ok(
        c.post(
            "/api/v1/users/1/segments", json={"add": ["A", {"slug": "B", "ttl_seconds": 5}, "C"]}
        )
    )
    step("add2")
    ok(c.post("/api/v1/users/2/segments", json={"add": ["A", "C"]}))
    deadline = stamps["add1"] + 5000
    clock.advance(6000)
    step("remove_c")
    # The change of user 1 first sweeps B, whose deadline passed: `ttl` at the deadline.
    ok(c.post("/api/v1/users/1/segments", json={"add": [], "remove": ["C"]}))
    step("remove_a")
    ok(c.post("/api/v1/users/1/segments", json={"add": [], "remove": ["A"]}))
    step("delete_c")
    ok(c.delete("/api/v1/segments/C"), 204)
    step("delete_user")
    ok(c.delete("/api/v1/users/2"), 204)

    period = dt.datetime.fromtimestamp(stamps["add1"] / 1000, dt.UTC).strftime("%Y-%m")
    rows = report(c, period=period)
    assert rows == [
        ["1", "A", "add", iso(stamps["add1"]), "manual"],
        ["1", "B", "add", iso(stamps["add1"]), "manual"],
        ["1", "C", "add", iso(stamps["add1"]), "manual"],
        ["2", "A", "add", iso(stamps["add2"]), "manual"],
        ["2", "C", "add", iso(stamps["add2"]), "manual"],
        ["1", "B", "remove", iso(deadline), "ttl"],
        ["1", "C", "remove", iso(stamps["remove_c"]), "manual"],
        ["1", "A", "remove", iso(stamps["remove_a"]), "manual"],
        ["2", "C", "remove", iso(stamps["delete_c"]), "segment_deleted"],
        ["2", "A", "remove", iso(stamps["delete_user"]), "user_deleted"],
    ]
    assert report(c, period=period, user_id=2) == [r for r in rows if r[0] == "2"]
    assert report(c, period=period, segment="C") == [r for r in rows if r[1] == "C"]

    # Lifecycle: history alone tells which segments existed when.
    with psycopg.connect(c.database_url) as conn:  # type: ignore[attr-defined]
        lifecycle = conn.execute(
            "SELECT segment, operation FROM segment_events ORDER BY ts, entry_ms, entry_seq"
        ).fetchall()
    assert lifecycle == [("A", "created"), ("B", "created"), ("C", "created"), ("C", "deleted")]


def test_percent_rollout_is_in_history(history_client: TestClient[Any], clock: Any) -> None:
    c = history_client
    ok(c.post("/api/v1/users", json={"user_ids": [11, 12, 13]}))
    clock.advance(10)
    created = clock()
    ok(c.post("/api/v1/segments", json={"slug": "ALL", "percent": 100}), 201)
    period = dt.datetime.fromtimestamp(created / 1000, dt.UTC).strftime("%Y-%m")
    rows = report(c, period=period, segment="ALL")
    assert sorted(rows) == [[str(u), "ALL", "add", iso(created), "percent"] for u in (11, 12, 13)]


def test_a_report_right_after_a_deadline_holds_the_ttl_removal(
    history_client: TestClient[Any], clock: Any
) -> None:
    c = history_client
    ok(c.post("/api/v1/segments", json={"slug": "BRIEF"}), 201)
    ok(c.post("/api/v1/users/5/segments", json={"add": [{"slug": "BRIEF", "ttl_seconds": 1}]}))
    deadline = clock() + 1000
    clock.advance(1000)  # the deadline is now: the membership is gone
    period = dt.datetime.fromtimestamp(deadline / 1000, dt.UTC).strftime("%Y-%m")
    rows = report(c, period=period, user_id=5)  # asked before any sweeper noticed
    assert rows[-1] == ["5", "BRIEF", "remove", iso(deadline), "ttl"]


def test_a_report_asked_with_no_wait_holds_the_last_change(
    history_client: TestClient[Any], clock: Any
) -> None:
    c = history_client
    ok(c.post("/api/v1/segments", json={"slug": "LIVE"}), 201)
    period = dt.datetime.fromtimestamp(clock() / 1000, dt.UTC).strftime("%Y-%m")
    for i in range(1, 11):
        clock.advance(10)
        op = {"add": ["LIVE"]} if i % 2 else {"add": [], "remove": ["LIVE"]}
        ok(c.post("/api/v1/users/7/segments", json=op))
        rows = report(c, period=period, user_id=7)  # no sleep in between
        assert len(rows) == i
        assert rows[-1] == ["7", "LIVE", "add" if i % 2 else "remove", iso(clock()), "manual"]
