"""The service under test, started by the bench: API (``segments serve``),
archiver (``segments archiver``) and schema (``segments migrate``).

Each runs as ``python -m segments_cli ...`` in its own process group, with
its output in a log file of the run's folder, so that every scenario meets
the very same server settings and the bench can read each process's CPU.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
MIGRATE_TIMEOUT_S = 120.0


class ServiceError(RuntimeError):
    """A service process failed to start, or exited."""


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _die_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGTERM when the bench dies,
    so a killed bench leaves no service running."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


class Child:
    """One service process and its log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "segments_cli", *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise ServiceError(
                f"{self.name} exited with code {self.proc.returncode}; "
                f"end of {self.log}:\n{_tail(self.log)}"
            )

    def stop(self) -> None:
        """SIGTERM to its process group (uvicorn workers included), SIGKILL if it lingers."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def service_env(redis_url: str, database_url: str, shards: int | None) -> dict[str, str]:
    """The environment of the bench's service; ``shards`` sets up its new deployment."""
    env = dict(os.environ, REDIS_URL=redis_url, DATABASE_URL=database_url)
    env.setdefault("SEGMENTS_SIGNING_KEY", "segments-bench-signing-key-0123456789")
    if shards is not None:
        env["SEGMENTS_SHARDS"] = str(shards)
    return env


def migrate(env: dict[str, str], log_dir: Path) -> None:
    child = Child("migrate", ["migrate"], env, log_dir)
    try:
        code = child.proc.wait(MIGRATE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.stop()
        raise ServiceError(f"segments migrate took over {MIGRATE_TIMEOUT_S:g} s") from None
    if code != 0:
        raise ServiceError(f"segments migrate failed ({code}):\n{_tail(child.log)}")


def start_api(env: dict[str, str], port: int, workers: int, log_dir: Path) -> Child:
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    child = Child("api", [*args, "--log-level", "warning"], env, log_dir)
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz", child)
    except BaseException:
        child.stop()
        raise
    return child


def start_archiver(env: dict[str, str], log_dir: Path) -> Child:
    return Child("archiver", ["archiver"], dict(env, SEGMENTS_ARCHIVER_NAME="bench"), log_dir)


def wait_ready(url: str, child: Child, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        child.check()
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(url, timeout=2) as response,
        ):
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise ServiceError(f"{url} did not answer within {timeout_s:g} s")
        time.sleep(0.2)


def port_free(port: int, wait_s: float = 15.0) -> bool:
    """Whether 127.0.0.1:port can be listened on, waiting up to ``wait_s`` for it
    (the previous run's server may still be closing)."""
    deadline = time.monotonic() + wait_s
    while True:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return True
            except OSError:
                pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
