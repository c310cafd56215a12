"""Jobs: named sequences of steps on a schedule, each run recorded per occurrence with its steps' counts.

Each package declares its jobs and steps next to its code (`<package>/jobs.py`); the composition roots collect them
into a JobRegistry. A run holds a named lock, so the scheduler, a manual API run and `crm pipeline run` never run the
same job at once; a step's work and its "succeeded" record commit in one transaction, so a rerun of the occurrence
skips exactly the steps that finished.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, update
from sqlmodel import Session, select

from kit import metrics
from kit.columnar import SharedFrames
from kit.context import Context
from kit.db import session_scope, writer_engine
from kit.errors import Conflict, InvalidInput, NotFound
from kit.locks import try_lock
from kit.models import JobRun, JobStep, SchedulerInstance
from kit.schedules import JobSchedule, Occurrence, due_occurrences

log = logging.getLogger("kit.jobs")
TRIGGERS = ("schedule", "catch_up", "manual", "cli")


@dataclass(frozen=True)
class StepRun:
    """What a step is told besides its session and context: which job and occurrence, options, a progress line."""

    job: str
    occurrence: Occurrence
    options: Mapping[str, Any] = field(default_factory=dict)
    progress: Callable[[str], None] = lambda _text: None
    next_fire_at: datetime | None = None  # when the job's following occurrence is due
    shared: SharedFrames = field(default_factory=SharedFrames)  # bulk frames one step reads and a later one reuses


StepFunction = Callable[[Session, Context, StepRun], dict[str, Any]]


@dataclass(frozen=True)
class Step:
    """One step of a job; returns its counts (JSON-ready)."""

    name: str
    run: StepFunction
    description: str = ""


@dataclass(frozen=True)
class JobDefinition:
    """A job: its schedule, its steps in order and what to do about occurrences missed during downtime."""

    name: str
    description: str
    schedule: JobSchedule
    steps: tuple[Step, ...]
    catch_up: str = "latest"


class JobRegistry:
    """The jobs the composition root collected from every package."""

    def __init__(self, jobs: list[JobDefinition] | None = None) -> None:
        self._jobs: dict[str, JobDefinition] = {}
        for job in jobs or []:
            self.add(job)

    def add(self, job: JobDefinition) -> None:
        """Register a job (names are unique)."""
        if job.name in self._jobs:
            raise ValueError(f"job {job.name!r} is registered twice")
        self._jobs[job.name] = job

    def get(self, name: str) -> JobDefinition:
        """A job by name; NotFound names the known ones."""
        if name not in self._jobs:
            raise NotFound(f"no job named {name!r}; jobs: {', '.join(self._jobs)}")
        return self._jobs[name]

    def __iter__(self) -> Iterator[JobDefinition]:
        return iter(self._jobs.values())


class JobBusy(Conflict):
    """The job is running elsewhere right now."""


@dataclass
class RunOutcome:
    """A finished (or failed) run: its row id, status and each step's outcome."""

    run_id: int
    job: str
    occurrence: str
    status: str
    steps: list[dict[str, Any]]
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"run_id": self.run_id, "job": self.job, "occurrence": self.occurrence, "status": self.status,
                "steps": self.steps, "error": self.error}


def _short(failure: BaseException) -> str:
    text = f"{type(failure).__name__}: {failure}".strip()
    return text.splitlines()[0][:1000] if text else type(failure).__name__


def _open_run(ctx: Context, job: JobDefinition, occurrence: Occurrence, trigger: str, instance: str | None) -> int:
    now = ctx.clock.now()
    with session_scope(writer_engine(ctx.engine)) as session:
        run = session.exec(select(JobRun).where(JobRun.job == job.name, JobRun.occurrence == occurrence.key)).first()
        if run is None:
            run = JobRun(job=job.name, occurrence=occurrence.key, status="running", trigger=trigger, attempts=0,
                         started_at=now)
        elif run.status == "running":  # we hold the job's lock, so whoever was running it died mid-run
            log.warning("job %s %s: attempt %d was interrupted; resuming after its finished steps", job.name,
                        occurrence.key, run.attempts)
        run.status, run.trigger, run.instance = "running", trigger, instance
        run.attempts += 1
        run.started_at, run.finished_at, run.error = now, None, None
        session.add(run)
        session.flush()
        return run.id  # type: ignore[return-value]


def _succeeded_steps(ctx: Context, run_id: int) -> dict[str, JobStep]:
    with session_scope(ctx.engine) as session:
        rows = session.exec(select(JobStep).where(JobStep.run_id == run_id, JobStep.status == "succeeded")).all()
        return {row.step: row for row in rows}


