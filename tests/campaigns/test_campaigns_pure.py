"""Campaign guard rails and planning pieces without a database: properties, DST, sandbox, SMS length."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.authoring.fairness import OfferReach, violations
from campaigns.authoring.rendering import TemplateProblem, TemplateSource, render, validate
from campaigns.authoring.sms import sms_length
from campaigns.authoring.spec import CampaignSpec, Schedule
from campaigns.planning.caps import LEDGER_SCHEMA, Cap, check_caps, exceeded
from campaigns.planning.discounts import WITHHELD, DiscountRules, OfferTerms, apply_ceilings, coupon_discount
from campaigns.planning.planner import PlanInputs, audience, coupon_codes, holdout_draw, send_times
from campaigns.planning.quiet_hours import QuietHours, defer_out_of_quiet_hours
from campaigns.service import parse_spec
from kit.errors import InvalidInput
from kit.timezones import local_to_utc

ZONES = ("Asia/Shanghai", "America/New_York", "Europe/London", "Australia/Lord_Howe")
UTC_TYPE = pl.Datetime("us", "UTC")


def _local_minute(instant: datetime, zone: str) -> int:
    local = instant.astimezone(ZoneInfo(zone))
    return local.hour * 60 + local.minute


# ---------------------------------------------------------------- quiet hours and local time


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31)),
                          st.sampled_from(ZONES), st.sampled_from(["sms", "push", "email"])), min_size=1, max_size=30),
       st.integers(0, 47), st.integers(0, 47))
def test_deferral_never_lands_inside_quiet_hours(rows, start_half_hour, end_half_hour):
    quiet = QuietHours(start_half_hour * 30, end_half_hour * 30)
    frame = pl.DataFrame({"send_at": [r[0].replace(tzinfo=UTC) for r in rows], "time_zone": [r[1] for r in rows],
                          "channel": [r[2] for r in rows]}, schema_overrides={"send_at": UTC_TYPE})
    out = defer_out_of_quiet_hours(frame, quiet)
    for before, after, zone, channel, moved in zip(frame["send_at"], out["send_at"], out["time_zone"],
                                                   out["channel"], out["deferred_quiet"], strict=True):
        minute = _local_minute(after, zone)
        inside = pl.select(quiet.contains(pl.lit(minute))).item()
        if channel in quiet.channels:
            assert not inside, (before, after, zone)
        assert after >= before
        assert after - before <= timedelta(hours=25)
        assert moved == (after != before) or (moved and after == before) is False


def test_dst_deferrals_in_four_zones():
    quiet = QuietHours()
    cases = [  # (send at UTC, zone, expected UTC after deferral)
        (datetime(2026, 3, 8, 3, 0, tzinfo=UTC), "America/New_York", datetime(2026, 3, 8, 13, 0, tzinfo=UTC)),
        (datetime(2026, 11, 1, 2, 0, tzinfo=UTC), "America/New_York", datetime(2026, 11, 1, 14, 0, tzinfo=UTC)),
        (datetime(2026, 3, 28, 22, 0, tzinfo=UTC), "Europe/London", datetime(2026, 3, 29, 8, 0, tzinfo=UTC)),
        (datetime(2026, 3, 8, 14, 0, tzinfo=UTC), "Asia/Shanghai", datetime(2026, 3, 9, 1, 0, tzinfo=UTC)),
        # Lord Howe moves 30 minutes on 2026-10-04 (+10:30 → +11): 09:00 local is 22:00 UTC the day before.
        (datetime(2026, 10, 3, 11, 0, tzinfo=UTC), "Australia/Lord_Howe", datetime(2026, 10, 3, 22, 0, tzinfo=UTC)),
        (datetime(2026, 10, 2, 11, 0, tzinfo=UTC), "Australia/Lord_Howe", datetime(2026, 10, 2, 22, 30, tzinfo=UTC)),
    ]
    frame = pl.DataFrame({"send_at": [c[0] for c in cases], "time_zone": [c[1] for c in cases],
                          "channel": ["sms"] * len(cases)}, schema_overrides={"send_at": UTC_TYPE})
    out = defer_out_of_quiet_hours(frame, quiet)
    assert out["send_at"].to_list() == [c[2] for c in cases]
    assert out["deferred_quiet"].all()


def test_wall_clock_times_in_gaps_move_forward_and_repeated_times_take_the_first():
    assert local_to_utc(date(2026, 3, 8), 150, "America/New_York") == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
    assert local_to_utc(date(2026, 11, 1), 90, "America/New_York") == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    # Lord Howe's 30-minute gap: 02:15 does not exist on 2026-10-04; it becomes 02:45 (+11:00).
    moved = local_to_utc(date(2026, 10, 4), 135, "Australia/Lord_Howe")
    assert moved.astimezone(ZoneInfo("Australia/Lord_Howe")).strftime("%H:%M") == "02:45"


def test_monthly_at_ten_is_ten_in_each_customers_own_zone_across_dst():
    spec = _spec(schedule={"kind": "monthly", "day_of_month": 5, "local_hour": 10})
    frame = pl.DataFrame({"time_zone": list(ZONES)})
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for day in (date(2026, 3, 5), date(2026, 4, 5), date(2026, 10, 5), date(2026, 11, 5)):
        for instant, zone in zip(send_times(frame, spec, day, now), ZONES, strict=True):
            local = instant.astimezone(ZoneInfo(zone))
            assert (local.date(), local.hour, local.minute) == (day, 10, 0)


def test_schedules_fire_on_the_right_days():
    monthly = Schedule(kind="monthly", day_of_month=31)
    assert monthly.fires_on(date(2026, 2, 28)) and not monthly.fires_on(date(2026, 2, 27))
    assert monthly.fires_on(date(2026, 4, 30)) and monthly.fires_on(date(2026, 5, 31))
    weekly = Schedule(kind="weekly", weekday="tuesday")
    assert weekly.fires_on(date(2026, 12, 1)) and not weekly.fires_on(date(2026, 12, 2))
    bounded = Schedule(kind="daily", starts_on=date(2026, 12, 1), ends_on=date(2026, 12, 3))
    assert [bounded.fires_on(date(2026, 12, d)) for d in range(1, 5)] == [True, True, True, False]


# ---------------------------------------------------------------- frequency caps


def _ledger(rows: dict) -> pl.DataFrame:
    """A ledger frame; message ids and preemptible flags default to firm, id-less slots."""
    size = len(rows["customer_id"])
    return pl.DataFrame({"message_id": [None] * size, "preemptible": [False] * size} | rows, schema=LEDGER_SCHEMA)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.sampled_from(["sms", "email"]), st.integers(0, 120 * 24),
                          st.booleans(), st.integers(0, 99)), max_size=40),
       st.lists(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 120 * 24)), max_size=8), min_size=1,
                max_size=6))
def test_no_plan_ever_exceeds_a_cap_and_only_lower_priorities_are_preempted(history, campaigns):
    caps = [Cap(2, 30, "sms"), Cap(3, 30, "email"), Cap(4, 14, None)]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ledger = _ledger({"customer_id": [], "channel": [], "send_at": [], "priority": []})
    # The history itself must respect the caps (it was planned under them): admit it one message at a time.
    # Some of it is still only planned (preemptible), at priorities of its own.
    for number, (customer, channel, hours, planned, priority) in enumerate(history):
        row = _ledger({"customer_id": [customer], "channel": [channel], "send_at": [start + timedelta(hours=hours)],
                       "priority": [priority]}).with_columns(message_id=pl.lit(number + 1, dtype=pl.Int64),
                                                             preemptible=pl.lit(planned))
        if not check_caps(row, ledger, caps, -1)["capped"][0]:
            ledger = pl.concat([ledger, row])
    priorities = dict(zip(ledger["message_id"].to_list(), ledger["priority"].to_list(), strict=True))
    planned = set(ledger.filter(pl.col("preemptible"))["message_id"].to_list())
    for index, messages in enumerate(campaigns):
        priority = 20 * index
        frame = pl.DataFrame({"customer_id": [m[0] for m in messages], "channel": ["sms"] * len(messages),
                              "send_at": [start + timedelta(hours=m[1]) for m in messages]},
                             schema={"customer_id": pl.Int64, "channel": pl.String, "send_at": UTC_TYPE})
        frame = frame.unique("customer_id", keep="first")  # one message per customer and channel per occurrence
        checked = check_caps(frame, ledger, caps, priority=priority)
        accepted = checked.filter(~pl.col("capped"))
        taken = set(accepted["preempts"].explode().drop_nulls().to_list())
        assert taken <= planned and all(priorities[m] < priority for m in taken)
        assert checked.filter(pl.col("capped"))["preempts"].list.len().sum() == 0
        ledger = pl.concat([ledger.filter(~pl.col("message_id").is_in(sorted(taken)).fill_null(False)),
                            _ledger({"customer_id": accepted["customer_id"], "channel": accepted["channel"],
                                     "send_at": accepted["send_at"], "priority": [priority] * accepted.height})])
    for cap in caps:
        assert exceeded(ledger, cap).is_empty(), cap


def test_a_higher_priority_takes_the_slot_of_a_lower_one_still_planned():
    at = datetime(2026, 5, 1, tzinfo=UTC)
    # Customer 1 holds two planned priority-10 SMS; customer 2 two sent ones; customer 3 one planned priority-95.
    ledger = _ledger({"customer_id": [1, 1, 2, 2, 3, 3], "channel": ["sms"] * 6,
                      "send_at": [at - timedelta(days=2), at + timedelta(days=2)] * 3,
                      "priority": [10, 10, 10, 10, 95, 10]}).with_columns(
        message_id=pl.Series([11, 12, 21, 22, 31, 32], dtype=pl.Int64),
        preemptible=pl.Series([True, True, False, False, True, True]))
    frame = pl.DataFrame({"customer_id": [1, 2, 3], "channel": ["sms"] * 3, "send_at": [at] * 3},
                         schema_overrides={"send_at": UTC_TYPE})
    out = check_caps(frame, ledger, [Cap(2, 30, "sms")], priority=90)
    assert out["capped"].to_list() == [False, True, False]
    # One slot is needed: the newest of the cheapest; the sent ones are firm; a higher priority is never taken.
    assert out["preempts"].to_list() == [[12], [], [32]]
    assert out["cap_reason"].to_list() == [None, "capped", None]


def test_a_capped_slot_held_by_a_higher_priority_campaign_reads_lower_priority():
    at = datetime(2026, 5, 1, tzinfo=UTC)
    ledger = _ledger({"customer_id": [1, 1, 2, 2], "channel": ["sms"] * 4,
                      "send_at": [at - timedelta(days=3), at - timedelta(days=1)] * 2,
                      "priority": [90, 10, 10, 10]})
    frame = pl.DataFrame({"customer_id": [1, 2, 3], "channel": ["sms"] * 3, "send_at": [at] * 3},
                         schema_overrides={"send_at": UTC_TYPE})
    out = check_caps(frame, ledger, [Cap(2, 30, "sms")], priority=50)
    assert out["capped"].to_list() == [True, True, False]
    assert out["cap_reason"].to_list() == ["lower_priority", "capped", None]
    assert out["free_at"][0] == at - timedelta(days=1) + timedelta(days=30)


# ---------------------------------------------------------------- discount ceilings


customer_rows = st.lists(st.tuples(
    st.sampled_from(["VIP", "potential", "regular", "lost", "other"]),
    st.floats(0, 20_000), st.floats(0, 3_000), st.floats(0, 500),
    st.one_of(st.none(), st.floats(0.05, 0.98)), st.one_of(st.none(), st.floats(20, 2_000))), min_size=1, max_size=25)
offers = st.one_of(
    st.builds(OfferTerms, amount_off=st.floats(1, 400), min_spend=st.sampled_from([0.0, 100.0, 300.0, 1000.0]),
              free_shipping=st.booleans()),
    st.builds(OfferTerms, percent_off=st.floats(1, 90), free_shipping=st.booleans()),
    st.just(OfferTerms(free_shipping=True)))


@settings(max_examples=200, deadline=None)
@given(customer_rows, offers)
def test_no_offer_ever_breaks_a_ceiling(rows, offer):
    rules = DiscountRules()
    frame = pl.DataFrame([{"customer_id": i, "tier": r[0], "spend_365": r[1], "discount_365": r[2],
                           "open_offers": r[3], "cost_ratio": r[4], "basket": r[5]} for i, r in enumerate(rows)])
    out = apply_ceilings(frame, offer, rules)
    for row in out.iter_rows(named=True):
        if row["offer_decision"] == WITHHELD:
            assert row["discount_value"] == 0
            continue
        value, basket = row["discount_value"], row["offer_basket"]
        shipping = rules.shipping_value if row["offer_free_shipping"] else 0.0
        discount = value - shipping
        share = rules.budget_share
        # budget including the order it is redeemed on
        assert row["discount_365"] + row["open_offers"] + value <= share * (row["spend_365"] + basket - value) + 1e-6
        assert discount <= rules.tier_max_percent.get(row["tier"], rules.default_max_percent) / 100 * basket + 1e-6
        if row["cost_ratio"] is not None:
            assert basket - discount >= row["cost_ratio"] * basket - 1e-6  # never below cost
        if offer.amount_off or offer.percent_off:
            assert discount >= rules.min_offer_value - 1e-9
        wanted = (offer.amount_off or (offer.percent_off or 0) / 100 * basket)
        assert discount <= wanted + 1e-6


bounded_offers = st.one_of(
    st.builds(OfferTerms, amount_off=st.floats(1, 400), min_spend=st.sampled_from([0.0, 50.0, 300.0]),
              free_shipping=st.booleans()),
    st.builds(OfferTerms, percent_off=st.floats(1, 90), free_shipping=st.booleans(),
              min_spend=st.sampled_from([0.0, 200.0]), max_discount=st.one_of(st.none(), st.floats(5, 2_000))),
    st.just(OfferTerms(free_shipping=True)))


@settings(max_examples=300, deadline=None)
@given(customer_rows, bounded_offers, st.lists(st.floats(0, 20_000), min_size=1, max_size=12))
def test_no_redemption_on_any_basket_goes_below_cost_or_over_the_budget(rows, offer, baskets):
    """Whatever basket a coupon is redeemed on, the price stays above cost and the trailing-365-day discounts
    (granted, other open offers and this redemption) stay within the budget share of the spend, this order's
    included; the ledger books the coupon at no less than it can grant."""
    rules = DiscountRules()
    frame = pl.DataFrame([{"customer_id": i, "tier": r[0], "spend_365": r[1], "discount_365": r[2],
                           "open_offers": r[3], "cost_ratio": r[4], "basket": r[5]} for i, r in enumerate(rows)])
    out = apply_ceilings(frame, offer, rules)
    share = rules.budget_share
    for row in out.iter_rows(named=True):
        if row["offer_decision"] == WITHHELD:
            assert row["discount_value"] == 0 and row["offer_min_spend"] is None
            continue
        minimum = row["offer_min_spend"]
        assert minimum is not None and minimum >= offer.min_spend
        if row["offer_percent_off"] is not None:
            assert row["offer_max_discount"] is not None and row["offer_max_discount"] >= rules.min_offer_value
        shipping = rules.shipping_value if row["offer_free_shipping"] else 0.0
        for basket in [minimum, minimum + 0.5, *baskets]:
            if basket < minimum:
                continue
            goods = coupon_discount(basket, amount_off=row["offer_amount_off"], percent_off=row["offer_percent_off"],
                                    min_spend=minimum, max_discount=row["offer_max_discount"])
            value = goods + shipping
            assert value <= row["discount_value"] + 1e-6
            if row["cost_ratio"] is not None:
                assert basket - goods >= row["cost_ratio"] * basket - 1e-6, (row, basket)
            tier_max = rules.tier_max_percent.get(row["tier"], rules.default_max_percent)
            assert goods <= tier_max / 100 * basket + 1e-6, (row, basket)
            assert row["discount_365"] + row["open_offers"] + value <= \
                share * (row["spend_365"] + basket - value) + 1e-6, (row, basket)


def test_a_no_minimum_amount_off_gets_a_minimum_basket_and_a_percent_off_a_cap():
    frame = pl.DataFrame({"customer_id": [1], "tier": ["potential"], "spend_365": [3000.0], "discount_365": [0.0],
                          "open_offers": [0.0], "cost_ratio": [0.7], "basket": [400.0]})
    amount = apply_ceilings(frame, OfferTerms(amount_off=42), DiscountRules()).row(0, named=True)
    # 42 off must leave 70% of the basket for its cost: the smallest basket it may apply to is 42 / 0.2 = 210.
    assert amount["offer_amount_off"] == 42 and amount["offer_min_spend"] == 210
    percent = apply_ceilings(frame, OfferTerms(percent_off=25), DiscountRules()).row(0, named=True)
    # 25% is cut to the potential tier's 20%; on the usual basket of 400 that is 80, the coupon's cap.
    assert percent["offer_percent_off"] == 20 and percent["offer_max_discount"] == 80
    assert coupon_discount(10_000, amount_off=None, percent_off=20, min_spend=0, max_discount=80) == 80


def test_an_offer_is_reduced_to_fit_the_budget_and_withheld_when_nothing_fits():
    frame = pl.DataFrame({"customer_id": [1, 2, 3], "tier": ["potential"] * 3, "spend_365": [2000.0, 1000.0, 0.0],
                          "discount_365": [0.0, 140.0, 0.0], "open_offers": [0.0, 0.0, 0.0],
                          "cost_ratio": [None, None, 0.99], "basket": [None, None, None]})
    out = apply_ceilings(frame, OfferTerms(amount_off=50, min_spend=300), DiscountRules())
    assert out["offer_decision"].to_list() == ["as_requested", "reduced", "withheld"]
    # (0.15 * (1000 + 300) - 140) / 1.15 = 47.8 → 47 whole units
    assert out["offer_amount_off"].to_list() == [50.0, 47.0, None]
    assert out["offer_reasons"].to_list() == [None, "budget", "cost"]


# ---------------------------------------------------------------- fairness


def test_fairness_flags_newcomers_paying_less_than_a_loyal_tier():
    potential = OfferReach("potential coupon", ("potential",), False, amount_off=50, min_spend=300)
    newcomer = OfferReach("first repeat", (), True, amount_off=50)
    found = violations([potential, newcomer], ("VIP", "potential"))
    assert {"tier": "potential", "basket": 100.0, "loyal_price": 100.0, "new_customer_price": 50.0,
            "new_customer_campaign": "first repeat"} in found
    assert all(v["basket"] < 300 or v["tier"] == "VIP" for v in found)
    fair = OfferReach("everyone", (), False, amount_off=50)
    assert violations([fair, newcomer], ("VIP", "potential")) == []
    # An offer for every tier *but* the loyal ones does not make their prices fair (exclude_tiers counts).
    not_loyal = OfferReach("regular only", (), False, amount_off=50, exclude_tiers=("VIP", "potential", "lost"))
    assert {v["tier"] for v in violations([not_loyal, newcomer], ("VIP", "potential"))} == {"VIP", "potential"}


# ---------------------------------------------------------------- templates and SMS


def test_sms_length_counts_gsm_and_ucs2_segments():
    assert sms_length("a" * 160) == sms_length("a" * 160) and sms_length("a" * 160).segments == 1
    assert sms_length("a" * 161).segments == 2 and sms_length("a" * 306).segments == 2
    assert sms_length("a" * 307).segments == 3
    assert sms_length("€" * 80).units == 160 and sms_length("€" * 81).segments == 2
    assert sms_length("优" * 70).encoding == "UCS-2" and sms_length("优" * 70).segments == 1
    assert sms_length("优" * 71).segments == 2
    assert sms_length("😀").units == 2


@pytest.mark.parametrize("escape", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ customer.__class__.__base__.__subclasses__() }}",
    "{% for c in ().__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
])
def test_a_template_cannot_reach_python_internals(escape):
    template = TemplateSource("x", "sms", "en-US", {"body": escape}, "test")
    with pytest.raises(TemplateProblem) as problem:
        render(template, {"customer": {"external_id": "C1"}})
    assert problem.value.part == "body"


def test_undefined_variables_and_missing_unsubscribe_links_are_refused():
    with pytest.raises(TemplateProblem, match="UndefinedError"):
        render(TemplateSource("x", "sms", "en-US", {"body": "Hi {{ customer.nickname }}"}, "t"),
               {"customer": {"external_id": "C1"}})
    email = TemplateSource("x", "email", "en-US", {"subject": "Hi", "text": "no link", "html": "<p>{{ unsubscribe_url }}</p>"}, "t")
    with pytest.raises(TemplateProblem) as problem:
        validate(email, {"unsubscribe_url": "https://x/u/1"})
    assert problem.value.part == "text"
    html = render(TemplateSource("x", "email", "en-US", {"html": "<p>{{ name }}</p>"}, "t"), {"name": "<b>"})
    assert html["html"] == "<p>&lt;b&gt;</p>"  # HTML parts are autoescaped


# ---------------------------------------------------------------- holdout, coupons, specs


def test_holdout_split_is_deterministic_and_near_its_share():
    ids = pl.Series(range(1, 200_001))
    first, again = holdout_draw(7, ids), holdout_draw(7, ids)
    assert first.equals(again)
    assert abs((first < 0.1).mean() - 0.1) < 0.005
    assert not first.equals(holdout_draw(8, ids))  # campaigns split independently


def test_coupon_codes_are_unique_per_customer_and_stable():
    ids = pl.Series(range(1, 300_001))
    codes = coupon_codes("POT", 3, "2026-12-01", ids)
    assert codes.n_unique() == len(ids) and codes[0].startswith("POT3-") and len(codes[0]) == len("POT3-") + 12
    assert codes.equals(coupon_codes("POT", 3, "2026-12-01", ids))
    assert not codes.equals(coupon_codes("POT", 3, "2026-12-08", ids))


def _spec(**overrides) -> CampaignSpec:
    body = {"name": "t", "channels": [{"channel": "sms", "template": "potential_coupon"}],
            "schedule": {"kind": "daily"}} | overrides
    return CampaignSpec.model_validate(body)


@pytest.mark.parametrize(("body", "field"), [
    ({"offer": {"amount_off": 10, "percent_off": 5}}, "offer"),
    ({"offer": {"amount_off": 300, "min_spend": 300}}, "offer"),
    ({"schedule": {"kind": "weekly"}}, "schedule"),
    ({"schedule": {"kind": "triggered", "trigger": "entered_tier"}}, "schedule"),
    ({"holdout_share": 0.9}, "holdout_share"),
    ({"channels": [{"channel": "fax", "template": "x"}]}, "channels.0.channel"),
    ({"channels": []}, "channels"),
    ({"audience": {"r_score": {"min": 4, "max": 2}}}, "audience.r_score"),
    ({"surprise": 1}, "surprise"),
])
def test_invalid_campaigns_name_the_field(body, field):
    base = {"name": "t", "channels": [{"channel": "sms", "template": "potential_coupon"}],
            "schedule": {"kind": "daily"}}
    with pytest.raises(InvalidInput) as error:
        parse_spec(base | body)
    assert field in [e["field"] for e in error.value.errors]


def test_the_default_at_risk_plans_reach_each_tier_on_its_own_channel():
    """VIP and potential: a care call, else SMS; regular (and any tier a marketer adds): push; lost: email. Every
    tier falls in exactly one at-risk plan."""
    from campaigns.authoring.defaults import DEFAULT_CAMPAIGNS

    plans = [CampaignSpec.model_validate(body) for body in DEFAULT_CAMPAIGNS
             if body["schedule"].get("trigger") == "at_risk"]
    tiers = ["VIP", "potential", "regular", "lost", "newcomer"]
    customers = pl.DataFrame({"customer_id": list(range(1, 6)), "external_id": tiers,
                              "time_zone": ["Asia/Shanghai"] * 5}, schema_overrides={"customer_id": pl.Int64})
    inputs = PlanInputs(customers=customers, segments=pl.DataFrame({"customer_id": list(range(1, 6)), "tier": tiers},
                                                                   schema_overrides={"customer_id": pl.Int64}),
                        tags=pl.DataFrame(schema={"customer_id": pl.Int64, "tag": pl.String}),
                        scores=pl.DataFrame({"customer_id": list(range(1, 6)), "probability": [0.9] * 5,
                                             "at_risk": [True] * 5}, schema_overrides={"customer_id": pl.Int64}),
                        consent=pl.DataFrame(schema={"customer_id": pl.Int64, "channel": pl.String,
                                                     "status": pl.String}),
                        ledger=pl.DataFrame(schema=LEDGER_SCHEMA), money=pl.DataFrame(),
                        first_orders=pl.DataFrame())
    reached = {}
    for spec in plans:
        for tier in audience(spec, inputs, date(2026, 11, 3))["external_id"]:
            assert tier not in reached, tier
            reached[tier] = [step.channel for step in spec.channels]
    assert reached == {"VIP": ["phone", "sms"], "potential": ["phone", "sms"], "regular": ["push"],
                       "newcomer": ["push"], "lost": ["email"]}


def test_rounding_a_percent_coupons_cap_to_whole_units_is_not_a_reduction():
    frame = pl.DataFrame({"customer_id": [1, 2], "tier": ["potential", "potential"], "spend_365": [5000.0, 5000.0],
                          "discount_365": [0.0, 0.0], "open_offers": [0.0, 0.0], "cost_ratio": [None, None],
                          "basket": [123.4, 123.4]})
    out = apply_ceilings(frame, OfferTerms(percent_off=10), DiscountRules())
    assert out["offer_decision"].to_list() == ["as_requested"] * 2 and out["offer_max_discount"].to_list() == [12, 12]
    capped = apply_ceilings(frame, OfferTerms(percent_off=10, max_discount=5), DiscountRules())
    assert capped["offer_max_discount"].to_list() == [5, 5]
    assert capped["offer_decision"].to_list() == ["as_requested"] * 2  # the campaign's own cap


def test_the_fairness_gate_blames_an_offer_only_for_gaps_it_opens_or_widens():
    from campaigns.authoring.fairness import OfferReach, added_violations

    newcomers = OfferReach(campaign="first repeat", tiers=(), new_customers=True, amount_off=50, percent_off=None,
                           min_spend=0.0)
    loyal = OfferReach(campaign="care", tiers=("VIP",), new_customers=False, amount_off=None, percent_off=10,
                       min_spend=250.0)
    deeper = OfferReach(campaign="deep", tiers=(), new_customers=True, amount_off=80, percent_off=None,
                        min_spend=100.0)
    # A loyal tier's offer, at a price point of its own, narrows an existing gap: nothing is its doing.
    assert added_violations([newcomers], [loyal], ("VIP",)) == []
    # A deeper newcomers' offer widens the gap where the loyal tier already paid more: that is its doing.
    widened = added_violations([newcomers, loyal], [deeper], ("VIP",))
    assert widened and {v["new_customer_campaign"] for v in widened} == {"deep"}
    assert all(v["basket"] >= 100 for v in widened)
