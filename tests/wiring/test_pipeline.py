"""The daily pipeline on a generated shop, end to end: every step, local-time sends, reruns, attribution."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlmodel import select

from campaigns.measurement.conversions import attribute_conversions
from campaigns.models import Message
from campaigns.service import create_campaign, set_status
from churn.service import score_customers
from crm.models import Order
from kit.clock import FixedClock, ensure_utc
from kit.context import Context
from kit.db import session_scope
from kit.jobs import run_job
from kit.timezones import utc_midnight
from tests.support.shops import generated_shop, scalar
from wiring.app import job_registry


def add_competing_sms_campaigns(ctx: Context, count: int = 3) -> None:
    """Daily SMS campaigns for everyone: together they would exceed the SMS cap (2 per 30 days) on one day."""
    with session_scope(ctx.engine) as session:
        for index in range(count):
            campaign = create_campaign(session, ctx, {
                "name": f"Flash {index}", "audience": {"tiers": ["VIP", "potential", "regular", "lost"]},
                "channels": [{"channel": "sms", "template": "birthday_greeting"}], "delivery": "first_eligible",
                "schedule": {"kind": "daily", "local_hour": 12}, "holdout_share": 0.0, "priority": 40 - index},
                "test")
            set_status(session, ctx, campaign.id, "active", "test")


def local_sends(ctx: Context, campaign: str) -> list[tuple[datetime, datetime]]:
    """(send_at in UTC, the same moment in the customer's zone) of a campaign's messages that will be or were sent."""
    with ctx.engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT m.send_at, c.time_zone FROM message m JOIN customer c ON c.id = m.customer_id "
            "JOIN campaign k ON k.id = m.campaign_id WHERE k.name = :name AND m.status IN ('planned', 'sent')"),
            {"name": campaign}).all()
    result = []
    for send_at, zone in rows:
        moment = ensure_utc(send_at if isinstance(send_at, datetime) else datetime.fromisoformat(send_at))
        result.append((moment, moment.astimezone(ZoneInfo(zone))))
    return result


def test_the_daily_pipeline_runs_every_step_sends_at_local_times_and_a_rerun_changes_nothing(scratch_url, tmp_path):
    ctx = generated_shop(scratch_url, tmp_path)
    add_competing_sms_campaigns(ctx)
    pipeline = job_registry(ctx.settings).get("pipeline")
    occurrence = pipeline.schedule.latest(ctx.clock.now())
    assert occurrence.key == "2026-11-15"

    outcome = run_job(ctx, pipeline, occurrence, trigger="schedule", options={"dispatch": "replay"})
    assert outcome.status == "succeeded", outcome.error
    steps = {s["step"]: s for s in outcome.steps}
    assert list(steps) == ["segment", "score", "uplift", "plan", "dispatch", "attribute"]
    assert all(s["status"] == "succeeded" for s in outcome.steps)
    assert steps["segment"]["counts"]["customers"] == scalar(ctx, "SELECT count(*) FROM customer")
    assert steps["score"]["counts"]["first_model"]["model_id"] == steps["score"]["counts"]["model_id"]
    assert steps["score"]["counts"]["scored"] == scalar(ctx, "SELECT count(*) FROM churn_score")
    # A fixed sample of the predictions is kept to measure the model later (20% by default).
    kept = steps["score"]["counts"]["predictions_kept"]
    assert 0.1 < kept / steps["score"]["counts"]["scored"] < 0.3
    assert kept == scalar(ctx, "SELECT count(*) FROM churn_prediction")
    assert scalar(ctx, "SELECT count(*) FROM churn_prediction WHERE at_risk IS NULL") == 0  # each with its flag

    # Which campaigns fire on Sunday the 15th: the monthly win-back and the triggered ones, not the VIP call (5th)
    # nor the Tuesday coupon.
    planned = {c["campaign"]: c for c in steps["plan"]["counts"]["campaigns"]}
    at_risk = ("At-risk care (VIP, potential)", "At-risk retention (regular)", "At-risk win-back (lost)")
    assert set(planned) == {"Lost win-back", *at_risk, "Birthday greeting", "First repeat order",
                            "Flash 0", "Flash 1", "Flash 2"}
    assert planned["Lost win-back"]["recipients"] > 0 and sum(planned[n]["recipients"] for n in at_risk) > 0
    # The global control group (5% by default) gets none of the marketing campaigns.
    assert sum(planned[n]["excluded"].get("global_control", 0) for n in at_risk) > 0
    assert scalar(ctx, "SELECT count(*) FROM message WHERE reason = 'global_control' AND customer_id IN "
                       "(SELECT customer_id FROM message WHERE status IN ('planned', 'sent'))") == 0
    assert steps["plan"]["counts"]["planned"] == scalar(ctx, "SELECT count(*) FROM message")
    phases = steps["plan"]["counts"]["timings"]  # the day's planning time by phase, for the operator
    assert set(phases) == {"read_s", "plan_s", "write_s"} and phases["read_s"] > 0
    # The campaigns of one day are planned in one transaction: each sees the SMS the others planned before it,
    # so the cap holds across them (the lowest-priority flash campaign loses its slots).
    most_sms = scalar(ctx, "SELECT max(n) FROM (SELECT customer_id, count(*) AS n FROM message WHERE channel = 'sms' "
                           "AND status NOT IN ('skipped', 'holdout') GROUP BY customer_id) AS per_customer")
    assert most_sms == 2
    assert planned["Flash 2"]["excluded"].get("capped", 0) + planned["Flash 2"]["excluded"].get("lower_priority", 0) > 0

    # Scoring on the frames the segment step read gives what scoring on its own reads gives.
    with session_scope(ctx.engine) as session:
        alone = score_customers(session, ctx, as_of=utc_midnight(occurrence.day), actor="test")
    for key in ("scored", "at_risk", "mean_probability", "model_id"):
        assert alone[key] == steps["score"]["counts"][key], key
    # Predictions are kept once a week: not again for the same day, again seven days on (the same customers).
    assert alone["predictions_kept"] == 0
    with session_scope(ctx.engine) as session:
        week_on = score_customers(session, ctx, as_of=utc_midnight(occurrence.day) + timedelta(days=7), actor="test")
    assert week_on["predictions_kept"] > 0
    assert scalar(ctx, "SELECT count(DISTINCT scored_on) FROM churn_prediction") == 2
    assert scalar(ctx, "SELECT count(*) FROM (SELECT customer_id FROM churn_prediction GROUP BY customer_id "
                       "HAVING count(*) = 2) AS both_runs") >= 0.9 * min(kept, week_on["predictions_kept"])

    # "Monthly on the 15th at 10:00" is 10:00 on the 15th in each customer's own zone.
    sends = local_sends(ctx, "Lost win-back")
    assert len({local.tzinfo for _, local in sends}) >= 3
    assert {(local.date().isoformat(), local.hour, local.minute) for _, local in sends} == {("2026-11-15", 10, 0)}

    # Dispatch sent everything planned and due (the replay ran the clock to the last send time).
    sent = scalar(ctx, "SELECT count(*) FROM message WHERE status = 'sent'")
    assert sent > 0 and sent == sum(v for k, v in steps["dispatch"]["counts"].items() if k.startswith("sent_"))
    assert scalar(ctx, "SELECT count(*) FROM message WHERE status IN ('planned', 'sending')") == 0

    # The same occurrence again: every step is skipped, nothing is planned or sent twice.
    messages = scalar(ctx, "SELECT count(*) FROM message")
    again = run_job(ctx, pipeline, occurrence, trigger="manual")
    assert [s["status"] for s in again.steps] == ["skipped"] * 6 and again.status == "succeeded"
    forced = run_job(ctx, pipeline, occurrence, trigger="manual", force=True)
    assert forced.status == "succeeded"
    assert all(c["already_planned"] for c in {s["step"]: s for s in forced.steps}["plan"]["counts"]["campaigns"])
    assert scalar(ctx, "SELECT count(*) FROM message") == messages
    assert scalar(ctx, "SELECT attempts FROM job_run WHERE job = 'pipeline' AND occurrence = '2026-11-15'") == 3

    # The weekly retraining trains a candidate behind the promotion gate: promoted or rejected, with the reason.
    retrain = job_registry(ctx.settings).get("retrain")
    trained = run_job(ctx, retrain, retrain.schedule.of_key("2026-11-15"), trigger="schedule")
    counts = trained.steps[0]["counts"]
    assert trained.status == "succeeded" and counts["status"] in ("current", "rejected") and counts["decision"]
    assert scalar(ctx, "SELECT count(*) FROM churn_model") == 2
    assert scalar(ctx, "SELECT count(*) FROM churn_model WHERE status = 'current'") == 1

    # Attribution: an order two days after a sent message converts for that message's campaign, once.
    with session_scope(ctx.engine) as session:
        message = session.exec(select(Message).where(Message.status == "sent").order_by(Message.id)).first()
        ordered_at = ensure_utc(message.sent_at) + timedelta(days=2)
        session.add(Order(external_id="ATTRIB-1", customer_id=message.customer_id, ordered_at=ordered_at,
                          amount_paid=Decimal("123.45"), created_at=ordered_at, updated_at=ordered_at))
    ctx.clock = FixedClock(ordered_at + timedelta(hours=1))
    with session_scope(ctx.engine) as session:
        first = attribute_conversions(session, ctx)
    with session_scope(ctx.engine) as session:
        second = attribute_conversions(session, ctx)
    assert first["conversions"] >= 1 and second["conversions"] == 0
    with ctx.engine.connect() as connection:
        conversion = connection.execute(text(
            "SELECT c.message_id, c.campaign_id, c.revenue FROM conversion c JOIN orders o ON o.id = c.order_id "
            "WHERE o.external_id = 'ATTRIB-1'")).one()
    with session_scope(ctx.engine) as session:  # last touch: the customer's latest message sent before the order
        touches = session.exec(select(Message).where(Message.customer_id == message.customer_id,
                                                     Message.status == "sent")).all()
        last = max((m for m in touches if ensure_utc(m.sent_at) <= ordered_at),
                   key=lambda m: (ensure_utc(m.sent_at), m.id))
    assert (conversion.message_id, conversion.campaign_id) == (last.id, last.campaign_id)
    assert abs(conversion.revenue - 123.45) < 1e-6


def test_a_scheduler_behind_its_customers_zones_plans_tomorrows_campaigns_in_time(scratch_url, tmp_path):
    """Scheduler in Los Angeles, customers as far ahead as Shanghai: 10:00 on the 15th in Shanghai comes before the
    pipeline of the 15th (02:00 in Los Angeles), so the pipeline of the 14th plans the 15th's win-back already."""
    now = datetime(2026, 11, 14, 10, 0, tzinfo=UTC)  # 02:00 on the 14th in Los Angeles
    ctx = generated_shop(scratch_url, tmp_path, now=now, scheduler_time_zone="America/Los_Angeles")
    pipeline = job_registry(ctx.settings).get("pipeline")
    occurrence = pipeline.schedule.latest(now)
    assert (occurrence.key, occurrence.fire_at) == ("2026-11-14", now)
    outcome = run_job(ctx, pipeline, occurrence, trigger="schedule")
    assert outcome.status == "succeeded", outcome.error
    planned = {(c["campaign"], c["occurrence"]) for c in {s["step"]: s for s in outcome.steps}["plan"]["counts"]["campaigns"]}
    assert ("Lost win-back", "2026-11-15") in planned
    assert not {name for name, _ in planned} & {"VIP presale call", "Potential coupon"}  # the 5th, Tuesdays
    sends = local_sends(ctx, "Lost win-back")
    assert sends and all(at > now for at, _ in sends)  # nobody's 10:00 had passed: none clamped to "now"
    assert {(local.date().isoformat(), local.hour) for _, local in sends} == {("2026-11-15", 10)}
    assert "Asia/Shanghai" in {str(local.tzinfo) for _, local in sends}