def _put_step(session: Session, run_id: int, position: int, step: str, **values: Any) -> None:
    row = session.exec(select(JobStep).where(JobStep.run_id == run_id, JobStep.step == step)).first()
    if row is None:
        row = JobStep(run_id=run_id, step=step, position=position, status="running", started_at=values["started_at"])
    for key, value in values.items():
        setattr(row, key, value)
    session.add(row)


def _close_run(ctx: Context, run_id: int, status: str, error: str | None) -> None:
    with session_scope(writer_engine(ctx.engine)) as session:
        session.exec(update(JobRun).where(JobRun.id == run_id).values(  # type: ignore[call-overload]
            status=status, finished_at=ctx.clock.now(), error=error))


def run_job(ctx: Context, job: JobDefinition, occurrence: Occurrence, *, trigger: str = "manual",
            force: bool = False, options: Mapping[str, Any] | None = None,
            progress: Callable[[str], None] | None = None, instance: str | None = None) -> RunOutcome:
    """Run a job's occurrence: steps that already succeeded for it are skipped (all rerun with force)."""
    if trigger not in TRIGGERS:
        raise InvalidInput(f"trigger must be one of {TRIGGERS}")
    lock = try_lock(ctx.engine, ctx.settings.data_dir, f"job:{job.name}")
    if lock is None:
        raise JobBusy(f"job {job.name} is running already; try again when it has finished")
    writes = writer_engine(ctx.engine)
    with lock:
        run_id = _open_run(ctx, job, occurrence, trigger, instance)
        done = {} if force else _succeeded_steps(ctx, run_id)
        step_run = StepRun(job.name, occurrence, options or {}, progress or (lambda _text: None),
                           job.schedule.next_after(occurrence.fire_at).fire_at)
        outcomes: list[dict[str, Any]] = []
        for position, step in enumerate(job.steps):
            if step.name in done:
                outcomes.append({"step": step.name, "status": "skipped", "reason": "finished in an earlier attempt",
                                 "counts": done[step.name].counts, "seconds": 0.0})
                continue
            step_run.progress(f"{job.name}: {step.name}")
            started, tick = ctx.clock.now(), time.perf_counter()
            with session_scope(writes) as session:
                _put_step(session, run_id, position, step.name, status="running", started_at=started,
                          finished_at=None, error=None)
            try:
                # The step's session takes the SQLite write lock at its first statement (see writer_engine); a
                # step that works through sessions of its own (dispatch) touches this one only at the end.
                with session_scope(writes) as session:
                    counts = step.run(session, ctx, step_run) or {}
                    seconds = round(time.perf_counter() - tick, 3)
                    _put_step(session, run_id, position, step.name, status="succeeded", started_at=started,
                              finished_at=ctx.clock.now(), seconds=seconds, counts=counts)
                metrics.business().job_steps.labels(job.name, step.name, "succeeded").observe(seconds)
            except Exception as failure:  # noqa: BLE001 - recorded on the run; later steps need this one
                error = _short(failure)
                log.exception("job %s %s: step %s failed", job.name, occurrence.key, step.name)
                metrics.business().job_steps.labels(job.name, step.name, "failed").observe(time.perf_counter() - tick)
                with session_scope(writes) as session:
                    _put_step(session, run_id, position, step.name, status="failed", started_at=started,
                              finished_at=ctx.clock.now(), seconds=round(time.perf_counter() - tick, 3), error=error)
                _close_run(ctx, run_id, "failed", f"{step.name}: {error}")
                outcomes.append({"step": step.name, "status": "failed", "error": error})
                return RunOutcome(run_id, job.name, occurrence.key, "failed", outcomes, f"{step.name}: {error}")
            outcomes.append({"step": step.name, "status": "succeeded", "counts": counts, "seconds": seconds})
        _close_run(ctx, run_id, "succeeded", None)
        return RunOutcome(run_id, job.name, occurrence.key, "succeeded", outcomes)


def run_due(ctx: Context, job: JobDefinition, *, instance: str | None = None) -> list[RunOutcome]:
    """What the scheduler calls when a job fires: run the due occurrence(s) per the job's catch-up policy."""
    now = ctx.clock.now()
    with session_scope(ctx.engine) as session:
        done = session.exec(select(JobRun.occurrence).where(JobRun.job == job.name,
                                                            JobRun.status == "succeeded")).all()
    done_keys = set(done)
    last_done = max((job.schedule.of_key(key).fire_at for key in done_keys), default=None)
    due = due_occurrences(job.schedule, now, last_done=last_done, done_keys=done_keys, policy=job.catch_up)
    outcomes = []
    for position, occurrence in enumerate(due):
        trigger = "schedule" if position == len(due) - 1 else "catch_up"
        outcomes.append(run_job(ctx, job, occurrence, trigger=trigger, instance=instance))
    return outcomes


