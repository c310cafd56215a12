"""Uplift on a real database: a past campaign's outbox arms (treated vs holdout) and the orders after it → stored
models per segment and overall → nightly scores → audiences that keep only the customers a message changes."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, date, datetime

import numpy as np
import polars as pl
import pytest
from sqlmodel import select

from campaigns import service as campaigns
from campaigns.jobs import PIPELINE_STEPS
from campaigns.models import Message, UpliftModelVersion, UpliftScore
from churn.service import order_features_at
from crm.models import AuditLog, Customer
from kit.clock import FixedClock
from kit.timezones import utc_midnight
from tests.conftest import cli_env
from tests.support.factories import import_shop, run
from wiring.generator import GeneratorConfig, simulate_responses, true_uplift, write_dataset

SEND_DAY = date(2026, 10, 6)  # a Tuesday
GENERATOR = GeneratorConfig(customers=2500, seed=8, end=date(2026, 11, 1),
                            uplift_coupon_price_sensitive=0.4, uplift_sleeping_dog=-0.2)


@pytest.fixture(scope="module")
def shop_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("shop")
    write_dataset(GENERATOR, out)
    return out


def _coupon(name: str, **overrides) -> dict:
    return {"name": name, "audience": {}, "channels": [{"channel": "sms", "template": "potential_coupon"}],
            "offer": {"amount_off": 20, "min_spend": 100, "valid_days": 7},
            "schedule": {"kind": "weekly", "weekday": "tuesday", "local_hour": 10}, "holdout_share": 0.5} | overrides


@pytest.fixture
def measured(session, ctx, shop_files):
    """The shop, one coupon campaign planned on SEND_DAY with half held out, the orders its arms placed after it
    (the generator's own orders plus a known per-customer effect on the treated), and the window closed."""
    import_shop(session, ctx, shop_files)
    ctx.clock = FixedClock(datetime(2026, 10, 1, 8, tzinfo=UTC))
    campaign = campaigns.create_campaign(session, ctx, _coupon("Past coupon"), "test")
    campaigns.set_status(session, ctx, campaign.id, "active", "test")
    campaigns.plan_campaign(session, ctx, campaign.id, SEND_DAY)
    rows = session.exec(select(Message.customer_id, Message.reason, Message.send_at, Customer.external_id)
                        .join(Customer, Customer.id == Message.customer_id)
                        .where(Message.campaign_id == campaign.id)).all()
    members = (pl.DataFrame([(r[0], r[1] == "holdout", r[2], r[3]) for r in rows],
                            schema={"customer_id": pl.Int64, "holdout": pl.Boolean,
                                    "send_at": pl.Datetime("us", "UTC"), "external_id": pl.String}, orient="row")
               .group_by("customer_id").agg(pl.col("holdout").any(), pl.col("send_at").min(), pl.col("external_id").first()))
    features = order_features_at(session, [utc_midnight(SEND_DAY)])[utc_midnight(SEND_DAY)]
    known = members.join(features.select("customer_id", "discount_share", spend="spend_total", orders="orders_total"),
                         on="customer_id", how="left")
    truth = true_uplift(GENERATOR, known, offer=True, channel="sms")
    responses = simulate_responses(known.with_columns(messaged=(~pl.col("holdout")).cast(pl.Int64)), baseline=0.2,
                                   true_uplift=truth, window_days=7, seed=3)
    job = run(session, ctx, "orders", responses.write_csv(datetime_format="%Y-%m-%dT%H:%M:%SZ").encode())
    assert job.rows_failed == 0
    ctx.clock = FixedClock(datetime(2026, 11, 1, 8, tzinfo=UTC))
    return {"campaign": campaign, "members": known.with_columns(pl.Series("truth", truth))}


def test_past_arms_fit_a_model_per_segment_and_overall(session, ctx, measured):
    members = campaigns.campaign_members_for_uplift(session, ctx)
    assert members.height == measured["members"].height and set(members["segment"]) == {"campaign:sms:coupon"}
    assert 0.4 < members["treated"].mean() < 0.6
    results = campaigns.train_uplift(session, ctx, "test")
    assert [r["segment"] for r in results] == ["campaign:sms:coupon", "any"] and all(r["fitted"] for r in results)
    stored = session.exec(select(UpliftModelVersion).where(UpliftModelVersion.status == "current")).all()
    assert {m.segment for m in stored} == {"campaign:sms:coupon", "any"}
    first = results[0]
    assert first["held_out"] > 300 and first["rankings"]["uplift"]["qini"] > first["rankings"]["random"]["qini"]
    assert first["treated_rate"] > first["holdout_rate"]
    assert session.exec(select(AuditLog).where(AuditLog.action == "uplift.train")).first() is not None
    again = campaigns.train_uplift(session, ctx, "test")  # a refit retires the segment's previous model
    retired = session.exec(select(UpliftModelVersion).where(UpliftModelVersion.id == first["model_id"])).one()
    assert retired.status == "retired" and again[0]["model_id"] != first["model_id"]
    listed = campaigns.uplift_models(session)
    assert [m["segment"] for m in listed] == ["any", "campaign:sms:coupon"]


def test_scores_drive_audiences_that_leave_out_sleeping_dogs(session, ctx, measured):
    campaigns.train_uplift(session, ctx, "test")
    as_of = utc_midnight(date(2026, 11, 1))
    summary = campaigns.score_uplift(session, ctx, as_of)
    scored = session.exec(select(UpliftScore.customer_id, UpliftScore.segment, UpliftScore.uplift)).all()
    per_segment = {s: {c: u for c, seg, u in scored if seg == s} for s in summary["segments"]}
    assert summary["scored"] == len(scored) and set(per_segment) == {"any", "campaign:sms:coupon"}
    mine = per_segment["campaign:sms:coupon"]
    # The customers the generator made price-sensitive are predicted to gain more than the put-off ones.
    truth = dict(zip(measured["members"]["customer_id"], measured["members"]["truth"], strict=True))
    helped = [mine[c] for c, t in truth.items() if t > 0.1 and c in mine]
    put_off = [mine[c] for c, t in truth.items() if t < 0 and c in mine]
    assert helped and put_off and np.mean(helped) > np.mean(put_off)
    day = date(2026, 11, 3)
    customers = session.exec(select(Customer.id)).all()

    def audience(name: str, rules: dict, **overrides) -> int:
        body = _coupon(name, audience=rules, holdout_share=0.0) | overrides
        campaign = campaigns.create_campaign(session, ctx, body, "test")
        return campaigns.dry_run(session, ctx, campaign.id, day)["audience"]

    assert audience("only changed", {"uplift_min": 0.05}) == sum(1 for u in mine.values() if u >= 0.05)
    assert audience("no sleeping dogs", {"exclude_sleeping_dogs": True}) == len(customers) - sum(
        1 for u in mine.values() if u < 0)  # unscored customers are kept: no evidence they are put off
    # Another segment without a model of its own reads the overall model.
    other = per_segment["any"]
    email = {"channels": [{"channel": "push", "template": "at_risk_care"}], "offer": None}
    assert audience("push changed", {"uplift_min": 0.05}, **email) == sum(1 for u in other.values() if u >= 0.05)
    explained = campaigns.eligibility(session, ctx, measured["campaign"].id,
                                      session.get(Customer, next(iter(mine))).external_id, day)
    assert explained is not None


def test_the_pipeline_refreshes_uplift_after_churn_scores():
    names = [step.name for step in PIPELINE_STEPS]
    assert names.index("score") < names.index("uplift") < names.index("plan")


def test_cli_trains_and_lists_uplift_models(scratch_url, tmp_path):
    env = cli_env(scratch_url, tmp_path)
    migrated = subprocess.run([sys.executable, "-m", "wiring.cli", "migrate"], env=env, capture_output=True, text=True)
    assert migrated.returncode == 0, migrated.stderr
    trained = subprocess.run([sys.executable, "-m", "wiring.cli", "uplift", "train"], env=env, capture_output=True,
                             text=True)
    assert trained.returncode == 0 and "no measured arms yet" in trained.stdout
    scored = subprocess.run([sys.executable, "-m", "wiring.cli", "uplift", "score", "--date", "2026-11-01"], env=env,
                            capture_output=True, text=True)
    assert scored.returncode == 0 and "no model yet" in scored.stdout
    bad = subprocess.run([sys.executable, "-m", "wiring.cli", "uplift", "evaluate", "--channel", "fax"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Usage: crm uplift evaluate" in bad.stderr and "'fax' is not one of" in bad.stderr


def test_uplift_evaluate_cli_compares_targeting_in_one_run():
    out = subprocess.run([sys.executable, "-m", "wiring.cli", "uplift", "evaluate", "--customers", "6000",
                          "--json"], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert set(result["rankings"]) == {"uplift", "risk", "random"}
    assert result["rankings"]["uplift"]["true"] > result["rankings"]["random"]["true"]
    human = subprocess.run([sys.executable, "-m", "wiring.cli", "uplift", "evaluate", "--customers", "4000"],
                           capture_output=True, text=True, check=True)
    assert "by uplift" in human.stdout and "at random" in human.stdout and "{" not in human.stdout


def test_api_fits_and_lists_uplift_models(client, auth_header, session, ctx, measured):
    from crm.models import Role

    fitted = client.post("/v1/uplift/models", headers=auth_header(Role.admin))
    assert fitted.status_code == 200 and {r["segment"] for r in fitted.json()["items"]} == {"campaign:sms:coupon", "any"}
    listed = client.get("/v1/uplift/models", headers=auth_header(Role.marketer)).json()["items"]
    assert [m["segment"] for m in listed] == ["any", "campaign:sms:coupon"]
    assert all(m["metrics"]["rankings"]["uplift"]["targeted"] > 0 and "content" not in m for m in listed)
    assert client.post("/v1/uplift/models", headers=auth_header(Role.marketer)).status_code == 403
