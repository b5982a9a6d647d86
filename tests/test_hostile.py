"""What hostile testing found (issue 9), each case checked again: a clear 4xx
for every bad input, no 500, the HTTP method rules, report links verified as
signed, 503 while Redis cannot answer, slow clients cut off, and an archiver
that refuses a database it cannot use and outlives a Redis that lost its data.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from litestar.testing import TestClient
from redis.exceptions import TimeoutError as RedisTimeoutError

from segments_core import redis_client
from segments_core.keys import GLOBAL
from segments_dev.embedded import EmbeddedRedis, free_port, redis_server_binary
from service import resp
from service.app import create_app
from service.settings import Settings, Tokens
from tests.support import for_user
from tests.support.cluster import client as redis_client_for
from tests.support.history import (
    Event,
    add_events,
    app_with_archiver,
    archived,
    running_archiver,
    wait_for,
)
from tests.support.serve import ServeProcess

JSON = {"content-type": "application/json"}
KEY = b"hostile-signing-key-0123456789"


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response


@pytest.fixture
def secured(clean_redis_url: str) -> Iterator[TestClient[Any]]:
    tokens = Tokens.parse("reader:read,writer:write")
    app = create_app(Settings(redis_url=clean_redis_url, tokens=tokens, sweep_interval_s=3600))
    with TestClient(app) as client:
        yield client


# --- ids, percents, text ------------------------------------------------------------

OTHER_SPELLINGS = ["1.0", "1e3", "0.5e1", "007", "+5", "5.0", "1_000", "%D9%A5"]


@pytest.mark.parametrize("spelling", OTHER_SPELLINGS)
def test_ids_in_another_spelling_are_400_on_every_route(client: Any, spelling: str) -> None:
    ok(client.post("/api/v1/segments", json={"slug": "A"}), 201)
    path = f"/api/v1/users/{spelling}"
    for response in (
        client.get(f"{path}/segments"),
        client.get(f"{path}/segments?expand=true"),
        client.post(f"{path}/segments", json={"add": ["A"]}),
        client.delete(path),
        client.get("/api/v1/history/report", params={"period": "2024-01", "user_id": spelling}),
    ):
        assert response.status_code == 400, (response.request.url, response.text)
    # Nothing was applied to the user the spelling would have meant.
    for user_id in (1, 5, 7, 1000):
        assert client.get(f"/api/v1/users/{user_id}/segments").json()["segments"] == []


@pytest.mark.parametrize("percent", [99.999999999, 12.345, 0.001, 50.125])
def test_a_percent_with_more_than_two_decimals_is_400_never_rounded(
    client: Any, percent: float
) -> None:
    ok(client.post("/api/v1/segments", json={"slug": "P", "percent": percent}), 400)
    ok(client.get("/api/v1/segments/P"), 404)
    ok(client.post("/api/v1/segments", json={"slug": "Q", "percent": 10.5}), 201)
    ok(client.patch("/api/v1/segments/Q", json={"percent": percent}), 400)
    assert client.get("/api/v1/segments/Q").json()["percent"] == 10.5


def test_a_description_the_archive_cannot_store_is_400(client: Any) -> None:
    ok(client.post("/api/v1/segments", json={"slug": "N", "description": "a\u0000b"}), 400)
    ok(client.get("/api/v1/segments/N"), 404)
    ok(client.post("/api/v1/segments", json={"slug": "N", "description": "ok"}), 201)
    ok(client.patch("/api/v1/segments/N", json={"description": "\u0000"}), 400)
    ok(client.post("/api/v1/segments", json={"slug": "L", "description": "x" * 1001}), 400)
    raw = b'{"slug": "S", "description": "\\ud800"}'
    ok(client.post("/api/v1/segments", content=raw, headers=JSON), 400)
    assert client.get("/api/v1/segments/N").json()["description"] == "ok"


# --- bodies: one rule for every endpoint --------------------------------------------

BODIES = [
    ("POST", "/api/v1/segments", b'{"slug": "D1", "slug": "D2"}'),
    ("PATCH", "/api/v1/segments/A", b'{"percent": 1, "percent": 100}'),
    ("POST", "/api/v1/users", b'{"user_ids": [1], "user_ids": [2]}'),
    ("POST", "/api/v1/users/lookup", b'{"user_ids": [1], "user_ids": [2]}'),
    ("POST", "/api/v1/users/5/segments", b'{"add": ["A"], "add": []}'),
    ("POST", "/api/v1/users/5/segments", b'{"add": [{"slug": "B", "slug": "A"}]}'),
]


@pytest.mark.parametrize(("method", "path", "body"), BODIES)
def test_duplicate_keys_in_a_body_are_400(
    client: Any, method: str, path: str, body: bytes
) -> None:
    ok(client.post("/api/v1/segments", json={"slug": "A"}), 201)
    ok(client.post("/api/v1/segments", json={"slug": "B"}), 201)
    response = client.request(method, path, content=body, headers=JSON)
    assert response.status_code == 400, response.text
    assert "twice" in response.json()["detail"]
    assert client.get("/api/v1/users/5/segments").json()["segments"] == []
    assert client.get("/api/v1/segments/A").json()["percent"] is None


GOOD_BODIES = [
    ("POST", "/api/v1/segments", b'{"slug": "D1"}'),
    ("PATCH", "/api/v1/segments/A", b'{"percent": 100}'),
    ("POST", "/api/v1/users", b'{"user_ids": [5]}'),
    ("POST", "/api/v1/users/lookup", b'{"user_ids": [5]}'),
    ("POST", "/api/v1/users/5/segments", b'{"add": ["A"]}'),
]


@pytest.mark.parametrize(("method", "path", "body"), GOOD_BODIES)
@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "text/json", None]
)
def test_json_sent_as_another_media_type_is_415(
    client: Any, method: str, path: str, body: bytes, content_type: str | None
) -> None:
    ok(client.post("/api/v1/segments", json={"slug": "A"}), 201)
    headers = {"content-type": content_type} if content_type else {}
    request = client.build_request(method, path, content=body, headers=headers)
    assert request.headers.get("content-type") == content_type
    response = client.send(request)
    assert response.status_code == 415, response.text
    assert client.get("/api/v1/users/5/segments").json()["segments"] == []
    assert client.get("/api/v1/segments/A").json()["percent"] is None
    # The same body declared as JSON is accepted.
    assert client.request(method, path, content=body, headers=JSON).status_code in (200, 201)


# --- methods ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/segments",
        "/api/v1/segments/A",
        "/api/v1/segments/NOPE",
        "/api/v1/users/5/segments",
        "/api/v1/users/5/segments?expand=true",
        "/api/v1/users/1.0/segments",
        "/healthz",
        "/schema/openapi.json",
    ],
)
def test_head_answers_as_get_without_a_body(client: Any, path: str) -> None:
    ok(client.post("/api/v1/segments", json={"slug": "A"}), 201)
    ok(client.post("/api/v1/users/5/segments", json={"add": ["A"]}))
    get, head = client.get(path), client.head(path)
    assert head.status_code == get.status_code
    assert head.content == b""
    for name in ("content-type", "content-length"):
        assert head.headers.get(name) == get.headers.get(name), name


def test_head_on_a_route_without_get_is_405(client: Any) -> None:
    response = client.head("/api/v1/users/lookup")
    assert response.status_code == 405
    assert "POST" in response.headers["allow"]


def test_options_allow_names_every_method_of_every_path(client: Any) -> None:
    schema = ok(client.get("/schema/openapi.json")).json()
    for template, operations in schema["paths"].items():
        path = template.replace("{user_id}", "5").replace("{slug}", "A")
        response = client.options(path)
        assert response.status_code == 204, path
        documented = {m.upper() for m in operations if m in ("get", "post", "patch", "delete")}
        expected = documented | {"OPTIONS"} | ({"HEAD"} if "GET" in documented else set())
        allow = {m.strip() for m in response.headers["allow"].split(",")}
        assert allow == expected, path


def test_the_batch_lookup_needs_only_the_read_scope(secured: TestClient[Any]) -> None:
    read, write = {"authorization": "Bearer reader"}, {"authorization": "Bearer writer"}
    body = {"user_ids": [5, 6]}
    assert secured.post("/api/v1/users/lookup", json=body).status_code == 401
    assert secured.post("/api/v1/users/lookup", json=body, headers=read).status_code == 200
    assert secured.post("/api/v1/users/lookup", json=body, headers=write).status_code == 200
    # Every other POST still needs the write scope.
    assert secured.post("/api/v1/users", json=body, headers=read).status_code == 403
    change = {"add": []}
    assert secured.post("/api/v1/users/5/segments", json=change, headers=read).status_code == 403


# --- deadlines ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "expires_at", ["9999-12-31T23:59:59-01:00", "9999-06-01T00:00:00Z", "1970-01-01T00:00:00Z"]
)
def test_a_deadline_beyond_the_bound_or_at_the_epoch_is_400(
    client: Any, expires_at: str
) -> None:
    ok(client.post("/api/v1/segments", json={"slug": "A"}), 201)
    change = {"add": [{"slug": "A", "expires_at": expires_at}]}
    ok(client.post("/api/v1/users/5/segments", json=change), 400)
    ok(client.get("/api/v1/users/5/segments?expand=true"))
    assert client.get("/api/v1/users/5/segments").json()["segments"] == []


def test_a_deadline_stored_in_the_year_10000_still_reads(client: Any, clean_redis_url: str) -> None:
    """State written before deadlines were bounded: reads must not fail on it."""
    ok(client.post("/api/v1/segments", json={"slug": "A"}), 201)
    ok(client.post("/api/v1/users/5/segments", json={"add": ["A"]}))
    r = redis_client_for(clean_redis_url)
    try:
        (field,) = r.hkeys(for_user(5).user(5))
        r.hset(for_user(5).user(5), field, str(253_402_300_800_000 + 3_599_000))
    finally:
        r.close()
    expanded = ok(client.get("/api/v1/users/5/segments?expand=true")).json()
    assert expanded["segments"] == [{"slug": "A", "expires_at": "9999-12-31T23:59:59.999000Z"}]
    assert client.get("/api/v1/users/5/segments").json()["segments"] == ["A"]


# --- a 500 is logged ----------------------------------------------------------------


def test_a_500_inside_the_framework_is_logged_with_its_traceback(
    client: Any, clean_redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    r = redis_client_for(clean_redis_url)
    try:
        r.hset(GLOBAL.segments, "BROKEN", "not json")  # a catalogue entry no one can read
    finally:
        r.close()
    with caplog.at_level(logging.ERROR):
        response = client.get("/api/v1/segments/BROKEN")
    assert response.status_code == 500
    assert response.json() == {"status_code": 500, "detail": "Internal Server Error"}
    logged = [rec for rec in caplog.records if rec.levelno >= logging.ERROR and rec.exc_info]
    assert logged, "the 500 left no log line with a traceback"
    exc_type = logged[-1].exc_info[0] if logged[-1].exc_info else None
    assert exc_type is not None and exc_type.__name__ == "JSONDecodeError"


# --- report links -------------------------------------------------------------------


@pytest.fixture
def history(clean_redis_url: str, pg_url: str) -> Iterator[TestClient[Any]]:
    with app_with_archiver(clean_redis_url, pg_url, KEY) as client:
        yield client


def _link(client: TestClient[Any], **params: Any) -> tuple[str, str]:
    url = ok(client.get("/api/v1/history/report", params=params)).json()["url"]
    base, _, query = url.partition("?")
    return base, query


@pytest.mark.parametrize("period", ["9999-12", "1970-01"])
def test_the_first_and_last_periods_download(history: TestClient[Any], period: str) -> None:
    base, query = _link(history, period=period)
    response = ok(history.get(f"{base}?{query}"))
    assert list(csv.reader(io.StringIO(response.text))) == [
        ["user_id", "segment", "operation", "timestamp", "reason"]
    ]


@pytest.mark.parametrize(
    "params",
    [
        {"period": "10000-01"},
        {"period": "1969-12"},
        {"period": "2024-01\n"},
        {"period": "2024-01", "segment": "A\n"},
        {"period": "2024-01", "user_id": "42\n"},
    ],
)
def test_report_requests_out_of_bounds_or_with_a_newline_are_400(
    history: TestClient[Any], params: dict[str, str]
) -> None:
    ok(history.get("/api/v1/history/report", params=params), 400)


def test_an_altered_link_is_403_even_when_it_reads_the_same(history: TestClient[Any]) -> None:
    ok(history.post("/api/v1/segments", json={"slug": "A"}), 201)
    ok(history.post("/api/v1/users/42/segments", json={"add": ["A"]}))
    period = time.strftime("%Y-%m", time.gmtime())
    base, query = _link(history, period=period, user_id=42, segment="A")
    fields = dict(part.split("=", 1) for part in query.split("&"))
    expires = fields["expires"]
    arabic = "".join(chr(0x660 + int(d)) for d in expires)
    altered = [
        query.replace(f"expires={expires}", f"expires=0{expires}"),
        query.replace(f"expires={expires}", f"expires={arabic}"),
        query.replace("user_id=42", "user_id=42%0A"),
        query.replace("user_id=42", "user_id=042"),
        query + "&segment=A",
        query + "&segment=B",
        query.replace("segment=A", "segment=%41"),
        query.replace("period=", "x=1&period="),
        "&".join(reversed(query.split("&"))),
        query.replace(f"expires={expires}", "expires=" + "9" * 4301),
        query.replace(f"expires={expires}", "expires=" + "9" * 50_000),
        query.split("&sig=")[0],
        "",
    ]
    rows = list(csv.reader(io.StringIO(ok(history.get(f"{base}?{query}")).text)))
    assert rows[1][:3] == ["42", "A", "add"]
    for changed in altered:
        response = history.get(f"{base}?{changed}")
        assert response.status_code == 403, (changed[:120], response.text)


# --- Redis that cannot answer: 503 on both paths ------------------------------------

BOTH_PATHS = [
    ("GET", "/api/v1/users/5/segments", None),  # the hot path
    ("POST", "/api/v1/users/5/segments", {"add": ["A"]}),  # the hot path
    ("GET", "/api/v1/users/5/segments?expand=true", None),  # the framework
    ("POST", "/api/v1/users/lookup", {"user_ids": [5, 6]}),  # the framework
    ("GET", "/api/v1/segments/A", None),  # the framework, redis-py
]


def _all_503(client: TestClient[Any]) -> list[float]:
    took = []
    for method, path, body in BOTH_PATHS:
        started = time.monotonic()
        response = client.request(method, path, json=body)
        took.append(round(time.monotonic() - started, 2))
        assert response.status_code == 503, (method, path, response.text)
        assert response.headers["retry-after"] == "1"
        assert response.json()["detail"] == "storage unavailable, retry shortly"
    return took


def test_the_request_budget_of_a_redis_that_does_not_answer_is_under_2_s() -> None:
    """The bound docs/api.md promises, as configured: a command waits at most
    COMMAND_TIMEOUT_S (redis-py: the socket timeout, never retried; the hot
    path's connection: its watchdog's period more)."""
    assert resp.COMMAND_TIMEOUT_S + resp.WATCHDOG_INTERVAL_S < 2.0
    assert redis_client.COMMAND_TIMEOUT_S < 2.0
    assert redis_client.CONNECT_TIMEOUT_S * 2 + 0.1 < 2.0  # a refused connect, retried once


async def test_the_client_does_not_retry_a_timeout(single_redis_url: str) -> None:
    """(On a Redis Cluster, redis-py's cluster client has retries of its own:
    the 2 s bound is the single Redis's; docs/api.md.)"""
    client = await redis_client.connect(single_redis_url)
    try:
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        assert kwargs["socket_timeout"] == redis_client.COMMAND_TIMEOUT_S
        retried = kwargs["retry"]._supported_errors
        assert not any(issubclass(RedisTimeoutError, e) for e in retried)
        assert not any(issubclass(TimeoutError, e) for e in retried)
    finally:
        await client.aclose()


def test_a_frozen_redis_answers_503_on_both_paths(private_redis: EmbeddedRedis) -> None:
    """Redis stopped with SIGSTOP (it accepts connections, answers nothing)."""
    settings = Settings(redis_url=private_redis.url, sweep_interval_s=3600)
    with TestClient(create_app(settings)) as client:
        ok(client.post("/api/v1/segments", json={"slug": "A"}), 201)
        pid = private_redis.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            took = _all_503(client)
        finally:
            os.kill(pid, signal.SIGCONT)
        print("seconds to each 503:", took)
        ok(client.get("/api/v1/users/5/segments"))  # and back once Redis is


class LoadingRedis:
    """A real redis-server restarted on the same port into a long load of its
    RDB file (``key-load-delay``): it answers ``-LOADING`` meanwhile."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = Path(tempfile.mkdtemp(prefix="segments-loading-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--appendonly", "no", *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def reply(self, *command: str) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(f"*{len(command)}\r\n".encode() + b"".join(
                f"${len(c)}\r\n{c}\r\n".encode() for c in command
            ))  # fmt: skip
            return s.recv(1000)

    def restart_loading(self) -> None:
        """Restarts into a load of ~10 s. Redis answers other clients (with
        -LOADING) every 2 MB it loads: 50 MB of incompressible values, 2 ms
        a key, is ~10 s of loading with an answer every ~0.4 s."""
        client = redis.Redis.from_url(self.url)
        try:
            pipe = client.pipeline(transaction=False)
            for i in range(5000):
                pipe.set(f"filler:{i}", os.urandom(10_000))
            pipe.execute()
            client.save()
        finally:
            client.close()
        self.stop()
        self.start("--key-load-delay", "2000")  # us a key

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _redis_binaries() -> list[str]:
    found = [str(redis_server_binary())]  # the embedded one (Redis 6.2)
    machine = shutil.which("redis-server")  # the machine's, where there is one
    if machine and os.path.realpath(machine) != os.path.realpath(found[0]):
        found.append(machine)
    return found


@pytest.mark.parametrize("binary", _redis_binaries())
def test_a_loading_redis_answers_503_on_both_paths(binary: str) -> None:
    server = LoadingRedis(binary)
    try:
        server.start()
        settings = Settings(redis_url=server.url, sweep_interval_s=3600)
        with TestClient(create_app(settings)) as client:
            ok(client.post("/api/v1/segments", json={"slug": "A"}), 201)
            server.restart_loading()
            assert server.reply("PING").startswith(b"-LOADING"), server.reply("PING")
            _all_503(client)
            assert server.reply("PING").startswith(b"-LOADING")  # all asked while loading
    finally:
        server.close()


# --- slow clients, against `segments serve` -----------------------------------------


@pytest.fixture
def served(clean_redis_url: str) -> Iterator[ServeProcess]:
    env = {
        "REDIS_URL": clean_redis_url,
        "SEGMENTS_HEADER_TIMEOUT": "1",
        "SEGMENTS_BODY_TIMEOUT": "1",
    }
    env.pop("DATABASE_URL", None)
    with ServeProcess({**os.environ, **env}) as server:
        yield server


PATIENCE_S = 20.0
"""How long the slow client waits for the server to give up on it: far more
than the server's 1 s, far less than the 75 s it used to hold on."""


def _slow_client(server: ServeProcess, data: bytes) -> bytes:
    """Sends ``data``, then nothing more; what the server answers before it closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE_S) as s:
        if data:
            s.sendall(data)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
        return received


def test_a_client_that_never_finishes_its_headers_gets_408(served: ServeProcess) -> None:
    answer = _slow_client(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert _slow_client(served, b"").startswith(b"HTTP/1.1 408 ")  # connected, said nothing


def test_a_body_shorter_than_its_length_is_cut_off(served: ServeProcess) -> None:
    head = (
        b"POST /api/v1/users/lookup HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    assert _slow_client(served, head + b'{"user_ids": [') == b""


def test_a_huge_header_block_is_431(served: ServeProcess) -> None:
    data = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1024 * 1024) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", served.port), timeout=PATIENCE_S) as s:
        with contextlib.suppress(OSError):  # the server may close before it read all
            s.sendall(data)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 431 ")


def _response(s: socket.socket) -> bytes:
    """One whole response (headers, and a body of its Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, "connection closed"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, "connection closed"
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_patient_keep_alive_client_is_served(served: ServeProcess) -> None:
    """Bounds on reading a request, not on idling between requests (keep-alive)."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", served.port), timeout=PATIENCE_S) as s:
        s.sendall(request)
        assert _response(s).startswith(b"HTTP/1.1 200 ")
        time.sleep(1.5)  # longer than the header timeout, shorter than keep-alive's 5 s
        s.sendall(request)
        assert _response(s).startswith(b"HTTP/1.1 200 ")
    response = httpx.post(
        f"{served.url}/api/v1/users/lookup", json={"user_ids": [1]}, timeout=PATIENCE_S
    )
    assert response.status_code == 200


# --- the archiver -------------------------------------------------------------------


def _archiver(database_url: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    return subprocess.run(
        [sys.executable, "-m", "segments_cli", "archiver"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _with_database(url: str, database: str, user: str | None = None) -> str:
    scheme, _, rest = url.partition("://")
    creds, _, hostpart = rest.rpartition("@")
    host = hostpart.split("/")[0]
    if user is not None:
        creds = user
    return f"{scheme}://{creds + '@' if creds else ''}{host}/{database}"


def test_an_archiver_given_a_database_it_cannot_use_exits_at_start(
    pg_server_url: str, fresh_pg_url: str, redis_url: str
) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    cases = {
        "unknown database": _with_database(pg_server_url, "no_such_database_here"),
        "unknown role": _with_database(pg_server_url, "postgres", user="no_such_role"),
        "closed port": closed,
        "not migrated": fresh_pg_url,
    }
    for case, url in cases.items():
        done = _archiver(url, redis_url)
        assert done.returncode == 2, (case, done.stderr)
        assert "DATABASE_URL" in done.stderr, (case, done.stderr)
    assert "segments migrate" in _archiver(fresh_pg_url, redis_url).stderr


async def test_the_archiver_creates_its_group_again_after_redis_lost_its_data(
    clean_redis_url: str, db: str, redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    now = int(time.time() * 1000)
    caplog.set_level(logging.WARNING, logger="segments.archiver")
    async with running_archiver(clean_redis_url, db):
        first = await add_events(redis, [Event(user_id=1, segment="A", ts_ms=now)])
        await wait_for(lambda: set(first) <= set(archived(db)), what="the first event")
        await asyncio.sleep(0.01)  # the new stream's first id must be a new event key
        await redis.flushdb()  # Redis lost its keyspace (a restart without persistence)
        second = await add_events(redis, [Event(user_id=1, segment="B", ts_ms=now + 1)])
        assert not set(second) & set(first)
        await wait_for(lambda: set(second) <= set(archived(db)), what="an event after the loss")
    assert any("creating it again" in rec.getMessage() for rec in caplog.records)


# --- JSON numbers -------------------------------------------------------------------


def test_whole_numbers_written_as_floats_are_the_integers_they_equal(client: Any) -> None:
    """JSON Schema's integer holds 5.0 and 5e0: as long as a float holds the
    number exactly, it is that integer (beyond 2^53 it may be another: 400)."""
    ok(client.post("/api/v1/segments", json={"slug": "A"}), 201)
    raw = [
        ("/api/v1/users", b'{"user_ids": [100.0, 1e2, 7]}', 200),
        ("/api/v1/users/lookup", b'{"user_ids": [5.0, 6]}', 200),
        ("/api/v1/users/5/segments", b'{"add": [{"slug": "A", "ttl_seconds": 6e1}]}', 200),
        ("/api/v1/users/lookup", b'{"user_ids": [9007199254740993.0]}', 400),
        ("/api/v1/users/lookup", b'{"user_ids": [5.5]}', 400),
        ("/api/v1/users/lookup", b'{"user_ids": ["5"]}', 400),
        ("/api/v1/users/5/segments", b'{"add": [{"slug": "A", "ttl_seconds": 0.5}]}', 400),
    ]
    for path, body, status in raw:
        response = client.post(path, content=body, headers=JSON)
        assert response.status_code == status, (body, response.text)
    looked_up = client.post("/api/v1/users/lookup", content=b'{"user_ids": [5.0]}', headers=JSON)
    assert looked_up.json()["users"] == [{"user_id": 5, "segments": ["A"]}]


def test_an_error_of_a_streaming_route_is_json(client: Any) -> None:
    response = client.get("/api/v1/changes", params={"segment": "bad slug"})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["status_code"] == 400


# --- the schema says what is accepted ------------------------------------------------


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_the_schema_states_the_constraints_the_service_enforces(client: Any) -> None:
    schema = ok(client.get("/schema/openapi.json")).json()
    components = schema["components"]["schemas"]
    for name in ("SegmentCreate", "SegmentPatch", "UsersCreate", "LookupRequest",
                 "ChangeRequest", "AddItem"):  # fmt: skip
        assert components[name]["additionalProperties"] is False, name
    ids = components["UsersCreate"]["properties"]["user_ids"]
    assert (ids["minItems"], ids["maxItems"]) == (1, 10_000)
    assert (ids["items"]["minimum"], ids["items"]["maximum"]) == (1, 2**63 - 1)
    lookup = components["LookupRequest"]["properties"]["user_ids"]
    assert (lookup["minItems"], lookup["maxItems"]) == (1, 1000)
    (percent, _) = components["SegmentCreate"]["properties"]["percent"]["anyOf"]
    bounds = (percent["exclusiveMinimum"], percent["maximum"], percent["multipleOf"])
    assert bounds == (0, 100, 0.01)
    assert "not" in components["AddItem"]  # ttl_seconds or expires_at, not both
    assert not any("oneOf" in node for node in _walk(schema["paths"]))  # ?expand: anyOf
    report = schema["paths"]["/api/v1/history/report"]["get"]["parameters"]
    by_name = {p["name"]: p["schema"] for p in report}
    assert by_name["period"]["pattern"].startswith("^(?:(?:19[7-9][0-9]|[2-9][0-9]{3})")
    assert by_name["user_id"] == {**by_name["user_id"], "type": "integer", "maximum": 2**63 - 1}
    path_id = schema["paths"]["/api/v1/users/{user_id}/segments"]["get"]["parameters"][0]
    assert path_id["schema"]["type"] == "integer" and path_id["schema"]["minimum"] == 1
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if "requestBody" in operation:
                assert "415" in operation["responses"], (method, path)
