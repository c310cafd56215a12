"""API response shapes of churn scoring."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kit.http import Page


class ChurnModelRead(BaseModel):
    """A trained model: its metrics against the baselines, training window, threshold and promotion decision."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    id: int
    status: str = Field(description="current, candidate, rejected or retired")
    created_at: datetime
    promoted_at: datetime | None
    features: list[str]
    metrics: dict[str, Any]
    params: dict[str, Any]
    training: dict[str, Any]
    threshold: float | None
    decision: str | None


class AtRiskCustomer(BaseModel):
    """A flagged customer with the reasons in the asked language."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    external_id: str
    probability: float
    risk_level: str
    reasons: list[str]
    drivers: list[dict[str, Any]]
    predicted_clv_12m: float | None
    model_id: int
    scored_at: datetime


class ReasonTopic(BaseModel):
    """How many flagged customers share a reason topic."""

    topic: str
    label: str
    customers: int
    share: float


class AtRiskPage(Page[AtRiskCustomer]):
    """A page of flagged customers; the first page also counts them per reason topic."""

    top_reasons: list[ReasonTopic] | None = None
