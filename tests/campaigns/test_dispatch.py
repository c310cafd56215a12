"""Dispatch through the real Twilio, SendGrid and google-auth SDKs to a local fake provider, with injected faults."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from campaigns.delivery.channels import build_senders
from campaigns.delivery.channels.base import RateLimiter, parse_retry_after
from campaigns.delivery.dispatch import Dispatcher, backoff_seconds
from kit.clock import FixedClock
from kit.db import session_scope
from tests.support.dispatch_support import build_shop, fake_settings


@pytest.fixture
def shop(scratch_url, tmp_path, fake_server):
    """Six customers on a committed scratch database; every channel through the fake providers."""
    return build_shop(scratch_url, fake_settings(tmp_path, fake_server, scratch_url))


def _dispatch(shop, **settings_changes):
    ctx = shop.ctx
    if settings_changes:
        ctx.settings = ctx.settings.model_copy(update=settings_changes)
    dispatcher = Dispatcher(ctx, build_senders(ctx.settings), rng=random.Random(3))
    try:
        return dispatcher.run_until_idle().counts
    finally:
        dispatcher.close()


def test_each_channel_goes_through_its_provider_once(shop, providers):
    sms, email, push, phone = shop.add_messages([
        {"customer_id": shop.customers["C1"], "channel": "sms"},
        {"customer_id": shop.customers["C2"], "channel": "email"},
        {"customer_id": shop.customers["C3"], "channel": "push"},
        {"customer_id": shop.customers["C4"], "channel": "phone", "template": "vip_presale"}])
    counts = _dispatch(shop)
    assert counts["sent_sms"] == counts["sent_email"] == counts["sent_push"] == counts["sent_phone"] == 1
    rows = shop.messages()
    assert {rows[i]["status"] for i in (sms, email, push, phone)} == {"sent"}
    twilio, sendgrid, fcm = providers.accepted("twilio"), providers.accepted("sendgrid"), providers.accepted("fcm")
    assert [m["message_id"] for m in twilio] == [str(sms)] and twilio[0]["to"] == "+8613800100001"
    assert twilio[0]["status_callback"].endswith(f"/v1/webhooks/twilio/status?message_id={sms}")
    assert rows[sms]["provider_id"] == twilio[0]["sid"] and rows[sms]["provider"] == "twilio"
    assert [m["message_id"] for m in sendgrid] == [str(email)] and sendgrid[0]["to"] == "user2@example.com"
    assert "/v1/unsubscribe/" in sendgrid[0]["headers"]["List-Unsubscribe"]
    assert sendgrid[0]["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "/v1/unsubscribe/" in sendgrid[0]["body"]  # the text part carries the link too
    assert [m["message_id"] for m in fcm] == [str(push)] and fcm[0]["to"] == "token-3-a"
    assert providers.requests()["token"] == 1  # the OAuth token was fetched once and reused
    with shop.ctx.engine.connect() as connection:
        task = connection.execute(text("SELECT status, customer_id, script FROM call_task WHERE message_id = :m"),
                                  {"m": phone}).one()
    assert task.status == "open" and task.customer_id == shop.customers["C4"] and task.script
    assert _dispatch(shop).get("claimed", 0) == 0  # nothing left: a second pass sends nothing
    assert len(providers.accepted()) == 3


def test_429_honours_retry_after_then_sends(shop, providers):
    (message,) = shop.add_messages([{"customer_id": shop.customers["C1"]}])
    providers.faults({"provider": "twilio", "kind": "429", "retry_after": 600, "times": 1})
    assert _dispatch(shop)["retry"] == 1
    row = shop.messages()[message]
    assert row["status"] == "planned" and row["attempts"] == 1 and "429" in row["last_error"]
    assert row["send_at"] >= shop.ctx.clock.now() + timedelta(seconds=600)  # never sooner than asked
    shop.ctx.clock.advance(timedelta(seconds=599))
    assert _dispatch(shop).get("claimed", 0) == 0
    shop.ctx.clock.advance(timedelta(seconds=120))
    assert _dispatch(shop)["sent_sms"] == 1
    assert len(providers.accepted("twilio")) == 1 and shop.messages()[message]["attempts"] == 2


def test_server_errors_back_off_then_dead_letter_and_admin_retry(shop, providers):
    (message,) = shop.add_messages([{"customer_id": shop.customers["C2"], "channel": "email"}])
    providers.faults({"provider": "sendgrid", "kind": "500", "times": -1})
    waits = []
    for _ in range(3):
        _dispatch(shop, dispatch_max_attempts=3)
        row = shop.messages()[message]
        if row["status"] == "planned":
            waits.append((row["send_at"] - shop.ctx.clock.now()).total_seconds())
            shop.ctx.clock.advance(timedelta(hours=2))
    assert shop.messages()[message]["status"] == "dead"
    assert len(waits) == 2 and 30 <= waits[0] <= 60 and 60 <= waits[1] <= 120  # 60 s base, doubling, jittered
    providers.reset()
    from campaigns.delivery.tasks import retry_message

    with session_scope(shop.ctx.engine) as session:
        retry_message(session, shop.ctx, message, "key:1:admin")
    assert _dispatch(shop)["sent_email"] == 1
    assert len(providers.accepted("sendgrid")) == 1


def test_permanent_twilio_errors_fail_at_once_and_21610_records_the_opt_out(shop, providers):
    invalid, opted_out = shop.add_messages([{"customer_id": shop.customers["C1"]},
                                            {"customer_id": shop.customers["C2"]}])
    providers.faults({"provider": "twilio", "kind": "twilio_code", "code": 21211, "to_contains": "00001", "times": -1},
                     {"provider": "twilio", "kind": "twilio_code", "code": 21610, "to_contains": "00002", "times": -1})
    _dispatch(shop)
    rows = shop.messages()
    assert (rows[invalid]["status"], rows[invalid]["attempts"]) == ("failed", 1)
    assert (rows[opted_out]["status"], rows[opted_out]["reason"]) == ("failed", "opted_out")
    assert shop.consent("C2", "sms") == ("opted_out", "twilio:opted_out")
    assert shop.consent("C1", "sms")[0] == "opted_in"


def test_twilio_timeout_is_reconciled_instead_of_resent(shop, providers):
    (message,) = shop.add_messages([{"customer_id": shop.customers["C1"]}])
    # The fake takes the message, then hangs past the SDK's 1 s timeout: we cannot know it was taken.
    providers.faults({"provider": "twilio", "kind": "timeout", "seconds": 2, "times": 1})
    first = _dispatch(shop)
    assert first["unknown"] == 1
    second = _dispatch(shop)  # the next pass asks Twilio before anything else
    assert second["reconciled_sent"] == 1
    row = shop.messages()[message]
    assert row["status"] == "sent" and row["reason"] == "reconciled"
    accepted = providers.accepted("twilio")
    assert len(accepted) == 1 and row["provider_id"] == accepted[0]["sid"]


def test_twilio_reset_before_taking_is_resent_once(shop, providers):
    (message,) = shop.add_messages([{"customer_id": shop.customers["C1"]}])
    providers.faults({"provider": "twilio", "kind": "reset", "times": 1})
    _dispatch(shop)
    counts = _dispatch(shop)
    assert counts["reconciled_not_found"] == 1
    row = shop.messages()[message]
    assert row["status"] == "planned" and row["send_at"] > shop.ctx.clock.now()  # resent after a backoff
    shop.ctx.clock.advance(timedelta(hours=1))
    _dispatch(shop)
    assert shop.messages()[message]["status"] == "sent"
    assert [m["message_id"] for m in providers.accepted("twilio")] == [str(message)]


def test_sendgrid_timeout_is_unknown_and_never_resent_automatically(shop, providers):
    (message,) = shop.add_messages([{"customer_id": shop.customers["C2"], "channel": "email"}])
    providers.faults({"provider": "sendgrid", "kind": "timeout", "seconds": 2, "times": 1})
    _dispatch(shop)
    for _ in range(2):
        shop.ctx.clock.advance(timedelta(hours=1))
        _dispatch(shop)
    row = shop.messages()[message]
    assert (row["status"], row["reason"]) == ("unknown", "ambiguous")
    assert len(providers.accepted("sendgrid")) == 1  # it was taken once; we never sent it again


def test_push_to_an_unregistered_token_fails(shop, providers):
    (message,) = shop.add_messages([{"customer_id": shop.customers["C3"], "channel": "push"}])
    providers.faults({"provider": "fcm", "kind": "fcm_unregistered", "times": 1})
    _dispatch(shop)
    row = shop.messages()[message]
    assert row["status"] == "failed" and "UNREGISTERED" in row["last_error"]


def test_send_time_checks_consent_expiry_caps_and_quiet_hours(shop, providers):
    now = shop.ctx.clock.now()
    c1, c2, c3, c4 = (shop.customers[f"C{i}"] for i in range(1, 5))
    with session_scope(shop.ctx.engine) as session:  # C1 opted out after the message was planned
        session.connection().execute(text("UPDATE consent SET status = 'opted_out' WHERE customer_id = :c "
                                          "AND channel = 'sms'"), {"c": c1})
    already_out = [{"customer_id": c3, "status": "sent", "sent_at": now - timedelta(days=d), "occurrence": f"old{d}",
                    "send_at": now - timedelta(days=d)} for d in (3, 20)]
    ids = shop.add_messages([{"customer_id": c1}, {"customer_id": c2, "expires_at": now - timedelta(minutes=1)},
                             *already_out, {"customer_id": c3, "priority": 5}, {"customer_id": c4},
                             {"customer_id": c4, "occurrence": "second", "priority": 9},
                             {"customer_id": c4, "occurrence": "third", "priority": 1}])
    opted_out, expired, capped, c4_p0, c4_p9, c4_p1 = ids[0], ids[1], ids[4], ids[5], ids[6], ids[7]
    _dispatch(shop)
    rows = shop.messages()
    assert (rows[opted_out]["status"], rows[opted_out]["reason"]) == ("skipped", "no_consent")
    assert rows[expired]["status"] == "expired"
    assert rows[capped]["status"] == "skipped" and rows[capped]["reason"].startswith("capped_at_send")
    # Three due for C4 with room for two: the two highest priorities go.
    assert rows[c4_p9]["status"] == rows[c4_p1]["status"] == "sent"
    assert rows[c4_p0]["status"] == "skipped" and rows[c4_p0]["reason"] == "capped_at_send (sms 2/30d)"
    assert {m["message_id"] for m in providers.accepted("twilio")} == {str(c4_p9), str(c4_p1)}


@pytest.mark.parametrize(("zone", "utc_now", "local_release"), [
    ("Asia/Shanghai", datetime(2026, 11, 1, 15, 0, tzinfo=UTC), datetime(2026, 11, 2, 1, 0, tzinfo=UTC)),
    # The night New York leaves DST: 09:00 local on Nov 1 is 14:00 UTC (EST), not 13:00.
    ("America/New_York", datetime(2026, 11, 1, 5, 30, tzinfo=UTC), datetime(2026, 11, 1, 14, 0, tzinfo=UTC)),
])
def test_a_late_dispatcher_defers_night_messages_to_the_local_morning(scratch_url, tmp_path, fake_server, providers,
                                                                      zone, utc_now, local_release):
    shop = build_shop(scratch_url, fake_settings(tmp_path, fake_server, scratch_url), customers=1, zone=zone,
                      now=utc_now)
    (message,) = shop.add_messages([{"customer_id": shop.customers["C1"]}])
    counts = _dispatch(shop)
    row = shop.messages()[message]
    assert counts["deferred"] == 1 and row["status"] == "planned" and row["attempts"] == 0
    assert row["send_at"] == local_release and not providers.accepted()


def test_backoff_grows_with_jitter_and_respects_retry_after():
    rng = random.Random(1)
    for attempt in range(1, 8):
        delay = backoff_seconds(attempt, 30, 3600, rng)
        ceiling = min(3600, 30 * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert backoff_seconds(1, 30, 3600, rng, retry_after=900) == 900
    assert parse_retry_after("120") == 120 and parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT", datetime(2026, 10, 21, 7, 27, tzinfo=UTC)) == 60


def test_rate_limiter_holds_the_configured_rate():
    limiter = RateLimiter(rate=50, burst=1)
    started = time.monotonic()
    for _ in range(26):
        limiter.acquire()
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 2.0, elapsed  # 25 waits of 20 ms after the first token


def test_a_paused_campaign_sends_nothing_until_resumed(shop, providers):
    (message,) = shop.add_messages([{"customer_id": shop.customers["C1"]}])
    with session_scope(shop.ctx.engine) as session:
        session.connection().execute(text("UPDATE campaign SET status = 'paused' WHERE id = :c"),
                                     {"c": shop.campaign_id})
    assert _dispatch(shop).get("claimed", 0) == 0
    assert shop.messages()[message]["status"] == "planned" and not providers.accepted()
    with session_scope(shop.ctx.engine) as session:
        session.connection().execute(text("UPDATE campaign SET status = 'active' WHERE id = :c"),
                                     {"c": shop.campaign_id})
    assert _dispatch(shop)["sent_sms"] == 1


def test_a_message_waiting_to_retry_keeps_its_cap_slot_against_lower_priorities(shop, providers):
    """C1 has one SMS out and a priority-9 message waiting out its backoff (a 503 an hour ago); a priority-1 message
    due now would take the last slot of the cap (2 per 30 days) and make the retry fail its cap: it is skipped."""
    now = shop.ctx.clock.now()
    c1 = shop.customers["C1"]
    sent, retrying, low = shop.add_messages([
        {"customer_id": c1, "status": "sent", "sent_at": now - timedelta(days=2), "send_at": now - timedelta(days=2),
         "occurrence": "earlier"},
        {"customer_id": c1, "priority": 9, "attempts": 1, "reason": "retry", "send_at": now + timedelta(minutes=5),
         "occurrence": "high"},
        {"customer_id": c1, "priority": 1, "occurrence": "low"}])
    _dispatch(shop)
    rows = shop.messages()
    assert (rows[low]["status"], rows[low]["reason"]) == ("skipped", "capped_at_send (sms 2/30d)")
    assert rows[retrying]["status"] == "planned" and not providers.accepted()
    shop.ctx.clock = FixedClock(now + timedelta(minutes=10))  # the retry's turn: it is not capped by itself
    _dispatch(shop)
    assert shop.messages()[retrying]["status"] == "sent" and rows[sent]["status"] == "sent"
    assert [m["message_id"] for m in providers.accepted("twilio")] == [str(retrying)]


def test_a_message_twilio_took_and_rewrote_is_reconciled_not_resent(shop, providers):
    """Twilio's smart encoding and an opt-out footer change the body it keeps: an exact match said "never taken"
    and the message went out twice."""
    (message,) = shop.add_messages([{"customer_id": shop.customers["C1"]}])
    providers.faults({"provider": "twilio", "kind": "timeout", "seconds": 2, "times": 1, "rewrite": True})
    assert _dispatch(shop)["unknown"] == 1
    assert _dispatch(shop)["reconciled_sent"] == 1
    shop.ctx.clock.advance(timedelta(hours=2))
    _dispatch(shop)
    accepted = providers.accepted("twilio")
    assert len(accepted) == 1 and accepted[0]["body"].endswith("Reply STOP to unsubscribe.")
    assert shop.messages()[message]["provider_id"] == accepted[0]["sid"]


def test_a_host_clock_ahead_of_twilios_does_not_make_a_taken_message_look_lost(shop, providers):
    """Our clock 10 minutes ahead of Twilio's: the lookup from `send_at − 1 minute` found nothing and resent."""
    ahead = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)
    shop.ctx.clock = FixedClock(ahead)
    # A notice (transactional): this runs at the real time of day, which may be inside the customer's quiet hours.
    (message,) = shop.add_messages([{"customer_id": shop.customers["C2"], "send_at": ahead, "transactional": True,
                                     "expires_at": ahead + timedelta(days=1)}])
    providers.faults({"provider": "twilio", "kind": "timeout", "seconds": 2, "times": 1})
    assert _dispatch(shop)["unknown"] == 1
    assert _dispatch(shop)["reconciled_sent"] == 1
    assert len(providers.accepted("twilio")) == 1 and shop.messages()[message]["status"] == "sent"


