"""The machine and processes of a run: a description for the report, and the
process groups whose CPU each load run reports."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from bench import cpu, stores, wrk
from bench.context import Context, Options


def _command_output(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def machine_info(opts: Options, busy_percent: float) -> dict[str, str | int | float]:
    """A description of the machine for the report; ``busy_percent``: its CPU use just before."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, str | int | float] = {
        "cpus": os.cpu_count() or 0,
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "wrk": _command_output([wrk.find_wrk(), "--version"]),
        "git_commit": _command_output(["git", "rev-parse", "--short", "HEAD"]),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "busy_percent_at_start": round(busy_percent, 1),
    }
    if opts.redis_url:
        try:
            server = stores.redis_info(opts.redis_url, "server")
            info["redis"] = str(server.get("redis_version", ""))
        except Exception as exc:  # informational only
            info["redis"] = f"unknown ({type(exc).__name__})"
    return info


def _local_port(url: str) -> int | None:
    parts = urlsplit(url)
    if parts.hostname in ("127.0.0.1", "localhost", "::1"):
        return parts.port
    return None


def process_groups(ctx: Context) -> dict[str, cpu.Lister]:
    """The processes whose CPU each run reports (wrk's comes from wait4)."""
    groups: dict[str, cpu.Lister] = {}
    if ctx.api is not None:
        groups["api"] = cpu.tree(ctx.api.pid)
    else:
        pid = cpu.listener_pid(ctx.http.base_url.port or 80)
        if pid is not None:
            groups["api"] = cpu.tree(pid)
    if ctx.archiver is not None:
        groups["archiver"] = cpu.tree(ctx.archiver.pid)
    if ctx.opts.redis_url and _local_port(ctx.opts.redis_url) is not None:
        try:
            pid = int(str(stores.redis_info(ctx.opts.redis_url, "server")["process_id"]))
            groups["redis"] = cpu.tree(pid)
        except Exception:  # Redis elsewhere or unreadable: not measured
            pass
    if ctx.opts.database_url:
        port = _local_port(ctx.opts.database_url) or (
            5432 if urlsplit(ctx.opts.database_url).hostname in (None, "") else None
        )
        pid = cpu.listener_pid(port) if port else None
        if pid is not None:
            groups["postgres"] = cpu.tree(pid)
    me = os.getpid()
    groups["bench"] = lambda: [psutil.Process(me)]
    return groups


def api_workers(master: int) -> list[int]:
    """The uvicorn worker processes (the master itself when it runs the app alone)."""
    try:
        children = psutil.Process(master).children(recursive=True)
    except psutil.Error:
        return [master]
    workers = []
    for child in children:
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                workers.append(child.pid)
        except psutil.Error:
            continue
    return workers or [master]
