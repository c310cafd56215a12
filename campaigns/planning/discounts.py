"""Discount ceilings, vectorised per customer: an offer is kept, reduced to fit, or withheld — with the reasons.

Ceilings, in order:
1. per-tier maximum percentage (of the basket the offer applies to);
2. never below cost: where the customer's (else the shop's) cost ratio is known, the discounted basket still
   covers its cost of goods;
3. per-customer budget: discount granted in the trailing 365 days (orders, plus offers still open in the
   ledger) stays within `budget_share` of the spend in the same period. The order the offer is redeemed on
   counts as spend too — without it a lapsed customer could never get a win-back offer — so the condition is
   granted + value <= share * (spend + basket - value).

Every coupon is bounded on any basket, not just on the one assumed: it carries a minimum basket and a maximum
discount (per customer, derived from the ceilings when the campaign leaves them open), chosen so that the worst
basket it can be redeemed on still keeps the price above cost and the customer within the budget:
- amount off A: the worst basket is the smallest, so the minimum basket B is raised until A <= tier% * B,
  A <= (1 - cost ratio) * B and the budget holds at B;
- percent off p with cap M: the discount p * b grows with the basket until it reaches M at b = M / p. The budget
  condition is linear in b on that stretch, so it is checked at its worst end: M is lowered until it holds at
  b = M / p (when p > share / (1 + share)), or B is raised (when the customer is already over budget). Cost and
  tier ceilings are proportional and hold on every basket once p is within them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import polars as pl

REQUESTED = "as_requested"
REDUCED = "reduced"
WITHHELD = "withheld"


@dataclass(frozen=True)
class DiscountRules:
    """The ceilings' settings; every number is a default a shop can change."""

    budget_share: float = 0.15
    tier_max_percent: dict[str, float] = field(default_factory=lambda: {
        "VIP": 30.0, "potential": 20.0, "regular": 20.0, "lost": 25.0})
    default_max_percent: float = 20.0
    shipping_value: float = 10.0
    min_offer_value: float = 5.0


@dataclass(frozen=True)
class OfferTerms:
    """What a campaign offers: amount off (with a minimum spend) or percent off, and/or free shipping."""

    amount_off: float | None = None
    percent_off: float | None = None
    min_spend: float = 0.0
    free_shipping: bool = False
    max_discount: float | None = None  # percent off: the most one coupon grants (None: derived per customer)


def coupon_discount(basket: float, *, amount_off: float | None, percent_off: float | None, min_spend: float,
                    max_discount: float | None) -> float:
    """What a coupon takes off a basket (0 below its minimum): the terms a checkout applies."""
    if basket < min_spend - 1e-9:
        return 0.0
    if amount_off is not None:
        return min(amount_off, basket)
    if percent_off is not None:
        value = percent_off / 100.0 * basket
        return min(value, max_discount) if max_discount is not None else value
    return 0.0


