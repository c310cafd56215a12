"""The shipped score (pure): LightGBM, the classic baselines, or a stack of them, chosen by a gate, then calibrated.

On plain transaction logs LightGBM may add nothing over BG/NBD; the gate picks, on one half of the validation
window, whichever of model / BG/NBD / recency / logistic stack of the three ranks best, and an isotonic map fitted on
that half turns the chosen score into a probability. The other half measures the result, so the figures reported
are on customers neither the gate nor the calibration saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

EPS = 1e-6
CANDIDATES = ("model", "bgnbd", "recency", "stack")
TIE = 0.0005


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def score_inputs(model_probability: np.ndarray, frame: pl.DataFrame) -> np.ndarray:
    """Columns the stack reads: the model's log-odds, BG/NBD's log expected purchases and log recency."""
    return np.column_stack([_logit(model_probability),
                            np.log(frame["bgnbd_expected"].to_numpy().astype(float) + 0.01),
                            np.log1p(np.maximum(frame["recency_days"].to_numpy().astype(float), 0))])


def halves(customer_ids: np.ndarray) -> np.ndarray:
    """True for the calibration half, False for the check half: a fixed hash of the id, so reruns agree."""
    return ((customer_ids.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2**32)) % np.uint64(2) == 0


@dataclass
class ShippedScore:
    """The gate's choice with its stacking weights and isotonic map; `probability()` applies it."""

    chosen: str = "model"
    weights: list[float] = field(default_factory=list)  # stack: intercept then one weight per input column
    iso_x: list[float] = field(default_factory=list)
    iso_y: list[float] = field(default_factory=list)
    gate: dict[str, Any] = field(default_factory=dict)

    def raw(self, inputs: np.ndarray) -> np.ndarray:
        """The chosen score before calibration (higher = riskier)."""
        if self.chosen == "model":
            return inputs[:, 0]
        if self.chosen == "bgnbd":
            return -inputs[:, 1]
        if self.chosen == "recency":
            return inputs[:, 2]
        return self.weights[0] + inputs @ np.asarray(self.weights[1:])

    def probability(self, inputs: np.ndarray) -> np.ndarray:
        """Calibrated P(churn)."""
        raw = self.raw(inputs)
        squashed = 1 / (1 + np.exp(-np.clip(raw, -50, 50)))
        if not self.iso_x:
            return squashed
        # The isotonic map is a staircase: a millionth of the raw score breaks its ties, so ranking is kept.
        return np.clip(np.interp(raw, self.iso_x, self.iso_y) * (1 - EPS) + EPS * squashed, 0.0, 1.0)

    def as_dict(self) -> dict[str, Any]:
        """What the registry stores."""
        return {"chosen": self.chosen, "weights": self.weights, "iso_x": self.iso_x, "iso_y": self.iso_y,
                "gate": self.gate}

    @classmethod
    def from_dict(cls, stored: dict[str, Any] | None) -> ShippedScore:
        """A stored score (older models had none: the model's own probability, uncalibrated)."""
        if not stored:
            return cls(chosen="model")
        return cls(**stored)


def fit_shipped(inputs: np.ndarray, target: np.ndarray) -> ShippedScore:
    """Choose the best-ranking candidate on these rows and fit its isotonic map on them."""
    stack = LogisticRegression(C=1.0, max_iter=500).fit(inputs, target)
    candidates = {"model": inputs[:, 0], "bgnbd": -inputs[:, 1], "recency": inputs[:, 2],
                  "stack": stack.decision_function(inputs)}
    both = len(np.unique(target)) == 2
    aucs = {name: (float(roc_auc_score(target, score)) if both else 0.0) for name, score in candidates.items()}
    # Within a hair of the best, the first of CANDIDATES wins: the model's own reasons then describe the score.
    best = max(aucs.values())
    chosen = next(name for name in CANDIDATES if aucs[name] >= best - TIE)
    shipped = ShippedScore(chosen=chosen, weights=[float(stack.intercept_[0]), *map(float, stack.coef_[0])],
                           gate={"roc_auc_on_calibration_half": {k: round(v, 4) for k, v in aucs.items()}})
    raw = shipped.raw(inputs)
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, target)
    shipped.iso_x, shipped.iso_y = [float(v) for v in iso.X_thresholds_], [float(v) for v in iso.y_thresholds_]
    return shipped
