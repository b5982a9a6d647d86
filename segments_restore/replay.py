"""One user's history events -> the fields of the user's hash: pure, no I/O.

The rules are the Lua scripts' (service/lua), run backwards from their
events. A user hash maps a segment id to a state (docs/design.md):
``"0"`` member by hand, ``"<ms>"`` member by hand until then, ``"p"`` member
through a percent rollout, ``"x"`` removed by hand (or by expiry) from a
percent cohort, so rollouts leave the user out.

- ``add`` (``manual``): ``"<deadline>"`` or ``"0"``; (``percent``): ``"p"``.
- ``remove`` ``manual``: ``"x"`` when the segment had a percent then, else gone.
- ``remove`` ``ttl``: ``"x"`` when the segment had a percent and the user is in
  its cohort (endMembership), else gone.
- ``remove`` ``percent`` (a ramp down), ``segment_deleted``: gone.
- ``remove`` ``user_deleted``: the whole hash goes, markers too, and the user
  is no longer known (deleteUser).

Events are taken in the order SPEC §3 guarantees is the order the changes
happened: timestamp, then stream entry id.

:func:`replay_user` gives the state as the events leave it (what ``verify``
compares); :func:`settle` turns it into what a restore writes at a given
instant: memberships whose deadline passed are not restored and get their
``ttl`` removal, at the deadline, as the sweeper would have written it;
memberships of segments deleted since (whose removals the loss cut short)
get theirs, as the purge would have; markers of deleted segments go.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from segments_restore.catalogue import MEMBERSHIP_RANK, Catalogue, Incarnation
from service.bucket import in_cohort

REMOVED_BY_HAND = "x"
BY_PERCENT = "p"


class Event(NamedTuple):
    """One membership event, as the replay query gives it (a plain row tuple works too)."""

    user_id: int
    slug: str
    add: bool
    reason: str
    ts: int
    deadline: int
    """ms; 0 for none."""
    entry_ms: int


def is_member(state: str) -> bool:
    return state != REMOVED_BY_HAND


def deadline_of(state: str) -> int:
    """The deadline of a member state, 0 for none (``"p"``, ``"0"``)."""
    return 0 if state == BY_PERCENT else int(state)


@dataclass(slots=True)
class Field:
    incarnation: Incarnation | None
    """None: a slug whose creation history does not hold."""
    state: str


class Removal(NamedTuple):
    """A removal history lacks, to be written as the service would have."""

    slug: str
    ts: int
    reason: str
    """``ttl`` or ``segment_deleted``."""


@dataclass(slots=True)
class UserHistory:
    fields: dict[str, Field] = field(default_factory=dict)
    """slug -> the user's field for that slug's incarnation."""
    known: bool = False
    lost: list[tuple[Incarnation, str]] = field(default_factory=list)
    """Memberships of a deleted incarnation that a later incarnation's add
    replaced with no removal in between (history lost it): incarnation, state."""
    anomalies: int = 0
    """Events that contradict the state so far (a remove of a non-member):
    a gap in history, counted and otherwise ignored."""

    def by_segment_id(self) -> dict[int, str]:
        """The fields as the hash holds them (segment id -> state); orphans left out."""
        return {f.incarnation.id: f.state for f in self.fields.values() if f.incarnation}


def replay_user(user_id: int, events: Iterable[Event], catalogue: Catalogue) -> UserHistory:
    """The user's fields as ``events`` (in order) leave them."""
    h = UserHistory()
    fields = h.fields
    for _, slug, add, reason, ts, deadline, entry_ms in events:
        if reason == "user_deleted":
            # deleteUser: the whole hash goes (markers too) and the user is forgotten.
            fields.clear()
            h.known = False
            continue
        h.known = True
        current = fields.get(slug)
        if add:
            inc = catalogue.incarnation_of(slug, ts, entry_ms)
            if current is not None:
                held = current.incarnation
                if held is not None and (inc is None or held.id > inc.id):
                    inc = held  # stamped a little early: the newer one
                if current.state != REMOVED_BY_HAND:
                    if held is not None and inc is not None and held.id < inc.id:
                        h.lost.append((held, current.state))
                    else:
                        h.anomalies += 1  # an add of a member is never written
            state = BY_PERCENT if reason == "percent" else str(deadline)
            fields[slug] = Field(inc, state)
            continue
        if current is None or current.state == REMOVED_BY_HAND:
            h.anomalies += 1  # a remove of a non-member is never written
            continue
        inc = current.incarnation
        marker = False
        if inc is not None and reason in ("manual", "ttl"):
            pct = inc.percent_at((ts, entry_ms, MEMBERSHIP_RANK))
            # A hand removal from a percent segment; an expiry inside the cohort.
            marker = pct > 0 and (reason == "manual" or in_cohort(slug, user_id, pct))
        if marker:
            current.state = REMOVED_BY_HAND
        else:
            del fields[slug]
    return h


@dataclass(slots=True)
class Settled:
    """What a restore writes for one user."""

    fields: dict[int, str]
    """segment id -> state."""
    removals: list[Removal]
    orphans: int = 0
    """Fields of slugs history never saw created: not restorable."""


def _removal_of_deleted(inc: Incarnation, state: str) -> Removal:
    """How the purge ends a member of a deleted segment (dyingRemoval in common.lua)."""
    assert inc.deleted_at is not None
    deadline = deadline_of(state)
    if 0 < deadline <= inc.deleted_at:
        return Removal(inc.slug, deadline, "ttl")
    return Removal(inc.slug, inc.deleted_at, "segment_deleted")


def settle(user_id: int, history: UserHistory, now_ms: int) -> Settled:
    """The user's hash at ``now_ms``, and the removals history lacks to explain it.

    A membership whose deadline is at or before ``now_ms`` is gone, with a
    ``ttl`` removal at its deadline; the marker "x" stays when the user is in
    the segment's cohort then (endMembership). A membership of a deleted
    segment is gone with the removal the purge writes. Markers of deleted
    segments go without an event, as the purge drops them.
    """
    out: dict[int, str] = {}
    removals: list[Removal] = []
    orphans = 0
    for inc, state in history.lost:
        if not inc.live:  # else history lacks its deletion too: nothing to stamp it with
            removals.append(_removal_of_deleted(inc, state))
    for slug, f in history.fields.items():
        inc = f.incarnation
        if inc is None:
            orphans += 1
            continue
        member = is_member(f.state)
        if not inc.live:
            if member:
                removals.append(_removal_of_deleted(inc, f.state))
            continue
        deadline = deadline_of(f.state) if member else 0
        if 0 < deadline <= now_ms:
            removals.append(Removal(slug, deadline, "ttl"))
            # The same key the replay of that removal will use, so a second
            # restore (which reads it back from history) decides alike.
            pct = inc.percent_at((deadline, now_ms, MEMBERSHIP_RANK))
            if pct > 0 and in_cohort(slug, user_id, pct):
                out[inc.id] = REMOVED_BY_HAND
            continue
        out[inc.id] = f.state
    return Settled(out, removals, orphans)
