"""The uplift lab: a generated shop, one past campaign with a random holdout and a known per-customer effect,
and targeting by the fitted uplift model against targeting by churn risk and at random, in the same run.

The campaign is sent at `send_at`; every member's chance of ordering in its window is a baseline that falls with
days since their last order, plus the generator's true uplift when treated (`true_uplift`: coupons move
price-sensitive customers, calls move VIPs, frequent full-price buyers are put off). The uplift model is fitted
on 70% of the members and measured on the other 30% (the same customers every run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from campaigns.measurement.uplift import (
    compare_targeting,
    fit_t_learner,
    held_out,
    qini_curve,
    uplift_features,
)
from churn.calibration import score_inputs
from churn.features import FeatureConfig
from churn.training import TrainingConfig, add_bgnbd, snapshot, train_churn
from wiring.generator import GeneratorConfig, generate, true_uplift


@dataclass(frozen=True)
class LabConfig:
    """One simulated campaign: when, which channel, with or without a coupon, and how the run is measured."""

    send_at: datetime
    channel: str = "sms"
    offer: bool = True
    treated_share: float = 0.5
    target_share: float = 0.3  # the share of customers each ranking targets
    seed: int = 11


def shop_orders(config: GeneratorConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The generated shop's orders in the churn features' shape (integer customer ids, coupon flag) and the
    customers' id map."""
    data = generate(config)
    ids = data.customers.select(pl.col("external_id").cast(pl.String), pl.int_range(1, pl.len() + 1).alias("customer_id"))
    orders = (data.orders.with_columns(pl.col("customer_external_id").cast(pl.String))
              .join(ids.with_columns(pl.col("external_id").cast(pl.String)), left_on="customer_external_id",
                    right_on="external_id")
              .select("customer_id", "ordered_at", "amount_paid", "discount",
                      has_coupon=pl.col("coupon_code").is_not_null(), new_product_lines=pl.lit(0, pl.Int16)))
    return orders, ids


def simulate_arms(features: pl.DataFrame, truth: np.ndarray, lab: LabConfig) -> pl.DataFrame:
    """Random arms and conversions with a known effect: customer_id, treated, converted, true_uplift."""
    rng = np.random.default_rng(lab.seed)
    treated = rng.random(features.height) < lab.treated_share
    recency = features["recency_days"].fill_null(365.0).to_numpy()
    baseline = 0.02 + 0.18 * np.exp(-recency / 45.0)
    chance = np.clip(baseline + truth * treated, 0.0, 1.0)
    converted = rng.random(features.height) < chance
    return pl.DataFrame({"customer_id": features["customer_id"], "treated": treated, "converted": converted,
                         "true_uplift": truth})


@dataclass(frozen=True)
class LabShop:
    """A generated shop's customers at the send: their features, churn risk, true uplift and simulated arms."""

    features: pl.DataFrame
    risk: np.ndarray
    truth: np.ndarray
    arms: pl.DataFrame
    timings: dict[str, float]


def prepare_lab(config: GeneratorConfig, lab: LabConfig) -> LabShop:
    """Generate the shop, train the churn model as of the send, and simulate the campaign's arms."""
    started = time.perf_counter()
    orders, ids = shop_orders(config)
    before = orders.filter(pl.col("ordered_at") < lab.send_at)
    timings = {"generate_s": round(time.perf_counter() - started, 2)}
    churn_config = TrainingConfig(snapshots=3, step_days=30, features=FeatureConfig(population="all"))
    churn = train_churn(before, lab.send_at, churn_config)
    timings["churn_train_s"] = round(time.perf_counter() - started - timings["generate_s"], 2)
    frame = add_bgnbd(snapshot(before, lab.send_at, churn_config, labelled=False), churn.bgnbd,
                      churn_config.features.horizon_days)
    risk = churn.shipped.probability(score_inputs(churn.model.predict_proba(frame), frame))
    profile = frame.join(ids, on="customer_id").select(
        "external_id", discount_share=pl.col("discount_share"), spend=pl.col("spend_total"),
        orders=pl.col("orders_total"))
    truth = true_uplift(config, profile, offer=lab.offer, channel=lab.channel)
    return LabShop(uplift_features(frame), risk, truth, simulate_arms(frame, truth, lab), timings)


def run_lab(config: GeneratorConfig, lab: LabConfig, shop: LabShop | None = None) -> dict[str, Any]:
    """Fit the uplift model on the simulated campaign's arms and compare rankings on the held-out members."""
    shop = shop or prepare_lab(config, lab)
    arms, features, truth = shop.arms, shop.features, shop.truth
    keep_out = held_out(arms["customer_id"].to_numpy())
    fit = ~keep_out
    treated, converted = arms["treated"].to_numpy(), arms["converted"].to_numpy()
    clock = time.perf_counter()
    model = fit_t_learner(features.filter(pl.Series(fit)), treated[fit], converted[fit],
                          arms["customer_id"].to_numpy()[fit])
    timings = shop.timings | {"uplift_fit_s": round(time.perf_counter() - clock, 2)}
    test = features.filter(pl.Series(keep_out))
    predicted = model.uplift(test)
    rankings = {"uplift": predicted, "risk": shop.risk[keep_out],
                "random": np.random.default_rng(lab.seed + 1).random(int(keep_out.sum()))}
    compared = compare_targeting(rankings, treated[keep_out], converted[keep_out], lab.target_share,
                                 truth[keep_out])
    sleeping = truth[keep_out] < 0
    return {"customers": features.height, "members_fitted": int(fit.sum()), "members_held_out": int(keep_out.sum()),
            "channel": lab.channel, "offer": lab.offer, "target_share": lab.target_share,
            "true_mean_uplift_per_1000": round(float(truth.mean()) * 1000, 2),
            "sleeping_dog_share": round(float((truth < 0).mean()), 4),
            "sleeping_dogs_found": round(float((predicted[sleeping] < 0).mean()), 4) if sleeping.any() else None,
            "others_called_sleeping": round(float((predicted[~sleeping] < 0).mean()), 4),
            "rankings": compared, "qini_curve": qini_curve(predicted, treated[keep_out], converted[keep_out], 10),
            "timings": timings}
