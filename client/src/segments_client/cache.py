"""The in-memory copy of users' segments behind ``cache=True``.

Rules (README.md, "Cache semantics"), each kept here in one place:

- Served only while the change feed is connected and caught up
  (``serving``); otherwise every lookup goes to the service.
- An entry holds a user's memberships with their deadlines (read with
  ``?expand=true``) and is never returned at or after its earliest deadline,
  by this host's clock.
- An event about a user drops that user's entry; a fetch that was under way
  when such an event (or a ``clear``) came is not stored, since it may have
  read the state from before the change.
- A segment deletion drops every entry holding the slug; until the slug is
  created again, no answer holding it is stored (the deletion reaches each
  user's memberships some time after the segment leaves the lookups).
- At most ``max_entries`` entries; the one to leave is found by the CLOCK
  (second chance) rule, the usual cheap stand-in for least recently used: a
  hit only sets a flag, where a true LRU list would be reordered on every
  hit (the hot path). An entry used since the hand last passed it stays.

Thread-safe: lookups read without a lock (single dict operations, atomic
under the GIL); everything that writes takes the lock.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

MAX_ENTRIES = 100_000
"""Default bound: some 100 to 200 bytes per user with a few segments, so tens of MB."""
DEAD_SLUGS = 1_000
"""Deleted slugs remembered (see the rules above); the oldest is forgotten first."""
NEVER = 1 << 62
"""``expires_ns`` of an entry without a deadline (ns since the epoch, far ahead)."""


class Ticket:
    """A fetch in flight: made stale by an event about its user, or by a clear."""

    __slots__ = ("epoch", "stale", "user_id")

    def __init__(self, user_id: int, epoch: int) -> None:
        self.user_id = user_id
        self.epoch = epoch
        self.stale = False


class _Entry:
    __slots__ = ("expires_ns", "slugs", "used")

    def __init__(self, slugs: list[str], expires_ns: int) -> None:
        self.slugs = slugs
        self.expires_ns = expires_ns
        self.used = False


class MembershipCache:
    def __init__(
        self, max_entries: int = MAX_ENTRIES, clock_ns: Callable[[], int] = time.time_ns
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock_ns = clock_ns
        self._entries: dict[int, _Entry] = {}
        """In insertion order: the CLOCK's hand starts at the oldest."""
        self._lock = threading.Lock()
        self._pending: dict[int, list[Ticket]] = {}
        self._dead: OrderedDict[str, None] = OrderedDict()
        """Deleted slugs, oldest first (bounded by DEAD_SLUGS)."""
        self._epoch = 0
        self.serving = False
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.invalidations = 0

    def __len__(self) -> int:
        return len(self._entries)

    # -- the hot path ------------------------------------------------------------------

    def get(self, user_id: int) -> list[str] | None:
        """The user's segments from memory, or None (then ask the service).

        The hot path: a dict read, a clock read only for an entry with a
        deadline, a flag and a copy of a short list.
        """
        entry = self._entries.get(user_id) if self.serving else None
        if entry is not None and (entry.expires_ns == NEVER or self._clock_ns() < entry.expires_ns):
            entry.used = True
            self.hits += 1
            return entry.slugs.copy()
        self.misses += 1
        return None

    # -- fetches -----------------------------------------------------------------------

    def begin(self, user_id: int) -> Ticket | None:
        """Call before fetching a user; None when nothing may be stored now."""
        with self._lock:
            if not self.serving:
                return None
            ticket = Ticket(user_id, self._epoch)
            self._pending.setdefault(user_id, []).append(ticket)
            return ticket

    def store(self, ticket: Ticket, memberships: Iterable[tuple[str, int | None]]) -> None:
        """Keeps a fetched answer: (slug, deadline in ms or None) per membership."""
        with self._lock:
            self._forget(ticket)
            if ticket.stale or ticket.epoch != self._epoch or not self.serving:
                return
            slugs: list[str] = []
            expires_ns = NEVER
            for slug, deadline_ms in memberships:
                if slug in self._dead:
                    return
                slugs.append(slug)
                if deadline_ms is not None:
                    expires_ns = min(expires_ns, deadline_ms * 1_000_000)
            if self._clock_ns() >= expires_ns:
                return
            entries = self._entries
            entries.pop(ticket.user_id, None)  # to the end: the newest
            entries[ticket.user_id] = _Entry(sorted(slugs), expires_ns)
            while len(entries) > self.max_entries:
                oldest = next(iter(entries))
                entry = entries.pop(oldest)
                if entry.used:  # a second chance, at the end of the line
                    entry.used = False
                    entries[oldest] = entry
                else:
                    self.evictions += 1

    def abandon(self, ticket: Ticket) -> None:
        """The fetch failed: nothing to store."""
        with self._lock:
            self._forget(ticket)

    def _forget(self, ticket: Ticket) -> None:
        waiting = self._pending.get(ticket.user_id)
        if waiting is not None:
            if ticket in waiting:
                waiting.remove(ticket)
            if not waiting:
                del self._pending[ticket.user_id]

    # -- what makes entries stale ------------------------------------------------------

    def invalidate(self, user_id: int) -> None:
        """Something about this user changed."""
        with self._lock:
            if self._entries.pop(user_id, None) is not None:
                self.invalidations += 1
            for ticket in self._pending.get(user_id, ()):
                ticket.stale = True

    def clear(self) -> None:
        """Everything may be stale (a reset, an own change of a segment, a feed with no cursor)."""
        with self._lock:
            self.invalidations += len(self._entries)
            self._entries.clear()
            self._epoch += 1

    def segment_deleted(self, slug: str) -> None:
        with self._lock:
            self._dead[slug] = None
            self._dead.move_to_end(slug)
            while len(self._dead) > DEAD_SLUGS:
                self._dead.popitem(last=False)
            doomed = [uid for uid, e in self._entries.items() if slug in e.slugs]
            for uid in doomed:
                del self._entries[uid]
            self.invalidations += len(doomed)

    def segment_created(self, slug: str) -> None:
        with self._lock:
            self._dead.pop(slug, None)

    def set_serving(self, serving: bool) -> None:
        with self._lock:
            self.serving = serving
