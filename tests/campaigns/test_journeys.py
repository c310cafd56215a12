"""Journeys on a real database: definitions, entry from activity, steps under the guard rails, into the outbox."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import select

from campaigns.journeys import definitions, reports, runtime
from campaigns.journeys.engine import draw
from campaigns.models import JourneyEnrollment, JourneyStep, Message, journey_sender
from campaigns.planning.planner import GuardRails
from crm import writes
from kit.errors import InvalidInput


def cart_journey(**overrides):
    body = {"name": "Cart", "holdout_share": 0.0,
            "entry": {"trigger": {"kind": "event", "event": "cart_add",
                                  "unless": {"kind": "order", "within_minutes": 60}}},
            "steps": [
                {"id": "push_now", "type": "send", "channels": [{"channel": "push", "template": "cart_reminder"}],
                 "next": "wait_day"},
                {"id": "wait_day", "type": "wait", "duration": {"hours": 23}, "next": "sms_coupon"},
                {"id": "sms_coupon", "type": "send", "channels": [{"channel": "sms", "template": "cart_reminder"}],
                 "offer": {"amount_off": 20, "min_spend": 200, "valid_days": 1, "send_without_offer": True}}]}
    return body | overrides


def activate(session, ctx, body):
    journey = definitions.create_journey(session, ctx, body, "test")
    return definitions.set_status(session, ctx, journey.id, "active", "test")


def cart_add(session, ctx, customer: str, event_id: str, **properties):
    result = writes.write_items(session, ctx, "events", [{"customer_id": customer, "type": "cart_add",
                                                          "occurred_at": ctx.clock.now().isoformat(),
                                                          "unique_id": event_id, "properties": properties}],
                                cause="api", first_wins=True)
    assert result.rejected == 0, result.items


def enrollments(session, journey_id):
    return session.exec(select(JourneyEnrollment).where(JourneyEnrollment.journey_id == journey_id)
                        .order_by(JourneyEnrollment.id)).all()


def test_cart_abandoned_is_answered_after_the_hour_then_with_a_coupon(session, ctx, people, clock):
    journey = activate(session, ctx, cart_journey())
    cart_add(session, ctx, "P1", "ev-1")
    assert runtime.run_once(session, ctx)["entry"]["enrolled"] == 1
    (enrollment,) = enrollments(session, journey.id)
    assert enrollment.status == "pending"
    assert runtime.run_once(session, ctx)["advance"]["advanced"] == 0  # the hour has not passed
    clock.advance(timedelta(minutes=61))
    runtime.run_once(session, ctx)
    session.refresh(enrollment)
    assert enrollment.status == "active" and enrollment.step_id == "wait_day"
    sent = session.exec(select(Message).where(Message.campaign_id == journey_sender(journey.id))).all()
    assert [(m.channel, m.status) for m in sent] == [("push", "planned")]
    clock.advance(timedelta(hours=23))
    runtime.run_once(session, ctx)
    session.refresh(enrollment)
    assert enrollment.status == "completed"
    sent = session.exec(select(Message).where(Message.campaign_id == journey_sender(journey.id))
                        .order_by(Message.id)).all()
    assert [m.channel for m in sent] == ["push", "sms"] and sent[1].coupon_code
    steps = session.exec(select(JourneyStep).where(JourneyStep.enrollment_id == enrollment.id)
                         .order_by(JourneyStep.seq)).all()
    assert [(s.seq, s.step_id, s.outcome) for s in steps] == [
        (1, "push_now", "sent"), (2, "wait_day", "waited"), (3, "sms_coupon", "sent")]


def test_an_order_within_the_hour_cancels_the_entry(session, ctx, people, clock):
    journey = activate(session, ctx, cart_journey())
    cart_add(session, ctx, "P1", "ev-2")
    runtime.run_once(session, ctx)
    clock.advance(timedelta(minutes=20))
    ordered = writes.write_items(session, ctx, "orders", [{"external_id": "o-cart", "customer_id": "P1",
                                                 "ordered_at": clock.now().isoformat(), "amount_paid": "300"}],
                       cause="api")
    assert ordered.rejected == 0, ordered.items
    clock.advance(timedelta(minutes=45))
    runtime.run_once(session, ctx)
    (enrollment,) = enrollments(session, journey.id)
    assert enrollment.status == "cancelled" and enrollment.end_reason == "unless_order"


def test_a_graph_with_an_unreachable_step_or_a_loop_without_a_wait_is_refused(session, ctx, people):
    body = cart_journey(steps=[
        {"id": "a", "type": "branch", "condition": "at_risk", "then": "b", "else": "a"},
        {"id": "b", "type": "exit"}, {"id": "c", "type": "exit"}])
    with pytest.raises(InvalidInput) as refused:
        definitions.create_journey(session, ctx, body, "test")
    reasons = {e["field"]: e["reason"] for e in refused.value.errors}
    assert "cannot be reached" in reasons["steps.2"] and "loop without a wait" in reasons["steps.0"]


def test_the_default_journeys_install_validated_and_active_once(session, ctx, people):
    first = definitions.install_defaults(session, ctx, "test")
    assert [r["status"] for r in first] == ["active"] * 5 and all(r["created"] for r in first)
    again = definitions.install_defaults(session, ctx, "test")
    assert not any(r["created"] for r in again)


def send_steps(*steps):
    """A journey entered on cart_add (no wait to confirm), no holdout, with these steps."""
    return cart_journey(entry={"trigger": {"kind": "event", "event": "cart_add"}}, steps=list(steps))


def journey_messages(session, journey_id):
    return session.exec(select(Message).where(Message.campaign_id == journey_sender(journey_id))
                        .order_by(Message.id)).all()


def only_enrollment(session, journey_id):
    (enrollment,) = enrollments(session, journey_id)
    session.refresh(enrollment)
    return enrollment


def test_a_capped_channel_takes_the_not_sent_branch_with_the_reason(session, ctx, people, clock):
    now = clock.now()
    for days in (3, 10):  # P1 had two marketing SMS in the last 30 days: the SMS cap (2/30d) is full
        session.add(Message(campaign_id=999, occurrence=f"old-{days}", customer_id=people["P1"], channel="sms",
                            status="sent", priority=50, transactional=False, send_at=now - timedelta(days=days),
                            template="x", locale="zh-CN", created_at=now, updated_at=now))
    session.flush()
    journey = activate(session, ctx, send_steps(
        {"id": "sms", "type": "send", "channels": [{"channel": "sms", "template": "cart_reminder"}],
         "next": "done", "not_sent": "push"},
        {"id": "push", "type": "send", "channels": [{"channel": "push", "template": "cart_reminder"}], "next": "done"},
        {"id": "done", "type": "exit"}))
    cart_add(session, ctx, "P1", "ev-cap")
    runtime.run_once(session, ctx)
    steps = session.exec(select(JourneyStep).where(JourneyStep.journey_id == journey.id)
                         .order_by(JourneyStep.seq)).all()
    assert [(s.step_id, s.outcome, s.reason) for s in steps] == [
        ("sms", "not_sent", "capped"), ("push", "sent", None), ("done", "exited", None)]
    assert [(m.channel, m.status, m.reason) for m in journey_messages(session, journey.id)] == [
        ("sms", "skipped", "capped"), ("push", "planned", None)]
    assert only_enrollment(session, journey.id).status == "exited"


def test_quiet_hours_defer_the_message_and_the_wait_after_it_counts_from_its_send(session, ctx, people, clock):
    # 08:00 UTC is 03:00 in New York, inside quiet hours (21:00-09:00) for SMS: deferred to 09:00 local.
    journey = activate(session, ctx, send_steps(
        {"id": "sms", "type": "send", "channels": [{"channel": "sms", "template": "cart_reminder"}], "next": "wait"},
        {"id": "wait", "type": "wait", "duration": {"hours": 2}, "next": "done"},
        {"id": "done", "type": "exit"}))
    cart_add(session, ctx, "P2", "ev-night")
    runtime.run_once(session, ctx)
    (message,) = journey_messages(session, journey.id)
    assert message.reason == "deferred_quiet_hours" and message.send_at.isoformat() == "2026-11-01T14:00:00+00:00"
    enrollment = only_enrollment(session, journey.id)
    assert enrollment.step_id == "wait" and enrollment.wake_at.isoformat() == "2026-11-01T16:00:00+00:00"


def test_a_wait_until_a_local_time_follows_the_customers_zone_across_the_dst_change(session, ctx, people, clock):
    # New York left DST at 06:00 UTC on 1 November 2026: 10:00 local is 15:00 UTC that day (14:00 the day before).
    journey = activate(session, ctx, send_steps(
        {"id": "morning", "type": "wait", "until_local_time": "10:00", "next": "push"},
        {"id": "push", "type": "send", "channels": [{"channel": "sms", "template": "cart_reminder"}]}))
    clock.advance(timedelta(hours=-7))  # 01:00 UTC: 21:00 EDT on 31 October
    cart_add(session, ctx, "P2", "ev-dst")
    runtime.run_once(session, ctx)
    assert only_enrollment(session, journey.id).wake_at.isoformat() == "2026-11-01T15:00:00+00:00"
    clock.advance(timedelta(hours=13, minutes=59))
    runtime.run_once(session, ctx)
    assert journey_messages(session, journey.id) == []
    clock.advance(timedelta(minutes=1))
    runtime.run_once(session, ctx)
    assert [m.send_at.isoformat() for m in journey_messages(session, journey.id)] == ["2026-11-01T15:00:00+00:00"]


def test_an_order_ends_the_enrollment_as_converted_wherever_it_is(session, ctx, people, clock):
    journey = activate(session, ctx, cart_journey(entry={"trigger": {"kind": "event", "event": "cart_add"}}))
    cart_add(session, ctx, "P1", "ev-goal")
    runtime.run_once(session, ctx)
    assert only_enrollment(session, journey.id).step_id == "wait_day"
    clock.advance(timedelta(hours=2))
    writes.write_items(session, ctx, "orders", [{"external_id": "o-goal", "customer_id": "P1",
                                                 "ordered_at": clock.now().isoformat(), "amount_paid": "300"}],
                       cause="api")
    assert runtime.run_once(session, ctx)["entry"]["converted"] == 1
    clock.advance(timedelta(days=2))
    runtime.run_once(session, ctx)
    enrollment = only_enrollment(session, journey.id)
    assert (enrollment.status, enrollment.end_reason) == ("converted", "goal")
    assert [m.channel for m in journey_messages(session, journey.id)] == ["push"]  # never the 24 h SMS


@pytest.mark.parametrize(("rule", "expected"), [({"rule": "once"}, 1), ({"rule": "every", "days": 2}, 2),
                                                ({"rule": "unlimited"}, 3)])
def test_reentry_rules(session, ctx, people, clock, rule, expected):
    body = send_steps({"id": "push", "type": "send", "channels": [{"channel": "push", "template": "cart_reminder"}]})
    journey = activate(session, ctx, body | {"entry": body["entry"] | {"reentry": rule}})
    for day in range(3):
        cart_add(session, ctx, "P1", f"ev-re-{day}")
        cart_add(session, ctx, "P1", f"ev-re-{day}-again")  # in flight or the same pass: never twice at once
        runtime.run_once(session, ctx)
        clock.advance(timedelta(days=1, hours=1))
    assert len(enrollments(session, journey.id)) == expected


def test_the_holdout_and_the_global_control_enter_but_get_nothing(session, ctx, people):
    journey = activate(session, ctx, cart_journey(holdout_share=0.5,
                                                  entry={"trigger": {"kind": "event", "event": "cart_add"}}))
    customers = ["P1", "P2", "P3", "L1", "N1"]
    for name in customers:
        cart_add(session, ctx, name, f"ev-h-{name}")
    runtime.run_once(session, ctx)
    rows = enrollments(session, journey.id)
    held = {r.customer_id for r in rows if r.status == "holdout"}
    assert held == {people[c] for c in customers if draw(journey.id, people[c], "holdout") < 0.5}
    assert all(r.end_reason == "holdout" for r in rows if r.status == "holdout")
    assert {m.customer_id for m in journey_messages(session, journey.id)} == {people["P1"], people["P3"]} - held
    everyone = activate(session, ctx, cart_journey(name="No holdout", holdout_share=0.0,
                                                   entry={"trigger": {"kind": "event", "event": "cart_add"}}))
    cart_add(session, ctx, "P1", "ev-control")
    runtime.enter_from_activity(session, ctx)
    runtime.advance_due(session, ctx, rails=GuardRails(global_control_share=1.0))
    (controlled,) = enrollments(session, everyone.id)
    assert (controlled.status, controlled.end_reason) == ("holdout", "global_control")
    assert journey_messages(session, everyone.id) == []


def test_pausing_stops_entries_and_sends_and_resuming_goes_on(session, ctx, people, clock):
    journey = activate(session, ctx, cart_journey(entry={"trigger": {"kind": "event", "event": "cart_add"}}))
    cart_add(session, ctx, "P1", "ev-pause")
    runtime.run_once(session, ctx)
    definitions.set_status(session, ctx, journey.id, "paused", "test")
    cart_add(session, ctx, "P3", "ev-paused")  # nobody listens while paused: no entry
    clock.advance(timedelta(days=1))
    result = runtime.run_once(session, ctx)
    assert result["advance"]["advanced"] == 0 and len(enrollments(session, journey.id)) == 1
    definitions.set_status(session, ctx, journey.id, "active", "test")
    runtime.run_once(session, ctx)
    assert [m.channel for m in journey_messages(session, journey.id)] == ["push", "sms"]
    cart_add(session, ctx, "P1", "ev-archive")
    runtime.run_once(session, ctx)
    definitions.set_status(session, ctx, journey.id, "archived", "test")  # nobody stays in it
    assert {(e.status, e.end_reason) for e in enrollments(session, journey.id)} == {
        ("completed", "journey_end"), ("exited", "journey_archived")}


def test_editing_makes_a_version_in_flight_customers_finish_on_theirs_unless_moved(session, ctx, people, clock):
    journey = activate(session, ctx, cart_journey(entry={"trigger": {"kind": "event", "event": "cart_add"}}))
    cart_add(session, ctx, "P1", "ev-v1")
    runtime.run_once(session, ctx)
    edited = cart_journey(entry={"trigger": {"kind": "event", "event": "cart_add"}}, steps=[
        {"id": "push_now", "type": "send", "channels": [{"channel": "push", "template": "cart_reminder"}],
         "next": "wait_short"},
        {"id": "wait_short", "type": "wait", "duration": {"hours": 1}, "next": "email"},
        {"id": "email", "type": "send", "channels": [{"channel": "email", "template": "cross_sell"}]}])
    journey = definitions.update_journey(session, ctx, journey.id, edited, "test")
    assert journey.version == 3 and only_enrollment(session, journey.id).version == 2
    moved = definitions.move_enrollments(session, ctx, journey.id, 2, {"wait_day": "wait_short"}, "test")
    assert moved["moved"] == 1 and only_enrollment(session, journey.id).version == 3
    clock.advance(timedelta(hours=1))
    runtime.run_once(session, ctx)
    assert [m.channel for m in journey_messages(session, journey.id)] == ["push", "email"]


def test_split_update_branch_and_a_wait_for_an_event(session, ctx, people, clock):
    journey = activate(session, ctx, send_steps(
        {"id": "arm", "type": "split", "arms": [{"name": "a", "next": "tag"}, {"name": "b", "next": "tag"}]},
        {"id": "tag", "type": "update", "add_tags": ["cart_journey"], "set_attributes": {"nudged": True},
         "next": "tagged"},
        {"id": "tagged", "type": "branch", "condition": "has_tag", "value": "cart_journey", "then": "login",
         "else": "done"},
        {"id": "login", "type": "wait", "until_event": "login", "timeout": {"days": 2}, "on_event": "push",
         "next": "done"},
        {"id": "push", "type": "send", "channels": [{"channel": "push", "template": "cart_reminder"}], "next": "done"},
        {"id": "done", "type": "exit"}))
    cart_add(session, ctx, "P1", "ev-split")
    runtime.run_once(session, ctx)
    enrollment = only_enrollment(session, journey.id)
    assert enrollment.step_id == "login" and enrollment.context["arms"]["arm"] in ("a", "b")
    from crm.models import Customer
    from segmentation.models import CustomerTag

    assert session.get(CustomerTag, (people["P1"], "cart_journey")) is not None
    assert session.get(Customer, people["P1"]).attributes["nudged"] is True
    clock.advance(timedelta(hours=3))
    writes.write_items(session, ctx, "events", [{"customer_id": "P1", "type": "login", "unique_id": "login-1",
                                                 "occurred_at": clock.now().isoformat()}], cause="api",
                       first_wins=True)
    assert runtime.run_once(session, ctx)["entry"]["woken"] == 1
    steps = session.exec(select(JourneyStep).where(JourneyStep.enrollment_id == enrollment.id)
                         .order_by(JourneyStep.seq)).all()
    assert [(s.step_id, s.outcome) for s in steps][2:] == [("tagged", "then"), ("login", "event"), ("push", "sent"),
                                                           ("done", "exited")]


def test_birthdays_enter_once_a_year_and_event_filters_pick_their_events(session, ctx, people, clock):
    birthday = activate(session, ctx, cart_journey(name="Birthday", entry={"trigger": {"kind": "birthday"}}))
    clock.advance(timedelta(days=2))  # 3 November: P1's birthday (1990-11-03)
    assert runtime.enter_on_dates(session, ctx) == 1 and runtime.enter_on_dates(session, ctx) == 0
    assert [e.customer_id for e in enrollments(session, birthday.id)] == [people["P1"]]
    big = activate(session, ctx, cart_journey(name="Big carts", entry={"trigger": {
        "kind": "event", "event": "cart_add", "where": [{"property": "value", "op": "gte", "value": 500}]}}))
    cart_add(session, ctx, "P1", "ev-small", value=120)
    cart_add(session, ctx, "P3", "ev-big", value=900)
    runtime.run_once(session, ctx)
    assert [e.customer_id for e in enrollments(session, big.id)] == [people["P3"]]


# ---------------------------------------------------------------- the API


def test_journey_api_validates_names_the_step_and_simulates_without_writing(client, auth_header, people, session):
    from crm.models import Role

    marketer, support = auth_header(Role.marketer), auth_header(Role.support)
    bad = cart_journey(steps=[{"id": "push_now", "type": "send",
                               "channels": [{"channel": "push", "template": "no_such_template"}]}])
    refused = client.post("/v1/journeys", json=bad, headers=marketer)
    assert refused.status_code == 422 and refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["errors"][0]["field"] == "steps.0.channels.0.template"
    shape = client.post("/v1/journeys", json=cart_journey(steps=[{"id": "w", "type": "wait"}]), headers=marketer)
    assert shape.status_code == 422 and shape.json()["errors"][0]["field"].startswith("steps.0")
    created = client.post("/v1/journeys", json=cart_journey(), headers=marketer)
    assert created.status_code == 201 and created.headers["location"] == f"/v1/journeys/{created.json()['id']}"
    journey_id = created.json()["id"]
    assert client.post("/v1/journeys", json=cart_journey(), headers=marketer).status_code == 409
    assert client.post("/v1/journeys", json=cart_journey(), headers=support).status_code == 403
    simulated = client.post(f"/v1/journeys/{journey_id}/simulate", json={"customer": "P1"}, headers=marketer)
    assert simulated.status_code == 200, simulated.text
    timeline = simulated.json()["timeline"]
    assert [(s["step"], s["outcome"]) for s in timeline] == [("push_now", "sent"), ("wait_day", "waited"),
                                                             ("sms_coupon", "sent")]
    assert timeline[2]["at"] > timeline[0]["at"]  # the simulated clock moved through the wait
    assert [m["channel"] for m in simulated.json()["messages"]] == ["push", "sms"]
    assert session.exec(select(JourneyEnrollment)).all() == [] and session.exec(select(Message)).all() == []
    active = client.post(f"/v1/journeys/{journey_id}/status", json={"status": "active"}, headers=marketer)
    assert active.status_code == 200 and active.json()["status"] == "active"
    changed = client.put(f"/v1/journeys/{journey_id}", json=cart_journey(priority=80), headers=marketer)
    assert changed.status_code == 200 and changed.json()["version"] == 3
    versions = client.get(f"/v1/journeys/{journey_id}/versions", headers=marketer).json()["items"]
    assert [(v["version"], v["status"]) for v in versions] == [(1, "draft"), (2, "active"), (3, "active")]
    funnel = client.get(f"/v1/journeys/{journey_id}/funnel", headers=marketer).json()
    assert [s["id"] for s in funnel["steps"]] == ["push_now", "wait_day", "sms_coupon"]
    assert client.get("/v1/journeys/999999", headers=marketer).status_code == 404
    assert client.get("/v1/customers/P1/journeys", headers=support).json()["items"] == []


def test_the_funnel_counts_steps_reasons_and_uplift_against_the_holdout(session, ctx, people, clock):
    journey = activate(session, ctx, cart_journey(holdout_share=0.5, conversion_days=7,
                                                  entry={"trigger": {"kind": "event", "event": "cart_add"}}))
    for name in ("P1", "P2", "P3", "L1", "N1"):
        cart_add(session, ctx, name, f"ev-f-{name}")
    runtime.run_once(session, ctx)
    funnel = reports.funnel(session, ctx, journey.id)
    treated = [e for e in enrollments(session, journey.id) if e.status != "holdout"]
    push = funnel["steps"][0]
    assert push["taken"] == len(treated) and push["sent"] + sum(push["not_sent"].values()) == len(treated)
    assert funnel["steps"][1]["waiting_now"] == len([e for e in treated if e.step_id == "wait_day"])
    assert funnel["uplift"]["treated_n"] == 0  # no entrant's window has closed yet
    clock.advance(timedelta(days=8))
    funnel = reports.funnel(session, ctx, journey.id)
    assert funnel["uplift"]["treated_n"] + funnel["uplift"]["control_n"] == 5


def test_a_signup_starts_onboarding_and_an_order_starts_post_purchase_without_ending_it(session, ctx, people, clock):
    installed = {r["name"]: r["id"] for r in definitions.install_defaults(session, ctx, "test")}
    writes.write_items(session, ctx, "customers", [{"external_id": "NEW1", "email": "new1@example.com",
                                                    "consent": {"email": "opted_in"}}], cause="api")
    writes.write_items(session, ctx, "orders", [{"external_id": "o-pp", "customer_id": "P1",
                                                 "ordered_at": clock.now().isoformat(), "amount_paid": "300"}],
                       cause="api")
    runtime.run_once(session, ctx)
    (welcome,) = enrollments(session, installed["7-day onboarding"])
    assert (welcome.status, welcome.step_id) == ("active", "wait_3d")
    assert [m.channel for m in journey_messages(session, installed["7-day onboarding"])] == ["email"]
    (repeat,) = enrollments(session, installed["Post-purchase repeat"])
    assert (repeat.status, repeat.step_id) == ("active", "wait_delivery")  # its own order is not its goal
    clock.advance(timedelta(days=1))
    writes.write_items(session, ctx, "orders", [{"external_id": "o-pp2", "customer_id": "P1",
                                                 "ordered_at": clock.now().isoformat(), "amount_paid": "300"}],
                       cause="api")
    runtime.run_once(session, ctx)
    first, second = enrollments(session, installed["Post-purchase repeat"])
    session.refresh(first)
    assert (first.status, second.status) == ("converted", "active")  # the next order: converted, and in again


def test_a_wait_for_the_customers_own_purchase_gap(session, ctx, people, clock):
    journey = activate(session, ctx, cart_journey(entry={"trigger": {"kind": "order"}}, goal={"kind": "none"}, steps=[
        {"id": "gap", "type": "wait", "purchase_gap": {"fallback_days": 30, "min_days": 7, "max_days": 90},
         "next": "push"},
        {"id": "push", "type": "send", "channels": [{"channel": "push", "template": "cart_reminder"}]}]))
    # P1 bought on 1 October at 10:00; an order now makes one gap of 30 days 22 hours. P3 has no earlier order.
    for order, who in (("o-gap-1", "P1"), ("o-gap-3", "P3")):
        writes.write_items(session, ctx, "orders", [{"external_id": order, "customer_id": who, "amount_paid": "90",
                                                     "ordered_at": clock.now().isoformat()}], cause="api")
    runtime.run_once(session, ctx)
    wakes = {e.customer_id: e.wake_at - e.entered_at for e in enrollments(session, journey.id)}
    assert wakes[people["P1"]] == timedelta(days=30, hours=22)
    assert wakes[people["P3"]] == timedelta(days=30)


def test_a_split_reports_its_arms_and_waits_for_its_sample_before_a_verdict(session, ctx, people, clock):
    journey = activate(session, ctx, send_steps(
        {"id": "ab", "type": "split", "arms": [{"name": "push", "next": "push"}, {"name": "none", "next": "done"}],
         "baseline_conversion": 0.5, "tolerated_error": 0.45},
        {"id": "push", "type": "send", "channels": [{"channel": "push", "template": "cart_reminder"}], "next": "done"},
        {"id": "done", "type": "exit"}) | {"conversion_days": 2})
    for name in ("P1", "P2", "P3", "L1", "N1"):
        cart_add(session, ctx, name, f"ev-ab-{name}")
    runtime.run_once(session, ctx)
    clock.advance(timedelta(days=1))
    writes.write_items(session, ctx, "orders", [{"external_id": "o-ab", "customer_id": "P1", "amount_paid": "90",
                                                 "ordered_at": clock.now().isoformat()}], cause="api")
    clock.advance(timedelta(days=2))
    (split,) = reports.funnel(session, ctx, journey.id)["splits"]
    arms = {e.customer_id: e.context["arms"]["ab"] for e in enrollments(session, journey.id)}
    assert split["needed_per_arm"] == 5  # 1.96² · 0.25 / 0.45² = 4.7, rounded up
    assert {k: v["members"] for k, v in split["arms"].items()} == {
        arm: sum(1 for a in arms.values() if a == arm) for arm in ("push", "none")}
    assert split["arms"][arms[people["P1"]]]["conversions"] == 1
    assert split["verdict"] == "collecting"  # neither arm has its 5 members


def test_refunds_tier_entries_and_new_risk_flags_enter_their_journeys(session, ctx, people, clock):
    import polars as pl

    from segmentation.service import record_entries

    def one_step(name, trigger):
        return activate(session, ctx, send_steps({"id": "push", "type": "send",
                                                  "channels": [{"channel": "push", "template": "cart_reminder"}]})
                        | {"name": name, "entry": {"trigger": trigger}})

    refunds = one_step("Refunds", {"kind": "refund"})
    lost = one_step("Lost", {"kind": "entered_tier", "value": "lost"})
    risky = one_step("Risky", {"kind": "at_risk"})
    writes.write_items(session, ctx, "orders", [{"external_id": "o-refund", "customer_id": "P1", "amount_paid": "90",
                                                 "ordered_at": clock.now().isoformat()}], cause="api")
    writes.refund_order(session, ctx, "o-refund", {"refund_id": "r-1", "amount": "30"}, actor="test")
    moves = pl.DataFrame({"customer_id": [people["L1"], people["P3"]], "dimension": ["tier", "tier"],
                          "to_value": ["lost", "potential"], "at": [clock.now(), clock.now()]},
                         schema_overrides={"at": pl.Datetime("us", "UTC")})
    assert record_entries(session, moves, clock.now()) == 1  # only the lost tier is listened to
    from crm import activity

    activity.record(session, pl.DataFrame({"customer_id": [people["P3"]], "kind": ["at_risk"], "name": ["at_risk"],
                                           "occurred_at": [clock.now()]}), clock.now())
    runtime.run_once(session, ctx)
    assert [e.customer_id for e in enrollments(session, refunds.id)] == [people["P1"]]
    assert [e.customer_id for e in enrollments(session, lost.id)] == [people["L1"]]
    assert [e.customer_id for e in enrollments(session, risky.id)] == [people["P3"]]
    stale = pl.DataFrame({"customer_id": [people["N1"]], "kind": ["at_risk"], "name": ["at_risk"],
                          "occurred_at": [clock.now() - timedelta(days=3)]})
    assert activity.record(session, stale, clock.now()) == 0  # history, not news: it triggers nothing


def test_a_journey_audience_keeps_only_customers_the_message_changes(session, ctx, people, clock):
    from campaigns.models import UpliftScore

    body = send_steps({"id": "push", "type": "send", "channels": [{"channel": "push", "template": "cart_reminder"}]})
    body["entry"]["audience"] = {"uplift_min": 0.02}
    changed = activate(session, ctx, body | {"name": "Changed only"})
    dogs = activate(session, ctx, body | {"name": "No sleeping dogs",
                                          "entry": body["entry"] | {"audience": {"exclude_sleeping_dogs": True}}})
    assert definitions.get_journey(session, changed.id).spec["entry"]["audience"]["uplift_min"] == 0.02
    # The journey's own segment (push, no offer) has scores for P1 and P2; P3 has none.
    for customer, uplift in (("P1", 0.05), ("P2", -0.03)):
        session.add(UpliftScore(customer_id=people[customer], segment="journey:push:none", uplift=uplift,
                                model_id=1, scored_at=clock.now()))
    session.flush()
    for n, customer in enumerate(("P1", "P2", "P3")):
        cart_add(session, ctx, customer, f"ev-u{n}")
    runtime.run_once(session, ctx)
    assert [e.customer_id for e in enrollments(session, changed.id)] == [people["P1"]]  # no prediction: not in
    assert sorted(e.customer_id for e in enrollments(session, dogs.id)) == sorted([people["P1"], people["P3"]])
