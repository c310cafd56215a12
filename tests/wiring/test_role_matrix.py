"""Every route of the app, walked from the app's own route list, against every role."""

from __future__ import annotations

import re

from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import Route

from crm.models import Role
from tests.console.test_console import post_login

PUBLIC = "public"
PROBE = "probe"  # no key: answers 200 when ready and 503 when not (these tests run no scheduler), never 401
SIGNED = "signed"  # no key: the provider's signature is the credential; unsigned requests get 403
LINK = "link"  # no key: a signed link is the credential; a bad one gets a 4xx page
CONSOLE_PUBLIC = "console-public"  # the console's sign-in and static files: no session needed
ALL_ROLES = set(Role)
ADMIN = {Role.admin}
STAFF = {Role.admin, Role.marketer, Role.support}
EXPECTED: dict[tuple[str, str], set[Role] | str] = {
    ("GET", "/v1/health/live"): PUBLIC,
    ("GET", "/v1/health/ready"): PROBE,
    ("GET", "/v1/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/docs/static/{file}"): PUBLIC,
    ("GET", "/v1/metrics"): {Role.admin, Role.scheduler},
    ("POST", "/v1/events"): {Role.admin, Role.ingest},
    ("POST", "/v1/customers"): {Role.admin, Role.ingest},
    ("POST", "/v1/orders"): {Role.admin, Role.ingest},
    ("POST", "/v1/orders/{order_id}/refunds"): {Role.admin, Role.ingest},
    ("GET", "/v1/customers"): STAFF,
    ("POST", "/v1/customers/search"): STAFF,
    ("GET", "/v1/customers/{external_id}"): STAFF,
    ("GET", "/v1/customers/{external_id}/profile"): STAFF,
    ("GET", "/v1/customers/{external_id}/orders"): STAFF,
    ("GET", "/v1/customers/{external_id}/consents"): STAFF,
    ("POST", "/v1/customers/{external_id}/consents"): STAFF,
    ("GET", "/v1/customers/{external_id}/export"): ADMIN,
    ("POST", "/v1/customers/{external_id}/erase"): ADMIN,
    ("POST", "/v1/imports/{kind}"): {Role.admin, Role.scheduler},
    ("GET", "/v1/imports/{job_id}"): {Role.admin, Role.scheduler, Role.marketer},
    ("GET", "/v1/keys"): ADMIN,
    ("POST", "/v1/keys"): ADMIN,
    ("DELETE", "/v1/keys/{key_id}"): ADMIN,
    ("GET", "/v1/audit"): ADMIN,
    ("GET", "/v1/segmentation/rule-sets/{name}"): {Role.admin, Role.marketer},
    ("PUT", "/v1/segmentation/rule-sets/{name}"): {Role.admin, Role.marketer},
    ("POST", "/v1/segmentation/runs"): {Role.admin, Role.scheduler},
    ("GET", "/v1/segmentation/summary"): {Role.admin, Role.marketer, Role.scheduler},
    ("GET", "/v1/segmentation/history"): {Role.admin, Role.marketer, Role.scheduler},
    ("GET", "/v1/churn/models"): {Role.admin, Role.marketer, Role.scheduler},
    ("POST", "/v1/churn/models/{model_id}/promote"): {Role.admin},
    ("POST", "/v1/churn/models/rollback"): {Role.admin},
    ("GET", "/v1/churn/at-risk"): {Role.admin, Role.marketer, Role.support, Role.scheduler},
    ("GET", "/v1/uplift/models"): {Role.admin, Role.marketer, Role.scheduler},
    ("POST", "/v1/uplift/models"): {Role.admin, Role.scheduler},
    ("POST", "/v1/campaigns"): {Role.admin, Role.marketer},
    ("GET", "/v1/campaigns"): {Role.admin, Role.marketer, Role.scheduler},
    ("GET", "/v1/campaigns/{campaign_id}"): {Role.admin, Role.marketer, Role.scheduler},
    ("PUT", "/v1/campaigns/{campaign_id}"): {Role.admin, Role.marketer},
    ("POST", "/v1/campaigns/{campaign_id}/status"): {Role.admin, Role.marketer},
    ("GET", "/v1/campaigns/{campaign_id}/versions"): {Role.admin, Role.marketer, Role.scheduler},
    ("POST", "/v1/campaigns/{campaign_id}/dry-run"): {Role.admin, Role.marketer, Role.scheduler},
    ("POST", "/v1/campaigns/{campaign_id}/plan"): {Role.admin, Role.scheduler},
    ("GET", "/v1/campaigns/{campaign_id}/eligibility/{external_id}"): {Role.admin, Role.marketer, Role.support},
    ("GET", "/v1/guard-rails"): {Role.admin, Role.marketer, Role.scheduler},
    ("PUT", "/v1/guard-rails"): {Role.admin},
    ("GET", "/v1/guard-rails/versions"): {Role.admin, Role.marketer, Role.scheduler},
    ("GET", "/v1/templates"): {Role.admin, Role.marketer},
    ("POST", "/v1/templates"): {Role.admin, Role.marketer},
    ("GET", "/v1/templates/{template_id}"): {Role.admin, Role.marketer},
    ("POST", "/v1/templates/{template_id}/preview"): {Role.admin, Role.marketer},
    ("GET", "/v1/messages"): {Role.admin, Role.marketer, Role.scheduler, Role.support},
    ("GET", "/v1/messages/counts"): {Role.admin, Role.marketer, Role.scheduler, Role.support},
    ("POST", "/v1/messages/{message_id}/retry"): ADMIN,
    ("GET", "/v1/tasks"): {Role.admin, Role.support},
    ("POST", "/v1/tasks/{task_id}/claim"): {Role.admin, Role.support},
    ("POST", "/v1/tasks/{task_id}/outcome"): {Role.admin, Role.support},
    ("POST", "/v1/webhooks/twilio/status"): SIGNED,
    ("POST", "/v1/webhooks/twilio/inbound"): SIGNED,
    ("POST", "/v1/webhooks/sendgrid/events"): SIGNED,
    ("POST", "/v1/webhooks/shopify"): SIGNED,
    ("GET", "/v1/jobs"): {Role.admin, Role.marketer, Role.scheduler},
    ("GET", "/v1/jobs/runs"): {Role.admin, Role.marketer, Role.scheduler},
    ("POST", "/v1/jobs/{name}/run"): {Role.admin, Role.scheduler},
    ("GET", "/v1/reports"): {Role.admin, Role.marketer},
    ("GET", "/v1/reports/sample-size"): {Role.admin, Role.marketer},
    ("GET", "/v1/reports/campaigns/{campaign_id}"): {Role.admin, Role.marketer},
    ("GET", "/v1/reports/{name}"): {Role.admin, Role.marketer},
    ("POST", "/v1/campaigns/{campaign_id}/experiment/promote"): {Role.admin, Role.marketer},
    ("POST", "/v1/journeys"): {Role.admin, Role.marketer},
    ("GET", "/v1/journeys"): {Role.admin, Role.marketer, Role.scheduler},
    ("GET", "/v1/journeys/schema"): {Role.admin, Role.marketer, Role.scheduler},
    ("GET", "/v1/journeys/{journey_id}"): {Role.admin, Role.marketer, Role.scheduler},
    ("PUT", "/v1/journeys/{journey_id}"): {Role.admin, Role.marketer},
    ("POST", "/v1/journeys/{journey_id}/status"): {Role.admin, Role.marketer},
    ("POST", "/v1/journeys/{journey_id}/move"): {Role.admin, Role.marketer},
    ("GET", "/v1/journeys/{journey_id}/versions"): {Role.admin, Role.marketer, Role.scheduler},
    ("POST", "/v1/journeys/{journey_id}/simulate"): {Role.admin, Role.marketer, Role.scheduler},
    ("GET", "/v1/journeys/{journey_id}/funnel"): {Role.admin, Role.marketer, Role.scheduler},
    ("GET", "/v1/customers/{external_id}/journeys"): STAFF,
    ("GET", "/console/login"): CONSOLE_PUBLIC,
    ("POST", "/console/login"): CONSOLE_PUBLIC,
    ("GET", "/console/static/plotly.min.js"): CONSOLE_PUBLIC,
    ("GET", "/console/static/{name}"): CONSOLE_PUBLIC,
    ("POST", "/console/logout"): ALL_ROLES,
    ("GET", "/console/"): ALL_ROLES,
    ("GET", "/console/customers"): STAFF,
    ("POST", "/console/customers"): STAFF,
    ("GET", "/console/customers/{external_id}"): STAFF,
    ("GET", "/console/tasks"): {Role.admin, Role.support},
    ("POST", "/console/tasks/{task_id}/claim"): {Role.admin, Role.support},
    ("POST", "/console/tasks/{task_id}/outcome"): {Role.admin, Role.support},
    ("GET", "/console/campaigns"): {Role.admin, Role.marketer},
    ("GET", "/console/campaigns/{campaign_id}"): {Role.admin, Role.marketer},
    ("POST", "/console/campaigns/{campaign_id}/dry-run"): {Role.admin, Role.marketer},
    ("POST", "/console/campaigns/{campaign_id}/status"): {Role.admin, Role.marketer},
    ("GET", "/console/reports"): {Role.admin, Role.marketer},
    ("GET", "/console/churn"): {Role.admin, Role.marketer},
    ("GET", "/console/jobs"): {Role.admin, Role.marketer, Role.scheduler},
    ("GET", "/v1/unsubscribe/{token}"): LINK,
    ("POST", "/v1/unsubscribe/{token}"): LINK,
}
SAMPLE_PARAMS = {"external_id": "NOBODY", "order_id": "NO-ORDER", "kind": "customers", "job_id": "999999", "key_id": "999999",
                 "name": "tier", "model_id": "999999",
                 "campaign_id": "999999", "journey_id": "999999", "template_id": "999999", "message_id": "999999", "task_id": "999999",
                 "token": "1.forged", "file": "swagger-ui.css"}


