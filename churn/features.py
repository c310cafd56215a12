"""Point-in-time churn features and labels (pure, polars): nothing on or after the cut-off may leak in.

Orders alone give the core features, so a plain transaction log is enough; order flags (discounts,
marked-down or new-product lines), events and segment tiers add features when they exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

import polars as pl

from segmentation.rules import RuleSet
from segmentation.tags import TagSet

SegmentRules = tuple[RuleSet, RuleSet, TagSet]  # tier, layer and tag rules in force

DAY_US = 86_400_000_000
WEEK_DAYS = 7.0


@dataclass(frozen=True)
class FeatureConfig:
    """Tunables of the feature builder and the label (defaults from DOMAIN §4)."""

    horizon_days: int = 90
    # "active": customers with an order in the look-back window; "all": with an order within the history depth.
    population: str = "active"
    lookback_days: int = 365
    # Features see at most this much history before the cut-off, so that every training snapshot and
    # the daily scoring see the same depth (else tenure and totals would drift between them).
    history_days: int = 730
    # Category breadth needs every item joined to its order: 11 s and ~0.5 GB more per run at 1M customers
    # (16M items), for no measurable gain on generator data, so a shop turns it on when its catalogue matters.
    category_breadth: bool = False
    windows: tuple[int, ...] = (30, 90, 180, 365)
    event_windows: tuple[int, ...] = (7, 30, 90)
    event_types: tuple[str, ...] = ("login", "view", "cart_add", "cart_abandon")
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.population not in ("active", "all"):
            raise ValueError(f"population must be active or all, not {self.population!r}")
        if self.lookback_days < 1:
            raise ValueError("lookback must be at least 1 day")

    @property
    def effective_lookback_days(self) -> int:
        """How far back an order makes a customer part of the population."""
        return self.history_days if self.population == "all" else self.lookback_days

    def describe(self) -> str:
        """The population rule in words."""
        if self.population == "all":
            return f"all: every customer with an order in the {self.history_days} days before the cut-off"
        return f"active: customers with an order in the {self.lookback_days} days before the cut-off"


def _days_before(cutoff: datetime, column: str) -> pl.Expr:
    """Days (fractional) from a timestamp column to the cut-off."""
    return (pl.lit(cutoff).cast(pl.Datetime("us", "UTC")) - pl.col(column)).dt.total_microseconds() / DAY_US


def population(orders: pl.DataFrame, cutoff: datetime, config: FeatureConfig) -> pl.DataFrame:
    """Customers with at least one order in the look-back window before the cut-off."""
    start = cutoff - timedelta(days=config.effective_lookback_days)
    return (orders.filter((pl.col("ordered_at") >= start) & (pl.col("ordered_at") < cutoff))
            .select("customer_id").unique().sort("customer_id"))


def population_summary(orders: pl.DataFrame, cutoff: datetime, config: FeatureConfig,
                       known_customers: int | None = None) -> dict:
    """The population's rule and size, and who was left out and why (`known_customers`: every customer on record,
    buyers or not, when known)."""
    before = orders.filter(pl.col("ordered_at") < cutoff).group_by("customer_id").agg(pl.col("ordered_at").max())
    inside = int((before["ordered_at"] >= cutoff - timedelta(days=config.effective_lookback_days)).sum())
    left_out = {"last_order_before_lookback": before.height - inside}
    if known_customers is not None:
        left_out["no_order_before_cutoff"] = max(known_customers - before.height, 0)
    return {"population": config.population, "rule": config.describe(), "size": inside, "left_out": left_out}


def labels(orders: pl.DataFrame, customers: pl.DataFrame, cutoff: datetime, horizon_days: int) -> pl.DataFrame:
    """churned = 1 when the customer places no order in (cutoff, cutoff + horizon]."""
    end = cutoff + timedelta(days=horizon_days)
    bought = (orders.filter((pl.col("ordered_at") > cutoff) & (pl.col("ordered_at") <= end))
              .select("customer_id").unique().with_columns(pl.lit(True).alias("_bought")))
    return (customers.select("customer_id").join(bought, on="customer_id", how="left")
            .select("customer_id", pl.col("_bought").is_null().cast(pl.Int8).alias("churned")))


def _days_ago(cutoff: datetime, column: str) -> pl.Expr:
    """Whole UTC days from a timestamp's day to the cut-off's day: windows are "the last w days before it", which the
    customer state's day buckets can answer exactly."""
    return (pl.lit(cutoff.date()) - pl.col(column).dt.date()).dt.total_days()


