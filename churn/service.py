"""Churn service: train and register models, promote or roll back, score every active customer."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
from sqlalchemy import delete, text
from sqlmodel import Session, func, select

from churn.bgnbd import BetaGeometricNBD
from churn.calibration import ShippedScore, halves, score_inputs
from churn.features import FeatureConfig, SegmentRules, build_features, features_from_state, state_covers
from churn.model import ChurnModel
from churn.models import ChurnModelArtifact, ChurnModelVersion, ChurnPrediction, ChurnScore
from churn.policy import FlagPolicy, day_threshold, risk_levels
from churn.predictive import PREDICTED_COLUMNS, predictive_fields
from churn.reasons import drivers_frame, reader_locale, sentences, topic, topic_label
from churn.training import TrainingConfig, TrainingResult, add_bgnbd, score_metrics, snapshot, train_churn
from crm import activity, audit
from crm import state as crm_state
from crm.profiles import ProfileRequest
from crm.service import (
    customer_categories_frame,
    customers_frame,
    events_frame,
    external_ids_of,
    get_customer,
    locales_of,
    order_flags_frame,
    orders_frame,
    read_columns,
)
from kit.bulkwrite import fill_empty_table, insert_frame, stage_frame
from kit.columnar import (
    ColumnarReader,
    SharedFrames,
    columnar_reader,
    customer_clause,
    driver_json,
    driver_rows,
    driver_time,
    read_frame,
)
from kit.context import Context
from kit.errors import InvalidInput, NotFound
from kit.progress import PhaseTimings
from segmentation.service import current_rule_set, customer_ids_where, default_as_of

AUC_FLOOR = 0.70
PROMOTION_TOLERANCE = 0.005
TREND_POINTS = 8
PREDICTION_TYPES = {"scored_on": "timestamp", "customer_id": "int", "model_id": "int", "probability": "float",
                    "at_risk": "bool"}
def _invalid(message: str, field: str) -> InvalidInput:
    return InvalidInput(message, errors=[{"field": field, "reason": message}])


SCORE_TYPES = {"customer_id": "int", "model_id": "int", "scored_at": "timestamp", "probability": "float",
               "at_risk": "bool", "reasons": "json", "trend": "json", "risk_level": "text", "p_alive": "float",
               "expected_orders_90d": "float", "expected_orders_365d": "float", "predicted_clv_12m": "float",
               "expected_next_order_at": "timestamp"}


def read_history(session: Session, as_of: datetime, since: datetime | None, event_since: datetime, *,
                 categories: bool = False, shared: SharedFrames | None = None) -> dict[str, pl.DataFrame | None]:
    """Orders (with item flags) before `as_of`, events since `event_since`, customers, and optionally each
    customer's first purchase per category, through one columnar attachment (or a job run's shared frames)."""
    shared = shared or SharedFrames()
    with columnar_reader(session) as reader:
        orders = shared.window("orders", since, as_of, "ordered_at",
                               lambda: orders_frame(session, since, as_of, reader=reader, costs=False))
        flags = shared.whole("order_flags", lambda: order_flags_frame(session, reader=reader))
        events = shared.window("events", event_since, as_of, "occurred_at",
                               lambda: events_frame(session, event_since, as_of, reader=reader))
        customers = shared.whole("customers", lambda: customers_frame(session, reader=reader))
        first_by_category = customer_categories_frame(session, reader=reader) if categories else None
    # Narrow types: ~10M orders and ~9M events stay in memory through training (≤ 3 GB at 1M customers).
    orders = (orders.join(flags, on="order_id", how="left").drop("order_id", "cost_of_goods")
              .with_columns(pl.col("new_product_lines").cast(pl.Int16)))
    return {"orders": orders, "events": events.with_columns(pl.col("type").cast(pl.Categorical)),
            "customers": customers.drop("time_zone"),
            "categories": first_by_category}


def _rule_sets(session: Session) -> tuple[SegmentRules, dict[str, int]]:
    """The tier, layer and tag rules in force (churn features include each customer's tier, layer and tags)."""
    tier_version, tier = current_rule_set(session, "tier")
    layer_version, layer = current_rule_set(session, "layer")
    tags_version, tags = current_rule_set(session, "tags")
    return (tier, layer, tags), {"tier": tier_version, "layer": layer_version, "tags": tags_version}


def _fingerprint(orders: pl.DataFrame, events: pl.DataFrame) -> str:
    """A short hash of what the model saw (row counts, time span, money total)."""
    facts = [len(orders), str(orders["ordered_at"].min()), str(orders["ordered_at"].max()),
             round(float(orders["amount_paid"].sum() or 0), 2), len(events)]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]


