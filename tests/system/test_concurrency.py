"""Concurrency on PostgreSQL: eight workers plan and dispatch eight overlapping offer campaigns at once. Over the
whole ledger afterwards no frequency cap is exceeded and no customer holds more open offers than their discount
budget allows. (Both suites run it on a scratch PostgreSQL database: SQLite has one writer, nothing concurrent.)"""

from __future__ import annotations

import random
import threading
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text

from campaigns.delivery.channels import build_senders
from campaigns.delivery.dispatch import Dispatcher
from campaigns.planning.guardrails import guard_rails
from campaigns.service import create_campaign, plan_campaign, set_status
from kit.clock import FixedClock
from kit.context import Context
from kit.crypto import ContactCipher
from kit.db import make_engine, session_scope
from kit.migrations import upgrade_to_head
from kit.settings import Settings
from segmentation.models import CustomerSegment
from tests.conftest import TEST_SECRET
from tests.support.factories import CUSTOMER_HEADER, ORDER_HEADER, csv_text, run

DAY = date(2026, 11, 3)
SEND_AT = datetime(2026, 11, 3, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
WORKERS = 8
CUSTOMERS = 30


def _shop(url: str, tmp_path, *, offers: bool = True) -> Context:
    engine = make_engine(url)
    upgrade_to_head(engine)
    settings = Settings(secret_key=TEST_SECRET, data_dir=tmp_path, database_url=url, global_control_share=0.0)
    ctx = Context(settings=settings, engine=engine, cipher=ContactCipher(TEST_SECRET),
                  clock=FixedClock(SEND_AT - timedelta(hours=8)))
    with session_scope(engine) as session:
        people = [(f"C{i}", f"user{i}@example.com", f"+86138001{i:05d}", "Asia/Shanghai", "zh-CN", "",
                   "2024-01-01T00:00:00Z", "opted_out" if offers else "opted_in", "opted_in")
                  for i in range(1, CUSTOMERS + 1)]
        assert run(session, ctx, "customers", csv_text(CUSTOMER_HEADER, people)).rows_failed == 0
        orders = [(f"o{i}", f"C{i}", "2026-09-01T10:00:00Z", "100", "0", "", "") for i in range(1, CUSTOMERS + 1)]
        assert run(session, ctx, "orders", csv_text(ORDER_HEADER, orders)).rows_failed == 0
        ids = [row[0] for row in session.connection().execute(text("SELECT id FROM customer"))]
        now = ctx.clock.now()
        for customer_id in ids:
            session.add(CustomerSegment(customer_id=customer_id, tier="potential", tier_since=now, tier_matched=True,
                                        tier_version=1, layer="potential", layer_since=now, layer_matched=True,
                                        layer_version=1, r_score=3, f_score=3, m_score=3, rfm="333",
                                        first_seen_at=now))
        for index in range(WORKERS if offers else 0):
            campaign = create_campaign(session, ctx, {
                "name": f"Offer {index}", "audience": {"tiers": ["potential"]},
                "channels": [{"channel": "email", "template": "at_risk_care"}],
                "offer": {"percent_off": 10, "valid_days": 14, "coupon_prefix": f"C{index}"},
                "schedule": {"kind": "one_off", "date": DAY.isoformat(), "local_hour": 10},
                "holdout_share": 0.0, "priority": 10 + index}, "test")
            set_status(session, ctx, campaign.id, "active", "test")
    return ctx


def test_eight_workers_planning_and_dispatching_at_once_break_no_cap_and_no_budget(postgres_url, tmp_path):
    url, _, _ = postgres_url
    ctx = _shop(url, tmp_path)
    with session_scope(ctx.engine) as session:
        campaign_ids = [row[0] for row in session.connection().execute(text("SELECT id FROM campaign ORDER BY id"))]
    start, errors = threading.Barrier(WORKERS), []

    def worker(index: int) -> None:
        try:
            start.wait()
            with session_scope(ctx.engine) as session:
                plan_campaign(session, ctx, campaign_ids[index], DAY)
            sending = Context(settings=ctx.settings, engine=ctx.engine, cipher=ctx.cipher, clock=FixedClock(SEND_AT))
            dispatcher = Dispatcher(sending, build_senders(ctx.settings, console_show=0), rng=random.Random(index))
            try:
                dispatcher.run_until_idle()
            finally:
                dispatcher.close()
        except Exception as failure:  # noqa: BLE001 - reported below with the worker's number
            errors.append((index, repr(failure)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    with session_scope(ctx.engine) as session:
        rails = guard_rails(session, ctx)
    with ctx.engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT customer_id, channel, status, discount_value, sent_at FROM message")).all()
    assert {r.status for r in rows} <= {"sent", "skipped", "planned"} and any(r.status == "sent" for r in rows)
    sent = Counter((r.customer_id, r.channel) for r in rows if r.status == "sent")
    email_cap = next(c for c in rails.caps if c.channel == "email")
    assert max(sent.values()) <= email_cap.limit and len(sent) == CUSTOMERS  # everyone reached, nobody over the cap
    offers: dict[int, float] = defaultdict(float)
    for r in rows:
        if r.status in ("planned", "sent"):
            offers[r.customer_id] += r.discount_value
    # Each spent 100 in the last year, granted nothing; the order an offer is redeemed on (a usual basket, 100)
    # counts as spend too: every grant kept open + value <= share × (spend + basket − value), so the whole
    # ledger must hold open <= share × 200 = 30. Sequential planning grants 10 + 10 + 8, the fourth is withheld.
    ceiling = rails.discounts.budget_share * (100.0 + 100.0)
    assert max(offers.values()) <= ceiling + 1e-6, sorted(offers.values())[-5:]
    assert min(offers.values()) >= 20  # the budget was used, not just left alone
    assert set(sent.values()) == {3}  # 10 + 10 + 8: the budget, not the cap (4), ended each customer's offers


def test_higher_priorities_preempting_while_dispatchers_send_keep_the_cap_and_send_each_message_once(
        postgres_url, tmp_path):
    """Two priority-10 SMS are planned for everyone; then four planners of higher priorities and four dispatchers
    run at once. A preempted message is never sent, every customer gets exactly the cap's two SMS, and the outbox
    key keeps each (campaign, customer) once — whichever of planner and dispatcher reaches a message first."""
    url, _, _ = postgres_url
    ctx = _shop(url, tmp_path, offers=False)
    sms = [{"channel": "sms", "template": "birthday_greeting"}]
    with session_scope(ctx.engine) as session:
        ids = []
        for name, priority in (("Low A", 10), ("Low B", 10), ("High 50", 50), ("High 60", 60), ("High 70", 70),
                               ("High 80", 80)):
            campaign = create_campaign(session, ctx, {
                "name": name, "audience": {"tiers": ["potential"]}, "channels": sms,
                "schedule": {"kind": "one_off", "date": DAY.isoformat(), "local_hour": 10},
                "holdout_share": 0.0, "priority": priority}, "test")
            set_status(session, ctx, campaign.id, "active", "test")
            ids.append((campaign.id, priority))
    with session_scope(ctx.engine) as session:
        for campaign_id, _ in ids[:2]:
            plan_campaign(session, ctx, campaign_id, DAY)
    start, errors = threading.Barrier(8), []
    # The dispatchers start once one planner is done: that one surely preempts; the others race the claims.
    first_planned = threading.Event()

    def planner(campaign_id: int) -> None:
        try:
            start.wait()
            with session_scope(ctx.engine) as session:
                plan_campaign(session, ctx, campaign_id, DAY)
        except Exception as failure:  # noqa: BLE001 - reported below
            errors.append(("planner", campaign_id, repr(failure)))
        finally:
            first_planned.set()

    def dispatcher(index: int) -> None:
        try:
            start.wait()
            first_planned.wait(timeout=60)
            sending = Context(settings=ctx.settings, engine=ctx.engine, cipher=ctx.cipher, clock=FixedClock(SEND_AT))
            worker = Dispatcher(sending, build_senders(ctx.settings, console_show=0), rng=random.Random(index))
            try:
                for _ in range(3):  # the planners add work while this runs
                    worker.run_until_idle()
            finally:
                worker.close()
        except Exception as failure:  # noqa: BLE001 - reported below
            errors.append(("dispatcher", index, repr(failure)))

    threads = [threading.Thread(target=planner, args=(campaign_id,)) for campaign_id, _ in ids[2:]]
    threads += [threading.Thread(target=dispatcher, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    sending = Context(settings=ctx.settings, engine=ctx.engine, cipher=ctx.cipher, clock=FixedClock(SEND_AT))
    last = Dispatcher(sending, build_senders(ctx.settings, console_show=0), rng=random.Random(9))
    try:
        last.run_until_idle()  # whatever a planner added after the dispatchers finished
    finally:
        last.close()
    priority_of = dict(ids)
    with ctx.engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT campaign_id, customer_id, status, reason, attempts, sent_at FROM message")).all()
    assert {r.status for r in rows} <= {"sent", "skipped", "preempted"}, {r.status for r in rows}
    assert len({(r.campaign_id, r.customer_id) for r in rows}) == len(rows)
    sent = Counter(r.customer_id for r in rows if r.status == "sent")
    assert len(sent) == CUSTOMERS and set(sent.values()) == {2}
    assert sum(r.status == "preempted" for r in rows) >= CUSTOMERS  # the first planner took a slot each
    for row in rows:
        if row.status == "preempted":
            assert row.attempts == 0 and row.sent_at is None
            preemptor = int(row.reason.rsplit("_", 1)[1])
            assert priority_of[preemptor] > priority_of[row.campaign_id]