def occurrence_for(job: JobDefinition, now: datetime, value: str | None) -> Occurrence:
    """The occurrence a manual run names (default: the current one); 422 naming `occurrence` if malformed or
    in the future."""
    if value is None:
        return job.schedule.current(now)
    shape = "YYYY-MM-DDTHH:MMZ" if job.schedule.kind == "hourly" else "YYYY-MM-DD"
    try:
        occurrence = job.schedule.of_key(value)
    except ValueError:
        raise InvalidInput(f"occurrence must look like {shape}, got {value!r}", errors=[
            {"field": "occurrence", "message": f"expected {shape}"}]) from None
    if occurrence.day > job.schedule.current(now).day:
        raise InvalidInput(f"occurrence {value} is in the future; a job runs for today or earlier", errors=[
            {"field": "occurrence", "message": "in the future"}])
    return occurrence


def run_to_dict(run: JobRun, steps: list[JobStep]) -> dict[str, Any]:
    """A run as the API shows it."""
    return {"id": run.id, "job": run.job, "occurrence": run.occurrence, "status": run.status,
            "trigger": run.trigger, "attempts": run.attempts, "instance": run.instance,
            "started_at": run.started_at, "finished_at": run.finished_at, "error": run.error,
            "steps": [{"step": s.step, "status": s.status, "started_at": s.started_at, "finished_at": s.finished_at,
                       "seconds": s.seconds, "counts": s.counts, "error": s.error}
                      for s in sorted(steps, key=lambda s: s.position)]}


def list_runs(session: Session, *, job: str | None = None, status: str | None = None,
              limit: int = 50) -> list[dict[str, Any]]:
    """The newest runs, with their steps."""
    query = select(JobRun).order_by(JobRun.started_at.desc(), JobRun.id.desc()).limit(limit)  # type: ignore[union-attr]
    if job is not None:
        query = query.where(JobRun.job == job)
    if status is not None:
        query = query.where(JobRun.status == status)
    runs = session.exec(query).all()
    steps: dict[int, list[JobStep]] = {}
    if runs:
        for step in session.exec(select(JobStep).where(JobStep.run_id.in_([r.id for r in runs]))).all():  # type: ignore[attr-defined]
            steps.setdefault(step.run_id, []).append(step)
    return [run_to_dict(run, steps.get(run.id or 0, [])) for run in runs]


def overview(session: Session, ctx: Context, registry: JobRegistry) -> list[dict[str, Any]]:
    """Every job with its schedule, next run time and newest run."""
    now = ctx.clock.now()
    newest = {row.job: row for row in session.exec(
        select(JobRun).where(JobRun.id.in_(select(func.max(JobRun.id)).group_by(JobRun.job)))).all()}  # type: ignore[union-attr]
    result = []
    for job in registry:
        last = newest.get(job.name)
        result.append({
            "name": job.name, "description": job.description, "schedule": job.schedule.describe(),
            "catch_up": job.catch_up, "steps": [s.name for s in job.steps],
            "next_run_at": job.schedule.next_after(now).fire_at,
            "last_run": None if last is None else {"occurrence": last.occurrence, "status": last.status,
                                                    "started_at": last.started_at, "finished_at": last.finished_at}})
    return result


def prune_runs(session: Session, before: datetime) -> int:
    """Delete finished runs (and their steps) that started before a moment; returns the runs removed."""
    old = select(JobRun.id).where(JobRun.started_at < before, JobRun.status != "running")
    session.exec(delete(JobStep).where(JobStep.run_id.in_(old)))  # type: ignore[call-overload,attr-defined]
    return session.exec(delete(JobRun).where(JobRun.id.in_(old))).rowcount  # type: ignore[call-overload,attr-defined]


def scheduler_health(session: Session, ctx: Context) -> dict[str, Any]:
    """The scheduler as /health reports it: the leader and its heartbeat, standbys, and whether it is alive."""
    now = ctx.clock.now()
    fresh_after = now - timedelta(seconds=ctx.settings.scheduler_takeover_seconds)
    rows = session.exec(select(SchedulerInstance).where(SchedulerInstance.beat_at >= fresh_after)).all()
    leaders = sorted((r for r in rows if r.role == "leader"), key=lambda r: r.beat_at, reverse=True)
    leader = leaders[0] if leaders else None
    return {"running": leader is not None, "leader": leader.instance if leader else None,
            "leader_since": leader.leader_since if leader else None,
            "heartbeat_at": leader.beat_at if leader else None,
            "standbys": sorted(r.instance for r in rows if r.role == "standby")}