def current_model(session: Session) -> ChurnModelVersion | None:
    """The model in force, if any."""
    return session.exec(select(ChurnModelVersion).where(ChurnModelVersion.status == "current")).first()


def _load(session: Session, row: ChurnModelVersion) -> tuple[ChurnModel, BetaGeometricNBD]:
    stored = session.get(ChurnModelArtifact, row.id)
    if stored is None:
        raise _invalid(f"the booster of churn model {row.id} is missing from the registry: promote another model "
                       "or train again", "model")
    model = ChurnModel.from_text(stored.content)
    bgnbd = BetaGeometricNBD()
    bgnbd.r_, bgnbd.alpha_, bgnbd.a_, bgnbd.b_ = (row.training["bgnbd"][k] for k in ("r", "alpha", "a", "b"))
    return model, bgnbd


def shipped_probability(row: ChurnModelVersion, model: ChurnModel, frame: pl.DataFrame) -> np.ndarray:
    """The registered score of a model version on a feature frame with the BG/NBD columns: calibrated P(churn)."""
    if not len(frame):
        return np.array([])
    return ShippedScore.from_dict(row.training.get("shipped")).probability(
        score_inputs(model.predict_proba(frame), frame))


def _auc_on(session: Session, row: ChurnModelVersion, result: TrainingResult, horizon_days: int) -> float | None:
    """The stored model's ROC AUC on the candidate's check rows (same customers, its own BG/NBD and score).

    Without its booster it cannot be re-scored: its own recorded ROC AUC stands in (a different window,
    so the candidate must beat the number the incumbent was promoted with).
    """
    try:
        model, bgnbd = _load(session, row)
    except InvalidInput:
        return row.metrics.get("roc_auc")
    check = result.validation.filter(~pl.Series(halves(result.validation["customer_id"].to_numpy())))
    frame = add_bgnbd(check.drop("bgnbd_p_alive", "bgnbd_expected"), bgnbd, horizon_days)
    if any(name not in frame.columns for name in model.feature_names_):
        return None  # trained on features this data no longer has: it cannot be compared, so it cannot win
    target = frame["churned"].to_numpy()
    return score_metrics(target, shipped_probability(row, model, frame), row.threshold)["roc_auc"]


def training_config(settings) -> TrainingConfig:
    """The training configuration the shop's settings give: population, look-back and the flag policy."""
    policy = FlagPolicy(kind=settings.churn_flag_policy, target_precision=settings.churn_target_precision,
                        min_lift_points=settings.churn_min_lift_points, daily_capacity=settings.churn_daily_capacity,
                        saved_margin=settings.churn_saved_margin, response_rate=settings.churn_response_rate,
                        offer_cost=settings.churn_offer_cost, message_cost=settings.churn_message_cost)
    return TrainingConfig(features=FeatureConfig(population=settings.churn_population,
                                                 lookback_days=settings.churn_lookback_days), policy=policy)


