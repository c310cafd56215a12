"""`crm churn evaluate`: the whole method on a plain transactions file (no events, no items, no database)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from churn.features import FeatureConfig
from churn.policy import FlagPolicy
from churn.predictive import decile_calibration, predictive_fields, realised_after, value_90d
from churn.training import TrainingConfig, add_bgnbd, evaluate_at, snapshot, train_churn


class TransactionsError(ValueError):
    """The file cannot be used (missing column, no parsable rows)."""


def read_transactions(path: Path, *, customer_col: str, time_col: str, amount_col: str | None) -> tuple[pl.DataFrame, int]:
    """Orders as customer_id, ordered_at (UTC), amount_paid; returns the frame and how many rows were unusable."""
    header = pl.read_csv(path, n_rows=0).columns
    for column in (customer_col, time_col) + ((amount_col,) if amount_col else ()):
        if column not in header:
            raise TransactionsError(f"column {column!r} not in {path.name} (has {', '.join(header)})")
    raw = pl.read_csv(path, columns=[c for c in (customer_col, time_col, amount_col) if c], infer_schema=False)
    text = pl.col(time_col).str.strip_chars()
    moment = pl.coalesce(text.str.to_datetime(format=f, strict=False, time_unit="us", time_zone="UTC")
                         for f in ("%Y-%m-%dT%H:%M:%S%#z", "%Y-%m-%d %H:%M:%S%#z", "%Y-%m-%dT%H:%M:%S",
                                   "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%m/%d/%Y %H:%M", "%m/%d/%Y"))
    amount = (pl.col(amount_col).str.replace_all(",", "").cast(pl.Float64, strict=False).fill_null(0.0)
              if amount_col else pl.lit(0.0))
    frame = raw.select(pl.col(customer_col).alias("_customer"), moment.alias("ordered_at"), amount.alias("amount_paid"))
    usable = frame.filter(pl.col("_customer").is_not_null() & pl.col("ordered_at").is_not_null())
    if usable.is_empty():
        raise TransactionsError(f"no row of {path.name} has a customer and a parsable {time_col}")
    codes = usable.select(pl.col("_customer").unique(maintain_order=True)).with_row_index("customer_id", 1)
    usable = usable.join(codes, on="_customer").select(pl.col("customer_id").cast(pl.Int64), "ordered_at",
                                                        "amount_paid")
    return usable, len(frame) - len(usable)


def evaluate_transactions(orders: pl.DataFrame, cutoff: datetime, horizon_days: int = 90,
                          step_days: int = 30, snapshots: int = 6, *, population: str = "active",
                          lookback_days: int = 365, policy: FlagPolicy | None = None) -> dict[str, Any]:
    """Train on snapshots labelled on or before the cut-off, test on the cut-off labelled by (cutoff, cutoff + H]."""
    cutoff = cutoff.astimezone(UTC)
    if orders["ordered_at"].max() <= cutoff:
        raise TransactionsError("no transactions after the cut-off: nothing to test against")
    try:
        config = TrainingConfig(features=FeatureConfig(horizon_days=horizon_days, population=population,
                                                       lookback_days=lookback_days),
                                step_days=step_days, snapshots=snapshots, policy=policy or FlagPolicy())
        result = train_churn(orders.filter(pl.col("ordered_at") <= cutoff), cutoff, config)  # nothing after it
    except ValueError as problem:
        raise TransactionsError(str(problem)) from problem
    test = evaluate_at(result, orders, cutoff, config)
    keys = ("customers", "churn_rate", "roc_auc", "pr_auc", "brier", "precision", "recall", "threshold")
    out = {("n_customers" if k == "customers" else k): test[k] for k in keys}
    out["population"] = test["population"]
    out["shipped"] = result.shipped.chosen
    out["flag"] = test["flag"] | {"policy": config.policy.kind, "aim": result.flag.aim, "met": result.flag.met,
                                  "note": result.flag.note}
    out["baselines"] = {name: {k: m[k] for k in ("roc_auc", "pr_auc", "brier")} for name, m in test["baselines"].items()}
    out["validation"] = {k: result.metrics[k] for k in ("roc_auc", "pr_auc", "brier", "precision", "recall")}
    return out


def predictive_calibration(orders: pl.DataFrame, as_of: datetime, days: int = 90,
                           config: TrainingConfig | None = None) -> dict[str, Any]:
    """Out of time: the predictive fields of a model trained on orders before `as_of`, against what each customer
    then did in the next `days` — purchase days and spend, per decile of the prediction and in total."""
    config = config or TrainingConfig(snapshots=3)
    result = train_churn(orders.filter(pl.col("ordered_at") < as_of), as_of, config)
    frame = add_bgnbd(snapshot(orders, as_of, config, labelled=False), result.bgnbd, config.features.horizon_days)
    fields = predictive_fields(frame, result.bgnbd, result.training["gamma_gamma"], as_of,
                               result.training["predictive"])
    # Purchase days and spend in (as_of, as_of + days], the label's window.
    realised = realised_after(orders, as_of, days).rename({"realised_orders": "days", "realised_spend": "spend"})
    joined = fields.join(realised, on="customer_id", how="left").fill_null(0)
    value = value_90d(joined) * result.training["predictive"]["spend_factor"]
    predicted_orders = joined["expected_orders_90d"].to_numpy()
    return {"customers": joined.height,
            "orders": decile_calibration(predicted_orders, joined["days"].to_numpy().astype(float)),
            "spend": decile_calibration(value, joined["spend"].to_numpy()),
            "total_orders": {"predicted": round(float(predicted_orders.sum()), 1),
                             "realised": int(joined["days"].sum())},
            "total_spend": {"predicted": round(float(value.sum()), 2), "realised": round(float(joined["spend"].sum()), 2)},
            "next_order_dated_share": round(fields["expected_next_order_at"].is_not_null().mean(), 4),
            "p_alive_in_range": bool(fields["p_alive"].is_between(0, 1).all())}
