"""`segments archiver`: history from the Redis streams into PostgreSQL.

One task per stream, all in one consumer group shared by every archiver:

1. join the group (created at id 0, so nothing written before the first
   archiver started is skipped);
2. drain this consumer's own pending entries (a restart after a crash);
3. loop: claim entries idle too long at other consumers (``XAUTOCLAIM``),
   read new entries (``XREADGROUP >``), write them to PostgreSQL, commit,
   and only then ``XACK``; trim the stream below its oldest unarchived entry
   and the change feed's retention window (``retention_ms``).

Delivery is at-least-once (a crash between commit and ``XACK`` delivers the
entry again); the unique event key in PostgreSQL makes the rows exactly-once.
PostgreSQL or Redis unavailable: the batch is kept and retried with back-off
until it goes through; nothing is acknowledged meanwhile, so the events wait
in the streams. An entry PostgreSQL rejects is retried alone, and moved to
the dead-letter stream after ``max_attempts``; an entry that breaks the
stream contract is moved there at once. Neither holds back the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec
import psycopg
from redis.exceptions import ResponseError

from archiver import config as config_module
from archiver import faults, metrics
from archiver.config import ArchiverConfig
from archiver.events import EntryError, Row, lifecycle_row, membership_row, now_ms
from archiver.writer import HistoryWriter, Kind, WriteResult, check_database, open_pool
from segments_core import config as core_config
from segments_core import logging as logs
from segments_core import retention
from segments_core.keys import GLOBAL, Keyspace, dead_letter_key, load_keyspace
from segments_core.redis_client import connect
from segments_core.streams import AnyRedis, trim_floor
from segments_core.unavailable import REDIS_CLIENT_ERRORS

log = logging.getLogger("segments.archiver")

Entry = tuple[bytes, dict[bytes, bytes]]
T = TypeVar("T")

ACK_CHUNK = 10_000
"""Ids per XACK command (keeps one command's reply time small)."""


class Backoff:
    """Exponential back-off between ``low`` and ``high`` seconds, cut short by ``stop``."""

    def __init__(self, low: float, high: float, stop: asyncio.Event) -> None:
        self._low, self._high, self._stop = low, high, stop
        self._delay = low

    def reset(self) -> None:
        self._delay = self._low

    async def sleep(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), self._delay)
        self._delay = min(self._delay * 2, self._high)