def train_model(session: Session, ctx: Context, *, as_of: datetime | None = None,
                config: TrainingConfig | None = None, floor: float = AUC_FLOOR,
                tolerance: float = PROMOTION_TOLERANCE, progress=None, actor: str = "scheduler") -> ChurnModelVersion:
    """Train a candidate, store it as a version and promote it when it is at least as good as the current one
    (`config`: default from the settings)."""
    config = config or training_config(ctx.settings)
    now = ctx.clock.now()
    as_of = as_of or default_as_of(now)
    started = time.perf_counter()
    features = config.features
    earliest_cutoff = as_of - timedelta(days=2 * features.horizon_days + config.step_days * (config.snapshots - 1))
    data = read_history(session, as_of, earliest_cutoff - timedelta(days=features.history_days + 1),
                        earliest_cutoff - timedelta(days=max(features.event_windows) + 1),
                        categories=features.category_breadth)
    if data["orders"].is_empty():
        raise _invalid("no orders to train on", "as_of")
    with Session(session.get_bind()) as lookup:
        rule_sets, versions = _rule_sets(lookup)
    config = replace(config, rule_sets=rule_sets)
    read_s = round(time.perf_counter() - started, 3)
    try:
        result = train_churn(data["orders"], as_of, config, events=data["events"], customers=data["customers"],
                             categories=data["categories"], progress=progress)
    except ValueError as problem:
        raise _invalid(str(problem), "as_of") from problem
    result.training["timings"] = {"read_s": read_s} | result.training["timings"]
    result.training["rule_set_versions"] = versions
    row = ChurnModelVersion(status="candidate", created_at=now, artifact="db", params=config.params or {},
                            features=result.model.feature_names_, training=result.training,
                            fingerprint=_fingerprint(data["orders"], data["events"]), threshold=result.threshold,
                            metrics=result.metrics | {"baselines": result.baselines})
    session.add(row)
    session.flush()
    session.add(ChurnModelArtifact(model_id=row.id, content=result.model.to_text()))
    auc = result.metrics["roc_auc"] or 0.0
    incumbent = current_model(session)
    incumbent_auc = _auc_on(session, incumbent, result, config.features.horizon_days) if incumbent else None
    row.metrics = row.metrics | {"incumbent_roc_auc_same_window": incumbent_auc}
    if auc < floor:
        row.status, row.decision = "rejected", f"ROC AUC {auc:.3f} below the floor {floor:.2f}"
    elif incumbent is not None and incumbent_auc is not None and auc < incumbent_auc - tolerance:
        row.status = "rejected"
        row.decision = f"ROC AUC {auc:.3f} worse than model {incumbent.id}'s {incumbent_auc:.3f} on the same window"
    else:
        _make_current(session, row, now)
        row.decision = (f"promoted: ROC AUC {auc:.3f}" + (f" vs model {incumbent.id}'s {incumbent_auc:.3f}"
                                                         if incumbent is not None and incumbent_auc is not None else ""))
    session.add(row)
    audit.record(session, actor=actor, action="churn.train", entity="churn_model", entity_id=row.id, at=now,
                 before=None, after={"status": row.status, "decision": row.decision})
    session.flush()
    return row


def _make_current(session: Session, row: ChurnModelVersion, now: datetime) -> None:
    for other in session.exec(select(ChurnModelVersion).where(ChurnModelVersion.status == "current")):
        if other.id != row.id:
            other.status = "retired"
            session.add(other)
    row.status, row.promoted_at = "current", now
    session.add(row)


def list_models(session: Session) -> list[ChurnModelVersion]:
    """Every model version, newest first."""
    return list(session.exec(select(ChurnModelVersion).order_by(ChurnModelVersion.id.desc())))


def promote(session: Session, ctx: Context, model_id: int, actor: str, floor: float = AUC_FLOOR) -> ChurnModelVersion:
    """Make a stored model current by hand (it must still clear the floor)."""
    row = session.get(ChurnModelVersion, model_id)
    if row is None:
        raise NotFound(f"no churn model {model_id}")
    if (row.metrics.get("roc_auc") or 0) < floor:
        raise _invalid(f"model {model_id} has ROC AUC {row.metrics.get('roc_auc')} below the floor {floor}",
                       "model_id")
    before = current_model(session)
    _make_current(session, row, ctx.clock.now())
    audit.record(session, actor=actor, action="churn.promote", entity="churn_model", entity_id=model_id,
                 at=ctx.clock.now(), before={"current": before.id if before else None}, after={"current": model_id})
    session.flush()
    return row


def rollback(session: Session, ctx: Context, actor: str) -> ChurnModelVersion:
    """Retire the current model and bring back the one that was current before it."""
    now_current = current_model(session)
    previous = session.exec(select(ChurnModelVersion).where(ChurnModelVersion.status == "retired",
                                                            ChurnModelVersion.promoted_at.is_not(None))
                            .order_by(ChurnModelVersion.promoted_at.desc())).first()
    if now_current is None or previous is None:
        raise _invalid("there is no earlier model to roll back to", "model_id")
    now_current.status = "rolled_back"
    session.add(now_current)
    _make_current(session, previous, ctx.clock.now())
    audit.record(session, actor=actor, action="churn.rollback", entity="churn_model", entity_id=previous.id,
                 at=ctx.clock.now(), before={"current": now_current.id}, after={"current": previous.id})
    session.flush()
    return previous


SCORING_PHASES = 5  # read and features, predict, compare, reasons, write: what `progress` hears


