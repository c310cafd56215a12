"""Readable reasons from LightGBM feature contributions ("no order for 97 days; usually orders every 30")."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

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


class _Row:
    """One row of a feature matrix, read by name (cheaper than a dict per customer)."""

    __slots__ = ("_values", "_index")

    def __init__(self, values: np.ndarray, index: dict[str, int]) -> None:
        self._values, self._index = values, index

    def get(self, name: str) -> Any:
        position = self._index.get(name)
        if position is None:
            return None
        value = float(self._values[position])
        return None if math.isnan(value) else value


def top_reasons(contributions: np.ndarray, names: list[str], features: np.ndarray, count: int = 3) -> list[list[str]]:
    """Per row, sentences for the `count` features that raised the risk most (positive contributions only).

    features: the rows' feature values, columns in the order of `names`.
    """
    values = contributions[:, : len(names)]
    top = np.argsort(-values, axis=1)[:, :count]
    index = {name: i for i, name in enumerate(names)}
    result = []
    for position in range(len(values)):
        row = _Row(features[position], index)
        seen: list[str] = []
        for column in top[position]:
            if values[position, column] <= 0:
                break
            text = sentence(names[column], row)
            if text not in seen:  # recency and recency-over-gap read the same: say it once
                seen.append(text)
        result.append(seen)
    return result
