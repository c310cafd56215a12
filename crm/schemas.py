"""API request and response shapes of the core."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from crm.models import ConsentStatus, Role
from kit.channels import ConsentChannelName


class ContactRead(BaseModel):
    """Contact data: whole for admins, masked for everyone else."""

    email: str | None
    phone: str | None
    name: str | None = Field(default=None, description="the name (admins) or its initials (others)")
    push_tokens: list[str] | int = Field(description="the tokens (admins) or how many there are (others)")
    masked: bool


class CustomerRead(BaseModel):
    """A customer as the API shows it (named by the shop's id: internal row ids never leave the service)."""

    external_id: str
    contact: ContactRead
    time_zone: str
    locale: str
    birthday: date | None
    signed_up_at: datetime | None
    membership_level: str | None
    attributes: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class CustomerPage(BaseModel):
    """One page of customers; pass next_cursor back as ?cursor= for the next."""

    items: list[CustomerRead]
    next_cursor: str | None


class CustomerSearch(BaseModel):
    """A lookup by contact data, in the body so the values never sit in a URL or an access log."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"phone": "+8613800138000"},
                                                                             {"email": "ana.li@example.com"}]})

    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=40)
    cursor: str | None = Field(default=None, max_length=40, description="next_cursor of the previous page")
    limit: int = Field(default=100, ge=1, le=500)


class ConsentState(BaseModel):
    """Current consent on one channel."""

    status: ConsentStatus
    source: str
    changed_at: datetime


class ProfileRead(BaseModel):
    """The support view: the customer, consent, and every registered section."""

    customer: CustomerRead
    consent: dict[str, ConsentState]
    sections: dict[str, Any]


class ConsentUpdate(BaseModel):
    """A consent statement for one channel."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"channel": "sms", "status": "opted_out", "source": "phone-call", "at": "2026-11-28T09:30:00Z"}]})

    channel: ConsentChannelName
    status: ConsentStatus
    source: str = Field(default="api", min_length=1, max_length=64)
    at: datetime | None = None


class ConsentChangeRead(BaseModel):
    """One entry of the consent history."""

    channel: str
    status: str
    source: str
    changed_at: datetime
    recorded_at: datetime


class OrderRead(BaseModel):
    """An order as support sees it."""

    external_id: str
    ordered_at: datetime
    amount_paid: float
    discount: float
    coupon_code: str | None


class RowError(BaseModel):
    """One bad row of an import: its number (1 = the first data row), the field ('' for the row as a whole) and
    the reason."""

    row: int | None
    field: str = ""
    reason: str


class FieldError(BaseModel):
    """One field at fault in an item of a batch."""

    field: str
    reason: str


class ImportJobRead(BaseModel):
    """An import's outcome: counts and the first errors by row number."""

    id: int
    kind: str
    format: str
    source: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    rows_total: int
    rows_inserted: int
    rows_updated: int
    rows_unchanged: int
    rows_failed: int
    batches_committed: int
    errors: list[RowError] = Field(description="the first bad rows (up to 1,000), each with field and reason")
    message: str | None


class KeyCreate(BaseModel):
    """A request for a new API key."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "shop-sync", "role": "ingest"}]})

    name: str = Field(min_length=1, max_length=100)
    role: Role


class KeyRead(BaseModel):
    """A key's metadata (never the secret or its hash)."""

    id: int
    name: str
    role: Role
    key_prefix: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None


class KeyCreated(KeyRead):
    """A new key: `key` is shown this once."""

    key: str


class AuditRead(BaseModel):
    """One audit entry."""

    id: int
    at: datetime
    actor: str
    action: str
    entity: str
    entity_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class SchedulerHealth(BaseModel):
    """The scheduler's leader and heartbeat (a leader counts when its heartbeat is within the takeover time)."""

    running: bool
    leader: str | None
    leader_since: datetime | None
    heartbeat_at: datetime | None
    standbys: list[str]


class Liveness(BaseModel):
    """The process answers."""

    status: Literal["ok"]


class Health(BaseModel):
    """Liveness and readiness of the service."""

    status: Literal["ok", "degraded"]
    database: bool
    migrations_at_head: bool
    revision: str | None
    head: str
    scheduler: SchedulerHealth | None = None



class ItemOutcome(BaseModel):
    """What happened to one item of an ingestion batch."""

    model_config = ConfigDict(extra="allow")

    index: int = Field(description="the item's position in the batch, from 0")
    status: Literal["accepted", "rejected"]
    errors: list[FieldError] | None = Field(default=None, description="each field at fault, with its reason")


class IngestResult(BaseModel):
    """A batch of events, customers or orders: good items kept, bad ones reported by index."""

    accepted: int
    rejected: int
    inserted: int
    updated: int
    unchanged: int
    items: list[ItemOutcome]


class RefundResult(BaseModel):
    """A refund recorded (or replayed: the same refund id again changes nothing)."""

    order_id: str
    refund_id: str
    amount: float
    status: str
    refunded_amount: float
    net_amount: float
    replayed: bool


class ShopWebhookResult(BaseModel):
    """What a shop webhook did: the batches it wrote (or nothing, for a redelivery)."""

    model_config = ConfigDict(extra="allow")

    topic: str
    duplicate: bool = Field(description="a redelivery of a webhook already processed: acknowledged, not redone")
    customers: IngestResult | None = None
    orders: IngestResult | None = None


class EraseRequest(BaseModel):
    """Erasure needs the customer's id typed again."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"confirm": "C0000042"}]})

    confirm: str = Field(max_length=128, description="the external id again")


class ErasureResult(BaseModel):
    """What an erasure removed and kept."""

    model_config = ConfigDict(extra="allow")

    customer: str = Field(description="the external id as requested (the stored one is erased)")
    erased: list[str]
    events_deleted: int
    orders_kept_anonymised: int
    consent: str


class CustomerExport(BaseModel):
    """Everything held about one customer, contact data in clear; upper packages add their sections."""

    model_config = ConfigDict(extra="allow")

    exported_at: datetime
    customer: dict[str, Any]
    consent: dict[str, dict[str, Any]]
    consent_history: list[dict[str, Any]]


# Shapes of the ingestion bodies, for the OpenAPI document: the routes read the JSON themselves, because a batch keeps
# its good items and reports each bad one by index (a model on the route would refuse the whole batch for one).
class EventIn(BaseModel):
    """One event a shop tracks."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "unique_id": "ev-20261204-0001", "customer_id": "C0000042", "type": "cart_add",
        "time": "2026-12-04T03:15:00Z", "properties": {"sku": "SKU-1001", "price": 199}}]})

    customer_id: str = Field(max_length=128, description="the shop's customer id")
    type: str = Field(max_length=40, description="e.g. page_view, product_view, cart_add, checkout, login, signup")
    time: datetime = Field(description="when it happened (ISO 8601; UTC when no zone is given)")
    unique_id: str | None = Field(default=None, max_length=128, description="the first event with an id wins")
    properties: dict[str, Any] | None = None