def apply_ceilings(customers: pl.DataFrame, offer: OfferTerms, rules: DiscountRules) -> pl.DataFrame:
    """Decide each customer's offer.

    In: customer_id, tier, spend_365, discount_365, open_offers (value of offers still open), cost_ratio (cost of
    goods over list value, null when unknown), basket (the customer's usual order value, null when none).
    Out adds: offer_basket, offer_amount_off, offer_percent_off, offer_free_shipping, offer_min_spend,
    offer_max_discount, discount_value (the coupon's worst case: what it can grant at most, shipping included),
    offer_decision (as_requested / reduced / withheld), offer_reasons (comma-separated ceilings that bit).
    """
    basket = (pl.when(pl.lit(offer.min_spend) > 0).then(pl.lit(offer.min_spend))
              .otherwise(pl.col("basket").fill_null(pl.col("basket").mean()).fill_null(100.0)))
    frame = customers.with_columns(offer_basket=basket.cast(pl.Float64))
    tier_max = pl.col("tier").replace_strict(rules.tier_max_percent, default=rules.default_max_percent,
                                             return_dtype=pl.Float64)
    if offer.percent_off is not None:
        wanted = pl.lit(offer.percent_off / 100.0) * pl.col("offer_basket")
    elif offer.amount_off is not None:
        wanted = pl.lit(offer.amount_off, dtype=pl.Float64)
    else:
        wanted = pl.lit(0.0)
    shipping = pl.lit(rules.shipping_value if offer.free_shipping else 0.0)
    frame = frame.with_columns(
        __wanted=wanted,
        __tier_cap=tier_max / 100.0 * pl.col("offer_basket"),
        __cost_cap=pl.when(pl.col("cost_ratio").is_not_null()).then(
            ((1.0 - pl.col("cost_ratio")).clip(lower_bound=0.0)) * pl.col("offer_basket")),
        # granted + v <= s * (spend + basket - v)  <=>  v <= (s * (spend + basket) - granted) / (1 + s)
        __budget=((rules.budget_share * (pl.col("spend_365") + pl.col("offer_basket"))
                   - pl.col("discount_365") - pl.col("open_offers")) / (1.0 + rules.budget_share)),
    )
    after_tier = pl.min_horizontal(pl.col("__wanted"), pl.col("__tier_cap"))
    after_cost = pl.min_horizontal(after_tier, pl.col("__cost_cap").fill_null(float("inf")))
    frame = frame.with_columns(__after_tier=after_tier, __after_cost=after_cost)
    # The budget covers the discount and free shipping together; shipping goes first when it does not fit.
    frame = frame.with_columns(
        __shipping=pl.when(shipping > 0).then(
            pl.when(pl.col("__budget") - pl.col("__after_cost").clip(upper_bound=pl.col("__budget")) >= shipping)
            .then(shipping).otherwise(0.0)).otherwise(0.0))
    frame = frame.with_columns(
        __final=pl.min_horizontal(pl.col("__after_cost"), (pl.col("__budget") - pl.col("__shipping"))).clip(
            lower_bound=0.0))
    # Whole currency units for amounts and whole percents, always rounded down so a ceiling is never crossed.
    if offer.percent_off is not None:
        percent = (pl.col("__final") / pl.col("offer_basket") * 100.0 + 1e-9).floor()
        final = percent / 100.0 * pl.col("offer_basket")
        frame = frame.with_columns(offer_percent_off=percent, offer_amount_off=pl.lit(None, dtype=pl.Float64),
                                   __final=final)
    else:
        frame = frame.with_columns(offer_amount_off=(pl.col("__final") + 1e-9).floor(),
                                   offer_percent_off=pl.lit(None, dtype=pl.Float64))
        frame = frame.with_columns(__final=pl.col("offer_amount_off"))
    has_discount = offer.percent_off is not None or offer.amount_off is not None
    too_small = (pl.col("__final") < rules.min_offer_value) if has_discount else pl.lit(False)
    lost_shipping = pl.lit(offer.free_shipping) & (pl.col("__shipping") == 0)
    withheld = too_small | (lost_shipping & pl.lit(not has_discount))
    reduced = (pl.col("__final") < pl.col("__wanted") - 1e-6) | lost_shipping
    reasons = pl.concat_str([
        pl.when(pl.col("__tier_cap") < pl.col("__wanted") - 1e-6).then(pl.lit("tier_max")),
        pl.when(pl.col("__cost_cap").fill_null(float("inf")) < pl.col("__after_tier") - 1e-6).then(pl.lit("cost")),
        pl.when((pl.col("__budget") - pl.col("__shipping") < pl.col("__after_cost") - 1e-6) | lost_shipping)
        .then(pl.lit("budget")),
    ], separator=",", ignore_nulls=True)
    frame = frame.with_columns(
        offer_decision=pl.when(withheld).then(pl.lit(WITHHELD)).when(reduced).then(pl.lit(REDUCED))
        .otherwise(pl.lit(REQUESTED)),
        offer_reasons=reasons.replace("", None),
        offer_free_shipping=pl.col("__shipping") > 0,
        discount_value=pl.when(withheld).then(0.0).otherwise(pl.col("__final") + pl.col("__shipping")),
    )
    frame = _bound_on_every_basket(frame, offer, rules, tier_max)
    frame = frame.with_columns(
        offer_amount_off=pl.when(pl.col("offer_decision") == WITHHELD).then(None).otherwise(pl.col("offer_amount_off")),
        offer_percent_off=pl.when(pl.col("offer_decision") == WITHHELD).then(None)
        .otherwise(pl.col("offer_percent_off")),
        offer_free_shipping=pl.col("offer_free_shipping") & (pl.col("offer_decision") != WITHHELD),
        offer_min_spend=pl.when(pl.col("offer_decision") == WITHHELD).then(None).otherwise(pl.col("offer_min_spend")),
        offer_max_discount=pl.when(pl.col("offer_decision") == WITHHELD).then(None)
        .otherwise(pl.col("offer_max_discount")))
    return frame.drop(c for c in frame.columns if c.startswith("__"))


