"""The flag policy, the gate against the classic models, calibration, populations, predictive fields and reasons
(pure: frames in, no database)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import polars as pl
import pytest

from churn.evaluation import evaluate_transactions, predictive_calibration
from churn.features import FeatureConfig, population_summary
from churn.policy import NEVER, FlagPolicy, choose_flag, flag_metrics, risk_levels, value_threshold
from churn.reasons import sentence, topic, topic_label
from churn.training import TrainingConfig, train_churn
from wiring.generator import GeneratorConfig, generate

END = date(2026, 11, 1)


def _transactions(variant: str, customers: int, seed: int) -> pl.DataFrame:
    data = generate(GeneratorConfig.variant(variant, customers=customers, seed=seed, end=END))
    codes = data.orders.select("customer_external_id").unique().sort("customer_external_id") \
        .with_row_index("customer_id", 1)
    return data.orders.join(codes, on="customer_external_id").select(
        pl.col("customer_id").cast(pl.Int64), "ordered_at", "amount_paid")


@pytest.fixture(scope="module")
def hard_log():
    return _transactions("hard", 20_000, 4)


def test_precision_policy_never_aims_below_base_rate_plus_ten_points_and_says_when_it_cannot():
    rng = np.random.default_rng(1)
    target = (rng.random(4000) < 0.8).astype(int)  # most customers churn, as on some real logs
    noise = rng.random(4000)  # a score that knows nothing
    decision = choose_flag(target, noise, FlagPolicy(target_precision=0.75))
    assert decision.aim == "precision ≥ 90%"  # 0.80 + 0.10, above the 0.75 target
    assert not decision.met and decision.threshold == NEVER and "nobody is flagged" in decision.note
    assert flag_metrics(target, noise, decision.threshold)["flagged"] == 0  # not everyone: no one
    informative = target * 0.6 + rng.random(4000)
    found = choose_flag(target, informative, FlagPolicy(target_precision=0.75))
    metrics = flag_metrics(target, informative, found.threshold)
    assert found.met and metrics["precision"] >= metrics["base_rate"] + 0.10 and 0 < metrics["flagged"] < 4000
    assert metrics["lift"] == pytest.approx(metrics["precision"] / metrics["base_rate"], abs=0.002)


def test_capacity_and_value_policies():
    probability = np.linspace(0, 1, 1001)
    target = (probability > 0.5).astype(int)
    capacity = choose_flag(target, probability, FlagPolicy(kind="capacity", daily_capacity=100))
    assert int((probability >= capacity.threshold).sum()) == 100
    policy = FlagPolicy(kind="value", saved_margin=100, response_rate=0.2, offer_cost=9, message_cost=1)
    assert value_threshold(policy) == pytest.approx(0.5)
    assert choose_flag(target, probability, policy).threshold == pytest.approx(0.5)
    hopeless = FlagPolicy(kind="value", saved_margin=10, response_rate=0.1, offer_cost=5, message_cost=1)
    refused = choose_flag(target, probability, hopeless)
    assert refused.threshold == NEVER and not refused.met and "cost more" in refused.note
    levels = risk_levels(np.array([0.9, 0.5, 0.1]), 0.8, 0.4)
    assert levels.tolist() == ["high", "medium", "low"]


def test_on_a_hard_transaction_log_the_shipped_score_beats_the_classic_models_and_is_calibrated(hard_log):
    result = evaluate_transactions(hard_log, datetime(2026, 8, 1, tzinfo=UTC))
    best = max(b["roc_auc"] for b in result["baselines"].values())
    # The benchmarks doc reports ≥ +0.01 on 20k-customer shops of several seeds; a single seed's noise is ~0.003.
    assert result["roc_auc"] >= best + 0.005, result
    assert result["brier"] < min(b["brier"] for b in result["baselines"].values())
    flag = result["flag"]
    assert flag["met"] and 0 < flag["flagged"] < result["n_customers"]
    assert flag["precision"] >= max(0.75, flag["base_rate"] + 0.10) - 0.03  # chosen on the other half
    assert flag["lift"] > 1.3


def test_the_gate_falls_back_to_bgnbd_when_the_model_cannot_learn(hard_log):
    crippled = TrainingConfig(snapshots=3, params={"min_data_in_leaf": 10_000_000})
    result = train_churn(hard_log.filter(pl.col("ordered_at") < datetime(2026, 11, 1, tzinfo=UTC)),
                         datetime(2026, 11, 1, tzinfo=UTC), crippled)
    assert result.shipped.chosen in ("bgnbd", "recency", "stack")
    best = max(b["roc_auc"] for b in result.baselines.values())
    assert result.metrics["roc_auc"] >= best - 0.005


def test_population_options_name_the_rule_size_and_who_was_left_out(hard_log):
    cutoff = datetime(2026, 8, 1, tzinfo=UTC)
    active = population_summary(hard_log, cutoff, FeatureConfig())
    short = population_summary(hard_log, cutoff, FeatureConfig(lookback_days=90))
    everyone = population_summary(hard_log, cutoff, FeatureConfig(population="all"))
    buyers = hard_log.filter(pl.col("ordered_at") < cutoff)["customer_id"].n_unique()
    for summary in (active, short, everyone):
        assert summary["size"] + summary["left_out"]["last_order_before_lookback"] == buyers
    assert short["size"] < active["size"] < everyone["size"]
    assert "365 days" in active["rule"] and everyone["population"] == "all"
    result = evaluate_transactions(hard_log, cutoff, population="all")
    assert result["population"]["size"] == result["n_customers"] == everyone["size"]
    with pytest.raises(ValueError, match="population"):
        FeatureConfig(population="vip")


def test_hard_variant_has_returners_pulled_forward_orders_and_stronger_seasons():
    standard = generate(GeneratorConfig(customers=4000, seed=9, end=END)).orders
    hard = generate(GeneratorConfig.variant("hard", customers=4000, seed=9, end=END)).orders

    def longest_gaps(orders: pl.DataFrame) -> pl.Series:
        return (orders.sort("ordered_at").group_by("customer_external_id")
                .agg(pl.col("ordered_at").diff().dt.total_days().max().alias("gap"))["gap"].drop_nulls())

    assert (longest_gaps(hard) >= 200).mean() > (longest_gaps(standard) >= 200).mean() + 0.03

    def share_on(orders: pl.DataFrame, month: int, days: range) -> float:
        at = orders["ordered_at"]
        return float(((at.dt.month() == month) & at.dt.day().is_in(list(days))).mean())

    assert share_on(hard, 11, range(5, 16)) > 1.15 * share_on(standard, 11, range(5, 16))  # Double 11 stronger
    assert share_on(hard, 7, range(8, 9)) > 1.5 * share_on(standard, 7, range(8, 9))  # orders pulled onto member day
    assert share_on(hard, 7, range(10, 19)) < share_on(standard, 7, range(10, 19))  # ... from the days after it


@pytest.mark.parametrize("variant", ["standard", "hard"])
def test_predictive_fields_match_what_customers_then_did_decile_by_decile(variant, hard_log):
    """Out of time: trained on data before 2026-08-03 only, predictions for the 90 days after it."""
    log = hard_log if variant == "hard" else _transactions("standard", 20_000, 4)
    checked = predictive_calibration(log, datetime(2026, 8, 3, tzinfo=UTC))
    # Stated tolerance: each decile's mean within 25% of what was realised (+0.1 order for the quiet deciles),
    # and the whole population within 15%.
    for row in checked["orders"]:
        assert abs(row["predicted"] - row["realised"]) <= 0.25 * row["realised"] + 0.1, checked["orders"]
    total = checked["total_orders"]
    assert abs(total["predicted"] - total["realised"]) <= 0.15 * total["realised"]
    for row in checked["spend"][3:]:  # the top seven deciles hold nearly all the money: within 30%
        assert abs(row["predicted"] - row["realised"]) <= 0.30 * row["realised"], checked["spend"]
    money = checked["total_spend"]
    assert abs(money["predicted"] - money["realised"]) <= 0.2 * money["realised"]
    assert checked["next_order_dated_share"] > 0.5 and checked["p_alive_in_range"]


FEATURES = ["recency_days", "recency_over_gap", "tenure_days", "orders_total", "spend_total", "order_value_mean",
            "zero_amount_share", "last_order_value", "orders_30d", "orders_365d", "spend_90d", "gap_mean", "gap_std",
            "purchase_days", "last_gap", "gap_cv", "trend_90d", "last_value_ratio", "purchase_days_per_month",
            "bgnbd_x", "bgnbd_t_x", "bgnbd_T", "bgnbd_p_alive", "bgnbd_expected", "discount_share",
            "new_product_orders", "full_price_streak", "days_since_event", "login_7d", "view_30d", "cart_add_90d",
            "cart_abandon_30d", "category_breadth", "tier_rank", "layer_rank", "tag_price_sensitive", "tag_my_own"]


@pytest.mark.parametrize("locale", ["zh-CN", "en-US"])
def test_every_feature_reads_as_a_plain_sentence_without_unknowns_or_raw_names(locale):
    row = {name: 1234.5 for name in FEATURES} | {"gap_mean": None, "bgnbd_p_alive": 0.123, "discount_share": 0.8}
    for feature in FEATURES:
        text = sentence(feature, row, locale)
        assert text and "unknown" not in text and "None" not in text and "nan" not in text
        assert feature not in text, (feature, text)
        assert topic_label(topic(feature), locale)
    assert "1,234" in sentence("orders_30d", row, locale)  # numbers formatted
    assert "12%" in sentence("bgnbd_p_alive", row, locale)
    assert sentence("recency_days", {"recency_days": None}, locale)  # a missing value still reads
    chinese = any("\u4e00" <= ch <= "\u9fff" for ch in sentence("recency_days", row, locale))
    assert chinese == (locale == "zh-CN")
