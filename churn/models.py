"""Churn tables: model versions (the registry) and each customer's latest score with its reasons."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Column, Float, ForeignKey, Index, Integer, String, Text
from sqlmodel import Field, SQLModel

from kit.types import JSONType, UTCDateTime


class ChurnModelVersion(SQLModel, table=True):
    """One trained model: its artifact file, what it was trained on and how well it did."""

    __tablename__ = "churn_model"

    id: int | None = Field(default=None, primary_key=True)
    status: str = Field(sa_column=Column(String(16), nullable=False, index=True))  # candidate|current|retired|rejected
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    promoted_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    artifact: str = Field(sa_column=Column(String(500), nullable=False))  # "db": in churn_model_artifact
    params: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    features: list[str] = Field(sa_column=Column(JSONType, nullable=False))
    training: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    fingerprint: str = Field(sa_column=Column(String(64), nullable=False))
    threshold: float = Field(sa_column=Column(Float, nullable=False))
    metrics: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    decision: str | None = Field(default=None, sa_column=Column(String(500)))


class ChurnModelArtifact(SQLModel, table=True):
    """A model's booster and metadata as text, in the database so any host can score (not on one host's disk)."""

    __tablename__ = "churn_model_artifact"

    model_id: int = Field(sa_column=Column(Integer, ForeignKey("churn_model.id", ondelete="CASCADE"),
                                           primary_key=True))
    content: str = Field(sa_column=Column(Text, nullable=False))


class ChurnScore(SQLModel, table=True):
    """A customer's latest churn probability, flag and reasons, with a short trend of earlier scores."""

    __tablename__ = "churn_score"
    __table_args__ = (Index("ix_churn_score_at_risk", "at_risk", "probability"),)

    # No database-level foreign key, like the bulk fact tables: ~150k rows are rewritten every night and the
    # row-by-row check cost 2 of the 7 s that write took at 1M customers; customers are never deleted.
    customer_id: int = Field(primary_key=True)
    model_id: int = Field(sa_column=Column(Integer, nullable=False))
    scored_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    probability: float = Field(sa_column=Column(Float, nullable=False))
    at_risk: bool = Field(nullable=False)
    # {"drivers": [{"feature", "value", "contribution"}], "gap_mean"}: rendered as sentences when read.
    reasons: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONType))
    trend: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONType))  # {"points": [{at, p}]}
    risk_level: str | None = Field(default=None, sa_column=Column(String(8)))  # low|medium|high: 3 values, no index
    p_alive: float | None = Field(default=None, sa_column=Column(Float))
    expected_orders_90d: float | None = Field(default=None, sa_column=Column(Float))
    expected_orders_365d: float | None = Field(default=None, sa_column=Column(Float))
    predicted_clv_12m: float | None = Field(default=None, sa_column=Column(Float, index=True))
    expected_next_order_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, index=True))


class ChurnPrediction(SQLModel, table=True):
    """A sample of one scoring run's predictions, kept to compare with what then happened (quality over time)."""

    __tablename__ = "churn_prediction"
    __table_args__ = (Index("ix_churn_prediction_scored_on", "scored_on"),)

    id: int | None = Field(default=None, primary_key=True)
    scored_on: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    customer_id: int = Field(nullable=False)
    model_id: int = Field(sa_column=Column(Integer, nullable=False))
    probability: float = Field(sa_column=Column(Float, nullable=False))
    at_risk: bool | None = Field(default=None, sa_column=Column(Boolean, nullable=True))  # flagged in that run
