"""What journeys did: a customer's enrollments, the per-step funnel with uplift, and a simulated timeline."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import polars as pl
from sqlalchemy import text
from sqlmodel import Session, select

from campaigns.journeys import runtime
from campaigns.journeys.definitions import get_journey
from campaigns.journeys.spec import JourneySpec
from campaigns.measurement.stats import rate_difference, sample_size_per_arm
from campaigns.models import Journey, JourneyEnrollment, JourneyStep, Message, journey_sender
from crm.profiles import ProfileRequest
from crm.service import order_times_frame
from kit.clock import FixedClock, ensure_utc
from kit.columnar import read_frame
from kit.context import Context
from kit.db import is_postgres

UTC_TYPE = pl.Datetime("us", "UTC")


def enrollments_of(session: Session, customer_id: int) -> list[dict[str, Any]]:
    """A customer's enrollments, newest first, with the steps taken and what comes next."""
    rows = session.exec(select(JourneyEnrollment).where(JourneyEnrollment.customer_id == customer_id)
                        .order_by(JourneyEnrollment.id.desc()).limit(50)).all()
    names = dict(session.exec(select(Journey.id, Journey.name).where(
        Journey.id.in_(sorted({r.journey_id for r in rows})))).all()) if rows else {}
    out = []
    for row in rows:
        steps = session.exec(select(JourneyStep).where(JourneyStep.enrollment_id == row.id)
                             .order_by(JourneyStep.seq)).all()
        out.append({"id": row.id, "journey_id": row.journey_id, "journey": names.get(row.journey_id),
                    "version": row.version,
                    "status": row.status, "step": row.step_id, "next_wake_at": row.wake_at,
                    "entered_at": row.entered_at, "ended_at": row.ended_at, "end_reason": row.end_reason,
                    "steps": [{"seq": s.seq, "step": s.step_id, "kind": s.kind, "outcome": s.outcome,
                               "reason": s.reason, "at": s.at} for s in steps]})
    return out


def journeys_section(request: ProfileRequest) -> dict[str, Any]:
    """The profile's journeys: where the customer is in each and what comes next."""
    return {"enrollments": enrollments_of(request.session, request.customer_id)}


def funnel(session: Session, ctx: Context, journey_id: int) -> dict[str, Any]:
    """Per step: reached, sent, not sent by reason, waiting now; the journey's entered, converted and exited, and the
    uplift of treated over held-out entrants (orders within conversion_days of entry)."""
    journey = get_journey(session, journey_id)
    spec = JourneySpec.model_validate(journey.spec)
    params = {"journey": journey_id}
    steps = read_frame(session, "SELECT s.step_id, s.outcome, s.reason, COUNT(*) FROM journey_step s "
                       "WHERE s.journey_id = :journey GROUP BY s.step_id, s.outcome, s.reason", params,
                       {"step_id": pl.String, "outcome": pl.String, "reason": pl.String, "n": pl.Int64},
                       same_connection=True, small=True)
    waiting = dict(session.connection().execute(text(
        "SELECT step_id, COUNT(*) FROM journey_enrollment WHERE journey_id = :journey AND status = 'active' "
        "GROUP BY step_id"), params).all())
    per_step = []
    for step in spec.steps:
        mine = steps.filter(pl.col("step_id") == step.id)
        skipped = mine.filter(pl.col("outcome") == "not_sent").group_by("reason").agg(pl.col("n").sum())
        per_step.append({"id": step.id, "type": step.type, "label": step.label,
                         "taken": int(mine["n"].sum()), "waiting_now": int(waiting.get(step.id, 0)),
                         "outcomes": {o: int(n) for o, n in mine.group_by("outcome").agg(pl.col("n").sum()).iter_rows()},
                         "sent": int(mine.filter(pl.col("outcome") == "sent")["n"].sum()),
                         "not_sent": {str(r): int(n) for r, n in skipped.iter_rows()}})
    statuses = dict(session.connection().execute(text(
        "SELECT status, COUNT(*) FROM journey_enrollment WHERE journey_id = :journey GROUP BY status"), params).all())
    converted = _conversions(session, ctx, journey_id, spec)
    return {"journey_id": journey_id, "name": journey.name, "version": journey.version,
            "enrollments": {k: int(v) for k, v in statuses.items()}, "steps": per_step,
            "uplift": _uplift(converted, spec), "splits": _splits(session, journey_id, spec, converted)}


