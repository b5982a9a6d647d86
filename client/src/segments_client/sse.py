"""A parser of Server-Sent Events (the WHATWG rules, for the parts this service uses)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    """A dispatched event: its type, its data (lines joined by newlines) and the last event id."""

    event: str
    data: str
    last_id: str


@dataclass(frozen=True)
class Comment:
    """A comment line (``: text``): this service sends one once a replay is done and while idle."""

    text: str


class SSEParser:
    """Feed it lines (without their end of line); it returns what they complete."""

    def __init__(self, last_id: str = "") -> None:
        self.last_id = last_id
        """The last event id: set by a block that ends, also one without data."""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def line(self, line: str) -> Message | Comment | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return Comment(line[1:].lstrip(" "))
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id" and "\0" not in value:
            self._id = value
        # "retry" and unknown fields: ignored, as the standard says.
        return None

    def _dispatch(self) -> Message | None:
        if self._id is not None:
            self.last_id = self._id
        event, data = self._event or "message", self._data
        self._event, self._data, self._id = "", [], None
        if not data:
            return None  # a block of only an id (or nothing): sets the id, no event
        return Message(event, "\n".join(data), self.last_id)
