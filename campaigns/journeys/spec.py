"""A journey's definition as marketers write it: entry, steps, goal (validated; errors name the step and field)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from campaigns.authoring.spec import Audience, ChannelStep, Offer, uplift_segment

StepId = Annotated[str, Field(pattern=r"^[a-z0-9_]{1,40}$")]
TriggerKind = Literal["event", "signup", "first_order", "order", "refund", "entered_tier", "entered_layer",
                      "entered_tag", "at_risk", "birthday", "days_after_signup"]
DATE_TRIGGERS = ("birthday", "days_after_signup")
ACTIVITY_OF_TRIGGER = {"event": "event", "signup": "signup", "first_order": "order", "order": "order",
                       "refund": "refund", "entered_tier": "tier", "entered_layer": "layer", "entered_tag": "tag",
                       "at_risk": "at_risk"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PropertyFilter(_Strict):
    """A condition on one property of the triggering event."""

    property: str = Field(min_length=1, max_length=64)
    op: Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "exists"] = "eq"
    value: Any = None

    @model_validator(mode="after")
    def _value_fits(self) -> PropertyFilter:
        if self.op == "in" and not isinstance(self.value, list):
            raise ValueError("op 'in' needs a list value")
        if self.op in ("gt", "gte", "lt", "lte") and not isinstance(self.value, int | float):
            raise ValueError(f"op '{self.op}' needs a number")
        return self

    def holds(self, properties: dict[str, Any]) -> bool:
        """Whether the event's properties pass this filter."""
        if self.op == "exists":
            return self.property in properties
        if self.property not in properties:
            return self.op == "ne"
        found = properties[self.property]
        if self.op == "eq":
            return found == self.value
        if self.op == "ne":
            return found != self.value
        if self.op == "in":
            return found in self.value
        if not isinstance(found, int | float) or isinstance(found, bool):
            return False
        return {"gt": found > self.value, "gte": found >= self.value, "lt": found < self.value,
                "lte": found <= self.value}[self.op]


class Unless(_Strict):
    """'…and not Y within T': the entry is confirmed only when Y did not follow within the time."""

    kind: Literal["order", "event"] = "order"
    event: str | None = Field(default=None, max_length=64, description="kind event: its type")
    within_minutes: int = Field(ge=1, le=60 * 24 * 30)

    @model_validator(mode="after")
    def _event_named(self) -> Unless:
        if self.kind == "event" and not self.event:
            raise ValueError("kind 'event' needs 'event'")
        return self


class Trigger(_Strict):
    """What lets a customer in."""

    kind: TriggerKind
    event: str | None = Field(default=None, max_length=64, description="kind event: the event type")
    where: list[PropertyFilter] = Field(default=[], max_length=10)
    value: str | None = Field(default=None, max_length=64, description="entered_tier/layer/tag: which one")
    days: int | None = Field(default=None, ge=0, le=3650, description="days_after_signup: N")
    unless: Unless | None = None

    @model_validator(mode="after")
    def _complete(self) -> Trigger:
        if self.kind == "event" and not self.event:
            raise ValueError("trigger kind 'event' needs 'event'")
        if self.kind.startswith("entered_") and not self.value:
            raise ValueError(f"trigger kind '{self.kind}' needs 'value'")
        if self.kind == "days_after_signup" and self.days is None:
            raise ValueError("trigger kind 'days_after_signup' needs 'days'")
        if self.where and self.kind != "event":
            raise ValueError("'where' filters an event's properties: only with kind 'event'")
        if self.unless is not None and self.kind in DATE_TRIGGERS:
            raise ValueError("'unless' follows an activity; a date trigger has none")
        return self


class Reentry(_Strict):
    """Whether a customer who has been through the journey may enter again."""

    rule: Literal["once", "every", "unlimited"] = "unlimited"
    days: int | None = Field(default=None, ge=1, le=3650, description="rule every: at most once per N days")

    @model_validator(mode="after")
    def _days(self) -> Reentry:
        if self.rule == "every" and self.days is None:
            raise ValueError("rule 'every' needs 'days'")
        return self


class Entry(_Strict):
    """Trigger, re-entry rule and who may enter."""

    trigger: Trigger
    reentry: Reentry = Reentry()
    audience: Audience = Audience()


class Goal(_Strict):
    """The journey's goal: reaching it ends the enrollment wherever it is, counted as converted."""

    kind: Literal["order", "first_order", "none"] = "order"