def test_reconciliation_never_claims_a_message_another_of_ours_holds(shop, providers):
    """Twilio's list for the number holds only the customer's other SMS — recorded with its sid, and body for body
    the same as the lost one: claiming it would mark the lost one sent and never send it."""
    (sent,) = shop.add_messages([{"customer_id": shop.customers["C3"]}])
    assert _dispatch(shop)["sent_sms"] == 1
    (lost,) = shop.add_messages([{"customer_id": shop.customers["C3"], "occurrence": "other", "status": "unknown",
                                  "reason": "worker_lost", "attempts": 1}])
    counts = _dispatch(shop)
    assert counts.get("reconciled_sent", 0) == 0 and counts["reconciled_not_found"] == 1
    rows = shop.messages()
    assert rows[lost]["status"] == "planned" and rows[sent]["provider_id"] == providers.accepted("twilio")[0]["sid"]


def test_reconciliation_never_claims_the_sms_of_a_customer_sharing_the_number(shop, providers):
    """A household shares one number: the other customer's recorded SMS is theirs, not the lost one's."""
    from tests.support import factories
    from tests.support.dispatch_support import PHONES

    with session_scope(shop.ctx.engine) as session:
        factories.run(session, shop.ctx, "customers", factories.csv_text(
            ("external_id", "phone", "sms_consent", "locale", "consent_at"),
            [("C9", PHONES[4], "opted_in", "en-US", "2026-01-01")]))
        partner = session.connection().execute(text("SELECT id FROM customer WHERE external_id = 'C9'")).scalar()
    (theirs,) = shop.add_messages([{"customer_id": partner}])
    assert _dispatch(shop)["sent_sms"] == 1
    (lost,) = shop.add_messages([{"customer_id": shop.customers["C4"], "occurrence": "other", "status": "unknown",
                                  "reason": "worker_lost", "attempts": 1}])
    counts = _dispatch(shop)
    assert counts.get("reconciled_sent", 0) == 0 and shop.messages()[lost]["status"] == "planned"
    assert shop.messages()[theirs]["provider_id"] == providers.accepted("twilio")[0]["sid"]
