"""HTTP conventions the routes share: versions as ETags, If-Match on updates, Location on creation."""

from __future__ import annotations

import base64

from fastapi import Request, Response

from kit.errors import InvalidInput, PreconditionFailed


def make_cursor(last_id: int) -> str:
    """An opaque cursor for the page after the row `last_id` (clients pass it back; they do not compute it)."""
    return base64.urlsafe_b64encode(f"i{last_id}".encode()).decode().rstrip("=")


def read_cursor(cursor: str | None, field: str = "cursor") -> int | None:
    """The row id a cursor continues after; a 422 naming the field when it is not one of ours."""
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if text.startswith("i") and text[1:].isdigit() and len(text) < 20:
            return int(text[1:])
    except (ValueError, UnicodeDecodeError):
        pass
    raise InvalidInput.field(field, "not a cursor this API gave out (pass next_cursor back unchanged)")


def etag(version: int | str) -> str:
    """The ETag of a stored version (strong: the version number names exactly one body)."""
    return f'"{version}"'


def require_current(request: Request, version: int | str) -> None:
    """412 when the request's If-Match names another version than the current one (no If-Match: no check; `*`
    matches any)."""
    header = request.headers.get("if-match")
    if header is None:
        return
    offered = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    if "*" not in offered and etag(version) not in offered:
        raise PreconditionFailed(f"If-Match {header.strip()} is not the current version {etag(version)}: read it "
                                 "again and reapply the change", errors=[{"field": "If-Match",
                                                                          "reason": f"current is {etag(version)}"}])


def tag(response: Response, version: int | str) -> None:
    """Put a version's ETag on a response."""
    response.headers["ETag"] = etag(version)


def created(response: Response, location: str) -> None:
    """Say where a created resource lives (201's Location)."""
    response.headers["Location"] = location
