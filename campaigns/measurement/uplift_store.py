"""Uplift models on the database: past arms → one T-learner per segment (and one over every arm), measured on
held-out members, stored with their boosters; nightly, each customer's predicted uplift per segment.

A segment is `kind:channel:offer` — `campaign:sms:coupon`, `journey:email:none` — from the campaign's first
channel and whether it offers a discount. Planning reads the scores of the campaign's segment, else of `any`.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
from sqlalchemy import delete
from sqlmodel import Session, select

from campaigns.authoring.spec import ANY_SEGMENT, campaign_segment
from campaigns.measurement.arms import member_arms, outcomes
from campaigns.measurement.reports import message_rows
from campaigns.measurement.uplift import (
    MIN_ARM_MEMBERS,
    UpliftModel,
    compare_targeting,
    fit_t_learner,
    held_out,
    uplift_features,
)
from campaigns.models import Campaign, UpliftModelVersion, UpliftScore
from churn.service import order_features_at
from crm import audit
from crm.service import orders_frame
from kit.bulkwrite import insert_frame
from kit.columnar import SharedFrames
from kit.context import Context
from kit.timezones import utc_midnight

MEMBER_SCHEMA = {"customer_id": pl.Int64, "send_at": pl.Datetime("us", "UTC"), "treated": pl.Boolean,
                 "converted": pl.Boolean, "segment": pl.String}
SCORE_TYPES = {"customer_id": "int", "segment": "text", "uplift": "float", "model_id": "int", "scored_at": "timestamp"}
ARMS_PERIOD_DAYS = 180
TARGET_SHARE = 0.3  # the share of held-out members each ranking targets when the model is measured


def campaign_members(session: Session, ctx: Context, *, days: int = ARMS_PERIOD_DAYS) -> pl.DataFrame:
    """Treated and holdout members of campaigns sent in the last `days` whose attribution window has closed, with
    whether they ordered within it and their campaign's segment (the shop-wide control group is left out)."""
    now = ctx.clock.now()
    window = timedelta(days=ctx.settings.attribution_window_days)
    rows = message_rows(session, now - timedelta(days=days), now - window)
    arms = member_arms(rows).filter(pl.col("arm") != "global_control")
    if arms.is_empty():
        return pl.DataFrame(schema=MEMBER_SCHEMA)
    orders = orders_frame(session, arms["send_at"].min(), now, costs=False)
    measured = outcomes(arms, orders, window, now)
    known = session.exec(select(Campaign)).all()
    segments = pl.DataFrame({"campaign_id": [c.id for c in known], "segment": [campaign_segment(c.spec) for c in known]},
                            schema={"campaign_id": pl.Int64, "segment": pl.String})
    return (measured.join(segments, on="campaign_id")
            .select("customer_id", "send_at", treated=pl.col("arm") == "treated", converted="converted",
                    segment="segment").cast(MEMBER_SCHEMA))


def _with_features(session: Session, members: pl.DataFrame) -> pl.DataFrame:
    """Each member's order and discount features as of the Monday before their send (one computation a week, and
    nothing from the send or after it)."""
    members = members.with_columns(
        cutoff=pl.col("send_at").dt.truncate("1w").dt.replace_time_zone("UTC", ambiguous="earliest"))
    cutoffs = [utc_midnight(c.date()) for c in members["cutoff"].unique().sort().to_list()]
    by_cutoff = order_features_at(session, cutoffs)
    frames = [uplift_features(by_cutoff[c]).with_columns(cutoff=pl.lit(c).cast(members.schema["cutoff"]))
              for c in cutoffs]
    features = pl.concat(frames, how="diagonal_relaxed")
    return members.join(features, on=["customer_id", "cutoff"], how="left")


