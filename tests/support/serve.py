"""A real ``segments serve`` (or other ``segments`` command) in a child process.

For the tests that need what only a real server has: several uvicorn
workers, uvicorn's own log lines, the command's start-up, a restart (SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Self

import httpx

from segments_dev.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0

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


def spawn(
    args: list[str],
    env: Mapping[str, str],
    log_path: Path | None,
    *,
    start_new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """``segments <args>`` with its stdout and stderr in ``log_path`` (None: this
    process's own)."""
    with contextlib.ExitStack() as stack:
        log = None if log_path is None else stack.enter_context(log_path.open("ab"))
        return subprocess.Popen(
            [sys.executable, "-m", "segments_cli", *args],
            env=dict(env),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=None if log is None else subprocess.STDOUT,
            start_new_session=start_new_session,
        )


class ServeProcess:
    """``segments serve --workers N`` on a free port (or ``port``, e.g. the port of a
    server stopped before), with ``env`` as its whole environment and ``args`` added
    to its command line; its output in ``log_path`` (None: this process's own).

    Ready when ``start()`` (or ``with``) returns: /healthz answered. In a session of
    its own, so that stopping it reaches its workers too.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        workers: int = 1,
        port: int | None = None,
        args: tuple[str, ...] = (),
        log_path: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.env = dict(env)
        self.args = args
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        """What it wrote so far ("" when its output is not kept)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def start(self) -> Self:
        command = ["serve", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--workers", str(self.workers), *self.args]
        self.process = proc = spawn(command, self.env, self.log_path, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                code = proc.returncode
                raise AssertionError(f"segments serve exited with {code}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                raise AssertionError(f"segments serve did not start:\n{self.log()}")
            time.sleep(0.1)

    def stop(self) -> int | None:
        """SIGTERM, as a deployment restarts it, then wait; the exit code (None if it
        had to be killed after 30 s, or never started)."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *_: object) -> None:
        self.stop()


@contextlib.contextmanager
def serving(
    env: Mapping[str, str], log_path: Path, *, workers: int = 1, args: tuple[str, ...] = ()
) -> Iterator[ServeProcess]:
    """``segments serve`` on a free port until the block ends; ready when /healthz answers."""
    with ServeProcess(env, workers=workers, args=args, log_path=log_path) as served:
        yield served