def score_customers(session: Session, ctx: Context, *, as_of: datetime | None = None, actor: str = "scheduler",
                    shared: SharedFrames | None = None, progress: Callable[[str], None] | None = None
                    ) -> dict[str, Any]:
    """Score every active customer with the current model; write probability, flag, reasons and trend (`shared`:
    the bulk frames an earlier step of the same job run read; `progress` hears each finished phase)."""
    # A short session of its own, so this session's transaction starts after the columnar reads
    # (SQLite cannot write from a read snapshot older than a scan made on another connection).
    with Session(session.get_bind()) as lookup:
        row = current_model(lookup)
        if row is None:
            raise _invalid("no current churn model: train one first (crm churn train)", "model")
        lookup.expunge(row)
        rule_sets, _ = _rule_sets(lookup)
        now = ctx.clock.now()
        as_of = as_of or default_as_of(now)
        clock = crm_state.clock(lookup)
        # The state answers when its clock is at this very day with the tier window the rules use (the nightly
        # segment step just moved it there); otherwise the features come from the raw history, as in training.
        state_ready = (clock is not None and clock.as_of == as_of
                       and crm_state.windows_of(clock).window_days == rule_sets[0].window_days)
        model, bgnbd = _load(lookup, row)
    # The population the model was trained on (older models: the active customers of the last 365 days).
    config = TrainingConfig(rule_sets=rule_sets, features=FeatureConfig(
        population=row.training.get("population", "active"), lookback_days=row.training.get("lookback_days", 365)))
    timings, tick = PhaseTimings(progress), time.perf_counter()
    frame, source = _scoring_features(session, as_of, config, model.feature_names_, state_ready, shared)
    frame = add_bgnbd(frame, bgnbd, row.training["horizon_days"])
    timings["read_and_features_s"] = round(time.perf_counter() - tick, 3)
    tick = time.perf_counter()
    probability = shipped_probability(row, model, frame)
    threshold = scoring_threshold(row, probability)
    base_rate = row.metrics.get("flag", {}).get("base_rate", row.metrics.get("churn_rate", 0.5))
    scores = frame.select("customer_id").with_columns(
        pl.Series("probability", probability), pl.Series("at_risk", probability >= threshold),
        pl.Series("risk_level", risk_levels(probability, threshold, base_rate), dtype=pl.String))
    if len(frame):
        predictive = row.training.get("predictive") or None
        scores = scores.join(predictive_fields(frame, bgnbd, row.training.get("gamma_gamma"), as_of, predictive),
                             on="customer_id")
    else:
        scores = scores.with_columns(*[pl.lit(None, dtype=pl.Float64).alias(c) for c in PREDICTED_COLUMNS[:-1]],
                                     pl.lit(None, dtype=pl.Datetime("us", "UTC")).alias(PREDICTED_COLUMNS[-1]))
    at_risk = scores["at_risk"].to_numpy()
    timings["predict_s"] = round(time.perf_counter() - tick, 3)
    changed, gone, stored = _changed_scores(session, scores, row.id)
    timings["compare_s"] = round(time.perf_counter() - tick - timings["predict_s"], 3)
    tick = time.perf_counter()
    # Reasons only for the flagged scores whose risk moved: a row rewritten for its predicted value alone keeps
    # the reasons it was written with (same model, same flag, P(churn) within a point).
    kept_reasons = _stored_reasons(session, changed.filter(pl.col("at_risk") & ~pl.col("risk_moved")))
    flagged = frame.join(changed.filter(pl.col("at_risk") & pl.col("risk_moved")).select("customer_id"),
                         on="customer_id", how="semi")
    names = model.feature_names_
    reasons = (drivers_frame(model.contributions(flagged), names, flagged.select(names).to_numpy().astype(np.float64))
               if len(flagged) else pl.Series("reasons", [], dtype=pl.String))
    changed = changed.join(pl.concat([flagged.select("customer_id").with_columns(reasons.alias("reasons")),
                                      kept_reasons]), on="customer_id", how="left")
    timings["reasons_s"] = round(time.perf_counter() - tick, 3)
    tick = time.perf_counter()
    # Newly flagged customers are news to whoever reacts within minutes (a journey's staged recall).
    activity.record(session, changed.filter("became_at_risk").select(
        "customer_id", kind=pl.lit("at_risk"), name=pl.lit("at_risk"), occurred_at=pl.lit(now)), now)
    _write_scores(session, changed.drop("became_at_risk", "risk_moved"), gone, stored, as_of, row.id, now)
    kept = keep_predictions(session, ctx, scores.select("customer_id", "probability", "at_risk"), as_of, row.id)
    timings["write_s"] = round(time.perf_counter() - tick, 3)
    summary = {"model_id": row.id, "as_of": as_of.isoformat(), "scored": len(frame), "at_risk": int(at_risk.sum()),
               "predictions_kept": kept, "rows_written": len(changed), "rows_removed": len(gone),
               "rows_written_for_value_only": int((~changed["risk_moved"]).sum()),
               "threshold": round(threshold, 4), "policy": row.training.get("policy", {}).get("kind", "precision"),
               "risk_levels": {level: int((scores["risk_level"] == level).sum()) for level in ("low", "medium", "high")},
               "timings": timings, "features_from": source,
               "mean_probability": round(float(probability.mean()), 4) if len(frame) else None}
    audit.record(session, actor=actor, action="churn.score", entity="churn_model", entity_id=row.id, at=now,
                 before=None, after=summary)
    session.flush()
    return summary


