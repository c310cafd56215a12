"""Segmentation service: rule sets (versioned), runs that write only what changed, summary, history, profile."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import polars as pl
from pydantic import ValidationError
from sqlalchemy import text
from sqlmodel import Session, select

from crm import activity, audit
from crm import state as crm_state
from crm.profiles import ProfileRequest
from crm.service import (
    customers_frame,
    read_columns,
)
from crm.state import state_frame
from kit.bulkwrite import fill_empty_table, insert_frame, merge_staged, stage_frame
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
from segmentation.defaults import DEFAULTS
from segmentation.hysteresis import STATE_SCHEMA, settle
from segmentation.metrics import METRICS, MetricParams, metrics_from_state, rfm_cell
from segmentation.models import (
    CustomerSegment,
    CustomerTag,
    SegmentRuleSet,
    SegmentRun,
    SegmentTransition,
)
from segmentation.rules import RuleProblem, RuleSet, check_rule_set, evaluate, explain
from segmentation.tags import TagSet, evaluate_tags

RULE_SET_NAMES = ("tier", "layer", "tags")
DEFAULT_VERSION = 1  # the built-in defaults count as version 1; the first stored change is version 2
SEGMENT_TYPES = {
    "customer_id": "int", "tier": "text", "tier_since": "timestamp", "tier_matched": "bool", "tier_version": "int",
    "tier_pending": "text", "tier_pending_runs": "int", "tier_pending_as_of": "timestamp",
    "layer": "text", "layer_since": "timestamp", "layer_matched": "bool", "layer_version": "int",
    "layer_pending": "text", "layer_pending_runs": "int", "layer_pending_as_of": "timestamp",
    "r_score": "int", "f_score": "int", "m_score": "int", "rfm": "text", "first_seen_at": "timestamp",
}
_POLARS = {"int": pl.Int64, "text": pl.String, "timestamp": pl.Datetime("us", "UTC"), "bool": pl.Boolean}
SEGMENT_SCHEMA = {c: _POLARS[t] for c, t in SEGMENT_TYPES.items()}
TRANSITION_TYPES = {"run_id": "int", "customer_id": "int", "dimension": "text", "tag": "text", "from_value": "text",
                    "to_value": "text", "at": "timestamp", "version": "int", "why": "json"}


# ---------------------------------------------------------------- rule sets


def _parse(name: str, body: dict[str, Any]) -> RuleSet | TagSet:
    return TagSet.model_validate(body) if name == "tags" else RuleSet.model_validate(body)


def current_rule_set(session: Session, name: str) -> tuple[int, RuleSet | TagSet]:
    """The rule set in force and its version (the built-in default until one is stored)."""
    if name not in RULE_SET_NAMES:
        raise NotFound(f"no rule set '{name}'; there are {', '.join(RULE_SET_NAMES)}")
    stored = session.exec(select(SegmentRuleSet).where(SegmentRuleSet.name == name)
                          .order_by(SegmentRuleSet.version.desc()).limit(1)).first()
    if stored is None:
        return DEFAULT_VERSION, DEFAULTS[name]
    return stored.version, _parse(name, stored.body)


def rule_set_at(session: Session, name: str, version: int) -> RuleSet | TagSet:
    """A given version of a rule set (the one an assignment was made with)."""
    if version == DEFAULT_VERSION:
        return DEFAULTS[name]
    stored = session.exec(select(SegmentRuleSet).where(SegmentRuleSet.name == name,
                                                       SegmentRuleSet.version == version)).first()
    if stored is None:
        raise NotFound(f"rule set '{name}' has no version {version}")
    return _parse(name, stored.body)


def _metric_kinds() -> dict[str, str]:
    return {name: kind for name, (kind, _) in METRICS.items()}


def validate_rule_set(name: str, body: dict[str, Any]) -> RuleSet | TagSet:
    """Parse and check a rule set; InvalidInput names the offending rule and field."""
    try:
        parsed = _parse(name, body)
    except ValidationError as invalid:
        raise InvalidInput(f"rule set '{name}' is not valid", errors=[
            {"field": ".".join(str(p) for p in e["loc"]), "reason": e["msg"]} for e in invalid.errors()]) from None
    kinds = _metric_kinds()
    if isinstance(parsed, RuleSet):
        if name == "tier":
            kinds.pop("tier")  # the tier cannot depend on itself
        _check(parsed, kinds, "rules[{rule}].{field}")
    else:
        for index, tag in enumerate(parsed.tags):
            for part in ("add", "remove"):
                conditions = getattr(tag, part) or {}
                _check(RuleSet(rules=[{"name": tag.name, "when": conditions}]), kinds,
                       f"tags[{index}].{part}" + ".{field}")
    return parsed


def _check(rule_set: RuleSet, kinds: dict[str, str], where: str) -> None:
    try:
        check_rule_set(rule_set, kinds)
    except RuleProblem as problem:
        field = where.format(rule=problem.rule, field=problem.field)
        if field.startswith("tags["):  # a tag's add/remove maps metrics directly, without a `when`
            field = field.replace(".when.", ".").replace(".when", "")
        raise InvalidInput("the rule set is not usable", errors=[{"field": field, "reason": problem.reason}]) from None


def put_rule_set(session: Session, ctx: Context, name: str, body: dict[str, Any], actor: str) -> tuple[int, Any]:
    """Store a new version of a rule set after validating it; audited with the previous version."""
    version, before = current_rule_set(session, name)
    parsed = validate_rule_set(name, body)
    stored = SegmentRuleSet(name=name, version=version + 1, body=parsed.model_dump(mode="json", by_alias=True,
                                                                                    exclude_none=True),
                            created_at=ctx.clock.now(), created_by=actor)
    session.add(stored)
    audit.record(session, actor=actor, action="segmentation.rule_set.put", entity="segment_rule_set",
                 entity_id=f"{name}@{stored.version}", at=stored.created_at,
                 before={"version": version, **before.model_dump(mode="json", by_alias=True, exclude_none=True)},
                 after={"version": stored.version, **stored.body})
    session.flush()
    return stored.version, parsed


# ---------------------------------------------------------------- runs


def default_as_of(now: datetime) -> datetime:
    """Midnight UTC of the clock's day: a daily run sees every order of the days before."""
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


