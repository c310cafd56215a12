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
