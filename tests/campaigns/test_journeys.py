"""Journeys on a real database: definitions, entry from activity, steps under the guard rails, into the outbox."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import select

from campaigns.journeys import definitions, runtime
from campaigns.models import JourneyEnrollment, JourneyStep, Message, journey_sender
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
