"""Anti-flapping: a customer moves to a new tier (or layer) only once the move has held long enough."""

from __future__ import annotations

from datetime import datetime

import polars as pl

STATE_SCHEMA = {"customer_id": pl.Int64, "value": pl.String, "since": pl.Datetime("us", "UTC"),
                "pending": pl.String, "pending_runs": pl.Int32, "pending_as_of": pl.Datetime("us", "UTC")}


def settle(previous: pl.DataFrame, candidate: pl.DataFrame, as_of: datetime, *, confirm_runs: int) -> pl.DataFrame:
    """New state per customer from the previous state and this run's candidate values.

    previous: STATE_SCHEMA columns (customers seen before). candidate: customer_id, value, deep.
    A changed candidate becomes `pending`; it is adopted when it has been the candidate on
    `confirm_runs` runs on distinct as-of dates in a row, or at once when `deep` (it lies inside
    the new rule by the rule set's margin). Customers seen for the first time take the candidate.
    Returns STATE_SCHEMA columns plus `previous_value` (null for new customers) and `changed`.
    """
    moment = pl.lit(as_of).cast(pl.Datetime("us", "UTC"))
    frame = candidate.select("customer_id", pl.col("value").alias("_candidate"), pl.col("deep")).join(
        previous.cast(STATE_SCHEMA), on="customer_id", how="left")
    new_customer = pl.col("value").is_null()
    same = pl.col("_candidate") == pl.col("value")
    continuing = pl.col("pending") == pl.col("_candidate")
    # A rerun on the same as-of date is not a new observation: it neither counts nor resets.
    runs = (pl.when(continuing & (pl.col("pending_as_of") >= moment)).then(pl.col("pending_runs"))
            .when(continuing).then(pl.col("pending_runs") + 1)
            .otherwise(pl.lit(1, pl.Int32)))
    adopt = new_customer | (~same & (pl.col("deep") | (runs >= confirm_runs)))
    frame = frame.with_columns(adopt.alias("_adopt"), runs.alias("_runs"), same.alias("_same"),
                               new_customer.alias("_new"))
    return frame.select(
        "customer_id",
        pl.when("_adopt").then(pl.col("_candidate")).otherwise(pl.col("value")).alias("value"),
        pl.when("_adopt").then(moment).otherwise(pl.col("since")).alias("since"),
        pl.when(pl.col("_adopt") | pl.col("_same")).then(None).otherwise(pl.col("_candidate")).alias("pending"),
        pl.when(pl.col("_adopt") | pl.col("_same")).then(None).otherwise(pl.col("_runs")).cast(pl.Int32)
        .alias("pending_runs"),
        pl.when(pl.col("_adopt") | pl.col("_same")).then(None)
        .when(pl.col("pending") == pl.col("_candidate")).then(pl.max_horizontal("pending_as_of", moment))
        .otherwise(moment).alias("pending_as_of"),
        pl.when(pl.col("_new")).then(None).otherwise(pl.col("value")).alias("previous_value"),
        (pl.col("_adopt") & ~pl.col("_new")).alias("changed"),
    )
