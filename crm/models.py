"""Core tables: customers, consent (current and history), orders, items, events, keys, console sessions, audit, imports."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

from kit.channels import CHANNELS
from kit.types import JSONType, UTCDateTime

MONEY = Numeric(14, 2)


# The channels consent is kept for, as the channel registry declares them (kit.channels).
Channel = StrEnum("Channel", {name: name for name in CHANNELS.consent_channels()})
Channel.__doc__ = "Contact channels that consent is kept for (the registry's built-in consent channels)."


class ConsentStatus(StrEnum):
    """A customer's stance on one channel."""

    opted_in = "opted_in"
    opted_out = "opted_out"


class Role(StrEnum):
    """API key roles."""

    admin = "admin"
    marketer = "marketer"
    support = "support"
    scheduler = "scheduler"
    ingest = "ingest"  # server-to-server: writes customer data, reads nothing


class OrderStatus(StrEnum):
    """Where an order is in its life; cancelled orders count for nothing, refunds are netted off spend."""

    placed = "placed"
    paid = "paid"
    cancelled = "cancelled"
    partially_refunded = "partially_refunded"
    refunded = "refunded"


class Customer(SQLModel, table=True):
    """A shop's customer; contact data only as ciphertext plus a keyed hash for lookup."""

    __tablename__ = "customer"

    id: int | None = Field(default=None, primary_key=True)
    external_id: str = Field(sa_column=Column(String(128), nullable=False, unique=True))
    email_ciphertext: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    email_hash: str | None = Field(default=None, sa_column=Column(String(64), index=True))
    phone_ciphertext: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    phone_hash: str | None = Field(default=None, sa_column=Column(String(64), index=True))
    name_ciphertext: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    name_hash: str | None = Field(default=None, sa_column=Column(String(64), index=True))
    push_tokens_ciphertext: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    push_tokens_hash: str | None = Field(default=None, sa_column=Column(String(64)))
    time_zone: str = Field(sa_column=Column(String(64), nullable=False))
    locale: str = Field(sa_column=Column(String(16), nullable=False))
    birthday: date | None = None
    signed_up_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    membership_level: str | None = Field(default=None, sa_column=Column(String(32)))
    attributes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class Consent(SQLModel, table=True):
    """Current consent per customer and channel: a projection of the consent_change history."""

    __tablename__ = "consent"

    customer_id: int = Field(foreign_key="customer.id", primary_key=True)
    channel: str = Field(sa_column=Column(String(8), primary_key=True))
    status: str = Field(sa_column=Column(String(12), nullable=False))
    source: str = Field(sa_column=Column(String(64), nullable=False))
    changed_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class ConsentChange(SQLModel, table=True):
    """Append-only consent history: every opt-in and opt-out with its source."""

    __tablename__ = "consent_change"
    __table_args__ = (Index("ix_consent_change_customer_channel_at", "customer_id", "channel", "changed_at"),)

    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id")
    channel: str = Field(sa_column=Column(String(8), nullable=False))
    status: str = Field(sa_column=Column(String(12), nullable=False))
    source: str = Field(sa_column=Column(String(64), nullable=False))
    changed_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    recorded_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


# The bulk fact tables (orders, order_item, event) carry no database-level foreign keys: the row-by-row
# FK check cost ~4 s per million imported rows (half the load time). The importer resolves every reference
# and reports unknown ones, and customers are never deleted (erasure anonymises them in place), so the
# references still only ever point left, to customer.id / orders.id.