def _previous_state(reader: ColumnarReader) -> pl.DataFrame:
    columns = ", ".join(f"s.{c}" for c in SEGMENT_TYPES)
    return reader.read(f"SELECT {columns} FROM customer_segment s", {}, SEGMENT_SCHEMA)


def _dimension_state(previous: pl.DataFrame, dimension: str) -> pl.DataFrame:
    return previous.select(
        "customer_id", pl.col(dimension).alias("value"), pl.col(f"{dimension}_since").alias("since"),
        pl.col(f"{dimension}_pending").alias("pending"),
        pl.col(f"{dimension}_pending_runs").cast(pl.Int32).alias("pending_runs"),
        pl.col(f"{dimension}_pending_as_of").alias("pending_as_of")).cast(STATE_SCHEMA)


def _assign(metrics: pl.DataFrame, previous: pl.DataFrame, dimension: str, rule_set: RuleSet, version: int,
            as_of: datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Candidate values, settled through hysteresis: (state columns of this dimension, changes)."""
    candidate = evaluate(metrics, rule_set)
    settled = settle(_dimension_state(previous, dimension), candidate.select("customer_id", "value", "deep"),
                     as_of, confirm_runs=rule_set.confirm_runs)
    old_version = previous.select("customer_id", pl.col(f"{dimension}_version").alias("_old_version"),
                                  pl.col(f"{dimension}_matched").alias("_old_matched"))
    settled = settled.join(candidate.select("customer_id", "value", "matched").rename({"value": "_candidate"}),
                           on="customer_id").join(old_version, on="customer_id", how="left")
    adopted = pl.col("changed") | pl.col("previous_value").is_null()
    state = settled.select(
        "customer_id", pl.col("value").alias(dimension), pl.col("since").alias(f"{dimension}_since"),
        # Whether the assigned value came from a matching rule, and under which rule-set version.
        pl.when(adopted | (pl.col("value") == pl.col("_candidate"))).then(pl.col("matched"))
        .otherwise(pl.col("_old_matched")).alias(f"{dimension}_matched"),
        pl.when(adopted | (pl.col("value") == pl.col("_candidate"))).then(pl.lit(version, pl.Int64))
        .otherwise(pl.col("_old_version")).alias(f"{dimension}_version"),
        pl.col("pending").alias(f"{dimension}_pending"), pl.col("pending_runs").alias(f"{dimension}_pending_runs"),
        pl.col("pending_as_of").alias(f"{dimension}_pending_as_of"))
    changes = settled.filter("changed").select("customer_id", pl.lit(dimension).alias("dimension"),
                                               pl.lit(None, pl.String).alias("tag"),
                                               pl.col("previous_value").alias("from_value"),
                                               pl.col("value").alias("to_value"))
    return state, changes


def _read_inputs(session: Session, as_of: datetime, params: MetricParams, top_tier: str,
                 shared: SharedFrames | None = None) -> dict[str, pl.DataFrame]:
    """Everything a run reads: the customer state (one row per customer, not the history) and the current
    assignments through one columnar attachment, then one small indexed read."""
    shared = shared or SharedFrames()
    with columnar_reader(session) as reader:
        inputs = {
            "customers": shared.whole("customers", lambda: customers_frame(session, reader=reader)),
            "state": shared.whole("state", lambda: state_frame(session, reader=reader)),
            "previous": _previous_state(reader),
            "current_tags": reader.read("SELECT t.customer_id, t.tag, t.since FROM customer_tag t", {},
                                        {"customer_id": pl.Int64, "tag": pl.String,
                                         "since": pl.Datetime("us", "UTC")}),
        }
    # Few rows of a table that grows every day: the database's own planner and index serve it (the columnar
    # scanner would read the whole table). Last, so this session's transaction starts after the scans.
    inputs["left_vip"] = left_top_tier(session, top_tier, as_of)
    return inputs


def left_top_tier(session: Session, top_tier: str, as_of: datetime, customer_id: int | None = None) -> pl.DataFrame:
    """When customers (or one customer) left the top tier before `as_of`: few rows of a growing table, so the
    database's own planner and index serve it."""
    one = "AND t.customer_id = :customer_id" if customer_id is not None else ""
    params = {"top": top_tier, "as_of": as_of} | ({"customer_id": customer_id} if customer_id is not None else {})
    return read_frame(session, "SELECT t.customer_id, t.at FROM segment_transition t WHERE t.dimension = 'tier' "
                      f"AND t.from_value = :top AND t.at < :as_of {one}", params,
                      {"customer_id": pl.Int64, "left_at": pl.Datetime("us", "UTC")}, same_connection=True,
                      small=customer_id is not None)


def bring_state_to(session: Session, ctx: Context, as_of: datetime, params: MetricParams) -> dict[str, Any]:
    """Move the customer state's clock to the run's as-of (only customers whose windows moved are recomputed),
    committed on a session of its own so the columnar reads that follow see it; the first time, rebuild it."""
    windows = params
    with Session(session.get_bind(), info=dict(session.info)) as writer:  # the caller's reading mode, too
        if crm_state.needs_rebuild(crm_state.clock(writer)):  # upgraded: the state is derived from the history once
            done = {"rebuilt": crm_state.rebuild(writer, ctx, as_of, windows, uncommitted=False)}
        else:
            done = crm_state.advance(writer, ctx, as_of, windows)
        writer.commit()
    return done


SEGMENTATION_PHASES = 6  # state, read, metrics, rules, write, value steps: what `progress` hears


def run_segmentation(session: Session, ctx: Context, as_of: datetime | None = None, *,
                     shared: SharedFrames | None = None, progress: Callable[[str], None] | None = None) -> SegmentRun:
    """Compute tiers, layers, RFM scores and tags as of a moment and write only what changed (`shared`: bulk
    frames a job run keeps for its later steps; `progress` hears each finished phase)."""
    started = ctx.clock.now()
    as_of = as_of or default_as_of(started)
    timings = PhaseTimings(progress)
    tick = time.perf_counter()
    # Rule sets come through a short session of their own so that this session starts its transaction
    # only after the bulk reads: on SQLite a read snapshot older than the DuckDB scan could not write.
    with Session(session.get_bind()) as reader:
        tier_version, tier_rules = current_rule_set(reader, "tier")
        layer_version, layer_rules = current_rule_set(reader, "layer")
        tags_version, tag_set = current_rule_set(reader, "tags")
    params = MetricParams(window_days=tier_rules.window_days)
    moved = bring_state_to(session, ctx, as_of, params)
    timings["state_s"] = round(time.perf_counter() - tick, 3)
    tick = time.perf_counter()
    inputs = _read_inputs(session, as_of, params, tier_rules.rules[0].name, shared)
    previous, current_tags = inputs["previous"], inputs["current_tags"]
    timings["read_s"] = round(time.perf_counter() - tick, 3)

    tick = time.perf_counter()
    metrics = metrics_from_state(inputs["customers"], inputs["state"], as_of, params, inputs["left_vip"])
    timings["metrics_s"] = round(time.perf_counter() - tick, 3)
    tick = time.perf_counter()
    tier_state, tier_changes = _assign(metrics, previous, "tier", tier_rules, tier_version, as_of)
    layer_state, layer_changes = _assign(metrics, previous, "layer", layer_rules, layer_version, as_of)
    scores = metrics.select("customer_id", pl.col("r_score").cast(pl.Int64), pl.col("f_score").cast(pl.Int64),
                            pl.col("m_score").cast(pl.Int64), rfm_cell(metrics).alias("rfm"))
    state = (tier_state.join(layer_state, on="customer_id").join(scores, on="customer_id")
             .join(previous.select("customer_id", "first_seen_at"), on="customer_id", how="left")
             .with_columns(pl.col("first_seen_at").fill_null(as_of))).select(list(SEGMENT_TYPES)).cast(SEGMENT_SCHEMA)
    changed_state = state.join(previous, on=list(SEGMENT_TYPES), how="anti", nulls_equal=True)
    with_tier = metrics.join(state.select("customer_id", "tier"), on="customer_id")
    added, removed = evaluate_tags(with_tier, current_tags, as_of, tag_set)
    timings["rules_s"] = round(time.perf_counter() - tick, 3)

    tick = time.perf_counter()
    run = SegmentRun(as_of=as_of, started_at=started, customers=len(state), versions={
        "tier": tier_version, "layer": layer_version, "tags": tags_version})
    session.add(run)
    session.flush()
    why = metrics.select("customer_id", pl.struct("recency_days", "frequency", "monetary", "value_percentile",
                                                  "days_since_last_login", "low_activity_months")
                         .struct.json_encode().alias("why"))
    moves = pl.concat([
        pl.concat([tier_changes.with_columns(version=pl.lit(tier_version)),
                   layer_changes.with_columns(version=pl.lit(layer_version))]).join(why, on="customer_id", how="left"),
        added.select("customer_id", pl.lit("tag").alias("dimension"), "tag", pl.lit(None, pl.String).alias("from_value"),
                     pl.col("tag").alias("to_value"), pl.lit(tags_version).alias("version"), "why"),
        removed.select("customer_id", pl.lit("tag").alias("dimension"), "tag", pl.col("tag").alias("from_value"),
                       pl.lit(None, pl.String).alias("to_value"), pl.lit(tags_version).alias("version"), "why"),
    ], how="diagonal_relaxed").with_columns(run_id=pl.lit(run.id), at=pl.lit(as_of))
    _write_changes(session, changed_state, previous, moves, added, removed, as_of, tags_version)
    record_entries(session, moves, ctx.clock.now())
    timings["write_s"] = round(time.perf_counter() - tick, 3)
    tick = time.perf_counter()
    run.population = _write_value_steps(session, metrics, run.id, bool(inputs["state"]["last_event_at"]
                                                                      .is_not_null().any()))
    timings["value_steps_s"] = round(time.perf_counter() - tick, 3)

    tags_after = (current_tags.select("customer_id", "tag")
                  .join(removed.select("customer_id", "tag"), on=["customer_id", "tag"], how="anti")
                  .vstack(added.select("customer_id", "tag")))
    run.distribution = {
        "tier": _shares(state["tier"], tier_rules), "layer": _shares(state["layer"], layer_rules),
        "tags": dict(tags_after.group_by("tag").len().sort("tag").iter_rows()),
        "rfm_cells": state["rfm"].drop_nulls().n_unique(),
        "fallback": {"tier": int((~state["tier_matched"]).sum()), "layer": int((~state["layer_matched"]).sum())},
    }
    run.changes = {
        "tier": _move_counts(tier_changes), "layer": _move_counts(layer_changes),
        "tags_added": dict(added.group_by("tag").len().sort("tag").iter_rows()),
        "tags_removed": dict(removed.group_by("tag").len().sort("tag").iter_rows()),
        "state_rows_written": len(changed_state),
        "customer_state": moved,
    }
    run.timings = timings
    run.finished_at = ctx.clock.now()
    session.add(run)
    session.flush()
    return run


def _write_value_steps(session: Session, metrics: pl.DataFrame, run_id: int, has_events: bool) -> dict[str, Any]:
    """Store the run's spend distribution over buyers (one row per distinct window spend, not per customer) and
    drop the older runs'; returns what a profile needs of the population."""
    buyers = metrics.filter(pl.col("frequency") > 0)
    steps = (buyers.group_by("monetary").len().sort("monetary")
             .select("monetary", pl.col("len").cum_sum().alias("buyers_at_or_below"))
             .with_columns(run_id=pl.lit(run_id, pl.Int64)))
    session.connection().execute(text("DELETE FROM segment_value_step WHERE run_id <> :run_id"), {"run_id": run_id})
    insert_frame(session, "segment_value_step", steps, {"run_id": "int", "monetary": "float",
                                                        "buyers_at_or_below": "int"})
    return {"buyers": len(buyers), "has_events": has_events}


class RunBrief(NamedTuple):
    """What a profile needs of the newest finished run (not its distributions)."""

    id: int
    as_of: datetime
    population: dict[str, Any]


def newest_run_brief(session: Session) -> RunBrief | None:
    """The newest finished run's id, as-of and population figures."""
    found = session.exec(_newest_finished(select(SegmentRun.id, SegmentRun.as_of, SegmentRun.population))).first()
    return RunBrief(*found) if found is not None else None


def customer_metrics(session: Session, customer_id: int, run: RunBrief | None, as_of: datetime,
                     rules: RuleSet) -> dict[str, Any]:
    """One customer's metrics as of `as_of` (the newest run's day), from their customer-state row (writes since
    included), placed among the run's population: value percentile from its spend steps, R/F/M scores as the run
    gave them."""
    params = MetricParams(window_days=rules.window_days)
    clock = crm_state.clock(session)
    windows = crm_state.windows_of(clock) if clock is not None else None
    if clock is not None and clock.as_of == as_of and windows.window_days == params.window_days:
        state = crm_state.state_frame(session, customer_id=customer_id)
    else:  # the state stands at another day or window: this customer's buckets give it as of the run's day
        state = crm_state.customers_as_of(session, pl.Series([customer_id], dtype=pl.Int64), as_of, params)
    left_vip = left_top_tier(session, rules.rules[0].name, as_of, customer_id)
    population = run.population if run is not None else {}
    metrics = metrics_from_state(customers_frame(session, customer_id=customer_id), state, as_of, params, left_vip,
                                 has_events=population.get("has_events"))
    values = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in metrics.row(0, named=True).items()}
    values["value_percentile"] = _value_percentile(session, run, values["frequency"], values["monetary"])
    segment = session.get(CustomerSegment, customer_id)
    if segment is not None:
        values.update(r_score=segment.r_score, f_score=segment.f_score, m_score=segment.m_score)
    return values