def order_features(orders: pl.DataFrame, cutoff: datetime, config: FeatureConfig) -> pl.DataFrame:
    """Features from orders alone (customer_id, ordered_at, amount_paid), for the population at the cut-off."""
    past = _history(orders, cutoff, config)
    who = population(past, cutoff, config)
    past = past.join(who, on="customer_id", how="semi")
    age, days_ago = _days_before(cutoff, "ordered_at"), _days_ago(cutoff, "ordered_at")
    # Several orders on one day count as one purchase occasion for gaps (real logs split baskets).
    days = past.select("customer_id", days_ago.alias("days_ago"), "amount_paid").lazy()
    occasions = days.group_by("customer_id", "days_ago").agg(pl.col("amount_paid").sum())
    gap = pl.col("gap").cast(pl.Float64)
    gaps = (occasions.sort("customer_id", "days_ago", descending=[False, True])
            .with_columns(pl.col("days_ago").diff().over("customer_id").mul(-1).alias("gap"))
            .group_by("customer_id").agg(gap.mean().alias("gap_mean"), gap.std().alias("gap_std"),
                                         pl.len().alias("purchase_days"),
                                         gap.drop_nulls().last().alias("last_gap")))
    windows = [pl.when(days_ago <= w).then(1).otherwise(0).sum().alias(f"orders_{w}d") for w in config.windows]
    spend = [pl.when(days_ago <= w).then(pl.col("amount_paid")).otherwise(0.0).sum().alias(f"spend_{w}d")
             for w in config.windows]
    base = past.lazy().group_by("customer_id").agg(
        age.min().alias("recency_days"),
        age.max().alias("tenure_days"),
        pl.len().alias("orders_total"),
        pl.col("amount_paid").sum().alias("spend_total"),
        pl.col("amount_paid").mean().alias("order_value_mean"),
        (pl.col("amount_paid") <= 0).mean().alias("zero_amount_share"),
        pl.col("amount_paid").sort_by("ordered_at").last().alias("last_order_value"),
        pl.when((days_ago > 90) & (days_ago <= 180)).then(1).otherwise(0).sum().alias("_orders_prev_90d"),
        *windows, *spend,
    )
    frame = base.join(gaps, on="customer_id", how="left")
    return _derived_order_columns(frame).sort("customer_id").collect()


