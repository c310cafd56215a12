"""Training on stacked rolling snapshots, threshold choice, metrics and the classic baselines (pure, frames in)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from churn.bgnbd import BetaGeometricNBD
from churn.calibration import ShippedScore, fit_shipped, halves, score_inputs
from churn.features import (
    WEEK_DAYS,
    FeatureConfig,
    SegmentRules,
    build_features,
    feature_names,
    labels,
    population,
    population_summary,
)
from churn.model import ChurnModel
from churn.policy import FlagDecision, FlagPolicy, choose_flag, day_threshold, flag_metrics
from churn.predictive import fit_correction, fit_spend, realised_after, season_factor

Progress = Callable[[str], None]


class _Stopwatch:
    """Seconds spent per named stage."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 3)
        self._last = now


@dataclass(frozen=True)
class TrainingConfig:
    """How a model is trained and flagged (each a default users can change)."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    step_days: int = 30
    snapshots: int = 6
    policy: FlagPolicy = field(default_factory=FlagPolicy)
    max_training_rows: int = 400_000
    bgnbd_fit_rows: int = 100_000
    seed: int = 7
    params: dict[str, Any] | None = None
    rule_sets: SegmentRules | None = None  # tier, layer and tag rules: adds them as of each cut-off

    @property
    def horizon(self) -> timedelta:
        return timedelta(days=self.features.horizon_days)


@dataclass
class TrainingResult:
    """A trained model with everything the registry keeps about it."""

    model: ChurnModel
    bgnbd: BetaGeometricNBD
    shipped: ShippedScore
    flag: FlagDecision
    metrics: dict[str, Any]
    baselines: dict[str, dict[str, float]]
    training: dict[str, Any]
    validation: pl.DataFrame  # features, label and score of the validation window

    @property
    def threshold(self) -> float:
        """The at-risk threshold the flag policy chose."""
        return self.flag.threshold


def training_cutoffs(as_of: datetime, config: TrainingConfig) -> tuple[datetime, list[datetime]]:
    """(validation cut-off, training cut-offs): every label window ends on or before the next one starts.

    The validation snapshot is the newest fully labelled one (its horizon ends at `as_of`); each training
    snapshot's horizon ends on or before the validation cut-off, so no training label sees validation data.
    """
    validation = as_of - config.horizon
    newest_training = validation - config.horizon
    return validation, [newest_training - timedelta(days=config.step_days * k) for k in range(config.snapshots)]


def snapshot(orders: pl.DataFrame, cutoff: datetime, config: TrainingConfig, *, events: pl.DataFrame | None = None,
             customers: pl.DataFrame | None = None, categories: pl.DataFrame | None = None,
             labelled: bool = True) -> pl.DataFrame:
    """Features at a cut-off, with the label when the horizon is observable."""
    frame = build_features(orders, cutoff, config.features, events=events, customers=customers,
                           rule_sets=config.rule_sets, categories=categories)
    if labelled:
        frame = frame.join(labels(orders, frame, cutoff, config.features.horizon_days), on="customer_id")
    return frame.with_columns(pl.lit(cutoff).cast(pl.Datetime("us", "UTC")).alias("cutoff"))


def add_bgnbd(frame: pl.DataFrame, fitted: BetaGeometricNBD, horizon_days: int) -> pl.DataFrame:
    """The hybrid features: P(alive) and expected purchases in the horizon under the fitted BG/NBD."""
    x, t_x, big_t = (frame[c].to_numpy() for c in ("bgnbd_x", "bgnbd_t_x", "bgnbd_T"))
    return frame.with_columns(
        pl.Series("bgnbd_p_alive", fitted.probability_alive(x, t_x, big_t)),
        pl.Series("bgnbd_expected", fitted.expected_purchases(horizon_days / WEEK_DAYS, x, t_x, big_t)))


def fit_bgnbd(frame: pl.DataFrame, config: TrainingConfig) -> BetaGeometricNBD:
    """Fit the BG/NBD on (a sample of) one snapshot's population."""
    sample = frame.sample(min(len(frame), config.bgnbd_fit_rows), seed=config.seed)
    return BetaGeometricNBD().fit(*(sample[c].to_numpy() for c in ("bgnbd_x", "bgnbd_t_x", "bgnbd_T")))


