"""A real ``segments serve`` (or other ``segments`` command) in a child process.

For the tests that need what only a real server has: several uvicorn
workers, uvicorn's own log lines, the command's start-up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from segments_dev.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
START_TIMEOUT_S = 60.0

CONFIG_PREFIXES = ("SEGMENTS_", "PROMETHEUS_MULTIPROC_DIR")
CONFIG_VARS = ("REDIS_URL", "DATABASE_URL", "PUBLIC_URL")


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without the service's settings, plus ``overrides``;
    the child imports the code under test (PYTHONPATH)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in CONFIG_VARS and not k.startswith(CONFIG_PREFIXES)
    }
    env["PYTHONPATH"] = str(ROOT)
    env.update(overrides)
    return env


@dataclass
class Served:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then wait (killed after 30 s); the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def spawn(args: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """``segments <args>`` with its stdout and stderr in ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "segments_cli", *args],
            env=dict(env),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@contextlib.contextmanager
def serving(
    env: Mapping[str, str], log_path: Path, *, workers: int = 1, args: tuple[str, ...] = ()
) -> Iterator[Served]:
    """``segments serve`` on a free port until the block ends; ready when /healthz answers."""
    port = free_port()
    proc = spawn(
        ["serve", "--port", str(port), "--workers", str(workers), *args], env, log_path
    )
    served = Served(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                code = proc.returncode
                raise AssertionError(f"segments serve exited with {code}:\n{served.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{served.url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"segments serve did not start:\n{served.log()}")
            time.sleep(0.1)
        yield served
    finally:
        served.stop()
