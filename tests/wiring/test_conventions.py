"""The API's conventions, checked by walking the route list: versioned paths, bearer security with role notes,
problem+json on every error status, unknown query parameters refused everywhere, Location on 201, ETag/If-Match on
updates, Idempotency-Key on POSTs."""

from __future__ import annotations

import re

from crm.models import Role
from kit.errors import PROBLEM_JSON
from tests.wiring.test_role_matrix import SAMPLE_PARAMS, _walk
from wiring.contract import api_routes, declared_query_names, error_statuses, roles_of

PEOPLE_PAGES = ("/console", "/docs", "/redoc")  # pages for people, not the versioned contract


def test_every_api_route_is_under_v1(app):
    unversioned = [(m, p) for m, p in _walk(app.routes) if not p.startswith(("/v1/", *PEOPLE_PAGES))]
    assert not unversioned, unversioned


def test_every_operation_documents_security_roles_and_problem_bodies(app):
    schema = app.openapi()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "crm_<prefix>_<secret>",
        "description": "An API key (`crm keys create`); each operation names the roles it admits."}
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    checked = 0
    for route in api_routes(app):
        if not route.include_in_schema:
            continue
        roles = roles_of(route)
        for method in route.methods - {"HEAD"}:
            operation = schema["paths"][route.path_format][method.lower()]
            where = f"{method} {route.path_format}"
            if roles is None:
                assert operation["security"] == [] and "No key" in operation["description"], where
            else:
                assert operation["security"] == [{"bearer": []}], where
                assert "Roles: " + ", ".join(sorted(r.value for r in roles)) in operation["description"], where
            for status in set(error_statuses(route, method.lower(), roles)) - {str(s) for s in route.responses}:
                content = operation["responses"][status]["content"]
                assert content == {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}, where
            headers = {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}
            assert ("Idempotency-Key" in headers) == (method == "POST"), where
            assert ("If-Match" in headers) == (method == "PUT"), where
            checked += 1
    assert checked > 70


def test_an_unknown_query_parameter_is_a_422_on_every_route(app, client, auth_header):
    admin = auth_header(Role.admin)
    walked = 0
    for method, path in _walk(app.routes):
        if not path.startswith("/v1/") or path == "/v1/openapi.json":
            continue
        url = re.sub(r"\{(\w+)\}", lambda m: SAMPLE_PARAMS[m.group(1)], path)
        answer = client.request(method, url, params={"no_such_filter": "1"}, headers=admin, json={})
        assert answer.status_code == 422, (method, path, answer.status_code)
        assert answer.headers["content-type"] == PROBLEM_JSON, (method, path)
        assert "no_such_filter" in [e["field"] for e in answer.json()["errors"]], (method, path, answer.text)
        walked += 1
    assert walked > 70


def test_creation_answers_201_with_the_location_of_what_it_made(client, auth_header):
    admin = auth_header(Role.admin)
    key = client.post("/v1/keys", json={"name": "loc", "role": "support"}, headers=admin)
    assert key.status_code == 201 and key.headers["location"] == f"/v1/keys/{key.json()['id']}"
    imported = client.post("/v1/imports/customers", content=b"external_id\nLOC1\n", headers=admin)
    assert imported.status_code == 201 and imported.headers["location"] == f"/v1/imports/{imported.json()['id']}"
    assert client.get(imported.headers["location"], headers=admin).json()["id"] == imported.json()["id"]


def test_a_stale_if_match_is_a_412_and_the_current_one_writes(client, auth_header):
    admin = auth_header(Role.admin)
    read = client.get("/v1/guard-rails", headers=admin)
    document, tag = read.json()["settings"], read.headers["etag"]
    written = client.put("/v1/guard-rails", json=document, headers=admin | {"If-Match": tag})
    assert written.status_code == 200 and written.headers["etag"] != tag
    stale = client.put("/v1/guard-rails", json=document, headers=admin | {"If-Match": tag})
    assert stale.status_code == 412 and stale.headers["content-type"] == PROBLEM_JSON
    assert stale.json()["errors"][0]["field"] == "If-Match"
    rule_set = client.get("/v1/segmentation/rule-sets/tier", headers=admin)
    stale_rules = client.put("/v1/segmentation/rule-sets/tier", json=rule_set.json()["body"],
                             headers=admin | {"If-Match": '"999"'})
    assert stale_rules.status_code == 412


