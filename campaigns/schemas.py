"""API request and response shapes of campaigns, templates, the outbox, call tasks, guard rails and journeys (the
definitions themselves are CampaignSpec and JourneySpec)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kit.channels import ChannelName

Status = Literal["draft", "active", "paused", "archived"]


class _Open(BaseModel):
    """A response whose named fields are checked; further fields (e.g. a report's details) pass through."""

    model_config = ConfigDict(extra="allow")


class StatusChange(BaseModel):
    """Move a campaign or journey to another status."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"status": "active"}]})

    status: Status


class CampaignRead(_Open):
    """A campaign as it stands: its status and newest specification (a CampaignSpec)."""

    id: int
    name: str
    status: Status
    version: int = Field(description="also the ETag: send it back in If-Match to update")
    priority: int
    spec: dict[str, Any]
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str


class CampaignWritten(CampaignRead):
    """A campaign after a change, with what the fairness gate warned about."""

    fairness_warnings: list[Any] = []


class VersionRead(_Open):
    """A saved state of a campaign or journey (never overwritten)."""

    id: int
    version: int
    status: Status
    spec: dict[str, Any]
    created_at: datetime
    created_by: str


class DryRun(_Open):
    """What an occurrence would send, without writing anything: counts per channel and every exclusion's count."""

    campaign_id: int
    campaign: str
    occurrence: str | None
    audience: int
    recipients: int
    messages: int
    per_channel: dict[str, int]
    excluded: dict[str, int]
    samples: list[dict[str, Any]] = []


class PlanResult(_Open):
    """An occurrence planned into the outbox (a second call adds nothing)."""

    campaign_id: int
    occurrence: str | None
    added: int = 0


class Eligibility(_Open):
    """Whether one customer would get an occurrence, and why."""

    campaign_id: int
    customer: str
    occurrence: str | None
    in_audience: bool
    would_receive: bool
    reasons: list[Any]


class TemplateBody(BaseModel):
    """A template version to save: its parts render with Jinja2 against the message context."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "name": "winback_sms", "channel": "sms", "locale": "zh-CN", "kind": "marketing",
        "parts": {"body": "好久不见！{{ offer.description }}，券码 {{ offer.code }}。回复TD退订"}}]})

    name: str = Field(min_length=1, max_length=80)
    channel: ChannelName
    locale: str = Field(max_length=16, description="zh-CN or en-US")
    kind: Literal["marketing", "transactional"] = "marketing"
    parts: dict[str, str] = Field(description="per channel: sms body; email subject, html, text; push title, body")


class TemplateRead(_Open):
    """A stored template version."""

    id: int
    name: str
    channel: str
    locale: str
    version: int
    kind: str
    parts: dict[str, Any]
    created_at: datetime
    created_by: str


class TemplateSaved(TemplateRead):
    """A saved template with its sample rendering (and, for SMS, encoding and segment count)."""

    sample: dict[str, Any]


class TemplateListed(_Open):
    """A template the service can send: stored (with its id and version) or shipped as a file."""

    id: int | None
    name: str
    channel: str
    locale: str
    version: int | None
    origin: str
    kind: str


class TemplatePreview(_Open):
    """A template rendered for one customer."""

    template_id: int
    customer: str
    rendered: dict[str, str]


class MessageRead(_Open):
    """An outbox row: what was (or will be) sent to whom, when, and what became of it."""

    id: int
    customer: str | None = Field(description="the shop's customer id")
    campaign_id: int
    occurrence: str
    channel: str
    status: str
    reason: str | None
    send_at: datetime
    template: str
    locale: str
    offer: dict[str, Any] | None
    discount_value: float
    coupon_code: str | None
    attempts: int
    created_at: datetime
    updated_at: datetime


class GuardRailsRead(BaseModel):
    """The guard rails in force and their version (also the ETag)."""

    version: int
    settings: dict[str, Any] = Field(description="caps, quiet hours, discount ceilings, keywords, opt-out texts")


class GuardRailVersion(_Open):
    """A stored version of the guard rails."""

    id: int
    version: int
    settings: dict[str, Any]
    created_at: datetime
    created_by: str


class UpliftModelRead(_Open):
    """An uplift model of one segment with its held-out measurement."""

    id: int | None = None
    segment: str
    metrics: dict[str, Any] | None = None


class TaskRead(_Open):
    """A VIP call task (the number in full only for the agent holding it)."""

    id: int
    status: Literal["open", "claimed", "done"]
    campaign: str | None
    customer: str | None
    phone: str | None
    script: str
    claimed_by: str | None
    outcome: str | None
    created_at: datetime


class TaskOutcome(BaseModel):
    """The call's outcome."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"outcome": "reached", "notes": "asked for the presale date"}]})

    outcome: Literal["reached", "voicemail", "no_answer", "wrong_number", "declined"] = Field(
        description="declined also opts the customer out of calls")
    notes: str | None = Field(default=None, max_length=2000)


class MessageCounts(BaseModel):
    """Messages per channel and status."""

    model_config = ConfigDict(extra="allow", json_schema_extra={
        "additionalProperties": {"type": "object", "additionalProperties": {"type": "integer"}}})


class TwilioStatusResult(_Open):
    """What a Twilio status callback changed (a repeated callback: `duplicate`, nothing changed)."""

    message_id: int | None = None
    status: str | None = None
    changed: bool = False
    duplicate: bool = False


class WinnerChoice(BaseModel):
    """The A/B arm to send to everyone."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"variant": "b"}]})

    variant: str = Field(max_length=40, description="the declared winner's name")


class JourneyRead(CampaignRead):
    """A journey as it stands: its status and newest definition (a JourneySpec)."""


class MoveRequest(BaseModel):
    """Move customers in flight on an older version onto the current one, step by step."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"from_version": 2, "step_map": {"push_1h": "push_1h", "sms_coupon": "sms_coupon_v3"}}]})

    from_version: int = Field(ge=1)
    step_map: dict[str, str] = Field(description="old step id -> new step id")


class MoveResult(_Open):
    """How many enrollments moved."""

    journey_id: int
    from_version: int
    to_version: int
    moved: int


class SimulateRequest(BaseModel):
    """Whose timeline to simulate."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"customer": "C0000042"}]})

    customer: str = Field(max_length=128, description="the customer's external id")


class Simulation(_Open):
    """The timeline one customer would take from now, with the guard rails' decisions (nothing is written)."""

    journey_id: int
    customer: str
    enters: bool
    timeline: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []


class Funnel(_Open):
    """Per step: taken, sent, not sent by reason, waiting now; conversions; uplift against the holdout."""

    journey_id: int
    name: str
    version: int
    enrollments: dict[str, int]
    steps: list[dict[str, Any]]
    uplift: dict[str, Any]


class Enrollment(_Open):
    """A customer's enrollment in a journey: where they are, the steps taken and the next wake-up."""

    id: int
    journey_id: int
    journey: str | None
    version: int
    status: str
    step: str | None
    next_wake_at: datetime | None
    entered_at: datetime
    steps: list[dict[str, Any]]


class JsonSchemaDocument(_Open):
    """A JSON Schema (2020-12) document."""

    title: str | None = None
    type: str | None = None
    properties: dict[str, Any] | None = None