def score_metrics(target: np.ndarray, probability: np.ndarray, threshold: float) -> dict[str, Any]:
    """ROC AUC, PR AUC, Brier, log loss, precision/recall/F1 at the threshold, top-decile lift, calibration."""
    flagged = probability >= threshold
    true_positive = float(np.sum(flagged & (target == 1)))
    precision = true_positive / max(float(flagged.sum()), 1.0)
    recall = true_positive / max(float(target.sum()), 1.0)
    top = np.argsort(-probability)[: max(len(probability) // 10, 1)]
    base_rate = float(target.mean())
    bins = np.clip((probability * 10).astype(int), 0, 9)
    calibration = [{"bin": f"{b / 10:.1f}-{(b + 1) / 10:.1f}", "customers": int((bins == b).sum()),
                    "mean_predicted": round(float(probability[bins == b].mean()), 4),
                    "observed": round(float(target[bins == b].mean()), 4)} for b in range(10) if (bins == b).any()]
    both = len(np.unique(target)) == 2
    return {
        "customers": len(target), "churn_rate": round(base_rate, 4),
        "roc_auc": round(float(roc_auc_score(target, probability)), 4) if both else None,
        "pr_auc": round(float(average_precision_score(target, probability)), 4) if both else None,
        "brier": round(float(brier_score_loss(target, probability)), 4),
        "log_loss": round(float(log_loss(target, np.clip(probability, 1e-6, 1 - 1e-6), labels=[0, 1])), 4),
        "threshold": round(threshold, 4), "flagged": int(flagged.sum()),
        "precision": round(precision, 4), "recall": round(recall, 4),
        "f1": round(2 * precision * recall / max(precision + recall, 1e-12), 4),
        "lift_top_decile": round(float(target[top].mean()) / max(base_rate, 1e-12), 3),
        "calibration": calibration,
    }


BASELINES = {"recency": lambda f: f["recency_days"].to_numpy(), "bgnbd": lambda f: -f["bgnbd_expected"].to_numpy()}


def baseline_metrics(train: pl.DataFrame, test: pl.DataFrame) -> dict[str, dict[str, float]]:
    """The recency and BG/NBD baselines on the same rows; turned into probabilities by a 1-D logistic fit on training."""
    result = {}
    for name, score in BASELINES.items():
        calibrator = LogisticRegression().fit(score(train).reshape(-1, 1), train["churned"].to_numpy())
        probability = calibrator.predict_proba(score(test).reshape(-1, 1))[:, 1]
        target = test["churned"].to_numpy()
        both = len(np.unique(target)) == 2
        result[name] = {
            "roc_auc": round(float(roc_auc_score(target, score(test))), 4) if both else None,
            "pr_auc": round(float(average_precision_score(target, score(test))), 4) if both else None,
            "brier": round(float(brier_score_loss(target, probability)), 4),
        }
    return result


def train_churn(orders: pl.DataFrame, as_of: datetime, config: TrainingConfig = TrainingConfig(), *,
                events: pl.DataFrame | None = None, customers: pl.DataFrame | None = None,
                categories: pl.DataFrame | None = None, progress: Progress | None = None) -> TrainingResult:
    """Build the snapshots, fit BG/NBD and LightGBM, choose the threshold and measure on validation."""
    say = progress or (lambda _: None)
    clock = _Stopwatch()
    validation_cutoff, cutoffs = training_cutoffs(as_of, config)
    earliest = orders["ordered_at"].min()
    cutoffs = [c for c in cutoffs if earliest is not None and c - timedelta(days=30) > earliest]
    if not cutoffs:
        raise ValueError(f"not enough history before {as_of:%Y-%m-%d} for a {config.features.horizon_days}-day horizon")
    frames = []
    quota = -(-config.max_training_rows // len(cutoffs))
    for index, cutoff in enumerate(cutoffs):
        say(f"features at {cutoff:%Y-%m-%d}")
        # Features are per customer, so building them for a sample of the population only is exact for
        # those customers and several times cheaper than building all and sampling rows afterwards.
        who = population(orders.filter(pl.col("ordered_at") < cutoff), cutoff, config.features)
        if len(who) > quota:
            who = who.sample(quota, seed=config.seed + index)
            frames.append(snapshot(orders.join(who, on="customer_id", how="semi"), cutoff, config,
                                   events=None if events is None else events.join(who, on="customer_id", how="semi"),
                                   customers=customers, categories=categories))
        else:
            frames.append(snapshot(orders, cutoff, config, events=events, customers=customers,
                                   categories=categories))
    say(f"validation features at {validation_cutoff:%Y-%m-%d}")
    valid = snapshot(orders, validation_cutoff, config, events=events, customers=customers, categories=categories)
    clock.lap("features_s")
    say("fitting BG/NBD")
    bgnbd = fit_bgnbd(frames[0], config)
    train = pl.concat([add_bgnbd(f, bgnbd, config.features.horizon_days) for f in frames], how="diagonal_relaxed")
    valid = add_bgnbd(valid, bgnbd, config.features.horizon_days)
    rows_available = len(train)
    if len(train) > config.max_training_rows:  # rounding of the per-snapshot quota
        train = train.sample(config.max_training_rows, seed=config.seed)
    clock.lap("bgnbd_s")
    names = feature_names(train)
    say(f"training LightGBM on {len(train):,} rows x {len(names)} features")
    model = ChurnModel(config.params).fit(train.select(names), train["churned"].to_numpy(),
                                          valid.select(names), valid["churned"].to_numpy())
    clock.lap("fit_s")
    target = valid["churned"].to_numpy()
    inputs = score_inputs(model.predict_proba(valid), valid)
    calibration_half = halves(valid["customer_id"].to_numpy())
    shipped = fit_shipped(inputs[calibration_half], target[calibration_half])
    probability = shipped.probability(inputs)
    flag = choose_flag(target[calibration_half], probability[calibration_half], config.policy,
                       population=len(target))
    check = ~calibration_half
    spend = fit_spend(valid)
    correction = fit_correction(valid, bgnbd, spend, validation_cutoff,
                                realised_after(orders, validation_cutoff, config.features.horizon_days),
                                calibration_half, season_factor(orders, validation_cutoff, as_of,
                                                                config.features.horizon_days))
    metrics = (score_metrics(target[check], probability[check], flag.threshold)
               | {"flag": flag_metrics(target[check], probability[check], flag.threshold)
                  | {"policy": config.policy.kind, "aim": flag.aim, "met": flag.met, "note": flag.note},
                  "shipped": shipped.chosen, "measured_on": "check half of the validation window",
                  "population": population_summary(orders, validation_cutoff, config.features,
                                                   None if customers is None else customers.height)})
    training = {"as_of": as_of.isoformat(), "validation_cutoff": validation_cutoff.isoformat(),
                "training_cutoffs": [c.isoformat() for c in cutoffs], "horizon_days": config.features.horizon_days,
                "training_rows": len(train), "training_rows_available": rows_available,
                "best_iteration": model.best_iteration_, "bgnbd": bgnbd.params_, "timings": clock.laps,
                "policy": config.policy.as_dict(), "shipped": shipped.as_dict(), "gamma_gamma": spend,
                "predictive": correction,
                "population": config.features.population, "lookback_days": config.features.lookback_days}
    return TrainingResult(model=model, bgnbd=bgnbd, shipped=shipped, flag=flag, metrics=metrics,
                          baselines=baseline_metrics(valid.filter(pl.Series(calibration_half)),
                                                     valid.filter(pl.Series(check))),
                          training=training, validation=valid.with_columns(pl.Series("probability", probability)))


def evaluate_at(result: TrainingResult, orders: pl.DataFrame, cutoff: datetime, config: TrainingConfig, *,
                events: pl.DataFrame | None = None, customers: pl.DataFrame | None = None) -> dict[str, Any]:
    """Metrics of a trained model and the baselines on the snapshot at `cutoff`, labelled by what came after."""
    test = add_bgnbd(snapshot(orders, cutoff, config, events=events, customers=customers), result.bgnbd,
                     config.features.horizon_days)
    probability = result.shipped.probability(score_inputs(result.model.predict_proba(test), test))
    target = test["churned"].to_numpy()
    threshold = day_threshold(config.policy, result.threshold, probability)
    metrics = score_metrics(target, probability, threshold)
    train_like = result.validation  # the baselines' calibration is fitted on data before the test window
    return metrics | {"flag": flag_metrics(target, probability, threshold),
                      "baselines": baseline_metrics(train_like, test),
                      "population": population_summary(orders, cutoff, config.features)}
