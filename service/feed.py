"""The change feed (SPEC §4): history events from the Redis streams to SSE subscribers.

One ``FeedHub`` per API process reads every history stream (one blocking
``XREAD`` over all of them on a single Redis; one per stream on Redis
Cluster, where a command may not span slots) and hands each batch to the
subscribers of that process. So a thousand subscribers cost one reader, and
events are parsed and encoded once.

Each subscriber has a bounded buffer (``MAX_BUFFERED`` events). One that
cannot keep up is disconnected rather than buffered without end; it comes
back with its cursor and misses nothing (within the retention window).

Delivery, per subscriber (``FeedSession``):

- no cursor: live from the hub's position at subscription;
- a cursor (``Last-Event-ID``) every stream can still resume from
  (``segments_core.retention``): the entries after it are read with
  ``XRANGE`` up to the end, then the subscriber joins the hub and reads the
  few entries that came meanwhile up to the hub's position at joining; from
  there the hub's events follow. Per stream the subscriber's position only
  grows, so no event comes twice and none is skipped. A cursor made by
  another API process may be ahead of this one's hub in some stream: those
  entries are skipped until the hub passes it;
- a cursor that is malformed, of another shard count, or older than what a
  stream still holds: ``event: reset``, then live.

After the replay, and after ``heartbeat_s`` without an event, a comment
line is sent with the current cursor as ``id:`` (an SSE block without data
sets the client's last event id and dispatches nothing): a client that sees
it knows it has every event up to that point, and a filtered subscriber's
cursor keeps up with the streams even when nothing matches for a long time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import datetime
from types import FrameType
from typing import Any, NamedTuple

import msgspec
from redis.asyncio import RedisCluster
from redis.exceptions import RedisError

from segments_core.clock import to_datetime
from segments_core.keys import Keyspace
from segments_core.redis_client import connect
from segments_core.retention import stream_bounds
from segments_core.streams import ZERO, EntryId, format_id, last_generated_ids, parse_id
from service import cursor

log = logging.getLogger("segments.feed")

READ_BLOCK_MS = 2_000
"""How long one blocking read waits for entries (its socket timeout is longer)."""
READ_TIMEOUT_MARGIN_S = 3.0
"""A blocking read's socket timeout is its block time plus this."""
READ_COUNT = 1_000
"""Entries per stream per read: bounds the time and memory of one dispatch."""
BACKFILL_COUNT = 1_000
"""Entries per ``XRANGE`` while a resuming subscriber catches up."""
MAX_BUFFERED = 10_000
"""Events waiting for one subscriber before it is disconnected as too slow:
some seconds of the bench's change load. The events are shared by every
subscriber: a buffer costs a reference per event, the frames a few MB.
Never below two rounds of reads (``2 * READ_COUNT`` per stream): the reads of
all streams can land before a subscriber's task runs once, and that alone
must not count as falling behind."""
HEARTBEAT_S = 15.0
"""Comment line sent after this long without an event (SPEC §4), so proxies
and clients see a live connection."""
RETRY_MIN_S = 0.1
"""First wait after the reader lost Redis; doubles up to RETRY_MAX_S."""
RETRY_MAX_S = 2.0

_REASONS = frozenset(("manual", "ttl", "percent", "segment_deleted", "user_deleted"))
_ACTIONS = frozenset(("created", "changed", "deleted"))


class ChangeData(msgspec.Struct):
    """``data`` of ``event: change``."""

    user_id: int
    segment: str
    operation: str
    timestamp: datetime
    reason: str
    expires_at: datetime | None


class SegmentData(msgspec.Struct):
    """``data`` of ``event: segment``."""

    slug: str
    action: str
    percent: float | None
    timestamp: datetime


_encode = msgspec.json.Encoder().encode


class FeedEvent:
    """One history entry, parsed and encoded once for every subscriber."""

    __slots__ = (
        "_frame",
        "cursor",
        "data",
        "entry_id",
        "kind",
        "positions",
        "segment",
        "stream",
        "user_id",
    )

    def __init__(
        self,
        stream: int,
        entry_id: EntryId,
        kind: bytes,
        data: bytes,
        user_id: int | None,
        segment: str,
    ) -> None:
        self.stream = stream
        """Index in ``Keyspace.history_streams()``."""
        self.entry_id = entry_id
        self.kind = kind
        self.data = data
        self.user_id = user_id
        """None for a segment event."""
        self.segment = segment
        self.positions: tuple[EntryId, ...] = ()
        """The hub's position in every stream right after this event."""
        self.cursor: str | None = None
        """The cursor of ``positions``, when the hub made it already."""
        self._frame: bytes | None = None

    def frame(self, shards: int) -> bytes:
        """The SSE block, with the hub's cursor after this event (built once)."""
        if self._frame is None:
            text = self.cursor or cursor.encode(shards, self.positions)
            self._frame = sse_block(self.kind, text, self.data)
        return self._frame


