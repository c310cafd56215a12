"""The rule sets a shop starts with (docs/domain.md: tiers, layers, tags); every number is a default marketers replace via the API."""

from __future__ import annotations

from segmentation.rules import RuleSet
from segmentation.tags import TagSet

TIER = RuleSet.model_validate({
    "window_days": 365, "fallback": "nearest", "confirm_runs": 2, "margin": 0.1,
    "rules": [
        {"name": "VIP", "expected_share": 0.08, "goal": "raise average order value to 2500",
         "when": {"recency_days": {"max": 30}, "frequency": {"min": 4}, "monetary": {"min": 2000}}},
        # First match wins, so each row's upper bounds (31-90 days, 2-3 orders, 500-1999) are what the rows
        # above leave over; writing them as lower bounds makes the table cover a VIP near-miss too.
        {"name": "potential", "expected_share": 0.22, "goal": "+15% repeat purchases within 90 days",
         "when": {"recency_days": {"max": 90}, "frequency": {"min": 2}, "monetary": {"min": 500}}},
        {"name": "regular", "expected_share": 0.45, "goal": "convert to potential",
         "when": {"recency_days": {"max": 180}, "frequency": {"min": 1}, "monetary": {"min": 100}}},
        {"name": "lost", "expected_share": 0.25, "goal": "win back at least 10%",
         "when": {"recency_days": {"min": 181}}},
    ],
})

LAYER = RuleSet.model_validate({
    "window_days": 365, "fallback": "potential", "confirm_runs": 2, "margin": 0.1,
    "rules": [
        {"name": "core", "description": "top 20% by value and a repeat buyer",
         "when": {"value_percentile": {"min": 80}, "frequency": {"min": 2}}},
        {"name": "churned", "description": "no login for 60 days",
         "when": {"days_since_last_login": {"min": 60}}},
        {"name": "churn_warning", "description": "3 consecutive months of low activity",
         "when": {"low_activity_months": {"min": 3}}},
        {"name": "potential", "description": "active, but no purchase in 30 days",
         "when": {"days_since_last_activity": {"max": 30}, "orders_30d": {"max": 0}}},
    ],
})

TAGS = TagSet.model_validate({"tags": [
    {"name": "price_sensitive", "freshness_days": 180,
     "description": "most orders in the window used a discount or coupon; off after 3 full-price orders in a row",
     "add": {"frequency": {"min": 2}, "discounted_share": {"min": 0.5001}},
     "remove": {"full_price_streak": {"min": 3}}},
    {"name": "new_product_adopter", "freshness_days": 90,
     "description": "bought new products (flagged is_new_product at purchase) at least twice in the window",
     "add": {"new_product_orders": {"min": 2}}},
    {"name": "cart_abandoner", "freshness_days": 30,
     "description": "abandoned a cart in the last 30 days and has not ordered since",
     "add": {"cart_abandons_30d": {"min": 1}, "abandoned_since_last_order": {"min": 1}},
     "remove": {"abandoned_since_last_order": {"max": 0}}},
    {"name": "browse_no_buy", "freshness_days": 30,
     "description": "10+ product views in 30 days without an order",
     "add": {"views_30d": {"min": 10}, "orders_30d": {"max": 0}},
     "remove": {"orders_30d": {"min": 1}}},
    {"name": "birthday_this_month", "freshness_days": 0,
     "description": "birthday in the as-of month",
     "add": {"birthday_this_month": {"min": 1}}, "remove": {"birthday_this_month": {"max": 0}}},
    {"name": "lapsed_vip", "freshness_days": 180,
     "description": "left the VIP tier within the last year",
     "add": {"days_since_left_vip": {"max": 365}, "tier": {"not_in": ["VIP"]}},
     "remove": {"tier": {"in": ["VIP"]}}},
    {"name": "first_order_only", "freshness_days": 0,
     "description": "one order ever, at least 30 days ago",
     "add": {"orders_total": {"min": 1, "max": 1}, "recency_days": {"min": 30}},
     "remove": {"orders_total": {"min": 2}}},
]})

RULE_SETS = {"tier": TIER, "layer": LAYER}
DEFAULTS = {"tier": TIER, "layer": LAYER, "tags": TAGS}
