"""Journey workers on PostgreSQL: several at once on the same due set, and journey workers and dispatchers
SIGKILLed mid-pass and restarted. Afterwards every enrollment took each step exactly once, every send step has
exactly one outbox row, every message reached the provider once, and no frequency cap is broken. (Both suites run
these on a scratch PostgreSQL database: SQLite has one writer.)"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from campaigns.journeys import definitions, runtime
from crm import writes
from kit.clock import FixedClock
from kit.context import Context
from kit.crypto import ContactCipher
from kit.db import make_engine, session_scope
from kit.migrations import upgrade_to_head
from kit.settings import Settings
from tests.conftest import TEST_SECRET, cli_env
from tests.support.dispatch_support import fake_env, fake_settings
from tests.support.factories import CUSTOMER_HEADER, csv_text, run

NOW = datetime(2026, 11, 3, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai: outside quiet hours
CUSTOMERS = 60
KILLED_CUSTOMERS = 600  # enough work that the kills land inside passes
JOURNEY = {
    "name": "Three steps", "holdout_share": 0.0,
    "entry": {"trigger": {"kind": "event", "event": "cart_add"}, "reentry": {"rule": "unlimited"}},
    "steps": [
        {"id": "sms", "type": "send", "channels": [{"channel": "sms", "template": "cart_reminder"}], "next": "tag"},
        {"id": "tag", "type": "update", "add_tags": ["nudged"], "next": "sms_again"},
        {"id": "sms_again", "type": "send", "channels": [{"channel": "sms", "template": "cart_reminder"}],
         "next": "sms_third"},
        # The SMS cap (2 per 30 days) refuses the third: it is recorded as not sent, never sent.
        {"id": "sms_third", "type": "send", "channels": [{"channel": "sms", "template": "cart_reminder"}]},
    ]}


def _shop(url: str, tmp_path, customers: int = CUSTOMERS) -> Context:
    engine = make_engine(url)
    upgrade_to_head(engine)
    settings = Settings(secret_key=TEST_SECRET, data_dir=tmp_path, database_url=url, global_control_share=0.0)
    ctx = Context(settings=settings, engine=engine, cipher=ContactCipher(TEST_SECRET), clock=FixedClock(NOW))
    with session_scope(engine) as session:
        people = [(f"C{i}", f"user{i}@example.com", f"+86138001{i:05d}", "Asia/Shanghai", "zh-CN", "",
                   "2024-01-01T00:00:00Z", "opted_in", "opted_in") for i in range(1, customers + 1)]
        assert run(session, ctx, "customers", csv_text(CUSTOMER_HEADER, people)).rows_failed == 0
        journey = definitions.create_journey(session, ctx, JOURNEY, "test")
        definitions.set_status(session, ctx, journey.id, "active", "test")
    with session_scope(engine) as session:
        events = [{"customer_id": f"C{i}", "type": "cart_add", "unique_id": f"cart-{i}",
                   "occurred_at": NOW.isoformat()} for i in range(1, customers + 1)]
        assert writes.write_items(session, ctx, "events", events, cause="api", first_wins=True).rejected == 0
    return ctx


def _check_exactly_once(ctx: Context, customers: int = CUSTOMERS) -> None:
    with session_scope(ctx.engine) as session:
        query = lambda sql: session.connection().execute(text(sql)).all()  # noqa: E731
        enrollments = query("SELECT id, status, seq FROM journey_enrollment")
        assert len(enrollments) == customers and {e[1] for e in enrollments} == {"completed"}, enrollments[:5]
        steps = query("SELECT enrollment_id, seq, step_id, outcome, reason FROM journey_step ORDER BY 1, 2")
        by_enrollment: dict[int, list] = {}
        for enrollment_id, seq, step_id, outcome, reason in steps:
            by_enrollment.setdefault(enrollment_id, []).append((seq, step_id, outcome, reason))
        for enrollment_id, _, seq in enrollments:
            taken = by_enrollment[enrollment_id]
            assert [t[0] for t in taken] == list(range(1, seq + 1)) == [1, 2, 3, 4]
            assert [(t[1], t[2]) for t in taken] == [("sms", "sent"), ("tag", "updated"), ("sms_again", "sent"),
                                                     ("sms_third", "not_sent")]
            assert taken[3][3] == "capped"
        messages = query("SELECT occurrence, customer_id, status FROM message WHERE campaign_id < 0")
        per_step = Counter(m[0] for m in messages)
        assert len(per_step) == customers * 3 and set(per_step.values()) == {1}
        sms = Counter(m[1] for m in messages if m[2] in ("planned", "sending", "sent"))
        assert set(sms.values()) == {2}  # the cap, across the journey's steps
        assert query("SELECT COUNT(*) FROM customer_tag WHERE tag = 'nudged'")[0][0] == customers


def test_four_workers_on_the_same_due_set_take_each_step_once(postgres_url, tmp_path):
    url, _, _ = postgres_url
    ctx = _shop(url, tmp_path)
    with session_scope(ctx.engine) as session:
        assert runtime.enter_from_activity(session, ctx)["enrolled"] == CUSTOMERS
    start, errors = threading.Barrier(4), []

    def work() -> None:
        try:
            start.wait()
            while True:
                with session_scope(ctx.engine) as session:
                    if runtime.advance_due(session, ctx, limit=7)["advanced"] == 0:
                        return
        except Exception as failure:  # noqa: BLE001 - reported below
            errors.append(failure)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    _check_exactly_once(ctx)


def test_journey_workers_and_dispatchers_killed_at_random_moments_lose_and_repeat_nothing(
        postgres_url, tmp_path, fake_server, providers):
    url, _, _ = postgres_url
    settings = fake_settings(tmp_path, fake_server, url)
    ctx = _shop(url, tmp_path, KILLED_CUSTOMERS)
    env = cli_env(url, tmp_path) | fake_env(settings) | {
        "CRM_GLOBAL_CONTROL_SHARE": "0", "CRM_DISPATCH_BATCH_SIZE": "12", "CRM_PROVIDER_RATE_PER_SECOND":
            '{"twilio": 300}'}
    journeys = [sys.executable, "-m", "wiring.cli", "journeys", "run", "--now", NOW.isoformat(), "--batch", "15"]
    rng = random.Random(7)
    kills: Counter = Counter()
    for restart in range(1, 8):
        # Each dispatcher restart runs later, so the leases of the one killed before have run out.
        dispatch = [sys.executable, "-m", "wiring.cli", "dispatch", "run", "--now",
                    (NOW + timedelta(minutes=5 * restart)).isoformat()]
        workers = {"journeys": subprocess.Popen(journeys, env=env, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL),
                   "dispatch": subprocess.Popen(dispatch, env=env, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL)}
        time.sleep(rng.uniform(0.8, 2.5))
        for name, worker in workers.items():
            if worker.poll() is None:
                os.kill(worker.pid, signal.SIGKILL)
                kills[name] += 1
            worker.wait(timeout=30)
    with session_scope(ctx.engine) as session:  # the kills came while there was work in hand
        left = session.connection().execute(text(
            "SELECT (SELECT COUNT(*) FROM journey_enrollment WHERE status IN ('pending', 'active')) "
            "+ (SELECT COUNT(*) FROM customer_activity)")).scalar_one()
    assert left > 0 and kills["journeys"] >= 3 and kills["dispatch"] >= 3, (left, kills)
    finished = subprocess.run([*journeys, "--once"], env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    drained = subprocess.run([sys.executable, "-m", "wiring.cli", "dispatch", "run", "--once", "--now",
                              (NOW + timedelta(hours=3)).isoformat()], env=env, capture_output=True, text=True,
                             timeout=300)
    assert drained.returncode == 0, drained.stderr
    output = finished.stdout + finished.stderr + drained.stdout + drained.stderr
    for i in range(1, KILLED_CUSTOMERS + 1):  # the journey worker's and dispatcher's output names no recipient
        assert f"user{i}@example.com" not in output and f"86138001{i:05d}" not in output
    _check_exactly_once(ctx, KILLED_CUSTOMERS)
    accepted = Counter(m["message_id"] for m in providers.accepted("twilio"))
    assert accepted and max(accepted.values()) == 1, "a journey message was sent twice"
    with session_scope(ctx.engine) as session:
        rows = session.connection().execute(text(
            "SELECT id, status FROM message WHERE campaign_id < 0 AND status <> 'skipped'")).all()
    assert {str(r[0]) for r in rows} == set(accepted) and {r[1] for r in rows} == {"sent"}, Counter(r[1] for r in rows)
