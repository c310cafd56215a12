"""crm's job step: retention of raw events and job runs, and marking imports that died mid-way."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete
from sqlmodel import Session

from crm.ingest import mark_interrupted_imports
from crm.models import Event
from kit.context import Context
from kit.jobs import Step, StepRun, prune_runs


def clean_core_data(session: Session, ctx: Context, run: StepRun) -> dict[str, Any]:
    """Delete raw events and finished job runs older than their retention settings; mark dead imports."""
    now = ctx.clock.now()
    events = session.exec(delete(Event).where(  # type: ignore[call-overload]
        Event.occurred_at < now - timedelta(days=ctx.settings.event_retention_days))).rowcount
    runs = prune_runs(session, now - timedelta(days=ctx.settings.job_run_retention_days))
    interrupted = mark_interrupted_imports(session, ctx)
    return {"events_deleted": events, "job_runs_deleted": runs, "imports_marked_interrupted": interrupted}


CLEAN_CORE = Step("core-data", clean_core_data, "events and job runs past their retention")
