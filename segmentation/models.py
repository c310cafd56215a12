"""Segmentation tables: versioned rule sets, each customer's current tier/layer/scores, tags, transitions, runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, Float, Index, Integer, SmallInteger, String, UniqueConstraint
from sqlmodel import Field, SQLModel

from kit.types import JSONType, UTCDateTime


class SegmentRuleSet(SQLModel, table=True):
    """One version of a named rule set (tier, layer or tags); the newest version is in force."""

    __tablename__ = "segment_rule_set"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(16), nullable=False))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    body: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    created_by: str = Field(sa_column=Column(String(120), nullable=False))


class CustomerSegment(SQLModel, table=True):
    """A customer's current tier and layer (with pending moves held back by hysteresis) and RFM scores."""

    __tablename__ = "customer_segment"
    __table_args__ = (Index("ix_customer_segment_tier", "tier"), Index("ix_customer_segment_layer", "layer"),
                      Index("ix_customer_segment_rfm", "rfm"))

    customer_id: int = Field(foreign_key="customer.id", primary_key=True)
    tier: str = Field(sa_column=Column(String(32), nullable=False))
    tier_since: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    tier_matched: bool = Field(nullable=False, description="false: no rule matched, the fallback applied")
    tier_version: int = Field(sa_column=Column(Integer, nullable=False))
    tier_pending: str | None = Field(default=None, sa_column=Column(String(32)))
    tier_pending_runs: int | None = None
    tier_pending_as_of: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    layer: str = Field(sa_column=Column(String(32), nullable=False))
    layer_since: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    layer_matched: bool = Field(nullable=False)
    layer_version: int = Field(sa_column=Column(Integer, nullable=False))
    layer_pending: str | None = Field(default=None, sa_column=Column(String(32)))
    layer_pending_runs: int | None = None
    layer_pending_as_of: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    r_score: int | None = Field(default=None, sa_column=Column(SmallInteger))
    f_score: int | None = Field(default=None, sa_column=Column(SmallInteger))
    m_score: int | None = Field(default=None, sa_column=Column(SmallInteger))
    rfm: str | None = Field(default=None, sa_column=Column(String(3)))
    first_seen_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class CustomerTag(SQLModel, table=True):
    """A behaviour tag a customer carries now, since when and why (the metric values that set it)."""

    __tablename__ = "customer_tag"
    __table_args__ = (Index("ix_customer_tag_tag", "tag"),)

    customer_id: int = Field(foreign_key="customer.id", primary_key=True)
    tag: str = Field(sa_column=Column(String(40), primary_key=True))
    since: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    why: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    version: int = Field(sa_column=Column(Integer, nullable=False))


class SegmentValueStep(SQLModel, table=True):
    """One step of a run's spend distribution: how many buyers spent at most this much in the window. A profile
    places one customer's spend among all buyers from it (the value percentile) without reading the population."""

    __tablename__ = "segment_value_step"

    run_id: int = Field(sa_column=Column(Integer, primary_key=True))
    monetary: float = Field(sa_column=Column(Float, primary_key=True))
    buyers_at_or_below: int = Field(sa_column=Column(Integer, nullable=False))


class SegmentTransition(SQLModel, table=True):
    """A change a run made: tier or layer moved, tag added or removed. Later packages act on these."""

    __tablename__ = "segment_transition"
    __table_args__ = (Index("ix_segment_transition_customer", "customer_id", "at"),
                      Index("ix_segment_transition_run", "run_id"),
                      # Who left a tier (e.g. lapsed VIPs) without scanning every transition ever made.
                      Index("ix_segment_transition_from", "dimension", "from_value", "at"))

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(nullable=False)
    customer_id: int = Field(nullable=False)
    dimension: str = Field(sa_column=Column(String(8), nullable=False))  # tier, layer, tag
    tag: str | None = Field(default=None, sa_column=Column(String(40)))
    from_value: str | None = Field(default=None, sa_column=Column(String(40)))
    to_value: str | None = Field(default=None, sa_column=Column(String(40)))
    at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    why: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONType))


class SegmentRun(SQLModel, table=True):
    """One segmentation run: its as-of date, the distributions it produced and what it changed."""

    __tablename__ = "segment_run"

    id: int | None = Field(default=None, primary_key=True)
    as_of: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))
    started_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    customers: int = 0
    distribution: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    changes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    versions: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    timings: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    # What a profile needs of the population to explain one customer: {"buyers", "has_events"}.
    population: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