SCORE_STEP = 0.01  # a score is rewritten (and its trend gains a point) when it moves by a percentage point or more
ALIVE_STEP = 0.02  # ... or P(alive) by two points (it drifts a little every day a customer does not buy)
VALUE_STEP = 0.05  # ... or the predicted 12-month value by 5%, or its due date, risk level or flag changes


def scoring_threshold(row: ChurnModelVersion, probability: np.ndarray) -> float:
    """The at-risk threshold today under the model's flag policy (see `day_threshold`)."""
    return day_threshold(FlagPolicy.from_dict(row.training.get("policy")), row.threshold, probability)


def _changed_scores(session: Session, scores: pl.DataFrame,
                    model_id: int) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """(scores to rewrite with their previous trend, customers no longer scored, how many rows are stored): new
    customers, a flag or model change, or a move of `SCORE_STEP` or more."""
    previous = read_frame(session, "SELECT s.customer_id, s.probability, s.at_risk, s.model_id, s.trend, "
                          "s.risk_level, s.p_alive, s.predicted_clv_12m, s.expected_next_order_at FROM churn_score s",
                          {}, {"customer_id": pl.Int64, "_p": pl.Float64, "_at_risk": pl.Boolean, "_model": pl.Int64,
                               "trend": pl.String, "_level": pl.String, "_alive": pl.Float64, "_clv": pl.Float64,
                               "_due": pl.Datetime("us", "UTC")})
    # Why a row is rewritten: the risk moved (its reasons are computed again) or only a predicted value did.
    risk_moved = (pl.col("_p").is_null() | (pl.col("_model") != model_id) | (pl.col("_at_risk") != pl.col("at_risk"))
                  | ((pl.col("probability") - pl.col("_p")).abs() >= SCORE_STEP)
                  | (pl.col("_level") != pl.col("risk_level"))).fill_null(True)
    value_moved = ((pl.col("p_alive") - pl.col("_alive")).abs().fill_null(1.0) >= ALIVE_STEP) | (
        (pl.col("predicted_clv_12m") - pl.col("_clv")).abs()
        >= VALUE_STEP * pl.max_horizontal(pl.col("_clv").abs(), pl.lit(1.0))).fill_null(True) | (
        pl.col("expected_next_order_at").ne_missing(pl.col("_due")))
    changed = (scores.join(previous, on="customer_id", how="left")
               .with_columns(risk_moved=risk_moved)
               .filter(pl.col("risk_moved") | value_moved)
               .with_columns(became_at_risk=pl.col("at_risk") & ~pl.col("_at_risk").fill_null(False))
               .drop("_p", "_at_risk", "_model", "_level", "_alive", "_clv", "_due"))
    return changed, previous.join(scores, on="customer_id", how="anti").select("customer_id"), len(previous)


def _stored_reasons(session: Session, rows: pl.DataFrame) -> pl.DataFrame:
    """customer_id, reasons: the stored reasons of these customers (one staged join, not a read of every row)."""
    schema = {"customer_id": pl.Int64, "reasons": pl.String}
    if rows.is_empty():
        return pl.DataFrame(schema=schema)
    stage_frame(session, "stage_churn_keep_reasons", rows.select("customer_id"), {"customer_id": "int"})
    return read_frame(session, "SELECT s.customer_id, s.reasons FROM churn_score s JOIN stage_churn_keep_reasons k "
                      "ON k.customer_id = s.customer_id", {}, schema, same_connection=True)


