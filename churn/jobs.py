"""Churn's scheduled work: the pipeline's scoring step and the weekly retraining behind the promotion gate."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from churn.service import current_model, score_customers, train_model
from kit.context import Context
from kit.db import session_scope
from kit.jobs import JobDefinition, Step, StepRun
from kit.schedules import JobSchedule, parse_local_time, parse_weekday
from kit.settings import Settings
from kit.timezones import utc_midnight


def _train(session: Session, ctx: Context, run: StepRun) -> dict[str, Any]:
    row = train_model(session, ctx, as_of=utc_midnight(run.occurrence.day), actor="scheduler",
                      progress=run.progress)
    return {"model_id": row.id, "status": row.status, "decision": row.decision,
            "roc_auc": row.metrics.get("roc_auc"), "pr_auc": row.metrics.get("pr_auc")}


def score_step(session: Session, ctx: Context, run: StepRun) -> dict[str, Any]:
    """Score every active customer; a shop without a model yet trains its first one here."""
    # Short sessions of their own: on SQLite this step's session must not hold a read snapshot from before the
    # scoring's columnar scan (it could not write from it), and a first model is committed before scoring reads it.
    with session_scope(ctx.engine) as lookup:
        has_model = current_model(lookup) is not None
    trained = None
    if not has_model:
        with session_scope(ctx.engine) as training:
            trained = _train(training, ctx, run)
    summary = score_customers(session, ctx, as_of=utc_midnight(run.occurrence.day), actor="scheduler",
                              shared=run.shared)
    counts = {k: summary[k] for k in ("model_id", "scored", "at_risk", "threshold", "mean_probability",
                                      "predictions_kept", "timings")}
    return counts | ({"first_model": trained} if trained else {})


def retrain_step(session: Session, ctx: Context, run: StepRun) -> dict[str, Any]:
    """Train a candidate on fresh labels; it replaces the current model only when the promotion gate passes."""
    return _train(session, ctx, run)


SCORE = Step("score", score_step, "churn risk of every active customer, at-risk flags with reasons")


def jobs(settings: Settings) -> list[JobDefinition]:
    """The weekly retraining."""
    hour, minute = parse_local_time(settings.retrain_local_time, "retrain_local_time")
    schedule = JobSchedule("weekly", settings.scheduler_zone(), hour, minute,
                           weekday=parse_weekday(settings.retrain_weekday, "retrain_weekday"))
    return [JobDefinition("retrain", "weekly churn model retraining with the promotion gate", schedule,
                          (Step("train", retrain_step, "train a candidate, promote it if it beats the current"),),
                          catch_up="latest")]
