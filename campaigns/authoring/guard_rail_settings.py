"""The guard-rail settings: one versioned, audited document (caps, quiet hours, discount ceilings, the global control
group, SMS keywords, opt-out texts, forbidden ad phrases). Environment variables only seed version 0; planner,
dispatcher and template checks read the newest stored version.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlmodel import Session, select

from campaigns.authoring import compliance
from campaigns.authoring.spec import ChannelName
from campaigns.models import GuardRailVersion
from crm import audit
from kit.channels import default_caps, quiet_hours_channels
from kit.context import Context
from kit.errors import InvalidInput

CLOCK_PATTERN = r"^([01]\d|2[0-3]):[0-5]\d$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CapSetting(_Strict):
    """At most `limit` marketing messages per `window_days`."""

    limit: int = Field(ge=0, le=1000)
    window_days: int = Field(ge=1, le=365)


class QuietHoursSetting(_Strict):
    """The nightly window in each customer's own zone, and the channels it holds back."""

    start: str = Field(default="21:00", pattern=CLOCK_PATTERN)
    end: str = Field(default="09:00", pattern=CLOCK_PATTERN)
    channels: list[ChannelName] = Field(default_factory=lambda: list(quiet_hours_channels()))


class DiscountSetting(_Strict):
    """The discount ceilings: annual budget share, per-tier maximum percentages, shipping value, smallest offer."""

    budget_share: float = Field(default=0.15, ge=0, le=1)
    tier_max_percent: dict[str, float] = {"VIP": 30.0, "potential": 20.0, "regular": 20.0, "lost": 25.0}
    default_max_percent: float = Field(default=20.0, ge=0, le=100)
    shipping_value: float = Field(default=10.0, ge=0, le=10_000)
    min_offer_value: float = Field(default=5.0, ge=0, le=100_000)

    @field_validator("tier_max_percent")
    @classmethod
    def _percentages(cls, value: dict[str, float]) -> dict[str, float]:
        for tier, percent in value.items():
            if not math.isfinite(percent) or not 0 <= percent <= 100:
                raise ValueError(f"tier '{tier}': a percentage between 0 and 100")
        return value


class KeywordSetting(_Strict):
    """Whole-reply SMS keywords (matched after NFKC, case folding and trimming punctuation)."""

    stop: list[str] = Field(default=list(compliance.STOP_KEYWORDS), min_length=1, max_length=100)
    start: list[str] = Field(default=list(compliance.START_KEYWORDS), max_length=100)
    help: list[str] = Field(default=list(compliance.HELP_KEYWORDS), max_length=100)

    @model_validator(mode="after")
    def _disjoint(self) -> KeywordSetting:
        seen: dict[str, str] = {}
        for kind in ("stop", "start", "help"):
            for word in getattr(self, kind):
                key = compliance.normalise_reply(word)
                if not key:
                    raise ValueError(f"{kind}: an empty keyword")
                if seen.get(key, kind) != kind:
                    raise ValueError(f"'{word}' is both a {seen[key]} and a {kind} keyword")
                seen[key] = kind
        return self


class GuardRailSettings(_Strict):
    """Every guard rail a campaign cannot switch off, as marketers read it and admins change it."""

    caps: dict[ChannelName, CapSetting] = Field(default_factory=lambda: {
        channel: CapSetting(limit=limit, window_days=days) for channel, (limit, days) in default_caps().items()})
    global_cap: CapSetting | None = None
    quiet_hours: QuietHoursSetting = QuietHoursSetting()
    discounts: DiscountSetting = DiscountSetting()
    global_control_share: float = Field(default=0.05, ge=0, le=0.5)
    sms_keywords: KeywordSetting = KeywordSetting()
    sms_opt_out_texts: list[str] = Field(default=list(compliance.OPT_OUT_TEXTS), min_length=1, max_length=100)
    forbidden_ad_phrases: list[str] = Field(default=list(compliance.FORBIDDEN_AD_PHRASES), max_length=1000)
    marketing_phrases: list[str] = Field(default=list(compliance.MARKETING_PHRASES), max_length=1000)

    @field_validator("sms_opt_out_texts", "forbidden_ad_phrases", "marketing_phrases")
    @classmethod
    def _phrases(cls, value: list[str]) -> list[str]:
        for index, phrase in enumerate(value):
            if not phrase.strip() or len(phrase) > 80:
                raise ValueError(f"item {index}: a phrase of 1 to 80 characters")
        return value


def seed_from_settings(ctx: Context) -> GuardRailSettings:
    """Version 0: the environment's values (CRM_CAPS, CRM_QUIET_HOURS …) over the defaults."""
    s = ctx.settings
    return GuardRailSettings(
        caps={channel: CapSetting(limit=limit, window_days=days) for channel, (limit, days) in s.caps.items()},
        global_cap=CapSetting(limit=s.global_cap[0], window_days=s.global_cap[1]) if s.global_cap else None,
        quiet_hours=QuietHoursSetting(start=s.quiet_hours[0], end=s.quiet_hours[1],
                                      channels=list(s.quiet_hours_channels)),
        discounts=DiscountSetting(budget_share=s.discount_budget_share,
                                  tier_max_percent=dict(s.tier_max_discount_percent),
                                  default_max_percent=s.default_max_discount_percent, shipping_value=s.shipping_value,
                                  min_offer_value=s.min_offer_value),
        global_control_share=s.global_control_share)


def current_settings(session: Session, ctx: Context) -> tuple[int, GuardRailSettings]:
    """The newest stored version (or version 0 seeded from the environment) and its settings."""
    row = session.exec(select(GuardRailVersion).order_by(GuardRailVersion.version.desc()).limit(1)).first()
    if row is None:
        return 0, seed_from_settings(ctx)
    return row.version, GuardRailSettings.model_validate(row.settings)


def parse_settings(body: Any) -> GuardRailSettings:
    """Validate a guard-rail document; every error names its field (422)."""
    try:
        return GuardRailSettings.model_validate(body)
    except ValidationError as error:
        raise InvalidInput.from_validation("guard rails", error) from error


def update_settings(session: Session, ctx: Context, body: Any, actor: str) -> tuple[int, GuardRailSettings]:
    """Store a new version of the guard rails (validated, audited with before and after)."""
    wanted = parse_settings(body)
    version, before = current_settings(session, ctx)
    now = ctx.clock.now()
    row = GuardRailVersion(version=version + 1, settings=wanted.model_dump(mode="json"), created_at=now,
                           created_by=actor)
    session.add(row)
    session.flush()
    audit.record(session, actor=actor, action="guard_rails.update", entity="guard_rails", entity_id=row.version,
                 at=now, before=before.model_dump(mode="json"), after=row.settings)
    return row.version, wanted


def versions(session: Session) -> list[GuardRailVersion]:
    """Every stored version, oldest first."""
    return list(session.exec(select(GuardRailVersion).order_by(GuardRailVersion.version)))
