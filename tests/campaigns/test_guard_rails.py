"""Guard rails no campaign can switch off: transactional notices, bounded coupons and their redemptions, the
guard-rail settings through the API, preemption, template content rules (opt-out text, advertising law)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from sqlmodel import select

from campaigns import service
from campaigns.authoring import guard_rail_settings, templates
from campaigns.delivery.dispatch import admit
from campaigns.measurement.conversions import attribute_conversions
from campaigns.models import Message
from campaigns.planning import guardrails, plans
from crm.models import AuditLog, Role
from tests.campaigns.test_campaigns import TUESDAY, _active, _potential
from tests.support.factories import csv_text, run

NOTICE = {"name": "shipping_notice", "channel": "sms", "locale": "zh-CN", "kind": "transactional",
          "parts": {"body": "【{{ shop.name }}】您的订单已发货，请留意查收。"}}


def _notice_campaign(**overrides) -> dict:
    return {"name": "Shipping notice", "audience": {"tiers": ["potential"]}, "transactional": True,
            "channels": [{"channel": "sms", "template": "shipping_notice"}],
            "schedule": {"kind": "weekly", "weekday": "tuesday", "local_hour": 23}, "holdout_share": 0.0,
            "priority": 95} | overrides


# ---------------------------------------------------------------- transactional notices


def test_only_an_admin_defines_a_transactional_notice_and_it_never_carries_an_offer(client, auth_header, people):
    marketer, admin = auth_header(Role.marketer), auth_header(Role.admin)
    assert client.post("/v1/templates", json=NOTICE, headers=marketer).status_code == 403
    assert client.post("/v1/templates", json=NOTICE, headers=admin).status_code == 201
    selling = NOTICE | {"name": "sneaky", "parts": {"body": "您的订单已发货！限时优惠券 {{ offer.code }}"}}
    refused = client.post("/v1/templates", json=selling, headers=admin)
    assert refused.status_code == 422
    reasons = " ".join(e["reason"] for e in refused.json()["errors"])
    assert "carries no offer" in reasons and "'限时'" in reasons
    # A marketer may not mark a campaign transactional (the defect: it skipped consent, caps and quiet hours).
    body = _notice_campaign()
    denied = client.post("/v1/campaigns", json=body, headers=marketer)
    assert denied.status_code == 403 and denied.json()["errors"][0]["field"] == "transactional"
    with_offer = client.post("/v1/campaigns", json=body | {"offer": {"percent_off": 10}}, headers=admin)
    assert with_offer.status_code == 422 and with_offer.json()["errors"][0]["field"] == "offer"
    marketing_template = body | {"channels": [{"channel": "sms", "template": "potential_coupon"}]}
    assert client.post("/v1/campaigns", json=marketing_template, headers=admin).status_code == 422
    created = client.post("/v1/campaigns", json=body, headers=admin)
    assert created.status_code == 201
    campaign_id = created.json()["id"]
    assert client.put(f"/v1/campaigns/{campaign_id}", json=body | {"priority": 5}, headers=marketer).status_code == 403
    assert client.post(f"/v1/campaigns/{campaign_id}/status", json={"status": "active"},
                       headers=marketer).status_code == 403


def test_a_transactional_notice_skips_caps_and_quiet_hours_but_never_an_opt_out(session, ctx, people):
    service.save_template(session, ctx, NOTICE, "admin", may_define_transactional=True)
    campaign = service.create_campaign(session, ctx, _notice_campaign(), "admin", may_define_transactional=True)
    service.set_status(session, ctx, campaign.id, "active", "admin")
    result = service.plan_campaign(session, ctx, campaign.id, TUESDAY)
    rows = {m.customer_id: m for m in session.exec(select(Message).where(Message.campaign_id == campaign.id))}
    # P3 opted out of SMS: nothing planned for them, whatever the campaign calls itself.
    planned = {c for c, m in rows.items() if m.status == "planned"}
    assert planned == {people["P1"], people["P2"]} and result["counts"]["no_consent"] == 1
    # 23:00 local is inside quiet hours; a notice is not deferred for them.
    assert rows[people["P1"]].send_at == datetime(2026, 11, 3, 15, 0, tzinfo=UTC)
    assert rows[people["P1"]].transactional and rows[people["P1"]].offer is None
    # The customer opts out after planning: the dispatcher's check at send time refuses the notice too.
    from crm.models import Channel, ConsentStatus
    from crm.service import record_consent

    record_consent(session, ctx, customer_id=people["P1"], channel=Channel.sms, status=ConsentStatus.opted_out,
                   source="test", actor="test")
    session.flush()
    message = rows[people["P1"]]
    claimed = [{"id": message.id, "customer_id": message.customer_id, "channel": "sms", "transactional": True,
                "expires_at": None, "priority": 95}]
    to_send, decided = admit(session, ctx, claimed, message.send_at)
    assert to_send == [] and decided[0]["reason"] == "no_consent"


# ---------------------------------------------------------------- bounded coupons and redemptions


def test_every_planned_coupon_has_a_minimum_basket_and_a_maximum_discount(session, ctx, people):
    no_minimum = _active(session, ctx, _potential(name="No minimum", offer={"amount_off": 42, "valid_days": 7},
                                                  channels=[{"channel": "sms", "template": "potential_coupon"}]))
    percent = _active(session, ctx, _potential(name="Quarter off", offer={"percent_off": 25, "valid_days": 7},
                                               priority=70, channels=[{"channel": "push",
                                                                       "template": "potential_coupon"}]))
    service.plan_campaign(session, ctx, no_minimum.id, TUESDAY)
    service.plan_campaign(session, ctx, percent.id, TUESDAY)
    planned = session.exec(select(Message).where(Message.status == "planned")).all()
    assert planned
    for message in planned:
        offer = message.offer
        assert offer["min_spend"] is not None and offer["max_discount"] is not None
        if offer["amount_off"] is not None:
            # 42 off may never take a basket below the potential tier's 20% ceiling: the minimum is 42 / 0.2.
            assert offer["min_spend"] >= offer["amount_off"] / 0.20 - 1e-6
        else:
            assert offer["percent_off"] <= 20 and message.discount_value >= offer["max_discount"]


def test_the_ledger_reads_the_caps_windows_and_every_offer_still_open(session, ctx, people):
    campaign = _active(session, ctx, _potential(channels=[{"channel": "sms", "template": "potential_coupon"}]))
    service.plan_campaign(session, ctx, campaign.id, TUESDAY)
    offer, other = session.exec(select(Message).where(Message.status == "planned").order_by(Message.id)).all()[:2]
    long_ago = offer.send_at - timedelta(days=200)
    # Sent 200 days ago: the offer is valid for a year, the other message's coupon has lapsed.
    for message, valid_until in ((offer, offer.send_at + timedelta(days=165)), (other, long_ago + timedelta(days=7))):
        session.exec(Message.__table__.update().where(Message.__table__.c.id == message.id).values(
            status="sent", sent_at=long_ago, send_at=long_ago, valid_until=valid_until))
    ledger = plans.read_ledger(session, offer.send_at, 30, None)
    assert ledger["message_id"].to_list() == [offer.id]  # the lapsed one is outside every cap window: not read at all
    assert ledger["open_offer"].to_list() == [offer.discount_value]
    assert plans.read_ledger(session, long_ago, 30, None)["message_id"].sort().to_list() == sorted([offer.id, other.id])


def test_a_redeemed_coupon_records_the_discount_granted_and_stops_counting_as_open(session, ctx, people):
    campaign = _active(session, ctx, _potential(channels=[{"channel": "sms", "template": "potential_coupon"}]))
    service.plan_campaign(session, ctx, campaign.id, TUESDAY)
    message = session.exec(select(Message).where(Message.customer_id == people["P1"],
                                                 Message.status == "planned")).one()
    session.exec(Message.__table__.update().where(Message.__table__.c.id == message.id).values(
        status="sent", sent_at=message.send_at))
    ledger_before = plans.read_ledger(session, message.send_at, 400, people["P1"])
    assert ledger_before["open_offer"].sum() == message.discount_value
    run(session, ctx, "orders", csv_text(("external_id", "customer_external_id", "ordered_at", "amount_paid",
                                          "discount", "cost_of_goods", "coupon_code"),
                                         [("r1", "P1", "2026-10-31T10:00:00Z", "330", "50", "", message.coupon_code)]))
    ledger_after = plans.read_ledger(session, message.send_at, 400, people["P1"])
    assert ledger_after["open_offer"].sum() == 0  # the order's own discount counts now, not the coupon twice
    result = attribute_conversions(session, ctx)
    assert result["redemptions"] == 1 and result["redemptions_over_terms"] == 0
    session.refresh(message)
    assert message.redeemed_discount == 50 and message.redeemed_order_id is not None


# ---------------------------------------------------------------- settings through the API


def test_guard_rails_are_read_by_marketers_changed_by_admins_validated_and_audited(client, session, ctx,
                                                                                  auth_header, people):
    marketer, admin = auth_header(Role.marketer), auth_header(Role.admin)
    current = client.get("/v1/guard-rails", headers=marketer)
    assert current.status_code == 200 and current.json()["version"] == 0
    body = current.json()["settings"]
    assert body["caps"]["sms"] == {"limit": 2, "window_days": 30} and body["discounts"]["budget_share"] == 0.15
    assert client.put("/v1/guard-rails", json=body, headers=marketer).status_code == 403
    wrong = client.put("/v1/guard-rails", json=body | {"caps": {"sms": {"limit": -1, "window_days": 30}}},
                       headers=admin)
    assert wrong.status_code == 422 and wrong.json()["errors"][0]["field"] == "caps.sms.limit"
    nan = client.put("/v1/guard-rails", content=b'{"discounts": {"budget_share": NaN}}', headers=admin | {
        "Content-Type": "application/json"})
    assert nan.status_code == 422
    clash = body | {"sms_keywords": body["sms_keywords"] | {"start": ["TD"]}}
    assert client.put("/v1/guard-rails", json=clash, headers=admin).status_code == 422
    changed = client.put("/v1/guard-rails", json=body | {"caps": body["caps"] | {"sms": {"limit": 1,
                                                                                        "window_days": 30}}},
                         headers=admin)
    assert changed.status_code == 200 and changed.json()["version"] == 1
    entry = session.exec(select(AuditLog).where(AuditLog.action == "guard_rails.update")).one()
    assert entry.before["caps"]["sms"]["limit"] == 2 and entry.after["caps"]["sms"]["limit"] == 1
    # The planner reads them: with one SMS per 30 days the second campaign finds every slot taken.
    first = _active(session, ctx, _potential(name="First", offer=None, channels=[
        {"channel": "sms", "template": "birthday_greeting"}]))
    second = _active(session, ctx, _potential(name="Second", offer=None, priority=10, channels=[
        {"channel": "sms", "template": "birthday_greeting"}]))
    service.plan_campaign(session, ctx, first.id, TUESDAY)
    result = service.plan_campaign(session, ctx, second.id, TUESDAY)
    assert result["counts"]["channel_sms"] == 0 and result["counts"]["lower_priority"] == 2
    assert [v["version"] for v in client.get("/v1/guard-rails/versions", headers=marketer).json()["items"]] == [1]


def test_version_zero_is_seeded_from_the_environment(session, ctx):
    ctx.settings = ctx.settings.model_copy(update={"caps": {"sms": (3, 7)}, "quiet_hours": ("22:00", "08:00")})
    version, rails = guard_rail_settings.current_settings(session, ctx)
    assert version == 0 and rails.caps["sms"].limit == 3 and rails.quiet_hours.start == "22:00"
    assert not math.isnan(guardrails.guard_rails(session, ctx).discounts.budget_share)


# ---------------------------------------------------------------- preemption


def test_a_higher_priority_sms_preempts_lower_ones_still_planned(session, ctx, people):
    sms = [{"channel": "sms", "template": "birthday_greeting"}]
    lows = [_active(session, ctx, _potential(name=f"Low {i}", offer=None, priority=10, channels=sms))
            for i in (1, 2)]
    high = _active(session, ctx, _potential(name="High", offer=None, priority=90, channels=sms))
    for low in lows:
        service.plan_campaign(session, ctx, low.id, TUESDAY)
    result = service.plan_campaign(session, ctx, high.id, TUESDAY)
    # P1 and P2 had their two SMS slots taken by priority 10: the priority-90 message takes one of them.
    assert result["counts"]["channel_sms"] == 2 and result["counts"]["preempted"] == 2
    assert result["counts"]["lower_priority"] == 0 and result["counts"]["capped"] == 0
    rows = session.exec(select(Message).where(Message.channel == "sms")).all()
    preempted = [m for m in rows if m.status == "preempted"]
    assert len(preempted) == 2 and {m.reason for m in preempted} == {f"preempted_by_campaign_{high.id}"}
    live = [m for m in rows if m.status == "planned"]
    per_customer = {c: sum(1 for m in live if m.customer_id == c) for c in {m.customer_id for m in live}}
    assert max(per_customer.values()) == 2  # the cap still holds
    assert {m.customer_id for m in live if m.campaign_id == high.id} == {people["P1"], people["P2"]}


def test_a_sent_message_is_never_preempted(session, ctx, people):
    sms = [{"channel": "sms", "template": "birthday_greeting"}]
    lows = [_active(session, ctx, _potential(name=f"Low {i}", offer=None, priority=10, channels=sms))
            for i in (1, 2)]
    for low in lows:
        service.plan_campaign(session, ctx, low.id, TUESDAY)
    session.exec(Message.__table__.update().values(status="sent", sent_at=Message.__table__.c.send_at, attempts=1))
    high = _active(session, ctx, _potential(name="High", offer=None, priority=90, channels=sms))
    result = service.plan_campaign(session, ctx, high.id, TUESDAY)
    assert result["counts"]["preempted"] == 0 and result["counts"]["capped"] == 2
    assert result["counts"]["channel_sms"] == 0


# ---------------------------------------------------------------- template content


def test_marketing_sms_need_their_opt_out_text_and_ad_copy_no_absolute_claims(client, auth_header, people):
    marketer = auth_header(Role.marketer)
    bare = {"name": "promo", "channel": "sms", "locale": "zh-CN", "parts": {"body": "【{{ shop.name }}】新品上市"}}
    refused = client.post("/v1/templates", json=bare, headers=marketer)
    assert refused.status_code == 422 and "opt-out" in refused.json()["errors"][0]["reason"]
    assert client.post("/v1/templates", json=bare | {"parts": {"body": "【{{ shop.name }}】新品上市，回复TD退订"}},
                       headers=marketer).status_code == 201
    claims = client.post("/v1/templates", json=bare | {"parts": {"body": "最低价！全网第一！回复TD退订"}},
                         headers=marketer)
    assert claims.status_code == 422
    named = {e["reason"].split("'")[1] for e in claims.json()["errors"]}
    assert {"最低价", "全网第一"} <= named
    fine = client.post("/v1/templates", json=bare | {"parts": {"body": "最近上新：最新到货，回复TD退订"}},
                       headers=marketer)
    assert fine.status_code == 201, fine.text  # phrases, not every word with 最
    email = {"name": "mail", "channel": "email", "locale": "en-US", "parts": {
        "subject": "The best ever sale", "text": "Hi {{ unsubscribe_url }}", "html": "<p>{{ unsubscribe_url }}</p>"}}
    refused_email = client.post("/v1/templates", json=email, headers=marketer)
    assert refused_email.status_code == 422 and refused_email.json()["errors"][0]["field"] == "parts.subject"


def test_preview_checks_the_rules_in_force_now(client, session, ctx, auth_header, people):
    marketer, admin = auth_header(Role.marketer), auth_header(Role.admin)
    saved = client.post("/v1/templates", json={"name": "promo", "channel": "sms", "locale": "zh-CN",
                                            "parts": {"body": "【{{ shop.name }}】爆款返场，回复TD退订"}},
                        headers=marketer).json()
    assert client.post(f"/v1/templates/{saved['id']}/preview?customer=P1", headers=marketer).status_code == 200
    rails = client.get("/v1/guard-rails", headers=admin).json()["settings"]
    rails["forbidden_ad_phrases"].append("爆款")
    assert client.put("/v1/guard-rails", json=rails, headers=admin).status_code == 200
    preview = client.post(f"/v1/templates/{saved['id']}/preview?customer=P1", headers=marketer)
    assert preview.status_code == 422 and "'爆款'" in preview.json()["errors"][0]["reason"]


def test_every_shipped_marketing_template_passes_the_content_rules(session, ctx):
    from campaigns.authoring import rendering

    for source in rendering.file_templates().values():
        sample = templates.shop_sample_context(ctx, source.locale)
        rendered = rendering.render(source, sample)
        assert templates.content_problems(session, ctx, source, rendered) == [], source.name

