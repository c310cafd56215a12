"""Predictive fields per customer (pure): P(alive), expected orders in 90 / 365 days, predicted 12-month value net of
refunds, and the expected next order date — from the BG/NBD fitted at training and a Gamma-Gamma spend model.

Inputs are the churn feature frame's columns (bgnbd_x / bgnbd_t_x / bgnbd_T in weeks, recency_days, spend_total,
orders_total), so the nightly score step computes them from the customer state like the score itself. Spend in the
features is already net of refunds and cancellations, so the value is too.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from churn.bgnbd import BetaGeometricNBD
from churn.features import WEEK_DAYS
from churn.gammagamma import GammaGamma

FIT_ROWS = 100_000
ALIVE_FLOOR = 0.05  # below this P(alive) no next order is expected: the date is left empty
PREDICTED_COLUMNS = ("p_alive", "expected_orders_90d", "expected_orders_365d", "predicted_clv_12m",
                     "expected_next_order_at")


def _mean_order_value(frame: pl.DataFrame) -> np.ndarray:
    return (frame["spend_total"].cast(pl.Float64) / frame["orders_total"].cast(pl.Float64)).fill_nan(0.0) \
        .fill_null(0.0).to_numpy()


def fit_spend(frame: pl.DataFrame, seed: int = 7) -> dict[str, float] | None:
    """Gamma-Gamma parameters from (a sample of) a feature frame's repeat buyers; None when too few."""
    sample = frame.sample(min(frame.height, FIT_ROWS), seed=seed)
    try:
        fitted = GammaGamma().fit(sample["bgnbd_x"].to_numpy(), _mean_order_value(sample))
    except ValueError:
        return None
    return fitted.params_


def predictive_fields(frame: pl.DataFrame, bgnbd: BetaGeometricNBD, spend: dict[str, float] | None,
                      as_of: datetime, correction: dict[str, Any] | None = None) -> pl.DataFrame:
    """customer_id and the predictive fields for every row of a feature frame scored at `as_of` (`correction`: the
    validation window's map from BG/NBD's expected orders to what customers then bought, see `fit_correction`)."""
    x, t_x, big_t = (frame[c].to_numpy().astype(float) for c in ("bgnbd_x", "bgnbd_t_x", "bgnbd_T"))
    p_alive = bgnbd.probability_alive(x, t_x, big_t)
    orders_90 = bgnbd.expected_purchases(90 / WEEK_DAYS, x, t_x, big_t)
    orders_365 = bgnbd.expected_purchases(365 / WEEK_DAYS, x, t_x, big_t)
    spend_factor = 1.0
    if correction:
        # BG/NBD assumes a steady rate; seasons and drift make it over- or under-shoot by level of activity. The
        # observed ratio per level scales the 90- and 365-day counts alike (the year's seasons average out less).
        corrected = np.interp(orders_90, correction["orders_x"], correction["orders_y"])
        factor = np.where(orders_90 > 1e-9, corrected / np.maximum(orders_90, 1e-9), 1.0)
        # Seasons: the coming 90 days were busier or quieter than the validation window a year before.
        orders_90, orders_365 = corrected * correction.get("season_factor", 1.0), orders_365 * factor
        spend_factor = correction.get("spend_factor", 1.0)
    if spend is not None:
        model = GammaGamma()
        model.p_, model.q_, model.gamma_ = spend["p"], spend["q"], spend["gamma"]
        value = model.expected_value(x, _mean_order_value(frame))
    else:  # too few repeat buyers to fit: each customer's own mean order value
        value = _mean_order_value(frame)
    # The rate a customer showed up to their last order, (r + x) / (α + t_x) per week, not diluted by the silence
    # since: the date is when they are due, stable between their orders (a replenishment reminder's anchor).
    gap_days = WEEK_DAYS * (bgnbd.alpha_ + t_x) / (bgnbd.r_ + x)
    last_order_us = (pl.lit(as_of).cast(pl.Datetime("us", "UTC")).dt.epoch("us")
                     - (frame["recency_days"] * 86_400_000_000).cast(pl.Int64))
    due_us = pl.select(last_order_us).to_series().to_numpy() + (gap_days * 86_400_000_000).astype(np.int64)
    due = pl.Series("expected_next_order_at", due_us).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    return frame.select("customer_id").with_columns(
        pl.Series("p_alive", np.round(p_alive, 4)),
        pl.Series("expected_orders_90d", np.round(orders_90, 3)),
        pl.Series("expected_orders_365d", np.round(orders_365, 3)),
        pl.Series("predicted_clv_12m", np.round(np.nan_to_num(orders_365 * value * spend_factor), 2)),
        pl.when(pl.Series(p_alive) >= ALIVE_FLOOR).then(due).otherwise(None).dt.truncate("1d")
        .alias("expected_next_order_at"))