def _write_scores(session: Session, changed: pl.DataFrame, gone: pl.DataFrame, stored: int, as_of: datetime,
                  model_id: int, now: datetime) -> None:
    """Rewrite the changed scores, each with a new trend point (a rerun replaces its day's), and drop the gone."""
    day = as_of.date().isoformat()
    point = pl.struct(pl.lit(day).alias("at"), pl.col("probability").round(4).alias("p"))
    trend_type = pl.List(pl.Struct({"at": pl.String, "p": pl.Float64}))
    rows = (changed.with_columns(pl.col("trend").str.json_decode(pl.Struct({"points": trend_type}))
                                 .struct.field("points").fill_null(pl.lit([], dtype=trend_type)).alias("_old"))
            .with_columns(pl.concat_list(pl.col("_old").list.eval(pl.element().filter(
                pl.element().struct.field("at") != day)), point).list.tail(TREND_POINTS).alias("_points"))
            .with_columns(pl.struct(pl.col("_points").alias("points")).struct.json_encode().alias("trend"),
                          model_id=pl.lit(model_id), scored_at=pl.lit(now)))
    pg = session.get_bind().dialect.name == "postgresql"
    if len(rows) + len(gone) == stored:
        # Every stored row goes: TRUNCATE (transactional in PostgreSQL) leaves no dead rows behind.
        session.connection().execute(text("TRUNCATE churn_score" if pg else "DELETE FROM churn_score"))
        fill_empty_table(session, "churn_score", rows, SCORE_TYPES)
    else:
        stage_frame(session, "stage_churn_rewrite", pl.concat([rows.select("customer_id"), gone]),
                    {"customer_id": "int"})
        session.connection().execute(text(
            "DELETE FROM churn_score WHERE customer_id IN (SELECT customer_id FROM stage_churn_rewrite)"))
        insert_frame(session, "churn_score", rows, SCORE_TYPES)
    session.expire_all()  # rows were rewritten in SQL: ORM objects loaded before are stale


def _scoring_features(session: Session, as_of: datetime, config: TrainingConfig, features: list[str],
                      state_ready: bool, shared: SharedFrames | None) -> tuple[pl.DataFrame, str]:
    """The scoring population's features and where they came from: the customer state (1M summary rows) when
    it is as of this day and covers the model's features, else the raw history."""
    shared = shared or SharedFrames()
    if state_ready and state_covers(config.features, features):
        with columnar_reader(session) as reader:
            state = shared.whole("state", lambda: crm_state.state_frame(session, reader=reader))
            customers = shared.whole("customers", lambda: customers_frame(session, reader=reader))
        return features_from_state(state, as_of, config.features, customers=customers,
                                   rule_sets=config.rule_sets), "state"
    data = read_history(session, as_of, as_of - timedelta(days=config.features.history_days + 1),
                        as_of - timedelta(days=max(config.features.event_windows) + 1),
                        categories="category_breadth" in features, shared=shared)
    return snapshot(data["orders"], as_of, config, events=data["events"], customers=data["customers"],
                    categories=data["categories"], labelled=False), "history"


def order_features_at(session: Session, cutoffs: list[datetime], *,
                      shared: SharedFrames | None = None) -> dict[datetime, pl.DataFrame]:
    """Order and discount features of every customer who ordered before each cut-off (what uplift models see), from
    the customer state for a cut-off it is as of, else from one read of the raw history."""
    config = FeatureConfig(population="all")
    out: dict[datetime, pl.DataFrame] = {}
    state_clock = crm_state.clock(session)
    shared = shared or SharedFrames()
    from_history = [c for c in cutoffs if state_clock is None or state_clock.as_of != c]
    if len(from_history) < len(cutoffs):
        with columnar_reader(session) as reader:
            state = shared.whole("state", lambda: crm_state.state_frame(session, reader=reader))
        for cutoff in set(cutoffs) - set(from_history):
            out[cutoff] = features_from_state(state, cutoff, config)
    if from_history:
        data = read_history(session, max(from_history), min(from_history) - timedelta(days=config.history_days + 1),
                            max(from_history), shared=shared)
        for cutoff in from_history:
            out[cutoff] = build_features(data["orders"], cutoff, config)
    return out


