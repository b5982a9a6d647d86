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
    """The first line a command prints ("" if it cannot run)."""
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return ((out.stdout or out.stderr).strip().splitlines() or [""])[0]


def machine_info(opts: Options, busy_percent: float) -> dict[str, str | int | float]:
    """A description of the machine for the report; ``busy_percent``: its CPU use just before."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    models = [ln.split(":", 1)[1] for ln in cpuinfo.splitlines() if ln.startswith("model name")]
    model = models[0].strip() if models else platform.processor()
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


def process_groups(ctx: Context) -> dict[str, cpu.Lister]:
    """The processes whose CPU each run reports (wrk's comes from wait4): the ones the
    bench started, else the listeners of the local ports of the service and stores."""
    me = os.getpid()
    roots = {
        "api": ctx.api.pid if ctx.api else cpu.listener_pid(ctx.http.base_url.port or 80),
        "archiver": ctx.archiver.pid if ctx.archiver else None,
    }
    for name, url, default in (
        ("redis", ctx.opts.redis_url, 6379),
        ("postgres", ctx.opts.database_url, 5432),
    ):
        parts = urlsplit(url or "")
        if url and parts.hostname in (None, "", "127.0.0.1", "localhost", "::1"):
            roots[name] = cpu.listener_pid(parts.port or default)
    groups: dict[str, cpu.Lister] = {
        name: cpu.tree(pid) for name, pid in roots.items() if pid is not None
    }
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