class Order(SQLModel, table=True):
    """A purchase; money in the shop's currency."""

    __tablename__ = "orders"
    # The coupon index: a redeemed coupon stops counting as an open offer against the discount budget.
    __table_args__ = (Index("ix_orders_customer_ordered_at", "customer_id", "ordered_at"),
                      Index("ix_orders_coupon_code", "coupon_code"))

    id: int | None = Field(default=None, primary_key=True)
    external_id: str = Field(sa_column=Column(String(128), nullable=False, unique=True))
    customer_id: int = Field(description="customer.id (no FK, see above)")
    ordered_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    amount_paid: Decimal = Field(sa_column=Column(MONEY, nullable=False))
    discount: Decimal = Field(default=Decimal(0), sa_column=Column(MONEY, nullable=False))
    cost_of_goods: Decimal | None = Field(default=None, sa_column=Column(MONEY))
    coupon_code: str | None = Field(default=None, sa_column=Column(String(64)))
    status: str = Field(default="paid", sa_column=Column(String(20), nullable=False, server_default="paid"))
    refunded_amount: Decimal = Field(default=Decimal(0), sa_column=Column(MONEY, nullable=False, server_default="0"))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class OrderRefund(SQLModel, table=True):
    """One refund of an order (whole or partial): the amount and the refunded lines; the order keeps the total."""

    __tablename__ = "order_refund"
    __table_args__ = (Index("ix_order_refund_order", "order_id"),)

    id: int | None = Field(default=None, primary_key=True)
    external_id: str = Field(sa_column=Column(String(128), nullable=False, unique=True))
    order_id: int = Field(description="orders.id")
    amount: Decimal = Field(sa_column=Column(MONEY, nullable=False))
    refunded_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    items: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSONType, nullable=False))
    reason: str | None = Field(default=None, sa_column=Column(String(200)))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class OrderItem(SQLModel, table=True):
    """One line of an order; bought at list price when unit_price >= list_price."""

    __tablename__ = "order_item"
    __table_args__ = (UniqueConstraint("order_id", "line_no", name="uq_order_item_order_line"),)

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(description="orders.id (no FK, see above)")
    line_no: int
    sku: str = Field(sa_column=Column(String(64), nullable=False))
    category: str | None = Field(default=None, sa_column=Column(String(64)))
    qty: int
    unit_price: Decimal = Field(sa_column=Column(MONEY, nullable=False))
    list_price: Decimal = Field(sa_column=Column(MONEY, nullable=False))
    is_new_product: bool = False


class Event(SQLModel, table=True):
    """A behavioural event (login, view, cart_add, cart_abandon, search, review, share, push_open …)."""

    __tablename__ = "event"
    __table_args__ = (Index("ix_event_customer_occurred_at", "customer_id", "occurred_at"),)

    id: int | None = Field(default=None, primary_key=True)
    external_id: str = Field(sa_column=Column(String(200), nullable=False, unique=True))
    customer_id: int = Field(description="customer.id (no FK, see above)")
    occurred_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    type: str = Field(sa_column=Column(String(32), nullable=False))
    properties: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))


class ApiKey(SQLModel, table=True):
    """An API key: only its keyed hash is stored; the key itself is shown once."""

    __tablename__ = "api_key"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(100), nullable=False))
    role: str = Field(sa_column=Column(String(16), nullable=False))
    key_prefix: str = Field(sa_column=Column(String(16), nullable=False))
    key_hash: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    created_by: str = Field(sa_column=Column(String(120), nullable=False))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    last_used_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


class ConsoleSession(SQLModel, table=True):
    """A console sign-in: the cookie names this row, so signing out (or the key's revocation) ends it at once."""

    __tablename__ = "console_session"

    id: str = Field(sa_column=Column(String(32), primary_key=True))
    key_id: int = Field(sa_column=Column(Integer, nullable=False, index=True))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


