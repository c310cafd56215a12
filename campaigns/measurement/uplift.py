"""Per-customer uplift from past arms, pure: a T-learner on LightGBM, and how well a ranking finds the customers
a message changes (Qini curve and coefficient, incremental conversions per 1,000 messages).

A T-learner fits P(convert | treated, x) and P(convert | holdout, x) on the two arms separately; the uplift is
their difference. Arms come from random holdouts, so the difference estimates the causal effect of the message
(within the features' reach). Customers whose uplift is below zero are the "sleeping dogs": messages put them off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from churn.model import ChurnModel

# Conversions are rare (a few %) and the uplift is a small difference of two noisy fits: slower, shallower trees
# than the churn model's, many rows per leaf.
UPLIFT_PARAMS: dict[str, Any] = {"learning_rate": 0.08, "num_leaves": 8, "max_depth": 3, "min_data_in_leaf": 200,
                                 "lambda_l2": 5.0}
MIN_ARM_MEMBERS = 200  # per arm; fewer cannot separate a few points of uplift from noise
VALIDATION_SHARE = 0.2
# What the uplift model sees: order and discount features (what any shop has), as of the send.
UPLIFT_FEATURES = ("recency_days", "tenure_days", "orders_total", "spend_total", "order_value_mean",
                   "orders_90d", "orders_365d", "spend_90d", "spend_365d", "gap_mean", "recency_over_gap",
                   "trend_90d", "purchase_days_per_month", "discount_share", "full_price_streak")


def uplift_features(frame: pl.DataFrame) -> pl.DataFrame:
    """The customer id and the uplift features a churn features frame has."""
    return frame.select("customer_id", *[c for c in UPLIFT_FEATURES if c in frame.columns])


def _split(keys: np.ndarray, share: float, salt: int) -> np.ndarray:
    """A fixed pseudo-random subset (True for about `share` of the keys), stable across runs."""
    mixed = (keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(salt)
    return (mixed >> np.uint64(40)) % np.uint64(10_000) < np.uint64(int(share * 10_000))


def held_out(customer_ids: np.ndarray, share: float = 0.3) -> np.ndarray:
    """The members kept out of fitting to measure the model on (the same customers every time)."""
    return _split(customer_ids, share, 0x5EED)


@dataclass
class UpliftModel:
    """Two conversion models, one per arm; `uplift()` is their difference."""

    feature_names: list[str]
    treated: ChurnModel
    control: ChurnModel
    meta: dict[str, Any] = field(default_factory=dict)

    def uplift(self, features: pl.DataFrame) -> np.ndarray:
        """Predicted change in conversion probability from one message, per row."""
        frame = _complete(features, self.feature_names)
        return self.treated.predict_proba(frame) - self.control.predict_proba(frame)

    def to_text(self) -> str:
        """Both boosters and the metadata as one JSON text (what the registry stores)."""
        return json.dumps({"feature_names": self.feature_names, "meta": self.meta,
                           "treated": self.treated.to_text(), "control": self.control.to_text()})

    @classmethod
    def from_text(cls, text: str) -> UpliftModel:
        """Rebuild a stored model."""
        data = json.loads(text)
        return cls(data["feature_names"], ChurnModel.from_text(data["treated"]), ChurnModel.from_text(data["control"]),
                   data.get("meta", {}))


def _complete(features: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """The model's columns as floats; a feature the frame lacks is missing (LightGBM's NaN branch)."""
    return features.select([pl.col(n).cast(pl.Float64) if n in features.columns else pl.lit(None, pl.Float64).alias(n)
                            for n in names])


def _fit_arm(features: pl.DataFrame, converted: np.ndarray, keys: np.ndarray, params: dict[str, Any]) -> ChurnModel:
    """One arm's conversion model, stopping early on a fixed fifth of its members."""
    valid = _split(keys, VALIDATION_SHARE, 0xA11)
    fit = ~valid
    if converted[valid].sum() == 0 or converted[fit].sum() == 0:
        fit = valid = np.ones(len(keys), dtype=bool)  # too few conversions to hold some back
    return ChurnModel(params, num_boost_round=300, early_stopping_rounds=30).fit(
        features.filter(pl.Series(fit)), converted[fit], features.filter(pl.Series(valid)), converted[valid])


