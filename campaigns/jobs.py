"""The scheduled work of the whole service, composed here at the top layer: the daily retention pipeline
(segment → score churn → refresh uplift → plan due campaigns → dispatch → attribute conversions) and the clean-up job."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlmodel import Session

from campaigns.delivery.channels import build_senders
from campaigns.delivery.dispatch import replay_until
from campaigns.delivery.dispatch import serve as serve_dispatch
from campaigns.measurement.conversions import attribute_conversions
from campaigns.measurement.uplift_store import current_uplift_models, score_uplift
from campaigns.models import Message, WebhookReceipt
from campaigns.planning.planner import EXCLUSION_REASONS
from campaigns.planning.plans import latest_planned_send, plan_ahead, plan_due
from campaigns.service import train_uplift
from churn.jobs import SCORE
from churn.service import prune_predictions
from crm.jobs import CLEAN_CORE
from kit.context import Context
from kit.db import session_scope
from kit.jobs import JobDefinition, Step, StepRun
from kit.schedules import JobSchedule, parse_local_time
from kit.settings import Settings
from kit.timezones import utc_midnight
from segmentation.jobs import SEGMENT


def plan_step(session: Session, ctx: Context, run: StepRun) -> dict[str, Any]:
    """Plan every active campaign firing on the occurrence's day: scheduled ones (each customer's local send time)
    and triggered ones (at risk, birthday, first order + N days, tier or tag entered); one broken campaign is
    reported and does not stop the others. A scheduled campaign of the next day is planned now when customers in
    zones ahead of the scheduler's would reach its local send time before the next pipeline run."""
    day = run.occurrence.day
    results = plan_due(session, ctx, day)
    if run.next_fire_at is not None:  # tomorrow's scheduled campaigns, if some zone's send time precedes our next run
        results += plan_ahead(session, ctx, day + timedelta(days=1), run.next_fire_at)
    campaigns = []
    for result in results:
        counts = result.get("counts") or {}
        campaigns.append({
            "campaign_id": result["campaign_id"], "campaign": result["campaign"], "occurrence": result.get("occurrence"),
            "already_planned": result.get("already_planned", False), "error": result.get("error"),
            "added": result.get("added", 0), "recipients": counts.get("recipients", 0),
            "excluded": {reason: counts[reason] for reason in EXCLUSION_REASONS if counts.get(reason)},
            "channels": {k.removeprefix("channel_"): v for k, v in counts.items() if k.startswith("channel_") and v},
            "timings": result.get("timings")})
    # The day's time by phase over all campaigns: reading inputs, deciding, writing the outbox.
    timings = {phase: round(sum((c["timings"] or {}).get(phase, 0.0) for c in campaigns), 3)
               for phase in ("read_s", "plan_s", "write_s")}
    return {"campaigns": campaigns, "planned": sum(c["added"] for c in campaigns),
            "failed": sum(1 for c in campaigns if c["error"]), "timings": timings}


def dispatch_step(session: Session, ctx: Context, run: StepRun) -> dict[str, Any]:
    """Send what is due now (option dispatch=replay: everything planned, the clock jumping to each send time)."""
    senders = build_senders(ctx.settings, console_show=run.options.get("console_show"))
    if run.options.get("dispatch") == "replay":
        with session_scope(ctx.engine) as lookup:  # not this step's session: dispatch commits on its own
            until = latest_planned_send(lookup)
        report = replay_until(ctx, senders, until) if until is not None else None
        return dict(report.counts) if report else {}
    try:
        report = serve_dispatch(ctx, senders, once=True, stop=threading.Event())
    except RuntimeError as busy:  # SQLite: the running `crm dispatch run` sends them instead
        return {"skipped": str(busy)}
    return dict(report.counts)


def attribute_step(session: Session, ctx: Context, run: StepRun) -> dict[str, Any]:
    """Orders placed within the attribution window after a sent or delivered message."""
    return attribute_conversions(session, ctx)


def uplift_step(session: Session, ctx: Context, run: StepRun) -> dict[str, Any]:
    """Refit the uplift models once a week (from the past arms whose windows have closed), then refresh every
    customer's predicted uplift per segment; nothing to do until some campaign or journey kept a holdout."""
    as_of = utc_midnight(run.occurrence.day)
    fitted = None
    newest = max((m.trained_at for m in current_uplift_models(session)), default=None)
    if newest is None or ctx.clock.now() - newest >= timedelta(days=UPLIFT_REFIT_DAYS):
        fitted = [{k: r.get(k) for k in ("segment", "fitted", "members", "reason", "model_id")}
                  for r in train_uplift(session, ctx)]
    return score_uplift(session, ctx, as_of, shared=run.shared) | ({"fitted": fitted} if fitted is not None else {})


def clean_campaign_data(session: Session, ctx: Context, run: StepRun) -> dict[str, Any]:
    """Expire planned messages past their expiry; forget webhook receipts and kept churn predictions past their
    retention."""
    now = ctx.clock.now()
    expired = session.exec(update(Message).where(  # type: ignore[call-overload]
        Message.status == "planned", Message.expires_at < now).values(
        status="expired", reason="expired before it could be sent", updated_at=now)).rowcount
    receipts = session.exec(delete(WebhookReceipt).where(  # type: ignore[call-overload]
        WebhookReceipt.received_at < now - timedelta(days=ctx.settings.webhook_receipt_retention_days))).rowcount
    return {"messages_expired": expired, "webhook_receipts_deleted": receipts,
            "churn_predictions_deleted": prune_predictions(session, ctx)}


PIPELINE_STEPS = (
    SEGMENT,
    SCORE,
    Step("uplift", uplift_step, "predicted uplift of every customer per campaign kind, channel and offer"),
    Step("plan", plan_step, "plan due campaigns into the outbox under the guard rails"),
    Step("dispatch", dispatch_step, "send due messages through the channels"),
    Step("attribute", attribute_step, "attribute orders to the messages they followed"),
)


UPLIFT_REFIT_DAYS = 7


def jobs(settings: Settings) -> list[JobDefinition]:
    """The daily retention pipeline and the daily clean-up."""
    zone = settings.scheduler_zone()
    hour, minute = parse_local_time(settings.pipeline_local_time, "pipeline_local_time")
    clean_hour, clean_minute = parse_local_time(settings.cleanup_local_time, "cleanup_local_time")
    return [
        JobDefinition("pipeline", "daily retention pipeline: segment, score, uplift, plan, dispatch, attribute",
                      JobSchedule("daily", zone, hour, minute), PIPELINE_STEPS, catch_up=settings.scheduler_catch_up),
        JobDefinition("cleanup", "expire old data per the retention settings",
                      JobSchedule("daily", zone, clean_hour, clean_minute),
                      (CLEAN_CORE, Step("campaign-data", clean_campaign_data,
                                        "expired messages, webhook receipts, churn predictions")),
                      catch_up="latest"),
    ]
