"""Uplift, pure: Qini and incremental conversions on known rankings, the T-learner on simulated arms with a known
per-customer effect, and the lab's comparison of targeting by uplift, by churn risk and at random."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import polars as pl
import pytest

from campaigns.measurement.uplift import (
    MIN_ARM_MEMBERS,
    UpliftModel,
    arm_uplift,
    compare_targeting,
    fit_t_learner,
    held_out,
    incremental_per_thousand,
    qini_coefficient,
    qini_curve,
)
from wiring.generator import GeneratorConfig, true_uplift
from wiring.uplift_lab import LabConfig, run_lab


def _arms(n: int, seed: int = 1):
    """Two features; the message helps when x > 0.5, puts off when y > 0.8; treated at random."""
    rng = np.random.default_rng(seed)
    x, y = rng.random(n), rng.random(n)
    truth = np.where(y > 0.8, -0.08, np.where(x > 0.5, 0.15, 0.0))
    treated = rng.random(n) < 0.5
    converted = rng.random(n) < np.clip(0.05 + 0.1 * y + truth * treated, 0, 1)
    features = pl.DataFrame({"customer_id": np.arange(1, n + 1), "x": x, "y": y})
    return features, treated, converted, truth


def test_qini_rewards_rankings_that_put_the_changed_first():
    features, treated, converted, truth = _arms(40_000)
    oracle = qini_coefficient(truth, treated, converted)
    backwards = qini_coefficient(-truth, treated, converted)
    noise = qini_coefficient(np.random.default_rng(9).random(len(truth)), treated, converted)
    assert oracle > 0.005 and backwards < -0.005 and abs(noise) < oracle / 3
    curve = qini_curve(truth, treated, converted, points=10)
    assert len(curve) == 11 and curve[0] == {"share": 0.0, "incremental": 0.0}
    # The oracle's curve climbs over the helped, falls over the put-off customers at the end.
    peak = max(range(11), key=lambda i: curve[i]["incremental"])
    assert 0 < peak < 10 and curve[peak]["incremental"] > curve[10]["incremental"]


def test_incremental_per_thousand_measures_the_chosen_customers():
    features, treated, converted, truth = _arms(40_000)
    best = incremental_per_thousand(truth, treated, converted, 0.4, truth)
    assert best["targeted"] == 16_000 and best["true"] == pytest.approx(150.0, abs=3.0)  # about 40% are helped (x > 0.5, y ≤ 0.8)
    assert best["measured"] == pytest.approx(150.0, abs=25.0)  # sampling noise of two ~8,000-member arms
    everyone = incremental_per_thousand(truth, treated, converted, 1.0, truth)
    assert everyone["measured"] == pytest.approx(arm_uplift(treated, converted) * 1000, abs=0.01)
    assert arm_uplift(np.ones(3, dtype=bool), np.zeros(3, dtype=bool)) is None  # no holdout: no uplift


def test_t_learner_finds_who_the_message_changes_and_round_trips():
    features, treated, converted, truth = _arms(60_000)
    ids = features["customer_id"].to_numpy()
    out = held_out(ids)
    assert 0.25 < out.mean() < 0.35 and (held_out(ids) == out).all()  # the same members every time
    model = fit_t_learner(features.filter(pl.Series(~out)), treated[~out], converted[~out], ids[~out])
    test = features.filter(pl.Series(out))
    predicted = model.uplift(test)
    helped, put_off = truth[out] > 0, truth[out] < 0
    assert predicted[helped].mean() > 0.08 and predicted[put_off].mean() < -0.03
    assert np.corrcoef(predicted, truth[out])[0, 1] > 0.7
    ranks = compare_targeting({"uplift": predicted, "random": np.random.default_rng(2).random(len(predicted))},
                              treated[out], converted[out], 0.3, truth[out])
    assert ranks["uplift"]["true"] > 2 * ranks["random"]["true"] and ranks["uplift"]["qini"] > ranks["random"]["qini"]
    again = UpliftModel.from_text(model.to_text())
    assert np.allclose(again.uplift(test), predicted) and again.meta == model.meta
    assert np.allclose(again.uplift(test.drop("y")), model.uplift(test.drop("y")))  # a missing column is missing


def test_an_arm_too_small_to_learn_from_is_refused():
    features, treated, converted, _ = _arms(MIN_ARM_MEMBERS * 3)
    few = treated & (np.arange(len(treated)) < MIN_ARM_MEMBERS)  # under MIN_ARM_MEMBERS treated
    with pytest.raises(ValueError, match=f"at least {MIN_ARM_MEMBERS} members in each arm"):
        fit_t_learner(features, few & treated, converted, features["customer_id"].to_numpy())


def test_generator_truth_is_heterogeneous_by_offer_and_channel():
    config = GeneratorConfig(customers=10)
    customers = pl.DataFrame({"external_id": ["A", "B", "C", "D", "E"],
                              "discount_share": [0.9, 0.0, 0.0, 0.5, 0.05],
                              "spend": [100.0, 9000.0, 50.0, 80.0, 300.0], "orders": [2, 3, 1, 1, 40]})
    coupon = true_uplift(config, customers, offer=True, channel="sms")
    call = true_uplift(config, customers, offer=False, channel="phone")
    plain = true_uplift(config, customers, offer=False, channel="sms")
    assert coupon[0] > coupon[2] and coupon[0] > plain[0]  # price-sensitive customers answer coupons
    assert call[1] > plain[1] and call[1] > call[2]  # the top spender answers a call
    assert coupon[4] < 0 and call[4] < 0 and plain[4] < 0  # a frequent full-price buyer is put off by any
    assert plain[2] == pytest.approx(0.01)


def test_lab_targeting_by_uplift_beats_risk_and_random_in_the_same_run():
    result = run_lab(GeneratorConfig(customers=12_000, seed=4, end=date(2026, 11, 1)),
                     LabConfig(send_at=datetime(2026, 9, 1, tzinfo=UTC), channel="sms", offer=True, seed=4))
    ranks = result["rankings"]
    assert result["members_held_out"] > 3000 and set(ranks) == {"uplift", "risk", "random"}
    # The true effect of the chosen customers: uplift targeting finds far more of it than risk or chance.
    assert ranks["uplift"]["true"] > 1.5 * ranks["random"]["true"] and ranks["uplift"]["true"] > ranks["risk"]["true"]
    assert ranks["uplift"]["qini"] > max(ranks["risk"]["qini"], ranks["random"]["qini"])
    assert ranks["uplift"]["measured"] > ranks["random"]["measured"]  # also on the arms alone, without the truth
    assert result["sleeping_dogs_found"] > result["others_called_sleeping"]
