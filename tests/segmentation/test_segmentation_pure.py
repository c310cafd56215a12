"""Segmentation's pure modules, no database: rules, metrics, tags, hysteresis (with property tests)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segmentation.defaults import LAYER, TAGS, TIER
from segmentation.hysteresis import STATE_SCHEMA, settle
from segmentation.metrics import METRICS, compute_metrics
from segmentation.rules import Condition, RuleProblem, RuleSet, check_rule_set, evaluate, explain
from segmentation.tags import evaluate_tags

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)
KINDS = {name: kind for name, (kind, _) in METRICS.items()}
ORDER_SCHEMA = {"order_id": pl.Int64, "customer_id": pl.Int64, "ordered_at": pl.Datetime("us", "UTC"),
                "amount_paid": pl.Float64, "discount": pl.Float64, "has_coupon": pl.Boolean}
EVENT_SCHEMA = {"customer_id": pl.Int64, "occurred_at": pl.Datetime("us", "UTC"), "type": pl.String}
CUSTOMER_SCHEMA = {"customer_id": pl.Int64, "signed_up_at": pl.Datetime("us", "UTC"), "birthday": pl.Date}


def _customers(n: int) -> pl.DataFrame:
    return pl.DataFrame({"customer_id": list(range(1, n + 1)), "signed_up_at": [AS_OF - timedelta(days=900)] * n,
                         "birthday": [date(1990, 6, 15)] * n}, schema=CUSTOMER_SCHEMA)


def _orders(rows: list[tuple[int, datetime, float, float]]) -> pl.DataFrame:
    return pl.DataFrame([(i + 1, c, t, a, d, False) for i, (c, t, a, d) in enumerate(rows)], schema=ORDER_SCHEMA,
                        orient="row")


def _no_events() -> pl.DataFrame:
    return pl.DataFrame(schema=EVENT_SCHEMA)


def _tier_of(recency: int, frequency: int, monetary: float) -> str:
    metrics = pl.DataFrame({"customer_id": [1], "recency_days": [recency], "frequency": [frequency],
                            "monetary": [monetary]})
    return evaluate(metrics, TIER)["value"].item()


@pytest.mark.parametrize(("recency", "frequency", "monetary", "tier"), [
    (30, 4, 2000.0, "VIP"), (31, 4, 2000.0, "potential"), (30, 3, 2000.0, "potential"),
    (30, 4, 1999.99, "potential"), (31, 3, 1999.99, "potential"), (90, 2, 500.0, "potential"),
    (91, 1, 100.0, "regular"), (180, 1, 499.99, "regular"), (181, 0, 0.0, "lost"),
])
def test_tier_boundaries_are_exact(recency, frequency, monetary, tier):
    assert _tier_of(recency, frequency, monetary) == tier


def test_unmatched_customer_gets_the_fallback_and_the_reason():
    metrics = {"recency_days": 100, "frequency": 1, "monetary": 50.0}
    frame = pl.DataFrame({"customer_id": [1], **{k: [v] for k, v in metrics.items()}})
    result = evaluate(frame, TIER).row(0, named=True)
    assert result["matched"] is False and result["value"] == "regular"  # 2 of 3 conditions: the nearest
    why = explain(metrics, TIER)
    assert why["matched"] is None
    vip = next(c for c in why["failed"] if c["rule"] == "VIP")
    assert {f["metric"] for f in vip["failed"]} == {"recency_days", "frequency", "monetary"}
    never_ordered = pl.DataFrame({"customer_id": [2], "recency_days": [None], "frequency": [0], "monetary": [0.0]})
    assert evaluate(never_ordered, TIER)["value"].item() == "lost", "no condition met anywhere: the humblest"
    fixed = TIER.model_copy(update={"fallback": "unclassified"})
    assert evaluate(frame, fixed)["value"].item() == "unclassified"


metric_values = st.fixed_dictionaries({
    name: st.one_of(st.none(), st.integers(min_value=0, max_value=400))
    for name, (kind, _) in METRICS.items() if kind == "number"})


@settings(max_examples=60, deadline=None)
@given(st.lists(metric_values, min_size=1, max_size=30))
def test_every_customer_gets_exactly_one_tier_and_one_layer(rows):
    frame = pl.DataFrame([{"customer_id": i, **r} for i, r in enumerate(rows)],
                         schema={"customer_id": pl.Int64, **{k: pl.Float64 for k in rows[0]}})
    for rule_set in (TIER, LAYER):
        result = evaluate(frame, rule_set)
        assert len(result) == len(rows) and result["customer_id"].n_unique() == len(rows)
        assert result["value"].null_count() == 0
        assert set(result["value"]) <= set(rule_set.values())


bounds = st.one_of(st.none(), st.integers(-5, 5), st.floats(-5, 5, allow_nan=False), st.sampled_from([-1e308, 1e308]))
numbers = st.one_of(st.none(), st.integers(-6, 6), st.floats(-6, 6), st.sampled_from([float("nan"), float("inf"),
                                                                                        float("-inf")]))
numeric_conditions = st.tuples(bounds, bounds).filter(lambda b: b != (None, None) and (
    None in b or b[0] <= b[1])).map(lambda b: Condition(min=b[0], max=b[1]))
words = st.sampled_from(["VIP", "potential", "regular", "lost", ""])
text_conditions = st.one_of(st.lists(words, min_size=1, max_size=3).map(lambda w: Condition(**{"in": w})),
                            st.lists(words, max_size=3).map(lambda w: Condition(not_in=w)))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.tuples(numeric_conditions, st.lists(numbers, min_size=1, max_size=8)),
                 st.tuples(text_conditions, st.lists(st.one_of(st.none(), words), min_size=1, max_size=8))))
def test_one_value_is_judged_as_the_run_judges_a_column(case):
    # The profile explains one customer with Condition.holds; the run evaluates columns with the polars
    # expression. They must agree on every value, nulls and NaN included, or the "why" would contradict the tier.
    condition, values = case
    dtype = pl.String if condition.min is None and condition.max is None else pl.Float64
    column = pl.DataFrame({"m": values}, schema={"m": dtype}).select(condition.expression("m"))["m"].to_list()
    assert [condition.holds(v) for v in values] == column


@pytest.mark.parametrize(("body", "field"), [
    ({"rules": [{"name": "a", "when": {"nonsense": {"min": 1}}}]}, "when.nonsense"),
    ({"rules": [{"name": "a", "when": {"recency_days": {"min": 1}}},
                {"name": "b", "when": {"recency_days": {"min": 5}, "frequency": {"min": 2}}}]}, "when"),
    ({"rules": [{"name": "a", "when": {"tier": {"min": 1}}}]}, "when.tier"),
])
def test_unusable_rules_are_named(body, field):
    with pytest.raises(RuleProblem) as problem:
        check_rule_set(RuleSet.model_validate(body), KINDS)
    assert problem.value.field == field
    assert problem.value.rule == len(body["rules"]) - 1


def test_empty_range_is_rejected():
    with pytest.raises(ValueError, match="empty range"):
        RuleSet.model_validate({"rules": [{"name": "a", "when": {"frequency": {"min": 5, "max": 2}}}]})


def test_default_rule_sets_are_usable():
    check_rule_set(TIER, {k: v for k, v in KINDS.items() if k != "tier"})
    check_rule_set(LAYER, KINDS)


def _price_sensitive_after(orders: list[tuple[datetime, float]]) -> list[bool]:
    """Evaluate the tag after each order, carrying the tag state forward like successive runs."""
    current = pl.DataFrame(schema={"customer_id": pl.Int64, "tag": pl.String, "since": pl.Datetime("us", "UTC")})
    tagged = []
    only = TAGS.model_copy(update={"tags": [t for t in TAGS.tags if t.name == "price_sensitive"]})
    for count in range(1, len(orders) + 1):
        as_of = orders[count - 1][0] + timedelta(hours=1)
        frame = _orders([(1, t, 100.0, d) for t, d in orders[:count]])
        metrics = compute_metrics(_customers(1), frame, _no_events(), as_of).with_columns(tier=pl.lit("regular"))
        added, removed = evaluate_tags(metrics, current, as_of, only)
        current = current.join(removed.select("customer_id", "tag"), on=["customer_id", "tag"], how="anti")
        current = current.vstack(added.select("customer_id", "tag", since=pl.lit(as_of)).cast(current.schema))
        tagged.append(not current.is_empty())
    return tagged


def test_price_sensitive_is_removed_after_exactly_the_third_full_price_order():
    start = AS_OF - timedelta(days=100)
    discounted = [(start + timedelta(days=i), 10.0) for i in range(6)]
    full_price = [(start + timedelta(days=10 + i), 0.0) for i in range(4)]
    states = _price_sensitive_after(discounted + full_price)
    assert states[1:6] == [True] * 5, "tagged once most orders are discounted"
    assert states[6:8] == [True, True], "still tagged after one and two full-price orders"
    assert states[8] is False, "removed by the third consecutive full-price order"
    assert states[9] is False


def test_a_discounted_order_resets_the_full_price_streak():
    start = AS_OF - timedelta(days=100)
    history = [(start + timedelta(days=i), 10.0) for i in range(6)] + [
        (start + timedelta(days=10), 0.0), (start + timedelta(days=11), 0.0), (start + timedelta(days=12), 5.0),
        (start + timedelta(days=13), 0.0), (start + timedelta(days=14), 0.0)]
    assert _price_sensitive_after(history)[-1] is True


orders_strategy = st.lists(st.tuples(st.integers(1, 4), st.integers(-800, 120), st.floats(0, 5000),
                                     st.sampled_from([0.0, 5.0])), max_size=40)
events_strategy = st.lists(st.tuples(st.integers(1, 4), st.integers(-200, 120),
                                     st.sampled_from(["login", "view", "cart_abandon", "search"])), max_size=40)


@settings(max_examples=60, deadline=None)
@given(orders_strategy, events_strategy, st.lists(st.tuples(st.integers(1, 4), st.integers(0, 120)), max_size=10))
def test_rows_on_or_after_as_of_never_change_a_metric(orders, events, late):
    def frames(include_future: bool):
        order_rows = [(c, AS_OF + timedelta(days=d, minutes=7), a, disc) for c, d, a, disc in orders
                      if include_future or d < 0]
        event_rows = [(c, AS_OF + timedelta(days=d, minutes=3), t) for c, d, t in events if include_future or d < 0]
        if include_future:  # plus extra rows exactly at or after the as-of moment
            order_rows += [(c, AS_OF + timedelta(days=d), 99.0, 0.0) for c, d in late]
            event_rows += [(c, AS_OF + timedelta(days=d), "login") for c, d in late]
        return _orders(order_rows), pl.DataFrame(event_rows, schema=EVENT_SCHEMA, orient="row")

    past = compute_metrics(_customers(4), *frames(False), AS_OF)
    everything = compute_metrics(_customers(4), *frames(True), AS_OF)
    assert past.equals(everything)


def _state(value: str | None) -> pl.DataFrame:
    if value is None:
        return pl.DataFrame(schema=STATE_SCHEMA)
    return pl.DataFrame([{"customer_id": 1, "value": value, "since": AS_OF - timedelta(days=50), "pending": None,
                          "pending_runs": None, "pending_as_of": None}], schema=STATE_SCHEMA)


def _step(state: pl.DataFrame, candidate: str, day: int, deep: bool = False) -> pl.DataFrame:
    result = settle(state, pl.DataFrame({"customer_id": [1], "value": [candidate], "deep": [deep]}),
                    AS_OF + timedelta(days=day), confirm_runs=2)
    return result.select(list(STATE_SCHEMA)).cast(STATE_SCHEMA)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(["VIP", "potential", "regular"]), min_size=1, max_size=12))
def test_hysteresis_never_moves_on_one_noisy_run(candidates):
    state = _state("regular")
    values = ["regular"]
    for day, candidate in enumerate(candidates):
        state = _step(state, candidate, day)
        values.append(state["value"].item())
    for index in range(1, len(values)):
        if values[index] != values[index - 1]:
            # A move needs the same candidate on this run and the one before it.
            assert candidates[index - 1] == values[index] and index >= 2 and candidates[index - 2] == values[index]


def test_hysteresis_moves_on_the_second_run_or_at_once_past_the_margin():
    state = _step(_state("regular"), "potential", 0)
    assert state["value"].item() == "regular" and state["pending"].item() == "potential"
    rerun = _step(state, "potential", 0)
    assert rerun["value"].item() == "regular", "a rerun on the same date is not a second observation"
    moved = _step(state, "potential", 1)
    assert moved["value"].item() == "potential" and moved["pending"].item() is None
    assert _step(_state("regular"), "VIP", 0, deep=True)["value"].item() == "VIP"
    assert _step(_state(None), "VIP", 0)["value"].item() == "VIP", "new customers take the candidate at once"


def test_duplicate_names_are_rejected():
    with pytest.raises(ValueError, match="rule names must be unique: a"):
        RuleSet.model_validate({"rules": [{"name": "a", "when": {"frequency": {"min": 1}}},
                                          {"name": "a", "when": {"frequency": {"min": 2}}}]})
    with pytest.raises(ValueError, match="tag names must be unique: t"):
        TAGS.model_validate({"tags": [{"name": "t", "add": {"frequency": {"min": 1}}},
                                      {"name": "t", "add": {"frequency": {"min": 2}}}]})


def _low_months_by_hand(actions: list[datetime], as_of: datetime, lookback_days: int, threshold: int,
                        months_max: int) -> int:
    """The definition, written plainly: leading complete months (newest first) with fewer actions than asked."""
    since = as_of - timedelta(days=lookback_days)
    counts = {}
    for at in actions:
        if since <= at < as_of:
            back = (as_of.year * 12 + as_of.month) - (at.year * 12 + at.month)
            counts[back] = counts.get(back, 0) + 1
    streak = 0
    for k in range(1, months_max + 1):
        if counts.get(k, 0) >= threshold:
            break
        streak += 1
    return streak


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 400), st.booleans()), max_size=60),
       st.integers(0, 27))
def test_low_activity_months_and_last_activity_follow_their_definition(actions, as_of_day):
    as_of = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(days=as_of_day, hours=5)
    rows = [(c, as_of - timedelta(days=d, minutes=1), is_order) for c, d, is_order in actions]
    orders = _orders([(c, at, 10.0, 0.0) for c, at, is_order in rows if is_order])
    events = pl.DataFrame([(c, at, "view") for c, at, is_order in rows if not is_order], schema=EVENT_SCHEMA,
                          orient="row")
    metrics = compute_metrics(_customers(3), orders, events, as_of).rows_by_key("customer_id", named=True,
                                                                                unique=True)
    for customer in (1, 2, 3):
        mine = [at for c, at, _ in rows if c == customer]
        expected = _low_months_by_hand(mine, as_of, lookback_days=180, threshold=2, months_max=12)
        assert metrics[customer]["low_activity_months"] == expected
        recent = [(as_of - at).days for at in mine if (as_of - at).days <= 180]
        assert metrics[customer]["days_since_last_activity"] == min(recent, default=180)
