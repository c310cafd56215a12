"""Churn and value reports: lifetime value (historical and predicted with BG/NBD + Gamma-Gamma) and the churn
model's quality over time (kept predictions against what then happened)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
from sklearn.metrics import brier_score_loss, roc_auc_score
from sqlmodel import Session, select

from churn.bgnbd import BetaGeometricNBD
from churn.gammagamma import GammaGamma
from churn.models import ChurnModelVersion
from churn.policy import flagged_metrics
from crm.service import orders_frame
from kit.columnar import read_frame
from kit.context import Context
from segmentation.service import segments_frame

WEEK_DAYS = 7.0
FIT_ROWS = 100_000
MIN_REPEATERS = 10
UTC_TYPE = pl.Datetime("us", "UTC")


def customer_summaries(orders: pl.DataFrame, now: datetime) -> pl.DataFrame:
    """Per customer: spend so far, repeat orders x, t_x and T in weeks, and the mean value of repeat orders."""
    first = pl.col("ordered_at").min()
    return (orders.sort("ordered_at").group_by("customer_id")
            .agg(historical=pl.col("amount_paid").sum(), orders=pl.len(),
                 t_x=(pl.col("ordered_at").max() - first).dt.total_seconds() / 86400 / WEEK_DAYS,
                 big_t=(pl.lit(now, dtype=UTC_TYPE) - first).dt.total_seconds() / 86400 / WEEK_DAYS,
                 repeat_mean=pl.col("amount_paid").slice(1).mean())
            .with_columns(x=(pl.col("orders") - 1).cast(pl.Float64)))


def predict_value(summaries: pl.DataFrame, horizon_days: int, seed: int = 7) -> tuple[pl.DataFrame, dict]:
    """Adds predicted value over the horizon: BG/NBD expected purchases × Gamma-Gamma expected order value
    (both fitted here on up to 100k customers; undiscounted)."""
    sample = summaries.sample(min(summaries.height, FIT_ROWS), seed=seed)
    bgnbd = BetaGeometricNBD().fit(*(sample[c].to_numpy() for c in ("x", "t_x", "big_t")))
    repeaters = sample.filter((pl.col("x") > 0) & (pl.col("repeat_mean") > 0))
    spend = GammaGamma().fit(repeaters["x"].to_numpy(), repeaters["repeat_mean"].to_numpy())
    x, t_x, big_t = (summaries[c].to_numpy() for c in ("x", "t_x", "big_t"))
    purchases = bgnbd.expected_purchases(horizon_days / WEEK_DAYS, x, t_x, big_t)
    value = spend.expected_value(x, summaries["repeat_mean"].fill_null(0.0).to_numpy())
    predicted = summaries.with_columns(pl.Series("expected_purchases", purchases),
                                       pl.Series("expected_order_value", value),
                                       pl.Series("predicted", purchases * value),
                                       pl.Series("p_alive", bgnbd.probability_alive(x, t_x, big_t)))
    return predicted, {"bgnbd": bgnbd.params_, "gamma_gamma": spend.params_,
                       "converged": bgnbd.converged_ and spend.converged_}


def clv_report(session: Session, ctx: Context) -> dict[str, Any]:
    """Lifetime value per tier: historical spend so far and predicted spend over the horizon."""
    now = ctx.clock.now()
    horizon = ctx.settings.clv_horizon_days
    orders = orders_frame(session, None, now, costs=False)
    if orders.is_empty():
        return {"as_of": now, "horizon_days": horizon, "customers": 0, "tiers": [], "models": None}
    summaries = customer_summaries(orders, now)
    repeaters = summaries.filter((pl.col("x") > 0) & (pl.col("repeat_mean") > 0)).height
    if repeaters < MIN_REPEATERS:  # too few to fit the spend model: historical value only, and say why
        predicted, models = summaries.with_columns(predicted=pl.lit(None, dtype=pl.Float64),
                                                   p_alive=pl.lit(None, dtype=pl.Float64)), None
    else:
        predicted, models = predict_value(summaries, horizon)
    tiers = segments_frame(session).select("customer_id", "tier")
    by_tier = (predicted.join(tiers, on="customer_id", how="left").with_columns(pl.col("tier").fill_null("unsegmented"))
               .group_by("tier")
               .agg(customers=pl.len(), historical_mean=pl.col("historical").mean(),
                    historical_total=pl.col("historical").sum(), predicted_mean=pl.col("predicted").mean(),
                    predicted_total=pl.col("predicted").sum(), p_alive_mean=pl.col("p_alive").mean())
               .with_columns(pl.exclude("tier", "customers").round(2)).sort("predicted_mean", descending=True))
    predicted_mean = predicted["predicted"].mean()
    return {"as_of": now, "horizon_days": horizon, "customers": predicted.height,
            "historical_mean": round(float(predicted["historical"].mean()), 2),
            "predicted_mean": None if predicted_mean is None else round(float(predicted_mean), 2),
            "tiers": by_tier.to_dicts(), "models": models,
            "note": None if models else f"{repeaters} customers with repeat orders: predicted value needs "
                                        f"at least {MIN_REPEATERS}"}


def churn_quality_report(session: Session, ctx: Context) -> dict[str, Any]:
    """Each kept scoring run: mean predicted churn against the share that then churned (no order within the
    model's horizon), AUC, Brier score, calibration by decile, and the flag's precision, recall and lift against
    that base rate; runs whose horizon has not passed are pending."""
    now = ctx.clock.now()
    kept = read_frame(session, "SELECT p.scored_on, p.customer_id, p.model_id, p.probability, p.at_risk "
                      "FROM churn_prediction p", {},
                      {"scored_on": UTC_TYPE, "customer_id": pl.Int64, "model_id": pl.Int64,
                       "probability": pl.Float64, "at_risk": pl.Boolean})
    horizons = {m.id: int(m.training.get("horizon_days", 90)) for m in session.exec(select(ChurnModelVersion))}
    runs = []
    if kept.is_empty():
        return {"as_of": now, "runs": runs}
    orders = orders_frame(session, kept["scored_on"].min(), now, costs=False).select("customer_id", "ordered_at")
    for (scored_on, model_id), run in kept.group_by("scored_on", "model_id", maintain_order=True):
        horizon = horizons.get(model_id, 90)
        entry: dict[str, Any] = {"scored_on": scored_on, "model_id": model_id, "horizon_days": horizon,
                                 "customers": run.height,
                                 "mean_predicted": round(float(run["probability"].mean()), 4)}
        end = scored_on + timedelta(days=horizon)
        if end > now:
            runs.append(entry | {"status": "pending", "outcome_known_at": end})
            continue
        bought = orders.filter((pl.col("ordered_at") > scored_on) & (pl.col("ordered_at") <= end)).select(
            "customer_id").unique().with_columns(bought=pl.lit(True))
        labelled = run.join(bought, on="customer_id", how="left").with_columns(
            churned=pl.col("bought").is_null())
        flag = {}
        if labelled["at_risk"].is_not_null().all():  # runs kept before the flag was recorded have none
            measured = flagged_metrics(labelled["churned"].to_numpy(), labelled["at_risk"].to_numpy())
            flag = {"flagged": measured["flagged"], "flag_precision": measured["precision"],
                    "flag_recall": measured["recall"], "flag_lift": measured["lift"]}
        runs.append(entry | {"status": "measured"} | quality(labelled["probability"].to_numpy(),
                                                            labelled["churned"].to_numpy()) | flag)
    runs.sort(key=lambda r: r["scored_on"])
    return {"as_of": now, "runs": runs}


def quality(probability: np.ndarray, churned: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Observed churn, AUC, Brier score and a calibration table (mean predicted vs observed per decile)."""
    both = len(np.unique(churned)) == 2
    edges = np.quantile(probability, np.linspace(0, 1, bins + 1))
    index = np.clip(np.searchsorted(edges[1:-1], probability, side="right"), 0, bins - 1)
    calibration = [{"bin": int(b), "customers": int((index == b).sum()),
                    "mean_predicted": round(float(probability[index == b].mean()), 4),
                    "observed": round(float(churned[index == b].mean()), 4)}
                   for b in range(bins) if (index == b).any()]
    return {"observed_churn": round(float(churned.mean()), 4),
            "auc": round(float(roc_auc_score(churned, probability)), 4) if both else None,
            "brier": round(float(brier_score_loss(churned, probability)), 4), "calibration": calibration}