def keep_predictions(session: Session, ctx: Context, scores: pl.DataFrame, as_of: datetime, model_id: int) -> int:
    """Keep a fixed sample of this run's predictions when the newest kept run is `churn_quality_every_days` old
    (to compare with what then happened); returns how many rows were kept."""
    settings = ctx.settings
    newest = session.exec(select(func.max(ChurnPrediction.scored_on))).one()
    if newest is not None and newest > as_of - timedelta(days=settings.churn_quality_every_days):
        return 0
    # The same customers every time (a hash of the id), so runs compare like with like.
    draw = ((scores["customer_id"].cast(pl.UInt64) * 2654435761) % (2**32)).cast(pl.Float64) / 2**32
    sample = scores.filter(draw < settings.churn_quality_sample_share).with_columns(
        scored_on=pl.lit(as_of, dtype=pl.Datetime("us", "UTC")), model_id=pl.lit(model_id, dtype=pl.Int64))
    insert_frame(session, "churn_prediction", sample, PREDICTION_TYPES)
    return sample.height


def prune_predictions(session: Session, ctx: Context) -> int:
    """Delete kept predictions older than `churn_quality_retention_days`."""
    cutoff = ctx.clock.now() - timedelta(days=ctx.settings.churn_quality_retention_days)
    result = session.connection().execute(delete(ChurnPrediction).where(ChurnPrediction.scored_on < cutoff))
    return result.rowcount or 0


def at_risk_customers(session: Session, *, tier: str | None = None, after: int | None = None,
                      limit: int = 100, locale: str | None = None) -> list[dict[str, Any]]:
    """Flagged customers in id order for stable paging (cursor = customer row id), reasons in `locale` (else each
    customer's own)."""
    query = select(ChurnScore).where(ChurnScore.at_risk)
    if tier is not None:
        query = query.where(customer_ids_where(session, ChurnScore.customer_id, tier=tier))
    if after is not None:
        query = query.where(ChurnScore.customer_id > after)
    scores = session.exec(query.order_by(ChurnScore.customer_id).limit(limit)).all()
    ids = [s.customer_id for s in scores]
    external = external_ids_of(session, ids)
    locales = {} if locale else locales_of(session, ids)
    return [{"customer_id": score.customer_id, "external_id": external.get(score.customer_id),
             "probability": round(score.probability, 4), "risk_level": score.risk_level,
             "reasons": sentences(score.reasons, reader_locale(locale or locales.get(score.customer_id))),
             "drivers": (score.reasons or {}).get("drivers", []), "predicted_clv_12m": score.predicted_clv_12m,
             "model_id": score.model_id, "scored_at": score.scored_at}
            for score in scores]


def top_reasons(session: Session, locale: str | None = None, limit: int = 5) -> list[dict[str, Any]]:
    """What drives the flags: flagged customers per reason topic (any of their drivers), most common first."""
    frame = read_frame(session, "SELECT s.reasons FROM churn_score s WHERE s.at_risk", {}, {"reasons": pl.String})
    flagged = frame.height
    if not flagged:
        return []
    drivers = pl.Struct({"drivers": pl.List(pl.Struct({"feature": pl.String}))})
    features = (frame.with_row_index("row").with_columns(pl.col("reasons").str.json_decode(drivers)
                                                         .struct.field("drivers").alias("d"))
                .explode("d").drop_nulls("d").select("row", pl.col("d").struct.field("feature")))
    topics = (features.with_columns(pl.col("feature").map_elements(topic, return_dtype=pl.String).alias("topic"))
              .unique(["row", "topic"]).group_by("topic").len().sort(["len", "topic"], descending=[True, False]))
    return [{"topic": name, "label": topic_label(name, reader_locale(locale)), "customers": count,
             "share": round(count / flagged, 4)} for name, count in topics.head(limit).iter_rows()]


def churn_section(request: ProfileRequest) -> dict[str, Any] | None:
    """The customer profile's churn section: probability, flag and risk level, reasons in the reader's (else the
    customer's) language, the predictive fields, model version and trend."""
    found = driver_rows(request.session, "SELECT s.probability, s.at_risk, s.reasons, s.model_id, s.scored_at, "
                                         "s.trend, s.risk_level, s.p_alive, s.expected_orders_90d, "
                                         "s.expected_orders_365d, s.predicted_clv_12m, s.expected_next_order_at "
                                         "FROM churn_score s WHERE s.customer_id = :customer_id",
                        {"customer_id": request.customer_id})
    if not found:
        return None
    probability, at_risk, reasons, model_id, scored_at, trend, level, p_alive, orders_90, orders_365, clv, due = found[0]
    reasons = driver_json(reasons)
    customer = get_customer(request.session, request.customer_id) if request.reader_locale is None else None
    language = reader_locale(request.reader_locale or (customer.locale if customer else None))
    due = driver_time(due)
    return {"probability": round(probability, 4), "at_risk": bool(at_risk), "risk_level": level,
            "reasons": sentences(reasons, language), "reasons_locale": language,
            "drivers": (reasons or {}).get("drivers", []), "model_id": model_id, "scored_at": driver_time(scored_at),
            "trend": (driver_json(trend) or {}).get("points", []),
            "predicted": {"p_alive": p_alive, "expected_orders_90d": orders_90, "expected_orders_365d": orders_365,
                          "predicted_clv_12m": clv,
                          "expected_next_order_on": due.date().isoformat() if due else None}}