def _splits(session: Session, journey_id: int, spec: JourneySpec, converted: pl.DataFrame) -> list[dict[str, Any]]:
    """Each split's arms: members, conversion against the first arm, the sample each arm needs, and the verdict."""
    out = []
    for step in (s for s in spec.steps if s.type == "split"):
        arm_of = ("e.context -> 'arms' ->> :step" if is_postgres(session)
                  else "json_extract(e.context, '$.arms.' || :step)")
        arms = read_frame(session, f"SELECT e.customer_id, e.entered_at, {arm_of} FROM journey_enrollment e "
                          "WHERE e.journey_id = :journey", {"journey": journey_id, "step": step.id},
                          {"customer_id": pl.Int64, "entered_at": UTC_TYPE, "arm": pl.String}, same_connection=True)
        members = converted.join(arms.drop_nulls("arm"), on=["customer_id", "entered_at"], how="inner")
        needed = sample_size_per_arm(step.baseline_conversion, step.tolerated_error)
        counts = {a.name: (int(members.filter(pl.col("arm") == a.name)["hit"].sum()),
                           members.filter(pl.col("arm") == a.name).height) for a in step.arms}
        first = step.arms[0].name
        comparisons = {name: rate_difference(hits, n, *counts[first]).as_dict()
                       for name, (hits, n) in counts.items() if name != first}
        enough = all(n >= needed for _, n in counts.values())
        winners = [name for name, c in comparisons.items() if c["significant"] and c["difference"] > 0]
        losers = all(c["significant"] and c["difference"] < 0 for c in comparisons.values())
        verdict = ("collecting" if not enough else winners[0] if len(winners) == 1 else
                   first if losers and comparisons else "no difference")
        out.append({"step": step.id, "needed_per_arm": needed, "verdict": verdict,
                    "arms": {name: {"members": n, "conversions": hits} for name, (hits, n) in counts.items()},
                    "against_first_arm": comparisons})
    return out


def _conversions(session: Session, ctx: Context, journey_id: int, spec: JourneySpec) -> pl.DataFrame:
    """Entrants whose conversion window has closed, and whether they ordered within it (after the entry)."""
    cutoff = ctx.clock.now() - timedelta(days=spec.conversion_days)
    entrants = read_frame(session, "SELECT e.customer_id, e.entered_at, e.status, e.end_reason FROM journey_enrollment e "
                          "WHERE e.journey_id = :journey AND e.entered_at <= :cutoff AND e.status <> 'cancelled' "
                          "AND e.status <> 'pending'", {"journey": journey_id, "cutoff": cutoff},
                          {"customer_id": pl.Int64, "entered_at": UTC_TYPE, "status": pl.String,
                           "end_reason": pl.String}, same_connection=True)
    if entrants.is_empty():
        return entrants.with_columns(hit=pl.lit(False))
    orders = order_times_frame(session, entrants["customer_id"].unique(), entrants["entered_at"].min())
    window = timedelta(days=spec.conversion_days)
    return entrants.join(orders, on="customer_id", how="left").group_by(
        "customer_id", "entered_at", "status", "end_reason").agg(
        hit=((pl.col("ordered_at") > pl.col("entered_at")) & (pl.col("ordered_at") < pl.col("entered_at") + window))
        .fill_null(False).any())


def _uplift(converted: pl.DataFrame, spec: JourneySpec) -> dict[str, Any]:
    """Conversion of treated entrants against the journey's holdout, counted only once the window has closed."""
    held = converted.filter((pl.col("status") == "holdout") & (pl.col("end_reason") == "holdout"))
    treated = converted.filter(pl.col("status") != "holdout")
    result = rate_difference(int(treated["hit"].sum()), treated.height, int(held["hit"].sum()), held.height)
    return result.as_dict() | {"window_days": spec.conversion_days}