class CustomerIn(BaseModel):
    """One customer identified (created, or updated field by field)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "external_id": "C0000042", "email": "ana.li@example.com", "phone": "+8613800138000", "name": "Ana Li",
        "time_zone": "Asia/Shanghai", "locale": "zh-CN", "birthday": "1990-05-17",
        "consent": {"email": "opted_in", "sms": "opted_in"}, "consent_source": "checkout"}]})

    external_id: str = Field(max_length=128)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=40, description="E.164, or national with the shop's region")
    name: str | None = Field(default=None, max_length=200)
    push_tokens: list[str] | str | None = None
    time_zone: str | None = Field(default=None, description="an IANA zone, e.g. Asia/Shanghai")
    locale: str | None = Field(default=None, description="zh-CN or en-US")
    birthday: date | None = None
    signed_up_at: datetime | None = None
    membership_level: str | None = Field(default=None, max_length=32)
    attributes: dict[str, Any] | None = None
    consent: dict[ConsentChannelName, str] | None = Field(default=None, description="channel -> opted_in|opted_out")
    consent_source: str | None = Field(default=None, max_length=64)
    consent_at: datetime | None = None


class OrderLineIn(BaseModel):
    """One line of an order."""

    sku: str = Field(max_length=64)
    qty: int = Field(ge=1)
    unit_price: float = Field(ge=0)
    list_price: float | None = Field(default=None, ge=0)
    category: str | None = Field(default=None, max_length=64)
    is_new_product: bool | None = None


class OrderIn(BaseModel):
    """One order with its lines."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "external_id": "O-20261204-17", "customer_id": "C0000042", "ordered_at": "2026-12-04T03:20:00Z",
        "amount_paid": 358, "discount": 40, "coupon_code": "CART4-8F2K", "status": "paid",
        "items": [{"sku": "SKU-1001", "qty": 2, "unit_price": 199, "list_price": 219, "category": "skincare"}]}]})

    external_id: str = Field(max_length=128)
    customer_id: str = Field(max_length=128, description="the shop's customer id")
    ordered_at: datetime
    amount_paid: float = Field(ge=0)
    discount: float | None = Field(default=None, ge=0)
    cost_of_goods: float | None = Field(default=None, ge=0)
    coupon_code: str | None = Field(default=None, max_length=40)
    status: Literal["placed", "paid", "cancelled", "partially_refunded", "refunded"] | None = None
    items: list[OrderLineIn] | None = None


class RefundLineIn(BaseModel):
    """A refunded line."""

    sku: str = Field(max_length=64)
    qty: int = Field(ge=1)


class RefundIn(BaseModel):
    """A refund, whole or partial, with its own id (the same id again changes nothing)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "refund_id": "R-7781", "amount": 199, "refunded_at": "2026-12-06T09:00:00Z",
        "items": [{"sku": "SKU-1001", "qty": 1}]}]})

    refund_id: str = Field(max_length=128)
    amount: float = Field(gt=0)
    refunded_at: datetime | None = Field(default=None, description="default: now")
    items: list[RefundLineIn] | None = None


INGEST_BODIES = {"events": EventIn, "customers": CustomerIn, "orders": OrderIn}
