"""Security: failed-key throttling (API and console sign-in), CORS, and what the console's responses carry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from crm.app import create_app
from crm.models import Role
from crm.throttle import FailureThrottle


def test_the_throttle_counts_failures_in_a_sliding_window_per_client():
    throttle = FailureThrottle(limit=3, window=timedelta(seconds=60))
    start = datetime(2026, 11, 1, tzinfo=UTC)
    for second in (0, 10, 20):
        assert throttle.wait_seconds("a", start + timedelta(seconds=second)) == 0
        throttle.failed("a", start + timedelta(seconds=second))
    assert throttle.wait_seconds("a", start + timedelta(seconds=30)) == 31  # until the first failure is 60 s old
    assert throttle.wait_seconds("b", start + timedelta(seconds=30)) == 0  # another client is not affected
    assert throttle.wait_seconds("a", start + timedelta(seconds=60)) == 0  # the first failure left the window
    assert throttle.wait_seconds("a", start + timedelta(seconds=200)) == 0 and not throttle._failures


def test_wrong_keys_are_throttled_per_address_then_let_through_again(client, ctx, keys, auth_header):
    limit = ctx.settings.auth_failure_limit
    for _ in range(limit):
        assert client.get("/customers", headers={"Authorization": "Bearer crm_wrong_guess"}).status_code == 401
    refused = client.get("/customers", headers=auth_header(Role.admin))
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert "too many failed" in refused.json()["detail"]
    assert client.get("/customers").status_code == 401  # no key at all is not a guess, and is not throttled
    ctx.clock.advance(timedelta(seconds=ctx.settings.auth_failure_window_seconds + 1))
    assert client.get("/customers", headers=auth_header(Role.admin)).status_code == 200


def test_console_sign_in_shares_the_throttle(client, ctx, keys):
    for _ in range(ctx.settings.auth_failure_limit):
        assert client.post("/console/login", data={"api_key": "crm_wrong_guess"}).status_code == 401
    throttled = client.post("/console/login", data={"api_key": keys[Role.support]})
    assert throttled.status_code == 429 and "失败次数过多" in throttled.text and throttled.headers["retry-after"]


def test_cors_is_closed_by_default_and_open_only_to_listed_origins(ctx, session):
    preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "Authorization"}
    closed = TestClient(create_app(ctx)).options("/customers", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    ctx.settings.cors_origins = ["https://shop.example"]
    opened = TestClient(create_app(ctx))
    allowed = opened.options("/customers", headers=preflight)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://shop.example"
    other = opened.options("/customers", headers=preflight | {"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
