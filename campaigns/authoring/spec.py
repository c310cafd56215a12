"""A campaign's specification as marketers write it (validated; errors name the field) and when it fires."""

from __future__ import annotations

import calendar
import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kit.channels import ChannelName

STATUSES = ("draft", "active", "paused", "archived")
Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
Trigger = Literal["entered_tier", "entered_tag", "at_risk", "birthday", "days_after_first_order"]
WEEKDAYS = Weekday.__args__


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ScoreRange(_Strict):
    """An inclusive range of a 1..5 quintile score."""

    min: int = Field(default=1, ge=1, le=5)
    max: int = Field(default=5, ge=1, le=5)

    @model_validator(mode="after")
    def _ordered(self) -> ScoreRange:
        if self.min > self.max:
            raise ValueError("min must not exceed max")
        return self


class Audience(_Strict):
    """Who qualifies: every given condition must hold (lists include any of their values)."""

    tiers: list[str] = []
    exclude_tiers: list[str] = []
    layers: list[str] = []
    exclude_layers: list[str] = []
    tags: list[str] = []
    exclude_tags: list[str] = []
    churn_risk_above: float | None = Field(default=None, ge=0, le=1)
    at_risk: bool | None = None
    risk_levels: list[Literal["low", "medium", "high"]] = Field(default=[], description="churn risk levels")
    predicted_clv_min: float | None = Field(default=None, ge=0, description="predicted 12-month value at least")
    predicted_clv_max: float | None = Field(default=None, ge=0)
    p_alive_min: float | None = Field(default=None, ge=0, le=1, description="probability still a customer")
    next_order_within_days: int | None = Field(
        default=None, ge=0, le=365, description="expected next order due within N days of the plan day (e.g. a "
                                                "replenishment reminder)")
    uplift_min: float | None = Field(
        default=None, ge=-1, le=1, description="only customers the message is predicted to change: predicted uplift "
                                               "(change in conversion probability, e.g. 0.01 = +1 point) at least")
    exclude_sleeping_dogs: bool = Field(default=False, description="leave out customers a message is predicted to "
                                                                   "put off (predicted uplift below zero)")
    r_score: ScoreRange | None = None
    f_score: ScoreRange | None = None
    m_score: ScoreRange | None = None
    customers: list[str] = Field(default=[], max_length=100_000, description="explicit external ids")
    exclude_customers: list[str] = Field(default=[], max_length=100_000)


    @property
    def uses_uplift(self) -> bool:
        """Whether the audience reads predicted uplift."""
        return self.uplift_min is not None or self.exclude_sleeping_dogs


ANY_SEGMENT = "any"  # the uplift model over every past arm, used where a segment has no model of its own


def uplift_segment(kind: str, channel: str, offer: bool) -> str:
    """An uplift model's segment: what was sent (campaign or journey), on which channel, with or without an offer."""
    return f"{kind}:{channel}:{'coupon' if offer else 'none'}"


def campaign_segment(spec: CampaignSpec | dict[str, Any]) -> str:
    """A campaign's uplift segment, from its first channel and whether it offers a discount."""
    parsed = spec if isinstance(spec, CampaignSpec) else CampaignSpec.model_validate(spec)
    return uplift_segment("campaign", parsed.channels[0].channel, parsed.makes_offers)


class ChannelStep(_Strict):
    """One channel and the template it sends."""

    channel: ChannelName
    template: str = Field(min_length=1, max_length=80)


class Offer(_Strict):
    """Amount off (with a minimum spend) or percent off, and/or free shipping; a unique coupon per customer."""

    amount_off: float | None = Field(default=None, gt=0, le=100_000)
    percent_off: float | None = Field(default=None, gt=0, lt=100)
    min_spend: float = Field(default=0, ge=0, le=1_000_000,
                             description="the smallest basket the coupon applies to; raised per customer where a "
                                         "ceiling needs it (never below cost, the discount budget)")
    max_discount: float | None = Field(default=None, gt=0, le=100_000,
                                       description="percent off: the most one coupon takes off (default: its value on "
                                                   "the customer's usual basket, lowered to fit the ceilings)")
    free_shipping: bool = False
    valid_days: int = Field(default=14, ge=1, le=365)
    coupon_prefix: str = Field(default="CRM", pattern=r"^[A-Z0-9]{1,8}$")
    send_without_offer: bool = Field(default=False, description="send the message when a ceiling withholds the offer")

    @model_validator(mode="after")
    def _one_kind(self) -> Offer:
        if self.amount_off is not None and self.percent_off is not None:
            raise ValueError("give amount_off or percent_off, not both")
        if self.amount_off is None and self.percent_off is None and not self.free_shipping:
            raise ValueError("an offer needs amount_off, percent_off or free_shipping")
        if self.amount_off is not None and self.min_spend and self.amount_off >= self.min_spend:
            raise ValueError("amount_off must be below min_spend")
        if self.max_discount is not None and self.percent_off is None:
            raise ValueError("max_discount bounds a percent_off offer (an amount off is its own maximum)")
        return self


EXPERIMENT_VARIABLES = ("template", "channels", "offer")


