"""Segments as history tells them: every incarnation of every slug.

A segment id is one incarnation of a slug: a slug deleted and created again
gets a new id (docs/design.md). The lifecycle events of ``{g}:events``
(archived in ``segment_events``) say, per id, when it was created, each
change of description or percent, and when it was deleted. From them come
the catalogue entry the store keeps (``{g}:segments``: id, description,
percent, created_at, revision), the shards' copies, and the percent a
segment had at any instant, which decides whether a removal leaves the
marker "x".

Membership events name a slug, not an id: :meth:`Catalogue.incarnation_of`
finds the incarnation a slug named at an instant.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import NamedTuple

Key = tuple[int, int, int]
"""When an event took effect, comparable across streams: (timestamp ms,
stream entry ms, rank). Timestamps come first (SPEC §3: the Redis server's
clock); the entry id's clock breaks ties between events stamped alike. Rank
0 is a lifecycle event, 1 a membership event: a segment is created (or
changed) before a membership event of the same instant can name it."""

LIFECYCLE_RANK = 0
MEMBERSHIP_RANK = 1


class LifecycleEvent(NamedTuple):
    """One row of ``segment_events`` (or its entry still in ``{g}:events``)."""

    segment_id: int
    slug: str
    operation: str
    """``created``, ``changed`` or ``deleted``."""
    ts: int
    entry_ms: int
    entry_seq: int
    percent_x100: int
    """0 for none."""
    description: str | None


def percent_x100(value: Decimal | None) -> int:
    """Percent as stored (``Decimal('10.5')``) -> hundredths (1050); None -> 0."""
    return 0 if value is None else int(value * 100)


@dataclass(slots=True)
class Incarnation:
    """One segment id: a slug between its creation and its deletion."""

    id: int
    slug: str
    created_at: int
    """ms; the catalogue's ``created_at``."""
    created_key: Key
    description: str
    percent_x100: int
    """The current percent (0: none)."""
    rev: int
    """Catalogue revision: 1 at creation, +1 per change (updateSegment)."""
    hi: int
    """Highest percent it ever had (the shards' ``seg:hi``)."""
    timeline: list[tuple[Key, int]] = field(default_factory=list)
    """(when, percent) at creation and at each change, in order."""
    deleted_at: int | None = None
    deleted_key: Key | None = None
    synthesized: bool = False
    """Its ``created`` event is missing from history (built from a later one)."""

    @property
    def live(self) -> bool:
        return self.deleted_at is None

    def percent_at(self, when: Key) -> int:
        """The percent the segment had at ``when`` (its first one, if earlier)."""
        i = bisect.bisect_right(self.timeline, (when, 1 << 62))
        return self.timeline[max(i - 1, 0)][1]

    def document(self) -> str:
        """The catalogue entry, as createSegment / updateSegment write it."""
        return json.dumps(
            {
                "id": self.id,
                "description": self.description,
                "pct": self.percent_x100,
                "created_at": self.created_at,
                "rev": self.rev,
            },
            separators=(",", ":"),
        )


class Catalogue:
    """Every incarnation history knows, by id and by slug."""

    def __init__(self, incarnations: Iterable[Incarnation]) -> None:
        self.by_id: dict[int, Incarnation] = {}
        self.by_slug: dict[str, list[Incarnation]] = {}
        for inc in sorted(incarnations, key=lambda i: i.id):
            self.by_id[inc.id] = inc
            self.by_slug.setdefault(inc.slug, []).append(inc)
        self._created: dict[str, list[Key]] = {
            slug: [i.created_key for i in incs] for slug, incs in self.by_slug.items()
        }

    @property
    def max_id(self) -> int:
        return max(self.by_id, default=0)

    def live(self) -> list[Incarnation]:
        return [i for i in self.by_id.values() if i.live]

    def deleted(self) -> list[Incarnation]:
        return [i for i in self.by_id.values() if not i.live]

    def incarnation_of(self, slug: str, ts: int, entry_ms: int) -> Incarnation | None:
        """The incarnation ``slug`` named at (``ts``, ``entry_ms``): the last one created by then.

        An event stamped before the slug's first creation (a clock behind by
        a few ms) belongs to that first one; a slug history never saw
        created gives None.
        """
        incarnations = self.by_slug.get(slug)
        if incarnations is None:
            return None
        if len(incarnations) == 1:  # most slugs were never deleted and created again
            return incarnations[0]
        when: Key = (ts, entry_ms, MEMBERSHIP_RANK)
        i = bisect.bisect_right(self._created[slug], when)
        return incarnations[max(i - 1, 0)]

    @classmethod
    def from_events(cls, events: Iterable[LifecycleEvent]) -> Catalogue:
        """From lifecycle events in (segment id, timestamp, entry id) order."""
        incarnations: dict[int, Incarnation] = {}
        for e in events:
            key: Key = (e.ts, e.entry_ms, LIFECYCLE_RANK)
            inc = incarnations.get(e.segment_id)
            if inc is None:
                inc = Incarnation(
                    id=e.segment_id,
                    slug=e.slug,
                    created_at=e.ts,
                    created_key=key,
                    description=e.description or "",
                    percent_x100=e.percent_x100,
                    rev=1,
                    hi=e.percent_x100,
                    timeline=[(key, e.percent_x100)],
                    synthesized=e.operation != "created",
                )
                incarnations[e.segment_id] = inc
                if e.operation == "created":
                    continue
            if e.operation == "changed":
                inc.rev += 1
                inc.description = e.description or ""
                inc.percent_x100 = e.percent_x100
                inc.hi = max(inc.hi, e.percent_x100)
                inc.timeline.append((key, e.percent_x100))
            elif e.operation == "deleted":
                inc.deleted_at, inc.deleted_key = e.ts, key
        return cls(incarnations.values())
