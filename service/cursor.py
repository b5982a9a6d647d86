"""The change feed's cursor: a subscriber's position in every history stream.

Opaque to clients (SPEC §4). It is the base64url (no padding) of:
a version byte, the deployment's number of shards, then the position in
each stream of ``Keyspace.history_streams()`` (the global stream, then every
shard's) as varints: the highest ``ms`` once, then per stream ``highest - ms
+ 1`` (0 for a stream with no entry yet) and ``seq``. Streams move together
in time, so the deltas are small: some 70 to 100 characters for 16 shards
instead of 300 for the plain ids.

A position means "every entry up to this id was seen (or filtered out)";
it need not be an entry's id.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

from segments_core.streams import EntryId

VERSION = 1
MAX_VARINT_BYTES = 10
"""A 64-bit value takes at most 10 bytes of 7 bits: more is malformed."""


class CursorError(ValueError):
    """The text is no cursor of this deployment; the message says why (for the reset event)."""


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def encode(shards: int, positions: Sequence[EntryId]) -> str:
    """The cursor of ``positions`` (one per history stream, global stream first)."""
    out = bytearray((VERSION,))
    _put_varint(out, shards)
    top = max((ms for ms, _ in positions), default=0)
    _put_varint(out, top)
    for ms, seq in positions:
        _put_varint(out, top - ms + 1 if ms else 0)
        _put_varint(out, seq)
    return base64.urlsafe_b64encode(out).rstrip(b"=").decode("ascii")


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
    top = reader.varint()
    positions: list[EntryId] = []
    for _ in range(shards + 1):
        delta, seq = reader.varint(), reader.varint()
        if delta > top + 1:
            raise CursorError("malformed cursor (negative time)")
        positions.append((top - delta + 1 if delta else 0, seq))
    if reader.at != len(data):
        raise CursorError("malformed cursor (trailing bytes)")
    return positions