def realised_after(orders: pl.DataFrame, cutoff: datetime, days: int) -> pl.DataFrame:
    """Per customer who bought in (cutoff, cutoff + days]: purchase days (BG/NBD's unit) and spend."""
    end = cutoff + timedelta(days=days)
    return (orders.filter((pl.col("ordered_at") > cutoff) & (pl.col("ordered_at") <= end))
            .group_by("customer_id").agg(pl.col("ordered_at").dt.date().n_unique().alias("realised_orders"),
                                         pl.col("amount_paid").sum().alias("realised_spend")))


def season_factor(orders: pl.DataFrame, validation_cutoff: datetime, as_of: datetime, days: int) -> float:
    """The shop's purchase days in the `days` after `as_of` a year ago over those after the validation cut-off a
    year ago (1.0 without that much history): how much busier the coming window is than the one calibrated on."""
    year = timedelta(days=364)  # whole weeks, so weekdays line up
    start = validation_cutoff - year
    if orders.is_empty() or orders["ordered_at"].min() > start - year:
        return 1.0
    # One cohort, the customers active in the year before the first window, so a growing shop's newcomers do not
    # pass for a busy season.
    cohort = orders.filter((pl.col("ordered_at") > start - year) & (pl.col("ordered_at") <= start)) \
        .select("customer_id").unique()
    mine = orders.join(cohort, on="customer_id", how="semi")

    def volume(begin: datetime) -> int:
        window = mine.filter((pl.col("ordered_at") > begin) & (pl.col("ordered_at") <= begin + timedelta(days=days)))
        return window.select(pl.struct("customer_id", pl.col("ordered_at").dt.date()).n_unique()).item()

    before, coming = volume(start), volume(as_of - year)
    return float(np.clip(coming / before, 0.5, 2.0)) if before else 1.0


def fit_correction(frame: pl.DataFrame, bgnbd: BetaGeometricNBD, spend: dict[str, float] | None, cutoff: datetime,
                   realised: pl.DataFrame, calibration_half: np.ndarray, seasons: float = 1.0) -> dict[str, Any]:
    """The map from expected to realised orders over 90 days (isotonic, on the calibration half), a spend factor,
    and the decile check of both on the other half — the figures the registry shows."""
    from sklearn.isotonic import IsotonicRegression

    raw = predictive_fields(frame, bgnbd, spend, cutoff).join(realised, on="customer_id", how="left").fill_null(0)
    fit, check = raw.filter(pl.Series(calibration_half)), raw.filter(pl.Series(~calibration_half))
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0).fit(fit["expected_orders_90d"].to_numpy(),
                                                                 fit["realised_orders"].to_numpy().astype(float))
    correction = {"orders_x": [float(v) for v in iso.X_thresholds_], "orders_y": [float(v) for v in iso.y_thresholds_]}
    fitted = predictive_fields(frame.filter(pl.Series(calibration_half)), bgnbd, spend, cutoff, correction)
    value_90 = value_90d(fitted)
    correction["spend_factor"] = float(fit["realised_spend"].sum() / max(float(value_90.sum()), 1e-9))
    # The check half is judged on the window it was calibrated for; the season factor applies to what comes next.
    checked = predictive_fields(frame.filter(pl.Series(~calibration_half)), bgnbd, spend, cutoff, correction)
    correction["season_factor"] = seasons
    correction["check"] = {
        "orders_90d": decile_calibration(checked["expected_orders_90d"].to_numpy(),
                                         check["realised_orders"].to_numpy().astype(float)),
        "spend_90d": decile_calibration(value_90d(checked) * correction["spend_factor"],
                                        check["realised_spend"].to_numpy().astype(float))}
    return correction


def value_90d(fields: pl.DataFrame) -> np.ndarray:
    """Expected spend over 90 days: the 12-month value in proportion to the orders expected in 90 days."""
    orders_365 = fields["expected_orders_365d"].to_numpy()
    return fields["predicted_clv_12m"].to_numpy() * fields["expected_orders_90d"].to_numpy() / np.maximum(orders_365,
                                                                                                         1e-9)


def decile_calibration(predicted: np.ndarray, realised: np.ndarray) -> list[dict[str, Any]]:
    """Mean predicted against mean realised per decile of the prediction (the lowest decile first)."""
    order = np.argsort(predicted, kind="stable")
    return [{"decile": k + 1, "customers": len(part), "predicted": round(float(predicted[part].mean()), 4),
             "realised": round(float(realised[part].mean()), 4)}
            for k, part in enumerate(np.array_split(order, 10)) if len(part)]
