"""Churn's pure modules: point-in-time features, labels at the horizon, BG/NBD recovery, threshold, model I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from churn.bgnbd import BetaGeometricNBD, simulate
from churn.features import FeatureConfig, build_features, labels
from churn.policy import FlagPolicy, choose_flag
from churn.training import TrainingConfig, train_churn, training_cutoffs
from segmentation.defaults import LAYER, TAGS, TIER

CUTOFF = datetime(2026, 6, 1, tzinfo=UTC)
ORDERS = {"customer_id": pl.Int64, "ordered_at": pl.Datetime("us", "UTC"), "amount_paid": pl.Float64,
          "discount": pl.Float64, "has_coupon": pl.Boolean}
EVENTS = {"customer_id": pl.Int64, "occurred_at": pl.Datetime("us", "UTC"), "type": pl.String}


def _orders(rows) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=ORDERS, orient="row")


history = st.lists(st.tuples(st.integers(1, 4), st.integers(-400, -1), st.integers(0, 1439),
                             st.floats(0, 500), st.sampled_from([0.0, 5.0]), st.booleans()), min_size=1, max_size=40)
late = st.lists(st.tuples(st.integers(1, 6), st.integers(0, 200), st.integers(0, 1439),
                          st.floats(0, 500), st.sampled_from([0.0, 5.0]), st.booleans()), max_size=20)


@settings(max_examples=60, deadline=None)
@given(history, late, st.lists(st.tuples(st.integers(1, 4), st.integers(-100, 100),
                                         st.sampled_from(["login", "view", "cart_add", "cart_abandon"])),
                               max_size=30))
def test_rows_on_or_after_the_cutoff_never_change_a_feature(past, future, events):
    def frames(with_future: bool):
        rows = [(c, CUTOFF + timedelta(days=d, minutes=m), a, disc, coupon) for c, d, m, a, disc, coupon in past]
        if with_future:  # added rows, and past rows edited to land on or after the cut-off
            rows += [(c, CUTOFF + timedelta(days=d, minutes=m), a, disc, coupon) for c, d, m, a, disc, coupon in future]
        event_rows = [(c, CUTOFF + timedelta(days=d, hours=1), t) for c, d, t in events if with_future or d < 0]
        return _orders(rows), pl.DataFrame(event_rows, schema=EVENTS, orient="row")

    customers = pl.DataFrame({"customer_id": [1, 2, 3, 4, 5, 6],
                              "signed_up_at": [CUTOFF - timedelta(days=900)] * 5 + [CUTOFF + timedelta(days=3)],
                              "birthday": [None] * 6},
                             schema={"customer_id": pl.Int64, "signed_up_at": pl.Datetime("us", "UTC"),
                                     "birthday": pl.Date})
    def categories(with_future: bool) -> pl.DataFrame:
        # The first purchase per category, from the same rows the orders frame holds.
        rows = [(c, "shoes" if a > 250 else "bags", CUTOFF + timedelta(days=d, minutes=m))
                for c, d, m, a, _, _ in past + (future if with_future else [])]
        frame = pl.DataFrame(rows, schema={"customer_id": pl.Int64, "category": pl.String,
                                           "first_bought_at": pl.Datetime("us", "UTC")}, orient="row")
        return frame.group_by("customer_id", "category").agg(pl.col("first_bought_at").min())

    clean = build_features(frames(False)[0], CUTOFF, events=frames(False)[1], customers=customers,
                           rule_sets=(TIER, LAYER, TAGS), categories=categories(False))
    noisy = build_features(frames(True)[0], CUTOFF, events=frames(True)[1], customers=customers,
                           rule_sets=(TIER, LAYER, TAGS), categories=categories(True))
    assert_frame_equal(clean, noisy)
    assert {"tier_rank", "layer_rank", "category_breadth", "tag_price_sensitive"} <= set(clean.columns)


def test_label_counts_orders_in_the_half_open_horizon():
    horizon = 90
    rows = [(1, CUTOFF - timedelta(days=3), 10.0, 0.0, False),
            (2, CUTOFF - timedelta(days=3), 10.0, 0.0, False), (2, CUTOFF + timedelta(days=horizon), 10.0, 0.0, False),
            (3, CUTOFF - timedelta(days=3), 10.0, 0.0, False),
            (3, CUTOFF + timedelta(days=horizon, microseconds=1), 10.0, 0.0, False),
            (4, CUTOFF - timedelta(days=3), 10.0, 0.0, False), (4, CUTOFF, 10.0, 0.0, False)]
    orders = _orders(rows)
    who = build_features(orders, CUTOFF).select("customer_id")
    result = dict(labels(orders, who, CUTOFF, horizon).iter_rows())
    # 2: an order exactly at cut-off + H still counts; 3: one microsecond later does not;
    # 4: an order exactly at the cut-off is neither a feature nor a label purchase.
    assert result == {1: 1, 2: 0, 3: 1, 4: 1}


def test_population_is_customers_with_an_order_in_the_lookback():
    orders = _orders([(1, CUTOFF - timedelta(days=10), 5.0, 0.0, False),
                      (2, CUTOFF - timedelta(days=400), 5.0, 0.0, False)])
    assert build_features(orders, CUTOFF, FeatureConfig(lookback_days=365))["customer_id"].to_list() == [1]


def test_gap_features_merge_same_day_orders_and_handle_single_orders():
    # Purchase days are UTC calendar days: two orders on the day 40 days before the cut-off are one occasion.
    orders = _orders([(1, CUTOFF - timedelta(days=40) + timedelta(hours=1), 0.0, 0.0, False),
                      (1, CUTOFF - timedelta(days=40) + timedelta(hours=2), 30.0, 0.0, False),
                      (1, CUTOFF - timedelta(days=10), 20.0, 0.0, False),
                      (2, CUTOFF - timedelta(days=5), 0.0, 0.0, False)])
    rows = build_features(orders, CUTOFF).rows_by_key("customer_id", named=True, unique=True)
    assert rows[1]["purchase_days"] == 2 and rows[1]["gap_mean"] == 30 and rows[1]["orders_total"] == 3
    assert rows[1]["zero_amount_share"] == 1 / 3 and abs(rows[1]["recency_over_gap"] - 1 / 3) < 1e-9
    assert rows[2]["gap_mean"] is None and rows[2]["bgnbd_x"] == 0


def test_bgnbd_recovers_the_parameters_it_was_simulated_with():
    truth = {"r": 0.8, "alpha": 4.0, "a": 0.6, "b": 2.5}
    x, t_x, big_t = simulate(6000, *truth.values(), big_t=52.0, rng=np.random.default_rng(11))
    fitted = BetaGeometricNBD().fit(x, t_x, big_t).params_
    for name, value in truth.items():
        assert abs(fitted[name] - value) / value < 0.2, (name, fitted)


def test_bgnbd_alive_probability_falls_with_silence():
    model = BetaGeometricNBD().fit(*simulate(3000, 0.8, 4.0, 0.6, 2.5, big_t=52.0, rng=np.random.default_rng(1)))
    alive = model.probability_alive(np.array([5, 5, 0]), np.array([50, 10, 0]), np.array([52, 52, 52]))
    assert alive[0] > alive[1] and alive[2] == 1.0


def test_threshold_reaches_the_target_precision_with_the_most_recall():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 2, 5000)
    score = target * 0.3 + rng.random(5000)
    decision = choose_flag(target, score, FlagPolicy(target_precision=0.75))
    flagged = score >= decision.threshold
    assert decision.met and target[flagged].mean() >= 0.75
    looser = score >= np.max(score[score < decision.threshold])
    assert target[looser].mean() < 0.75


def test_training_snapshots_never_see_the_validation_window():
    config = TrainingConfig(step_days=30, snapshots=3)
    validation, cutoffs = training_cutoffs(CUTOFF, config)
    assert validation == CUTOFF - config.horizon
    assert all(c + config.horizon <= validation for c in cutoffs)


def test_model_trains_saves_and_loads(tmp_path):
    rng = np.random.default_rng(5)
    rows = []
    for customer in range(1, 1201):
        rate = rng.choice([7.0, 30.0, 120.0])  # days between orders
        day = -700.0 + rng.random() * 30
        while day < 0:
            rows.append((customer, CUTOFF + timedelta(days=day), float(rng.integers(10, 200)), 0.0, False))
            day += rng.exponential(rate)
    orders = _orders(rows)
    result = train_churn(orders, CUTOFF, TrainingConfig(snapshots=3))
    assert result.metrics["roc_auc"] > 0.6
    from churn.calibration import score_inputs
    from churn.model import ChurnModel
    again = ChurnModel.from_text(result.model.to_text())
    rebuilt = result.shipped.probability(score_inputs(again.predict_proba(result.validation), result.validation))
    assert np.allclose(rebuilt, result.validation["probability"].to_numpy())


def test_reasons_read_as_sentences_and_only_for_features_that_raised_the_risk():
    import json

    from churn.reasons import drivers_frame, sentence, sentences

    row = {"recency_days": 97.2, "gap_mean": 30.0, "recency_over_gap": 3.2, "spend_90d": 0.0, "login_30d": 0}
    assert sentence("recency_days", row, "en-US") == "no order for 97 days; usually orders every 30 days"
    assert sentence("recency_days", row, "zh-CN") == "已 97 天未下单，平时约每 30 天一单"
    assert sentence("days_since_event", {"days_since_event": 90.0}, "en-US") == \
        "no visit or app activity in the last 90 days"
    assert sentence("days_since_event", {"days_since_event": 12.4}, "en-GB") == "no visit or app activity for 12 days"
    names = ["recency_days", "recency_over_gap", "spend_90d", "login_30d", "gap_mean"]
    contributions = np.array([[0.9, 0.8, -0.2, 0.1, 0.0, 0.0], [-0.5, -0.1, -0.3, -0.2, 0.0, 0.0]])
    matrix = np.array([[row[n] for n in names]] * 2, dtype=float)
    stored = [json.loads(text) for text in drivers_frame(contributions, names, matrix)]
    assert [d["feature"] for d in stored[0]["drivers"]] == ["recency_days", "recency_over_gap", "login_30d"]
    # recency and recency-over-gap say the same thing once; negative contributions never become reasons
    assert sentences(stored[0], "en-US") == ["no order for 97 days; usually orders every 30 days",
                                             "only 0 logins in the last 30 days"]
    assert sentences(stored[0], "zh-CN") == ["已 97 天未下单，平时约每 30 天一单", "近 30 天登录只有 0 次"]
    assert stored[1]["drivers"] == [] and sentences(stored[1]) == []


def test_features_see_a_fixed_history_depth_so_snapshots_and_scoring_agree():
    config = FeatureConfig(history_days=200)
    recent = [(1, CUTOFF - timedelta(days=20), 10.0, 0.0, False), (1, CUTOFF - timedelta(days=150), 10.0, 0.0, False)]
    ancient = [(1, CUTOFF - timedelta(days=201), 99.0, 0.0, False)]
    assert_frame_equal(build_features(_orders(recent), CUTOFF, config),
                       build_features(_orders(recent + ancient), CUTOFF, config))