def _bound_on_every_basket(frame: pl.DataFrame, offer: OfferTerms, rules: DiscountRules, tier_max: pl.Expr
                           ) -> pl.DataFrame:
    """The coupon's minimum basket and maximum discount, so that its worst basket keeps every ceiling."""
    share = rules.budget_share
    granted = pl.col("discount_365") + pl.col("open_offers")
    shipping = pl.col("__shipping")
    fraction = pl.min_horizontal(tier_max / 100.0, (1.0 - pl.col("cost_ratio")).clip(lower_bound=0.0).fill_null(1.0))
    withheld = pl.col("offer_decision") == WITHHELD
    if offer.percent_off is None:
        amount = pl.col("offer_amount_off").fill_null(0.0)
        value = amount + shipping
        # cost and tier: A <= fraction * B; budget at B: granted + value <= share * (spend + B - value)
        for_cost = pl.when(amount > 0).then(amount / pl.when(fraction > 0).then(fraction).otherwise(None))
        for_budget = ((granted + value * (1.0 + share)) / share - pl.col("spend_365")) if share > 0 else \
            pl.when(value > 0).then(None).otherwise(0.0)
        minimum = pl.max_horizontal(pl.lit(offer.min_spend), for_cost.fill_null(0.0), for_budget, pl.lit(0.0))
        # A ceiling nothing satisfies (no fraction, no budget) leaves a null: withheld.
        impossible = (amount > 0) & (for_cost.is_null() | (for_budget.is_null() if share <= 0 else pl.lit(False)))
        frame = frame.with_columns(offer_min_spend=(minimum - 1e-9).ceil(),
                                   offer_max_discount=pl.when(amount > 0).then(amount))
        frame = frame.with_columns(offer_decision=pl.when(impossible & ~withheld).then(pl.lit(WITHHELD))
                                   .otherwise(pl.col("offer_decision")))
        return frame.with_columns(discount_value=pl.when(pl.col("offer_decision") == WITHHELD).then(0.0)
                                  .otherwise(value))
    rate = pl.col("offer_percent_off") / 100.0
    slope = share * (1.0 - rate) - rate  # d(budget slack)/d(basket) while the cap is not reached
    over = granted + shipping * (1.0 + share) - share * pl.col("spend_365")  # > 0: over budget before any basket
    wanted_cap = pl.lit(offer.max_discount, dtype=pl.Float64) if offer.max_discount is not None else pl.col("__final")
    cap = pl.when(slope < 0).then(pl.min_horizontal(wanted_cap, over * rate / slope)).otherwise(wanted_cap)
    cap = (cap.clip(lower_bound=0.0) + 1e-9).floor()
    minimum = pl.when((slope > 0) & (over > 0)).then(pl.max_horizontal(pl.lit(offer.min_spend), over / slope)) \
        .when((slope <= 0) & (over > 0)).then(None).otherwise(pl.lit(offer.min_spend))
    frame = frame.with_columns(offer_max_discount=cap, offer_min_spend=(minimum - 1e-9).ceil())
    too_small = (pl.col("offer_max_discount") < rules.min_offer_value) | pl.col("offer_min_spend").is_null()
    # Reduced only when a ceiling lowered the cap below the value on the usual basket in whole units (the cap is
    # rounded down to whole units like every amount: that rounding alone is not a reduction).
    requested = (pl.col("__final") + 1e-9).floor()
    if offer.max_discount is not None:  # the campaign's own cap is what it asked for, not a reduction
        requested = pl.min_horizontal(requested, pl.lit(math.floor(offer.max_discount + 1e-9), dtype=pl.Float64))
    lowered = pl.col("offer_max_discount") < requested - 1e-6
    frame = frame.with_columns(
        offer_decision=pl.when(too_small & ~withheld).then(pl.lit(WITHHELD))
        .when(~withheld & lowered).then(pl.lit(REDUCED))
        .otherwise(pl.col("offer_decision")))
    return frame.with_columns(discount_value=pl.when(pl.col("offer_decision") == WITHHELD).then(0.0)
                              .otherwise(pl.col("offer_max_discount") + shipping))


def budget_left(spend_365: float, discount_365: float, open_offers: float, rules: DiscountRules) -> float:
    """What a customer may still be granted before the next order (the plain trailing-365-day reading)."""
    return max(rules.budget_share * spend_365 - discount_365 - open_offers, 0.0)