def simulate(session: Session, ctx: Context, journey_id: int, customer_id: int, *,
             horizon_days: int = 60) -> dict[str, Any]:
    """The timeline one customer would take through the journey from now, with the guard rails' decisions, on a
    simulated clock; everything it writes is rolled back."""
    journey = get_journey(session, journey_id)
    spec = JourneySpec.model_validate(journey.spec)
    start = ctx.clock.now()
    clock = FixedClock(start)
    simulated = replace(ctx, clock=clock)
    timeline: list[dict[str, Any]] = []
    savepoint = session.begin_nested()
    try:
        entered = runtime.enroll(session, simulated, journey.id, journey.version, spec.model_copy(update={
            "holdout_share": 0.0, "entry": spec.entry.model_copy(update={"reentry": spec.entry.reentry.model_copy(
                update={"rule": "unlimited"})})}), pl.DataFrame({"customer_id": [customer_id],
                                                                 "entry_key": [f"simulation:{start.isoformat()}"],
                                                                 "entered_at": [start]},
                                                                schema={"customer_id": pl.Int64,
                                                                        "entry_key": pl.String,
                                                                        "entered_at": UTC_TYPE}))
        if not entered:
            return {"journey_id": journey_id, "customer_id": customer_id, "enters": False,
                    "reason": "not in the journey's audience, or already in it", "timeline": []}
        enrollment = session.exec(select(JourneyEnrollment).where(
            JourneyEnrollment.journey_id == journey.id, JourneyEnrollment.customer_id == customer_id,
            JourneyEnrollment.entry_key == f"simulation:{start.isoformat()}")).one()
        # A simulation follows the journey even while it is a draft or paused.
        session.connection().execute(text("UPDATE journey SET status = 'active' WHERE id = :id"), {"id": journey.id})
        end = start + timedelta(days=horizon_days)
        while clock.now() <= end:
            session.refresh(enrollment)
            if enrollment.status not in runtime.LIVE:
                break
            clock.advance(max(timedelta(0), ensure_utc(enrollment.wake_at) - clock.now()))
            runtime.advance_due(session, simulated, limit=1, only=[enrollment.id])
        session.refresh(enrollment)
        for step in session.exec(select(JourneyStep).where(JourneyStep.enrollment_id == enrollment.id)
                                 .order_by(JourneyStep.seq)).all():
            timeline.append({"seq": step.seq, "at": step.at, "step": step.step_id, "kind": step.kind,
                             "outcome": step.outcome, "reason": step.reason})
        messages = session.exec(select(Message).where(Message.campaign_id == journey_sender(journey.id),
                                                      Message.customer_id == customer_id)
                                .order_by(Message.id)).all()
        return {"journey_id": journey_id, "customer_id": customer_id, "enters": True, "status": enrollment.status,
                "end_reason": enrollment.end_reason, "timeline": timeline,
                "messages": [{"channel": m.channel, "status": m.status, "reason": m.reason, "send_at": m.send_at,
                              "template": m.template, "discount_value": m.discount_value} for m in messages]}
    finally:
        savepoint.rollback()


def uplift_members(session: Session, ctx: Context, *, days: int = 180) -> pl.DataFrame:
    """Treated and holdout entrants of every journey entered in the last `days` whose conversion window has
    closed, with whether they converted and the journey's uplift segment (what uplift models learn from)."""
    since = ctx.clock.now() - timedelta(days=days)
    frames = []
    for journey in session.exec(select(Journey)):
        spec = JourneySpec.model_validate(journey.spec)
        entrants = _conversions(session, ctx, journey.id, spec).filter(pl.col("entered_at") >= since)
        held = (pl.col("status") == "holdout") & (pl.col("end_reason") == "holdout")
        frames.append(entrants.filter(held | (pl.col("status") != "holdout")).select(
            "customer_id", send_at="entered_at", treated=~held, converted="hit",
            segment=pl.lit(spec.uplift_segment)))
    schema = {"customer_id": pl.Int64, "send_at": UTC_TYPE, "treated": pl.Boolean, "converted": pl.Boolean,
              "segment": pl.String}
    return pl.concat([f.cast(schema) for f in frames]) if frames else pl.DataFrame(schema=schema)
