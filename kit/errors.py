"""Domain errors and their mapping to RFC 9457 problem+json responses."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger(__name__)


class DomainError(Exception):
    """Base of errors a service raises for the API to translate; carries an HTTP status."""

    status = 400
    title = "Bad request"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class NotFound(DomainError):
    """The named thing does not exist."""

    status = 404
    title = "Not found"


class Conflict(DomainError):
    """The request clashes with the current state."""

    status = 409
    title = "Conflict"


class InvalidInput(DomainError):
    """The input is well-formed but breaks a rule; errors name the field."""

    status = 422
    title = "Invalid input"

    @classmethod
    def from_validation(cls, what: str, error: Any) -> InvalidInput:
        """A pydantic ValidationError as a 422 naming each field (the document itself as `body`)."""
        errors = [{"field": ".".join(str(p) for p in e["loc"]) or "body", "reason": e["msg"]} for e in error.errors()]
        return cls(f"invalid {what}: {', '.join(e['field'] for e in errors)}", errors=errors)

    @classmethod
    def field(cls, field: str, reason: str) -> InvalidInput:
        """One field's problem, e.g. InvalidInput.field("date", "the schedule does not fire on 2026-12-25")."""
        return cls(f"{field}: {reason}", errors=[{"field": field, "reason": reason}])


class PreconditionFailed(DomainError):
    """An If-Match header named a version that is no longer current."""

    status = 412
    title = "Precondition Failed"


class Forbidden(DomainError):
    """The caller's role may not do this."""

    status = 403
    title = "Forbidden"


class Unauthorized(DomainError):
    """No valid credentials."""

    status = 401
    title = "Unauthorized"


class TooManyAttempts(DomainError):
    """Too many failed attempts from one client: wait, then try again."""

    status = 429
    title = "Too Many Requests"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


def problem(status: int, title: str, detail: str, *, errors: list | None = None,
            headers: dict[str, str] | None = None, instance: str | None = None) -> JSONResponse:
    """Build a problem+json response."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Turn pydantic errors into {field, reason} pairs; the field is the dotted location."""
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        out.append({"field": ".".join(loc) or str(err.get("loc")), "reason": err.get("msg", "invalid")})
    return out


def install_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into problem+json (never a bare 500 page)."""

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if isinstance(exc, TooManyAttempts):
            headers = {"Retry-After": str(exc.retry_after)}
        return problem(exc.status, exc.title, exc.detail, errors=exc.errors, headers=headers,
                       instance=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = _field_errors(exc)
        fields = ", ".join(e["field"] for e in errors)
        return problem(422, "Invalid input", f"invalid field(s): {fields}", errors=errors,
                       instance=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return problem(exc.status_code, _title(exc.status_code), str(exc.detail),
                       headers=getattr(exc, "headers", None), instance=request.url.path)

    @app.exception_handler(OverflowError)
    @app.exception_handler(DataError)
    async def _out_of_range(request: Request, exc: Exception):
        # A number past what the database stores (e.g. an id of 2**63 in the path): the input is wrong, not us.
        return problem(422, "Invalid input", "a value is out of range (numbers must fit a 64-bit integer)",
                       errors=[{"field": "path or query", "reason": "out of range"}], instance=request.url.path)

    @app.exception_handler(OperationalError)
    async def _database_busy(request: Request, exc: OperationalError):
        # The database is down, or (SQLite) another process held the write lock past the busy timeout or
        # committed under a reader that then tried to write: the request changed nothing, retrying can succeed.
        log.warning("database unavailable on %s: %s", request.url.path, str(exc.orig).splitlines()[0][:200])
        return problem(503, "Service Unavailable", "the database is busy or unreachable; nothing was changed, "
                       "retry shortly", headers={"Retry-After": "2"}, instance=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return problem(500, "Internal error", "an unexpected error occurred; it has been logged",
                       instance=request.url.path)


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
