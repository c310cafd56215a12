"""API response shapes of segmentation."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RuleSetRead(BaseModel):
    """A rule set in force (tier, layer or tags): its version, the rules, and the metrics rules may use."""

    name: str
    version: int
    body: dict[str, Any] = Field(description="a RuleSet (tier, layer) or TagSet (tags) document, as PUT takes it")
    metrics: dict[str, dict[str, str]] | None = Field(default=None, description="metric -> kind and description")


class SegmentationRun(BaseModel):
    """One segmentation run: its distribution per tier, layer and tag, and the moves since the previous run."""

    model_config = ConfigDict(extra="allow")

    run_id: int | None
    as_of: datetime | None
    finished_at: datetime | None = None
    customers: int
    versions: dict[str, int] | None = None
    distribution: dict[str, Any] | None = None
    moves_since_previous_run: dict[str, Any] | None = None


class HistoryEntry(BaseModel):
    """The distribution of one past run."""

    model_config = ConfigDict(extra="allow")

    run_id: int
    as_of: datetime
    customers: int
    tier: dict[str, Any]
    layer: dict[str, Any]
    tags: dict[str, Any]
