"""The domain's exceptions; ``service.app`` maps them to HTTP in one place."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the domain reports to a client."""

    status_code = 400

    def __init__(self, detail: str, extra: dict[str, object] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}


def error_body(exc: DomainError) -> dict[str, object]:
    """The JSON body of an error answer: the same shape as Litestar's own."""
    body: dict[str, object] = {"status_code": exc.status_code, "detail": exc.detail}
    if exc.extra:
        body["extra"] = exc.extra
    return body


class SegmentExists(DomainError):
    status_code = 409


class SegmentNotFound(DomainError):
    status_code = 404


class UnknownSegments(DomainError):
    status_code = 404

    def __init__(self, slugs: list[str]) -> None:
        super().__init__(f"unknown segment(s): {', '.join(slugs)}", {"unknown": slugs})
        self.slugs = slugs


class InvalidRequest(DomainError):
    status_code = 400


class ScriptArgumentError(DomainError):
    """A Lua script refused its arguments (BADARG); nothing was changed.

    The edge validates everything first, so reaching this is a bug of ours,
    but it is still the client's request that cannot be applied: 400.
    """

    status_code = 400