class AuditLog(SQLModel, table=True):
    """Who changed what, when, with the state before and after."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_entity", "entity", "entity_id"),)

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))
    actor: str = Field(sa_column=Column(String(120), nullable=False))
    action: str = Field(sa_column=Column(String(64), nullable=False))
    entity: str = Field(sa_column=Column(String(64), nullable=False))
    entity_id: str | None = Field(default=None, sa_column=Column(String(128)))
    before: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONType))
    after: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONType))


class ImportJob(SQLModel, table=True):
    """One bulk import: counts, the first reported row errors and its outcome."""

    __tablename__ = "import_job"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(sa_column=Column(String(16), nullable=False))
    source: str = Field(sa_column=Column(String(300), nullable=False))
    format: str = Field(sa_column=Column(String(8), nullable=False))
    status: str = Field(sa_column=Column(String(12), nullable=False))
    created_by: str = Field(sa_column=Column(String(120), nullable=False))
    started_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    rows_total: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_unchanged: int = 0
    rows_failed: int = 0
    batches_committed: int = 0
    errors: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSONType, nullable=False))
    message: str | None = Field(default=None, sa_column=Column(String(500)))


class CustomerDay(SQLModel, table=True):
    """Derived: one customer's orders and events of one UTC day, aggregated (see crm.state); the day's last
    moments are kept as microseconds since the epoch (crm.state.MOMENTS)."""

    __tablename__ = "customer_day"
    __table_args__ = (Index("ix_customer_day_day", "day"),)

    customer_id: int = Field(primary_key=True)
    day: date = Field(primary_key=True)
    orders: int = 0
    net_spend: Decimal = Field(default=Decimal(0), sa_column=Column(MONEY, nullable=False))
    discounted_orders: int = 0
    new_product_orders: int = 0
    full_price_after_discount: int = 0
    zero_orders: int = 0
    first_order_at: int | None = Field(default=None, sa_column=Column(BigInteger))
    last_order_at: int | None = Field(default=None, sa_column=Column(BigInteger))
    last_order_net: Decimal | None = Field(default=None, sa_column=Column(MONEY))
    last_discounted_at: int | None = Field(default=None, sa_column=Column(BigInteger))
    events: int = 0
    logins: int = 0
    views: int = 0
    cart_adds: int = 0
    cart_abandons: int = 0
    last_event_at: int | None = Field(default=None, sa_column=Column(BigInteger))
    last_login_at: int | None = Field(default=None, sa_column=Column(BigInteger))
    last_abandon_at: int | None = Field(default=None, sa_column=Column(BigInteger))
    discount: Decimal = Field(default=Decimal(0), sa_column=Column(MONEY, nullable=False))
    cost_known_value: Decimal = Field(default=Decimal(0), sa_column=Column(MONEY, nullable=False))
    cost_of_goods: Decimal = Field(default=Decimal(0), sa_column=Column(MONEY, nullable=False))


class CustomerState(SQLModel, table=True):
    """Derived: what the nightly steps and the profile need of one customer, kept current on every write.

    Lifetime columns cover every row written so far; the window columns are as of the state clock's `as_of`
    (days before it), which the nightly step advances, recomputing only the customers whose windows moved.
    """

    __tablename__ = "customer_state"

    customer_id: int = Field(primary_key=True)
    lifetime_orders: int = 0
    lifetime_spend: Decimal = Field(default=Decimal(0), sa_column=Column(MONEY, nullable=False))
    lifetime_first_order_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    lifetime_last_order_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    lifetime_last_event_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    first_order_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    last_order_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    orders_total: int = 0
    monetary_total: Decimal = Field(default=Decimal(0), sa_column=Column(MONEY, nullable=False))
    frequency: int = 0
    monetary: Decimal = Field(default=Decimal(0), sa_column=Column(MONEY, nullable=False))
    orders_30d: int = 0
    discounted_in_window: int = 0
    new_product_orders: int = 0
    full_price_streak: int = 0
    last_event_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    last_login_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    last_abandon_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    logins_30d: int = 0
    views_30d: int = 0
    cart_abandons_30d: int = 0
    newest_busy_month: date | None = None
    # The churn features as of the clock (crm.state.CHURN_*): two years of history, the model's windows.
    churn_first_order_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    churn_orders: int = 0
    churn_spend: Decimal = Field(default=Decimal(0), sa_column=Column(MONEY, nullable=False))
    churn_zero_orders: int = 0
    churn_last_order_value: Decimal | None = Field(default=None, sa_column=Column(MONEY))
    churn_purchase_days: int = 0
    churn_gap_mean: float | None = Field(default=None, sa_column=Column(Float))
    churn_gap_std: float | None = Field(default=None, sa_column=Column(Float))
    churn_last_gap: float | None = Field(default=None, sa_column=Column(Float))
    churn_discounted_orders: int = 0
    churn_new_product_orders: int = 0
    churn_full_price_streak: int = 0
    churn_last_event_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    churn_orders_30d: int = 0
    churn_orders_90d: int = 0
    churn_orders_180d: int = 0
    churn_orders_365d: int = 0
    churn_spend_30d: Decimal = Field(default=Decimal(0), sa_column=Column(MONEY, nullable=False))
    churn_spend_90d: Decimal = Field(default=Decimal(0), sa_column=Column(MONEY, nullable=False))
    churn_spend_180d: Decimal = Field(default=Decimal(0), sa_column=Column(MONEY, nullable=False))
    churn_spend_365d: Decimal = Field(default=Decimal(0), sa_column=Column(MONEY, nullable=False))
    churn_login_7d: int = 0
    churn_login_30d: int = 0
    churn_login_90d: int = 0
    churn_view_7d: int = 0
    churn_view_30d: int = 0
    churn_view_90d: int = 0
    churn_cart_add_7d: int = 0
    churn_cart_add_30d: int = 0
    churn_cart_add_90d: int = 0
    churn_cart_abandon_7d: int = 0
    churn_cart_abandon_30d: int = 0
    churn_cart_abandon_90d: int = 0
    # Planning's money over the trailing year (crm.state.MONEY_DAYS): spend and orders are churn_*_365d.
    discount_365d: Decimal = Field(default=Decimal(0), sa_column=Column(MONEY, nullable=False))
    cost_known_value_365d: Decimal = Field(default=Decimal(0), sa_column=Column(MONEY, nullable=False))
    cost_of_goods_365d: Decimal = Field(default=Decimal(0), sa_column=Column(MONEY, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class StateClock(SQLModel, table=True):
    """The one row saying which day boundary the state's window columns are computed for, and with which windows."""

    __tablename__ = "state_clock"

    id: int = Field(default=1, primary_key=True)
    as_of: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    advanced_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class CustomerChange(SQLModel, table=True):
    """A state-change event: a customer's state moved on a write (what changed), for later packages to act on."""

    __tablename__ = "customer_change"
    __table_args__ = (Index("ix_customer_change_customer", "customer_id"),)

    id: int | None = Field(default=None, primary_key=True)
    customer_id: int
    at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False, index=True))
    cause: str = Field(sa_column=Column(String(16), nullable=False))
    processed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, index=True))


