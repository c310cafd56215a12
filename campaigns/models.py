"""Campaign tables: campaigns and their versions, stored templates, planned occurrences and the message ledger."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Column, Float, Index, Integer, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from kit.types import JSONType, UTCDateTime


class Campaign(SQLModel, table=True):
    """A campaign as it stands now: its status and the newest version of its specification."""

    __tablename__ = "campaign"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(120), nullable=False, unique=True))
    status: str = Field(sa_column=Column(String(12), nullable=False, index=True))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    priority: int = Field(sa_column=Column(Integer, nullable=False))
    spec: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    created_by: str = Field(sa_column=Column(String(120), nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_by: str = Field(sa_column=Column(String(120), nullable=False))


class CampaignVersion(SQLModel, table=True):
    """Every saved state of a campaign (specification and status), never overwritten."""

    __tablename__ = "campaign_version"
    __table_args__ = (UniqueConstraint("campaign_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id")
    version: int = Field(sa_column=Column(Integer, nullable=False))
    status: str = Field(sa_column=Column(String(12), nullable=False))
    spec: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    created_by: str = Field(sa_column=Column(String(120), nullable=False))


class MessageTemplate(SQLModel, table=True):
    """A template written through the API; each save is a new version, the newest is used."""

    __tablename__ = "message_template"
    __table_args__ = (UniqueConstraint("name", "channel", "locale", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(80), nullable=False))
    channel: str = Field(sa_column=Column(String(8), nullable=False))
    locale: str = Field(sa_column=Column(String(16), nullable=False))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    parts: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    # marketing (opt-out text, ad-law phrases) or transactional (no offer, no marketing content; admins only)
    kind: str = Field(default="marketing", sa_column=Column(String(16), nullable=False, server_default="marketing"))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    created_by: str = Field(sa_column=Column(String(120), nullable=False))


class CampaignOccurrence(SQLModel, table=True):
    """One planned occurrence of a campaign: planned once, with its exclusions counted per reason."""

    __tablename__ = "campaign_occurrence"
    __table_args__ = (UniqueConstraint("campaign_id", "occurrence"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id")
    occurrence: str = Field(sa_column=Column(String(32), nullable=False))
    campaign_version: int = Field(sa_column=Column(Integer, nullable=False))
    planned_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    counts: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))


class Message(SQLModel, table=True):
    """The outbox and ledger: one row per (campaign, occurrence, customer, channel), whatever retries happen.

    Planned messages count against frequency caps before they are sent; holdout rows and guard-rail skips are
    kept too, so reports know who was held out and why a customer got nothing.
    """

    __tablename__ = "message"
    __table_args__ = (
        UniqueConstraint("campaign_id", "occurrence", "customer_id", "channel", name="uq_message_outbox_key"),
        Index("ix_message_customer_send_at", "customer_id", "send_at"),
        Index("ix_message_status_send_at", "status", "send_at"),
        Index("ix_message_valid_until", "valid_until"),  # the open offers, for the discount budget
    )

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = Field(nullable=False)
    occurrence: str = Field(sa_column=Column(String(32), nullable=False))
    customer_id: int = Field(nullable=False, description="customer.id (no FK: bulk planned, see crm.models)")
    channel: str = Field(sa_column=Column(String(8), nullable=False))
    status: str = Field(sa_column=Column(String(12), nullable=False))
    reason: str | None = Field(default=None, sa_column=Column(String(40)))
    priority: int = Field(sa_column=Column(Integer, nullable=False))
    transactional: bool = Field(sa_column=Column(Boolean, nullable=False))
    send_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    expires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    template: str = Field(sa_column=Column(String(80), nullable=False))
    locale: str = Field(sa_column=Column(String(16), nullable=False))
    variant: str | None = Field(default=None, sa_column=Column(String(40)))  # A/B arm; null: no test
    offer: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONType))
    discount_value: float = Field(default=0.0, sa_column=Column(Float, nullable=False))
    coupon_code: str | None = Field(default=None, sa_column=Column(String(40)))
    valid_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    provider_id: str | None = Field(default=None, sa_column=Column(String(80), index=True))
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    # Dispatch: who holds a claimed message and until when; when the provider took it and what came back.
    provider: str | None = Field(default=None, sa_column=Column(String(16)))
    worker: str | None = Field(default=None, sa_column=Column(String(64)))
    lease_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    sent_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    delivered_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    opened_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    clicked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    # The coupon's redemption: the order that used it and the discount it really granted (counted in the budget).
    redeemed_order_id: int | None = Field(default=None, sa_column=Column(Integer))
    redeemed_discount: float | None = Field(default=None, sa_column=Column(Float))
    redeemed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


class CallTask(SQLModel, table=True):
    """A VIP phone call for a support agent: created when a phone message is dispatched; its outcome is the delivery."""

    __tablename__ = "call_task"

    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(sa_column=Column(Integer, nullable=False, unique=True))
    customer_id: int = Field(sa_column=Column(Integer, nullable=False, index=True))
    campaign_id: int = Field(sa_column=Column(Integer, nullable=False))
    status: str = Field(sa_column=Column(String(12), nullable=False, index=True))  # open, claimed, done
    script: str = Field(sa_column=Column(Text, nullable=False))
    claimed_by: str | None = Field(default=None, sa_column=Column(String(120)))
    claimed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    outcome: str | None = Field(default=None, sa_column=Column(String(20)))
    notes: str | None = Field(default=None, sa_column=Column(Text))
    done_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class WebhookReceipt(SQLModel, table=True):
    """Provider events already handled (by the provider's event id): a repeated delivery changes nothing."""

    __tablename__ = "webhook_receipt"
    __table_args__ = (UniqueConstraint("provider", "event_id", name="uq_webhook_receipt"),)

    id: int | None = Field(default=None, primary_key=True)
    provider: str = Field(sa_column=Column(String(16), nullable=False))
    event_id: str = Field(sa_column=Column(String(120), nullable=False))
    received_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class Conversion(SQLModel, table=True):
    """An order attributed to a message it followed within the attribution window (one touch per order)."""

    __tablename__ = "conversion"

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(sa_column=Column(Integer, nullable=False, unique=True))
    message_id: int = Field(sa_column=Column(Integer, nullable=False, index=True))
    campaign_id: int = Field(sa_column=Column(Integer, nullable=False, index=True))
    customer_id: int = Field(sa_column=Column(Integer, nullable=False))
    channel: str = Field(sa_column=Column(String(8), nullable=False))
    touch: str = Field(sa_column=Column(String(8), nullable=False))
    ordered_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    revenue: float = Field(sa_column=Column(Float, nullable=False))
    discount: float = Field(sa_column=Column(Float, nullable=False))
    attributed_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class GuardRailVersion(SQLModel, table=True):
    """Every saved state of the guard-rail settings (caps, quiet hours, ceilings, keywords), never overwritten."""

    __tablename__ = "guard_rail_version"

    id: int | None = Field(default=None, primary_key=True)
    version: int = Field(sa_column=Column(Integer, nullable=False, unique=True))
    settings: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    created_by: str = Field(sa_column=Column(String(120), nullable=False))


def journey_sender(journey_id: int) -> int:
    """The outbox's campaign_id of a journey's messages: the journey id negated (campaign ids are positive), so caps,
    the exactly-once key, attribution and dispatch treat a journey's sends exactly like a campaign's."""
    return -journey_id


class Journey(SQLModel, table=True):
    """A journey as it stands now: its status and the newest version of its definition."""

    __tablename__ = "journey"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(120), nullable=False, unique=True))
    status: str = Field(sa_column=Column(String(12), nullable=False, index=True))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    priority: int = Field(sa_column=Column(Integer, nullable=False))
    spec: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    created_by: str = Field(sa_column=Column(String(120), nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_by: str = Field(sa_column=Column(String(120), nullable=False))


class JourneyVersion(SQLModel, table=True):
    """Every saved definition of a journey, never overwritten: enrollments run on the version they entered."""

    __tablename__ = "journey_version"
    __table_args__ = (UniqueConstraint("journey_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    journey_id: int = Field(foreign_key="journey.id")
    version: int = Field(sa_column=Column(Integer, nullable=False))
    status: str = Field(sa_column=Column(String(12), nullable=False))
    spec: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    created_by: str = Field(sa_column=Column(String(120), nullable=False))


class JourneyEnrollment(SQLModel, table=True):
    """One customer's way through one journey version: where they are, when they wake, what happened so far.

    `entry_key` names what let them in (an event, an order, a date) so the same entry never enrolls twice; `seq`
    counts the steps taken, and each step taken is a `journey_step` row keyed (enrollment, seq): exactly once."""

    __tablename__ = "journey_enrollment"
    __table_args__ = (UniqueConstraint("journey_id", "customer_id", "entry_key", name="uq_journey_entry"),
                      Index("ix_journey_enrollment_due", "status", "wake_at"),
                      Index("ix_journey_enrollment_customer", "customer_id"))

    id: int | None = Field(default=None, primary_key=True)
    journey_id: int = Field(nullable=False)
    version: int = Field(sa_column=Column(Integer, nullable=False))
    customer_id: int = Field(nullable=False)
    # pending (entry not yet confirmed), active, holdout, converted, completed, exited, cancelled
    status: str = Field(sa_column=Column(String(12), nullable=False))
    step_id: str | None = Field(default=None, sa_column=Column(String(40)))
    seq: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    wake_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    entry_key: str = Field(sa_column=Column(String(80), nullable=False))
    entered_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    ended_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    end_reason: str | None = Field(default=None, sa_column=Column(String(40)))
    context: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class JourneyStep(SQLModel, table=True):
    """One step an enrollment took: what it was, how it came out and why (a message sent, a rail's refusal)."""

    __tablename__ = "journey_step"
    __table_args__ = (UniqueConstraint("enrollment_id", "seq", name="uq_journey_step"),
                      Index("ix_journey_step_journey", "journey_id", "step_id"))

    id: int | None = Field(default=None, primary_key=True)
    enrollment_id: int = Field(nullable=False)
    journey_id: int = Field(nullable=False)
    seq: int = Field(sa_column=Column(Integer, nullable=False))
    step_id: str = Field(sa_column=Column(String(40), nullable=False))
    kind: str = Field(sa_column=Column(String(12), nullable=False))
    outcome: str = Field(sa_column=Column(String(48), nullable=False))
    reason: str | None = Field(default=None, sa_column=Column(String(40)))
    message_id: int | None = Field(default=None, sa_column=Column(Integer))
    at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class UpliftModelVersion(SQLModel, table=True):
    """A per-customer uplift model fitted on past arms of one segment (kind:channel:offer), with its boosters."""

    __tablename__ = "uplift_model"

    id: int | None = Field(default=None, primary_key=True)
    segment: str = Field(sa_column=Column(String(60), nullable=False, index=True))
    status: str = Field(sa_column=Column(String(12), nullable=False))  # current, retired
    trained_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    members: int = Field(sa_column=Column(Integer, nullable=False))
    metrics: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    content: str = Field(sa_column=Column(Text, nullable=False))


class UpliftScore(SQLModel, table=True):
    """Each customer's predicted uplift per segment, refreshed nightly by the current model of the segment."""

    __tablename__ = "uplift_score"

    customer_id: int = Field(sa_column=Column(Integer, primary_key=True))
    segment: str = Field(sa_column=Column(String(60), primary_key=True))
    uplift: float = Field(sa_column=Column(Float, nullable=False))
    model_id: int = Field(sa_column=Column(Integer, nullable=False))
    scored_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