def _derived_order_columns(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Ratios, trend and the BG/NBD summary from the per-customer order aggregates (however they were obtained)."""
    return frame.with_columns(
        (pl.col("recency_days") / pl.col("gap_mean")).alias("recency_over_gap"),
        (pl.col("gap_std") / pl.col("gap_mean")).alias("gap_cv"),
        (pl.col("orders_90d") - pl.col("_orders_prev_90d")).alias("trend_90d"),
        (pl.col("last_order_value") / pl.col("order_value_mean")).alias("last_value_ratio"),
        (pl.col("purchase_days") / (pl.col("tenure_days") / 30.4375 + 1)).alias("purchase_days_per_month"),
        # BG/NBD summary in weeks: repeat purchase days, time of the last since the first, age since the first.
        (pl.col("purchase_days") - 1).alias("bgnbd_x"),
        ((pl.col("tenure_days").floor() - pl.col("recency_days").floor()) / WEEK_DAYS).alias("bgnbd_t_x"),
        (pl.col("tenure_days").floor() / WEEK_DAYS).alias("bgnbd_T"),
    ).drop("_orders_prev_90d")


def _history(orders: pl.DataFrame, cutoff: datetime, config: FeatureConfig) -> pl.DataFrame:
    """The orders features may see: before the cut-off and within the history depth."""
    return orders.filter((pl.col("ordered_at") < cutoff)
                         & (pl.col("ordered_at") >= cutoff - timedelta(days=config.history_days)))


def flag_features(orders: pl.DataFrame, cutoff: datetime, who: pl.DataFrame,
                  config: FeatureConfig) -> pl.DataFrame | None:
    """Discount behaviour and new products, when the orders carry those columns."""
    if "discount" not in orders.columns:
        return None
    past = _history(orders, cutoff, config).join(who, on="customer_id", how="semi")
    discounted = (pl.col("discount").fill_null(0) > 0) | pl.col("has_coupon").fill_null(False)
    if "marked_down" in past.columns:
        discounted = discounted | pl.col("marked_down").fill_null(False)
    new_lines = pl.col("new_product_lines").fill_null(0) if "new_product_lines" in past.columns else pl.lit(0)
    grouped = past.lazy().group_by("customer_id").agg(
        discounted.mean().alias("discount_share"),
        pl.when(discounted).then(pl.col("ordered_at")).max().alias("_last_discounted"),
        (new_lines > 0).sum().alias("new_product_orders"),
        pl.len().alias("_orders"),
    )
    streak = (past.lazy().select("customer_id", "ordered_at")
              .join(grouped.select("customer_id", "_last_discounted"), on="customer_id")
              .filter(pl.col("_last_discounted").is_null() | (pl.col("ordered_at") > pl.col("_last_discounted")))
              .group_by("customer_id").agg(pl.len().alias("full_price_streak")))
    return (grouped.join(streak, on="customer_id", how="left")
            .select("customer_id", "discount_share", "new_product_orders",
                    pl.col("full_price_streak").fill_null(0)).collect())


def event_features(events: pl.DataFrame, cutoff: datetime, who: pl.DataFrame, config: FeatureConfig) -> pl.DataFrame:
    """Counts of each event type over the event windows, and days since the last event."""
    longest = max(config.event_windows)
    recent = events.filter((pl.col("occurred_at") < cutoff)
                           & (pl.col("occurred_at") >= cutoff - timedelta(days=longest)))
    age, days_ago = _days_before(cutoff, "occurred_at"), _days_ago(cutoff, "occurred_at")
    counts = [((pl.col("type") == kind) & (days_ago <= w)).sum().alias(f"{kind}_{w}d")
              for kind in config.event_types for w in config.event_windows]
    grouped = recent.lazy().join(who.lazy(), on="customer_id", how="semi").group_by("customer_id").agg(
        age.min().alias("days_since_event"), *counts)
    frame = who.lazy().join(grouped, on="customer_id", how="left")
    names = [f"{kind}_{w}d" for kind in config.event_types for w in config.event_windows]
    return frame.with_columns(*[pl.col(n).fill_null(0) for n in names],
                              pl.col("days_since_event").fill_null(float(longest))).collect()


def category_features(categories: pl.DataFrame, cutoff: datetime, who: pl.DataFrame) -> pl.DataFrame:
    """Category breadth: product categories bought from before the cut-off (first purchase before it)."""
    bought = (categories.filter(pl.col("first_bought_at") < cutoff).join(who, on="customer_id", how="semi")
              .group_by("customer_id").agg(pl.len().cast(pl.Int32).alias("category_breadth")))
    return who.join(bought, on="customer_id", how="left").with_columns(pl.col("category_breadth").fill_null(0))


def segment_features(customers: pl.DataFrame, orders: pl.DataFrame, events: pl.DataFrame | None, cutoff: datetime,
                     who: pl.DataFrame, rule_sets: SegmentRules) -> pl.DataFrame:
    """Tier and layer as of the cut-off (rank of the assigned value in its rule set, 0 = the first rule), and
    one 0/1 column per tag whose add rule holds at the cut-off.

    Recomputed from the same point-in-time data with the segmentation rules in force (no hysteresis: a
    snapshot has no previous run), so they can never leak what the stored state learned later.
    """
    from segmentation.metrics import MetricParams, compute_metrics

    mine = customers.join(who, on="customer_id", how="semi")
    no_events = pl.DataFrame(schema={"customer_id": pl.Int64, "occurred_at": pl.Datetime("us", "UTC"),
                                     "type": pl.String})
    metrics = compute_metrics(mine, orders.join(who, on="customer_id", how="semi"),
                              no_events if events is None else events.join(who, on="customer_id", how="semi"),
                              cutoff, MetricParams(window_days=rule_sets[0].window_days))
    return _segment_columns(metrics, who, rule_sets)


def _segment_columns(metrics: pl.DataFrame, who: pl.DataFrame, rule_sets: SegmentRules) -> pl.DataFrame:
    """Tier and layer ranks and the tags' add rules over the segmentation metrics of the population."""
    from segmentation.rules import evaluate

    tier_rules, layer_rules, tag_set = rule_sets
    frame = metrics.select("customer_id")
    for name, rules in (("tier", tier_rules), ("layer", layer_rules)):
        ranks = {value: index for index, value in enumerate(rules.values())}
        assigned = evaluate(metrics, rules).select("customer_id", pl.col("value").alias(name))
        frame = frame.join(assigned, on="customer_id").with_columns(
            pl.col(name).replace_strict(ranks, return_dtype=pl.Int8).alias(f"{name}_rank"))
    # Tags from their add rules alone: a snapshot has no tag history (freshness, lapsed VIP) to lean on.
    with_tier = metrics.join(frame.select("customer_id", "tier"), on="customer_id")
    tags = with_tier.select("customer_id", *[
        pl.all_horizontal([c.expression(m) for m, c in rule.add.items()]).fill_null(False).cast(pl.Int8)
        .alias(f"tag_{rule.name}") for rule in tag_set.tags])
    return (who.join(frame.drop("tier", "layer"), on="customer_id", how="left")
            .join(tags, on="customer_id", how="left"))


def state_covers(config: FeatureConfig, features: list[str]) -> bool:
    """Whether the customer state's churn columns can give these features under this configuration."""
    from crm.state import CHURN_EVENT_TYPES, CHURN_EVENT_WINDOWS, CHURN_HISTORY_DAYS, CHURN_ORDER_WINDOWS

    return (config.windows == CHURN_ORDER_WINDOWS and config.event_windows == CHURN_EVENT_WINDOWS
            and set(config.event_types) <= set(CHURN_EVENT_TYPES) and config.history_days == CHURN_HISTORY_DAYS
            and (config.population == "all" or config.lookback_days in CHURN_ORDER_WINDOWS)
            and "category_breadth" not in features)


def features_from_state(state: pl.DataFrame, cutoff: datetime, config: FeatureConfig = FeatureConfig(), *,
                        customers: pl.DataFrame | None = None, rule_sets: SegmentRules | None = None) -> pl.DataFrame:
    """The same frame as `build_features` (orders, flags and events; tiers and tags when customers and rules are
    given), from the customer state's rows computed as of `cutoff` instead of the raw history."""
    from segmentation.metrics import MetricParams, metrics_from_state

    in_population = (pl.col("churn_orders") if config.population == "all"
                     else pl.col(f"churn_orders_{config.lookback_days}d"))
    state = state.filter(in_population > 0)
    orders = pl.col("churn_orders")
    days = partial(_days_before, cutoff)
    base = state.lazy().select(
        "customer_id", days("last_order_at").alias("recency_days"), days("churn_first_order_at").alias("tenure_days"),
        orders.cast(pl.UInt32).alias("orders_total"), pl.col("churn_spend").alias("spend_total"),
        (pl.col("churn_spend") / orders).alias("order_value_mean"),
        (pl.col("churn_zero_orders") / orders).alias("zero_amount_share"),
        pl.col("churn_last_order_value").alias("last_order_value"),
        (pl.col("churn_orders_180d") - pl.col("churn_orders_90d")).alias("_orders_prev_90d"),
        *[pl.col(f"churn_orders_{w}d").alias(f"orders_{w}d") for w in config.windows],
        *[pl.col(f"churn_spend_{w}d").alias(f"spend_{w}d") for w in config.windows],
        pl.col("churn_gap_mean").alias("gap_mean"), pl.col("churn_gap_std").alias("gap_std"),
        pl.col("churn_purchase_days").cast(pl.UInt32).alias("purchase_days"), pl.col("churn_last_gap").alias("last_gap"),
        (pl.col("churn_discounted_orders") / orders).alias("discount_share"),
        pl.col("churn_new_product_orders").alias("new_product_orders"),
        pl.col("churn_full_price_streak").alias("full_price_streak"),
        days("churn_last_event_at").fill_null(float(max(config.event_windows))).alias("days_since_event"),
        *[pl.col(f"churn_{kind}_{w}d").alias(f"{kind}_{w}d") for kind in config.event_types
          for w in config.event_windows])
    frame = _derived_order_columns(base).sort("customer_id").collect()
    if customers is not None and rule_sets is not None:
        # Like the training snapshots, the tier inputs see two years of orders, not the whole lifetime.
        seen = state.join(frame, on="customer_id", how="semi").with_columns(
            pl.col("churn_orders").alias("orders_total"), pl.col("churn_spend").alias("monetary_total"),
            pl.col("churn_first_order_at").alias("first_order_at"),
            pl.col("churn_full_price_streak").alias("full_price_streak"))
        metrics = metrics_from_state(customers.join(frame, on="customer_id", how="semi"), seen, cutoff,
                                     MetricParams(window_days=rule_sets[0].window_days))
        frame = frame.join(_segment_columns(metrics, frame.select("customer_id"), rule_sets), on="customer_id",
                           how="left")
    return frame.sort("customer_id")


def build_features(orders: pl.DataFrame, cutoff: datetime, config: FeatureConfig = FeatureConfig(), *,
                   events: pl.DataFrame | None = None, customers: pl.DataFrame | None = None,
                   rule_sets: SegmentRules | None = None,
                   categories: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per customer of the cut-off's population; every column computed from rows before the cut-off.

    customers (customer_id, signed_up_at, birthday) and the tier, layer and tag rules, when given, add the
    tier, layer and tags each customer had at the cut-off; categories (customer_id, category, first_bought_at) the
    category breadth.
    """
    frame = order_features(orders, cutoff, config)
    who = frame.select("customer_id")
    flags = flag_features(orders, cutoff, who, config)
    if flags is not None:
        frame = frame.join(flags, on="customer_id", how="left")
    if events is not None:  # even when empty: the columns depend on what the shop sends, not on the day
        frame = frame.join(event_features(events, cutoff, who, config), on="customer_id", how="left")
    if categories is not None:
        frame = frame.join(category_features(categories, cutoff, who), on="customer_id", how="left")
    if customers is not None and rule_sets is not None:
        frame = frame.join(segment_features(customers, _history(orders, cutoff, config), events, cutoff, who,
                                            rule_sets), on="customer_id", how="left")
    return frame.sort("customer_id")


def feature_names(frame: pl.DataFrame) -> list[str]:
    """The model's inputs: every column but the id, the label and the BG/NBD summary's raw inputs."""
    return [c for c in frame.columns if c not in ("customer_id", "churned", "cutoff")]