def sse_block(kind: bytes, cursor_text: str, data: bytes) -> bytes:
    return b"event: %s\nid: %s\ndata: %s\n\n" % (kind, cursor_text.encode(), data)


def _ms(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 16:
        raise ValueError(f"not a time in ms: {raw!r}")
    return int(raw)


def parse_entry(stream: int, entry_id: EntryId, fields: dict[str, str]) -> FeedEvent | None:
    """The event of one stream entry (contract: docs/design.md); None when malformed.

    A malformed entry (the archiver dead-letters those) is skipped, not sent.
    """
    try:
        if stream == 0:
            action, percent = fields["o"], fields.get("p", "")
            if action not in _ACTIONS:
                raise ValueError(f"unknown action {action!r}")
            segment_data = SegmentData(
                slug=fields["s"],
                action=action,
                percent=float(percent) if percent else None,
                timestamp=to_datetime(_ms(fields["t"])),
            )
            return FeedEvent(stream, entry_id, b"segment", _encode(segment_data), None, fields["s"])
        user, operation, reason = fields["u"], fields["o"], fields["r"]
        if not user.isdigit() or operation not in ("add", "remove") or reason not in _REASONS:
            raise ValueError("bad field")
        deadline = fields.get("d")
        change = ChangeData(
            user_id=int(user),
            segment=fields["s"],
            operation=operation,
            timestamp=to_datetime(_ms(fields["t"])),
            reason=reason,
            expires_at=to_datetime(_ms(deadline)) if deadline else None,
        )
        data = _encode(change)
        return FeedEvent(stream, entry_id, b"change", data, change.user_id, change.segment)
    except (KeyError, ValueError, OverflowError, OSError) as exc:
        log.warning("feed: entry %s of stream %d skipped: %s", format_id(entry_id), stream, exc)
        return None


class EventFilter(NamedTuple):
    """The ``segment`` and ``user_id`` filters; both given: both must match."""

    segment: str | None = None
    user_id: int | None = None

    @property
    def everything(self) -> bool:
        return self.segment is None and self.user_id is None

    def matches(self, event: FeedEvent) -> bool:
        if self.user_id is not None and event.user_id != self.user_id:
            return False  # segment events name no user: a user filter leaves them out
        return self.segment is None or event.segment == self.segment

    def streams(self, keyspace: Keyspace) -> list[int]:
        """Indexes of the streams that can hold a matching event."""
        if self.user_id is not None:
            return [1 + keyspace.shard_of(self.user_id)]
        return list(range(keyspace.shards + 1))


class FeedClosed(Exception):
    """The subscription was ended by the hub; the message says why."""


class Subscription:
    """One subscriber's bounded buffer of events, filled by the hub."""

    def __init__(self, event_filter: EventFilter, limit: int) -> None:
        self.filter = event_filter
        self.limit = limit
        self.closed: str | None = None
        self._events: deque[FeedEvent] = deque()
        self._wake = asyncio.Event()

    @property
    def buffered(self) -> int:
        return len(self._events)

    def offer(self, events: list[FeedEvent]) -> bool:
        """Queues the matching events; False when that would pass the limit (closed then)."""
        if self.closed is not None:
            return False
        keep = self.filter
        matching = events if keep.everything else [e for e in events if keep.matches(e)]
        if not matching:
            return True
        # One read of the hub may bring more than the limit: a subscriber that has
        # taken everything so far keeps up, whatever the size of the next batch.
        if self._events and len(self._events) + len(matching) > self.limit:
            self.close("subscriber too slow: reconnect with the last event id")
            return False
        self._events.extend(matching)
        self._wake.set()
        return True

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        self._events.clear()
        self._wake.set()

    async def next(self, timeout: float) -> list[FeedEvent] | None:
        """Every buffered event; None after ``timeout`` seconds without one."""
        if not self._events and self.closed is None:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
        if self.closed is not None:
            raise FeedClosed(self.closed)
        if not self._events:
            return None
        batch = list(self._events)
        self._events.clear()
        return batch


def _reply_streams(reply: Any) -> Iterable[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """(stream, entries) of an XREAD reply, RESP2 list or RESP3 dict."""
    if not reply:
        return ()
    if isinstance(reply, dict):
        return [
            (name, value[0] if value and isinstance(value[0], list) else value)
            for name, value in reply.items()
        ]
    return [(name, entries) for name, entries in reply]


class FeedHub:
    """The process's one reader of the history streams, and its subscribers."""

    def __init__(
        self,
        redis: Any,
        keyspace: Keyspace,
        *,
        cluster: bool,
        buffer_limit: int | None = None,
        heartbeat_s: float | None = None,
        read_block_ms: int = READ_BLOCK_MS,
    ) -> None:
        """``redis``: a client of its own (decoding responses, socket timeout
        above ``read_block_ms``); ``cluster``: read each stream on its own.
        Unset knobs take the module's constants when the hub is made (tests
        change them there)."""
        self.redis = redis
        self.keyspace = keyspace
        self.shards = keyspace.shards
        self.streams = keyspace.history_streams()
        self._index = {name: i for i, name in enumerate(self.streams)}
        self.cluster = cluster
        self.read_count = READ_COUNT
        limit = MAX_BUFFERED if buffer_limit is None else buffer_limit
        self.buffer_limit = max(limit, 2 * self.read_count * len(self.streams))
        self.heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self.read_block_ms = read_block_ms
        self.positions: list[EntryId] = [ZERO] * len(self.streams)
        self._encoder = cursor.Encoder(self.shards, self.positions)
        self.subscribers: set[Subscription] = set()
        self._failing: set[int] = set()
        """Readers (by their first stream) whose last read failed."""
        self.readers = 0
        """Blocking reads in progress or looping (1 on a single Redis)."""
        self._tasks: list[asyncio.Task[None]] = []
        """One reader per stream on Cluster, one for all streams on a single Redis."""
        self._started = False
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Takes every stream's current end as the start, then reads in the background."""
        ids = await last_generated_ids(self.redis, self.streams)
        self.positions = [ids[s] for s in self.streams]
        self._encoder = cursor.Encoder(self.shards, self.positions)
        self._started = True
        n = len(self.streams)
        groups = [[i] for i in range(n)] if self.cluster else [list(range(n))]
        self._tasks = [
            asyncio.create_task(self._follow(group), name=f"feed-read-{group[0]}")
            for group in groups
        ]

    async def stop(self) -> None:
        """Ends every subscription and the reader, and closes the hub's Redis client."""
        # The flag first: redis-py may turn the cancel of a blocked read into
        # another error while it cleans the connection up, which the readers
        # would otherwise take for a failure and retry.
        self._stopping = True
        self.close_subscribers("server shutting down")
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # A read on Cluster does not always give way to the cancel (redis-py
            # cleaning up a connection it was opening); the flag ends it once its
            # block is over. Bounded, so a stop never hangs.
            await asyncio.wait(self._tasks, timeout=self.read_block_ms / 1000 + 1.0)
        await self.redis.aclose()

    def close_subscribers(self, reason: str) -> None:
        """Ends every subscription (they reconnect with their cursors)."""
        for sub in list(self.subscribers):
            sub.close(reason)
        self.subscribers.clear()

    # -- subscribers -----------------------------------------------------------------

    def subscribe(self, event_filter: EventFilter) -> tuple[Subscription, list[EntryId]]:
        """A new subscription, and the positions from which the hub will feed it."""
        sub = Subscription(event_filter, self.buffer_limit)
        self.subscribers.add(sub)
        return sub, list(self.positions)

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)

    # -- the reader ------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Reading every stream: False before the start and while a read fails."""
        return self._started and not self._failing

    async def _follow(self, indexes: list[int]) -> None:
        """Reads ``indexes`` for ever; a failure ends every subscription, then retries.

        Each reader retries on its own (no task group): the others keep
        reading, and none depends on a blocked read giving way to a cancel.
        """
        key = indexes[0]
        delay = RETRY_MIN_S
        while not self._stopping:
            try:
                await self._read(indexes, key)
            except Exception as exc:
                if self._stopping:
                    return
                if isinstance(exc, RedisError | OSError):
                    log.warning("feed: reading %s failed: %s; retrying", self.streams[key], exc)
                else:
                    log.error("feed: reader of %s failed; restarting it", self.streams[key],
                              exc_info=exc)
                if key not in self._failing:
                    delay = RETRY_MIN_S  # it had recovered since its last failure
                self._failing.add(key)
                # A subscriber must not silently miss what this reader misses.
                self.close_subscribers("the feed lost Redis: reconnect with the last event id")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _read(self, indexes: list[int], key: int) -> None:
        self.readers += 1
        try:
            while not self._stopping:
                reply = await self.redis.xread(
                    {self.streams[i]: format_id(self.positions[i]) for i in indexes},
                    count=self.read_count,
                    block=self.read_block_ms,
                )
                self._failing.discard(key)
                for name, entries in _reply_streams(reply):
                    self._dispatch(self._index[name], entries)
        finally:
            self.readers -= 1

    def _dispatch(self, stream: int, entries: Sequence[tuple[str, dict[str, str]]]) -> None:
        # No await in here: a subscriber joins between two dispatches, never during one.
        events: list[FeedEvent] = []
        positions, encoder = self.positions, self._encoder
        listened = bool(self.subscribers)
        for raw_id, fields in entries:
            entry_id = parse_id(raw_id)
            positions[stream] = entry_id
            encoder.move(stream, entry_id)
            if not listened:
                continue  # nobody to parse it for
            event = parse_entry(stream, entry_id, fields)
            if event is not None:
                event.positions = tuple(positions)
                event.cursor = encoder.text()
                events.append(event)
        if events:
            for sub in list(self.subscribers):
                if not sub.offer(events):
                    self.subscribers.discard(sub)


async def open_hub(redis_url: str, keyspace: Keyspace) -> FeedHub:
    """A started hub on a Redis client of its own (blocking reads hold a connection)."""
    redis = await connect(redis_url, socket_timeout=READ_BLOCK_MS / 1000 + READ_TIMEOUT_MARGIN_S)
    hub = FeedHub(redis, keyspace, cluster=isinstance(redis, RedisCluster))
    try:
        await hub.start()
    except BaseException:
        await redis.aclose()
        raise
    return hub


class Resume(NamedTuple):
    """Where a new subscriber starts: positions to resume from, or live (with a reset)."""

    positions: list[EntryId] | None
    reset: str | None


async def resume_point(
    hub: FeedHub, event_filter: EventFilter, last_event_id: str | None
) -> Resume:
    """Checks a ``Last-Event-ID``; reads Redis (its errors are the caller's 503)."""
    if not last_event_id:
        return Resume(None, None)
    try:
        positions = cursor.decode(last_event_id.strip(), hub.shards)
    except cursor.CursorError as exc:
        return Resume(None, str(exc))
    if not await _resumable(hub, event_filter, positions):
        return Resume(None, "cursor older than the retention window, or unknown")
    return Resume(positions, None)


async def _resumable(hub: FeedHub, event_filter: EventFilter, positions: list[EntryId]) -> bool:
    wanted = event_filter.streams(hub.keyspace)
    bounds = await stream_bounds(hub.redis, [hub.streams[i] for i in wanted])
    return all(b.resumable_from(positions[i]) for i, b in zip(wanted, bounds, strict=True))


def _max(a: Sequence[EntryId], b: Sequence[EntryId]) -> list[EntryId]:
    return [max(x, y) for x, y in zip(a, b, strict=True)]


class FeedSession:
    """One subscriber's response: the SSE blocks, from its start point on."""

    def __init__(self, hub: FeedHub, event_filter: EventFilter, resume: Resume) -> None:
        self.hub = hub
        self.filter = event_filter
        self.resume = resume
        self.floor: list[EntryId] | None = None
        """Positions of the client ahead of the hub (a cursor of another process)."""

    def _cursor(self, positions: Sequence[EntryId]) -> str:
        return cursor.encode(self.hub.shards, positions)

    def _marker(self, positions: Sequence[EntryId], comment: bytes) -> bytes:
        return b": %s\nid: %s\n\n" % (comment, self._cursor(positions).encode())

    def _reset(self, positions: Sequence[EntryId], reason: str) -> bytes:
        return sse_block(b"reset", self._cursor(positions), _encode({"reason": reason}))

    async def blocks(self) -> AsyncIterator[bytes]:
        hub = self.hub
        sub: Subscription | None = None
        try:
            if self.resume.positions is None:
                sub, vector = hub.subscribe(self.filter)
                head = self._reset(vector, self.resume.reset) if self.resume.reset else b""
                yield head + self._marker(vector, b"live")
            else:
                start = self.resume.positions
                vector = list(start)
                async for chunk in self._replay(vector, None):
                    yield chunk
                sub, joined = hub.subscribe(self.filter)
                async for chunk in self._replay(vector, joined):
                    yield chunk
                if not await _resumable(hub, self.filter, start):
                    # Trimmed while we read: what came after a gap is no use.
                    yield self._reset(joined, "cursor passed out of the retention window")
                    vector = joined
                elif any(v > j for v, j in zip(vector, joined, strict=True)):
                    vector = self.floor = _max(vector, joined)
                else:
                    vector = joined
                yield self._marker(vector, b"live")
            while True:
                batch = await sub.next(hub.heartbeat_s)
                if batch is None:
                    # Nothing buffered: every event up to the hub's position is delivered.
                    now = hub.positions if self.floor is None else _max(hub.positions, self.floor)
                    yield self._marker(now, b"heartbeat")
                else:
                    blocks = self._blocks(batch)
                    if blocks:
                        yield blocks
        except FeedClosed as closed:
            log.info("feed: subscriber disconnected: %s", closed)
        except (RedisError, OSError) as exc:
            # Mid-response there is no 503 to give: end it; the client resumes.
            log.warning("feed: replay to a subscriber failed: %s", exc)
        finally:
            if sub is not None:
                hub.unsubscribe(sub)

    def _blocks(self, batch: list[FeedEvent]) -> bytes:
        shards = self.hub.shards
        floor = self.floor
        if floor is None:
            return b"".join(e.frame(shards) for e in batch)
        out: list[bytes] = []
        for event in batch:
            if floor is None:
                out.append(event.frame(shards))
            elif event.entry_id > floor[event.stream]:
                positions = event.positions
                if all(p >= f for p, f in zip(positions, floor, strict=True)):
                    floor = None  # the hub has caught up with the client
                    out.append(event.frame(shards))
                else:
                    ahead = self._cursor(_max(positions, floor))
                    out.append(sse_block(event.kind, ahead, event.data))
        self.floor = floor
        return b"".join(out)

    async def _replay(
        self, vector: list[EntryId], until: list[EntryId] | None
    ) -> AsyncIterator[bytes]:
        """Entries after ``vector`` up to ``until`` (None: the end), advancing ``vector``."""
        hub = self.hub
        wanted = self.filter.streams(hub.keyspace)
        encoder = cursor.Encoder(hub.shards, vector)
        for i in wanted:
            upper = "+" if until is None else format_id(until[i])
            while until is None or vector[i] < until[i]:
                entries = await hub.redis.xrange(
                    hub.streams[i], min="(" + format_id(vector[i]), max=upper, count=BACKFILL_COUNT
                )
                out: list[bytes] = []
                for raw_id, fields in entries:
                    vector[i] = parse_id(raw_id)
                    encoder.move(i, vector[i])
                    event = parse_entry(i, vector[i], fields)
                    if event is not None and self.filter.matches(event):
                        out.append(sse_block(event.kind, encoder.text(), event.data))
                if out:
                    yield b"".join(out)
                if len(entries) < BACKFILL_COUNT:
                    break
        if until is not None:
            # Every entry up to ``until`` is seen now (or cannot match the filter).
            vector[:] = _max(vector, until)


def end_streams_on_exit(hub: FeedHub) -> Callable[[], None]:
    """Ends every subscription as soon as the process is asked to stop.

    uvicorn waits for open responses before it shuts the app down, and a
    feed response never ends by itself: without this, every restart waited
    for ``timeout_graceful_shutdown``. The handler runs the previous one
    (uvicorn's) first. Only the main thread can set handlers; elsewhere
    (tests running the server in a thread) this does nothing. Returns the
    function that puts the previous handlers back.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(hub.close_subscribers, "server shutting down")
        handler = previous.get(signum)
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)

    def restore() -> None:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is on_signal:
                signal.signal(sig, handler)

    return restore