def _value_percentile(session: Session, run: RunBrief | None, frequency: int, monetary: float) -> float:
    """Share (0-100) of the run's buyers who spent at most this much (0 for a customer who bought nothing)."""
    buyers = (run.population if run is not None else {}).get("buyers")
    if not frequency or not buyers:
        return 0.0
    found = driver_rows(session, "SELECT max(buyers_at_or_below) FROM segment_value_step WHERE run_id = :run_id "
                        "AND monetary <= :monetary", {"run_id": run.id, "monetary": monetary})
    return round((found[0][0] or 0) / buyers * 100, 2)


def _shares(values: pl.Series, rule_set: RuleSet) -> dict[str, Any]:
    counts = dict(values.value_counts().iter_rows())
    total = max(len(values), 1)
    expected = {r.name: r.expected_share for r in rule_set.rules}
    return {name: {"customers": counts.get(name, 0), "share": round(counts.get(name, 0) / total, 4),
                   "expected_share": expected.get(name)} for name in rule_set.values()}


def _move_counts(changes: pl.DataFrame) -> dict[str, int]:
    grouped = changes.group_by("from_value", "to_value").len().sort("from_value", "to_value")
    return {f"{a}->{b}": n for a, b, n in grouped.iter_rows()}


def _write_changes(session: Session, changed_state: pl.DataFrame, previous: pl.DataFrame, moves: pl.DataFrame,
                   added: pl.DataFrame, removed: pl.DataFrame, as_of: datetime, tags_version: int) -> None:
    """Write changed state rows, the transitions and the tag changes (set-based).

    Rows that are new to their table go straight in (COPY on PostgreSQL); only state rows of customers
    seen before pass through a staging table to be merged, which keeps a first run on 1M customers cheap.
    """
    known = changed_state.join(previous.select("customer_id"), on="customer_id", how="semi")
    fill_empty_table(session, "customer_segment",
                     changed_state.join(previous.select("customer_id"), on="customer_id", how="anti"), SEGMENT_TYPES)
    if not known.is_empty():
        stage_frame(session, "stage_segment", known, SEGMENT_TYPES)
        merge_staged(session, table="customer_segment", stage="stage_segment", key=["customer_id"],
                     columns=list(SEGMENT_TYPES), compare=[c for c in SEGMENT_TYPES if c != "customer_id"],
                     params={})
    fill_empty_table(session, "segment_transition", moves, TRANSITION_TYPES)
    write_tag_changes(session, added, removed, as_of, tags_version)


