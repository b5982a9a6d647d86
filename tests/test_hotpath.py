"""The hot routes answered before routing behave exactly as the framework's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import uvloop
from litestar.testing import TestClient

from service.app import create_app
from service.resp import RespConnection
from service.settings import Settings, Tokens
from tests.support.cluster import client as cluster_client


@pytest.fixture
def secured(clean_redis_url: str) -> Iterator[Any]:
    settings = Settings(
        redis_url=clean_redis_url, tokens=Tokens.parse("reader:read,writer:write")
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_tokens_are_enforced_on_the_hot_routes(secured: Any) -> None:
    write = {"authorization": "Bearer writer"}
    read = {"authorization": "Bearer reader"}
    assert secured.post("/api/v1/segments", json={"slug": "A"}).status_code == 401
    assert secured.post("/api/v1/segments", json={"slug": "A"}, headers=read).status_code == 403
    assert secured.post("/api/v1/segments", json={"slug": "A"}, headers=write).status_code == 201
    assert secured.get("/api/v1/segments", headers=read).status_code == 200
    path = "/api/v1/users/5/segments"
    assert secured.get(path).status_code == 401
    assert secured.get(path, headers={"authorization": "Bearer nope"}).status_code == 403
    assert secured.get(path, headers=read).json() == {"user_id": 5, "segments": []}
    assert secured.post(path, json={"add": ["A"]}).status_code == 401
    assert secured.post(path, json={"add": ["A"]}, headers=read).status_code == 403
    r = secured.post(path, json={"add": ["A"]}, headers=write)
    assert r.json() == {"user_id": 5, "segments": ["A"]}
    assert secured.get(path, headers=read).json()["segments"] == ["A"]
    assert secured.get("/healthz").status_code == 200  # operations stay open


def test_large_and_malformed_change_bodies_reach_the_framework(client: Any) -> None:
    client.post("/api/v1/segments", json={"slug": "A"})
    padded = b'{"add": ["A"], "remove": []' + b" " * (100 * 1024) + b"}"
    r = client.post(
        "/api/v1/users/5/segments", content=padded, headers={"content-type": "application/json"}
    )
    assert r.status_code == 200
    assert r.json() == {"user_id": 5, "segments": ["A"]}
    headers = {"content-type": "application/json"}
    r = client.post("/api/v1/users/5/segments", content=b'{"add": [', headers=headers)
    assert r.status_code == 400
    r = client.post("/api/v1/users/5/segments", json={"add": ["NOPE"]})
    assert r.status_code == 404
    assert r.json()["extra"] == {"unknown": ["NOPE"]}


def test_resp_connection_under_uvloop(single_redis_url: str) -> None:
    """uvloop is what `segments serve` runs on; its transports differ from asyncio's."""

    async def main() -> list[Any]:
        conn = RespConnection(single_redis_url)
        try:
            await conn.execute("SET", "k", "v")
            replies = await asyncio.gather(*(conn.execute("INCR", "n") for _ in range(100)))
            return [await conn.execute("GET", "k"), sorted(replies)[-1]]
        finally:
            await conn.aclose()

    assert uvloop.run(main()) == ["v", 100]


async def test_resp_connection_reports_errors_and_reconnects(single_redis_url: str) -> None:
    from redis.exceptions import ResponseError

    conn = RespConnection(single_redis_url)
    try:
        with pytest.raises(ResponseError):
            await conn.execute("NOSUCHCOMMAND")
        own_id = await conn.execute("CLIENT", "ID")
        killer = redis.Redis.from_url(single_redis_url)
        killer.client_kill_filter(_id=own_id)  # only our own connection
        killer.close()
        await asyncio.sleep(0.05)
        assert await conn.execute("PING") == "PONG"  # a new connection, by itself
        assert await conn.execute("CLIENT", "ID") != own_id
    finally:
        await conn.aclose()


def test_batch_lookup_survives_a_script_flush(client: Any, clean_redis_url: str) -> None:
    client.post("/api/v1/segments", json={"slug": "A"})
    client.post("/api/v1/users/3/segments", json={"add": ["A"]})
    cluster_client(clean_redis_url).script_flush()  # on every master of a cluster
    r = client.post("/api/v1/users/lookup", json={"user_ids": [3, 4]})
    assert r.json() == {
        "users": [{"user_id": 3, "segments": ["A"]}, {"user_id": 4, "segments": []}]
    }
