"""Per-customer metrics for rules and tags, vectorised with polars, strictly from data before `as_of`."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from crm.state import StateWindows

DAY_US = 86_400_000_000

# name -> (kind, description); rule sets may use exactly these.
METRICS: dict[str, tuple[str, str]] = {
    "recency_days": ("number", "whole days since the last order (null: never ordered)"),
    "frequency": ("number", "orders in the window"),
    "monetary": ("number", "amount paid in the window"),
    "orders_total": ("number", "orders ever"),
    "monetary_total": ("number", "amount paid ever"),
    "customer_age_days": ("number", "days since sign-up (or the first order)"),
    "r_score": ("number", "recency quintile, 5 = most recent (buyers only)"),
    "f_score": ("number", "frequency quintile, 5 = most orders in the window"),
    "m_score": ("number", "monetary quintile, 5 = highest spend in the window"),
    "value_percentile": ("number", "percentile of spend in the window among buyers in it (0-100)"),
    "orders_30d": ("number", "orders in the last 30 days"),
    "discounted_share": ("number", "share of the window's orders with a discount, coupon or marked-down item"),
    "full_price_streak": ("number", "consecutive most recent orders bought at full price"),
    "new_product_orders": ("number", "orders in the window containing a new product"),
    "days_since_last_login": ("number", "days since the last login event (capped at the event look-back)"),
    "days_since_last_activity": ("number", "days since the last event or order (capped at the look-back)"),
    "logins_30d": ("number", "login events in the last 30 days"),
    "views_30d": ("number", "product views in the last 30 days"),
    "cart_abandons_30d": ("number", "cart abandons in the last 30 days"),
    "abandoned_since_last_order": ("number", "1 when the last cart abandon is newer than the last order"),
    "low_activity_months": ("number", "consecutive complete months with activity below the threshold"),
    "birthday_this_month": ("number", "1 when the birthday falls in the as-of month"),
    "days_since_left_vip": ("number", "days since the customer last left the VIP tier (null: never)"),
    "tier": ("text", "the tier after this run (tags only)"),
}


# The metric windows are the customer state's: the state keeps its window columns for exactly these.
MetricParams = StateWindows


def _days(delta: pl.Expr) -> pl.Expr:
    """Whole days in a duration expression."""
    return (delta.dt.total_microseconds() // DAY_US).cast(pl.Int32)


def quintile(values: pl.Expr, *, higher_is_better: bool = True) -> pl.Expr:
    """Score 1..5 by rank (ties share a score); null stays null."""
    ranked = (values if higher_is_better else -values).rank(method="average")
    count = values.is_not_null().sum()
    return (((ranked - 0.5) / count * 5).floor() + 1).clip(1, 5).cast(pl.Int8)


def _percentile(values: pl.Expr) -> pl.Expr:
    """Share (0-100) of non-null values at or below each value."""
    return (values.rank(method="max") / values.is_not_null().sum() * 100).round(2)


def _months_before(as_of: datetime, k: int) -> datetime:
    """Start of the calendar month k months before the as-of month (k = 0: the as-of month itself)."""
    index = as_of.year * 12 + as_of.month - 1 - k
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=as_of.tzinfo)


def compute_metrics(customers: pl.DataFrame, orders: pl.DataFrame, events: pl.DataFrame, as_of: datetime,
                    params: MetricParams = MetricParams(), left_vip: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per customer with every metric in METRICS except `tier`.

    customers: customer_id, signed_up_at, birthday. orders: customer_id, ordered_at, amount_paid, discount,
    has_coupon, and optionally marked_down and new_product_lines. events: customer_id, occurred_at, type.
    left_vip: customer_id, left_at. Rows on or after `as_of` are ignored whatever the caller passes.
    """
    window_start = as_of - timedelta(days=params.window_days)
    recent_start = as_of - timedelta(days=params.recent_days)
    orders = orders.filter(pl.col("ordered_at") < as_of)
    events = events.filter((pl.col("occurred_at") < as_of)
                           & (pl.col("occurred_at") >= as_of - timedelta(days=params.event_lookback_days)))
    discounted = (pl.col("discount") > 0) | pl.col("has_coupon").fill_null(False)
    if "marked_down" in orders.columns:
        discounted = discounted | pl.col("marked_down").fill_null(False)
    new_product = (pl.col("new_product_lines").fill_null(0) > 0) if "new_product_lines" in orders.columns \
        else pl.lit(False)
    in_window = pl.col("ordered_at") >= window_start
    per_order = orders.lazy().group_by("customer_id").agg(
        pl.col("ordered_at").max().alias("last_order_at"),
        pl.col("ordered_at").min().alias("first_order_at"),
        pl.len().alias("orders_total"),
        pl.col("amount_paid").sum().alias("monetary_total"),
        in_window.sum().alias("frequency"),
        pl.when(in_window).then(pl.col("amount_paid")).sum().alias("monetary"),
        (pl.col("ordered_at") >= recent_start).sum().alias("orders_30d"),
        (discounted & in_window).sum().alias("_discounted_in_window"),
        (new_product & in_window).sum().alias("new_product_orders"),
        pl.when(discounted).then(pl.col("ordered_at")).max().alias("_last_discounted"),
    )
    # The current full-price streak: orders newer than the newest discounted one (all of them when none
    # was discounted). A join back is far cheaper than a nested filter inside the aggregation.
    after_discount = (orders.lazy().select("customer_id", "ordered_at")
                      .join(per_order.select("customer_id", "_last_discounted")
                            .filter(pl.col("_last_discounted").is_not_null()), on="customer_id")
                      .filter(pl.col("ordered_at") > pl.col("_last_discounted"))
                      .group_by("customer_id").agg(pl.len().alias("_after_discount")))
    per_order = per_order.join(after_discount, on="customer_id", how="left").with_columns(
        pl.when(pl.col("_last_discounted").is_null()).then(pl.col("orders_total"))
        .otherwise(pl.col("_after_discount").fill_null(0)).alias("full_price_streak"))
    months_back = params.low_activity_months_max
    recent = pl.col("occurred_at") >= recent_start
    is_login, is_abandon = pl.col("type") == "login", pl.col("type") == "cart_abandon"
    per_event = events.lazy().group_by("customer_id").agg(
        pl.when(is_login).then(pl.col("occurred_at")).max().alias("_last_login"),
        pl.col("occurred_at").max().alias("_last_event"),
        (is_login & recent).sum().alias("logins_30d"),
        ((pl.col("type") == "view") & recent).sum().alias("views_30d"),
        (is_abandon & recent).sum().alias("cart_abandons_30d"),
        pl.when(is_abandon).then(pl.col("occurred_at")).max().alias("_last_abandon"),
    )
    # Actions (events and orders) per complete month before the as-of month, newest = 1. The streak of
    # low months ends at the newest month that reached the threshold, so only that month is kept.
    month_starts = [_months_before(as_of, k) for k in range(months_back + 1)]  # newest first
    boundaries = pl.Series(list(reversed(month_starts)), dtype=pl.Datetime("us", "UTC"))
    actions = pl.concat([events.select("customer_id", pl.col("occurred_at").alias("at")),
                         orders.select("customer_id", pl.col("ordered_at").alias("at"))]).lazy()
    month = (months_back + 1 - pl.lit(boundaries).search_sorted(pl.col("at"), side="right")).alias("month")
    since = max(month_starts[-1], as_of - timedelta(days=params.event_lookback_days))  # events go no further back
    busy_month = (actions.filter((pl.col("at") >= since) & (pl.col("at") < month_starts[0]))
                  .group_by("customer_id", month).len()
                  .filter(pl.col("len") >= params.low_activity_threshold)
                  .group_by("customer_id").agg(pl.col("month").min().alias("_newest_busy_month")))
    has_events = not events.is_empty()
    frame = (customers.lazy().select("customer_id", "signed_up_at", "birthday")
             .join(per_order, on="customer_id", how="left")
             .join(per_event, on="customer_id", how="left")
             .join(busy_month, on="customer_id", how="left"))
    return _derive(frame, as_of, params, left_vip, has_events)