def record_entries(session: Session, moves: pl.DataFrame, now: datetime) -> int:
    """Entries into a tier, layer or tag as activity (journeys may start on them)."""
    return activity.record(session, moves.filter(pl.col("to_value").is_not_null()).select(
        "customer_id", kind=pl.col("dimension"), name=pl.col("to_value"), occurred_at=pl.col("at")), now)


def write_tag_changes(session: Session, added: pl.DataFrame, removed: pl.DataFrame, at: datetime,
                      tags_version: int) -> None:
    """Delete the removed tags and insert the added ones (set-based)."""
    if not removed.is_empty():
        stage_frame(session, "stage_tag_removed", removed, {"customer_id": "int", "tag": "text"})
        session.connection().execute(text(
            # A row-value IN lets SQLite probe the primary key per staged row; a correlated EXISTS made it
            # scan the staging table once per stored tag (18 s for 1.1k removals among 565k tags).
            "DELETE FROM customer_tag WHERE (customer_id, tag) IN (SELECT customer_id, tag FROM stage_tag_removed)"))
    fill_empty_table(session, "customer_tag", added.with_columns(since=pl.lit(at), version=pl.lit(tags_version)),
                 {"customer_id": "int", "tag": "text", "since": "timestamp", "why": "json", "version": "int"})