def _walk(routes) -> list[tuple[str, str]]:
    """(method, served path) of every route, prefixes of the routers that include it applied."""
    found = []
    for context in iter_route_contexts(routes):
        if isinstance(context.original_route, APIRoute | Route):
            found += [(m, context.path_format) for m in sorted((context.methods or set()) - {"HEAD", "OPTIONS"})]
    return found


def _routes(app) -> list[tuple[str, str]]:
    """Every (method, path): the app's route tree, plus the OpenAPI paths as a cross-check."""
    found = set(_walk(app.routes))
    for path, operations in app.openapi()["paths"].items():
        found |= {(method.upper(), path) for method in operations}
    return sorted(found)


def test_every_route_has_an_expected_role_set(app):
    missing = [r for r in _routes(app) if r not in EXPECTED]
    assert not missing, f"add these routes to EXPECTED in {__file__}: {missing}"
    stale = [r for r in EXPECTED if r not in _routes(app)]
    assert not stale, f"routes listed but gone: {stale}"


def test_roles_pass_exactly_where_expected(app, client, auth_header, keys):
    for method, path in _routes(app):
        url = re.sub(r"\{(\w+)\}", lambda m: SAMPLE_PARAMS[m.group(1)], path)
        expected = EXPECTED[(method, path)]
        if path.startswith("/console"):
            _check_console_route(client, keys, method, url, expected)
            continue
        anonymous = client.request(method, url, content=b"x\n")
        if expected == PUBLIC:
            assert anonymous.status_code < 400, (method, path, anonymous.status_code)
            continue
        if expected == PROBE:
            assert anonymous.status_code in (200, 503), (method, path, anonymous.status_code)
            continue
        if expected == SIGNED:
            assert anonymous.status_code == 403, (method, path, anonymous.status_code)
            continue
        if expected == LINK:
            assert 400 <= anonymous.status_code < 500, (method, path, anonymous.status_code)
            continue
        assert anonymous.status_code == 401, (method, path, anonymous.status_code)
        for role in Role:
            status = client.request(method, url, headers=auth_header(role), content=b"x\n").status_code
            if role in expected:
                assert status not in (401, 403), (method, path, role, status)
                assert status < 500, (method, path, role, status)
            else:
                assert status == 403, (method, path, role, status)


def _check_console_route(client, keys, method: str, url: str, expected) -> None:
    """Console pages: a session cookie (signed in with each role's key) instead of a bearer key; forms carry the
    session's CSRF token, so a 403 can only be the role's."""
    client.cookies.clear()
    anonymous = client.request(method, url, data={"x": "1"}, follow_redirects=False)
    if expected == CONSOLE_PUBLIC:
        assert anonymous.status_code < 500, (method, url, anonymous.status_code)
        return
    assert anonymous.status_code == 303 and "/console/login" in anonymous.headers["location"], (method, url)
    for role in Role:
        client.cookies.clear()
        signed = post_login(client, keys[role])
        assert signed.status_code == 303, (role, signed.status_code)
        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/console/").text).group(1)
        status = client.request(method, url, data={"csrf": token, "status": "paused", "outcome": "reached"},
                                follow_redirects=False).status_code
        if role in expected:
            assert status not in (401, 403) and status < 500, (method, url, role, status)
        else:
            assert status == 403, (method, url, role, status)
    client.cookies.clear()
