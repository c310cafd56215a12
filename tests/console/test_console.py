"""The web console without a browser: sign-in and its cookie, CSRF, roles, languages, every page renders."""

from __future__ import annotations

import re

import pytest

from campaigns import service
from crm.models import Role
from tests.support.factories import customers


def post_login(client, api_key: str, **fields):
    """Post the sign-in form as a browser does: fetched first (its token and cookie), then submitted."""
    form = client.get("/console/login")
    token = re.search(r'name="token" value="([^"]+)"', form.text).group(1)
    return client.post("/console/login", data={"api_key": api_key, "token": token} | fields, follow_redirects=False)


def sign_in(client, keys, role: Role) -> str:
    """Sign in through the form; returns the page's CSRF token (the cookie stays in the client)."""
    response = post_login(client, keys[role], next="/console/")
    assert response.status_code == 303, response.text
    home = client.get("/console/")
    return re.search(r'name="csrf" value="([^"]+)"', home.text).group(1)


@pytest.fixture
def shop(session, ctx):
    assert customers(session, ctx, 3).rows_failed == 0
    service.install_defaults(session, ctx, "test")
    session.flush()


def test_sign_in_sets_a_safe_cookie_and_sign_out_needs_the_form_token(client, keys):
    assert client.get("/console/", follow_redirects=False).headers["location"].startswith("/console/login")
    bad = post_login(client, "crm_nope_nope")
    assert bad.status_code == 401 and "密钥无效" in bad.text  # Chinese by default
    response = post_login(client, keys[Role.support], next="https://evil.example/")
    cookie = response.headers["set-cookie"]
    assert response.headers["location"] == "/console/"  # no open redirect
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    page = client.get("/console/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert client.post("/console/logout", data={"csrf": "forged"}).status_code == 403
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    out = client.post("/console/logout", data={"csrf": token}, follow_redirects=False)
    assert out.status_code == 303 and 'crm_console=""' in out.headers["set-cookie"]


def test_a_revoked_key_ends_its_console_sessions(client, keys, session, ctx):
    from crm.auth import authenticate, revoke_key

    sign_in(client, keys, Role.marketer)
    assert client.get("/console/campaigns").status_code == 200
    revoke_key(session, ctx, key_id=authenticate(session, ctx, keys[Role.marketer]).key_id, actor="test")
    assert client.get("/console/campaigns", follow_redirects=False).status_code == 303


def test_pages_follow_the_role_and_render_in_both_languages(client, keys, shop):
    csrf = sign_in(client, keys, Role.support)
    assert client.get("/console/campaigns").status_code == 403
    assert client.get("/console/reports").status_code == 403
    assert client.get("/console/tasks").status_code == 200
    found = client.post("/console/customers", data={"q": "C1", "csrf": csrf}, follow_redirects=False)
    assert found.status_code == 303 and found.headers["location"] == "/console/customers/C1"
    profile = client.get("/console/customers/C1")
    assert profile.status_code == 200 and "u***@example.com" in profile.text and "+86 1*******001" in profile.text
    assert "user1@example.com" not in profile.text and "+8613800100001" not in profile.text
    by_email = client.post("/console/customers", data={"q": "user2@example.com", "csrf": csrf},
                           follow_redirects=False)
    assert by_email.headers["location"] == "/console/customers/C2"
    nobody = {"q": "nobody@example.com", "csrf": csrf}
    assert "没有找到客户" in client.post("/console/customers", data=nobody).text
    assert client.post("/console/customers", data=nobody | {"csrf": "forged"}).status_code == 403
    english = client.post("/console/customers?lang=en", data=nobody)
    assert "No customer found" in english.text and "crm_lang=en" in english.headers["set-cookie"]
    assert "No customer found" in client.post("/console/customers", data=nobody).text  # remembered
    client.cookies.clear()
    sign_in(client, keys, Role.marketer)
    for page in ("/console/campaigns", "/console/reports", "/console/churn", "/console/jobs", "/console/customers"):
        assert client.get(page).status_code == 200, page
    assert client.get("/console/tasks").status_code == 403
    client.cookies.clear()
    sign_in(client, keys, Role.admin)
    admin_view = client.get("/console/customers/C1")
    assert "user1@example.com" in admin_view.text  # admins see contact data whole, as in the API


def test_dry_run_pause_and_resume_from_the_campaign_page(client, keys, shop, session):
    token = sign_in(client, keys, Role.marketer)
    campaign = service.list_campaigns(session, "active")[0]
    page = client.get(f"/console/campaigns/{campaign.id}")
    assert page.status_code == 200 and campaign.name in page.text
    assert client.post(f"/console/campaigns/{campaign.id}/dry-run", data={"csrf": "x"}).status_code == 403
    dry = client.post(f"/console/campaigns/{campaign.id}/dry-run", data={"csrf": token})
    assert dry.status_code == 200 and 'data-chart="exclusions-chart"' in dry.text
    paused = client.post(f"/console/campaigns/{campaign.id}/status", data={"csrf": token, "status": "paused"})
    assert paused.status_code == 200 and 'id="campaign-status">paused' in paused.text
    assert service.get_campaign(session, campaign.id).status == "paused"
    missing = client.get("/console/campaigns/999999")
    assert missing.status_code == 404 and "999999" in missing.text


def test_plotly_is_served_from_the_package(client):
    script = client.get("/console/static/plotly.min.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert len(script.content) > 1_000_000 and b"plotly" in script.content[:2000].lower()
    assert client.get("/console/static/console.js").status_code == 200
    assert client.get("/console/static/nope.js").status_code == 404


def test_support_claims_a_vip_call_task_and_records_its_outcome(client, keys, shop, session, ctx):
    from sqlmodel import select

    from campaigns.models import CallTask, Message
    from crm.models import Customer

    customer = session.exec(select(Customer).where(Customer.external_id == "C1")).one()
    campaign = service.list_campaigns(session)[0]
    now = ctx.clock.now()
    message = Message(campaign_id=campaign.id, occurrence="2026-11-05", customer_id=customer.id, channel="phone",
                      status="sent", priority=90, transactional=False, send_at=now, template="vip_presale",
                      locale="zh-CN", attempts=1, created_at=now, updated_at=now, sent_at=now)
    session.add(message)
    session.flush()
    task = CallTask(message_id=message.id, customer_id=customer.id, campaign_id=campaign.id, status="open",
                    script="邀请参加新品预售", created_at=now)
    session.add(task)
    session.flush()
    token = sign_in(client, keys, Role.support)
    listing = client.get("/console/tasks")
    assert "邀请参加新品预售" in listing.text and "+86 1*******001" in listing.text  # masked until claimed
    claimed = client.post(f"/console/tasks/{task.id}/claim", data={"csrf": token})
    assert claimed.status_code == 200 and "+8613800100001" in claimed.text  # revealed to the claiming agent
    bad = client.post(f"/console/tasks/{task.id}/outcome", data={"csrf": token, "outcome": "teleported"})
    assert bad.status_code == 422 and "outcome must be one of" in bad.text
    done = client.post(f"/console/tasks/{task.id}/outcome",
                       data={"csrf": token, "outcome": "reached", "notes": "会来"})
    assert done.status_code == 200
    session.refresh(task)
    session.refresh(message)
    assert (task.status, task.outcome, task.notes, message.status) == ("done", "reached", "会来", "delivered")


def test_sign_out_ends_the_session_even_for_a_copied_cookie(client, keys):
    sign_in(client, keys, Role.support)
    copied = client.cookies.get("crm_console")
    page = client.get("/console/")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    assert client.post("/console/logout", data={"csrf": token}, follow_redirects=False).status_code == 303
    client.cookies.set("crm_console", copied, path="/console")
    stolen = client.get("/console/", follow_redirects=False)
    assert stolen.status_code == 303 and stolen.headers["location"].startswith("/console/login")


def test_sign_in_needs_our_own_form_and_origin(client, keys):
    # Login CSRF: another site posting its own key into the victim's browser.
    no_token = client.post("/console/login", data={"api_key": keys[Role.support]}, follow_redirects=False)
    assert no_token.status_code == 403 and "crm_console" not in no_token.headers.get("set-cookie", "")
    form = client.get("/console/login")
    token = re.search(r'name="token" value="([^"]+)"', form.text).group(1)
    cross_site = client.post("/console/login", data={"api_key": keys[Role.support], "token": token},
                             headers={"Origin": "https://evil.example"}, follow_redirects=False)
    assert cross_site.status_code == 403
    client.cookies.delete("crm_login", path="/console/login")
    cookieless = client.post("/console/login", data={"api_key": keys[Role.support], "token": token},
                             follow_redirects=False)
    assert cookieless.status_code == 403  # a token lifted from a page is useless without this browser's cookie
    assert post_login(client, keys[Role.support], next="/console/tasks").headers["location"] == "/console/tasks"


@pytest.mark.parametrize("target", ["/console/../../evil", "/console/%2e%2e/%2e%2e/evil", "//evil.example/console/",
                                    "https://evil.example/console/", "/console\\\\..\\\\evil", "/consoleevil"])
def test_sign_in_never_redirects_outside_the_console(client, keys, target):
    response = post_login(client, keys[Role.support], next=target)
    assert response.status_code == 303 and response.headers["location"] == "/console/", target
