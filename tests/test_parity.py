"""One behaviour, two paths: the hot path (``service.hotpath``) and the
framework answer every request to the two hot routes alike.

One corpus of requests (valid ones, each error row of SPEC §4 for
``GET``/``POST /api/v1/users/{id}/segments``, malformed ids and bodies,
``expand``, with and without tokens, Redis down, a 500) goes to the app with
the hot path on and to the app with it off, from the same starting state.
Each pair must get the same status, the same body (byte for byte) and the
same meaningful headers, and leave the user in the same state. The test also
checks that the hot path answered the cases it exists for, so it cannot pass
by handing everything to the framework.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import TestClient

from segments_dev.embedded import EmbeddedRedis
from service.app import create_app
from service.settings import Settings, Tokens
from tests.conftest import ManualClock
from tests.support import for_user
from tests.support.cluster import client as redis_client

MEANINGFUL_HEADERS = (
    "content-type",
    "content-length",
    "retry-after",
    "www-authenticate",
    "allow",
    "x-request-id",
)
"""Headers whose difference a client could notice (not the date, not the server)."""

USERS = (5, 6, 7)
"""User 5 is in A and B (B with a deadline), 6 is unknown, 7 has a broken key (500)."""

READER = {"authorization": "Bearer reader"}
WRITER = {"authorization": "Bearer writer"}
TOKENS = "reader:read,writer:write"
PLAIN = {"content-type": "text/plain"}


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hot: bool = False
    """The hot path must answer it itself (the rest it may hand on)."""


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _post(name: str, path: str, body: Any, *, hot: bool = False, raw: bool = False) -> Case:
    data = body if raw else _json(body)
    return Case(name, "POST", path, data, {"content-type": "application/json"}, hot=hot)


def corpus(now: datetime) -> list[Case]:
    """Every request of the corpus, without credentials."""
    user = "/api/v1/users/5/segments"
    future = (now + timedelta(hours=1)).isoformat()
    past = (now - timedelta(seconds=1)).isoformat()
    naive = "2099-01-01T00:00:00"
    at = {"expires_at": future}
    cases = [
        Case("lookup, member", "GET", user, hot=True),
        Case("lookup, unknown user", "GET", "/api/v1/users/6/segments", hot=True),
        Case("lookup, largest id", "GET", "/api/v1/users/9223372036854775807/segments", hot=True),
        Case("lookup, broken key: 500", "GET", "/api/v1/users/7/segments", hot=True),
        Case("expand=true", "GET", user + "?expand=true"),
        Case("expand=false", "GET", user + "?expand=false"),
        Case("expand=1", "GET", user + "?expand=1"),
        Case("expand=maybe", "GET", user + "?expand=maybe"),
        Case("unknown query parameter", "GET", user + "?foo=bar"),
        Case("empty query", "GET", user + "?"),
        Case("trailing slash", "GET", user + "/"),
        Case("HEAD", "HEAD", user),
        Case("PUT", "PUT", user, b"{}", {"content-type": "application/json"}),
        Case("DELETE", "DELETE", user),
    ]
    for bad in ("0", "-1", "007", "+5", "5.0", "1e3", "abc", "%205", "%D9%A5", "", "0x10"):
        cases.append(Case(f"GET id {bad!r}", "GET", f"/api/v1/users/{bad}/segments"))
    for bad in ("9223372036854775808", "99999999999999999999"):
        cases.append(Case(f"GET id {bad}", "GET", f"/api/v1/users/{bad}/segments"))
    posts: list[tuple[str, Any, bool]] = [
        ("add a slug", {"add": ["C"]}, True),
        ("add and remove", {"add": ["C"], "remove": ["A"]}, True),
        ("remove", {"remove": ["B"]}, True),
        ("empty change", {}, True),
        ("empty lists", {"add": [], "remove": []}, True),
        ("add with ttl", {"add": [{"slug": "C", "ttl_seconds": 60}]}, True),
        ("add with expires_at", {"add": [{"slug": "C", "expires_at": future}]}, True),
        ("add an object without deadline", {"add": [{"slug": "C"}]}, True),
        ("re-add with a new deadline", {"add": [{"slug": "B", "ttl_seconds": 5}]}, True),
        ("404 unknown segments, named", {"add": ["NOPE", "C", "ALSO_NOT"]}, True),
        ("404 unknown segment in remove", {"remove": ["NOPE"]}, True),
        ("400 expires_at in the past", {"add": [{"slug": "C", "expires_at": past}]}, True),
        ("400 expires_at without zone", {"add": [{"slug": "C", "expires_at": naive}]}, False),
        ("400 ttl and expires_at", {"add": [{"slug": "C", "ttl_seconds": 5, **at}]}, False),
        ("400 ttl 0", {"add": [{"slug": "C", "ttl_seconds": 0}]}, False),
        ("400 ttl negative", {"add": [{"slug": "C", "ttl_seconds": -1}]}, False),
        ("400 ttl as text", {"add": [{"slug": "C", "ttl_seconds": "60"}]}, False),
        ("400 ttl fractional", {"add": [{"slug": "C", "ttl_seconds": 1.5}]}, False),
        ("400 ttl over a century", {"add": [{"slug": "C", "ttl_seconds": 10**10}]}, False),
        ("400 slug twice in add", {"add": ["C", "C"]}, False),
        ("400 slug twice in remove", {"remove": ["A", "A"]}, False),
        ("400 slug in both lists", {"add": ["C"], "remove": ["C"]}, False),
        ("400 bad slug", {"add": ["bad slug"]}, False),
        ("400 slug with a final newline", {"add": ["C\n"]}, False),
        ("400 empty slug", {"add": [""]}, False),
        ("400 slug too long", {"add": ["x" * 101]}, False),
        ("400 unknown field", {"add": [], "extra": 1}, False),
        ("400 add not a list", {"add": "C"}, False),
        ("400 body is a list", ["C"], False),
        ("400 body is null", None, False),
        ("400 too many adds", {"add": [f"S{i}" for i in range(1001)]}, False),
    ]
    cases += [_post(name, user, body, hot=hot) for name, body, hot in posts]
    cases += [
        _post("400 malformed JSON", user, b'{"add": [', raw=True),
        _post("400 empty body", user, b"", raw=True),
        _post("400 not JSON", user, b"add=C", raw=True),
        Case("text/plain body", "POST", user, _json({"add": ["C"]}), PLAIN),
        Case("no content-type", "POST", user, _json({"add": ["C"]})),
        _post("POST ?expand=true", user + "?expand=true", {"add": ["C"]}),
        _post("POST unknown user", "/api/v1/users/6/segments", {"add": ["A"]}, hot=True),
        _post("POST broken key: 500", "/api/v1/users/7/segments", {"add": ["A"]}, hot=True),
        _post(
            "large valid body (over the hot path's limit)",
            user,
            b'{"add": ["C"]' + b" " * (100 * 1024) + b"}",
            raw=True,
        ),
        _post("413 over 1 MiB", user, b'{"add": ["C"]' + b" " * (1024 * 1024) + b"}", raw=True),
    ]
    for bad in ("0", "007", "abc", "9223372036854775808"):
        cases.append(_post(f"POST id {bad!r}", f"/api/v1/users/{bad}/segments", {"add": ["C"]}))
    return cases


AUTH_VARIANTS: dict[str, dict[str, str]] = {
    "no header": {},
    "reader": READER,
    "writer": WRITER,
    "unknown token": {"authorization": "Bearer nope"},
    "lowercase scheme": {"authorization": "bearer writer"},
    "basic scheme": {"authorization": "Basic d3JpdGVyOg=="},
    "no token": {"authorization": "Bearer"},
    "empty token": {"authorization": "Bearer "},
    "two spaces": {"authorization": "Bearer  writer"},
}


@dataclass
class Pair:
    """The same app twice: with the hot path (``hot``) and without (``cold``)."""

    hot: TestClient[Any]
    cold: TestClient[Any]
    redis_url: str
    admin: dict[str, str]
    answered_by_hot_path: set[str] = field(default_factory=set)

    def reset(self, now: datetime) -> None:
        """Users 5, 6, 7 as USERS says, through the framework."""
        r = redis_client(self.redis_url)
        r.delete(for_user(7).user(7))
        r.close()
        for uid in USERS:
            assert self.cold.delete(f"/api/v1/users/{uid}", headers=self.admin).status_code == 204
        until = (now + timedelta(minutes=30)).isoformat()
        change = {"add": ["A", {"slug": "B", "expires_at": until}]}
        r = self.cold.post("/api/v1/users/5/segments", json=change, headers=self.admin)
        assert r.status_code == 200, r.text
        r = redis_client(self.redis_url)
        r.set(for_user(7).user(7), "not a hash")  # WRONGTYPE in the scripts: a bug, 500
        r.close()

    def state(self) -> list[Any]:
        r = redis_client(self.redis_url)
        try:
            return [r.hgetall(for_user(uid).user(uid)) for uid in USERS if uid != 7]
        finally:
            r.close()


def answer(client: TestClient[Any], case: Case, headers: dict[str, str]) -> dict[str, Any]:
    response = client.request(
        case.method, case.path, content=case.body, headers={**case.headers, **headers}
    )
    headers = {name: response.headers.get(name) for name in MEANINGFUL_HEADERS}
    if headers["allow"]:  # a set of methods: Litestar's order varies between app instances
        headers["allow"] = ", ".join(sorted(headers["allow"].split(", ")))
    return {"status": response.status_code, "body": response.content, "headers": headers}


def spy_on_hot_path(app: Any, answered: set[str]) -> None:
    """Record which requests the hot path answered itself (it returns None then)."""
    hot = app.state.hot_path
    handle = hot.handle

    async def recording(scope: dict[str, Any], receive: Any, send: Any) -> Any:
        result = await handle(scope, receive, send)
        if result is None:
            answered.add(dict(scope["headers"]).get(b"x-case", b"").decode())
        return result

    hot.handle = recording


@pytest.fixture
def fixed_clock() -> ManualClock:
    return ManualClock(int(datetime(2030, 6, 1, 12, 0, tzinfo=UTC).timestamp() * 1000))


def open_pair(redis_url: str, clock: ManualClock, tokens: str) -> Iterator[Pair]:
    settings = Settings(redis_url=redis_url, tokens=Tokens.parse(tokens), sweep_interval_s=3600)
    hot_app = create_app(settings, clock=clock, hot_path=True)
    cold_app = create_app(settings, clock=clock, hot_path=False)
    with TestClient(hot_app) as hot, TestClient(cold_app) as cold:
        assert cold_app.state.hot_path is None and hot_app.state.hot_path is not None
        pair = Pair(hot, cold, redis_url, WRITER if tokens else {})
        spy_on_hot_path(hot_app, pair.answered_by_hot_path)
        for slug in ("A", "B", "C"):
            r = cold.post("/api/v1/segments", json={"slug": slug}, headers=pair.admin)
            assert r.status_code == 201, r.text
        yield pair


def compare(pair: Pair, case: Case, now: datetime, headers: dict[str, str], label: str) -> None:
    tagged = {**headers, "x-case": label, "x-request-id": f"parity-{abs(hash(label))}"}
    pair.reset(now)
    hot = answer(pair.hot, case, tagged)
    hot_state = pair.state()
    pair.reset(now)
    cold = answer(pair.cold, case, tagged)
    cold_state = pair.state()
    assert hot == cold, f"{label}: the hot path answered differently"
    assert hot_state == cold_state, f"{label}: the hot path left another state"


@pytest.fixture
def open_app_pair(clean_redis_url: str, fixed_clock: ManualClock) -> Iterator[Pair]:
    yield from open_pair(clean_redis_url, fixed_clock, "")


@pytest.fixture
def secured_app_pair(clean_redis_url: str, fixed_clock: ManualClock) -> Iterator[Pair]:
    yield from open_pair(clean_redis_url, fixed_clock, TOKENS)


def _now(clock: ManualClock) -> datetime:
    return datetime.fromtimestamp(clock.now_ms / 1000, UTC)


def test_without_tokens_both_paths_answer_alike(
    open_app_pair: Pair, fixed_clock: ManualClock
) -> None:
    now = _now(fixed_clock)
    cases = corpus(now)
    for case in cases:
        compare(open_app_pair, case, now, {}, case.name)
    must = {case.name for case in cases if case.hot}
    assert must <= open_app_pair.answered_by_hot_path, must - open_app_pair.answered_by_hot_path


def test_with_tokens_both_paths_answer_alike(
    secured_app_pair: Pair, fixed_clock: ManualClock
) -> None:
    now = _now(fixed_clock)
    cases = corpus(now)
    for case in cases:  # the whole corpus with the token of its scope
        compare(secured_app_pair, case, now, WRITER if case.method != "GET" else READER, case.name)
    must = {case.name for case in cases if case.hot}
    assert must <= secured_app_pair.answered_by_hot_path
    # Every credential on the main forms of both routes: 401, 403, or answered.
    names = ("lookup, member", "add a slug", "404 unknown segments, named")
    main = [case for case in cases if case.name in names]
    for case in main:
        for variant, headers in AUTH_VARIANTS.items():
            compare(secured_app_pair, case, now, headers, f"{case.name} / {variant}")
    assert {"lookup, member / reader", "add a slug / writer"} <= (
        secured_app_pair.answered_by_hot_path
    )


def test_with_redis_down_both_paths_answer_503_alike(
    private_redis: EmbeddedRedis, fixed_clock: ManualClock
) -> None:
    pairs = open_pair(private_redis.url, fixed_clock, "")
    pair = next(pairs)
    try:
        private_redis.stop()
        cases = [
            Case("lookup, Redis down", "GET", "/api/v1/users/5/segments", hot=True),
            _post("change, Redis down", "/api/v1/users/5/segments", {"add": ["C"]}, hot=True),
            Case("expand, Redis down", "GET", "/api/v1/users/5/segments?expand=true"),
        ]
        for case in cases:
            tagged = {"x-case": case.name, "x-request-id": "down"}
            hot = answer(pair.hot, case, tagged)
            cold = answer(pair.cold, case, tagged)
            assert hot["status"] == 503 and hot["headers"]["retry-after"], hot
            assert hot == cold, case.name
        assert {"lookup, Redis down", "change, Redis down"} <= pair.answered_by_hot_path
    finally:
        private_redis.start()
        pairs.close()