def fit_uplift_models(session: Session, ctx: Context, members: pl.DataFrame, actor: str = "scheduler"
                      ) -> list[dict[str, Any]]:
    """Fit and store one model per segment with enough members in both arms, and one over every arm (`any`);
    each is measured on held-out members (Qini, incremental conversions per 1,000 messages against random)."""
    if members.is_empty():
        return []
    started = time.perf_counter()
    data = _with_features(session, members)
    features_s = round(time.perf_counter() - started, 2)
    out = []
    groups = [(s, data.filter(pl.col("segment") == s)) for s in sorted(data["segment"].unique().to_list())]
    for segment, part in [*groups, (ANY_SEGMENT, data)]:
        treated = part["treated"].to_numpy()
        if treated.sum() < MIN_ARM_MEMBERS or (~treated).sum() < MIN_ARM_MEMBERS:
            out.append({"segment": segment, "fitted": False, "members": part.height,
                        "reason": f"fewer than {MIN_ARM_MEMBERS} members in an arm"})
            continue
        if segment == ANY_SEGMENT and len(groups) == 1 and out[0]["fitted"]:
            # One segment so far: the model over every arm is that same model, stored again rather than refitted.
            source = session.get(UpliftModelVersion, out[0]["model_id"])
            out.append(_store(session, ctx, segment, part.height, source.metrics, source.content, actor)
                       | {k: v for k, v in out[0].items() if k not in ("segment", "model_id")})
            continue
        out.append(_fit_one(session, ctx, segment, part, actor) | {"features_s": features_s})
    return out


def _fit_one(session: Session, ctx: Context, segment: str, part: pl.DataFrame, actor: str) -> dict[str, Any]:
    tick = time.perf_counter()
    ids = part["customer_id"].to_numpy()
    # A customer can be a member several times: hold out by customer so no one is on both sides.
    keep_out = held_out(ids)
    treated, converted = part["treated"].to_numpy(), part["converted"].to_numpy()
    features = uplift_features(part)
    fit = ~keep_out
    model = fit_t_learner(features.filter(pl.Series(fit)), treated[fit], converted[fit], ids[fit])
    fit_s = round(time.perf_counter() - tick, 2)
    test = features.filter(pl.Series(keep_out))
    random_rank = np.random.default_rng(int(ids.sum()) % 2**32).random(test.height)
    measured = compare_targeting({"uplift": model.uplift(test), "random": random_rank}, treated[keep_out],
                                 converted[keep_out], TARGET_SHARE)
    metrics = {"held_out": int(keep_out.sum()), "target_share": TARGET_SHARE, "rankings": measured,
               "treated_rate": model.meta["treated_rate"], "holdout_rate": model.meta["holdout_rate"],
               "fit_s": fit_s}
    return _store(session, ctx, segment, part.height, metrics, model.to_text(), actor) | metrics


def _store(session: Session, ctx: Context, segment: str, members: int, metrics: dict[str, Any], content: str,
           actor: str) -> dict[str, Any]:
    """Make a fitted model the segment's current one (the previous one retired; audited)."""
    now = ctx.clock.now()
    for old in session.exec(select(UpliftModelVersion).where(UpliftModelVersion.segment == segment,
                                                             UpliftModelVersion.status == "current")):
        old.status = "retired"
        session.add(old)
    row = UpliftModelVersion(segment=segment, status="current", trained_at=now, members=members,
                             metrics=metrics, content=content)
    session.add(row)
    session.flush()
    audit.record(session, actor=actor, action="uplift.train", entity="uplift_model", entity_id=row.id, at=now,
                 after={"segment": segment, "members": members})
    return {"segment": segment, "fitted": True, "model_id": row.id, "members": members}


def current_uplift_models(session: Session) -> list[UpliftModelVersion]:
    """The current model of every segment."""
    return list(session.exec(select(UpliftModelVersion).where(UpliftModelVersion.status == "current")
                             .order_by(UpliftModelVersion.segment)))


def score_uplift(session: Session, ctx: Context, as_of: datetime, *,
                 shared: SharedFrames | None = None) -> dict[str, Any]:
    """Every customer's predicted uplift under each current model (rows of a segment are replaced together)."""
    models = current_uplift_models(session)
    if not models:
        return {"segments": [], "scored": 0}
    tick = time.perf_counter()
    features = order_features_at(session, [as_of], shared=shared)[as_of]
    read_s = round(time.perf_counter() - tick, 2)
    scored = 0
    for row in models:
        uplift = UpliftModel.from_text(row.content).uplift(features)
        frame = features.select("customer_id").with_columns(
            segment=pl.lit(row.segment), uplift=pl.Series(uplift), model_id=pl.lit(row.id, pl.Int64),
            scored_at=pl.lit(as_of).cast(pl.Datetime("us", "UTC")))
        session.exec(delete(UpliftScore).where(UpliftScore.segment == row.segment))
        insert_frame(session, UpliftScore.__tablename__, frame, SCORE_TYPES)
        scored += frame.height
    return {"segments": [m.segment for m in models], "scored": scored, "read_s": read_s,
            "total_s": round(time.perf_counter() - tick, 2)}