# ---------------------------------------------------------------- reading


def _newest_finished(query: Any) -> Any:
    """Narrow a select over segment_run to the newest finished run."""
    return query.where(SegmentRun.finished_at.is_not(None)).order_by(SegmentRun.id.desc()).limit(1)


def latest_run(session: Session) -> SegmentRun | None:
    """The newest finished run."""
    return session.exec(_newest_finished(select(SegmentRun))).first()


def summary(session: Session) -> dict[str, Any]:
    """Distribution per tier, layer and tag of the newest run, against expected shares, and its moves."""
    run = latest_run(session)
    if run is None:
        raise NotFound("no segmentation run yet: run `crm segment run` (or wait for the daily job)")
    return summary_of(run)


def summary_of(run: SegmentRun) -> dict[str, Any]:
    """A run as the summary shows it."""
    return {"run_id": run.id, "as_of": run.as_of, "finished_at": run.finished_at, "customers": run.customers,
            "versions": run.versions, "distribution": run.distribution, "moves_since_previous_run": run.changes,
            "timings": run.timings}


def history(session: Session, start: datetime | None, end: datetime | None) -> list[dict[str, Any]]:
    """Tier and layer distribution of every run with start <= as_of < end, oldest first."""
    query = select(SegmentRun).where(SegmentRun.finished_at.is_not(None)).order_by(SegmentRun.as_of, SegmentRun.id)
    if start is not None:
        query = query.where(SegmentRun.as_of >= start)
    if end is not None:
        query = query.where(SegmentRun.as_of < end)
    return [{"run_id": r.id, "as_of": r.as_of, "customers": r.customers,
             "tier": {k: v["customers"] for k, v in r.distribution.get("tier", {}).items()},
             "layer": {k: v["customers"] for k, v in r.distribution.get("layer", {}).items()},
             "tags": r.distribution.get("tags", {})} for r in session.exec(query)]


