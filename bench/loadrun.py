"""The load scenarios: wrk runs interleaved with the ceiling, each with the CPU
of every process and the archiver's lag sampled while it runs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench import archiving, cpu, profile, wrk, zipf
from bench.context import Context
from bench.machine import api_workers
from bench.results import Report, RunRecord
from bench.scenarios import LOAD
from bench.schedule import Slot, plan, ratios, summarize

SETTLE_TIMEOUT_S = 120.0
"""Longest wait, between two runs, for the archiver to catch up."""
PAUSE_S = 1.0
"""Quiet time before each run, so one run's tail does not overlap the next."""
WARMUP_SCRIPT = "mixed"
"""Warms lookups and changes alike (connection pools, caches, the allocator)."""


def zipf_table(ctx: Context) -> Path:
    if ctx.zipf_table is None:
        ids = zipf.sample(
            ctx.opts.users, zipf.DEFAULT_SAMPLES, ctx.opts.zipf_exponent, ctx.opts.seed
        )
        ctx.zipf_table = zipf.write_table(ctx.run_dir / "zipf.ids", ids)
        ctx.log(
            f"Zipf table: {len(ids):,} draws over {ctx.opts.users:,} users, "
            f"top 1% of users get {zipf.top_share(ids, max(1, ctx.opts.users // 100)):.0%}"
        )
    return ctx.zipf_table


def wrk_command(ctx: Context, wrk_bin: str, name: str, duration: float) -> list[str]:
    scenario = LOAD[name]
    args: dict[str, str | int | float] = {
        "users": ctx.opts.users,
        "segments": ctx.opts.segments,
        "seed": ctx.opts.seed,
        **scenario.args,
    }
    if scenario.zipf:
        args["ids"] = str(zipf_table(ctx))
    if ctx.opts.token:
        args["token"] = ctx.opts.token
    return wrk.command(
        wrk_bin,
        ctx.url,
        wrk.script_path(scenario.script),
        duration_s=duration,
        connections=ctx.opts.connections,
        threads=ctx.opts.threads,
        args=args,
    )


async def settle(ctx: Context) -> None:
    if ctx.redis is not None and ctx.archiver is not None:
        try:
            await archiving.wait_drained(ctx.redis, ctx.keyspace, SETTLE_TIMEOUT_S)
        except TimeoutError as exc:
            ctx.log(f"warning: {exc}")
    await asyncio.sleep(PAUSE_S)


async def run_load(
    ctx: Context, wrk_bin: str, slot: Slot
) -> tuple[wrk.WrkRun | None, dict[str, float], float | None]:
    """One wrk run with CPU accounting and archiver lag sampling."""
    await settle(ctx)
    cmd = wrk_command(ctx, wrk_bin, slot.scenario, ctx.opts.duration)
    recordings: dict[str, profile.Recording] = {}
    if slot.scenario in ctx.opts.profile and slot.repeat == 0 and ctx.api is not None:
        label = slot.scenario
        pids = api_workers(ctx.api.pid)
        recordings["API workers"] = profile.start(pids, ctx.run_dir, ctx.opts.duration, label)
        if ctx.archiver is not None:
            recordings["archiver"] = profile.start(
                [ctx.archiver.pid], ctx.run_dir, ctx.opts.duration, f"{label}-archiver"
            )
    before = cpu.snapshot(ctx.groups)
    busy_before = cpu.busy_seconds()
    started = time.perf_counter()
    task = asyncio.create_task(asyncio.to_thread(wrk.run, cmd, ctx.opts.duration))
    lag_max: float | None = None
    while not task.done():
        if ctx.redis is not None:
            try:
                lag = (await archiving.backlog(ctx.redis, ctx.keyspace))[1]
                lag_max = lag if lag_max is None else max(lag_max, lag)
            except Exception as exc:  # sampling must not break the run
                ctx.log(f"warning: lag sample failed: {exc}")
        await asyncio.wait({task}, timeout=archiving.POLL_S)
    wall = time.perf_counter() - started
    after = cpu.snapshot(ctx.groups)
    busy_after = cpu.busy_seconds()
    for who, recording in recordings.items():
        write_profile(ctx, slot.scenario, who, recording)
    try:
        result = task.result()
    except wrk.WrkError as exc:
        ctx.log(f"{slot.scenario} failed: {exc}")
        return None, {}, lag_max
    usage = cpu.percent(before, after, wall)
    usage["wrk"] = 100.0 * result.cpu_s / wall
    usage["other"] = cpu.others(busy_before, busy_after, wall, usage)
    ctx.log(
        f"{slot.index + 1:>2}. {slot.scenario:<13} {result.rps:>9,.0f} req/s  "
        f"p99 {result.percentile_ms('99'):6.2f} ms  errors {result.output.errors.total}"
        + (f"  (other processes used {usage['other']:.0f}% CPU)" if usage["other"] > 20 else "")
    )
    return result, usage, lag_max


def write_profile(ctx: Context, scenario: str, who: str, recording: profile.Recording) -> None:
    recording.wait(30.0)
    summary = profile.summarize(recording.files)
    suffix = "" if who == "API workers" else f"-{who}"
    path = ctx.run_dir / f"profile-{scenario}{suffix}.txt"
    path.write_text(summary + "\n")
    ctx.log(f"profile of the {who} during {scenario}: {path}")
    print("\n".join(summary.splitlines()[:22]), flush=True)


def record(
    slot: Slot, result: wrk.WrkRun, usage: dict[str, float], lag: float | None, ratio: float | None
) -> RunRecord:
    out = result.output
    latency = {p: out.latency_us.percentiles[p] / 1000.0 for p in out.latency_us.percentiles}
    latency["max"] = out.latency_us.max / 1000.0
    return RunRecord(
        index=slot.index,
        scenario=slot.scenario,
        repeat=slot.repeat,
        rps=result.rps,
        requests=out.requests,
        duration_s=out.duration_us / 1e6,
        errors=out.errors,
        latency_ms=latency,
        cpu_percent=usage,
        ratio_to_ceiling=ratio,
        archiver_lag_max_s=lag,
    )


async def load_runs(ctx: Context, report: Report) -> None:
    names = [n for n in ctx.opts.scenarios if n in LOAD]
    if not names:
        return
    wrk_bin = wrk.find_wrk()
    if any(LOAD[n].zipf for n in names):
        zipf_table(ctx)  # before the runs: drawing it takes seconds between two of them
    if ctx.opts.warmup > 0:
        ctx.log(f"warm-up: {WARMUP_SCRIPT} for {ctx.opts.warmup:g} s")
        cmd = wrk_command(ctx, wrk_bin, WARMUP_SCRIPT, ctx.opts.warmup)
        await asyncio.to_thread(wrk.run, cmd, ctx.opts.warmup)
    slots = plan(names, ctx.opts.repeats)
    seconds = len(slots) * (ctx.opts.duration + PAUSE_S + 0.5)
    ctx.log(f"{len(slots)} load runs of {ctx.opts.duration:g} s (about {seconds / 60:.1f} min)")
    results = [await run_load(ctx, wrk_bin, slot) for slot in slots]
    rps = [r.rps if r is not None else None for r, _, _ in results]
    ratio = ratios([s.scenario for s in slots], rps)
    for slot, (result, usage, lag), q in zip(slots, results, ratio, strict=True):
        if result is not None:
            report.runs.append(record(slot, result, usage, lag, q))
    items = {n: s.items_per_request for n, s in LOAD.items()}
    report.scenarios = summarize(report.runs, items)
