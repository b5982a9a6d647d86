"""The background loops of an API process (``service.sweeper``), running for real.

Other tests call ``Store.sweep()`` and ``Store.repair()`` by hand; here the
application's own upkeep task does the work, with no request to trigger it:
a deadline passes and its ``ttl`` event appears; a rollout a dead process
left marked is finished; and the loop outlives Redis being down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from litestar.testing import TestClient

from segments_core.redis_client import connect
from segments_dev.embedded import EmbeddedRedis
from service.app import create_app
from service.bucket import in_cohort
from service.settings import Settings
from service.store import Store
from tests.support import for_user
from tests.support.cluster import client as redis_client

PATIENCE_S = 60.0
"""How long to wait for the loop to do something before failing: a bound on
a failure, not a timed assertion (a ttl of 1 s, a loop every 50 ms)."""


def wait_until(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {PATIENCE_S:.0f} s")


def ttl_events(redis_url: str, user_id: int, slug: str) -> list[dict[str, str]]:
    r = redis_client(redis_url, decode_responses=True)
    try:
        entries = r.xrange(for_user(user_id).events)
    finally:
        r.close()
    return [
        fields
        for _, fields in entries
        if fields["u"] == str(user_id) and fields["s"] == slug and fields["o"] == "remove"
    ]


def upkeep_settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, sweep_interval_s=0.05)


def test_a_deadline_passes_and_the_sweeper_ends_it_with_no_request(
    clean_redis_url: str,
) -> None:
    with TestClient(create_app(upkeep_settings(clean_redis_url))) as client:
        assert client.post("/api/v1/segments", json={"slug": "SHORT"}).status_code == 201
        change = {"add": [{"slug": "SHORT", "ttl_seconds": 1}]}
        assert client.post("/api/v1/users/5/segments", json=change).status_code == 200
        assert ttl_events(clean_redis_url, 5, "SHORT") == []
        # No request from here on: only the upkeep task can end the membership.
        (event,) = wait_until(lambda: ttl_events(clean_redis_url, 5, "SHORT"), "the ttl event")
        assert event["r"] == "ttl"
        r = redis_client(clean_redis_url, decode_responses=True)
        try:
            assert r.hgetall(for_user(5).user(5)) == {}
        finally:
            r.close()
        assert client.get("/api/v1/users/5/segments").json()["segments"] == []


class Crash(Exception):
    pass


async def _create_then_die(redis_url: str, users: list[int], monkeypatch: Any) -> None:
    """A process that registers users, creates a 30% segment and dies before
    rolling it out: the segment is catalogued, its rollout marked, no member."""
    redis = await connect(redis_url)
    try:
        store = Store(redis)
        await store.register_users(users)

        async def dies(*_args: Any, **_kwargs: Any) -> Any:
            raise Crash

        monkeypatch.setattr(Store, "_rollout", dies)
        with pytest.raises(Crash):
            await store.create_segment("DIED", "", 3000)
        monkeypatch.undo()
    finally:
        await redis.aclose()


def test_the_janitor_finishes_a_rollout_a_dead_process_left(
    clean_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = list(range(1, 2001))
    asyncio.run(_create_then_die(clean_redis_url, users, monkeypatch))
    cohort = [u for u in users if in_cohort("DIED", u, 3000)]
    with TestClient(create_app(upkeep_settings(clean_redis_url))) as client:
        # Reading the segment sweeps, never repairs: only the janitor rolls out.
        wait_until(
            lambda: client.get("/api/v1/segments/DIED").json()["members"] == len(cohort),
            "the janitor's rollout",
        )
        found = client.post("/api/v1/users/lookup", json={"user_ids": users[:1000]}).json()
    members = {u["user_id"] for u in found["users"] if u["segments"] == ["DIED"]}
    assert members == {u for u in cohort if u <= 1000}


def test_the_loop_outlives_redis_being_down(
    private_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweeps: list[str] = []  # what each pass of the loop met
    sweep = Store.sweep

    async def recorded(self: Store) -> int:
        try:
            handled = await sweep(self)
        except Exception as exc:
            sweeps.append(type(exc).__name__)
            raise
        sweeps.append("ok")
        return handled

    monkeypatch.setattr(Store, "sweep", recorded)
    url = private_redis.url
    with TestClient(create_app(upkeep_settings(url))) as client:
        assert client.post("/api/v1/segments", json={"slug": "S"}).status_code == 201
        private_redis.stop()
        try:
            # No request while Redis is down: only the loop meets the outage.
            wait_until(lambda: sweeps and sweeps[-1] != "ok", "the loop meeting Redis down")
            failed = sweeps[-1]
        finally:
            private_redis.start()  # empty: this server keeps no data
        # Redis is back: the same loop ends a new deadline, with no request.
        wait_until(
            lambda: client.post("/api/v1/segments", json={"slug": "S"}).status_code == 201,
            "the API reaching Redis again",
        )
        change = {"add": [{"slug": "S", "ttl_seconds": 1}]}
        assert client.post("/api/v1/users/7/segments", json=change).status_code == 200
        wait_until(lambda: ttl_events(url, 7, "S"), "the ttl event after the outage")
    assert failed in ("ConnectionError", "TimeoutError"), sweeps
    assert sweeps[-1] == "ok"