class Variant(_Strict):
    """One arm of an A/B test: the campaign as written, except for the one variable this arm changes."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")
    weight: float = Field(default=1.0, gt=0, le=100, description="share of the treated audience, relative")
    template: str | None = Field(default=None, min_length=1, max_length=80,
                                 description="replaces the template of every channel step")
    channels: list[ChannelStep] | None = Field(default=None, min_length=1, max_length=4)
    offer: Offer | None = None

    def changes(self) -> list[str]:
        """Which variables this arm sets (none: the campaign's own, the control arm)."""
        return [name for name in EXPERIMENT_VARIABLES if getattr(self, name) is not None]


class Experiment(_Strict):
    """An A/B test of one variable; each arm needs n = z²·p(1−p)/E² members before a winner can be declared."""

    variants: list[Variant] = Field(min_length=2, max_length=5)
    baseline_conversion: float = Field(default=0.05, gt=0, lt=1, description="p: the expected conversion rate")
    tolerated_error: float = Field(default=0.01, gt=0, lt=0.5, description="E: the error tolerated on a rate")

    @model_validator(mode="after")
    def _one_variable(self) -> Experiment:
        names = [v.name for v in self.variants]
        if len(names) != len(set(names)):
            raise ValueError("variant names must be unique")
        for variant in self.variants:
            if len(variant.changes()) > 1:
                raise ValueError(f"variant '{variant.name}' changes {', '.join(variant.changes())}: "
                                 "test one variable at a time")
        changed = {name for variant in self.variants for name in variant.changes()}
        if not changed:
            raise ValueError("no variant changes anything: set template, channels or offer in at least one")
        if len(changed) > 1:
            raise ValueError(f"variants change {', '.join(sorted(changed))}: test one variable at a time")
        return self

    @property
    def variable(self) -> str:
        """The one variable under test."""
        return next(name for v in self.variants for name in v.changes())


class Schedule(_Strict):
    """When: once, monthly on a day, weekly on a weekday, daily — at a local hour in each customer's zone — or
    triggered (evaluated daily)."""

    kind: Literal["one_off", "monthly", "weekly", "daily", "triggered"]
    date: dt.date | None = Field(default=None, description="one_off: the local date")
    day_of_month: int | None = Field(default=None, ge=1, le=31, description="monthly; short months use their last day")
    weekday: Weekday | None = None
    local_hour: int = Field(default=10, ge=0, le=23)
    local_minute: int = Field(default=0, ge=0, le=59)
    trigger: Trigger | None = None
    value: str | None = Field(default=None, max_length=40, description="entered_tier / entered_tag: which one")
    days: int | None = Field(default=None, ge=1, le=365, description="days_after_first_order: N")
    starts_on: dt.date | None = None
    ends_on: dt.date | None = None

    @model_validator(mode="after")
    def _complete(self) -> Schedule:
        needs = {"one_off": "date", "monthly": "day_of_month", "weekly": "weekday", "triggered": "trigger"}
        wanted = needs.get(self.kind)
        if wanted and getattr(self, wanted) is None:
            raise ValueError(f"schedule kind '{self.kind}' needs '{wanted}'")
        if self.trigger in ("entered_tier", "entered_tag") and not self.value:
            raise ValueError(f"trigger '{self.trigger}' needs 'value'")
        if self.trigger == "days_after_first_order" and self.days is None:
            raise ValueError("trigger 'days_after_first_order' needs 'days'")
        if self.starts_on and self.ends_on and self.ends_on < self.starts_on:
            raise ValueError("ends_on must not be before starts_on")
        return self

    @property
    def local_minute_of_day(self) -> int:
        """The local send time as minutes after midnight."""
        return self.local_hour * 60 + self.local_minute

    def fires_on(self, day: dt.date) -> bool:
        """Whether the schedule has an occurrence on this local date (triggered campaigns are checked daily)."""
        if (self.starts_on and day < self.starts_on) or (self.ends_on and day > self.ends_on):
            return False
        if self.kind == "one_off":
            return day == self.date
        if self.kind == "monthly":
            last = calendar.monthrange(day.year, day.month)[1]
            return day.day == min(self.day_of_month or 1, last)
        if self.kind == "weekly":
            return WEEKDAYS[day.weekday()] == self.weekday
        return True


class CampaignSpec(_Strict):
    """Everything a marketer configures about a campaign."""

    name: str = Field(min_length=1, max_length=120)
    description: str = Field(default="", max_length=2000)
    audience: Audience = Audience()
    channels: list[ChannelStep] = Field(min_length=1, max_length=4)
    delivery: Literal["first_eligible", "all"] = Field(
        default="first_eligible", description="first_eligible: fall back along the list; all: every eligible one")
    offer: Offer | None = None
    schedule: Schedule
    priority: int = Field(default=50, ge=0, le=100)
    holdout_share: float = Field(default=0.05, ge=0, le=0.5)
    transactional: bool = Field(default=False, description="an order, shipping or account notice (admins only): "
                                "exempt from marketing caps and quiet hours, never from an opt-out; no offer")
    cooldown_days: int = Field(default=0, ge=0, le=365,
                               description="skip customers this campaign messaged in the last N days")
    defer_days: int = Field(default=0, ge=0, le=30, description="when capped, defer up to N days instead of skipping")
    fairness: Literal["refuse", "warn"] = "refuse"
    experiment: Experiment | None = Field(default=None, description="an A/B test of one variable")

    @model_validator(mode="after")
    def _channels_unique(self) -> CampaignSpec:
        seen = [step.channel for step in self.channels]
        if len(seen) != len(set(seen)):
            raise ValueError("each channel may appear once")
        return self

    @property
    def makes_offers(self) -> bool:
        """Whether any message of the campaign (or of one of its A/B arms) can carry an offer."""
        return self.offer is not None or (self.experiment is not None and
                                          any(v.offer is not None for v in self.experiment.variants))

    def for_variant(self, variant: Variant) -> CampaignSpec:
        """This campaign as one arm of its experiment sends it (the arm's variable replaced; no experiment)."""
        update: dict = {"experiment": None}
        if variant.template is not None:
            update["channels"] = [step.model_copy(update={"template": variant.template}) for step in self.channels]
        if variant.channels is not None:
            update["channels"] = variant.channels
        if variant.offer is not None:
            update["offer"] = variant.offer
        return self.model_copy(update=update)
