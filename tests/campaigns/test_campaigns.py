"""Campaigns on a real database: API validation, templates, planning into the outbox, dry-run, eligibility."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import func
from sqlmodel import select

from campaigns import service
from campaigns.models import Campaign, CampaignOccurrence, CampaignVersion, Message
from crm.models import AuditLog, Role
from tests.conftest import cli_env

TUESDAY = date(2026, 11, 3)  # TEST_NOW is 2026-11-01 08:00 UTC, a Sunday


def _potential(**overrides):
    body = {"name": "Potential coupon", "audience": {"tiers": ["potential"]},
            "channels": [{"channel": "sms", "template": "potential_coupon"},
                         {"channel": "push", "template": "potential_coupon"}], "delivery": "all",
            "offer": {"amount_off": 50, "min_spend": 300, "valid_days": 7},
            "schedule": {"kind": "weekly", "weekday": "tuesday", "local_hour": 10}, "holdout_share": 0.0,
            "priority": 60}
    return body | overrides


def _active(session, ctx, body) -> Campaign:
    campaign = service.create_campaign(session, ctx, body, "test")
    return service.set_status(session, ctx, campaign.id, "active", "test")[0]


def test_campaign_api_validates_versions_and_audits(client, auth_header, people):
    marketer = auth_header(Role.marketer)
    bad = client.post("/v1/campaigns", json=_potential(audience={"tiers": ["VIPP"]}), headers=marketer)
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
    assert bad.json()["errors"][0]["field"] == "audience.tiers.0"
    missing = client.post("/v1/campaigns", json=_potential(channels=[{"channel": "sms", "template": "nope"}]),
                          headers=marketer)
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "channels.0.template"
    shape = client.post("/v1/campaigns", json=_potential(schedule={"kind": "weekly"}), headers=marketer)
    assert shape.status_code == 422 and shape.json()["errors"][0]["field"] == "schedule"
    created = client.post("/v1/campaigns", json=_potential(), headers=marketer)
    assert created.status_code == 201 and created.json()["status"] == "draft"
    campaign_id = created.json()["id"]
    assert client.post("/v1/campaigns", json=_potential(), headers=marketer).status_code == 409
    changed = client.put(f"/v1/campaigns/{campaign_id}", json=_potential(priority=70), headers=marketer)
    assert changed.status_code == 200 and changed.json()["version"] == 2 and changed.json()["priority"] == 70
    active = client.post(f"/v1/campaigns/{campaign_id}/status", json={"status": "active"}, headers=marketer)
    assert active.status_code == 200 and active.json()["status"] == "active"
    backwards = client.post(f"/v1/campaigns/{campaign_id}/status", json={"status": "draft"}, headers=marketer)
    assert backwards.status_code == 409
    versions = client.get(f"/v1/campaigns/{campaign_id}/versions", headers=marketer).json()["items"]
    assert [(v["version"], v["status"]) for v in versions] == [(1, "draft"), (2, "draft"), (3, "active")]
    assert client.get("/v1/campaigns/999999", headers=marketer).status_code == 404


def test_changes_are_audited(session, ctx, people):
    campaign = _active(session, ctx, _potential())
    actions = session.exec(select(AuditLog.action).where(AuditLog.entity == "campaign",
                                                         AuditLog.entity_id == str(campaign.id))).all()
    assert actions == ["campaign.create", "campaign.active"]
    assert session.exec(select(func.count()).select_from(CampaignVersion)
                        .where(CampaignVersion.campaign_id == campaign.id)).one() == 2


def test_templates_are_rendered_before_saving_and_sandboxed(client, auth_header, people):
    marketer = auth_header(Role.marketer)
    escape = client.post("/v1/templates", headers=marketer, json={
        "name": "evil", "channel": "sms", "locale": "en-US",
        "parts": {"body": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}})
    assert escape.status_code == 422 and escape.json()["errors"][0]["field"] == "parts.body"
    undefined = client.post("/v1/templates", headers=marketer, json={
        "name": "typo", "channel": "sms", "locale": "en-US", "parts": {"body": "Hi {{ customer.nick }}"}})
    assert undefined.status_code == 422
    no_link = client.post("/v1/templates", headers=marketer, json={
        "name": "mail", "channel": "email", "locale": "en-US",
        "parts": {"subject": "Hi", "text": "Hello", "html": "<a href='{{ unsubscribe_url }}'>stop</a>"}})
    assert no_link.status_code == 422 and no_link.json()["errors"][0]["field"] == "parts.text"
    good = client.post("/v1/templates", headers=marketer, json={
        "name": "hello", "channel": "sms", "locale": "zh-CN",
        "parts": {"body": "【{{ shop.name }}】{{ customer.external_id }}，{{ offer.description }}，回复TD退订"}})
    assert good.status_code == 201, good.text
    assert good.json()["sample"]["encoding"] == "UCS-2" and good.json()["sample"]["segments"] == 1
    again = client.post("/v1/templates", headers=marketer, json={
        "name": "hello", "channel": "sms", "locale": "zh-CN", "parts": {"body": "{{ customer.external_id }} 你好，回复TD退订"}})
    assert again.json()["version"] == 2
    preview = client.post(f"/v1/templates/{again.json()['id']}/preview", params={"customer": "P1"}, headers=marketer)
    assert preview.status_code == 200 and preview.json()["rendered"]["body"] == "P1 你好，回复TD退订"
    assert client.post(f"/v1/templates/{again.json()['id']}/preview", params={"customer": "NOBODY"},
                       headers=marketer).status_code == 404
    listed = client.get("/v1/templates", headers=marketer).json()["items"]
    assert {"hello", "potential_coupon", "lost_winback"} <= {t["name"] for t in listed}


def test_planning_writes_each_message_once_with_guard_rails(session, ctx, people):
    campaign = _active(session, ctx, _potential())
    dry = service.dry_run(session, ctx, campaign.id, TUESDAY)
    assert session.exec(select(func.count()).select_from(Message)).one() == 0  # a dry-run writes nothing
    first = service.plan_campaign(session, ctx, campaign.id, TUESDAY)
    again = service.plan_campaign(session, ctx, campaign.id, TUESDAY)
    assert first["added"] > 0 and again["added"] == 0 and again["already_planned"]
    rows = session.exec(select(Message).where(Message.campaign_id == campaign.id)).all()
    planned = [m for m in rows if m.status == "planned"]
    assert len(planned) == dry["messages"] == first["counts"]["messages"]
    by_customer = {(m.customer_id, m.channel): m for m in planned}
    p1, p2, p3 = people["P1"], people["P2"], people["P3"]
    # P1: SMS and push (delivery "all"); P2 has no push token; P3 opted out of SMS.
    assert {(p1, "sms"), (p1, "push"), (p2, "sms"), (p3, "push")} == set(by_customer)
    assert dry["excluded"]["no_consent"] == 1 and dry["excluded"]["no_contact"] == 1
    # 10:00 on Tuesday in each customer's zone
    assert by_customer[(p1, "sms")].send_at == datetime(2026, 11, 3, 2, 0, tzinfo=UTC)
    assert by_customer[(p2, "sms")].send_at == datetime(2026, 11, 3, 15, 0, tzinfo=UTC)
    # P2's budget: (0.15 * (1000 + 300) - 140) / 1.15 = 47.8 → 47 off instead of 50, recorded with the reason
    offer = by_customer[(p2, "sms")].offer
    assert offer["decision"] == "reduced" and offer["amount_off"] == 47 and offer["reasons"] == "budget"
    assert by_customer[(p1, "sms")].offer["decision"] == "as_requested"
    assert by_customer[(p2, "sms")].valid_until == datetime(2026, 11, 10, 15, 0, tzinfo=UTC)  # 7 days from sending
    codes = {m.coupon_code for m in planned if m.customer_id == p1}
    assert len(codes) == 1 and codes.pop().startswith("CRM")
    occurrence = session.exec(select(CampaignOccurrence)).one()
    assert occurrence.counts["audience"] == 3


def test_caps_count_planned_messages_across_campaigns_and_priority_decides(session, ctx, people):
    high = _active(session, ctx, _potential(name="High", priority=90, offer=None, delivery="first_eligible",
                                            channels=[{"channel": "sms", "template": "birthday_greeting"}]))
    middle = _active(session, ctx, _potential(name="Middle", priority=80, offer=None, delivery="first_eligible",
                                              channels=[{"channel": "sms", "template": "birthday_greeting"}]))
    low = _active(session, ctx, _potential(name="Low", priority=10, offer=None, delivery="first_eligible",
                                           channels=[{"channel": "sms", "template": "birthday_greeting"}],
                                           defer_days=0))
    results = {r["campaign"]: r for r in service.plan_due(session, ctx, TUESDAY)}
    assert [r for r in results] == ["High", "Middle", "Low"]  # highest priority planned first
    assert results["High"]["counts"]["channel_sms"] == 2 and results["Middle"]["counts"]["channel_sms"] == 2
    assert results["Low"]["counts"]["lower_priority"] == 2 and results["Low"]["counts"]["channel_sms"] == 0
    skipped = session.exec(select(Message).where(Message.campaign_id == low.id)).all()
    assert {m.status for m in skipped} == {"skipped"} and {m.reason for m in skipped} == {"lower_priority"}
    # whatever was planned, no customer holds more than 2 SMS in 30 days
    per_customer = session.exec(select(Message.customer_id, func.count()).where(
        Message.channel == "sms", Message.status == "planned").group_by(Message.customer_id)).all()
    assert max(n for _, n in per_customer) == 2
    assert high.id != middle.id


def test_a_capped_campaign_with_defer_days_moves_to_when_the_cap_frees(session, ctx, people):
    for name in ("First", "Second"):
        _active(session, ctx, _potential(name=name, offer=None, channels=[
            {"channel": "sms", "template": "birthday_greeting"}], schedule={"kind": "daily", "local_hour": 10}))
    patient = _active(session, ctx, _potential(name="Patient", offer={"amount_off": 20, "min_spend": 300,
                                                                      "valid_days": 7}, defer_days=30, channels=[
        {"channel": "sms", "template": "birthday_greeting"}], schedule={"kind": "daily", "local_hour": 10}))
    service.plan_due(session, ctx, TUESDAY)
    deferred = session.exec(select(Message).where(Message.campaign_id == patient.id,
                                                  Message.status == "planned")).all()
    assert deferred and {m.reason for m in deferred} == {"deferred_cap"}
    for message in deferred:
        assert message.send_at >= datetime(2026, 12, 3, tzinfo=UTC) - timedelta(days=1)  # 30 days after the others
        assert message.valid_until == message.send_at + timedelta(days=7)  # valid from when it really goes out


def test_fairness_refuses_newcomers_getting_a_better_price(session, ctx, client, auth_header, people):
    loyal = _active(session, ctx, _potential())
    newcomer = {"name": "First repeat", "audience": {"tags": ["first_order_only"]},
                "channels": [{"channel": "email", "template": "first_repeat"}],
                "offer": {"amount_off": 50}, "schedule": {"kind": "triggered", "trigger": "days_after_first_order",
                                                          "days": 14}}
    created = client.post("/v1/campaigns", json=newcomer, headers=auth_header(Role.marketer)).json()
    refused = client.post(f"/v1/campaigns/{created['id']}/status", json={"status": "active"},
                          headers=auth_header(Role.marketer))
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "offer"
    reasons = [e["reason"] for e in refused.json()["errors"]]
    assert "potential pays 100.0 for a basket of 100.0, new customers 50.0 (First repeat)" in reasons
    warned = client.put(f"/v1/campaigns/{created['id']}", json=newcomer | {"fairness": "warn"},
                        headers=auth_header(Role.marketer))
    assert warned.status_code == 200
    active = client.post(f"/v1/campaigns/{created['id']}/status", json={"status": "active"},
                         headers=auth_header(Role.marketer))
    assert active.status_code == 200 and active.json()["fairness_warnings"]
    # The accepted newcomer offer is not the loyal campaign's doing: changing that campaign is not refused.
    changed = client.put(f"/v1/campaigns/{loyal.id}", json=_potential(priority=65), headers=auth_header(Role.marketer))
    assert changed.status_code == 200 and changed.json()["fairness_warnings"] == []


def test_triggered_first_order_and_quiet_hours(session, ctx, people):
    late = _active(session, ctx, {"name": "Late push", "audience": {"tags": ["first_order_only"]},
                                  "channels": [{"channel": "email", "template": "first_repeat"}],
                                  "offer": {"amount_off": 20}, "fairness": "warn", "holdout_share": 0.0,
                                  "schedule": {"kind": "triggered", "trigger": "days_after_first_order", "days": 14,
                                               "local_hour": 22}})
    result = service.plan_campaign(session, ctx, late.id, date(2026, 11, 1))  # N1's first order: 2026-10-18
    assert result["counts"]["audience"] == 1
    message = session.exec(select(Message).where(Message.campaign_id == late.id)).one()
    assert message.channel == "email" and message.reason is None  # email is not held by quiet hours
    sms = _active(session, ctx, _potential(name="Night SMS", offer=None, channels=[
        {"channel": "sms", "template": "birthday_greeting"}], schedule={"kind": "daily", "local_hour": 23}))
    service.plan_campaign(session, ctx, sms.id, TUESDAY)
    p1 = session.exec(select(Message).where(Message.campaign_id == sms.id,
                                            Message.customer_id == people["P1"])).one()
    assert p1.reason == "deferred_quiet_hours" and p1.send_at == datetime(2026, 11, 4, 1, 0, tzinfo=UTC)


def test_eligibility_explains_one_customer(client, auth_header, session, ctx, people):
    campaign = _active(session, ctx, _potential(channels=[{"channel": "sms", "template": "potential_coupon"}]))
    support = auth_header(Role.support)
    p3 = client.get(f"/v1/campaigns/{campaign.id}/eligibility/P3", params={"date": TUESDAY.isoformat()},
                    headers=support).json()
    assert p3["in_audience"] and not p3["would_receive"] and p3["reasons"] == ["no_consent"]
    assert p3["consent"]["sms"] == "opted_out"
    p1 = client.get(f"/v1/campaigns/{campaign.id}/eligibility/P1", params={"date": TUESDAY.isoformat()},
                    headers=support).json()
    assert p1["would_receive"] and p1["decisions"][0]["offer"]["code"].startswith("CRM")
    lost = client.get(f"/v1/campaigns/{campaign.id}/eligibility/L1", headers=support).json()
    assert not lost["in_audience"] and lost["audience_checks"][0]["holds"] is False
    assert client.get(f"/v1/campaigns/{campaign.id}/eligibility/NOBODY", headers=support).status_code == 404


def test_dry_run_api_and_profile_sections(client, auth_header, session, ctx, people):
    campaign = _active(session, ctx, _potential())
    marketer = auth_header(Role.marketer)
    dry = client.post(f"/v1/campaigns/{campaign.id}/dry-run", params={"date": TUESDAY.isoformat()}, headers=marketer)
    assert dry.status_code == 200
    body = dry.json()
    assert body["audience"] == 3 and body["per_channel"]["sms"] == 2 and body["per_channel"]["push"] == 2
    assert body["samples"] and "满300减50" in body["samples"][0]["rendered"]["body"]
    assert body["estimated_cost"]["messages"] > 0 and body["estimated_cost"]["discount_if_all_redeemed"] > 0
    wrong_day = client.post(f"/v1/campaigns/{campaign.id}/plan", params={"date": "2026-11-04"},
                            headers=auth_header(Role.admin))
    assert wrong_day.status_code == 422 and wrong_day.json()["errors"][0]["field"] == "date"
    client.post(f"/v1/campaigns/{campaign.id}/plan", params={"date": TUESDAY.isoformat()}, headers=auth_header(Role.admin))
    profile = client.get("/v1/customers/P2/profile", headers=auth_header(Role.support)).json()
    history = profile["sections"]["contact_history"]["messages"]
    assert history and history[0]["campaign"] == "Potential coupon" and history[0]["status"] == "planned"
    planned = session.exec(select(Message).where(Message.customer_id == people["P2"])).one()
    assert (datetime.fromisoformat(history[0]["send_at"]), history[0]["discount_value"], history[0]["channel"]) == (
        planned.send_at, planned.discount_value, planned.channel)  # driver read: aware UTC on both backends
    budget = profile["sections"]["discount_budget"]
    assert budget["spend"] == 1000 and budget["discount_granted"] == 140 and budget["budget"] == 150
    assert budget["open_offers"] == 47 and budget["left"] == 0  # 150 - 140 - 47 < 0
    assert budget["read_from"] == "state"  # the state clock stands at today's midnight: no raw orders read
    listed = client.get("/v1/messages", params={"customer": "P2"}, headers=marketer).json()
    assert {m["channel"] for m in listed["items"]} == {"sms"}
    assert {m["customer"] for m in listed["items"]} == {"P2"} and "customer_id" not in listed["items"][0]
    everyone = client.get("/v1/messages", headers=marketer).json()["items"]
    pushes = client.get("/v1/messages", params={"channel": "push"}, headers=marketer).json()["items"]
    assert pushes and [m["id"] for m in pushes] == [m["id"] for m in everyone if m["channel"] == "push"]
    assert client.get("/v1/messages", params={"channel": "fax"}, headers=marketer).status_code == 422
    first = client.get("/v1/messages", params={"limit": 1}, headers=marketer).json()
    following = client.get("/v1/messages", params={"limit": 1, "cursor": first["next_cursor"]}, headers=marketer)
    assert following.status_code == 200 and following.json()["items"][0]["id"] > first["items"][0]["id"]
    forged = client.get("/v1/messages", params={"cursor": "12"}, headers=marketer)
    assert forged.status_code == 422 and forged.json()["errors"][0]["field"] == "cursor"


def test_install_defaults_is_idempotent(session, ctx, people):
    first = service.install_defaults(session, ctx, "test")
    assert len(first) == 8 and all(r["created"] for r in first)  # at-risk: one plan per tier group
    assert [r for r in first if r["name"] == "First repeat order"][0]["warnings"]  # installed as 'warn'
    again = service.install_defaults(session, ctx, "test")
    assert not any(r["created"] for r in again)
    for row in first:
        result = service.dry_run(session, ctx, row["id"])
        assert result["audience"] >= result["recipients"] >= 0


def test_cli_dry_run_of_a_missing_campaign_is_one_line(scratch_url, tmp_path):
    env = cli_env(scratch_url, tmp_path)
    subprocess.run([sys.executable, "-m", "wiring.cli", "migrate"], env=env, check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-m", "wiring.cli", "campaigns", "dry-run", "42", "--json"], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.strip() == "error: campaign 42 does not exist"
