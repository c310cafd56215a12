"""API response shapes of the jobs and reports routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class JobRead(BaseModel):
    """A scheduled job: its schedule, next run time and newest run."""

    model_config = ConfigDict(extra="allow")

    name: str
    description: str
    schedule: str
    catch_up: str
    steps: list[str]
    next_run_at: datetime | None
    last_run: dict[str, Any] | None


class JobRunRead(BaseModel):
    """A recorded run of a job, with its steps' status, time and counts."""

    model_config = ConfigDict(extra="allow")

    id: int
    job: str
    occurrence: str
    status: str
    trigger: str
    attempts: int
    started_at: datetime
    finished_at: datetime | None
    error: str | None
    steps: list[dict[str, Any]]


class JobAccepted(BaseModel):
    """A job started in the background; follow it at `runs`."""

    job: str
    occurrence: str
    force: bool
    status: str
    runs: str


class ReportListed(BaseModel):
    """A report there is."""

    name: str
    description: str


class SampleSize(BaseModel):
    """Members each A/B arm needs."""

    baseline: float
    tolerated_error: float
    confidence: float
    per_arm: int


class CampaignReport(BaseModel):
    """One campaign's measurement: members per arm, sends, conversions, costs, uplift and the A/B verdict."""

    model_config = ConfigDict(extra="allow")

    campaign_id: int
    campaign: str
    status: str
    since: datetime | None
    until: datetime | None
    members: dict[str, int]


class Report(BaseModel):
    """A report: its own sections and columns (GET /v1/reports names each); as CSV with format=csv."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"minProperties": 1})
