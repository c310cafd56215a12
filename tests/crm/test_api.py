"""The core API: customers, masking, profile sections, consent, imports over HTTP, keys, audit, health, errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from crm.models import Role
from tests.support.factories import ORDER_HEADER, csv_text, customers, run

PROBLEM = "application/problem+json"


def test_list_customers_paginates_with_a_cursor(client, session, ctx, auth_header):
    customers(session, ctx, 5)
    first = client.get("/v1/customers?limit=2", headers=auth_header(Role.support)).json()
    assert [c["external_id"] for c in first["items"]] == ["C1", "C2"]
    second = client.get(f"/v1/customers?limit=2&cursor={first['next_cursor']}", headers=auth_header(Role.support)).json()
    assert [c["external_id"] for c in second["items"]] == ["C3", "C4"]
    third = client.get(f"/v1/customers?limit=2&cursor={second['next_cursor']}", headers=auth_header(Role.support)).json()
    assert [c["external_id"] for c in third["items"]] == ["C5"] and third["next_cursor"] is None


def test_search_by_email_or_phone_is_exact_through_the_keyed_hash(client, session, ctx, auth_header):
    customers(session, ctx, 3)
    support = auth_header(Role.support)
    by_email = client.post("/v1/customers/search", json={"email": "USER2@example.com"}, headers=support)
    assert [c["external_id"] for c in by_email.json()["items"]] == ["C2"]
    by_phone = client.post("/v1/customers/search", json={"phone": "138 0010 0003"}, headers=support)
    assert [c["external_id"] for c in by_phone.json()["items"]] == ["C3"]
    partial = client.post("/v1/customers/search", json={"email": "user2@example"}, headers=support)
    assert partial.status_code == 422 and partial.headers["content-type"] == PROBLEM
    assert partial.json()["errors"][0]["field"] == "email" and "user2@example" not in partial.text
    assert client.post("/v1/customers/search", json={}, headers=support).status_code == 422
    # Contact data never travels in a URL: the old query parameters are refused, naming the way.
    in_url = client.get("/v1/customers", params={"email": "user2@example.com"}, headers=support)
    assert in_url.status_code == 422 and "POST /v1/customers/search" in in_url.json()["errors"][0]["reason"]
    assert "user2@example.com" not in in_url.text


def test_support_sees_masked_contact_data_and_admin_sees_it_whole(client, session, ctx, auth_header):
    customers(session, ctx, 1)
    masked = client.get("/v1/customers/C1", headers=auth_header(Role.support)).json()["contact"]
    assert masked == {"email": "u***@example.com", "phone": "+86 1*******001", "push_tokens": 0, "name": None,
                      "masked": True}
    whole = client.get("/v1/customers/C1", headers=auth_header(Role.admin)).json()["contact"]
    assert whole == {"email": "user1@example.com", "phone": "+8613800100001", "push_tokens": [], "name": None,
                     "masked": False}


def test_profile_assembles_registered_sections(app, client, session, ctx, auth_header):
    customers(session, ctx, 1)
    run(session, ctx, "orders", csv_text(ORDER_HEADER, [("O1", "C1", "2025-01-01", "100", "10", "", ""),
                                                        ("O2", "C1", "2025-02-01", "50", "0", "", "")]))
    app.state.profiles.register("extra", lambda request: {"seen_by": request.viewer_role})
    profile = client.get("/v1/customers/C1/profile", headers=auth_header(Role.support)).json()
    assert profile["sections"]["orders"]["orders"] == 2
    assert profile["sections"]["orders"]["total_spend"] == 150.0
    assert profile["sections"]["orders"]["total_discount"] == 10.0
    # Timestamps read straight from the driver come back aware UTC on both backends (SQLite stores text).
    assert [datetime.fromisoformat(profile["sections"]["orders"][k]) for k in ("first_order_at", "last_order_at")] == [
        datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC)]
    assert profile["sections"]["extra"] == {"seen_by": "support"}
    assert profile["consent"]["sms"]["status"] == "opted_in"
    stated = datetime.fromisoformat(profile["consent"]["sms"]["changed_at"])
    assert stated.utcoffset() == timedelta(0) and stated <= ctx.clock.now()
    assert profile["customer"]["contact"]["masked"] is True


def test_consent_statements_are_history_and_audited(client, session, ctx, auth_header):
    customers(session, ctx, 1)
    response = client.post("/v1/customers/C1/consents", json={"channel": "sms", "status": "opted_out",
                                                           "source": "phone-call"},
                           headers=auth_header(Role.support))
    assert response.status_code == 200
    assert [(c["channel"], c["status"]) for c in response.json()["items"]] == [
        ("sms", "opted_in"), ("email", "opted_out"), ("sms", "opted_out")]
    audit = client.get("/v1/audit", params={"entity": "customer"}, headers=auth_header(Role.admin)).json()["items"]
    assert audit[0]["action"] == "consent.change" and audit[0]["actor"].endswith("test-support")
    assert audit[0]["before"] == {"status": "opted_in"}


def test_unknown_customer_and_bad_input_are_problem_json(client, auth_header):
    missing = client.get("/v1/customers/NOPE", headers=auth_header(Role.support))
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM
    assert "NOPE" in missing.json()["detail"]
    bad = client.post("/v1/customers/NOPE/consents", json={"channel": "fax", "status": "maybe"},
                      headers=auth_header(Role.support))
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["errors"]} == {"channel", "status"}
    bad_limit = client.get("/v1/customers?limit=0", headers=auth_header(Role.support))
    assert bad_limit.status_code == 422 and bad_limit.json()["errors"][0]["field"] == "limit"


def test_import_over_http_reports_rows_and_can_be_fetched(client, session, ctx, auth_header):
    customers(session, ctx, 1)
    body = csv_text(ORDER_HEADER, [("O1", "C1", "2025-01-01", "10", "", "", ""),
                                   ("O2", "C9", "2025-01-01", "10", "", "", "")])
    created = client.post("/v1/imports/orders", content=body, headers=auth_header(Role.admin) | {
        "content-type": "text/csv"})
    assert created.status_code == 201, created.text
    job = created.json()
    assert (job["rows_inserted"], job["rows_failed"]) == (1, 1)
    assert job["errors"] == [{"row": 2, "field": "customer_external_id", "reason": "unknown customer"}]
    fetched = client.get(f"/v1/imports/{job['id']}", headers=auth_header(Role.marketer)).json()
    assert fetched["status"] == "completed" and fetched["rows_total"] == 2


def test_ndjson_import_over_http(client, auth_header):
    body = "\n".join(json.dumps({"external_id": f"N{i}", "email": f"n{i}@example.com"}) for i in range(3))
    created = client.post("/v1/imports/customers", content=body.encode(),
                          headers=auth_header(Role.scheduler) | {"content-type": "application/x-ndjson"})
    assert created.status_code == 201 and created.json()["rows_inserted"] == 3


def test_import_of_a_file_missing_columns_is_422_naming_them(client, auth_header):
    response = client.post("/v1/imports/orders", content=b"external_id,amount_paid\nO1,5\n",
                           headers=auth_header(Role.admin))
    assert response.status_code == 422
    assert {e["field"] for e in response.json()["errors"]} == {"customer_external_id", "ordered_at"}
    unknown = client.post("/v1/imports/widgets", content=b"a\n1\n", headers=auth_header(Role.admin))
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "kind"


def test_admin_creates_and_revokes_keys(client, auth_header):
    created = client.post("/v1/keys", json={"name": "crm-bot", "role": "marketer"}, headers=auth_header(Role.admin))
    assert created.status_code == 201
    secret, key_id = created.json()["key"], created.json()["id"]
    assert client.get("/v1/customers", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    listed = client.get("/v1/keys", headers=auth_header(Role.admin)).json()["items"]
    assert all("key" not in k and "key_hash" not in k for k in listed)
    assert client.delete(f"/v1/keys/{key_id}", headers=auth_header(Role.admin)).status_code == 200
    revoked = client.get("/v1/customers", headers={"Authorization": f"Bearer {secret}"})
    assert revoked.status_code == 401 and revoked.headers["content-type"] == PROBLEM
    actions = [a["action"] for a in client.get("/v1/audit", params={"entity": "api_key"},
                                               headers=auth_header(Role.admin)).json()["items"]]
    assert actions[:2] == ["api_key.revoke", "api_key.create"]
    bad_role = client.post("/v1/keys", json={"name": "x", "role": "root"}, headers=auth_header(Role.admin))
    assert bad_role.status_code == 422 and bad_role.json()["errors"][0]["field"] == "role"


def test_missing_or_malformed_credentials_are_401(client):
    assert client.get("/v1/customers").status_code == 401
    assert client.get("/v1/customers", headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.get("/v1/customers", headers={"Authorization": "Bearer crm_nope"}).status_code == 401


def test_readiness_reports_database_and_migrations(client):
    body = client.get("/v1/health/ready").json()
    assert body["database"] and body["migrations_at_head"] and body["revision"] == body["head"]


def test_an_unmigrated_database_is_not_ready(scratch_url, settings):
    from fastapi.testclient import TestClient

    from kit.context import build_context
    from wiring.app import create_app

    empty = settings.model_copy(update={"database_url": scratch_url, "ready_requires_leader": False})
    with TestClient(create_app(build_context(empty))) as unmigrated:
        answer = unmigrated.get("/v1/health/ready")
        assert answer.status_code == 503
        assert answer.json()["migrations_at_head"] is False and answer.json()["revision"] is None
        assert unmigrated.get("/v1/health/live").status_code == 200


def test_metrics_are_prometheus_text(client, auth_header):
    client.get("/v1/health/live")
    assert client.get("/v1/customers/C1").status_code == 401  # refused requests are counted under their route too
    response = client.get("/v1/metrics", headers=auth_header(Role.admin))
    assert response.status_code == 200
    assert 'crm_http_requests_total{method="GET",route="/v1/health/live",status="200"}' in response.text
    assert 'crm_http_requests_total{method="GET",route="/v1/customers/{external_id}",status="401"}' in response.text
    assert 'crm_http_request_seconds_count{method="GET",route="/v1/health/live"}' in response.text


def test_openapi_is_served(client):
    assert client.get("/v1/openapi.json").json()["info"]["title"] == "CRM retention service"
    assert client.get("/docs").status_code == 200


def test_a_busy_or_unreachable_database_is_a_503_to_retry_not_a_500(app):
    import sqlite3

    from fastapi.testclient import TestClient
    from sqlalchemy.exc import OperationalError

    @app.get("/_busy")
    def busy():
        raise OperationalError("INSERT INTO segment_run ...", {}, sqlite3.OperationalError("database is locked"))

    response = TestClient(app, raise_server_exceptions=False).get("/_busy")
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "retry" in response.json()["detail"] and "INSERT" not in response.text


def test_a_write_is_committed_before_it_is_acknowledged(scratch_url, tmp_path):
    # The request's commit runs before the response is sent: a commit that fails is the client's answer (the busy
    # 503, nothing stored), never a 201 for a key that does not exist.
    from datetime import UTC, datetime

    from fastapi.testclient import TestClient
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError
    from sqlmodel import Session, select

    from crm.auth import create_key
    from crm.models import ApiKey
    from kit.db import session_scope
    from tests.support.shops import scratch_context
    from wiring.app import create_app

    ctx = scratch_context(scratch_url, tmp_path, datetime(2026, 11, 1, tzinfo=UTC))
    with session_scope(ctx.engine) as setup:
        admin = create_key(setup, ctx, name="admin", role=Role.admin, actor="test").secret
    client = TestClient(create_app(ctx), raise_server_exceptions=False)
    headers = {"Authorization": f"Bearer {admin}"}

    def refuse_commit(session):
        raise OperationalError("COMMIT", {}, Exception("database is locked"))

    event.listen(Session, "before_commit", refuse_commit)
    try:
        refused = client.post("/v1/keys", json={"name": "never-stored", "role": "support"}, headers=headers)
    finally:
        event.remove(Session, "before_commit", refuse_commit)
    assert refused.status_code == 503 and refused.headers["content-type"] == PROBLEM, refused.text
    created = client.post("/v1/keys", json={"name": "stored", "role": "support"}, headers=headers)
    assert created.status_code == 201
    with session_scope(ctx.engine) as check:
        assert sorted(k.name for k in check.exec(select(ApiKey))) == ["admin", "stored"]


def test_each_worker_runs_few_requests_at_once_and_queues_the_rest(ctx):
    # Route code runs on `api_threads` threads and at most `api_concurrency` requests are in progress: interleaving
    # forty requests under one interpreter lock made each of them slow (bench_load.py). Every request still completes.
    import asyncio
    import threading
    import time

    import httpx

    from kit.context import Context
    from wiring.app import create_app

    settings = ctx.settings.model_copy(update={"api_threads": 2, "api_concurrency": 3})
    app = create_app(Context(settings=settings, engine=ctx.engine, cipher=ctx.cipher, clock=ctx.clock))
    lock, running, most = threading.Lock(), {"sync": 0, "async": 0}, {"sync": 0, "async": 0}

    def enter(kind: str) -> None:
        with lock:
            running[kind] += 1
            most[kind] = max(most[kind], running[kind])

    def leave(kind: str) -> None:
        with lock:
            running[kind] -= 1

    @app.get("/probe/sync")
    def sync_probe() -> dict:
        enter("sync")
        time.sleep(0.05)
        leave("sync")
        return {}

    @app.get("/probe/async")
    async def async_probe() -> dict:
        enter("async")
        await asyncio.sleep(0.05)
        leave("async")
        return {}

    async def storm() -> list[int]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                answers = []
                for kind in ("sync", "async"):
                    answers += await asyncio.gather(*[client.get(f"/probe/{kind}") for _ in range(12)])
        return [a.status_code for a in answers]

    assert asyncio.run(storm()) == [200] * 24
    assert most == {"sync": 2, "async": 3}


def test_a_consent_statement_dated_in_the_future_is_refused(client, session, ctx, auth_header):
    customers(session, ctx, 1)
    future = (ctx.clock.now() + timedelta(days=1)).isoformat()
    refused = client.post("/v1/customers/C1/consents", json={"channel": "sms", "status": "opted_in", "at": future},
                          headers=auth_header(Role.support))
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "at"
    past = client.post("/v1/customers/C1/consents", json={"channel": "sms", "status": "opted_out",
                                                        "at": "2026-10-01T00:00:00"}, headers=auth_header(Role.support))
    assert past.status_code == 200 and past.json()["items"][-1]["status"] == "opted_out"


def test_the_api_docs_work_offline(client):
    """FastAPI's /docs loads Swagger UI from a CDN: blank without the internet. Ours come from the app."""
    page = client.get("/docs")
    assert page.status_code == 200 and "/docs/static/swagger-ui-bundle.js" in page.text
    assert "cdn." not in page.text and "https://" not in page.text.split("<body>")[0]
    script = client.get("/docs/static/swagger-ui-bundle.js")
    assert script.status_code == 200 and "SwaggerUIBundle" in script.text
    assert client.get("/docs/static/swagger-initializer.js").status_code == 404  # only what the pages need
    redoc = client.get("/redoc")
    assert redoc.status_code == 200 and "/docs/static/redoc.standalone.js" in redoc.text
    assert "https://" not in redoc.text  # neither the script nor Google's fonts from elsewhere
    bundle = client.get("/docs/static/redoc.standalone.js")
    assert bundle.status_code == 200 and "Redoc" in bundle.text[:200_000] and len(bundle.content) > 500_000
