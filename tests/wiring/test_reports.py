"""Measurement on the database: control groups recorded by the planner, the campaign report with uplift and
attribution, A/B tests with promotion, the other reports through the API (JSON and CSV) and `crm report`."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest
from sqlalchemy import text, update
from sqlmodel import select

from campaigns import service
from campaigns.measurement.conversions import attribute_conversions
from campaigns.measurement.reports import campaign_reports
from campaigns.measurement.stats import rate_difference
from campaigns.models import Campaign, Message
from campaigns.planning.planner import in_global_control
from churn.models import ChurnPrediction
from crm.models import Channel, ConsentStatus, Customer, Order, Role
from crm.service import record_consent
from segmentation.models import CustomerSegment, SegmentRun, SegmentTransition
from tests.conftest import cli_env
from tests.support.factories import ORDER_HEADER, csv_text, customers, run

TUESDAY = date(2026, 11, 3)  # TEST_NOW is Sunday 2026-11-01 08:00 UTC; 10:00 Shanghai on Tuesday is 02:00 UTC
SEND_AT = datetime(2026, 11, 3, 2, 0, tzinfo=UTC)
COUNT = 60


@pytest.fixture
def shop(session, ctx):
    """60 customers in Shanghai, all 'potential', SMS consent; each with one order on 1 October."""
    job = customers(session, ctx, COUNT)
    assert job.rows_failed == 0, job.errors
    ids = dict(session.exec(select(Customer.external_id, Customer.id)).all())
    orders = [(f"h{i}", f"C{i}", "2026-10-01T10:00:00Z", "100", "0", "", "") for i in range(1, COUNT + 1)]
    assert run(session, ctx, "orders", csv_text(ORDER_HEADER, orders)).rows_failed == 0
    for customer_id in ids.values():
        session.add(CustomerSegment(customer_id=customer_id, tier="potential", tier_since=ctx.clock.now(),
                                    tier_matched=True, tier_version=1, layer="potential", layer_since=ctx.clock.now(),
                                    layer_matched=True, layer_version=1, r_score=3, f_score=3, m_score=3, rfm="333",
                                    first_seen_at=ctx.clock.now()))
    session.flush()
    return ids


def _campaign(session, ctx, name="Weekly SMS", **overrides) -> Campaign:
    body = {"name": name, "audience": {"tiers": ["potential"]},
            "channels": [{"channel": "sms", "template": "birthday_greeting"}],
            "schedule": {"kind": "weekly", "weekday": "tuesday", "local_hour": 10}, "holdout_share": 0.3,
            "priority": 50} | overrides
    admin = bool(overrides.get("transactional"))
    if admin:
        service.save_template(session, ctx, {"name": "order_notice", "channel": "sms", "locale": "zh-CN",
                                             "kind": "transactional",
                                             "parts": {"body": "【{{ shop.name }}】您的订单已发货。"}}, "test",
                              may_define_transactional=True)
        body["channels"] = [{"channel": "sms", "template": "order_notice"}]
    campaign = service.create_campaign(session, ctx, body, "test", may_define_transactional=admin)
    return service.set_status(session, ctx, campaign.id, "active", "test")[0]


def _rows(session, campaign_id: int) -> list[Message]:
    return list(session.exec(select(Message).where(Message.campaign_id == campaign_id)))


def _send_all(session, at: datetime | None = None) -> None:
    """What dispatch would record: planned messages sent (and delivered a minute later) at their send time."""
    session.connection().execute(text(
        "UPDATE message SET status = 'delivered', sent_at = send_at, delivered_at = send_at, attempts = 1 "
        "WHERE status = 'planned'"))
    session.expire_all()


def _order(session, ctx, external_id: str, customer: str, at: datetime, amount: float, discount: float = 0.0):
    job = run(session, ctx, "orders", csv_text(ORDER_HEADER, [
        (external_id, customer, at.isoformat().replace("+00:00", "Z"), str(amount), str(discount), "", "")]))
    assert job.rows_failed == 0, job.errors


def test_the_planner_records_the_global_control_group_and_holds_out_only_reachable_members(session, ctx, shop):
    ctx.settings.global_control_share = 0.2
    unreachable = [shop[f"C{i}"] for i in range(1, 16)]
    for customer_id in unreachable:
        record_consent(session, ctx, customer_id=customer_id, channel=Channel.sms, status=ConsentStatus.opted_out, source="test",
                       actor="test")
    campaign = _campaign(session, ctx)
    result = service.plan_campaign(session, ctx, campaign.id, TUESDAY)
    rows = _rows(session, campaign.id)
    ids = pl.Series(sorted(shop.values()), dtype=pl.Int64)
    expected_control = set(ids.filter(in_global_control(0.2, ctx.settings.global_control_salt, ids)).to_list())
    assert 0 < len(expected_control) < COUNT
    control = {m.customer_id for m in rows if m.reason == "global_control"}
    assert control == expected_control and all(m.status == "holdout" for m in rows if m.reason == "global_control")
    held = {m.customer_id for m in rows if m.reason == "holdout"}
    planned = {m.customer_id for m in rows if m.status == "planned"}
    assert held and planned and not held & set(unreachable) and not (held | planned) & control
    assert result["counts"]["global_control"] == len(control) and result["counts"]["holdout"] == len(held)
    # Unreachable members are counted by reason, never as holdouts; everyone is accounted for once.
    no_consent = set(unreachable) - control
    assert result["counts"]["no_consent"] == len(no_consent)
    assert len(control) + len(held) + len(planned) + len(no_consent) == COUNT
    # A transactional campaign is not marketing: the global control group receives it.
    receipt = _campaign(session, ctx, "Receipts", transactional=True, holdout_share=0.0, priority=90)
    service.plan_campaign(session, ctx, receipt.id, TUESDAY)
    assert {m.customer_id for m in _rows(session, receipt.id) if m.status == "planned"} >= control - set(unreachable)


def test_campaign_report_uplift_attribution_and_a_customer_in_two_campaigns(session, ctx, shop, client,
                                                                            auth_header):
    first = _campaign(session, ctx, holdout_share=0.4)
    service.plan_campaign(session, ctx, first.id, TUESDAY)
    rows = _rows(session, first.id)
    treated = sorted(m.customer_id for m in rows if m.status == "planned")
    held = sorted(m.customer_id for m in rows if m.reason == "holdout")
    assert len(treated) >= 20 and len(held) >= 10
    second = _campaign(session, ctx, "Second SMS", holdout_share=0.0, priority=40,
                       schedule={"kind": "one_off", "date": "2026-11-04", "local_hour": 10})
    service.plan_campaign(session, ctx, second.id, date(2026, 11, 4))
    _send_all(session)
    external = {v: k for k, v in shop.items()}
    # First campaign: 12 treated buy inside the window, 1 at the window's end (outside), 1 before the send;
    # 2 holdouts buy inside their would-be window.
    buyers = treated[:12]
    for n, cid in enumerate(buyers):
        _order(session, ctx, f"t{n}", external[cid], SEND_AT + timedelta(days=2), 200.0, 20.0)
    _order(session, ctx, "edge", external[treated[12]], SEND_AT + timedelta(days=7), 500.0)
    _order(session, ctx, "early", external[treated[13]], SEND_AT - timedelta(hours=1), 500.0)
    for n, cid in enumerate(held[:2]):
        _order(session, ctx, f"h{n}", external[cid], SEND_AT + timedelta(days=6, hours=23), 150.0)
    ctx.clock.advance(timedelta(days=14))
    attribute_conversions(session, ctx)
    report = client.get(f"/v1/reports/campaigns/{first.id}", headers=auth_header(Role.marketer)).json()
    lift = report["uplift"]
    assert report["members"] == {"treated": len(treated), "holdout": len(held), "global_control": 0}
    expected = rate_difference(12, len(treated), 2, len(held))
    assert lift["conversion"]["treated_conversions"] == 12 and lift["conversion"]["control_conversions"] == 2
    assert lift["conversion"]["difference"] == pytest.approx(expected.difference)
    assert lift["conversion"]["low"] == pytest.approx(expected.low) and lift["conversion"]["p_value"] == \
        pytest.approx(expected.p_value)
    per_member = 12 * 200.0 / len(treated) - 2 * 150.0 / len(held)
    assert lift["revenue_per_member"]["difference"] == pytest.approx(per_member)
    assert lift["incremental_revenue"]["difference"] == pytest.approx(round(per_member * len(treated), 2))
    # Attribution credits each order to one message: the last touch. The second campaign (4 Nov, everyone) is the
    # last touch of the 12 buyers, of the edge order (inside its own window) and of the two holdouts' orders.
    everything = {r["campaign_id"]: r for r in campaign_reports(session, ctx)}
    assert everything[second.id]["conversions"] == 12 + 1 + 2
    assert everything[first.id]["conversions"] == 0
    assert everything[second.id]["revenue"] == pytest.approx(12 * 200.0 + 500.0 + 2 * 150.0)
    assert everything[second.id]["discount_cost"] == pytest.approx(12 * 20.0)
    unit = ctx.settings.message_unit_cost["sms"]
    assert report["sent"] == report["delivered"] == report["reach"] == len(treated)
    assert report["message_cost"] == pytest.approx(round(len(treated) * unit, 2))
    # The second campaign had no holdout: its uplift cannot be estimated, and says so with nulls.
    assert everything[second.id]["uplift"]["conversion"]["difference"] is None
    # Measurement per campaign is not exclusive: the buyers converted for the first campaign's uplift too.
    assert lift["conversion"]["treated_conversions"] == 12
    # First touch instead: the earlier campaign gets the orders inside its own window.
    session.connection().execute(text("DELETE FROM conversion"))
    ctx.settings.attribution_touch = "first"
    attribute_conversions(session, ctx)
    again = {r["campaign_id"]: r for r in campaign_reports(session, ctx)}
    assert again[first.id]["conversions"] == 12 and again[second.id]["conversions"] == 1 + 2
    cost = again[first.id]["message_cost"] + again[first.id]["discount_cost"]
    assert again[first.id]["roi"] == pytest.approx(round((12 * 200.0 - cost) / cost, 4), abs=1e-4)
    # CSV: one row per campaign, nested fields as dotted columns.
    exported = client.get("/v1/reports/campaigns?format=csv", headers=auth_header(Role.marketer))
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(exported.text)))
    assert {int(r["campaign_id"]) for r in table} == {first.id, second.id}
    assert "uplift.conversion.difference" in table[0]


def test_an_ab_test_declares_no_winner_early_and_promotes_the_significant_one(session, ctx, shop, client,
                                                                               auth_header):
    experiment = {"variants": [{"name": "A"}, {"name": "B", "template": "at_risk_care"}],
                  "baseline_conversion": 0.5, "tolerated_error": 0.3}  # n = 1.96² × .25 / .09 → 11 per arm
    campaign = _campaign(session, ctx, "AB SMS", holdout_share=0.1, experiment=experiment)
    version = campaign.version
    service.plan_campaign(session, ctx, campaign.id, TUESDAY)
    rows = [m for m in _rows(session, campaign.id) if m.status == "planned"]
    arms = {m.customer_id: m.variant for m in rows}
    assert set(arms.values()) == {"A", "B"}
    assert all(m.template == ("at_risk_care" if m.variant == "B" else "birthday_greeting") for m in rows)
    # The same assignment on every run: a dry run for the same day assigns exactly the same arms.
    replay = service.dry_run(session, ctx, campaign.id, TUESDAY)
    assert replay["recipients"] == len(rows)
    _send_all(session)
    external = {v: k for k, v in shop.items()}
    arm_b = [cid for cid, v in arms.items() if v == "B"]
    assert len(arm_b) >= 11 and len(arms) - len(arm_b) >= 11
    for n, cid in enumerate(arm_b):
        _order(session, ctx, f"b{n}", external[cid], SEND_AT + timedelta(days=1), 80.0)
    promote = f"/v1/campaigns/{campaign.id}/experiment/promote"
    # Windows still open: nothing measured, so no winner yet — promotion refused.
    early = client.post(promote, json={"variant": "B"}, headers=auth_header(Role.marketer))
    assert early.status_code == 409 and "no winner" in early.json()["detail"]
    ctx.clock.advance(timedelta(days=10))
    verdict = client.get(f"/v1/reports/campaigns/{campaign.id}", headers=auth_header(Role.marketer)).json()["experiment"]
    assert verdict["status"] == "winner" and verdict["winner"] == "B" and verdict["required_per_arm"] == 11
    assert client.post(promote, json={"variant": "A"}, headers=auth_header(Role.marketer)).status_code == 409
    assert client.post(promote, json={"variant": "Z"}, headers=auth_header(Role.marketer)).status_code == 422
    assert client.post(promote, json={"variant": "B"}, headers=auth_header(Role.support)).status_code == 403
    promoted = client.post(promote, json={"variant": "B"}, headers=auth_header(Role.marketer))
    assert promoted.status_code == 200, promoted.text
    spec = promoted.json()["spec"]
    assert spec["experiment"] is None and spec["channels"][0]["template"] == "at_risk_care"
    assert promoted.json()["version"] == version + 1


def test_an_experiment_that_changes_two_things_is_refused_naming_the_field(client, auth_header, shop):
    body = {"name": "Bad AB", "audience": {"tiers": ["potential"]},
            "channels": [{"channel": "sms", "template": "birthday_greeting"}],
            "schedule": {"kind": "daily"},
            "experiment": {"variants": [{"name": "A", "template": "at_risk_care"},
                                        {"name": "B", "channels": [{"channel": "push", "template": "x"}]}]}}
    response = client.post("/v1/campaigns", json=body, headers=auth_header(Role.marketer))
    assert response.status_code == 422
    assert "one variable at a time" in response.text and "experiment" in response.text
    body["experiment"] = {"variants": [{"name": "A"}, {"name": "B", "template": "no_such_template"}]}
    response = client.post("/v1/campaigns", json=body, headers=auth_header(Role.marketer))
    assert response.status_code == 422 and "experiment.variants.1.channels.0.template" in response.text


def test_the_sample_size_endpoint(client, auth_header):
    response = client.get("/v1/reports/sample-size?baseline=0.05&error=0.01", headers=auth_header(Role.marketer))
    assert response.json()["per_arm"] == 1825
    bad = client.get("/v1/reports/sample-size?baseline=1.5&error=0.01", headers=auth_header(Role.marketer))
    assert bad.status_code == 422 and "baseline" in bad.text
    tiny = client.get("/v1/reports/sample-size?baseline=0.5&error=1.66e-167", headers=auth_header(Role.marketer))
    assert tiny.status_code == 422 and tiny.json()["errors"][0]["field"] == "error"  # found by the fuzzer: E² was 0
    assert client.get("/v1/reports/nope", headers=auth_header(Role.marketer)).status_code == 422
    assert client.get("/v1/reports/retention?format=xml", headers=auth_header(Role.marketer)).status_code == 422


def test_retention_clv_global_control_and_churn_quality_reports(session, ctx, shop, client, auth_header):
    ctx.settings.global_control_share = 0.25
    external = {v: k for k, v in shop.items()}
    ids = sorted(shop.values())
    # Repeat buyers for the value models: customer i buys (i % 4) more times after 1 October.
    orders = []
    for n, cid in enumerate(ids):
        for k in range(n % 4):
            orders.append((f"r{n}-{k}", external[cid], f"2026-10-{10 + 5 * k:02d}T10:00:00Z", str(50 + 10 * k), "0",
                           "", ""))
    marketer = auth_header(Role.marketer)
    too_few = client.get("/v1/reports/clv", headers=marketer).json()  # only first orders so far: nothing to fit
    assert too_few["models"] is None and too_few["predicted_mean"] is None and "at least 10" in too_few["note"]
    assert run(session, ctx, "orders", csv_text(ORDER_HEADER, orders)).rows_failed == 0
    retention = client.get("/v1/reports/retention", headers=marketer).json()
    october = next(c for c in retention["cohorts"] if c["cohort"] == "2026-10")
    assert october["customers"] == COUNT
    # First orders on 1 October 10:00: the 30-day windows closed before TEST_NOW (1 November 08:00), the 90-day
    # ones are still open. Three in four customers bought again on 10 October.
    assert october["retention_30d"] == pytest.approx(45 / COUNT) and october["retention_90d"] is None
    clv = client.get("/v1/reports/clv", headers=marketer).json()
    assert clv["customers"] == COUNT and clv["tiers"][0]["tier"] == "potential"
    total = sum(100 + sum(50 + 10 * k for k in range(n % 4)) for n in range(COUNT))
    assert clv["tiers"][0]["historical_total"] == pytest.approx(total)
    assert clv["predicted_mean"] > 0 and set(clv["models"]) == {"bgnbd", "gamma_gamma", "converged"}
    control = client.get("/v1/reports/global-control?since=2026-10-05T00:00:00Z", headers=marketer).json()
    frame = pl.Series(ids, dtype=pl.Int64)
    members = set(frame.filter(in_global_control(0.25, ctx.settings.global_control_salt, frame)).to_list())
    assert control["control"] == len(members) and control["marketed"] == COUNT - len(members)
    buyers = {cid for n, cid in enumerate(ids) if n % 4}
    expected = rate_difference(len(buyers - members), COUNT - len(members), len(buyers & members), len(members))
    assert control["ordering_rate"]["difference"] == pytest.approx(expected.difference)
    # Churn quality: a kept run 120 days ago (horizon 90) is measured against what happened; a recent one waits.
    long_ago = ctx.clock.now() - timedelta(days=120)
    for n, cid in enumerate(ids):
        session.add(ChurnPrediction(scored_on=long_ago, customer_id=cid, model_id=999, probability=0.1 + n / 100,
                                    at_risk=n >= COUNT - 3))
        session.add(ChurnPrediction(scored_on=ctx.clock.now() - timedelta(days=3), customer_id=cid, model_id=999,
                                    probability=0.5))
    session.flush()
    quality = client.get("/v1/reports/churn-quality", headers=marketer).json()["runs"]
    assert [r["status"] for r in quality] == ["measured", "pending"]
    # Everyone ordered on 1 October, within 90 days (the horizon) of the old run: nobody churned.
    assert quality[0]["observed_churn"] == 0.0 and quality[0]["auc"] is None
    assert quality[0]["mean_predicted"] == pytest.approx(sum(0.1 + n / 100 for n in range(COUNT)) / COUNT, abs=1e-4)
    # The run's flag against what happened: 3 flagged, none of whom churned.
    assert (quality[0]["flagged"], quality[0]["flag_precision"], quality[0]["flag_recall"]) == (3, 0.0, 0.0)
    exported = client.get("/v1/reports/churn-quality?format=csv", headers=marketer).text
    assert exported.splitlines()[0].startswith("scored_on,") and len(exported.splitlines()) == 3


def test_fairness_winback_and_tier_history_reports(session, ctx, shop, client, auth_header):
    external = {v: k for k, v in shop.items()}
    ids = sorted(shop.values())
    loyal, newcomer = ids[:4], ids[4:8]
    for cid in loyal:
        session.exec(select(CustomerSegment).where(CustomerSegment.customer_id == cid)).one().tier = "VIP"
    session.flush()
    # New customers (their first order) pay 80 for SKU-1 in October; VIPs (repeat orders) pay 100.
    orders, items = [], []
    for n, cid in enumerate(newcomer):
        orders.append((f"n{n}", external[cid], "2026-09-20T10:00:00Z", "80", "0", "", ""))
        items.append((f"n{n}", 1, "SKU-1", 1, "80"))
    for n, cid in enumerate(loyal):
        orders.append((f"v{n}", external[cid], "2026-10-20T10:00:00Z", "100", "0", "", ""))
        items.append((f"v{n}", 1, "SKU-1", 1, "100"))
    session.connection().execute(text("DELETE FROM orders WHERE external_id IN ({})".format(
        ", ".join(f"'h{external[cid][1:]}'" for cid in newcomer))))  # the newcomers' only order: September's
    assert run(session, ctx, "orders", csv_text(ORDER_HEADER, orders)).rows_failed == 0
    assert run(session, ctx, "order_items", csv_text(("order_external_id", "line_no", "sku", "qty", "unit_price"),
                                                     items)).rows_failed == 0
    marketer = auth_header(Role.marketer)
    fair = client.get("/v1/reports/fairness?since=2026-09-01T00:00:00Z", headers=marketer).json()
    assert fair["flagged"] == 0  # different months: not the same period
    session.exec(update(Order).where(Order.external_id.like("n%")).values(  # type: ignore[call-overload]
        ordered_at=datetime(2026, 10, 21, 10, tzinfo=UTC)))
    fair = client.get("/v1/reports/fairness?since=2026-09-01T00:00:00Z", headers=marketer).json()
    assert fair["flagged"] == 1
    row = fair["rows"][0]
    assert (row["sku"], row["group"], row["month"], row["mean_price"], row["new_price"]) == \
        ("SKU-1", "VIP", "2026-10", 100.0, 80.0) and row["premium"] == pytest.approx(0.25)
    # Win-back: 20 lost at the month's first run, 5 moved out of lost during November.
    now = ctx.clock.now()
    run_row = SegmentRun(as_of=now - timedelta(hours=1), started_at=now, finished_at=now, customers=COUNT,
                         distribution={"tier": {"lost": {"customers": 20}, "potential": {"customers": 40}},
                                       "layer": {}})
    session.add(run_row)
    session.flush()
    for cid in ids[:5]:
        session.add(SegmentTransition(run_id=run_row.id, customer_id=cid, dimension="tier", from_value="lost",
                                      to_value="potential", at=now, version=1))
    session.flush()
    ctx.clock.advance(timedelta(hours=1))
    winback = client.get("/v1/reports/winback", headers=marketer).json()
    november = next(m for m in winback["months"] if m["month"] == "2026-11")
    assert (november["tier_size"], november["won_back"], november["winback_rate"]) == (20, 5, 0.25)
    tiers = client.get("/v1/reports/tiers?format=csv", headers=marketer).text.splitlines()
    assert tiers[0].startswith("as_of,customers,tier.lost,tier.potential") and len(tiers) == 2


def test_crm_report_prints_json_and_fails_in_one_line(scratch_url, tmp_path):
    env = cli_env(scratch_url, tmp_path)
    subprocess.run([sys.executable, "-m", "wiring.cli", "migrate"], env=env, check=True, capture_output=True)
    done = subprocess.run([sys.executable, "-m", "wiring.cli", "report", "retention", "--json"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cohorts"] == []
    unknown = subprocess.run([sys.executable, "-m", "wiring.cli", "report", "nope"], env=env, capture_output=True,
                             text=True)
    assert unknown.returncode != 0 and "unknown report 'nope'" in unknown.stderr
    assert "Traceback" not in unknown.stderr and len(unknown.stderr.strip().splitlines()) == 1
    out = tmp_path / "campaigns.csv"
    exported = subprocess.run([sys.executable, "-m", "wiring.cli", "report", "campaigns", "--csv", str(out)], env=env,
                              capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr
    assert out.read_text().strip() == ""  # no campaigns: an empty table


def test_an_offer_experiment_gives_the_offer_to_its_arm_only_under_the_ceilings(session, ctx, shop):
    experiment = {"variants": [{"name": "plain"}, {"name": "coupon", "offer": {"percent_off": 10, "valid_days": 7}}]}
    campaign = _campaign(session, ctx, "Offer AB", holdout_share=0.0, experiment=experiment)
    service.plan_campaign(session, ctx, campaign.id, TUESDAY)
    rows = [m for m in _rows(session, campaign.id) if m.status == "planned"]
    coupon = [m for m in rows if m.variant == "coupon"]
    plain = [m for m in rows if m.variant == "plain"]
    assert coupon and plain
    # Each customer spent 100 in the last year: the 15% budget allows 15, so 10% of the 100 basket (10) fits.
    assert all(m.coupon_code and m.discount_value == pytest.approx(10.0) for m in coupon)
    assert all(m.coupon_code is None and m.discount_value == 0 for m in plain)
    preview = service.dry_run(session, ctx, campaign.id, TUESDAY)
    assert preview["estimated_cost"]["discount_if_all_redeemed"] == pytest.approx(10.0 * len(coupon))
