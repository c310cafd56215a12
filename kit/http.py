"""HTTP conventions the routes share: one paging style (limit + opaque cursor -> next_cursor), versions as ETags,
If-Match on updates, Location on creation."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query, Request, Response
from pydantic import BaseModel, Field

from kit.errors import InvalidInput, PreconditionFailed

T = TypeVar("T")


CURSOR_KINDS = {"after": "i", "offset": "o"}  # keyset (after a row id) or position in a short ordered list


def make_cursor(position: int, kind: str = "after") -> str:
    """An opaque cursor (clients pass it back unchanged; they do not compute it)."""
    return base64.urlsafe_b64encode(f"{CURSOR_KINDS[kind]}{position}".encode()).decode().rstrip("=")


def read_cursor(cursor: str | None, kind: str = "after", field: str = "cursor") -> int | None:
    """The position a cursor continues from; a 422 naming the field when it is not one of ours."""
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if text[:1] == CURSOR_KINDS[kind] and text[1:].isdigit() and len(text) < 20:
            return int(text[1:])
    except (ValueError, UnicodeDecodeError):
        pass
    raise InvalidInput.field(field, "not a cursor this API gave out (pass next_cursor back unchanged)")


@dataclass(frozen=True)
class PageQuery:
    """A list request's paging: at most `limit` items, continuing from `cursor`."""

    limit: int
    cursor: str | None

    def after(self) -> int | None:
        """The row id a keyset cursor continues after."""
        return read_cursor(self.cursor, "after")

    def next_after(self, rows: list, key: Callable[[Any], int]) -> str | None:
        """The keyset cursor after a full page (None when the page is short: it was the last)."""
        return make_cursor(key(rows[-1]), "after") if len(rows) == self.limit else None

    def slice(self, fetch: Callable[[int], list]) -> dict[str, Any]:
        """A page of a short ordered list: `fetch(n)` gives its first n items (or all of them)."""
        start = read_cursor(self.cursor, "offset") or 0
        rows = fetch(start + self.limit + 1)
        more = len(rows) > start + self.limit
        return {"items": rows[start:start + self.limit],
                "next_cursor": make_cursor(start + self.limit, "offset") if more else None}


def page_query(limit: Annotated[int, Query(ge=1, le=500, description="at most this many items")] = 100,
               cursor: Annotated[str | None, Query(max_length=40, description="next_cursor of the previous page")]
               = None) -> PageQuery:
    """FastAPI dependency: the `limit` and `cursor` every list takes."""
    return PageQuery(limit, cursor)


PageDep = Annotated[PageQuery, Depends(page_query)]


class Page(BaseModel, Generic[T]):
    """One page of a list; `next_cursor` is null on the last."""

    items: list[T]
    next_cursor: str | None = Field(default=None, description="pass as `cursor` for the next page")


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


# Models documented for bodies a route reads itself (see `read_body_doc`); the OpenAPI document adds their schemas.
DOCUMENTED_MODELS: dict[str, type[BaseModel]] = {}


def read_body_doc(model: type[BaseModel], *alternatives: type[BaseModel], batch: int | None = None,
                  description: str = "", example: Any = None) -> dict[str, Any]:
    """`openapi_extra` for a route that parses its JSON body itself (a batch that keeps its good items, a document
    whose shape depends on the path): the body's schema is `model` (or one of the alternatives; with `batch`, one
    of it or an array of up to `batch`), with its example."""
    refs = []
    for each in (model, *alternatives):
        DOCUMENTED_MODELS[each.__name__] = each
        refs.append({"$ref": f"#/components/schemas/{each.__name__}"})
    ref = refs[0] if len(refs) == 1 else {"oneOf": refs}
    schema = ({"oneOf": [ref, {"type": "array", "items": ref, "minItems": 1, "maxItems": batch}]} if batch else ref)
    examples = [example] if example is not None else \
        (model.model_config.get("json_schema_extra") or {}).get("examples") or []
    content: dict[str, Any] = {"schema": schema}
    if examples:
        content["example"] = examples[0]
    return {"requestBody": {"required": True, "description": description, "content": {"application/json": content}}}


def raw_body_doc(media: dict[str, str], description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """`openapi_extra` for a body that is not JSON (CSV, NDJSON, a provider's form): media type -> example."""
    return {"requestBody": {"required": True, "description": description, "content": {
        kind: {"schema": schema or {"type": "string"}, "example": example} for kind, example in media.items()}}}
