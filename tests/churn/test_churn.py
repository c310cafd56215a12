"""Churn on a real database: train and register, promotion rules, scoring with reasons, API, CLI evaluate."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import pytest
from polars.testing import assert_frame_equal
from sqlmodel import select

from churn import service
from churn.features import FeatureConfig, features_from_state
from churn.models import ChurnModelArtifact, ChurnModelVersion, ChurnScore
from churn.training import TrainingConfig, snapshot
from crm import state as crm_state
from crm.models import AuditLog, Customer, Role
from crm.service import customers_frame
from crm.state import StateWindows
from tests.support.factories import import_shop
from wiring.generator import GeneratorConfig, write_dataset

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
FAST = TrainingConfig(snapshots=3, step_days=30)


@pytest.fixture(scope="module")
def shop_files(tmp_path_factory):
    """A small generated shop (orders, items, events), written once per module."""
    out = tmp_path_factory.mktemp("shop")
    write_dataset(GeneratorConfig(customers=2500, seed=5, end=date(2026, 11, 1)), out)
    return out


@pytest.fixture
def shop(session, ctx, shop_files):
    import_shop(session, ctx, shop_files)
    return shop_files


def test_training_registers_a_model_that_beats_the_baselines(session, ctx, shop):
    row = service.train_model(session, ctx, as_of=AS_OF, config=FAST)
    assert row.status == "current" and row.artifact == "db"
    assert session.get(ChurnModelArtifact, row.id).content.startswith("{")  # the booster is in the registry
    assert {"tier_rank", "layer_rank", "bgnbd_p_alive", "login_30d", "discount_share"} <= set(row.features)
    assert row.training["rule_set_versions"] == {"tier": 1, "layer": 1, "tags": 1}
    assert "tag_price_sensitive" in row.features
    metrics = row.metrics
    assert metrics["roc_auc"] > max(b["roc_auc"] for b in metrics["baselines"].values())
    assert metrics["precision"] >= 0.70 and 0 < metrics["recall"] <= 1
    assert set(metrics) >= {"pr_auc", "brier", "log_loss", "f1", "lift_top_decile", "calibration"}
    assert row.training["validation_cutoff"].startswith("2026-08-03")
    assert session.exec(select(AuditLog).where(AuditLog.action == "churn.train")).first() is not None


def test_a_worse_candidate_is_never_promoted_and_rollback_restores(session, ctx, shop):
    first = service.train_model(session, ctx, as_of=AS_OF, config=FAST)
    # Trees that may not split predict a constant: worse on the same window, whatever the floor.
    crippled = TrainingConfig(snapshots=3, params={"min_data_in_leaf": 10_000_000})
    worse = service.train_model(session, ctx, as_of=AS_OF, config=crippled, floor=0.0)
    assert worse.status == "rejected" and "worse than model" in worse.decision
    assert service.current_model(session).id == first.id
    second = service.train_model(session, ctx, as_of=AS_OF, config=FAST)
    assert second.status == "current" and session.get(ChurnModelVersion, first.id).status == "retired"
    assert service.rollback(session, ctx, "test").id == first.id
    assert service.current_model(session).id == first.id
    # An incumbent whose booster is gone is judged by its recorded ROC AUC; scoring with it is a clear error.
    session.delete(session.get(ChurnModelArtifact, first.id))
    session.flush()
    from kit.errors import InvalidInput
    with pytest.raises(InvalidInput, match="booster of churn model"):
        service.score_customers(session, ctx, as_of=AS_OF)
    third = service.train_model(session, ctx, as_of=AS_OF, config=FAST)
    assert third.metrics["incumbent_roc_auc_same_window"] == first.metrics["roc_auc"]


def test_scoring_flags_customers_with_reasons_and_keeps_a_trend(session, ctx, shop):
    service.train_model(session, ctx, as_of=AS_OF, config=FAST)
    summary = service.score_customers(session, ctx, as_of=AS_OF)
    assert summary["scored"] > 1000 and 0 < summary["at_risk"] < summary["scored"]
    flagged = session.exec(select(ChurnScore).where(ChurnScore.at_risk)).all()
    assert len(flagged) == summary["at_risk"]
    from churn.reasons import sentences
    assert all(1 <= len(s.reasons["drivers"]) <= 3 and all(d["contribution"] > 0 for d in s.reasons["drivers"])
               for s in flagged)
    assert all(1 <= len(sentences(s.reasons)) <= 3 and all(isinstance(r, str) and r for r in sentences(s.reasons))
               for s in flagged)
    calm = session.exec(select(ChurnScore).where(ChurnScore.at_risk.is_(False))).first()
    assert calm.reasons is None
    assert all(s.risk_level == "high" for s in flagged) and calm.risk_level in ("low", "medium")
    assert summary["risk_levels"]["high"] == summary["at_risk"] and summary["risk_levels"]["low"] > 0
    every = session.exec(select(ChurnScore)).all()
    assert all(s.p_alive is not None and s.predicted_clv_12m >= 0 and s.expected_orders_365d >= s.expected_orders_90d
               for s in every)
    first = {s.customer_id: (s.probability, s.at_risk) for s in every}
    predicted = {s.customer_id: (s.risk_level, s.p_alive, s.predicted_clv_12m, s.expected_next_order_at)
                 for s in every}
    before_reasons = {s.customer_id: s.reasons for s in every}
    rerun = service.score_customers(session, ctx, as_of=AS_OF)  # the same day again: nothing moved, nothing written
    assert rerun["rows_written"] == 0 and rerun["scored"] == summary["scored"]
    again = session.get(ChurnScore, flagged[0].customer_id)
    assert [p["at"] for p in again.trend["points"]] == ["2026-11-01"]
    later = service.score_customers(session, ctx, as_of=datetime(2026, 11, 8, tzinfo=UTC))
    assert 0 < later["rows_written"] < later["scored"]
    rows = {s.customer_id: s for s in session.exec(select(ChurnScore)).all()}
    assert len(rows) == later["scored"] and later["rows_removed"] == len(first.keys() - rows.keys())
    rewritten = [r for r in rows.values() if r.trend["points"][-1]["at"] == "2026-11-08"]
    assert len(rewritten) == later["rows_written"]
    for r in rewritten:  # each rewrite is news: a new customer, a flag or level change, a move of a point or more,
        if r.customer_id in first:  # a P(alive) move of two points, a value move of 5% or a new due date
            before, was_at_risk = first[r.customer_id]
            level, alive, clv, due = predicted[r.customer_id]
            assert (abs(r.probability - before) >= service.SCORE_STEP or r.at_risk != was_at_risk
                    or r.risk_level != level or abs(r.p_alive - alive) >= service.ALIVE_STEP
                    or abs(r.predicted_clv_12m - clv) >= service.VALUE_STEP * max(abs(clv), 1.0)
                    or r.expected_next_order_at != due)
            assert [p["at"] for p in r.trend["points"]] == ["2026-11-01", "2026-11-08"]
    # A flagged row rewritten for its predicted value alone keeps the reasons it had; moved risks get new ones.
    assert later["rows_written_for_value_only"] > 0
    kept = [r for r in rewritten if r.customer_id in first and r.at_risk and first[r.customer_id][1]
            and abs(r.probability - first[r.customer_id][0]) < service.SCORE_STEP]
    assert kept and all(r.reasons == before_reasons[r.customer_id] for r in kept)
    for r in rows.values():  # the others keep the score, flag and single point they were written with
        if r.trend["points"][-1]["at"] == "2026-11-01":
            assert (r.probability, r.at_risk) == first[r.customer_id] and len(r.trend["points"]) == 1


def test_api_lists_models_at_risk_and_the_profile_section(client, auth_header, session, ctx, shop):
    row = service.train_model(session, ctx, as_of=AS_OF, config=FAST)
    service.score_customers(session, ctx, as_of=AS_OF)
    models = client.get("/v1/churn/models", headers=auth_header(Role.marketer)).json()["items"]
    assert models[0]["id"] == row.id and "artifact" not in models[0] and models[0]["metrics"]["roc_auc"] > 0.7
    page = client.get("/v1/churn/at-risk?limit=5", headers=auth_header(Role.support)).json()
    assert len(page["items"]) == 5 and page["next_cursor"] and "customer_id" not in page["items"][0]
    following = client.get("/v1/churn/at-risk", params={"limit": 5, "cursor": page["next_cursor"]},
                           headers=auth_header(Role.support)).json()
    seen = [i["external_id"] for i in page["items"]]
    assert following["items"] and not {i["external_id"] for i in following["items"]} & set(seen)
    external = page["items"][0]["external_id"]
    section = client.get(f"/v1/customers/{external}/profile", headers=auth_header(Role.support)).json()["sections"]["churn"]
    assert section["at_risk"] is True and section["reasons"] and section["model_id"] == row.id
    stored = session.exec(select(ChurnScore).join(Customer, Customer.id == ChurnScore.customer_id)
                          .where(Customer.external_id == external)).one()
    assert section["probability"] == round(stored.probability, 4) and section["drivers"] == stored.reasons["drivers"]
    assert datetime.fromisoformat(section["scored_at"]) == stored.scored_at  # aware UTC on both backends
    listed = client.get("/v1/customers?at_risk=true&limit=3", headers=auth_header(Role.marketer))
    assert listed.status_code == 200 and len(listed.json()["items"]) == 3
    flagged_ids = {s.customer_id for s in session.exec(select(ChurnScore).where(ChurnScore.at_risk))}
    listed_ids = {session.exec(select(Customer.id).where(Customer.external_id == c["external_id"])).one()
                  for c in listed.json()["items"]}
    assert listed_ids <= flagged_ids
    wrong = client.get("/v1/customers?at_risk=maybe", headers=auth_header(Role.marketer))
    assert wrong.status_code == 422 and "at_risk" in wrong.text
    from segmentation.service import run_segmentation
    run_segmentation(session, ctx, AS_OF)
    lost = client.get("/v1/churn/at-risk?tier=lost&limit=500", headers=auth_header(Role.marketer)).json()["items"]
    everyone = client.get("/v1/churn/at-risk?limit=500", headers=auth_header(Role.marketer)).json()["items"]
    from segmentation.models import CustomerSegment
    tiers = {external: segment.tier for segment, external in session.exec(
        select(CustomerSegment, Customer.external_id).where(Customer.id == CustomerSegment.customer_id))}
    assert lost and all(tiers[row["external_id"]] == "lost" for row in lost)
    assert len(lost) < len(everyone)
    missing = client.post("/v1/churn/models/999999/promote", headers=auth_header(Role.admin))
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/problem+json")
    nothing_before = client.post("/v1/churn/models/rollback", headers=auth_header(Role.admin))
    assert nothing_before.status_code == 422


def test_category_breadth_when_turned_on_is_trained_and_scored(session, ctx, shop):
    config = TrainingConfig(snapshots=2, features=FeatureConfig(category_breadth=True))
    row = service.train_model(session, ctx, as_of=AS_OF, config=config)
    assert "category_breadth" in row.features
    assert service.score_customers(session, ctx, as_of=AS_OF)["scored"] > 1000


def test_scoring_without_a_model_is_a_clear_error(session, ctx):
    from kit.errors import InvalidInput

    with pytest.raises(InvalidInput, match="train one first"):
        service.score_customers(session, ctx, as_of=AS_OF)


def test_evaluate_cli_on_a_plain_transactions_csv(tmp_path, shop_files):
    import polars as pl

    orders = pl.read_csv(shop_files / "orders.csv")
    plain = orders.select(pl.col("customer_external_id").alias("user"), pl.col("ordered_at").str.slice(0, 10)
                          .alias("day"), pl.col("amount_paid").alias("total"))
    # Real-world mess: a zero amount, a repeated same-day order and an unparsable date.
    plain = pl.concat([plain, plain.head(3).with_columns(pl.lit(0.0).alias("total")),
                       pl.DataFrame({"user": ["C9"], "day": ["not a date"], "total": [5.0]})])
    path = tmp_path / "tx.csv"
    plain.write_csv(path)
    out = subprocess.run([sys.executable, "-m", "wiring.cli", "churn", "evaluate", "--transactions", str(path),
                          "--cutoff", "2026-08-01", "--customer-col", "user", "--time-col", "day",
                          "--amount-col", "total", "--json"], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result) >= {"n_customers", "churn_rate", "roc_auc", "pr_auc", "brier", "precision", "recall",
                           "threshold", "baselines"}
    assert result["rows_skipped"] == 1 and result["n_customers"] > 500
    assert result["roc_auc"] > result["baselines"]["recency"]["roc_auc"]
    flag = result["flag"]  # a flag with lift, not everyone
    assert 0 < flag["flagged"] < result["n_customers"] and flag["lift"] > 1.2 and flag["base_rate"] > 0
    assert result["population"]["size"] == result["n_customers"] and result["population"]["left_out"]
    human = subprocess.run([sys.executable, "-m", "wiring.cli", "churn", "evaluate", "--transactions", str(path),
                            "--cutoff", "2026-08-01", "--customer-col", "user", "--time-col", "day",
                            "--amount-col", "total", "--population", "all", "--policy", "capacity",
                            "--capacity", "200"], capture_output=True, text=True, check=True)
    assert "baseline: bgnbd" in human.stdout and "200 flagged" in human.stdout and "lift" in human.stdout
    assert "population all:" in human.stdout and "left out" in human.stdout and "{" not in human.stdout
    bad = subprocess.run([sys.executable, "-m", "wiring.cli", "churn", "evaluate", "--transactions", str(path),
                          "--cutoff", "2026-08-01", "--json"], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "customer_id" in bad.stderr
    too_early = subprocess.run([sys.executable, "-m", "wiring.cli", "churn", "evaluate", "--transactions", str(path),
                                "--cutoff", "2024-01-15", "--customer-col", "user", "--time-col", "day",
                                "--amount-col", "total", "--json"], capture_output=True, text=True)
    assert too_early.returncode != 0 and "not enough history" in too_early.stderr
    assert too_early.stderr.count("\n") == 1


def test_feature_config_horizon_reaches_the_label():
    assert TrainingConfig(features=FeatureConfig(horizon_days=30)).horizon.days == 30


def _history_features(session, as_of, config):
    data = service.read_history(session, as_of, as_of - timedelta(days=config.features.history_days + 1),
                                as_of - timedelta(days=max(config.features.event_windows) + 1))
    return snapshot(data["orders"], as_of, config, events=data["events"], customers=data["customers"],
                    labelled=False).drop("cutoff")


def test_features_from_the_customer_state_equal_the_features_from_the_raw_history(session, ctx, shop):
    rule_sets, _ = service._rule_sets(session)
    config = TrainingConfig(rule_sets=rule_sets)
    crm_state.rebuild(session, ctx, AS_OF, StateWindows(window_days=rule_sets[0].window_days))
    from_history = _history_features(session, AS_OF, config)
    from_state = features_from_state(crm_state.state_frame(session), AS_OF, config.features,
                                     customers=customers_frame(session), rule_sets=rule_sets)
    assert from_state["customer_id"].to_list() == from_history["customer_id"].to_list()
    assert len(from_history) > 1000 and set(from_state.columns) == set(from_history.columns)
    # Tier and tag inputs read events over the segmentation's look-back in the state, 91 days in the history path.
    exact = [c for c in from_history.columns if not c.startswith(("tier_", "layer_", "tag_"))]
    assert_frame_equal(from_state.select(exact), from_history.select(exact), check_dtypes=False, abs_tol=1e-6)
    assert (from_state["tier_rank"] == from_history["tier_rank"]).mean() > 0.99


def test_nightly_scoring_reads_the_state_when_it_is_as_of_the_day(session, ctx, shop):
    service.train_model(session, ctx, as_of=AS_OF, config=FAST)
    rule_sets, _ = service._rule_sets(session)
    crm_state.rebuild(session, ctx, AS_OF - timedelta(days=1), StateWindows(window_days=rule_sets[0].window_days))
    from_history = service.score_customers(session, ctx, as_of=AS_OF)
    history_scores = {s.customer_id: s.probability for s in session.exec(select(ChurnScore)).all()}
    crm_state.advance(session, ctx, AS_OF)
    from_state = service.score_customers(session, ctx, as_of=AS_OF)
    state_scores = {s.customer_id: s.probability for s in session.exec(select(ChurnScore)).all()}
    assert (from_history["features_from"], from_state["features_from"]) == ("history", "state")
    assert state_scores.keys() == history_scores.keys()
    same = sum(abs(state_scores[c] - history_scores[c]) < 1e-9 for c in state_scores)
    assert same / len(state_scores) > 0.99
