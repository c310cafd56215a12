"""The OpenAPI document's response examples, captured from the service itself: `python -m wiring.examples` runs
`crm demo`'s shop in a scratch database, calls every operation with its documented request example and keeps what
the service answered (trimmed), in wiring/openapi_examples.json. A test checks each example still matches its
schema, so the file cannot drift from the code unnoticed."""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

EXAMPLES_FILE = Path(__file__).with_name("openapi_examples.json")
LIST_ITEMS, TEXT_CHARS, KEYS = 2, 240, 30
IMPORT_EXAMPLE = b"external_id,email,time_zone\nC-EXAMPLE-1,new.customer@example.com,Asia/Shanghai\n"
QUERY_EXAMPLES = {"/v1/campaigns/{campaign_id}/dry-run": {"date": "2026-12-20"},
                  "/v1/reports/sample-size": {"baseline": 0.05, "error": 0.01}}


def load() -> dict[str, Any]:
    """The stored examples: {"METHOD path": {"status": ..., "response": ...}}."""
    return json.loads(EXAMPLES_FILE.read_text()) if EXAMPLES_FILE.exists() else {}


# The demo's generated numbers could be someone's: examples show reserved or well-known test values instead.
FICTITIOUS = {"phone": "+8613800138000", "push_tokens": ["fcm:example-registration-token"]}


def trim(value: Any, depth: int = 0) -> Any:
    """A readable excerpt of an answer: short lists, short strings, bounded depth, fictitious contact data."""
    if isinstance(value, dict):
        items = list(value.items())[:KEYS]
        return {k: FICTITIOUS[k] if k in FICTITIOUS and isinstance(v, str | list) else trim(v, depth + 1)
                for k, v in items} if depth < 6 else {}
    if isinstance(value, list):
        return [trim(v, depth + 1) for v in value[:LIST_ITEMS]] if depth < 6 else []
    if isinstance(value, str) and len(value) > TEXT_CHARS:
        return value[:TEXT_CHARS] + "…"
    return value


def request_example(schema: dict[str, Any], operation: dict[str, Any]) -> Any:
    """An operation's JSON request example: on the media type, or on the body's schema component."""
    media = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if media is None:
        return None
    if "example" in media:
        return media["example"]
    if "examples" in media:
        return next(iter(media["examples"].values()))["value"]
    ref = media.get("schema", {}).get("$ref", "")
    component = schema["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {})
    return (component.get("examples") or [None])[0]


def _stored_template(client: Any, headers: dict[str, str]) -> int:
    """A stored template's id (saving the documented example when the shop has only the shipped files)."""
    from campaigns.schemas import TemplateBody

    stored = [t["id"] for t in client.get("/v1/templates", headers=headers).json()["items"] if t["id"] is not None]
    if stored:
        return stored[0]
    example = TemplateBody.model_config["json_schema_extra"]["examples"][0]
    return client.post("/v1/templates", json=example | {"name": "example_template"}, headers=headers).json()["id"]


def capture(database: Path) -> dict[str, Any]:
    """Call every operation on a copy of a demo database and keep the 2xx answers."""
    from fastapi.testclient import TestClient

    from crm.auth import create_key
    from crm.models import Role
    from kit.context import build_context
    from kit.db import session_scope
    from kit.settings import get_settings
    from wiring.app import create_app

    settings = get_settings()
    scratch = Path(tempfile.mkdtemp()) / "examples.sqlite3"
    shutil.copy(database, scratch)
    ctx = build_context(settings.model_copy(update={"database_url": f"sqlite:///{scratch}"}))
    with session_scope(ctx.engine) as session:
        key = create_key(session, ctx, name="examples", role=Role.admin, actor="examples").secret
        doomed = create_key(session, ctx, name="to-revoke", role=Role.support, actor="examples").record.id
    app = create_app(ctx)
    client = TestClient(app, raise_server_exceptions=False)
    headers = {"Authorization": f"Bearer {key}"}

    def first(path: str, field: str) -> Any:
        return client.get(path, params={"limit": 1}, headers=headers).json()["items"][0][field]

    samples = {"external_id": first("/v1/customers", "external_id"), "campaign_id": first("/v1/campaigns", "id"),
               "journey_id": first("/v1/journeys", "id"), "message_id": first("/v1/messages", "id"),
               "template_id": _stored_template(client, headers),
               "name": "tier", "kind": "customers", "order_id": "O-20261204-17", "job_id": 1, "key_id": doomed,
               "model_id": 1, "task_id": 1}
    schema = app.openapi()
    captured: dict[str, Any] = {}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if any(p in path for p in ("/webhooks/", "/unsubscribe/", "/erase", "/metrics")):
                continue  # signed by providers, or destructive: their examples are written by hand
            named = samples | ({"name": "cleanup"} if path.startswith("/v1/jobs/") else
                               {"name": "retention"} if path.startswith("/v1/reports/") else {})
            url = re.sub(r"\{(\w+)\}", lambda m, named=named: str(named[m.group(1)]), path)
            body = request_example(schema, operation)
            params = QUERY_EXAMPLES.get(path, {}) | ({"customer": samples["external_id"]}
                                                      if path.endswith("/preview") else {})
            if path == "/v1/imports/{kind}":
                answer = client.post(url, content=IMPORT_EXAMPLE, headers=headers | {"Content-Type": "text/csv"})
            else:
                answer = client.request(method.upper(), url, json=body, params=params, headers=headers)
            if answer.status_code == 409 and isinstance(body, dict) and "name" in body:  # the demo has that name
                answer = client.request(method.upper(), url, json=body | {"name": f"{body['name']} ({method})"},
                                        params=params, headers=headers)
            if 200 <= answer.status_code < 300 and answer.headers.get("content-type", "").startswith("application/json"):
                captured[f"{method.upper()} {path}"] = {"status": answer.status_code, "response": trim(answer.json())}
            else:
                print(f"no example: {method.upper()} {path} answered {answer.status_code}", file=sys.stderr)
    return captured


def main() -> None:
    """Regenerate wiring/openapi_examples.json from the demo database (run `crm demo` first)."""
    from kit.settings import get_settings

    database = get_settings().data_dir / "crm.sqlite3"
    if not database.exists():
        sys.exit(f"no demo database at {database}: run `crm demo` first")
    merged = load() | capture(database)
    EXAMPLES_FILE.write_text(json.dumps(merged, indent=1, ensure_ascii=False, sort_keys=True, default=str) + "\n")
    print(f"{len(merged)} examples in {EXAMPLES_FILE}")


if __name__ == "__main__":
    main()
