"""HTTP routes of the scheduler's jobs: what is scheduled, what ran, and a manual run."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, Query, Request

from crm import audit
from crm.auth import Principal, require
from crm.models import Role
from kit import jobs
from kit.context import Context, ContextDep
from kit.db import SessionDep
from kit.http import Page, PageDep
from kit.locks import try_lock
from kit.schedules import Occurrence
from wiring.schemas import JobAccepted, JobRead, JobRunRead

router = APIRouter(tags=["jobs"])
OPERATORS = (Role.admin, Role.scheduler)
READERS = (Role.admin, Role.scheduler, Role.marketer)


def _registry(request: Request) -> jobs.JobRegistry:
    return request.app.state.jobs


@router.get("/jobs", response_model=Page[JobRead])
def list_jobs(request: Request, session: SessionDep, ctx: ContextDep, page: PageDep,
              _: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    """Every scheduled job: its schedule, next run time and newest run."""
    return page.slice(lambda n: jobs.overview(session, ctx, _registry(request)))


@router.get("/jobs/runs", response_model=Page[JobRunRead])
def list_runs(session: SessionDep, page: PageDep, _: Principal = Depends(require(*READERS)),
              job: Annotated[str | None, Query(max_length=64, description="only this job's runs")] = None,
              status: Annotated[str | None, Query(pattern="^(running|succeeded|failed)$",
                                                  description="only runs that ended so")] = None) -> dict[str, Any]:
    """Recorded runs, newest first, each with its steps' status, time and counts."""
    return page.slice(lambda n: jobs.list_runs(session, job=job, status=status, limit=n))


def _run_in_background(ctx: Context, job: jobs.JobDefinition, occurrence: Occurrence, force: bool) -> None:
    try:
        jobs.run_job(ctx, job, occurrence, trigger="manual", force=force, instance="api")
    except jobs.JobBusy:
        jobs.log.info("manual run of %s skipped: it started elsewhere meanwhile", job.name)


@router.post("/jobs/{name}/run", status_code=202, response_model=JobAccepted)
def run_now(name: str, request: Request, session: SessionDep, ctx: ContextDep, background: BackgroundTasks,
            principal: Principal = Depends(require(*OPERATORS)),
            occurrence: Annotated[str | None, Query(max_length=32, description="default: today's occurrence")] = None,
            force: Annotated[bool, Query(description="rerun steps that already succeeded")] = False,
            ) -> dict[str, Any]:
    """Run a job now, in the background: its finished steps for the occurrence are skipped unless force."""
    job = _registry(request).get(name)
    chosen = jobs.occurrence_for(job, ctx.clock.now(), occurrence)
    probe = try_lock(ctx.engine, ctx.settings.data_dir, f"job:{job.name}")
    if probe is None:
        raise jobs.JobBusy(f"job {job.name} is running already; try again when it has finished")
    probe.release()
    audit.record(session, actor=principal.actor, action="job.run", entity="job", entity_id=job.name,
                 at=ctx.clock.now(), after={"occurrence": chosen.key, "force": force})
    background.add_task(_run_in_background, ctx, job, chosen, force)
    return {"job": job.name, "occurrence": chosen.key, "force": force, "status": "accepted",
            "runs": f"/v1/jobs/runs?job={job.name}"}


def install(app: FastAPI, registry: jobs.JobRegistry) -> None:
    """Wire the jobs routes around the composition root's registry."""
    app.state.jobs = registry
    app.include_router(router)

