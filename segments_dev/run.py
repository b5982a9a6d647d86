"""``segments dev``: the API and the archiver together, for a laptop.

With no ``REDIS_URL`` / ``DATABASE_URL`` it starts the embedded servers of
``segments_dev.embedded`` under the data folder (kept between runs), migrates,
then runs ``segments archiver`` and ``segments serve`` as child processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from archiver.migrate import migrate
from segments_core import logging as logs
from segments_core import metrics_dir
from service import settings as settings_module
from service.settings import ConfigError

DEV_DATABASE = "segments"
"""Database ``segments dev`` creates on its embedded PostgreSQL."""
SIGNING_KEY_FILE = "signing.key"
"""Dev signing key, generated once in the data folder (mode 0600)."""
CHILD_STOP_TIMEOUT_S = 15.0
"""Grace period for the API and the archiver to stop on SIGTERM before SIGKILL."""
API_READY_TIMEOUT_S = 60.0
"""How long ``segments dev`` waits for the API's /healthz after starting it."""


class _Stop(Exception):
    """Raised by the SIGINT/SIGTERM handler of ``segments dev``."""


log = logging.getLogger("segments.dev")


def _say(message: str, level: int = logging.INFO) -> None:
    log.log(level, message)



def dev_signing_key(data_dir: Path) -> str:
    """The dev signing key in ``data_dir/signing.key``, created (mode 0600) on first use."""
    path = data_dir / SIGNING_KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        key = path.read_text().strip()
        if len(key) < 16:
            raise ConfigError(
                f"{path} holds no valid signing key (16+ characters); delete it to make a new one"
            ) from None
        return key
    key = secrets.token_hex(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


def _browsable_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _http_base(host: str, port: int) -> str:
    host = _browsable_host(host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child if ``segments dev`` dies."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)

    return preexec


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "segments_cli", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
        preexec_fn=_die_with_parent(),  # no threads run at this point
    )


def _wait_ready(url: str, children: dict[str, subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + API_READY_TIMEOUT_S
    while True:
        for name, proc in children.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API did not answer {url} within {API_READY_TIMEOUT_S:g} s")
        time.sleep(0.2)


def _stop_children(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in children.values():
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    deadline = time.monotonic() + CHILD_STOP_TIMEOUT_S
    for name, proc in children.items():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _say(f"{name} did not stop within {CHILD_STOP_TIMEOUT_S:g} s; killing it")
            proc.kill()
            proc.wait()


def run(host: str, port: int, access_log: bool) -> int:
    import psycopg

    from segments_dev.embedded import (
        EmbeddedError,
        EmbeddedPostgres,
        EmbeddedRedis,
        create_database,
        port_is_free,
    )

    settings = settings_module.load()
    logs.configure(settings.log_format)
    if not port_is_free(port, host):
        _say(f"port {port} on {host} is in use; choose another with --port", logging.ERROR)
        return 1
    data_dir = settings.data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SEGMENTS_DATA_DIR=str(data_dir))
    # One metrics folder for the API and the archiver: the API's /metrics shows both.
    metrics_folder = metrics_dir.prepare(env, remove_at_exit=False)
    owns_metrics_folder = not os.environ.get(metrics_dir.ENV)
    servers: list[EmbeddedRedis | EmbeddedPostgres] = []
    children: dict[str, subprocess.Popen[bytes]] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _Stop(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        if settings.redis_url is None:
            redis_server = EmbeddedRedis(data_dir / "redis", persistent=True)
            servers.append(redis_server)
            redis_server.start()
            env["REDIS_URL"] = redis_server.url
            _say(f"embedded Redis {redis_server.url} (data in {redis_server.data_dir})")
        if settings.database_url is None:
            pg_server = EmbeddedPostgres(data_dir / "postgres", durable=True)
            servers.append(pg_server)
            pg_server.start()
            env["DATABASE_URL"] = create_database(pg_server.url, DEV_DATABASE, exist_ok=True)
            _say(f"embedded PostgreSQL {env['DATABASE_URL']} (data in {pg_server.pgdata})")
        if settings.signing_key is None:
            env["SEGMENTS_SIGNING_KEY"] = dev_signing_key(data_dir)
        settings_module.load(env)  # what the children will see
        for name in migrate(env["DATABASE_URL"]):
            _say(f"applied migration {name}")

        # The API first: `segments serve` empties the metrics folder as it starts.
        children["API"] = _spawn(
            ["serve", "--host", host, "--port", str(port), "--workers", "1"]
            + (["--access-log"] if access_log else []),
            env,
        )
        base = _http_base(host, port)
        _wait_ready(f"{base}/healthz", children)
        children["archiver"] = _spawn(["archiver"], env)
        swagger = f"Segments is running. Swagger UI: {base}/schema/swagger"
        if settings.log_format == logs.JSON:
            _say(swagger + " (Ctrl-C stops it)")
        else:
            print(f"\n{swagger}\nPress Ctrl-C to stop.\n", flush=True)
        while True:
            for name, proc in children.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {proc.returncode}")
            time.sleep(0.2)
    except _Stop:
        _say("stopping")
    except (RuntimeError, EmbeddedError, OSError, ImportError, psycopg.Error) as exc:
        _say(f"error: {exc}", logging.ERROR)
        code = 1
    finally:
        # no interruption while stopping; every step below is bounded in time
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        _stop_children(children)
        for server in reversed(servers):
            try:
                server.stop()
            except Exception as exc:  # keep stopping the others
                _say(f"error stopping embedded {server.name}: {exc}", logging.ERROR)
        if owns_metrics_folder:
            shutil.rmtree(metrics_folder, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code == 0:
        _say("stopped")
    return code