def test_idempotency_key_replays_the_answer_and_refuses_another_body(client, auth_header):
    admin = auth_header(Role.admin)
    once = admin | {"Idempotency-Key": "create-key-1"}
    first = client.post("/v1/keys", json={"name": "idem", "role": "support"}, headers=once)
    again = client.post("/v1/keys", json={"name": "idem", "role": "support"}, headers=once)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotency-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert [k["name"] for k in client.get("/v1/keys", headers=admin).json()["items"]].count("idem") == 1  # made once
    other = client.post("/v1/keys", json={"name": "other", "role": "support"}, headers=once)
    assert other.status_code == 422 and other.json()["errors"][0]["field"] == "Idempotency-Key"
    fresh = client.post("/v1/keys", json={"name": "idem", "role": "support"},
                        headers=admin | {"Idempotency-Key": "create-key-2"})
    assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]


def test_a_failed_post_is_not_kept_under_its_idempotency_key(client, auth_header):
    admin = auth_header(Role.admin) | {"Idempotency-Key": "bad-then-good"}
    assert client.post("/v1/keys", json={"name": "x", "role": "emperor"}, headers=admin).status_code == 422
    corrected = client.post("/v1/keys", json={"name": "x", "role": "support"}, headers=admin)
    assert corrected.status_code == 201  # the refused body left no answer behind to replay or clash with


def test_every_list_pages_by_limit_and_cursor_to_next_cursor(app, client, auth_header):
    admin = auth_header(Role.admin)
    lists = 0
    for route in api_routes(app):
        if "GET" not in route.methods or "{" in route.path_format or not route.include_in_schema:
            continue
        answer = client.get(route.path_format, headers=admin)
        if answer.status_code != 200 or not answer.headers["content-type"].startswith("application/json"):
            continue
        body = answer.json()
        assert not isinstance(body, list), f"{route.path_format} answers a bare array: page it"
        if isinstance(body, dict) and "items" in body:
            assert "next_cursor" in body, route.path_format
            assert {"limit", "cursor"} <= declared_query_names(route), route.path_format
            assert client.get(route.path_format, params={"cursor": "bogus!"}, headers=admin).status_code == 422
            assert client.get(route.path_format, params={"limit": 0}, headers=admin).status_code == 422
            lists += 1
    assert lists >= 15


def test_pages_of_a_short_list_cover_it_once(client, auth_header):
    admin = auth_header(Role.admin)
    for n in range(3):
        client.post("/v1/keys", json={"name": f"page-{n}", "role": "support"}, headers=admin)
    everything = [k["id"] for k in client.get("/v1/keys", headers=admin).json()["items"]]
    seen, cursor = [], None
    while True:
        page = client.get("/v1/keys", params={"limit": 2, **({"cursor": cursor} if cursor else {})},
                          headers=admin).json()
        seen += [k["id"] for k in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == everything and len(everything) >= 3 + len(Role)


def _component(schema: dict, node: dict) -> dict:
    ref = node.get("$ref", "")
    return schema["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else node


def _untyped(schema: dict, node: dict) -> bool:
    """No shape at all: {} or an object that only allows anything (`dict[str, Any]` on a route)."""
    node = _component(schema, node)
    if any(key in node for key in ("properties", "items", "oneOf", "anyOf", "allOf", "$ref", "enum", "const")):
        return False
    if node.get("type") in ("string", "integer", "number", "boolean", "array"):
        return False
    extra = node.get("additionalProperties")
    return not isinstance(extra, dict) or extra == {}


def _has_example(schema: dict, media: dict) -> bool:
    return "example" in media or "examples" in media or "examples" in _component(schema, media.get("schema", {}))


# Reports are one route over a catalogue of differently shaped reports (GET /v1/reports lists them); the JSON
# Schema route serves a JSON Schema document.
OPEN_DOCUMENTS = {("GET", "/v1/reports/{name}")}


def test_every_body_is_typed_with_an_example_that_matches_its_schema(app):
    import jsonschema

    schema = app.openapi()
    checked = 0
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            where = (method.upper(), path)
            bodies = list(operation.get("requestBody", {}).get("content", {}).items())
            successes = [(status, media) for status, answer in operation["responses"].items()
                         if status.startswith("2") for media in answer.get("content", {}).items()]
            for kind, media in bodies + [(kind, media) for _, (kind, media) in successes]:
                if kind != "application/json":
                    assert "schema" in media, where
                    continue
                assert where in OPEN_DOCUMENTS or not _untyped(schema, media["schema"]), (where, media["schema"])
                assert _has_example(schema, media), f"{where} has a {kind} body without an example"
                checked += 1
            for _status, (kind, media) in successes:
                if kind == "application/json" and "example" in media:  # the captured answer still fits its schema
                    jsonschema.validate(media["example"], media["schema"] | {"components": schema["components"]})
    assert checked > 90
