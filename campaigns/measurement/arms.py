"""Measuring campaigns, pure and vectorised: who was in which arm, what they did within the window, uplift, A/B.

Arms are per (campaign, occurrence, customer) from the outbox rows: `holdout` (drawn for the campaign's control
group, only among members some channel could reach), `global_control` (the shop-wide no-marketing group) and
`treated` (everyone else the campaign decided about: sent, failed, capped or withheld — intention to treat, so
the arms stay comparable). A member converts when they order in [send time, send time + window): for the
holdout the would-be send time the planner gave them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from campaigns.authoring.spec import Experiment
from campaigns.measurement.stats import (
    mean_difference,
    rate_difference,
    sample_size_per_arm,
    sample_still_needed,
)

UTC_TYPE = pl.Datetime("us", "UTC")
ROW_SCHEMA = {"campaign_id": pl.Int64, "occurrence": pl.String, "customer_id": pl.Int64, "channel": pl.String,
              "status": pl.String, "reason": pl.String, "variant": pl.String, "send_at": UTC_TYPE,
              "sent_at": UTC_TYPE, "delivered_at": UTC_TYPE, "opened_at": UTC_TYPE, "clicked_at": UTC_TYPE}
ORDER_COLUMNS = {"customer_id": pl.Int64, "ordered_at": UTC_TYPE, "amount_paid": pl.Float64}


def member_arms(rows: pl.DataFrame) -> pl.DataFrame:
    """One row per (campaign, occurrence, customer): arm, variant and the (would-be) send time."""
    if rows.is_empty():
        return pl.DataFrame(schema={"campaign_id": pl.Int64, "occurrence": pl.String, "customer_id": pl.Int64,
                                    "arm": pl.String, "variant": pl.String, "send_at": UTC_TYPE})
    return (rows.group_by("campaign_id", "occurrence", "customer_id")
            .agg(arm=pl.when((pl.col("reason") == "global_control").any()).then(pl.lit("global_control"))
                 .when((pl.col("reason") == "holdout").any()).then(pl.lit("holdout")).otherwise(pl.lit("treated")),
                 variant=pl.col("variant").drop_nulls().first(), send_at=pl.col("send_at").min())
            .sort("campaign_id", "occurrence", "customer_id"))


def outcomes(arms: pl.DataFrame, orders: pl.DataFrame, window: timedelta, now: datetime) -> pl.DataFrame:
    """Members whose window has closed by `now`, with `converted` (an order in the window) and its `revenue`."""
    closed = arms.filter(pl.col("send_at") + window <= now)
    hits = (closed.select("campaign_id", "occurrence", "customer_id", "send_at")
            .join(orders.select(list(ORDER_COLUMNS)), on="customer_id")
            .filter((pl.col("ordered_at") >= pl.col("send_at")) & (pl.col("ordered_at") < pl.col("send_at") + window))
            .group_by("campaign_id", "occurrence", "customer_id")
            .agg(orders_in_window=pl.len(), revenue=pl.col("amount_paid").sum()))
    return (closed.join(hits, on=["campaign_id", "occurrence", "customer_id"], how="left")
            .with_columns(orders_in_window=pl.col("orders_in_window").fill_null(0),
                          revenue=pl.col("revenue").fill_null(0.0))
            .with_columns(converted=pl.col("orders_in_window") > 0))


def uplift(members: pl.DataFrame, confidence: float = 0.95) -> dict[str, Any]:
    """Treated vs holdout among measured members: rates, their difference, revenue per member, incremental revenue."""
    treated = members.filter(pl.col("arm") == "treated")
    control = members.filter(pl.col("arm") == "holdout")
    rates = rate_difference(int(treated["converted"].sum()), treated.height, int(control["converted"].sum()),
                            control.height, confidence)
    revenue = mean_difference(treated["revenue"].to_numpy(), control["revenue"].to_numpy(), confidence)
    per_member = revenue.as_dict()
    incremental = {key: (None if per_member[key] is None else round(per_member[key] * treated.height, 2))
                   for key in ("difference", "low", "high")}
    return {"conversion": rates.as_dict(), "revenue_per_member": per_member,
            "incremental_conversions": None if rates.difference is None else round(rates.difference * treated.height, 1),
            "incremental_revenue": incremental, "sample_still_needed": sample_still_needed(rates)}


@dataclass(frozen=True)
class ArmResult:
    """One A/B arm's measured members and conversions."""

    name: str
    members: int
    conversions: int


def ab_verdict(arms: list[ArmResult], experiment: Experiment, confidence: float = 0.95) -> dict[str, Any]:
    """A winner only once every arm has the planned sample size and the best arm beats each other arm
    significantly (Bonferroni-corrected over the comparisons); before that, no verdict however the rates look."""
    required = sample_size_per_arm(experiment.baseline_conversion, experiment.tolerated_error, confidence)
    rows = [{"variant": a.name, "members": a.members, "conversions": a.conversions,
             "rate": a.conversions / a.members if a.members else None,
             "still_needed": max(0, required - a.members)} for a in arms]
    verdict: dict[str, Any] = {"variable": experiment.variable, "required_per_arm": required, "arms": rows,
                               "winner": None, "comparisons": []}
    if any(a.members < required for a in arms):
        verdict["status"] = "collecting"  # no peeking: rates are shown, but nothing is declared before n
        return verdict
    best = max(arms, key=lambda a: a.conversions / a.members)
    corrected = 1 - (1 - confidence) / max(len(arms) - 1, 1)
    comparisons = [rate_difference(best.conversions, best.members, other.conversions, other.members, corrected)
                   for other in arms if other is not best]
    verdict["comparisons"] = [{"against": other.name, **c.as_dict()}
                              for other, c in zip([a for a in arms if a is not best], comparisons, strict=True)]
    if all(c.significant and c.difference > 0 for c in comparisons):
        verdict["status"], verdict["winner"] = "winner", best.name
    else:
        verdict["status"] = "no_difference"
    return verdict


def engagement(rows: pl.DataFrame, unit_costs: dict[str, float]) -> pl.DataFrame:
    """Per campaign: reach, sent, delivered, opened, clicked messages and what sending them cost."""
    return (rows.filter(pl.col("sent_at").is_not_null())
            .with_columns(cost=pl.col("channel").replace_strict(unit_costs, default=0.0, return_dtype=pl.Float64))
            .group_by("campaign_id")
            .agg(reach=pl.col("customer_id").n_unique(), sent=pl.len(),
                 delivered=pl.col("delivered_at").is_not_null().sum(),
                 opened=pl.col("opened_at").is_not_null().sum(), clicked=pl.col("clicked_at").is_not_null().sum(),
                 message_cost=pl.col("cost").sum()))