def metrics_from_state(customers: pl.DataFrame, state: pl.DataFrame, as_of: datetime,
                       params: MetricParams = MetricParams(), left_vip: pl.DataFrame | None = None, *,
                       has_events: bool | None = None) -> pl.DataFrame:
    """The same metrics as `compute_metrics`, from the customer state's rows (its window columns as of `as_of`).

    state: crm.state's summary columns (customer_id, last_order_at, first_order_at, orders_total, …,
    newest_busy_month), computed with this `as_of` and these windows. `has_events` (whether the shop sends events
    at all) is read from the rows unless given, as for a few customers of a larger population.
    """
    month_index = as_of.year * 12 + as_of.month
    busy = pl.col("newest_busy_month")
    renamed = state.lazy().select(
        "customer_id", "last_order_at", "first_order_at", "orders_total", "monetary_total", "frequency", "monetary",
        "orders_30d", pl.col("discounted_in_window").alias("_discounted_in_window"), "new_product_orders",
        "full_price_streak", "logins_30d", "views_30d", "cart_abandons_30d",
        pl.col("last_login_at").alias("_last_login"), pl.col("last_event_at").alias("_last_event"),
        pl.col("last_abandon_at").alias("_last_abandon"),
        (month_index - (busy.dt.year().cast(pl.Int32) * 12 + busy.dt.month().cast(pl.Int32)))
        .alias("_newest_busy_month"))
    if has_events is None:
        has_events = bool(state["last_event_at"].is_not_null().any()) if not state.is_empty() else False
    frame = customers.lazy().select("customer_id", "signed_up_at", "birthday").join(renamed, on="customer_id",
                                                                                     how="left")
    return _derive(frame, as_of, params, left_vip, has_events)