class Duration(_Strict):
    """A length of time (the parts add up)."""

    days: int = Field(default=0, ge=0, le=365)
    hours: int = Field(default=0, ge=0, le=24 * 365)
    minutes: int = Field(default=0, ge=0, le=60 * 24 * 365)

    @property
    def delta(self) -> dt.timedelta:
        """As a timedelta."""
        return dt.timedelta(days=self.days, hours=self.hours, minutes=self.minutes)

    @model_validator(mode="after")
    def _positive(self) -> Duration:
        if self.delta <= dt.timedelta(0):
            raise ValueError("a duration must be longer than zero")
        return self


class PurchaseGap(_Strict):
    """A wait as long as the customer's own purchase gap (mean days between their orders), bounded; customers with
    a single order wait `fallback_days`."""

    fallback_days: int = Field(default=30, ge=1, le=365)
    min_days: int = Field(default=7, ge=1, le=365)
    max_days: int = Field(default=90, ge=1, le=730)

    @model_validator(mode="after")
    def _bounds(self) -> PurchaseGap:
        if self.min_days > self.max_days:
            raise ValueError("min_days must not exceed max_days")
        return self


class SendStep(_Strict):
    """Send a message on the first channel that may take it (fallback in list order), with an optional offer."""

    id: StepId
    label: str = Field(default="", max_length=120)
    type: Literal["send"]
    channels: list[ChannelStep] = Field(min_length=1, max_length=4)
    offer: Offer | None = None
    next: StepId | None = Field(default=None, description="the step after a send (none: the journey ends)")
    when_blocked: Literal["skip", "wait"] = Field(
        default="skip", description="a cap or quiet hours in the way: skip to `not_sent` (or next), or wait for the "
                                    "rail to allow it (up to max_wait_days), then skip")
    max_wait_days: int = Field(default=3, ge=1, le=30)
    not_sent: StepId | None = Field(default=None, description="the step when no message could be sent (default: next)")


class CallStep(_Strict):
    """A call task for support (the phone channel's call list), under the phone cap."""

    id: StepId
    label: str = Field(default="", max_length=120)
    type: Literal["call"]
    template: str = Field(min_length=1, max_length=80)
    offer: Offer | None = None
    next: StepId | None = None
    not_sent: StepId | None = None


class WaitStep(_Strict):
    """Wait a duration, until a local time of day in the customer's zone, or until an event (with a timeout)."""

    id: StepId
    label: str = Field(default="", max_length=120)
    type: Literal["wait"]
    duration: Duration | None = None
    until_local_time: dt.time | None = Field(default=None, description="the next such wall-clock time for the customer")
    until_event: str | None = Field(default=None, max_length=64,
                                    description="an event type, or 'order': wake when it happens")
    purchase_gap: PurchaseGap | None = Field(default=None, description="the customer's own mean days between orders, "
                                                                       "counted from the entry")
    timeout: Duration | None = Field(default=None, description="until_event: how long to wait at most")
    next: StepId | None = None
    on_event: StepId | None = Field(default=None, description="until_event: the step when it happened")

    @model_validator(mode="after")
    def _one_kind(self) -> WaitStep:
        kinds = [k for k in ("duration", "until_local_time", "until_event", "purchase_gap")
                 if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a wait needs exactly one of duration, until_local_time, until_event, purchase_gap")
        if self.until_event is not None and (self.timeout is None or self.on_event is None):
            raise ValueError("until_event needs 'timeout' and 'on_event'")
        return self


Condition = Literal["ordered_since_entry", "opened_last", "clicked_last", "has_tag", "tier_in", "layer_in",
                    "at_risk", "risk_above", "attribute_equals"]


class BranchStep(_Strict):
    """Go one way or the other on a condition about the customer now."""

    id: StepId
    label: str = Field(default="", max_length=120)
    type: Literal["branch"]
    condition: Condition
    value: Any = Field(default=None, description="has_tag: a tag; tier_in/layer_in: a list; risk_above: 0..1; "
                                                 "attribute_equals: {name: value}")
    then: StepId | None = None
    otherwise: StepId | None = Field(default=None, alias="else")

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)

    @model_validator(mode="after")
    def _value_fits(self) -> BranchStep:
        needs = {"has_tag": str, "tier_in": list, "layer_in": list, "risk_above": float, "attribute_equals": dict}
        wanted = needs.get(self.condition)
        if wanted is float and not (isinstance(self.value, int | float) and 0 <= self.value <= 1):
            raise ValueError("risk_above needs a value between 0 and 1")
        if wanted in (str, list, dict) and not isinstance(self.value, wanted):
            raise ValueError(f"condition '{self.condition}' needs a {wanted.__name__} value")
        if wanted is dict and len(self.value) != 1:
            raise ValueError("attribute_equals needs exactly one {name: value}")
        return self


