"""The API's contract, applied to every route at once: the OpenAPI document (bearer security with each route's
roles, problem+json as the body of every error, the conventions' headers) and the rule that a query parameter a
route does not declare is refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi import routing as fastapi_routing
from fastapi.routing import APIRoute

from kit import http
from kit.errors import PROBLEM_JSON, InvalidInput
from wiring.examples import load as load_examples

BEARER = "bearer"
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details: every 4xx and 5xx answer has this body.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "about:blank: the status and title say what happened"},
        "title": {"type": "string", "description": "the status's phrase"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string", "description": "what was wrong, for a person"},
        "instance": {"type": "string", "description": "the request's path"},
        "errors": {"type": "array", "description": "each field or row at fault, with its reason",
                   "items": {"type": "object", "required": ["field", "reason"],
                             "properties": {"field": {"type": "string"}, "reason": {"type": "string"},
                                            "row": {"type": "integer"}}}},
    },
    "example": {"type": "about:blank", "title": "Invalid input", "status": 422,
                "detail": "invalid field(s): limit", "instance": "/v1/customers",
                "errors": [{"field": "limit", "reason": "Input should be less than or equal to 500"}]},
}
ERROR_MEANINGS = {
    "401": "no key, or a key that is unknown or revoked",
    "403": "the key's role may not do this",
    "404": "the named resource does not exist",
    "409": "the request clashes with the current state (or its Idempotency-Key is still in progress)",
    "412": "If-Match named a version that is no longer current: read it again, then write",
    "422": "a parameter or a body field breaks the contract; `errors` names each",
    "429": "too many failed attempts from this client: wait Retry-After seconds",
    "500": "an unexpected error (logged with the request id)",
    "503": "the database is busy or unreachable; nothing was changed, retry after Retry-After seconds",
}


def api_routes(app: FastAPI) -> Iterator[Any]:
    """Every API route as served: its effective path (prefixes applied), methods, endpoint and dependant."""
    for context in fastapi_routing.iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute):
            yield context


def route_templates(app: FastAPI) -> dict[int, str]:
    """Each route object's served path template (the request scope holds the route as declared, without the
    prefixes of the routers that include it)."""
    return {id(context.original_route): context.path_format for context in api_routes(app)}


def roles_of(route: Any) -> frozenset | None:
    """The roles a route admits (from its `require(...)` dependency), None when it needs no key."""
    pending = list(route.dependant.dependencies)
    while pending:
        dependant = pending.pop()
        roles = getattr(dependant.call, "allowed_roles", None)
        if roles is not None:
            return roles
        pending.extend(dependant.dependencies)
    return None


def declared_query_names(route: Any) -> frozenset[str]:
    """The query parameters a route declares, its dependencies' included."""
    names, pending = set(), [route.dependant]
    while pending:
        dependant = pending.pop()
        names.update(param.alias for param in dependant.query_params)
        pending.extend(dependant.dependencies)
    return frozenset(names)


OPEN_QUERY = "accepts_registered_filters"  # an endpoint with this attribute checks its own query (GET /customers)


async def refuse_unknown_query(request: Request) -> None:
    """Dependency of every versioned route: a query parameter the route does not declare is a 422 naming it (a
    misspelt filter must not silently widen a list)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or getattr(route.endpoint, OPEN_QUERY, False):
        return
    known = getattr(route, "_declared_query", None)
    if known is None:
        known = route._declared_query = declared_query_names(route)  # type: ignore[attr-defined]
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise InvalidInput(f"unknown query parameter(s): {', '.join(unknown)}", errors=[
            {"field": name, "reason": f"not a parameter of this operation (known: {allowed})"} for name in unknown])


def _problem_response(status: str) -> dict[str, Any]:
    return {"description": ERROR_MEANINGS[status],
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def error_statuses(route: Any, method: str, roles: frozenset | None) -> list[str]:
    """The error statuses an operation can answer."""
    statuses = ["422", "500", "503"]
    if roles is not None:
        statuses += ["401", "403", "429"]
    if "{" in route.path_format:
        statuses.append("404")
    if method in ("post", "put", "delete"):
        statuses.append("409")
    if method == "put":
        statuses.append("412")
    return sorted(statuses)


def document(app: FastAPI) -> None:
    """Wrap app.openapi so the document states the contract every route keeps."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})[BEARER] = {
            "type": "http", "scheme": "bearer", "bearerFormat": "crm_<prefix>_<secret>",
            "description": "An API key (`crm keys create`); each operation names the roles it admits."}
        schemas = components.setdefault("schemas", {})
        schemas["Problem"] = PROBLEM_SCHEMA
        for name, model in sorted(http.DOCUMENTED_MODELS.items()):  # bodies the routes parse themselves
            body = model.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
            schemas.update(body.pop("$defs", {}))
            schemas[name] = body
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        examples = load_examples()
        for route in api_routes(app):
            roles = roles_of(route)
            for method in route.methods:
                operation = schema["paths"].get(route.path_format, {}).get(method.lower())
                if operation is None:
                    continue
                _document_operation(operation, route, method.lower(), roles)
                _attach_example(operation, examples.get(f"{method} {route.path_format}"))
        return schema

    app.openapi = openapi


def _attach_example(operation: dict[str, Any], example: dict[str, Any] | None) -> None:
    """The captured answer (wiring/openapi_examples.json) as the success response's example."""
    if example is None:
        return
    media = operation.get("responses", {}).get(str(example["status"]), {}).get("content", {}).get("application/json")
    if media is not None and "example" not in media:
        media["example"] = example["response"]


def _document_operation(operation: dict[str, Any], route: Any, method: str,
                        roles: frozenset | None) -> None:
    if roles is None:
        operation["security"] = []
        note = "No key: public, or signed by the provider that calls it."
    else:
        operation["security"] = [{BEARER: []}]
        note = "Roles: " + ", ".join(sorted(role.value for role in roles)) + "."
    operation["description"] = f"{operation.get('description', '').rstrip()}\n\n{note}".strip()
    responses = operation.setdefault("responses", {})
    declared = {str(status) for status in route.responses}  # a route's own error body (e.g. readiness's 503) stays
    for status in error_statuses(route, method, roles):
        if status not in declared:
            responses[status] = _problem_response(status)
    parameters = operation.setdefault("parameters", [])
    if method == "post":
        parameters.append({"name": "Idempotency-Key", "in": "header", "required": False,
                           "schema": {"type": "string", "maxLength": 200}, "example": "order-sync-2026-12-04-001",
                           "description": "Send the same key again and the stored answer is replayed; the same key "
                                          "with another body is a 422. Kept 24 hours."})
    if method == "put":
        parameters.append({"name": "If-Match", "in": "header", "required": False,
                           "schema": {"type": "string"}, "example": '"3"',
                           "description": "The ETag of the version read: a stale one is a 412."})
