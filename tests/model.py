"""A pure-Python model of the membership domain (SPEC §3, docs/design.md).

No percent segments: the model covers hand-made memberships, deadlines, the
sweeper, and the deletion of segments and users. Every operation returns
what the service should answer and the history events it should write, as
a list of *blocks* per user: events inside one block may come in any order
(the script walks a hash), the blocks themselves come in order.

An event is ``(user_id, slug, op, ts, reason, deadline)``; ``deadline`` is
the add's deadline (ms) or None (no ``d`` field).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

Event = tuple[int, str, str, int, str, int | None]
Blocks = dict[int, list[list[Event]]]
"""user id -> the blocks of events that user gets from one operation."""


class UnknownSegmentsError(Exception):
    def __init__(self, slugs: list[str]) -> None:
        super().__init__(", ".join(slugs))
        self.slugs = slugs


class SegmentExistsError(Exception):
    pass


class SegmentNotFoundError(Exception):
    pass


def _expired(deadline: int, now: int) -> bool:
    return 0 < deadline <= now


@dataclass
class Model:
    segments: dict[str, int] = field(default_factory=dict)
    """live slug -> segment id"""
    next_id: int = 0
    known: set[int] = field(default_factory=set)
    held: dict[int, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    """user -> slug -> deadline (0: none); includes expired, not yet swept ones."""

    # --- reads -----------------------------------------------------------------

    def live(self, uid: int, now: int) -> list[tuple[str, int]]:
        """What a read answers: memberships whose deadline is not past, sorted."""
        return sorted((s, d) for s, d in self.held.get(uid, {}).items() if not _expired(d, now))

    def counts(self) -> dict[str, int]:
        """Members per live segment, counting unswept expired ones (raw counters)."""
        out = dict.fromkeys(self.segments, 0)
        for memberships in self.held.values():
            for slug in memberships:
                out[slug] += 1
        return out

    def users_with_memberships(self) -> set[int]:
        return {uid for uid, m in self.held.items() if m}

    # --- helpers ---------------------------------------------------------------

    def _expire_user(self, uid: int, now: int) -> list[Event]:
        memberships = self.held.get(uid, {})
        due = sorted((d, s) for s, d in memberships.items() if _expired(d, now))
        for _, slug in due:
            del memberships[slug]
        return [(uid, slug, "remove", d, "ttl", None) for d, slug in due]

    # --- segments --------------------------------------------------------------

    def create_segment(self, slug: str) -> int:
        if slug in self.segments:
            raise SegmentExistsError(slug)
        self.next_id += 1
        self.segments[slug] = self.next_id
        return self.next_id

    def delete_segment(self, slug: str, now: int) -> Blocks:
        if slug not in self.segments:
            raise SegmentNotFoundError(slug)
        del self.segments[slug]
        blocks: Blocks = {}
        for uid, memberships in self.held.items():
            if slug in memberships:
                deadline = memberships.pop(slug)
                if _expired(deadline, now):
                    event: Event = (uid, slug, "remove", deadline, "ttl", None)
                else:
                    event = (uid, slug, "remove", now, "segment_deleted", None)
                blocks[uid] = [[event]]
        return blocks

    # --- users -----------------------------------------------------------------

    def register_users(self, uids: list[int]) -> int:
        new = set(uids) - self.known
        self.known |= new
        return len(new)

    def read(self, uid: int, now: int) -> list[tuple[str, int]]:
        """A lookup: names the user, so the user becomes known."""
        self.known.add(uid)
        return self.live(uid, now)

    def delete_user(self, uid: int, now: int) -> tuple[int, Blocks]:
        ttl = self._expire_user(uid, now)
        memberships = self.held.pop(uid, {})
        gone = [(uid, slug, "remove", now, "user_deleted", None) for slug in sorted(memberships)]
        self.known.discard(uid)
        blocks = [b for b in (ttl, gone) if b]
        return len(gone), ({uid: blocks} if blocks else {})

    def change(
        self, uid: int, adds: list[tuple[str, int]], removes: list[str], now: int
    ) -> tuple[list[tuple[str, int]], Blocks]:
        """adds: (slug, deadline or 0). All or nothing: unknown slugs raise."""
        named = {s for s, _ in adds} | set(removes)
        unknown = sorted(named - set(self.segments))
        if unknown:
            raise UnknownSegmentsError(unknown)
        self.known.add(uid)
        blocks: list[list[Event]] = []
        ttl = self._expire_user(uid, now)
        if ttl:
            blocks.append(ttl)
        memberships = self.held[uid]
        for slug in removes:
            if slug in memberships:
                del memberships[slug]
                blocks.append([(uid, slug, "remove", now, "manual", None)])
        for slug, deadline in adds:
            if slug not in memberships:
                blocks.append([(uid, slug, "add", now, "manual", deadline or None)])
            memberships[slug] = deadline
        return self.live(uid, now), ({uid: blocks} if blocks else {})

    # --- background ------------------------------------------------------------

    def sweep(self, now: int) -> tuple[int, Blocks]:
        blocks: Blocks = {}
        total = 0
        for uid in sorted(self.held):
            ttl = self._expire_user(uid, now)
            if ttl:
                total += len(ttl)
                blocks[uid] = [ttl]
        return total, blocks


def matches_blocks(actual: list[Event], blocks: list[list[Event]]) -> bool:
    """True when ``actual`` is the blocks in order, each block in any order."""
    pos = 0
    for block in blocks:
        chunk = actual[pos : pos + len(block)]
        if sorted(chunk, key=repr) != sorted(block, key=repr):
            return False
        pos += len(block)
    return pos == len(actual)


def replay(events: list[Event]) -> tuple[dict[str, int | None], list[str]]:
    """Folds one user's events (in order) into the memberships they imply.

    Returns (slug -> deadline of the last add, or None) and the list of
    inconsistencies met on the way (an add of a held slug, a remove of one
    not held).
    """
    state: dict[str, int | None] = {}
    problems: list[str] = []
    for event in events:
        _, slug, op, _ts, _reason, deadline = event
        if op == "add":
            if slug in state:
                problems.append(f"add of a held segment: {event}")
            state[slug] = deadline
        elif op == "remove":
            if slug not in state:
                problems.append(f"remove of a segment not held: {event}")
            state.pop(slug, None)
        else:
            problems.append(f"unknown op: {event}")
    return state, problems
