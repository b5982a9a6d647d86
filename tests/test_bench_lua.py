"""The wrk scenario scripts, run for a second against a stand-in server that
records what they send (no timing is asserted). Needs wrk; skipped without."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import wrk
from bench.scenarios import LOAD

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed"),
]

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class StandIn:
    """A keep-alive HTTP server in a thread of its own, keeping the first requests."""

    def __init__(self, keep: int = 2000) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.keep = keep
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
                }
                n = int(headers.get("content-length", "0"))
                body = await reader.readexactly(n) if n else b""
                if len(self.requests) < self.keep:
                    self.requests.append((method, path, headers, body))
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> StandIn:
        self.thread.start()
        self.ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    with StandIn() as server:
        yield server


def _run(stand_in: StandIn, script: str, **args: str | int) -> wrk.WrkRun:
    cmd = wrk.command(
        wrk.find_wrk(),
        f"http://127.0.0.1:{stand_in.port}",
        wrk.script_path(script),
        duration_s=1,
        connections=2,
        threads=1,
        args={"users": 50, "segments": 5, "token": "t0k", **args},
    )
    return wrk.run(cmd, 1)


def test_ceiling_and_lookup(stand_in: StandIn) -> None:
    result = _run(stand_in, LOAD["ceiling"].script)
    assert result.output.requests > 0 and result.output.errors.total == 0
    assert {(m, p) for m, p, _, _ in stand_in.requests} == {("GET", "/healthz")}
    with StandIn() as fresh:  # not the first one: wrk's last ceiling requests may land late
        _run(fresh, LOAD["lookup"].script)
    users = {int(p.split("/")[4]) for _, p, _, _ in fresh.requests}
    assert users <= set(range(1, 51)) and len(users) > 10
    assert all(h["authorization"] == "Bearer t0k" for _, _, h, _ in fresh.requests)


def test_lookup_from_an_id_table(stand_in: StandIn, tmp_path: Path) -> None:
    table = tmp_path / "z.ids"
    table.write_text("7\n7\n7\n9000\n")
    _run(stand_in, LOAD["lookup-zipf"].script, ids=str(table))
    users = [int(p.split("/")[4]) for _, p, _, _ in stand_in.requests]
    assert set(users) == {7, 9000}
    assert users.count(7) > users.count(9000)


def test_change_sends_two_adds_with_ttl_and_one_remove(stand_in: StandIn) -> None:
    _run(stand_in, LOAD["change"].script, ttl=60)
    assert stand_in.requests
    for method, path, headers, body in stand_in.requests:
        assert method == "POST" and path.endswith("/segments")
        assert headers["content-type"] == "application/json"
        change = json.loads(body)
        adds = [a["slug"] for a in change["add"]]
        assert all(a["ttl_seconds"] == 60 for a in change["add"])
        assert len(adds) == 2 and len(change["remove"]) == 1
        assert len({*adds, *change["remove"]}) == 3
        assert set(adds) | set(change["remove"]) <= {f"BENCH_{i:02d}" for i in range(5)}


def test_batch_and_mixed(stand_in: StandIn) -> None:
    _run(stand_in, LOAD["lookup-batch"].script, batch=100)
    bodies = [json.loads(b) for _, p, _, b in stand_in.requests if p == "/api/v1/users/lookup"]
    assert bodies and all(len(b["user_ids"]) == 100 for b in bodies)
    with StandIn() as fresh:  # not the first one: late batch requests would count
        _run(fresh, LOAD["mixed"].script)
    methods = [m for m, _, _, _ in fresh.requests]
    share = methods.count("POST") / len(methods)
    assert 0.03 < share < 0.2
