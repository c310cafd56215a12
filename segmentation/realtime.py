"""Tags within a minute: the customers whose state changed get their tags re-evaluated as of now.

A worker (`crm segment follow`) claims the state-change events the write path appended (`customer_change`),
computes those customers' metrics from their buckets as of the coming midnight (so what happened today counts),
and adds or removes their tags exactly as the nightly run would, recording each move as a transition that
later packages (triggered campaigns, journeys) act on. Tiers and layers stay nightly: they rank customers
against the whole population. Transitions made here carry run id 0.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import polars as pl
from sqlmodel import Session

from crm import state as crm_state
from crm.service import customers_frame
from kit.bulkwrite import fill_empty_table, stage_frame
from kit.columnar import read_frame
from kit.context import Context
from segmentation.metrics import MetricParams, metrics_from_state
from segmentation.service import TRANSITION_TYPES, current_rule_set, record_entries, write_tag_changes
from segmentation.tags import evaluate_tags

REALTIME_RUN = 0
POPULATION_METRICS = ("r_score", "f_score", "m_score", "value_percentile")


def _ranked_against_everyone(session: Session, metrics: pl.DataFrame) -> pl.DataFrame:
    """value_percentile of the changed customers among every buyer in the window (the stored state's spend)."""
    import numpy as np

    ordered = np.sort(crm_state.window_spend_of_buyers(session).to_numpy())
    ranks = np.searchsorted(ordered, metrics["monetary"].to_numpy(), side="right")
    share = np.round(ranks / max(len(ordered), 1) * 100, 2)
    return metrics.with_columns(pl.when(pl.col("frequency") > 0).then(pl.Series(share)).otherwise(0.0)
                                .alias("value_percentile"))


def refresh_changed_tags(session: Session, ctx: Context, *, limit: int = 5000) -> dict[str, Any]:
    """Claim up to `limit` state changes and re-evaluate those customers' tags; returns what it did."""
    now = ctx.clock.now()
    changes = crm_state.claim_changes(session, limit)
    if changes.is_empty():
        return {"changes": 0, "customers": 0, "tags_added": 0, "tags_removed": 0}
    customers = changes["customer_id"].unique()
    tier_version, tier_rules = current_rule_set(session, "tier")
    tags_version, tag_set = current_rule_set(session, "tags")
    params = MetricParams(window_days=tier_rules.window_days)
    tomorrow = datetime(now.year, now.month, now.day, tzinfo=now.tzinfo) + timedelta(days=1)
    rows = crm_state.customers_as_of(session, customers, tomorrow, params)
    people = pl.concat([customers_frame(session, customer_id=int(c)) for c in customers]) if len(customers) <= 50 \
        else customers_frame(session).join(pl.DataFrame({"customer_id": customers}), on="customer_id", how="semi")
    metrics = metrics_from_state(people, rows, tomorrow, params)
    stage_frame(session, "stage_realtime_customers", pl.DataFrame({"customer_id": customers}), {"customer_id": "int"})
    # Ranks against the population are the nightly run's; the tier too (tags may read it).
    known = read_frame(session, "SELECT s.customer_id, s.tier, s.r_score, s.f_score, s.m_score FROM customer_segment s "
                       "JOIN stage_realtime_customers k ON k.customer_id = s.customer_id", {},
                       {"customer_id": pl.Int64, "tier": pl.String, "r_score": pl.Int8, "f_score": pl.Int8,
                        "m_score": pl.Int8}, same_connection=True)
    metrics = metrics.drop("r_score", "f_score", "m_score").join(known, on="customer_id", how="left")
    if any("value_percentile" in {*rule.add, *(rule.remove or {})} for rule in tag_set.tags):
        metrics = _ranked_against_everyone(session, metrics)
    current = read_frame(session, "SELECT t.customer_id, t.tag, t.since FROM customer_tag t "
                         "JOIN stage_realtime_customers k ON k.customer_id = t.customer_id", {},
                         {"customer_id": pl.Int64, "tag": pl.String, "since": pl.Datetime("us", "UTC")},
                         same_connection=True)
    added, removed = evaluate_tags(metrics, current, now, tag_set)
    moves = pl.concat([
        added.select("customer_id", pl.lit("tag").alias("dimension"), "tag", pl.lit(None, pl.String).alias("from_value"),
                     pl.col("tag").alias("to_value"), pl.lit(tags_version).alias("version"), "why"),
        removed.select("customer_id", pl.lit("tag").alias("dimension"), "tag", pl.col("tag").alias("from_value"),
                       pl.lit(None, pl.String).alias("to_value"), pl.lit(tags_version).alias("version"), "why"),
    ]).with_columns(run_id=pl.lit(REALTIME_RUN), at=pl.lit(now))
    fill_empty_table(session, "segment_transition", moves, TRANSITION_TYPES)
    record_entries(session, moves, now)
    write_tag_changes(session, added, removed, now, tags_version)
    crm_state.mark_processed(session, changes["id"].to_list(), now)
    return {"changes": len(changes), "customers": len(customers), "tags_added": len(added),
            "tags_removed": len(removed), "tier_rule_version": tier_version}