def fit_t_learner(features: pl.DataFrame, treated: np.ndarray, converted: np.ndarray, customer_ids: np.ndarray,
                  params: dict[str, Any] | None = None) -> UpliftModel:
    """Fit one conversion model per arm (treated vs holdout) on the given feature columns."""
    names = [c for c in features.columns if c != "customer_id"]
    if treated.sum() < MIN_ARM_MEMBERS or (~treated).sum() < MIN_ARM_MEMBERS:
        raise ValueError(f"an uplift model needs at least {MIN_ARM_MEMBERS} members in each arm "
                         f"(treated {int(treated.sum())}, holdout {int((~treated).sum())})")
    frame = _complete(features, names)
    chosen = UPLIFT_PARAMS | (params or {})
    mask = pl.Series(treated)
    treated_model = _fit_arm(frame.filter(mask), converted[treated], customer_ids[treated], chosen)
    control_model = _fit_arm(frame.filter(~mask), converted[~treated], customer_ids[~treated], chosen)
    return UpliftModel(names, treated_model, control_model,
                       {"treated": int(treated.sum()), "holdout": int((~treated).sum()),
                        "treated_rate": round(float(converted[treated].mean()), 5),
                        "holdout_rate": round(float(converted[~treated].mean()), 5)})


def _qini(score: np.ndarray, treated: np.ndarray, converted: np.ndarray) -> np.ndarray:
    """Incremental conversions among the top k by score, for every k: treated conversions minus holdout
    conversions scaled to the treated count (Radcliffe's Qini)."""
    order = np.argsort(-score, kind="stable")
    t = treated[order].astype(float)
    y = converted[order].astype(float)
    n_t, n_c = np.cumsum(t), np.cumsum(1 - t)
    y_t, y_c = np.cumsum(y * t), np.cumsum(y * (1 - t))
    return y_t - np.divide(y_c * n_t, n_c, out=np.zeros_like(y_c), where=n_c > 0)


def qini_curve(score: np.ndarray, treated: np.ndarray, converted: np.ndarray, points: int = 20) -> list[dict]:
    """Incremental conversions when targeting the top share by `score`, at `points` shares of the population."""
    qini = _qini(score, treated, converted)
    n = len(score)
    return [{"share": 0.0, "incremental": 0.0}] + [
        {"share": step / points, "incremental": round(float(qini[max(round(n * step / points) - 1, 0)]), 3)
         if n else 0.0} for step in range(1, points + 1)]


def qini_coefficient(score: np.ndarray, treated: np.ndarray, converted: np.ndarray) -> float:
    """Area between the Qini curve and the random-targeting line, per member and per member targeted (higher is
    better; 0 is random, negative is worse than random)."""
    if not len(score):
        return 0.0
    qini = _qini(score, treated, converted)
    random_line = qini[-1] * np.arange(1, len(score) + 1) / len(score)
    return float(np.mean(qini - random_line) / len(score))


def arm_uplift(treated: np.ndarray, converted: np.ndarray) -> float | None:
    """Conversion rate of the treated minus the holdout's (None when an arm is empty)."""
    if not treated.any() or treated.all():
        return None
    return float(converted[treated].mean() - converted[~treated].mean())


def incremental_per_thousand(score: np.ndarray, treated: np.ndarray, converted: np.ndarray, share: float,
                             truth: np.ndarray | None = None) -> dict[str, float | None]:
    """Targeting the top `share` by `score`: incremental conversions per 1,000 messages, measured on the arms
    (treated − holdout among the chosen) and, when the true per-customer uplift is known, the true figure."""
    k = max(int(round(len(score) * share)), 1)
    chosen = np.argsort(-score, kind="stable")[:k]
    measured = arm_uplift(treated[chosen], converted[chosen])
    return {"targeted": k, "measured": None if measured is None else round(measured * 1000, 2),
            "true": None if truth is None else round(float(truth[chosen].mean()) * 1000, 2)}


def compare_targeting(rankings: dict[str, np.ndarray], treated: np.ndarray, converted: np.ndarray, share: float,
                      truth: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Each ranking's Qini coefficient and incremental conversions per 1,000 messages at the same share."""
    return {name: {"qini": round(qini_coefficient(score, treated, converted), 5)}
            | incremental_per_thousand(score, treated, converted, share, truth)
            for name, score in rankings.items()}
