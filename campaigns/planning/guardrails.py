"""The guard rails in force: the newest guard-rail settings composed into the caps, quiet hours and discount rules
the planner and the dispatcher apply."""

from __future__ import annotations

from sqlmodel import Session

from campaigns.authoring.guard_rail_settings import GuardRailSettings, current_settings
from campaigns.planning.caps import Cap
from campaigns.planning.discounts import DiscountRules
from campaigns.planning.planner import GuardRails
from campaigns.planning.quiet_hours import QuietHours
from kit.context import Context


def _minutes(clock: str) -> int:
    hours, _, mins = clock.partition(":")
    return int(hours) * 60 + int(mins or 0)


def to_rails(settings: GuardRailSettings, global_control_salt: int) -> GuardRails:
    """The planner's and dispatcher's view of the settings."""
    caps = [Cap(c.limit, c.window_days, channel) for channel, c in settings.caps.items()]
    if settings.global_cap is not None:
        caps.append(Cap(settings.global_cap.limit, settings.global_cap.window_days, None))
    d = settings.discounts
    return GuardRails(
        caps=tuple(caps),
        quiet=QuietHours(_minutes(settings.quiet_hours.start), _minutes(settings.quiet_hours.end),
                         tuple(settings.quiet_hours.channels)),
        discounts=DiscountRules(budget_share=d.budget_share, tier_max_percent=dict(d.tier_max_percent),
                                default_max_percent=d.default_max_percent, shipping_value=d.shipping_value,
                                min_offer_value=d.min_offer_value),
        global_control_share=settings.global_control_share, global_control_salt=global_control_salt)


def guard_rails(session: Session, ctx: Context) -> GuardRails:
    """The guard rails in force now."""
    return to_rails(current_settings(session, ctx)[1], ctx.settings.global_control_salt)