def churn_export(request: ProfileRequest) -> dict[str, Any] | None:
    """A customer's churn score with its reasons and trend, and the kept predictions, for a data export."""
    score = request.session.get(ChurnScore, request.customer_id)
    kept = request.session.exec(select(ChurnPrediction).where(ChurnPrediction.customer_id == request.customer_id)
                                .order_by(ChurnPrediction.scored_on)).all()
    return {"score": score.model_dump(exclude={"customer_id"}) if score else None,
            "kept_predictions": [p.model_dump(exclude={"customer_id", "id"}) for p in kept]}


def at_risk_condition(session: Session, value: str, customer_id: Any) -> Any:
    """A SQL condition on the given customer-id column for `GET /customers?at_risk=true|false`."""
    from sqlalchemy import exists

    wanted = value.strip().lower()
    if wanted not in ("true", "false"):
        raise _invalid("at_risk must be true or false", "at_risk")
    flagged = exists().where(ChurnScore.customer_id == customer_id, ChurnScore.at_risk)
    return flagged if wanted == "true" else ~flagged


def risk_level_condition(session: Session, value: str, customer_id: Any) -> Any:
    """`GET /customers?risk_level=high,medium`: the customer's churn risk level is one of these."""
    from sqlalchemy import exists

    levels = [part.strip().lower() for part in value.split(",") if part.strip()]
    if not levels or any(level not in RISK_LEVELS for level in levels):
        raise _invalid("risk_level must be low, medium or high (comma-separated for several)", "risk_level")
    return exists().where(ChurnScore.customer_id == customer_id, ChurnScore.risk_level.in_(levels))


def _number(value: str, field: str, minimum: float = 0.0) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number >= minimum:  # also false for NaN
        raise _invalid(f"{field} must be a number ≥ {minimum:g}", field)
    return number


def clv_min_condition(session: Session, value: str, customer_id: Any) -> Any:
    """`GET /customers?predicted_clv_min=500`: predicted 12-month value at least this."""
    from sqlalchemy import exists

    floor = _number(value, "predicted_clv_min")
    return exists().where(ChurnScore.customer_id == customer_id, ChurnScore.predicted_clv_12m >= floor)


def next_order_condition(session: Session, value: str, customer_id: Any) -> Any:
    """`GET /customers?next_order_within_days=7`: expected to be due within N days of the latest scoring."""
    from sqlalchemy import exists

    days = _number(value, "next_order_within_days")
    scored = session.exec(select(func.max(ChurnScore.scored_at))).one()
    if scored is None:
        return exists().where(ChurnScore.customer_id == customer_id, ChurnScore.customer_id.is_(None))
    start = scored.replace(hour=0, minute=0, second=0, microsecond=0)
    return exists().where(ChurnScore.customer_id == customer_id, ChurnScore.expected_next_order_at >= start,
                          ChurnScore.expected_next_order_at < start + timedelta(days=days + 1))


RISK_LEVELS = ("low", "medium", "high")
SCORE_READ_SCHEMA = {"customer_id": pl.Int64, "probability": pl.Float64, "at_risk": pl.Boolean,
                     "risk_level": pl.String, "p_alive": pl.Float64, "predicted_clv_12m": pl.Float64,
                     "expected_next_order_at": pl.Datetime("us", "UTC")}


def scores_frame(session: Session, *, customer_id: int | None = None, customer_ids: list[int] | None = None,
                 reader: ColumnarReader | None = None) -> pl.DataFrame:
    """Each scored customer's churn probability and flag from the latest scoring (all, one, or a few by id)."""
    one, params, small = customer_clause("s.customer_id", customer_id, customer_ids)
    query = ("SELECT s.customer_id, s.probability, s.at_risk, s.risk_level, s.p_alive, s.predicted_clv_12m, "
             f"s.expected_next_order_at FROM churn_score s {one}")
    return read_columns(session, reader, query, params, SCORE_READ_SCHEMA, one_customer=small)
