"""Journeys under any history (hypothesis): carts, orders and time in any order, two journeys competing for the
same caps. Whatever happens: no step is taken twice or skipped, no message breaks a rail (caps across journeys,
quiet hours, consent), and every enrollment ends or waits for a wake-up."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from campaigns.journeys import definitions, runtime
from campaigns.journeys.defaults import DEFAULT_JOURNEYS
from crm import writes
from kit.clock import FixedClock
from tests.conftest import TEST_NOW

CUSTOMERS = ["P1", "P2", "P3", "L1", "N1"]
RICH = {"name": "Rich", "holdout_share": 0.2, "priority": 55,
        "entry": {"trigger": {"kind": "event", "event": "cart_add", "unless": {"kind": "order", "within_minutes": 60}},
                  "reentry": {"rule": "unlimited"}},
        "steps": [
            {"id": "sms", "type": "send", "channels": [{"channel": "sms", "template": "cart_reminder"}],
             "when_blocked": "wait", "max_wait_days": 2, "next": "pause"},
            {"id": "pause", "type": "wait", "duration": {"hours": 6}, "next": "ordered"},
            {"id": "ordered", "type": "branch", "condition": "ordered_since_entry", "then": "bye", "else": "arm"},
            {"id": "arm", "type": "split", "arms": [{"name": "a", "next": "push"}, {"name": "b", "next": "email"}]},
            {"id": "push", "type": "send", "channels": [{"channel": "push", "template": "cart_reminder"}],
             "next": "morning"},
            {"id": "email", "type": "send", "channels": [{"channel": "email", "template": "first_order_incentive"}],
             "offer": {"amount_off": 20, "min_spend": 200, "valid_days": 3, "send_without_offer": True},
             "next": "morning"},
            {"id": "morning", "type": "wait", "until_local_time": "10:00", "next": "last"},
            {"id": "last", "type": "send", "channels": [{"channel": "sms", "template": "cart_reminder"},
                                                        {"channel": "push", "template": "cart_reminder"}]},
            {"id": "bye", "type": "exit"}]}

CART = st.tuples(st.just("cart"), st.integers(0, 4), st.integers(0, 600))
operations = st.lists(st.one_of(
    CART, CART,  # carts twice as likely: enough enrollments to compete for the caps
    st.tuples(st.just("order"), st.integers(0, 4), st.integers(0, 600)),
    st.tuples(st.just("work"), st.just(0), st.integers(0, 3000)),
), min_size=4, max_size=20)


def _utc(value) -> datetime:
    """A timestamp as read raw (SQLite gives text)."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _apply(session, ctx, operation, counter):
    kind, who, minutes = operation
    ctx.clock.advance(timedelta(minutes=minutes))
    counter[0] += 1
    now = ctx.clock.now().isoformat()
    if kind == "cart":
        writes.write_items(session, ctx, "events", [{"customer_id": CUSTOMERS[who], "type": "cart_add",
                                                     "unique_id": f"e{counter[0]}", "occurred_at": now}],
                           cause="api", first_wins=True)
    elif kind == "order":
        writes.write_items(session, ctx, "orders", [{"external_id": f"o{counter[0]}", "customer_id": CUSTOMERS[who],
                                                     "ordered_at": now, "amount_paid": "250"}], cause="api")
    else:
        runtime.run_once(session, ctx, dates=True)


def _run_out(session, ctx):
    """Work until every enrollment has ended or waits beyond 40 days from the start."""
    end = TEST_NOW + timedelta(days=40)
    for _ in range(300):
        runtime.run_once(session, ctx)
        due = session.connection().execute(text(
            "SELECT MIN(wake_at) FROM journey_enrollment WHERE status IN ('pending', 'active')")).scalar()
        if due is None:
            return
        step = max(timedelta(0), _utc(due) - ctx.clock.now())
        if ctx.clock.now() + step > end:
            return
        ctx.clock.advance(step + timedelta(seconds=1))


def _check(session):
    rows = lambda sql: session.connection().execute(text(sql)).all()  # noqa: E731
    steps = defaultdict(list)
    for enrollment_id, seq in rows("SELECT enrollment_id, seq FROM journey_step ORDER BY enrollment_id, seq"):
        steps[enrollment_id].append(seq)
    waits = {"pause", "morning"} | {s["id"] for j in DEFAULT_JOURNEYS for s in j["steps"] if s["type"] == "wait"}
    for enrollment_id, status, step_id, seq, wake_at in rows(
            "SELECT id, status, step_id, seq, wake_at FROM journey_enrollment"):
        assert steps.get(enrollment_id, []) == list(range(1, seq + 1)), (enrollment_id, steps.get(enrollment_id))
        if status == "active":
            assert step_id in waits and wake_at is not None, (enrollment_id, step_id)
        elif status == "pending":
            assert wake_at is not None
        else:
            assert status in runtime.ENDED and step_id is None
    consent = {(c, ch): s for c, ch, s in rows("SELECT customer_id, channel, status FROM consent")}
    zones = dict(rows("SELECT id, time_zone FROM customer"))
    planned = rows("SELECT customer_id, channel, send_at, transactional FROM message "
                   "WHERE status IN ('planned', 'sending', 'sent')")
    sms_times = defaultdict(list)
    for customer_id, channel, send_at, transactional in planned:
        assert not transactional
        send_at = _utc(send_at)
        assert consent.get((customer_id, channel)) == "opted_in", (customer_id, channel)
        local = send_at.astimezone(ZoneInfo(zones[customer_id]))
        if channel in ("sms", "push"):
            assert 9 <= local.hour < 21, (customer_id, channel, local)
        if channel == "sms":
            sms_times[customer_id].append(send_at)
    for times in sms_times.values():  # at most 2 SMS in any 30 days, across both journeys
        times.sort()
        for index, start in enumerate(times):
            assert len([t for t in times[index:] if t < start + timedelta(days=30)]) <= 2, times


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=operations)
def test_journeys_under_any_history_keep_every_rail_and_take_each_step_once(session, ctx, people, history):
    example = replace(ctx, clock=FixedClock(TEST_NOW))
    savepoint = session.begin_nested()
    try:
        for body in (RICH, DEFAULT_JOURNEYS[0]):
            journey = definitions.create_journey(session, example, body, "test")
            definitions.set_status(session, example, journey.id, "active", "test")
        counter = [0]
        for operation in history:
            _apply(session, example, operation, counter)
        _run_out(session, example)
        _check(session)
    finally:
        savepoint.rollback()