def customer_ids_where(session: Session, customer_id: Any, *, tier: str | None = None, layer: str | None = None,
                       tag: str | None = None, rfm: str | None = None) -> Any:
    """A SQL condition on the given customer-id column for the customer-list filters (None without a filter)."""
    from sqlalchemy import and_, exists

    parts = []
    segment = [getattr(CustomerSegment, name) == value for name, value in
               (("tier", tier), ("layer", layer), ("rfm", rfm)) if value is not None]
    if segment:
        parts.append(exists().where(CustomerSegment.customer_id == customer_id, *segment))
    if tag is not None:
        parts.append(exists().where(CustomerTag.customer_id == customer_id, CustomerTag.tag == tag))
    return and_(*parts) if parts else None


def segment_section(request: ProfileRequest) -> dict[str, Any] | None:
    """The profile's segment section: tier and why, R/F/M against thresholds, scores, layer, tags, history."""
    session = request.session
    row = session.get(CustomerSegment, request.customer_id)
    if row is None:
        return None
    run = newest_run_brief(session)
    as_of = run.as_of if run is not None else row.tier_since
    tier_rules = rule_set_at(session, "tier", row.tier_version)
    layer_rules = rule_set_at(session, "layer", row.layer_version)
    values = customer_metrics(session, request.customer_id, run, as_of, tier_rules)
    # Driver reads: the profile is the hot read, and these statements never change.
    one = {"customer_id": request.customer_id}
    tags = driver_rows(session, "SELECT tag, since, why, version FROM customer_tag WHERE customer_id = :customer_id "
                                "ORDER BY tag", one)
    moves = [Move(i, d, f, t, driver_time(at)) for i, d, f, t, at in driver_rows(
        session, "SELECT id, dimension, from_value, to_value, at FROM segment_transition "
                 "WHERE customer_id = :customer_id ORDER BY at DESC, id DESC LIMIT 50", one)]
    tier_why = explain(values, tier_rules)
    if not row.tier_matched and tier_why.get("matched") is None:
        tier_why["note"] = (f"no rule matched; the fallback '{tier_rules.fallback}' gave '{row.tier}'"
                            + (" (the rule with the most conditions met)" if tier_rules.fallback == "nearest" else ""))
    return {
        "as_of": as_of,
        "tier": row.tier, "tier_since": row.tier_since, "tier_rule_version": row.tier_version,
        "tier_matched_a_rule": row.tier_matched, "tier_pending": row.tier_pending,
        "tier_pending_runs": row.tier_pending_runs,
        "recency_days": values.get("recency_days"), "frequency": values.get("frequency"),
        "monetary": values.get("monetary"), "window_days": tier_rules.window_days,
        "why": tier_why,
        "scores": {"r": row.r_score, "f": row.f_score, "m": row.m_score, "rfm": row.rfm},
        "layer": row.layer, "layer_since": row.layer_since, "layer_rule_version": row.layer_version,
        "layer_why": explain(values, layer_rules),
        "tags": [{"tag": tag, "since": driver_time(since), "why": driver_json(why), "rule_version": version}
                 for tag, since, why, version in tags],
        "history": _history_of(row, moves),
    }