class SplitArm(_Strict):
    """One arm of a random split."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")
    weight: float = Field(default=1.0, gt=0, le=100)
    next: StepId | None = None


class SplitStep(_Strict):
    """A random split for an A/B test (stable per customer); each arm needs n = z²·p(1−p)/E² before a verdict."""

    id: StepId
    label: str = Field(default="", max_length=120)
    type: Literal["split"]
    arms: list[SplitArm] = Field(min_length=2, max_length=5)
    baseline_conversion: float = Field(default=0.05, gt=0, lt=1)
    tolerated_error: float = Field(default=0.01, gt=0, lt=0.5)

    @model_validator(mode="after")
    def _names(self) -> SplitStep:
        if len({a.name for a in self.arms}) != len(self.arms):
            raise ValueError("arm names must be unique")
        return self


class UpdateStep(_Strict):
    """Add or remove journey tags and set customer attributes."""

    id: StepId
    label: str = Field(default="", max_length=120)
    type: Literal["update"]
    add_tags: list[Annotated[str, Field(pattern=r"^[a-z0-9_]{1,40}$")]] = Field(default=[], max_length=10)
    remove_tags: list[Annotated[str, Field(pattern=r"^[a-z0-9_]{1,40}$")]] = Field(default=[], max_length=10)
    set_attributes: dict[str, str | int | float | bool | None] = Field(default={}, max_length=10)
    next: StepId | None = None

    @model_validator(mode="after")
    def _something(self) -> UpdateStep:
        if not (self.add_tags or self.remove_tags or self.set_attributes):
            raise ValueError("an update needs add_tags, remove_tags or set_attributes")
        return self


class ExitStep(_Strict):
    """Leave the journey here."""

    id: StepId
    label: str = Field(default="", max_length=120)
    type: Literal["exit"]


Step = Annotated[SendStep | CallStep | WaitStep | BranchStep | SplitStep | UpdateStep | ExitStep,
                 Field(discriminator="type")]
WAITING_KINDS = ("wait",)


class JourneySpec(_Strict):
    """Everything a marketer configures about a journey."""

    name: str = Field(min_length=1, max_length=120)
    description: str = Field(default="", max_length=2000)
    entry: Entry
    goal: Goal = Goal()
    steps: list[Step] = Field(min_length=1, max_length=50)
    start: StepId | None = Field(default=None, description="the first step (default: the first in the list)")
    holdout_share: float = Field(default=0.05, ge=0, le=0.5, description="entrants held out, to measure uplift")
    priority: int = Field(default=60, ge=0, le=100, description="against campaigns for capped slots")
    conversion_days: int = Field(default=14, ge=1, le=90, description="holdout and treated alike: conversion counted "
                                                                      "within N days of entry")

    @property
    def first_step(self) -> str:
        """The id of the step an enrollment starts at."""
        return self.start or self.steps[0].id

    def step(self, step_id: str) -> Any:
        """The step with this id."""
        return self.by_id()[step_id]

    def by_id(self) -> dict[str, Any]:
        """Steps by id."""
        return {s.id: s for s in self.steps}

    @property
    def uplift_segment(self) -> str:
        """The journey's uplift segment: its first message's channel, and whether any step offers a discount."""
        touches = [s for s in self.steps if s.type in ("send", "call")]
        channel = (touches[0].channels[0].channel if touches[0].type == "send" else "phone") if touches else "none"
        return uplift_segment("journey", channel, any(s.offer is not None for s in touches))


def successors(step: Any) -> list[tuple[str, str | None]]:
    """(outcome field, next step id) pairs a step can go on to; None means the journey ends there."""
    if step.type in ("send", "call"):
        return [("next", step.next), ("not_sent", step.not_sent if step.not_sent is not None else step.next)]
    if step.type == "wait":
        return [("next", step.next)] + ([("on_event", step.on_event)] if step.until_event else [])
    if step.type == "branch":
        return [("then", step.then), ("else", step.otherwise)]
    if step.type == "split":
        return [(f"arms.{i}.next", arm.next) for i, arm in enumerate(step.arms)]
    if step.type == "update":
        return [("next", step.next)]
    return []
