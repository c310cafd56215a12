"""ChurnModel: LightGBM in scikit-learn style, with early stopping, contributions and save/load."""

from __future__ import annotations

import json
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

# Shallow trees on purpose: TreeSHAP (pred_contrib) costs grow with depth squared, and every flagged
# customer needs its reasons. Measured on generator data: unlimited depth / 31 leaves / rate 0.05 gave
# ROC AUC 0.8596 at 255 µs per explained row; depth 4 / 12 leaves gives 0.8586 at 20 µs. At 1M customers
# rate 0.3 stops after ~70 rounds with the same ROC AUC as 0.2 after ~160 (0.8608 vs 0.8610), at 26 µs a row.
DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary", "learning_rate": 0.3, "num_leaves": 12, "max_depth": 4, "min_data_in_leaf": 100,
    "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
    "verbose": -1, "num_threads": 2, "seed": 7,
}


class ChurnModel:
    """Gradient-boosted trees on point-in-time features; `fit()` returns self, learned attributes end in `_`."""

    def __init__(self, params: dict[str, Any] | None = None, num_boost_round: int = 600,
                 early_stopping_rounds: int = 40) -> None:
        self.params = params
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds

    def fit(self, features: pl.DataFrame, target: np.ndarray, valid_features: pl.DataFrame,
            valid_target: np.ndarray) -> ChurnModel:
        """Train on `features`, stopping early on the validation window."""
        self.feature_names_ = list(features.columns)
        params = DEFAULT_PARAMS | (self.params or {})
        train = lgb.Dataset(features.to_numpy().astype(np.float32), label=target, feature_name=self.feature_names_,
                            free_raw_data=True)
        valid = lgb.Dataset(valid_features.select(self.feature_names_).to_numpy().astype(np.float32),
                            label=valid_target, reference=train)
        self.booster_ = lgb.train(params, train, num_boost_round=self.num_boost_round, valid_sets=[valid],
                                  callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)])
        self.best_iteration_ = int(self.booster_.best_iteration or self.booster_.current_iteration())
        return self

    def _matrix(self, features: pl.DataFrame) -> np.ndarray:
        return features.select(self.feature_names_).to_numpy().astype(np.float32)

    def predict_proba(self, features: pl.DataFrame) -> np.ndarray:
        """P(churn) per row."""
        return self.booster_.predict(self._matrix(features), num_iteration=self.best_iteration_)

    def contributions(self, features: pl.DataFrame) -> np.ndarray:
        """Per-row, per-feature contributions to the log-odds (last column: the bias)."""
        return self.booster_.predict(self._matrix(features), num_iteration=self.best_iteration_, pred_contrib=True)

    def to_text(self) -> str:
        """The booster and its metadata as one text (what the registry stores)."""
        meta = {"feature_names": self.feature_names_, "best_iteration": self.best_iteration_, "params": self.params}
        return json.dumps(meta) + "\n" + self.booster_.model_to_string()

    @classmethod
    def from_text(cls, content: str) -> ChurnModel:
        """Read a model written by `to_text`."""
        meta_line, booster_text = content.split("\n", 1)
        meta = json.loads(meta_line)
        model = cls(meta["params"])
        model.feature_names_ = meta["feature_names"]
        model.best_iteration_ = meta["best_iteration"]
        model.booster_ = lgb.Booster(model_str=booster_text)
        return model
