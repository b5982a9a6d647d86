"""The ``segments`` command: serve, archiver, migrate, dev, bench.

Configuration comes from the environment (``service/settings.py``); a bad
value prints a message naming the variable and exits with code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import cast

from service import settings as settings_module
from service.settings import ConfigError

APP_FACTORY = "service.app:create_app"
DEV_DATABASE = "segments"
"""Database ``segments dev`` creates on its embedded PostgreSQL."""
SIGNING_KEY_FILE = "signing.key"
"""Dev signing key, generated once in the data folder (mode 0600)."""
CHILD_STOP_TIMEOUT_S = 15.0
"""Grace period for the API and the archiver to stop on SIGTERM before SIGKILL."""
API_READY_TIMEOUT_S = 60.0
"""How long ``segments dev`` waits for the API's /healthz after starting it."""

EPILOG = """\
environment:
  REDIS_URL              Redis (single node or any node of a Redis Cluster)
  DATABASE_URL           PostgreSQL for the history
  PUBLIC_URL             base of report links (default: the request's host)
  SEGMENTS_SIGNING_KEY   HMAC key of report links (16+ characters)
  SEGMENTS_TOKENS        bearer tokens, e.g. 'tok1:read,tok2:write' (default: no auth)
  SEGMENTS_DATA_DIR      data folder of `segments dev` (default: .data)

`segments dev` starts embedded Redis and PostgreSQL when REDIS_URL /
DATABASE_URL are not set.
"""


class _Stop(Exception):
    """Raised by the SIGINT/SIGTERM handler of ``segments dev``."""


def _say(message: str) -> None:
    print(f"segments: {message}", file=sys.stderr, flush=True)


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


class Unavailable(RuntimeError):
    """A part of the project this command needs is missing from the installation."""


def _load(module: str, attr: str) -> Callable[..., object]:
    """``module.attr``, imported only when its command runs."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            raise Unavailable(f"{module} is not available in this installation") from exc
        raise
    func: Callable[..., object] = getattr(mod, attr)
    return func


def _exit_code(result: object) -> int:
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return result if isinstance(result, int) else 0


# -- serve ---------------------------------------------------------------------------------


def _require(value: str | None, name: str) -> str:
    if value is None:
        raise ConfigError(f"{name} is not set (only `segments dev` starts embedded servers)")
    return value


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_module.load()  # a bad value stops here, before any worker starts
    _require(settings.redis_url, "REDIS_URL")
    import uvicorn

    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop" if _module_exists("uvloop") else "asyncio",
        http="httptools" if _module_exists("httptools") else "h11",
        lifespan="on",
        # Off by default: report links carry their signature in the query string.
        access_log=args.access_log,
        log_level=args.log_level,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    return 0


# -- archiver, migrate, bench ------------------------------------------------------------------


def cmd_archiver(args: argparse.Namespace) -> int:
    settings = settings_module.load()
    _require(settings.redis_url, "REDIS_URL")
    _require(settings.database_url, "DATABASE_URL")
    return _exit_code(_load("archiver.worker", "main")())


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = settings_module.load()
    _migrate(_require(settings.database_url, "DATABASE_URL"))
    return 0


def _migrate(database_url: str) -> None:
    applied = cast(list[str], _load("archiver.migrate", "migrate")(database_url))
    if applied:
        for name in applied:
            print(f"applied migration {name}", flush=True)
    else:
        print("database schema is up to date", flush=True)


def cmd_bench(argv: Sequence[str]) -> int:
    return _exit_code(_load("bench.cli", "main")(list(argv)))


# -- dev --------------------------------------------------------------------------------------


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
        [sys.executable, "-m", "service.cli", *args],
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


def cmd_dev(args: argparse.Namespace) -> int:
    import psycopg

    from service.embedded import (
        EmbeddedError,
        EmbeddedPostgres,
        EmbeddedRedis,
        create_database,
        port_is_free,
    )

    settings = settings_module.load()
    if not port_is_free(args.port, args.host):
        _say(f"port {args.port} on {args.host} is in use; choose another with --port")
        return 1
    data_dir = settings.data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SEGMENTS_DATA_DIR=str(data_dir))
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
            _say(f"embedded PostgreSQL {env['DATABASE_URL']} (data in {pg_server.data_dir})")
        if settings.signing_key is None:
            env["SEGMENTS_SIGNING_KEY"] = dev_signing_key(data_dir)
        settings_module.load(env)  # what the children will see
        _migrate(env["DATABASE_URL"])

        children["archiver"] = _spawn(["archiver"], env)
        children["API"] = _spawn(
            ["serve", "--host", args.host, "--port", str(args.port), "--workers", "1"]
            + (["--access-log"] if args.access_log else []),
            env,
        )
        base = _http_base(args.host, args.port)
        _wait_ready(f"{base}/healthz", children)
        print(f"\nSegments is running. Swagger UI: {base}/schema/swagger", flush=True)
        print("Press Ctrl-C to stop.\n", flush=True)
        while True:
            for name, proc in children.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {proc.returncode}")
            time.sleep(0.2)
    except _Stop:
        _say("stopping")
    except (RuntimeError, EmbeddedError, OSError, ImportError, psycopg.Error) as exc:
        _say(f"error: {exc}")
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
                _say(f"error stopping embedded {server.name}: {exc}")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code == 0:
        _say("stopped")
    return code


# -- main -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segments",
        description="Segments: Redis-native user segmentation service.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_http_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", default="127.0.0.1", help="address to listen on")
        p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
        p.add_argument(
            "--access-log",
            action="store_true",
            help="log every request (off by default: report links carry signatures)",
        )

    serve = sub.add_parser("serve", help="run the HTTP API (uvicorn)")
    add_http_options(serve)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
    )
    serve.set_defaults(func=cmd_serve)

    dev = sub.add_parser(
        "dev",
        help="API + archiver for a laptop (embedded Redis/PostgreSQL unless configured)",
    )
    add_http_options(dev)
    dev.set_defaults(func=cmd_dev)

    sub.add_parser("archiver", help="move history from Redis streams to PostgreSQL").set_defaults(
        func=cmd_archiver
    )
    sub.add_parser("migrate", help="create or upgrade the PostgreSQL schema").set_defaults(
        func=cmd_migrate
    )
    sub.add_parser("bench", help="load benchmark (see: segments bench --help)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "bench":
            return cmd_bench(argv[1:])
        args = build_parser().parse_args(argv)
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except ConfigError as exc:
        print(f"segments: configuration error: {exc}", file=sys.stderr)
        return 2
    except Unavailable as exc:
        print(f"segments: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
