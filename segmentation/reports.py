"""Segment reports: 30- and 90-day retention by first-order cohort, win-back of the lost tier, and the tier and
layer distribution over time (the segmentation runs' history)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import polars as pl
from sqlmodel import Session

from crm.service import orders_frame
from kit.columnar import read_frame
from kit.context import Context
from segmentation.service import history

UTC_TYPE = pl.Datetime("us", "UTC")
RETENTION_DAYS = (30, 90)


def cohort_retention(orders: pl.DataFrame, now: datetime, days: tuple[int, ...] = RETENTION_DAYS) -> pl.DataFrame:
    """Per first-order month: customers, and for each N the share who ordered again within N days of their first
    order — null while some of the cohort's N-day windows are still open."""
    ordered = orders.select("customer_id", "ordered_at").sort("customer_id", "ordered_at")
    per_customer = ordered.group_by("customer_id").agg(first=pl.col("ordered_at").first(),
                                                       second=pl.col("ordered_at").slice(1, 1).first())
    cohorts = per_customer.with_columns(cohort=pl.col("first").dt.strftime("%Y-%m"))
    aggregations = [pl.len().alias("customers"), pl.col("first").max().alias("_last_first")]
    for n in days:
        aggregations.append(((pl.col("second") - pl.col("first")) <= timedelta(days=n)).fill_null(False)
                            .mean().alias(f"retention_{n}d"))
    table = cohorts.group_by("cohort").agg(aggregations).sort("cohort")
    return table.with_columns([
        pl.when(pl.col("_last_first") + timedelta(days=n) <= now).then(pl.col(f"retention_{n}d").round(4))
        .otherwise(None).alias(f"retention_{n}d") for n in days]).drop("_last_first")


def retention_report(session: Session, ctx: Context) -> dict[str, Any]:
    """Cohort retention over every order."""
    now = ctx.clock.now()
    table = cohort_retention(orders_frame(session, None, now, costs=False), now)
    return {"as_of": now, "days": list(RETENTION_DAYS), "cohorts": table.to_dicts()}


def winback_report(session: Session, ctx: Context, *, tier: str = "lost", since: datetime | None = None,
                   until: datetime | None = None) -> dict[str, Any]:
    """Per month: customers who left the lost tier for another (a tier move, e.g. after a purchase) against the
    tier's size at the month's first segmentation run — the win-back rate."""
    until = until or ctx.clock.now()
    since = since or until - timedelta(days=365)
    moves = read_frame(session, (
        "SELECT t.at, t.customer_id FROM segment_transition t WHERE t.dimension = 'tier' AND t.from_value = :tier "
        "AND t.at >= :since AND t.at < :until"), {"tier": tier, "since": since, "until": until},
        {"at": UTC_TYPE, "customer_id": pl.Int64})
    runs = history(session, since, until)
    sizes: dict[str, int] = {}
    for run in runs:  # oldest first: the first run of each month gives the month's starting size
        sizes.setdefault(run["as_of"].strftime("%Y-%m"), run["tier"].get(tier, 0))
    won = dict(moves.with_columns(month=pl.col("at").dt.strftime("%Y-%m")).group_by("month")
               .agg(pl.col("customer_id").n_unique()).iter_rows())
    months = sorted(set(sizes) | set(won))
    rows = [{"month": m, "tier_size": sizes.get(m), "won_back": won.get(m, 0),
             "winback_rate": round(won.get(m, 0) / sizes[m], 4) if sizes.get(m) else None} for m in months]
    return {"tier": tier, "since": since, "until": until, "months": rows}


def tier_history_report(session: Session, ctx: Context, *, since: datetime | None = None,
                        until: datetime | None = None) -> dict[str, Any]:
    """Tier and layer counts of each segmentation run in the period (default: the last year, and every newer run —
    a run's as-of date can be ahead of the clock: the pipeline names it by the local day it prepares)."""
    since = since or (until or ctx.clock.now()) - timedelta(days=365)
    return {"since": since, "until": until, "runs": history(session, since, until)}
