"""The ``segments`` command: serve, archiver, migrate, dev, bench, restore, verify.

The one place that knows every package: it sits above the API (``service``),
the archiver (``archiver``), the dev servers (``segments_dev``), the bench
(``bench``) and the restore tools (``segments_restore``), and imports each
only when its command runs.

Configuration comes from the environment (``service/settings.py``); a bad
value prints a message naming the variable and exits with code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence

from service import settings as settings_module
from service.settings import ConfigError

APP_FACTORY = "service.app:create_app"
HTTP_PROTOCOL = "service.slow_clients:BoundedHttpProtocol"


def epilog() -> str:
    """The environment variables, from their declarations (``segments_core.config``)."""
    from segments_core.config import help_lines

    return "\n".join(
        [
            "environment (a bad value stops start-up naming it; exit code 2):",
            *help_lines(settings_module.Settings),
            "",
            "`segments dev` starts embedded Redis and PostgreSQL when REDIS_URL /",
            "DATABASE_URL are not set. The archiver's knobs: segments archiver --help.",
        ]
    )


def archiver_epilog() -> str:
    from archiver.config import ArchiverConfig
    from segments_core.config import help_lines

    lines = help_lines(ArchiverConfig)
    return "\n".join(["environment (besides REDIS_URL, DATABASE_URL):", *lines])


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


def _warn_about_redis(redis_url: str) -> None:
    """One warning line when Redis would lose or evict data (segments_core.redis_durability)."""
    import logging

    from segments_core.redis_client import connect
    from segments_core.redis_durability import durability_warning

    async def check() -> str | None:
        redis = await connect(redis_url)
        try:
            return await durability_warning(redis)
        finally:
            await redis.aclose()

    log = logging.getLogger("segments.serve")
    try:
        warning = asyncio.run(check())
    except Exception as exc:  # Redis down at start: the API starts anyway and answers 503
        log.warning("could not check Redis persistence and eviction: %s", exc)
        return
    if warning:
        log.warning(warning)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_module.load()  # a bad value stops here, before any worker starts
    redis_url = _require(settings.redis_url, "REDIS_URL")
    from segments_core import logging as logs
    from segments_core import metrics_dir

    # Before prometheus_client is imported anywhere: the workers inherit it.
    metrics_dir.prepare()
    logs.configure(settings.log_format, args.log_level)
    _warn_about_redis(redis_url)
    import uvicorn

    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop" if _module_exists("uvloop") else "asyncio",
        # httptools, with bounded header size and read times (SPEC §6:
        # service/slow_clients.py); uvicorn[standard] brings httptools.
        http=HTTP_PROTOCOL if _module_exists("httptools") else "h11",
        lifespan="on",
        # Off by default: report links carry their signature in the query string.
        access_log=args.access_log,
        log_level=args.log_level,
        # Every line, uvicorn's too, in SEGMENTS_LOG_FORMAT with request ids.
        log_config=logs.uvicorn_log_config(settings.log_format, args.log_level),
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
    _load("archiver.migrate", "migrate_and_report")(_require(settings.database_url, "DATABASE_URL"))
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    return _exit_code(_load("segments_dev.run", "run")(args.host, args.port, args.access_log))


def cmd_bench(argv: Sequence[str]) -> int:
    return _exit_code(_load("bench.cli", "main")(list(argv)))


def cmd_restore(args: argparse.Namespace) -> int:
    argv = ["--replace"] if args.replace else []
    return _exit_code(_load("segments_restore.restore", "main")(argv))


def cmd_verify(args: argparse.Namespace) -> int:
    return _exit_code(_load("segments_restore.verify", "main")(["--limit", str(args.limit)]))


# -- main -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segments",
        description="Segments: Redis-native user segmentation service.",
        epilog=epilog(),
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

    sub.add_parser(
        "archiver",
        help="move history from Redis streams to PostgreSQL",
        epilog=archiver_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).set_defaults(func=cmd_archiver)
    sub.add_parser("migrate", help="create or upgrade the PostgreSQL schema").set_defaults(
        func=cmd_migrate
    )
    sub.add_parser("bench", help="load benchmark (see: segments bench --help)", add_help=False)
    restore = sub.add_parser(
        "restore",
        help="rebuild Redis from the history in PostgreSQL and the streams (stop the API first)",
    )
    restore.add_argument(
        "--replace", action="store_true", help="replace what Redis holds (else refused)"
    )
    restore.set_defaults(func=cmd_restore)
    verify = sub.add_parser(
        "verify", help="compare Redis with the history; exit code 1 when they differ"
    )
    verify.add_argument("--limit", type=int, default=1000, help="differences printed")
    verify.set_defaults(func=cmd_verify)
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
