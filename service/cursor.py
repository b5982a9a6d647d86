"""The change feed's cursor: a subscriber's position in every history stream.

Opaque to clients (SPEC §4). It is the base64url (no padding) of:
a version byte, the deployment's number of shards, a base time in ms, then
the position in each stream of ``Keyspace.history_streams()`` (the global
stream, then every shard's) as two varints: ``ms`` as its distance to the
base (zigzag, plus one; 0 for a stream with no entry yet) and ``seq``.
Streams move together in time, so the distances are small: some 70 to 110
characters for 16 shards instead of 300 for the plain ids.

Any base decodes; ``Encoder`` keeps one base and each stream's encoded part,
so the cursor of each event of the hub costs one part and a join, not the
encoding of every stream (a cursor goes with every event sent).

A position means "every entry up to this id was seen (or filtered out)";
it need not be an entry's id.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

from segments_core.streams import EntryId

VERSION = 2
MAX_VARINT_BYTES = 10
"""A 64-bit value takes at most 10 bytes of 7 bits: more is malformed."""


class CursorError(ValueError):
    """The text is no cursor of this deployment; the message says why (for the reset event)."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _part(position: EntryId, base: int) -> bytes:
    ms, seq = position
    if not ms:
        return _varint(0) + _varint(seq)
    distance = ms - base
    zigzag = 2 * distance if distance >= 0 else -2 * distance - 1
    return _varint(zigzag + 1) + _varint(seq)


def _text(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Encoder:
    """Cursors of positions that change one stream at a time."""

    def __init__(self, shards: int, positions: Sequence[EntryId], base: int | None = None) -> None:
        self.base = max((ms for ms, _ in positions), default=0) if base is None else base
        self._head = bytes((VERSION,)) + _varint(shards) + _varint(self.base)
        self._parts = [_part(p, self.base) for p in positions]

    def move(self, stream: int, position: EntryId) -> None:
        self._parts[stream] = _part(position, self.base)

    def text(self) -> str:
        return _text(self._head + b"".join(self._parts))


def encode(shards: int, positions: Sequence[EntryId]) -> str:
    """The cursor of ``positions`` (one per history stream, global stream first)."""
    return Encoder(shards, positions).text()


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def varint(self) -> int:
        value = shift = 0
        for _ in range(MAX_VARINT_BYTES):
            if self.at >= len(self.data):
                raise CursorError("malformed cursor (truncated)")
            byte = self.data[self.at]
            self.at += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
        raise CursorError("malformed cursor (overlong number)")


def decode(text: str, shards: int) -> list[EntryId]:
    """The positions of a cursor made by ``encode`` for a deployment of ``shards``.

    Raises CursorError when the text is not such a cursor (malformed, another
    version, or another number of shards).
    """
    if not text or len(text) > 4096 or not text.isascii():
        raise CursorError("malformed cursor")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise CursorError("malformed cursor (not base64url)") from None
    if not data or data[0] != VERSION:
        raise CursorError("unknown cursor version")
    reader = _Reader(data)
    reader.at = 1
    stored = reader.varint()
    if stored != shards:
        raise CursorError(f"cursor of a deployment with {stored} shards, this one has {shards}")
    base = reader.varint()
    positions: list[EntryId] = []
    for _ in range(shards + 1):
        code, seq = reader.varint(), reader.varint()
        if code == 0:
            positions.append((0, seq))
            continue
        zigzag = code - 1
        ms = base + (zigzag // 2 if zigzag % 2 == 0 else -(zigzag + 1) // 2)
        if ms <= 0:
            raise CursorError("malformed cursor (time before the epoch)")
        positions.append((ms, seq))
    if reader.at != len(data):
        raise CursorError("malformed cursor (trailing bytes)")
    return positions