def segment_export(request: ProfileRequest) -> dict[str, Any] | None:
    """A customer's segment state, the metric values behind it, tags and every recorded move, for a data export."""
    session = request.session
    row = session.get(CustomerSegment, request.customer_id)
    tags = session.exec(select(CustomerTag).where(CustomerTag.customer_id == request.customer_id)).all()
    moves = session.exec(select(SegmentTransition).where(SegmentTransition.customer_id == request.customer_id)
                         .order_by(SegmentTransition.at)).all()
    run = newest_run_brief(session)
    values = (customer_metrics(session, request.customer_id, run, run.as_of if run else row.tier_since,
                               rule_set_at(session, "tier", row.tier_version)) if row else None)
    return {"segment": row.model_dump(exclude={"customer_id"}) if row else None,
            "metric_values": values,
            "tags": [t.model_dump(exclude={"customer_id"}) for t in tags],
            "moves": [m.model_dump(exclude={"customer_id", "id"}) for m in moves]}


class Move(NamedTuple):
    """What a profile's tier history needs of one transition."""

    id: int
    dimension: str
    from_value: str | None
    to_value: str | None
    at: datetime


def _history_of(row: CustomerSegment, moves: list[Move]) -> list[dict[str, Any]]:
    """Tier spells, newest first: value, entered, left (null while current), previous value."""
    tier_moves = sorted((m for m in moves if m.dimension == "tier"), key=lambda m: (m.at, m.id))
    spells, entered = [], row.first_seen_at
    value = tier_moves[0].from_value if tier_moves else row.tier
    previous = None
    for move in tier_moves:
        spells.append({"tier": value, "entered": entered, "left": move.at, "previous": previous})
        previous, value, entered = value, move.to_value, move.at
    spells.append({"tier": value, "entered": entered, "left": None, "previous": previous})
    return list(reversed(spells))


