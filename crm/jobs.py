"""crm's job step: retention of raw events and job runs, and marking imports that died mid-way."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import polars as pl
from sqlalchemy import delete
from sqlmodel import Session

from crm import state
from crm.ingest import mark_interrupted_imports
from crm.models import CustomerChange, Event
from kit.columnar import read_frame
from kit.context import Context
from kit.idempotency import purge_expired
from kit.jobs import Step, StepRun, prune_runs


def clean_core_data(session: Session, ctx: Context, run: StepRun) -> dict[str, Any]:
    """Delete raw events and finished job runs older than their retention settings (the customer state forgets
    the deleted events in the same transaction); mark dead imports; drop answered idempotency keys and processed
    state changes past their windows."""
    now = ctx.clock.now()
    expired = Event.occurred_at < now - timedelta(days=ctx.settings.event_retention_days)
    touched = read_frame(session, "SELECT DISTINCT e.customer_id, e.occurred_at FROM event e WHERE e.occurred_at < :end",
                         {"end": now - timedelta(days=ctx.settings.event_retention_days)},
                         {"customer_id": pl.Int64, "occurred_at": pl.Datetime("us", "UTC")}, same_connection=True)
    events = session.exec(delete(Event).where(expired)).rowcount  # type: ignore[call-overload]
    state.refresh(session, ctx, state.touched_days(touched, "customer_id", "occurred_at").unique(), cause="retention")
    runs = prune_runs(session, now - timedelta(days=ctx.settings.job_run_retention_days))
    interrupted = mark_interrupted_imports(session, ctx)
    keys = purge_expired(session, now)
    changes = session.exec(delete(CustomerChange).where(  # type: ignore[call-overload]
        CustomerChange.processed_at < now - timedelta(days=CHANGE_RETENTION_DAYS))).rowcount
    return {"events_deleted": events, "job_runs_deleted": runs, "imports_marked_interrupted": interrupted,
            "idempotency_keys_deleted": keys, "state_changes_deleted": changes}


CHANGE_RETENTION_DAYS = 7  # processed state-change events kept for inspection


CLEAN_CORE = Step("core-data", clean_core_data, "events and job runs past their retention")