class ShopWebhookReceipt(SQLModel, table=True):
    """A shop webhook already processed (Shopify's X-Shopify-Webhook-Id): a redelivery is acknowledged, not redone."""

    __tablename__ = "shop_webhook_receipt"

    source: str = Field(sa_column=Column(String(16), primary_key=True))
    webhook_id: str = Field(sa_column=Column(String(128), primary_key=True))
    topic: str = Field(sa_column=Column(String(64), nullable=False))
    received_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class CustomerActivity(SQLModel, table=True):
    """Something a customer just did or became (an event, an order, a refund, a signup, a tier, tag or risk move),
    kept until a consumer that reacts to it (journeys) claims it; only kinds someone listens to are recorded."""

    __tablename__ = "customer_activity"

    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(nullable=False)
    kind: str = Field(sa_column=Column(String(16), nullable=False))
    name: str | None = Field(default=None, sa_column=Column(String(64)))  # event type, tier, layer or tag
    ref_id: int | None = Field(default=None, sa_column=Column(BigInteger))  # the event, order or refund row
    properties: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONType))
    occurred_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    recorded_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class ActivityInterest(SQLModel, table=True):
    """A kind of activity (and name, '*' for any) some consumer reacts to: the write path records only these."""

    __tablename__ = "activity_interest"

    kind: str = Field(sa_column=Column(String(16), primary_key=True))
    name: str = Field(sa_column=Column(String(64), primary_key=True))
