"""Readable reasons from LightGBM feature contributions ("no order for 97 days; usually orders every 30")."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from churn.features import FeatureConfig

EVENT_LOOKBACK = max(FeatureConfig().event_windows)


def _num(value: Any, digits: int = 0) -> str:
    return "unknown" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def sentence(feature: str, row: Any) -> str:
    """One customer-facing sentence for a feature that pushed the risk up."""
    value = row.get(feature)
    if feature in ("recency_days", "recency_over_gap"):
        usual = f"; usually orders every {_num(row.get('gap_mean'))}" if row.get("gap_mean") else ""
        return f"no order for {_num(row.get('recency_days'))} days{usual}"
    if feature == "trend_90d":
        return f"order count changed by {_num(value)} in the last 90 days against the 90 before"
    if feature.startswith("orders_") and feature.endswith("d"):
        return f"{_num(value)} orders in the last {feature[7:-1]} days"
    if feature.startswith("spend_") and feature.endswith("d"):
        return f"spent {_num(value, 2)} in the last {feature[6:-1]} days"
    if feature == "bgnbd_p_alive":
        return f"purchase pattern gives a {_num(100 * value if value is not None else None)}% chance of still being active"
    if feature == "bgnbd_expected":
        return f"expected to place only {_num(value, 1)} orders in the coming horizon"
    if feature == "days_since_event":
        if value is not None and value >= EVENT_LOOKBACK:  # the feature is capped at the longest event window
            return f"no visit or app activity in the last {EVENT_LOOKBACK} days"
        return f"no visit or app activity for {_num(value)} days"
    if feature == "discount_share":
        return f"{_num(100 * value if value is not None else None)}% of orders were discounted"
    if feature in ("orders_total", "purchase_days"):
        return f"only {_num(value)} orders so far"
    if feature == "purchase_days_per_month":
        return f"buys on only {_num(value, 2)} days a month"
    if feature == "category_breadth":
        return f"has bought from only {_num(value)} product categories"
    if feature.startswith("tag_"):
        return f"{'tagged' if value else 'not tagged'} {feature[4:].replace('_', ' ')}"
    if feature == "tier_rank" or feature == "layer_rank":
        return f"{feature[:-5]} rank {_num(value)} (0 is the top)"
    if feature == "tenure_days":
        return f"first order {_num(value)} days ago"
    if feature.split("_")[0] in ("login", "view", "cart") and feature.endswith("d"):
        kind, window = feature.rsplit("_", 1)
        return f"{_num(value)} {kind.replace('_', ' ')} events in the last {window[:-1]} days"
    return f"{feature.replace('_', ' ')} is {_num(value, 2)}"


CONTEXT = ("gap_mean", "recency_days")


def drivers_frame(contributions: np.ndarray, names: list[str], features: np.ndarray, count: int = 3) -> pl.Series:
    """Per row, as JSON, the `count` features that raised the risk most (positive contributions only).

    Stored as data ({"drivers": [{"feature", "value", "contribution"}], "gap_mean", "recency_days"}) and turned
    into sentences
    when read (`sentences`): building 300k×3 sentences in Python at scoring time cost more than the scoring.
    features: the rows' feature values, columns in the order of `names`.
    """
    values = contributions[:, : len(names)]
    top = np.argsort(-values, axis=1)[:, :count]
    picked_values = np.take_along_axis(features, top, axis=1)
    picked_contributions = np.take_along_axis(values, top, axis=1)
    labels = np.asarray(names, dtype=object)
    # Sentences about one feature may quote another (recency against the usual gap): keep those beside.
    context = {name: features[:, names.index(name)] if name in names else np.full(len(features), np.nan)
               for name in CONTEXT}
    frame = pl.DataFrame({
        **{f"f{k}": pl.Series(labels[top[:, k]].tolist(), dtype=pl.String) for k in range(top.shape[1])},
        **{f"v{k}": picked_values[:, k] for k in range(top.shape[1])},
        **{f"c{k}": picked_contributions[:, k] for k in range(top.shape[1])},
        **context,
    }).fill_nan(None)
    drivers = [pl.when(pl.col(f"c{k}") > 0).then(pl.struct(
        pl.col(f"f{k}").alias("feature"), pl.col(f"v{k}").round(4).alias("value"),
        pl.col(f"c{k}").round(4).alias("contribution"))) for k in range(top.shape[1])]
    return frame.select(pl.struct(pl.concat_list(drivers).list.drop_nulls().alias("drivers"),
                                  *[pl.col(name).round(2) for name in CONTEXT])
                        .struct.json_encode().alias("reasons")).to_series()


def sentences(stored: dict[str, Any] | None) -> list[str]:
    """The stored drivers of a score as sentences, strongest first (the same sentence only once)."""
    if not stored:
        return []
    said: list[str] = []
    for driver in stored.get("drivers", []):
        row = {name: stored.get(name) for name in CONTEXT} | {driver["feature"]: driver["value"]}
        text = sentence(driver["feature"], row)
        if text not in said:  # recency and recency-over-gap read the same: say it once
            said.append(text)
    return said
