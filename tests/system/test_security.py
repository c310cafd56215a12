"""Security: failed-key throttling (API and console sign-in), CORS, and what the console's responses carry."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from crm.models import Role
from kit.throttle import FailureThrottle
from wiring.app import create_app


def test_the_throttle_counts_failures_in_a_sliding_window_per_bucket():
    throttle = FailureThrottle(limit=3, window=timedelta(seconds=60))
    start = datetime(2026, 11, 1, tzinfo=UTC)
    for second in (0, 10, 20):
        assert throttle.wait_seconds("a|k1", start + timedelta(seconds=second)) == 0
        throttle.failed(("a|k1", "a"), start + timedelta(seconds=second))
    assert throttle.wait_seconds("a|k1", start + timedelta(seconds=30)) == 31  # until the first failure is 60 s old
    assert throttle.wait_seconds("a|k2", start + timedelta(seconds=30)) == 0  # another prefix is not affected
    assert throttle.wait_seconds("b|k1", start + timedelta(seconds=30)) == 0  # nor another client
    assert throttle.wait_seconds("a", start + timedelta(seconds=30)) == 0  # the address allows 5 × the limit
    assert throttle.wait_seconds("a|k1", start + timedelta(seconds=60)) == 0  # the first failure left the window
    assert throttle.wait_seconds(("a|k1", "a"), start + timedelta(seconds=200)) == 0 and not throttle._failures


def test_wrong_keys_are_throttled_per_address_and_prefix_and_a_valid_key_always_passes(client, ctx, keys,
                                                                                      auth_header):
    limit = ctx.settings.auth_failure_limit
    guess = {"Authorization": "Bearer crm_0bad_guess"}
    for _ in range(limit):
        assert client.get("/v1/customers", headers=guess).status_code == 401
    refused = client.get("/v1/customers", headers=guess)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert "too many failed" in refused.json()["detail"]
    # Others' failures (the same address: a proxy, an office) never lock a valid key out.
    assert client.get("/v1/customers", headers=auth_header(Role.admin)).status_code == 200
    # Another prefix has a bucket of its own, until the address as a whole reaches five times the limit.
    assert client.get("/v1/customers", headers={"Authorization": "Bearer crm_0ther_guess"}).status_code == 401
    for index in range(4 * limit):
        client.get("/v1/customers", headers={"Authorization": f"Bearer crm_r{index}_guess"})
    assert client.get("/v1/customers", headers={"Authorization": "Bearer crm_new1_guess"}).status_code == 429
    assert client.get("/v1/customers").status_code == 401  # no key at all is not a guess, and is not throttled
    ctx.clock.advance(timedelta(seconds=ctx.settings.auth_failure_window_seconds + 1))
    assert client.get("/v1/customers", headers=guess).status_code == 401


def test_console_sign_in_shares_the_throttle(client, ctx, keys):
    from tests.console.test_console import post_login

    for _ in range(ctx.settings.auth_failure_limit):
        assert post_login(client, "crm_wrong_guess").status_code == 401
    throttled = post_login(client, "crm_wrong_guess")
    assert throttled.status_code == 429 and "失败次数过多" in throttled.text and throttled.headers["retry-after"]
    assert post_login(client, keys[Role.support]).status_code == 303


def test_cors_is_closed_by_default_and_open_only_to_listed_origins(ctx, session):
    preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "Authorization"}
    closed = TestClient(create_app(ctx)).options("/v1/customers", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    ctx.settings.cors_origins = ["https://shop.example"]
    opened = TestClient(create_app(ctx))
    allowed = opened.options("/v1/customers", headers=preflight)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://shop.example"
    other = opened.options("/v1/customers", headers=preflight | {"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_a_customer_is_exported_whole_and_erased_on_request_with_orders_kept(client, session, ctx, auth_header):
    from sqlalchemy import text
    from sqlmodel import select

    from campaigns.models import CallTask, Campaign, JourneyEnrollment, Message
    from crm.models import AuditLog, Customer
    from tests.support.factories import ORDER_HEADER, csv_text, customers, run

    assert customers(session, ctx, 2).rows_failed == 0
    assert run(session, ctx, "orders", csv_text(ORDER_HEADER, [("O1", "C1", "2026-10-01", "120", "0", "", ""),
                                                               ("O2", "C2", "2026-10-02", "80", "0", "", "")])
               ).rows_failed == 0
    assert run(session, ctx, "order_items", csv_text(("order_external_id", "line_no", "sku", "qty", "unit_price"),
                                                     [("O1", 1, "SKU-9", 2, "60")])).rows_failed == 0
    assert run(session, ctx, "events", csv_text(("external_id", "customer_external_id", "occurred_at", "type"),
                                                [("E1", "C1", "2026-10-03", "view")])).rows_failed == 0
    c1 = session.exec(select(Customer).where(Customer.external_id == "C1")).one()
    c1.attributes = {"favourite_colour": "teal"}
    now = ctx.clock.now()
    campaign = Campaign(name="c", status="active", version=1, priority=50, spec={}, created_at=now,
                        created_by="t", updated_at=now, updated_by="t")
    session.add_all([c1, campaign])
    session.flush()
    planned = Message(campaign_id=campaign.id, occurrence="2026-11-02", customer_id=c1.id, channel="sms",
                      status="planned", priority=50, transactional=False, send_at=now, template="t", locale="zh-CN",
                      created_at=now, updated_at=now)
    session.add(planned)
    session.flush()
    sent = Message(campaign_id=campaign.id, occurrence="2026-10-02", customer_id=c1.id, channel="sms",
                   status="failed", priority=50, transactional=False, send_at=now, template="t", locale="zh-CN",
                   created_at=now, updated_at=now, last_error="21211: '+8613800100001' is not a valid number")
    session.add(sent)
    session.flush()
    call = CallTask(message_id=planned.id, customer_id=c1.id, campaign_id=campaign.id, status="done",
                    script="致电 VIP 客户 C1：邀请参加新品预售会", notes="she said call her at home", created_at=now)
    session.add(call)
    # A journey that entered on an event whose properties quote the customer's address.
    session.add(JourneyEnrollment(journey_id=1, version=1, customer_id=c1.id, status="active", step_id="wait",
                                  seq=1, wake_at=now, entry_key="event:1", entered_at=now, updated_at=now,
                                  context={"entry": {"note": "write to user1@example.com"}}))
    session.flush()

    assert client.get("/v1/customers/C1/export", headers=auth_header(Role.support)).status_code == 403
    exported = client.get("/v1/customers/C1/export", headers=auth_header(Role.admin)).json()
    assert exported["customer"]["email"] == "user1@example.com" and exported["customer"]["phone"] == "+8613800100001"
    assert [o["external_id"] for o in exported["orders"]] == ["O1"] and exported["orders"][0]["items"][0]["sku"] == "SKU-9"
    assert [e["type"] for e in exported["events"]] == ["view"]
    assert {"segmentation", "churn", "campaigns"} <= set(exported)
    assert exported["campaigns"]["call_tasks"][0]["notes"] == "she said call her at home"
    assert exported["campaigns"]["journey_enrollments"][0]["context"]["entry"]["note"] == "write to user1@example.com"

    wrong = client.post("/v1/customers/C1/erase", json={"confirm": "C2"}, headers=auth_header(Role.admin))
    assert wrong.status_code == 422 and wrong.json()["errors"][0]["field"] == "confirm"
    assert client.post("/v1/customers/C1/erase", json={"confirm": "C1"}, headers=auth_header(Role.marketer)).status_code == 403
    erased = client.post("/v1/customers/C1/erase", json={"confirm": "C1"}, headers=auth_header(Role.admin))
    assert erased.status_code == 200, erased.text
    summary = erased.json()
    assert summary["events_deleted"] == 1 and summary["orders_kept_anonymised"] == 1
    assert summary["campaigns"] == {"planned_messages_cancelled": 1, "call_tasks_cleared": 1,
                                    "provider_errors_cleared": 1, "journey_enrollments_ended": 1}
    # No stored text anywhere still names the customer: every table, every column, read back whole.
    import re

    from sqlalchemy import inspect

    pattern = re.compile(r"user1@example\.com|\+?(86)?13800100001|(?<![A-Za-z0-9])C1(?![A-Za-z0-9])|call her")
    connection = session.connection()
    for table in inspect(connection).get_table_names():
        for values in connection.execute(text(f"SELECT * FROM {table}")):
            for value in values:
                if isinstance(value, str | dict | list):
                    assert not pattern.search(str(value)), (table, value)

    row = session.connection().execute(text(
        "SELECT external_id, email_ciphertext, email_hash, phone_ciphertext, phone_hash, push_tokens_ciphertext, "
        "birthday FROM customer WHERE id = :id"), {"id": c1.id}).one()
    assert row[0].startswith("erased-") and all(value is None for value in row[1:])
    assert session.connection().execute(text("SELECT count(*) FROM orders WHERE customer_id = :id"),
                                        {"id": c1.id}).scalar_one() == 1  # kept for statistics
    assert session.connection().execute(text("SELECT count(*) FROM event WHERE customer_id = :id"),
                                        {"id": c1.id}).scalar_one() == 0
    session.expire_all()
    assert session.get(Message, planned.id).status == "cancelled" and session.get(CallTask, call.id).notes is None
    assert session.get(Customer, c1.id).attributes == {}
    assert client.get("/v1/customers/C1", headers=auth_header(Role.admin)).status_code == 404
    found = client.post("/v1/customers/search", json={"email": "user1@example.com"}, headers=auth_header(Role.admin)).json()
    assert found["items"] == []
    profile = client.get(f"/v1/customers/{row[0]}/profile", headers=auth_header(Role.admin)).json()
    assert len(profile["consent"]) == 4 and {s["status"] for s in profile["consent"].values()} == {"opted_out"}
    assert profile["customer"]["contact"] == {"email": None, "phone": None, "push_tokens": [], "name": None,
                                                  "masked": False}
    # Audited, and the audit trail holds neither the contact data nor the old external id.
    actions = [a.action for a in session.exec(select(AuditLog).where(AuditLog.entity == "customer"))]
    assert "customer.export" in actions and "customer.erase" in actions
    trail = " ".join(str(a.before) + str(a.after) + str(a.entity_id) for a in session.exec(select(AuditLog)))
    assert "user1@example.com" not in trail and "+8613800100001" not in trail and "'C1'" not in trail
    # The other customer is untouched.
    assert client.get("/v1/customers/C2", headers=auth_header(Role.admin)).json()["contact"]["email"] == \
        "user2@example.com"


def test_secrets_and_contact_data_never_reach_the_logs(scratch_url, tmp_path, fake_server, caplog):
    """Every logger at DEBUG while customers are imported, messages go out through the real SDKs (Twilio,
    SendGrid, FCM) to the fake, and the API is called with good and bad keys: no contact data or secret appears."""
    import logging
    import random

    from fastapi.testclient import TestClient

    from campaigns.delivery.channels import build_senders
    from campaigns.delivery.dispatch import Dispatcher
    from crm.auth import create_key
    from kit.db import session_scope
    from tests.conftest import TEST_SECRET
    from tests.support.dispatch_support import build_shop, fake_settings

    caplog.set_level(logging.DEBUG)
    shop = build_shop(scratch_url, fake_settings(tmp_path, fake_server, scratch_url))
    shop.add_messages([{"customer_id": shop.customers["C1"], "channel": "sms"},
                       {"customer_id": shop.customers["C2"], "channel": "email"},
                       {"customer_id": shop.customers["C3"], "channel": "push"}])
    dispatcher = Dispatcher(shop.ctx, build_senders(shop.ctx.settings), rng=random.Random(1))
    try:
        assert dispatcher.run_until_idle().counts["sent_sms"] == 1
    finally:
        dispatcher.close()
    with session_scope(shop.ctx.engine) as session:
        key = create_key(session, shop.ctx, name="log-probe", role=Role.admin, actor="test").secret
    api = TestClient(create_app(shop.ctx))
    assert api.get("/v1/customers/C1", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert api.get("/v1/customers/C1", headers={"Authorization": "Bearer crm_0000_not-a-key"}).status_code == 401
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert len(caplog.records) > 0  # the SDKs and the app did log
    settings = shop.ctx.settings
    for secret in ("user1@example.com", "user2@example.com", "+8613800100001", "13800100001", "token-3-a",
                   settings.twilio_auth_token, settings.sendgrid_api_key, TEST_SECRET, key, "crm_0000_not-a-key"):
        assert secret not in logged, f"{secret!r} appeared in the logs"


@pytest.fixture
def served(scratch_url, tmp_path):
    """`crm serve` as a process on a scratch shop of two customers; yields (base URL, admin key, its log path)."""
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from crm.auth import create_key
    from kit.db import session_scope
    from tests.conftest import cli_env
    from tests.support.chaos import free_port
    from tests.support.dispatch_support import build_shop, fake_settings

    shop = build_shop(scratch_url, fake_settings(tmp_path, "http://127.0.0.1:9", scratch_url), customers=2)
    with session_scope(shop.ctx.engine) as session:
        key = create_key(session, shop.ctx, name="log-scan", role=Role.admin, actor="test").secret
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "wiring.cli", "serve", "--port", str(port)],
                                  env=cli_env(scratch_url, tmp_path), stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(f"{base}/v1/health/live", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail(f"crm serve did not answer: {log_path.read_text(errors='replace')[-2000:]}")
        yield base, key, log_path
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def test_the_served_apis_access_log_carries_no_contact_data(served):
    """Lookups by email and phone, tried as URL parameters (refused) and as bodies (the way), and the console's
    lookup: the server's whole output (access log included) names no customer's contact data."""
    import httpx

    base, key, log_path = served
    headers = {"Authorization": f"Bearer {key}"}
    refused = httpx.get(f"{base}/v1/customers", params={"email": "user1@example.com"}, headers=headers)
    assert refused.status_code == 422 and "user1@example.com" not in refused.text
    assert refused.json()["errors"][0]["field"] == "email"
    assert httpx.get(f"{base}/v1/customers", params={"phone": "+8613800100001"}, headers=headers).status_code == 422
    found = httpx.post(f"{base}/v1/customers/search", json={"phone": "+8613800100001"}, headers=headers)
    assert found.status_code == 200 and [c["external_id"] for c in found.json()["items"]] == ["C1"]
    by_email = httpx.post(f"{base}/v1/customers/search", json={"email": "user2@example.com"}, headers=headers)
    assert [c["external_id"] for c in by_email.json()["items"]] == ["C2"]
    httpx.get(f"{base}/console/customers", params={"q": "user2@example.com"})
    httpx.get(f"{base}/v1/customers/C1", params={"note": "13800100002"}, headers=headers)
    time.sleep(0.3)  # the access log is written after each response
    logged = log_path.read_text(errors="replace")
    lines = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    assert len(lines) == len(logged.strip().splitlines()), "every line of the server's output is a JSON object"
    access = [line for line in lines if line["logger"] == "crm.access"]
    search = [a for a in access if a["route"] == "/v1/customers/search"]
    assert search and search[0]["status"] == 200 and search[0]["role"] == "admin" and search[0]["key_id"]
    assert search[0]["process"] == "api" and len(search[0]["request_id"]) == 32 and search[0]["latency_ms"] >= 0
    assert {(a["route"], a["status"]) for a in access} >= {("/v1/customers", 422), ("/v1/customers/{external_id}",
                                                                                     422)}
    for secret in ("user1@example.com", "user2@example.com", "user1%40example.com", "user2%40example.com",
                   "+8613800100001", "8613800100001", "13800100002", key):
        assert secret not in logged, f"{secret!r} appeared in the server's output"


def test_the_served_api_ignores_forwarded_for_unless_told_which_proxy_to_trust(served, ctx):
    """uvicorn trusts X-Forwarded-For from 127.0.0.1 by default: rotating it made every guess a new client."""
    import httpx

    base, key, _ = served
    answers = [httpx.get(f"{base}/v1/customers", headers={"Authorization": "Bearer crm_0bad_guess",
                                                        "X-Forwarded-For": f"203.0.113.{n}"}).status_code
               for n in range(ctx.settings.auth_failure_limit + 2)]
    assert answers[:ctx.settings.auth_failure_limit] == [401] * ctx.settings.auth_failure_limit
    assert answers[-1] == 429
    assert httpx.get(f"{base}/v1/customers", headers={"Authorization": f"Bearer {key}"}).status_code == 200
