"""Fairness: for the same basket, loyal tiers must never be offered a worse price than new customers.

Offers differ in form (50 off 300, 20% off), so they are compared at price points: every offer's minimum spend
and a few reference prices. At each point, the lowest price any active campaign offers a loyal tier must not be
above the lowest price offered to new customers (first-order-only customers, or N days after a first order).
"""

from __future__ import annotations

from dataclasses import dataclass

REFERENCE_PRICES = (50.0, 100.0, 200.0, 300.0, 500.0, 1000.0, 2000.0)


@dataclass(frozen=True)
class OfferReach:
    """One campaign's offer and whom it reaches: tiers (empty = every tier) less the excluded ones, and whether it
    targets new customers."""

    campaign: str
    tiers: tuple[str, ...]
    new_customers: bool
    amount_off: float | None = None
    percent_off: float | None = None
    min_spend: float = 0.0
    exclude_tiers: tuple[str, ...] = ()

    def reaches(self, tier: str) -> bool:
        """Whether the offer reaches customers of this tier."""
        return (not self.tiers or tier in self.tiers) and tier not in self.exclude_tiers


def price_after(offer: OfferReach | None, price: float) -> float:
    """What a basket of `price` costs under the offer (its minimum spend respected)."""
    if offer is None or price < offer.min_spend:
        return price
    if offer.percent_off is not None:
        return price * (1.0 - offer.percent_off / 100.0)
    if offer.amount_off is not None:
        return max(price - offer.amount_off, 0.0)
    return price


def violations(offers: list[OfferReach], loyal_tiers: tuple[str, ...],
               prices: tuple[float, ...] = REFERENCE_PRICES) -> list[dict]:
    """Every (loyal tier, price point) where new customers are offered a lower price than that tier."""
    points = sorted({*prices, *(o.min_spend for o in offers if o.min_spend > 0)})
    newcomer_offers = [o for o in offers if o.new_customers]
    found = []
    for tier in loyal_tiers:
        tier_offers = [o for o in offers if not o.new_customers and o.reaches(tier)]
        for price in points:
            best_new = min((price_after(o, price), o.campaign) for o in newcomer_offers) if newcomer_offers else None
            if best_new is None:
                continue
            best_loyal = min([price_after(o, price) for o in tier_offers] + [price])
            if best_loyal > best_new[0] + 1e-9:
                found.append({"tier": tier, "basket": price, "loyal_price": round(best_loyal, 2),
                              "new_customer_price": round(best_new[0], 2), "new_customer_campaign": best_new[1]})
    return found


def added_violations(others: list[OfferReach], mine: list[OfferReach], loyal_tiers: tuple[str, ...]) -> list[dict]:
    """The violations `mine` adds to those of `others`, both read at the same price points (the reference prices and
    every offer's minimum spend): a price point only `mine` brings must not pin on it what `others` did already, and
    a loyal tier offered something by `mine` is no worse off than before; a gap `mine` widens is its doing."""
    points = tuple(sorted({*REFERENCE_PRICES, *(o.min_spend for o in [*others, *mine] if o.min_spend > 0)}))
    # Keyed by (tier, basket), and counted only where the gap grew: an offer that lowers a loyal price still above
    # the newcomers' adds nothing; a deeper newcomer offer where loyal customers already paid more does.
    def gap(v: dict) -> float:
        return v["loyal_price"] - v["new_customer_price"]

    existing = {(v["tier"], v["basket"]): gap(v) for v in violations(others, loyal_tiers, points)}
    return [v for v in violations([*others, *mine], loyal_tiers, points)
            if gap(v) > existing.get((v["tier"], v["basket"]), 0.0) + 1e-9]