def _derive(frame: pl.LazyFrame, as_of: datetime, params: MetricParams, left_vip: pl.DataFrame | None,
            has_events: bool) -> pl.DataFrame:
    """Per-customer aggregates (however they were obtained) to the metrics: days, shares, scores, percentiles."""
    now = pl.lit(as_of).cast(pl.Datetime("us", "UTC"))
    months_back = params.low_activity_months_max
    streak = (pl.col("_newest_busy_month").cast(pl.Int32) - 1).fill_null(months_back)
    lookback = params.event_lookback_days
    if left_vip is not None and not left_vip.is_empty():
        frame = frame.join(left_vip.lazy().filter(pl.col("left_at") < as_of).group_by("customer_id")
                           .agg(pl.col("left_at").max()), on="customer_id", how="left")
    else:
        frame = frame.with_columns(pl.lit(None, pl.Datetime("us", "UTC")).alias("left_at"))
    counts = ["orders_total", "frequency", "orders_30d", "_discounted_in_window", "new_product_orders",
              "full_price_streak", "logins_30d", "views_30d", "cart_abandons_30d"]
    frame = frame.with_columns(
        *[pl.col(c).fill_null(0).cast(pl.Int32) for c in counts],
        pl.col("monetary").fill_null(0.0).round(2), pl.col("monetary_total").fill_null(0.0).round(2),
    ).with_columns(
        _days(now - pl.col("last_order_at")).alias("recency_days"),
        _days(now - pl.coalesce("signed_up_at", "first_order_at")).alias("customer_age_days"),
        pl.when(pl.col("frequency") > 0).then(pl.col("_discounted_in_window") / pl.col("frequency"))
        .otherwise(0.0).alias("discounted_share"),
        (_days(now - pl.col("_last_login")).fill_null(lookback) if has_events
         else pl.lit(None, pl.Int32)).alias("days_since_last_login"),
        pl.min_horizontal(_days(now - pl.col("_last_event")), _days(now - pl.col("last_order_at")))
        .clip(upper_bound=lookback).fill_null(lookback).alias("days_since_last_activity"),
        (pl.col("_last_abandon").is_not_null()
         & (pl.col("last_order_at").is_null() | (pl.col("_last_abandon") > pl.col("last_order_at"))))
        .cast(pl.Int8).alias("abandoned_since_last_order"),
        streak.alias("low_activity_months"),
        (pl.col("birthday").dt.month() == as_of.month).fill_null(False).cast(pl.Int8).alias("birthday_this_month"),
        _days(now - pl.col("left_at")).alias("days_since_left_vip"),
    ).with_columns(
        quintile(pl.col("recency_days"), higher_is_better=False).alias("r_score"),
        quintile(pl.when(pl.col("orders_total") > 0).then(pl.col("frequency"))).alias("f_score"),
        quintile(pl.when(pl.col("orders_total") > 0).then(pl.col("monetary"))).alias("m_score"),
        _percentile(pl.when(pl.col("frequency") > 0).then(pl.col("monetary"))).fill_null(0.0)
        .alias("value_percentile"),
    )
    names = [m for m in METRICS if m != "tier"]
    return frame.select("customer_id", *names).sort("customer_id").collect()


def rfm_cell(frame: pl.DataFrame) -> pl.Series:
    """The 'RFM' cell such as '545' (null for customers who never ordered)."""
    return frame.select(pl.concat_str([pl.col("r_score").cast(pl.String), pl.col("f_score").cast(pl.String),
                                       pl.col("m_score").cast(pl.String)]).alias("rfm")).to_series()