SEGMENT_READ_SCHEMA = {"customer_id": pl.Int64, "tier": pl.String, "layer": pl.String, "r_score": pl.Int64,
                       "f_score": pl.Int64, "m_score": pl.Int64}


def segments_frame(session: Session, *, customer_id: int | None = None, customer_ids: list[int] | None = None,
                   reader: ColumnarReader | None = None) -> pl.DataFrame:
    """Current tier, layer and R/F/M scores per customer (all, one, or a few named by id)."""
    one, params, small = customer_clause("s.customer_id", customer_id, customer_ids)
    query = f"SELECT s.customer_id, s.tier, s.layer, s.r_score, s.f_score, s.m_score FROM customer_segment s {one}"
    return read_columns(session, reader, query, params, SEGMENT_READ_SCHEMA, one_customer=small)


def tags_frame(session: Session, *, customer_id: int | None = None, customer_ids: list[int] | None = None,
               reader: ColumnarReader | None = None) -> pl.DataFrame:
    """Tags customers carry now (customer_id, tag): all customers', one's, or a few named by id."""
    one, params, small = customer_clause("t.customer_id", customer_id, customer_ids)
    query = f"SELECT t.customer_id, t.tag FROM customer_tag t {one}"
    return read_columns(session, reader, query, params, {"customer_id": pl.Int64, "tag": pl.String},
                        one_customer=small)


def entered_between(session: Session, dimension: str, value: str, start: datetime, end: datetime, *,
                    customer_id: int | None = None) -> pl.DataFrame:
    """Customers who entered a tier, layer or tag (dimension) with start <= at < end."""
    column = "t.tag" if dimension == "tag" else "t.to_value"
    one = "AND t.customer_id = :customer_id" if customer_id is not None else ""
    query = (f"SELECT DISTINCT t.customer_id FROM segment_transition t WHERE t.dimension = :dimension "
             f"AND {column} = :value AND t.to_value IS NOT NULL AND t.at >= :start AND t.at < :end {one}")
    params = {"dimension": dimension, "value": value, "start": start, "end": end} | (
        {"customer_id": customer_id} if customer_id is not None else {})
    return read_frame(session, query, params, {"customer_id": pl.Int64}, same_connection=True)


def set_journey_tags(session: Session, customer_id: int, add: list[str], remove: list[str], at: datetime,
                     why: dict[str, Any]) -> None:
    """Tags a journey sets or clears (names the tag rules do not compute, so the nightly run leaves them be)."""
    for tag in add:
        session.connection().execute(text(
            "INSERT INTO customer_tag (customer_id, tag, since, why, version) VALUES (:c, :t, :at, :why, 0) "
            "ON CONFLICT DO NOTHING"), {"c": customer_id, "t": tag, "at": at, "why": json.dumps(why)})
    for tag in remove:
        session.connection().execute(text("DELETE FROM customer_tag WHERE customer_id = :c AND tag = :t"),
                                     {"c": customer_id, "t": tag})
