"""The `crm scheduler` process: the leader runs APScheduler over the registered jobs; standbys wait to take over.

Leadership is a named lock (PostgreSQL advisory lock / file lock beside SQLite) held for the process's life: a
SIGKILLed leader's connection or file closes, the lock goes with it, and a standby polling every few seconds takes
over well inside `scheduler_takeover_seconds`. Jobs live in APScheduler's SQLAlchemy job store in the service
database; each firing runs the job's due occurrences (`kit.jobs.run_due`), so what ran is decided by the recorded
job runs, not by the job store: a new leader catches up what its predecessor missed, once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from sqlalchemy import delete

from kit.context import Context
from kit.db import session_scope, writer_engine
from kit.jobs import JobBusy, JobRegistry, run_due
from kit.locks import NamedLock, try_lock
from kit.models import SchedulerInstance
from kit.schedules import JobSchedule

log = logging.getLogger("kit.scheduler")
LEADER_LOCK = "scheduler-leader"
_RUNTIME: dict[str, Any] = {}  # this process's context and registry, for the job function APScheduler calls


class LocalTimeTrigger(BaseTrigger):
    """An APScheduler trigger firing at a JobSchedule's occurrences (local wall time, DST-correct)."""

    def __init__(self, schedule: JobSchedule) -> None:
        self.schedule = schedule

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime:
        """The first occurrence after the previous firing (or after now for a new job)."""
        return self.schedule.next_after(previous_fire_time or now).fire_at

    def __str__(self) -> str:
        return self.schedule.describe()


def fire(name: str) -> None:
    """APScheduler's job function (stored by reference): run the job's due occurrences, log each outcome."""
    ctx: Context = _RUNTIME["ctx"]
    registry: JobRegistry = _RUNTIME["registry"]
    try:
        for outcome in run_due(ctx, registry.get(name), instance=_RUNTIME.get("instance")):
            log.info("job %s %s: %s%s", name, outcome.occurrence, outcome.status,
                     f" ({outcome.error})" if outcome.error else "")
    except JobBusy:
        log.info("job %s is running elsewhere; this firing leaves it to that run", name)


def instance_name() -> str:
    """host:pid, how /health names a scheduler process."""
    return f"{socket.gethostname()}:{os.getpid()}"


class SchedulerService:
    """One scheduler process: standby until it holds the leader lock, then leader until stopped or the lock is lost."""

    def __init__(self, ctx: Context, registry: JobRegistry, *, stop: threading.Event,
                 instance: str | None = None) -> None:
        self.ctx, self.registry, self.stop = ctx, registry, stop
        wanted = ctx.settings.scheduler_jobs
        for name in wanted:
            registry.get(name)  # an unknown name in CRM_SCHEDULER_JOBS fails at start, naming the known ones
        self.jobs = [job for job in registry if not wanted or job.name in wanted]
        self.instance = instance or instance_name()
        self.started_at = ctx.clock.now()
        settings = ctx.settings
        self.heartbeat = settings.scheduler_heartbeat_seconds
        # A standby asks for the lock several times per takeover window, so takeover stays inside it.
        self.poll = min(self.heartbeat, settings.scheduler_takeover_seconds / 3)

    def run(self) -> None:
        """Until stopped: wait for leadership, lead, and fall back to standby if the lock is lost."""
        try:
            while not self.stop.is_set():
                lock = try_lock(self.ctx.engine, self.ctx.settings.data_dir, LEADER_LOCK)
                if lock is None:
                    self._beat("standby", None)
                    self.stop.wait(self.poll)
                    continue
                with lock:
                    self._lead(lock)
        finally:
            self._forget()

    def _scheduler(self) -> BackgroundScheduler:
        return BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.ctx.engine, tablename="apscheduler_jobs"),
                       "volatile": MemoryJobStore()},
            # One job at a time: the pipeline and the tag job both write segments, and the machine has 2 cores.
            executors={"default": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1,
                          "misfire_grace_time": self.ctx.settings.scheduler_misfire_grace_seconds},
            timezone=UTC)

    def _lead(self, lock: NamedLock) -> None:
        since = self.ctx.clock.now()
        log.info("%s is the scheduler leader", self.instance)
        _RUNTIME.update(ctx=self.ctx, registry=self.registry, instance=self.instance)
        scheduler = self._scheduler()
        scheduler.start()
        for job in self.jobs:
            scheduler.add_job(fire, LocalTimeTrigger(job.schedule), args=[job.name], id=job.name,
                              name=job.description, replace_existing=True)
            # Whatever the previous leader missed (or downtime skipped) is due now: once, per the catch-up policy.
            scheduler.add_job(fire, "date", run_date=self.ctx.clock.now(), args=[job.name], id=f"catch-up:{job.name}",
                              jobstore="volatile", replace_existing=True)
        self._beat("leader", since)
        try:
            while not self.stop.wait(self.heartbeat):
                if not lock.alive():
                    log.warning("%s lost the leader lock; back to standby", self.instance)
                    break
                self._beat("leader", since)
        finally:
            scheduler.shutdown(wait=True)  # SIGTERM finishes the job in progress

    def _beat(self, role: str, leader_since: datetime | None) -> None:
        try:
            with session_scope(writer_engine(self.ctx.engine)) as session:
                row = session.get(SchedulerInstance, self.instance) or SchedulerInstance(
                    instance=self.instance, role=role, started_at=self.started_at, beat_at=self.ctx.clock.now())
                row.role, row.beat_at, row.leader_since = role, self.ctx.clock.now(), leader_since
                session.add(row)
        except Exception:  # noqa: BLE001 - a missed heartbeat must not kill the scheduler
            log.exception("scheduler heartbeat failed")

    def _forget(self) -> None:
        try:
            with session_scope(self.ctx.engine) as session:
                session.exec(delete(SchedulerInstance).where(  # type: ignore[call-overload]
                    SchedulerInstance.instance == self.instance))
        except Exception:  # noqa: BLE001 - shutting down anyway
            log.exception("could not remove the scheduler's heartbeat row")
