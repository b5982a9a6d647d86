"""Log lines (issue 11): ``SEGMENTS_LOG_FORMAT`` text or json for the API
(uvicorn's own lines included), the archiver and the CLI; request ids in
them; no secret in any of them, whatever the level."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from segments_core.logging import (
    REQUEST,
    JsonFormatter,
    RequestIdFilter,
    RequestLog,
    TextFormatter,
    redact,
    register_secret,
)
from segments_dev.embedded import EmbeddedRedis
from service.api.history import DOWNLOAD_PATH
from tests.support.serve import ROOT, clean_env, serving, spawn

KEYS = {"time", "level", "logger", "message"}
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as JSON (the test fails on the first that is not)."""
    docs = []
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert set(doc) >= KEYS, line
        assert TIME.match(doc["time"]), line
        docs.append(doc)
    assert docs
    return docs


# -- formats, in process -------------------------------------------------------------------------


def _record(message: str, level: int = logging.INFO, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("segments.test", level, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return record


def test_json_and_text_formats_carry_the_request_id() -> None:
    filt = RequestIdFilter()
    token = REQUEST.set(RequestLog("rid-7"))
    try:
        inside = _record("inside a request")
        filt.filter(inside)
    finally:
        REQUEST.reset(token)
    outside = _record("outside")
    filt.filter(outside)
    doc = json.loads(JsonFormatter().format(inside))
    assert doc["request_id"] == "rid-7" and doc["message"] == "inside a request"
    assert "request_id" not in json.loads(JsonFormatter().format(outside))
    assert " INFO segments.test [rid-7]: inside a request" in TextFormatter().format(inside)
    assert " INFO segments.test: outside" in TextFormatter().format(outside)


def test_a_traceback_stays_inside_its_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("failed", logging.ERROR, exc_info=sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exc_info"]


def test_redact() -> None:
    register_secret("s3cret-signing-key")
    text = (
        "Authorization: Bearer abc.def-123; link /api/v1/history/download?period=2026-01"
        "&expires=99&sig=0123abcd and postgresql://app:pa55word@db:5432/x key s3cret-signing-key"
    )
    out = redact(text)
    for secret in ("abc.def-123", "0123abcd", "pa55word", "s3cret-signing-key"):
        assert secret not in out
    assert "period=2026-01" in out and "postgresql://app:[redacted]@db" in out


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "archiver", "dev"])
def test_a_bad_log_format_stops_start_up_naming_it(command: str, tmp_path: Path) -> None:
    env = clean_env(
        SEGMENTS_LOG_FORMAT="xml",
        REDIS_URL="redis://127.0.0.1:1/0",
        DATABASE_URL="postgresql://127.0.0.1:1/x",
        SEGMENTS_DATA_DIR=str(tmp_path / "data"),
    )
    result = subprocess.run(
        [sys.executable, "-m", "segments_cli", command],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "SEGMENTS_LOG_FORMAT must be text or json, got 'xml'" in result.stderr


# -- real processes ------------------------------------------------------------------------------


def test_every_api_line_is_json(private_redis: EmbeddedRedis, tmp_path: Path) -> None:
    env = clean_env(REDIS_URL=private_redis.url, SEGMENTS_LOG_FORMAT="json")
    with serving(env, tmp_path / "serve.log", workers=2, args=("--access-log",)) as served:
        httpx.get(f"{served.url}/api/v1/users/5/segments", headers={"X-Request-ID": "hot-1"})
        httpx.get(f"{served.url}/api/v1/segments", headers={"X-Request-ID": "framework-1"})
        httpx.get(f"{served.url}/nowhere", headers={"X-Request-ID": "unmatched-1"})
        assert served.stop() == 0
    docs = _json_lines(served.log())
    loggers = {d["logger"] for d in docs}
    assert {"uvicorn.error", "uvicorn.access", "segments.serve"} <= loggers, loggers
    assert any("Started server process" in d["message"] for d in docs)
    assert any("Redis may lose data" in d["message"] for d in docs)  # the start-up check
    for rid in ("hot-1", "framework-1", "unmatched-1"):
        access = [d for d in docs if d.get("request_id") == rid]
        assert [d["logger"] for d in access] == ["uvicorn.access"], access


def test_every_archiver_line_is_json(clean_redis_url: str, db: str, tmp_path: Path) -> None:
    log_path = tmp_path / "archiver.log"
    env = clean_env(REDIS_URL=clean_redis_url, DATABASE_URL=db, SEGMENTS_LOG_FORMAT="json")
    proc = spawn(["archiver"], env, log_path)
    try:
        deadline = time.monotonic() + 60
        while "started" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(30)
    docs = _json_lines(log_path.read_text())
    assert any(d["logger"] == "segments.archiver" and "stopped" in d["message"] for d in docs)


def test_text_is_the_default(private_redis: EmbeddedRedis, tmp_path: Path) -> None:
    env = clean_env(REDIS_URL=private_redis.url)
    with serving(env, tmp_path / "serve.log", args=("--access-log",)) as served:
        httpx.get(f"{served.url}/api/v1/segments", headers={"X-Request-ID": "text-1"})
    lines = served.log().splitlines()
    assert any(re.match(r"^\S+Z INFO uvicorn\.error: Started server process", x) for x in lines)
    assert any(
        " INFO uvicorn.access [text-1]: " in x and "/api/v1/segments" in x for x in lines
    ), lines


@pytest.mark.parametrize("level", ["debug", "trace"])
def test_no_secret_reaches_a_log_line(
    private_redis: EmbeddedRedis, db: str, tmp_path: Path, level: str
) -> None:
    read, write, wrong = "read-TOKEN-1a2b3c", "write-TOKEN-4d5e6f", "wrong-TOKEN-7a8b9c"
    key = "signing-KEY-0123456789abcdef"
    env = clean_env(
        REDIS_URL=private_redis.url,
        DATABASE_URL=db,
        SEGMENTS_TOKENS=f"{read}:read,{write}:write",
        SEGMENTS_SIGNING_KEY=key,
        SEGMENTS_LOG_FORMAT="json",
    )
    secrets = [read, write, wrong, key]
    args = ("--access-log", "--log-level", level)
    with serving(env, tmp_path / "serve.log", args=args) as served, httpx.Client(
        base_url=served.url, timeout=30
    ) as http:
        as_reader = {"Authorization": f"Bearer {read}"}
        as_writer = {"Authorization": f"Bearer {write}"}
        # The report link first, while no event waits for the archiver.
        r = http.get("/api/v1/history/report?period=2026-12", headers=as_reader)
        assert r.status_code == 200, r.text
        link = r.json()["url"]
        sig = re.search(r"[?&]sig=([^&]+)", link)
        assert sig is not None
        secrets.append(sig.group(1))
        assert http.get(link).status_code == 200
        tampered = link.replace(sig.group(1), sig.group(1)[::-1])
        secrets.append(sig.group(1)[::-1])
        assert http.get(tampered).status_code == 403
        assert http.post("/api/v1/segments", json={"slug": "S"}, headers=as_writer).is_success
        path = "/api/v1/users/3/segments"
        assert http.post(path, json={"add": ["S"]}, headers=as_writer).status_code == 200
        assert http.get(path, headers=as_reader).status_code == 200
        as_stranger = {"Authorization": f"Bearer {wrong}"}
        assert http.get(path, headers=as_stranger).status_code == 403
        assert http.get("/api/v1/segments", headers=as_stranger).status_code == 403
    text = served.log()
    docs = _json_lines(text)
    for secret in secrets:
        assert secret not in text, secret
    downloads = [d for d in docs if f"{DOWNLOAD_PATH}?" in d["message"]]
    assert len(downloads) >= 2  # the access lines are there, with the signature blanked
    assert all("sig=[redacted]" in d["message"] for d in downloads)
