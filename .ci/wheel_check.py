#!/usr/bin/env python3
"""CI: the wheel works as a new user installs it, away from the checkout.

1. builds the wheel of this checkout (``pip wheel --no-deps``);
2. installs it, without extras, into a fresh virtual environment in a
   temporary folder outside the checkout;
3. from ``/``, with the machine's Redis (a database index of its own) and
   PostgreSQL (a database of its own), runs ``segments migrate``, then
   ``segments serve`` on a free port and ``segments archiver``;
4. over HTTP (with tokens): creates a segment, adds a user to it, asks for
   the month's report link, downloads the CSV and finds the row.

Any failure prints the servers' logs and exits non-zero. Standard library
only: it runs on the machine's python3.

    python3 .ci/wheel_check.py [--redis-url URL] [--pg-server-url URL]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent
DATABASE = "segments_wheel_check"
SLUG = "WHEEL_CHECK"
USER_ID = 4242
WRITE_TOKEN = secrets.token_hex(8)
WAIT_S = 60.0
"""Longest wait for a server to answer or the report to hold the row."""


class CheckFailed(RuntimeError):
    pass


def say(message: str) -> None:
    print(f"wheel check: {message}", flush=True)


def run(args: list[str], **kwargs: Any) -> str:
    say("$ " + " ".join(args))
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, **kwargs)
    if result.returncode != 0:
        raise CheckFailed(
            f"{args[0]} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(
    method: str, url: str, body: Any = None, token: str | None = WRITE_TOKEN
) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, _lower(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, _lower(exc.headers.items()), exc.read()


def _lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers}


def expect(what: str, got: tuple[int, dict[str, str], bytes], status: int) -> Any:
    code, _, body = got
    if code != status:
        raise CheckFailed(f"{what}: expected {status}, got {code}: {body[:500]!r}")
    say(f"{what}: {code}")
    return body


def build_wheel(into: Path) -> Path:
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(into), "."],
        cwd=CHECKOUT,
    )
    wheels = list(into.glob("segments-*.whl"))
    if len(wheels) != 1:
        raise CheckFailed(f"expected one wheel, found {wheels}")
    return wheels[0]


def install(wheel: Path, venv: Path) -> Path:
    run([sys.executable, "-m", "venv", str(venv)])
    run(
        [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-q", str(wheel)],
        cwd="/",
    )
    # The package must come from the environment, never from the checkout.
    where = run(
        [str(venv / "bin" / "python"), "-c", "import service, archiver; print(service.__file__)"],
        cwd="/",
    ).strip()
    if not where.startswith(str(venv)):
        raise CheckFailed(f"service imported from {where}, not from the fresh environment")
    say(f"installed into {venv} (service at {where})")
    return venv / "bin" / "segments"


@contextlib.contextmanager
def database(server_url: str) -> Iterator[str]:
    """A database of the check's own on the machine's PostgreSQL, dropped after."""
    admin = ["psql", server_url, "-v", "ON_ERROR_STOP=1", "-qc"]
    run([*admin, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"])
    run([*admin, f"CREATE DATABASE {DATABASE}"])
    parts = urllib.parse.urlsplit(server_url)
    try:
        yield urllib.parse.urlunsplit(parts._replace(path=f"/{DATABASE}"))
    finally:
        with contextlib.suppress(CheckFailed, subprocess.TimeoutExpired):
            run([*admin, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"])


def flush(redis_url: str) -> None:
    parts = urllib.parse.urlsplit(redis_url)
    db = parts.path.lstrip("/") or "0"
    host, port = parts.hostname or "127.0.0.1", str(parts.port or 6379)
    run(["redis-cli", "-h", host, "-p", port, "-n", db, "FLUSHDB"])


class Processes:
    """Servers started by the check; each stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        say("$ " + " ".join(args) + " &")
        log = (self.logs / f"{name}.log").open("wb")
        self.running[name] = subprocess.Popen(
            args, cwd="/", env=env, stdout=log, stderr=subprocess.STDOUT
        )

    def check_alive(self) -> None:
        for name, proc in self.running.items():
            if proc.poll() is not None:
                raise CheckFailed(f"{name} exited with code {proc.returncode}")

    def stop(self) -> None:
        for proc in self.running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.running.items():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop on SIGTERM; killing it")
                proc.kill()
                proc.wait()

    def print_logs(self) -> None:
        for name in self.running:
            text = (self.logs / f"{name}.log").read_text(errors="replace")
            print(f"\n--- {name} log (last 60 lines) ---\n" + "\n".join(text.splitlines()[-60:]))


