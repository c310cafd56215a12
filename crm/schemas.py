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
    """A customer as the API shows it."""

    id: int
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

    model_config = ConfigDict(extra="forbid")

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
    errors: list[dict[str, Any]]
    message: str | None


class KeyCreate(BaseModel):
    """A request for a new API key."""

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

