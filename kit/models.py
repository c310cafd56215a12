"""Infrastructure tables: job runs and their steps, scheduler instances, APScheduler's job store."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, Float, LargeBinary, String, Table, Unicode, UniqueConstraint
from sqlmodel import Field, SQLModel

from kit.types import JSONType, UTCDateTime


class JobRun(SQLModel, table=True):
    """One occurrence of a scheduled job (e.g. the daily pipeline of 2026-11-25); a rerun reuses the row."""

    __tablename__ = "job_run"
    __table_args__ = (UniqueConstraint("job", "occurrence", name="uq_job_run_occurrence"),)

    id: int | None = Field(default=None, primary_key=True)
    job: str = Field(sa_column=Column(String(64), nullable=False))
    occurrence: str = Field(sa_column=Column(String(32), nullable=False))
    status: str = Field(sa_column=Column(String(12), nullable=False, index=True))
    trigger: str = Field(sa_column=Column(String(16), nullable=False))
    attempts: int = 0
    instance: str | None = Field(default=None, sa_column=Column(String(120)))
    started_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    error: str | None = Field(default=None, sa_column=Column(String(1000)))


class JobStep(SQLModel, table=True):
    """One step of a job run: its outcome, time and counts; a succeeded step is not run again for the occurrence."""

    __tablename__ = "job_step"
    __table_args__ = (UniqueConstraint("run_id", "step", name="uq_job_step"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="job_run.id", nullable=False)
    step: str = Field(sa_column=Column(String(32), nullable=False))
    position: int = 0
    status: str = Field(sa_column=Column(String(12), nullable=False))
    started_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    seconds: float | None = None
    counts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(String(1000)))


class SchedulerInstance(SQLModel, table=True):
    """A running `crm scheduler` process and its heartbeat; the leader is the one holding the leader lock."""

    __tablename__ = "scheduler_instance"

    instance: str = Field(sa_column=Column(String(120), primary_key=True))
    role: str = Field(sa_column=Column(String(12), nullable=False))
    started_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    beat_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))
    leader_since: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


# APScheduler's SQLAlchemy job store table, declared here so the migrations own every table (the job store finds
# it present and does not create it).
APSCHEDULER_JOBS = Table(
    "apscheduler_jobs", SQLModel.metadata,
    Column("id", Unicode(191), primary_key=True),
    Column("next_run_time", Float(25), index=True),
    Column("job_state", LargeBinary, nullable=False),
)


class IdempotencyRecord(SQLModel, table=True):
    """A POST made with an Idempotency-Key: in flight (no status yet) or its stored answer, replayed to a repeat."""

    __tablename__ = "idempotency_record"

    identity: str = Field(sa_column=Column(String(64), primary_key=True))  # hash of caller, path and key
    request_hash: str | None = Field(default=None, sa_column=Column(String(64)))
    status: int | None = None
    headers: list[Any] | None = Field(default=None, sa_column=Column(JSONType))
    body: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))