def wait_for_health(base: str, processes: Processes) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        processes.check_alive()
        with contextlib.suppress(OSError):
            if http("GET", f"{base}/healthz", token=None)[0] == 200:
                return
        time.sleep(0.3)
    raise CheckFailed(f"{base}/healthz did not answer within {WAIT_S:.0f} s")


def report_rows(base: str) -> list[dict[str, str]]:
    period = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    query = urllib.parse.urlencode({"period": period, "user_id": USER_ID})
    link = json.loads(
        expect("report link", http("GET", f"{base}/api/v1/history/report?{query}"), 200)
    )
    if not link["url"].startswith(base):
        raise CheckFailed(f"the report link {link['url']} does not point at {base}")
    status, headers, body = http("GET", link["url"], token=None)  # signed: no token needed
    expect("report download", (status, headers, body), 200)
    if not headers.get("content-type", "").startswith("text/csv"):
        raise CheckFailed(f"the report is {headers.get('content-type')}, not text/csv")
    return list(csv.DictReader(io.StringIO(body.decode())))


def exercise(segments: Path, redis_url: str, database_url: str, logs: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SEGMENTS_", "PYTHON"))},
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "SEGMENTS_SIGNING_KEY": secrets.token_hex(16),
        "SEGMENTS_TOKENS": f"{WRITE_TOKEN}:write",
        "SEGMENTS_ARCHIVER_NAME": "wheel-check",
    }
    run([str(segments), "migrate"], cwd="/", env=env)
    processes = Processes(logs)
    try:
        processes.start("serve", [str(segments), "serve", "--port", str(port)], env)
        processes.start("archiver", [str(segments), "archiver"], env)
        wait_for_health(base, processes)
        expect("create segment", http("POST", f"{base}/api/v1/segments", {"slug": SLUG}), 201)
        if http("POST", f"{base}/api/v1/segments", {"slug": "X"}, token=None)[0] != 401:
            raise CheckFailed("a write without a token was not refused")
        change = http("POST", f"{base}/api/v1/users/{USER_ID}/segments", {"add": [SLUG]})
        after = json.loads(expect("change", change, 200))
        if after != {"user_id": USER_ID, "segments": [SLUG]}:
            raise CheckFailed(f"the change answered {after}")
        rows = report_rows(base)  # the API waits for the archiver to catch up
        wanted = [r for r in rows if r["user_id"] == str(USER_ID) and r["segment"] == SLUG]
        if len(wanted) != 1 or wanted[0]["operation"] != "add":
            raise CheckFailed(f"the report does not hold the add of {USER_ID} to {SLUG}: {rows}")
        say(f"report row: {wanted[0]}")
        processes.check_alive()
    except BaseException:
        processes.stop()
        processes.print_logs()
        raise
    processes.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--pg-server-url", default="postgresql://root@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="segments-wheel-"))
    try:
        if work.is_relative_to(CHECKOUT):
            raise CheckFailed(f"{work} lies inside the checkout")
        (work / "logs").mkdir()
        wheel = build_wheel(work / "dist")
        segments = install(wheel, work / "venv")
        flush(args.redis_url)
        with database(args.pg_server_url) as database_url:
            exercise(segments, args.redis_url, database_url, work / "logs")
        flush(args.redis_url)
    except CheckFailed as exc:
        print(f"wheel check FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say("passed: the installed wheel migrates, serves, archives and reports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