def _entries(reply: Any) -> list[Entry]:
    """Entries of a one-stream XREADGROUP reply (RESP2 list or RESP3 dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        (value,) = reply.values()
        return list(value[0] if value and isinstance(value[0], list) else value)
    return list(reply[0][1])


class Stopped(Exception):
    """Raised out of a retry loop when the archiver is asked to stop."""


class Deferred(msgspec.Struct):
    """Entries PostgreSQL rejected, waiting for their next attempt."""

    entries: dict[bytes, dict[bytes, bytes]]
    attempts: dict[bytes, int]
    due: float = 0.0


class StreamWorker:
    """Archives one stream. Several archivers' workers of one stream share it."""

    def __init__(
        self,
        stream: str,
        redis: AnyRedis,
        writer: HistoryWriter,
        config: ArchiverConfig,
        stop: asyncio.Event,
    ) -> None:
        self.stream = stream
        self._key = stream.encode()
        self._kind = Kind.LIFECYCLE if stream == GLOBAL.events else Kind.MEMBERSHIP
        self._parse = lifecycle_row if self._kind is Kind.LIFECYCLE else membership_row
        self._redis = redis
        self._writer = writer
        self._cfg = config
        self._stop = stop
        self._backoff = Backoff(config.retry_min_s, config.retry_max_s, stop)
        self._deferred = Deferred({}, {})
        self._next_claim = 0.0
        self._next_trim = 0.0

    # -- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._retrying("join group", self._join_group)
            await self._drain_own_pending()
            while not self._stop.is_set():
                try:
                    read = await self._step()
                    self._backoff.reset()
                    if 0 < read < self._cfg.batch_size and self._cfg.linger_ms:
                        # Let a trickle gather into a bigger batch (LINGER_MS).
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._stop.wait(), self._cfg.linger_ms / 1000)
                except Stopped:
                    raise
                except REDIS_CLIENT_ERRORS as exc:
                    if _group_lost(exc):
                        await self._rejoin()
                        continue
                    metrics.FAILURES.labels("redis").inc()
                    log.warning("%s: redis error: %s; retrying", self.stream, exc)
                    await self._backoff.sleep()
                except Exception:
                    # Not a failure of Redis or PostgreSQL: a bug, or a client
                    # library caught in a state it did not expect. The archiver
                    # is the only way out for history, so it logs it loudly and
                    # goes on; whatever was not acknowledged is read again.
                    metrics.FAILURES.labels("unexpected").inc()
                    log.exception("%s: unexpected error; retrying", self.stream)
                    await self._backoff.sleep()
        except Stopped:
            pass  # what was not acknowledged stays pending, for the next start

    async def _rejoin(self) -> None:
        """The group is gone (Redis lost its data: a restart without
        persistence, a FLUSHALL): create it again, from the stream's start."""
        log.warning(
            "%s: consumer group %r is gone (did Redis lose its data?); creating it again",
            self.stream,
            self._cfg.group,
        )
        await self._retrying("join group", self._join_group)

    async def _step(self) -> int:
        """One read and its batch; returns how many new entries were read."""
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + self._cfg.claim_interval_ms / 1000
            await self._claim()
        entries = await self._read_new()
        if self._deferred.entries and time.monotonic() >= self._deferred.due:
            entries = [*self._deferred.entries.items(), *entries]
            self._deferred.entries = {}
        if entries:
            await self._process(entries)
        if self._cfg.trim and time.monotonic() >= self._next_trim:
            self._next_trim = time.monotonic() + self._cfg.trim_interval_ms / 1000
            await self._trim()
        return len(entries)

    async def _join_group(self) -> None:
        try:
            await self._redis.xgroup_create(self.stream, self._cfg.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _drain_own_pending(self) -> None:
        """Entries delivered to this consumer name before a restart come first."""
        cursor = "0"
        while not self._stop.is_set():
            reply = await self._retrying(
                "read own pending",
                lambda c=cursor: self._redis.xreadgroup(  # type: ignore[misc]
                    self._cfg.group,
                    self._cfg.consumer,
                    {self.stream: c},
                    count=self._cfg.batch_size,
                ),
            )
            entries = _entries(reply)
            if not entries:
                return
            log.info("%s: re-processing %d own pending entries", self.stream, len(entries))
            faults.reached("after_read")
            await self._process(entries)
            cursor = entries[-1][0].decode()

    async def _read_new(self) -> list[Entry]:
        block = self._cfg.block_ms
        if self._deferred.entries:
            wait = self._deferred.due - time.monotonic()
            block = max(1, min(block, int(wait * 1000)))
        reply = await self._redis.xreadgroup(
            self._cfg.group,
            self._cfg.consumer,
            {self.stream: ">"},
            count=self._cfg.batch_size,
            block=block,
        )
        entries = _entries(reply)
        if entries:
            faults.reached("after_read")
        return entries

    async def _claim(self) -> None:
        """Take over entries another consumer received and left unacknowledged."""
        cursor: bytes | str = "0-0"
        while not self._stop.is_set():
            reply = await self._redis.xautoclaim(
                self.stream,
                self._cfg.group,
                self._cfg.consumer,
                min_idle_time=self._cfg.claim_idle_ms,
                start_id=cursor,
                count=self._cfg.batch_size,
            )
            cursor, claimed = reply[0], reply[1]
            # Redis 6.2 answers nil for an entry deleted from the stream; our
            # trimming never deletes a pending entry, so that takes an XDEL.
            entries = [
                (eid, fields)
                for eid, fields in claimed
                if eid is not None and eid not in self._deferred.entries
            ]
            if entries:
                metrics.CLAIMED.labels(self.stream).inc(len(entries))
                log.info("%s: claimed %d idle entries", self.stream, len(entries))
                await self._process(entries)
            if cursor in (b"0-0", "0-0"):
                return

    # -- one batch ----------------------------------------------------------------------

    async def _process(self, entries: Sequence[Entry]) -> None:
        rows: list[Row] = []
        done: list[bytes] = []
        dead: list[tuple[bytes, dict[bytes, bytes], str]] = []
        now = now_ms()
        for entry_id, fields in entries:
            if not fields:  # deleted from the stream: nothing left to archive
                done.append(entry_id)
                continue
            try:
                rows.append(self._parse(self._key, entry_id, fields, now))
            except EntryError as exc:
                dead.append((entry_id, fields, f"malformed: {exc}"))
        result = await self._write(rows)
        faults.reached("after_commit")
        done.extend(result.written)
        for entry_id in result.written:
            self._deferred.attempts.pop(entry_id, None)
        by_id = dict(entries)
        for entry_id, reason in result.failed.items():
            attempts = self._deferred.attempts.get(entry_id, 0) + 1
            if attempts >= self._cfg.max_attempts:
                self._deferred.attempts.pop(entry_id, None)
                dead.append((entry_id, by_id[entry_id], f"rejected {attempts} times: {reason}"))
            else:
                self._deferred.attempts[entry_id] = attempts
                self._deferred.entries[entry_id] = by_id[entry_id]
                self._deferred.due = time.monotonic() + self._cfg.retry_min_s * 2**attempts
        if dead:
            await self._retrying("dead-letter", lambda: self._dead_letter(dead))
        done.extend(entry_id for entry_id, _, _ in dead)
        if done:
            await self._retrying("ack", lambda: self._ack(done))
        faults.reached("after_ack")
        metrics.BATCH_ROWS.observe(len(entries))
        metrics.ARCHIVED.labels(self.stream).inc(result.inserted)
        metrics.DUPLICATES.labels(self.stream).inc(len(result.written) - result.inserted)

    async def _write(self, rows: list[Row]) -> WriteResult:
        """Write with retries until it goes through; ``Stopped`` if stopped first."""
        backoff = Backoff(self._cfg.retry_min_s, self._cfg.retry_max_s, self._stop)
        failures = 0
        while True:
            started = time.perf_counter()
            try:
                result = await self._writer.write(self.stream, self._kind, rows)
            except (psycopg.Error, OSError) as exc:
                failures += 1
                metrics.FAILURES.labels("postgres").inc()
                # The first failure and then one in ten: an outage must not flood the log.
                if failures == 1 or failures % 10 == 0:
                    log.warning(
                        "%s: writing %d rows failed (%s, attempt %d); retrying",
                        self.stream,
                        len(rows),
                        str(exc).strip(),
                        failures,
                    )
                if self._stop.is_set():
                    raise Stopped from None
                await backoff.sleep()
                continue
            if rows:
                metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
            if failures:
                log.info(
                    "%s: PostgreSQL write went through after %d failures", self.stream, failures
                )
            return result

    async def _dead_letter(self, dead: list[tuple[bytes, dict[bytes, bytes], str]]) -> None:
        # Copied before acknowledged: a crash in between copies an entry twice
        # (the copies share dl_id), never loses it.
        target = dead_letter_key(self.stream)
        pipe = self._redis.pipeline(transaction=False)
        for entry_id, fields, reason in dead:
            copied: dict[Any, Any] = {
                **fields,
                b"dl_id": entry_id,
                b"dl_stream": self._key,
                b"dl_error": reason.encode(),
                b"dl_consumer": self._cfg.consumer.encode(),
            }
            pipe.xadd(target, copied)
        await pipe.execute()
        for entry_id, _, reason in dead:
            log.error(
                "%s: entry %s moved to %s: %s", self.stream, entry_id.decode(), target, reason
            )
        metrics.DEAD_LETTERED.labels(self.stream).inc(len(dead))

    async def _ack(self, ids: list[bytes]) -> None:
        for i in range(0, len(ids), ACK_CHUNK):
            await self._redis.xack(self.stream, self._cfg.group, *ids[i : i + ACK_CHUNK])

    async def _trim(self) -> None:
        # Below what is archived and outside the change feed's retention window.
        floor = await trim_floor(self._redis, self.stream)
        point = retention.trim_point(floor, now_ms(), self._cfg.retention_ms)
        if point > (0, 1):
            await retention.trim(self._redis, self.stream, point)

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` retried on any error until it succeeds; ``Stopped`` if stopped first."""
        backoff = Backoff(self._cfg.retry_min_s, self._cfg.retry_max_s, self._stop)
        while True:
            try:
                return await call()
            except Stopped:
                raise
            except Exception as exc:
                # Redis unavailable, or anything else (see run): never fatal.
                if _group_lost(exc) and call != self._join_group:
                    await self._rejoin()
                    continue
                if isinstance(exc, REDIS_CLIENT_ERRORS):
                    metrics.FAILURES.labels("redis").inc()
                    log.warning("%s: %s failed: %s; retrying", self.stream, what, exc)
                else:
                    metrics.FAILURES.labels("unexpected").inc()
                    log.exception("%s: %s failed unexpectedly; retrying", self.stream, what)
                if self._stop.is_set():
                    raise Stopped from None
                await backoff.sleep()


def _group_lost(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


async def keep_partitions(
    writer: HistoryWriter, config: ArchiverConfig, stop: asyncio.Event
) -> None:
    """Create month partitions ahead of time, hourly; retried while PostgreSQL is away."""
    backoff = Backoff(config.retry_min_s, config.retry_max_s, stop)
    while not stop.is_set():
        today = dt.datetime.now(dt.UTC).date().replace(day=1)
        months = [today]
        for _ in range(config.partitions_ahead):
            months.append((months[-1] + dt.timedelta(days=32)).replace(day=1))
        try:
            await writer.ensure_partitions(months)
        except (psycopg.Error, OSError) as exc:
            log.warning("creating partitions failed: %s; retrying", exc)
            await backoff.sleep()
            continue
        backoff.reset()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), config.partition_check_s)


async def connect_redis(url: str, block_ms: int) -> AnyRedis:
    """A bytes-speaking client (entries are parsed as bytes); cluster if the node is one."""
    client: AnyRedis = await connect(
        url,
        decode_responses=False,
        socket_connect_timeout=2.0,
        # Blocking reads hold the socket for block_ms; a timeout must outlast them.
        socket_timeout=block_ms / 1000 + 10.0,
        health_check_interval=30,
    )
    return client


async def run(
    redis_url: str,
    database_url: str,
    config: ArchiverConfig | None = None,
    stop: asyncio.Event | None = None,
    streams: list[str] | None = None,
) -> None:
    """Archive until ``stop`` is set (or SIGTERM/SIGINT when run by ``main``)."""
    config = config_module.load() if config is None else config
    stop = asyncio.Event() if stop is None else stop
    faults.arm_from_environment()
    redis = await _connect_with_retry(redis_url, config, stop)
    if redis is None:
        return
    if streams is None:
        keyspace = await _keyspace_with_retry(redis, config, stop)
        if keyspace is None:
            await redis.aclose()
            return
        streams = keyspace.history_streams()
    pool = open_pool(database_url, config.pg_connections)
    await pool.open(wait=False)
    writer = HistoryWriter(pool)
    workers = [StreamWorker(s, redis, writer, config, stop) for s in streams]
    log.info(
        "archiver %r started: %d streams, group %r, batch %d",
        config.consumer,
        len(workers),
        config.group,
        config.batch_size,
    )
    tasks = [asyncio.create_task(w.run(), name=f"archive {w.stream}") for w in workers]
    tasks.append(asyncio.create_task(keep_partitions(writer, config, stop), name="partitions"))
    try:
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pool.close()
        await redis.aclose()
        log.info("archiver %r stopped", config.consumer)


async def _connect_with_retry(
    url: str, config: ArchiverConfig, stop: asyncio.Event
) -> AnyRedis | None:
    backoff = Backoff(config.retry_min_s, config.retry_max_s, stop)
    while not stop.is_set():
        try:
            return await connect_redis(url, config.block_ms)
        except REDIS_CLIENT_ERRORS as exc:
            log.warning("connecting to Redis failed: %s; retrying", exc)
            await backoff.sleep()
    return None


async def _keyspace_with_retry(
    redis: AnyRedis, config: ArchiverConfig, stop: asyncio.Event
) -> Keyspace | None:
    """The deployment's shards; Redis failing is waited out (a wrong count is not)."""
    backoff = Backoff(config.retry_min_s, config.retry_max_s, stop)
    while not stop.is_set():
        try:
            return await load_keyspace(redis, core_config.shards())
        except REDIS_CLIENT_ERRORS as exc:
            log.warning("reading the shard count from Redis failed: %s; retrying", exc)
            await backoff.sleep()
    return None


async def _main(redis_url: str, database_url: str, config: ArchiverConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run(redis_url, database_url, config, stop)


def main() -> int:
    """Entry point of ``segments archiver`` (and ``python -m archiver``)."""
    if not logging.getLogger().handlers:
        logs.configure(logs.log_format())  # SEGMENTS_LOG_FORMAT: text or json
    redis_url, database_url = core_config.redis_url(), core_config.database_url()
    config = config_module.load()
    if redis_url is None or database_url is None:
        raise core_config.ConfigError(
            "REDIS_URL and DATABASE_URL must be set for the archiver"
            " (`segments dev` starts embedded servers and sets them)"
        )
    # A DATABASE_URL that cannot work (unknown database, role or port, no
    # schema) stops the archiver now, before it takes entries it could not
    # archive. An outage after this point is waited out (see _write).
    check_database(database_url)
    if config.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_port)
    asyncio.run(_main(redis_url, database_url, config))
    return 0
