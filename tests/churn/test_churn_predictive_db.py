"""Churn's predictive fields on a real database: profile, customer filters, the at-risk list, campaign audiences,
the capacity policy at scoring time, and scoring from another host with the model read from the registry."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlmodel import select

from campaigns import service as campaigns
from churn import service
from churn.models import ChurnScore
from churn.policy import FlagPolicy
from churn.training import TrainingConfig
from crm.models import Customer, Role
from kit.http import make_cursor
from tests.support.factories import import_shop
from wiring.generator import GeneratorConfig, write_dataset

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
FAST = TrainingConfig(snapshots=3, step_days=30)


@pytest.fixture(scope="module")
def shop_files(tmp_path_factory):
    """A small generated shop, written once per module."""
    out = tmp_path_factory.mktemp("shop")
    write_dataset(GeneratorConfig(customers=2000, seed=11, end=date(2026, 11, 1)), out)
    return out


@pytest.fixture
def scored(session, ctx, shop_files):
    """The shop imported, a model trained and every customer scored."""
    import_shop(session, ctx, shop_files)
    service.train_model(session, ctx, as_of=AS_OF, config=FAST)
    service.score_customers(session, ctx, as_of=AS_OF)
    return session.exec(select(ChurnScore, Customer.external_id)
                        .join(Customer, Customer.id == ChurnScore.customer_id)).all()


def test_profile_shows_the_predictive_fields_and_reasons_in_the_readers_language(client, auth_header, scored):
    score, external = next((s, e) for s, e in scored if s.at_risk and s.expected_next_order_at is not None)
    support = auth_header(Role.support)
    english = client.get(f"/v1/customers/{external}/profile", headers=support | {"Accept-Language": "en-US,en;q=0.8"})
    chinese = client.get(f"/v1/customers/{external}/profile", headers=support | {"Accept-Language": "zh-CN"})
    section, section_zh = english.json()["sections"]["churn"], chinese.json()["sections"]["churn"]
    assert section["reasons_locale"] == "en-US" and section_zh["reasons_locale"] == "zh-CN"
    assert section["reasons"] and all(r.isascii() for r in section["reasons"])
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in r) for r in section_zh["reasons"])
    assert len(section["reasons"]) == len(section_zh["reasons"]) == len(section["drivers"])
    assert not any("unknown" in r or "_" in r for r in section["reasons"] + section_zh["reasons"])
    predicted = section["predicted"]
    assert predicted["predicted_clv_12m"] == pytest.approx(score.predicted_clv_12m, abs=0.01)
    assert predicted["p_alive"] == pytest.approx(score.p_alive, abs=1e-4)
    assert predicted["expected_orders_365d"] >= predicted["expected_orders_90d"] >= 0
    assert predicted["expected_next_order_on"] == score.expected_next_order_at.date().isoformat()
    assert section["risk_level"] == "high" == score.risk_level


def test_customer_filters_by_risk_level_value_and_next_order(client, auth_header, scored):
    marketer = auth_header(Role.marketer)

    def listed(**params):
        out, cursor = set(), None
        while True:
            page = client.get("/v1/customers", params=params | {"limit": 500} | ({"cursor": cursor} if cursor else {}),
                              headers=marketer)
            assert page.status_code == 200, page.text
            out |= {c["external_id"] for c in page.json()["items"]}
            cursor = page.json().get("next_cursor")
            if not cursor:
                return out

    values = sorted(s.predicted_clv_12m for s, _ in scored)
    floor = values[len(values) * 3 // 4]
    assert listed(predicted_clv_min=floor) == {e for s, e in scored if s.predicted_clv_12m >= floor}
    assert listed(risk_level="high,medium") == {e for s, e in scored if s.risk_level in ("high", "medium")}
    latest = max(s.scored_at for s, _ in scored)
    due = {e for s, e in scored if s.expected_next_order_at is not None
           and latest.date() <= s.expected_next_order_at.date() <= latest.date() + timedelta(days=30)}
    assert due and listed(next_order_within_days=30) == due
    for name, value in (("risk_level", "severe"), ("predicted_clv_min", "lots"), ("next_order_within_days", "-3")):
        wrong = client.get("/v1/customers", params={name: value}, headers=marketer)
        assert wrong.status_code == 422 and wrong.headers["content-type"].startswith("application/problem+json")
        assert name in wrong.text


def test_at_risk_list_aggregates_reasons_and_speaks_the_asked_language(client, auth_header, scored):
    marketer = auth_header(Role.marketer)
    page = client.get("/v1/churn/at-risk", params={"limit": 20, "locale": "en-US"}, headers=marketer).json()
    flagged = sum(1 for s, _ in scored if s.at_risk)
    assert page["items"] and all(item["risk_level"] == "high" for item in page["items"])
    assert all(item["predicted_clv_12m"] >= 0 and all(r.isascii() for r in item["reasons"]) for item in page["items"])
    topics = page["top_reasons"]
    assert topics and all(0 < t["customers"] <= flagged and t["share"] == round(t["customers"] / flagged, 4)
                          for t in topics)
    assert [t["customers"] for t in topics] == sorted((t["customers"] for t in topics), reverse=True)
    assert all(t["label"].isascii() for t in topics)
    chinese = client.get("/v1/churn/at-risk", params={"limit": 20, "locale": "zh-CN"}, headers=marketer).json()
    assert [t["topic"] for t in chinese["top_reasons"]] == [t["topic"] for t in topics]
    assert all(not t["label"].isascii() for t in chinese["top_reasons"])
    assert "top_reasons" not in client.get("/v1/churn/at-risk", params={"cursor": page["next_cursor"] or make_cursor(0)},
                                           headers=marketer).json()
    assert client.get("/v1/churn/at-risk", params={"locale": "fr-FR"}, headers=marketer).status_code == 422


def test_campaign_audiences_target_predicted_value_and_the_next_order(session, ctx, scored):
    values = sorted(s.predicted_clv_12m for s, _ in scored)
    floor = values[len(values) * 9 // 10]
    day = date(2026, 11, 3)

    def audience_of(name: str, audience: dict) -> int:
        body = {"name": name, "audience": audience,
                "channels": [{"channel": "push", "template": "at_risk_care"}],
                "schedule": {"kind": "weekly", "weekday": "tuesday", "local_hour": 10}, "holdout_share": 0.0}
        campaign = campaigns.create_campaign(session, ctx, body, "test")
        return campaigns.dry_run(session, ctx, campaign.id, day)["audience"]

    assert audience_of("valuable", {"predicted_clv_min": floor}) == sum(
        1 for s, _ in scored if s.predicted_clv_12m >= floor)
    due = sum(1 for s, _ in scored if s.expected_next_order_at is not None
              and day <= s.expected_next_order_at.date() <= day + timedelta(days=7))
    assert due > 0 and audience_of("replenish", {"next_order_within_days": 7}) == due
    both = sum(1 for s, _ in scored if s.risk_level == "high" and s.p_alive >= 0.5)
    assert audience_of("alive at risk", {"risk_levels": ["high"], "p_alive_min": 0.5}) == both


def test_capacity_policy_flags_exactly_that_many_each_day(session, ctx, scored):
    config = replace(FAST, policy=FlagPolicy(kind="capacity", daily_capacity=75))
    row = service.train_model(session, ctx, as_of=AS_OF, config=config, floor=0.0)
    assert row.status == "current" and row.metrics["flag"]["policy"] == "capacity"
    summary = service.score_customers(session, ctx, as_of=AS_OF)
    assert summary["at_risk"] == 75 == summary["risk_levels"]["high"]
    top = session.exec(select(ChurnScore.probability).order_by(ChurnScore.probability.desc()).limit(76)).all()
    flagged = session.exec(select(ChurnScore.probability).where(ChurnScore.at_risk)).all()
    assert min(flagged) == top[74] and (top[75] < top[74] or len(flagged) == 75)


def test_another_host_scores_with_the_model_from_the_registry(session, ctx, scored, tmp_path):
    """A standby with its own empty data directory reads the booster from the database."""
    elsewhere = replace(ctx, settings=ctx.settings.model_copy(update={"data_dir": tmp_path / "standby"}))
    before = {s.customer_id: s.probability for s, _ in scored}
    summary = service.score_customers(session, elsewhere, as_of=AS_OF)
    assert summary["scored"] == len(before)
    after = {s.customer_id: s.probability for s in session.exec(select(ChurnScore))}
    assert after == pytest.approx(before, abs=1e-9)
    assert not any((tmp_path / "standby").glob("**/*.txt"))


def test_population_all_scores_everyone_who_ordered_and_says_who_was_left_out(session, ctx, scored):
    from churn.features import FeatureConfig

    active = len(scored)
    wide = replace(FAST, features=FeatureConfig(population="all"))
    row = service.train_model(session, ctx, as_of=AS_OF, config=wide, floor=0.0)
    assert row.training["population"] == "all" and row.metrics["population"]["population"] == "all"
    assert "left_out" in row.metrics["population"]
    summary = service.score_customers(session, ctx, as_of=AS_OF)
    from crm.service import orders_frame

    history = orders_frame(session, AS_OF - timedelta(days=730), AS_OF, costs=False)
    assert summary["scored"] == history["customer_id"].n_unique() > active  # the lapsed customers are scored too
    assert len(session.exec(select(ChurnScore)).all()) == summary["scored"]
    narrow = replace(FAST, features=FeatureConfig(lookback_days=90))
    with pytest.raises(ValueError, match="population"):
        FeatureConfig(population="some")
    row = service.train_model(session, ctx, as_of=AS_OF, config=narrow, floor=0.0)
    assert row.metrics["population"]["left_out"]["last_order_before_lookback"] > 0
