"""Running journeys: entries from the activity feed and from dates, and due enrollments advanced under the rails.

Each pass runs in the caller's transaction. Activity is claimed by deleting it, enrollments by locking them
(`FOR UPDATE SKIP LOCKED` on PostgreSQL), and a pass writes its enrollments' new positions, the steps taken (unique
per enrollment and sequence number) and its messages (the outbox's unique key) before it commits: a worker killed
at any moment leaves either all of a pass or none of it, and another worker takes the same rows again.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta
from typing import Any

import polars as pl
from sqlalchemy import func, text
from sqlalchemy import select as sa_select
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from campaigns.authoring.spec import CampaignSpec, ChannelStep, Schedule
from campaigns.journeys.definitions import list_journeys, step_campaign, version_spec
from campaigns.journeys.engine import Facts, Position, advance, after_send, confirm_entry
from campaigns.journeys.spec import DATE_TRIGGERS, JourneySpec
from campaigns.models import Journey, JourneyEnrollment, journey_sender
from campaigns.planning.guardrails import guard_rails
from campaigns.planning.planner import (
    GuardRails,
    PlanInputs,
    audience,
    contact_column,
    in_global_control,
    plan_sends,
)
from campaigns.planning.plans import MESSAGE_TYPES, load_inputs, offer_json, preempt, uplift_frame
from churn.service import scores_frame
from crm import activity
from crm.service import (
    attributes_of,
    birthdays_on,
    contactability_frame,
    first_order_ids,
    latest_events_since,
    latest_orders_since,
    purchase_gaps,
    set_attributes,
    signed_up_on,
)
from kit import metrics
from kit.bulkwrite import insert_frame, stage_frame
from kit.channels import CHANNELS
from kit.clock import ensure_utc
from kit.columnar import read_frame
from kit.context import Context
from kit.db import is_postgres, session_scope
from kit.locks import lock_for_transaction
from kit.timezones import local_date_of
from segmentation.service import segments_frame, set_journey_tags, tags_frame

log = logging.getLogger(__name__)

LIVE = ("pending", "active")
ENDED = ("holdout", "converted", "completed", "exited", "cancelled")
UTC_TYPE = pl.Datetime("us", "UTC")
ENROLLMENT_TYPES = {"journey_id": "int", "version": "int", "customer_id": "int", "status": "text", "step_id": "text",
                    "seq": "int", "wake_at": "timestamp", "entry_key": "text", "entered_at": "timestamp",
                    "context": "json", "updated_at": "timestamp"}
MOVE_TYPES = {"id": "int", "status": "text", "step_id": "text", "seq": "int", "wake_at": "timestamp",
              "ended_at": "timestamp", "end_reason": "text", "context": "json", "updated_at": "timestamp"}
STEP_TYPES = {"enrollment_id": "int", "journey_id": "int", "seq": "int", "step_id": "text", "kind": "text",
              "outcome": "text", "reason": "text", "at": "timestamp"}


class ActiveJourneys:
    """The active journeys and the definitions of every version enrollments run on (read once per pass)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.journeys = {j.id: (j, JourneySpec.model_validate(j.spec)) for j in list_journeys(session, "active")}
        self._versions: dict[tuple[int, int], JourneySpec] = {}

    def spec(self, journey_id: int, version: int) -> JourneySpec:
        """The definition of one version."""
        key = (journey_id, version)
        if key not in self._versions:
            current = self.journeys.get(journey_id)
            self._versions[key] = current[1] if current and current[0].version == version else \
                version_spec(self.session, journey_id, version)
        return self._versions[key]


# ---------------------------------------------------------------- entry


def _entry_key(row: dict[str, Any]) -> str:
    kind = row["kind"]
    if kind in ("event", "order"):
        return f"{kind}:{row['ref_id']}"
    if kind == "signup":
        return "signup"
    return f"{kind}:{row['name'] or ''}:{row['ref_id'] or ''}:{ensure_utc(row['occurred_at']).isoformat()}"[:80]


def _matches(spec: JourneySpec, row: dict[str, Any], firsts: set[int]) -> bool:
    trigger = spec.entry.trigger
    kind = trigger.kind
    if kind == "event":
        if row["kind"] != "event" or row["name"] != trigger.event:
            return False
        properties = json.loads(row["properties"]) if row["properties"] else {}
        return all(f.holds(properties if isinstance(properties, dict) else {}) for f in trigger.where)
    if kind in ("order", "first_order"):
        return row["kind"] == "order" and row["name"] != "cancelled" and (kind == "order" or row["ref_id"] in firsts)
    if kind in ("signup", "refund", "at_risk"):
        return row["kind"] == kind
    dimension = kind.removeprefix("entered_")
    return row["kind"] == dimension and row["name"] == trigger.value


def enter_from_activity(session: Session, ctx: Context, *, limit: int = 5000,
                        journeys: ActiveJourneys | None = None) -> dict[str, int]:
    """Claim fresh activity: orders end enrollments whose goal they meet, events wake waits, and every matching
    trigger enrolls the customer (audience, re-entry rule and holdout decided here or at confirmation)."""
    claimed = activity.claim(session, limit)
    if claimed.is_empty():
        return {"activity": 0, "enrolled": 0, "converted": 0, "woken": 0}
    now = ctx.clock.now()
    journeys = journeys or ActiveJourneys(session)
    rows = claimed.to_dicts()
    firsts = first_order_ids(session, [r["ref_id"] for r in rows if r["kind"] == "order"])
    converted = _convert_on_orders(session, claimed, journeys, now)
    woken = _wake_waiting(session, claimed, now)
    enrolled = 0
    for journey_id, (journey, spec) in journeys.journeys.items():
        if spec.entry.trigger.kind in DATE_TRIGGERS:
            continue
        entries = [(r["customer_id"], _entry_key(r), ensure_utc(r["occurred_at"]), r["properties"])
                   for r in rows if _matches(spec, r, firsts)]
        if entries:
            frame = pl.DataFrame(entries, schema={"customer_id": pl.Int64, "entry_key": pl.String,
                                                  "entered_at": UTC_TYPE, "properties": pl.String}, orient="row")
            enrolled += enroll(session, ctx, journey_id, journey.version, spec, frame)
    return {"activity": claimed.height, "enrolled": enrolled, "converted": converted, "woken": woken}


def _in_clause(values: list[int]) -> str:
    return ", ".join(str(int(v)) for v in values) or "NULL"


def _convert_on_orders(session: Session, claimed: pl.DataFrame, journeys: ActiveJourneys, now: datetime) -> int:
    """An order ends, as converted, the live enrollments of journeys with a goal that it meets (entered before it)."""
    orders = claimed.filter((pl.col("kind") == "order") & (pl.col("name") != "cancelled"))
    goals = [journey_id for journey_id, (_, spec) in journeys.journeys.items() if spec.goal.kind != "none"]
    if orders.is_empty() or not goals:
        return 0
    changed = 0
    for customer_id, ordered_at in orders.group_by("customer_id").agg(pl.col("occurred_at").max()).iter_rows():
        result = session.connection().execute(text(
            "UPDATE journey_enrollment SET status = 'converted', end_reason = 'goal', ended_at = :now, "
            "wake_at = NULL, step_id = NULL, updated_at = :now WHERE customer_id = :customer AND status = 'active' "
            f"AND entered_at < :ordered AND journey_id IN ({_in_clause(goals)})"),
            {"now": now, "customer": customer_id, "ordered": ordered_at})
        changed += result.rowcount or 0
    return changed


def _wake_waiting(session: Session, claimed: pl.DataFrame, now: datetime) -> int:
    """Enrollments waiting for an event (or an order) wake now when their customer has one; the engine decides."""
    customers = claimed["customer_id"].unique().to_list()
    waits_for_event = ("(context -> 'wait' ->> 'until_event') = 'true'" if is_postgres(session)
                       else "json_extract(context, '$.wait.until_event') = 1")
    result = session.connection().execute(text(
        "UPDATE journey_enrollment SET wake_at = :now WHERE status = 'active' AND wake_at > :now "
        f"AND customer_id IN ({_in_clause(customers)}) AND {waits_for_event}"), {"now": now})
    return result.rowcount or 0


def _plan_inputs_for_audience(session: Session, customer_ids: list[int], spec: JourneySpec) -> PlanInputs:
    empty = pl.DataFrame(schema={"customer_id": pl.Int64})
    uplift = uplift_frame(session, spec.uplift_segment, customer_ids=customer_ids) \
        if spec.entry.audience.uses_uplift else None
    return PlanInputs(customers=contactability_frame(session, customer_ids=customer_ids),
                      segments=segments_frame(session, customer_ids=customer_ids),
                      tags=tags_frame(session, customer_ids=customer_ids),
                      scores=scores_frame(session, customer_ids=customer_ids), consent=empty, ledger=empty,
                      money=empty, first_orders=empty, uplift=uplift)


def _reentry_allowed(session: Session, journey_id: int, spec: JourneySpec, frame: pl.DataFrame) -> pl.DataFrame:
    """Drop entries the re-entry rule refuses: one live enrollment at a time; once ever; once per N days."""
    listed = _in_clause(frame["customer_id"].unique().to_list())
    past = read_frame(session, "SELECT e.customer_id, e.status, e.entered_at FROM journey_enrollment e "
                      f"WHERE e.journey_id = :journey AND e.customer_id IN ({listed})", {"journey": journey_id},
                      {"customer_id": pl.Int64, "status": pl.String, "entered_at": UTC_TYPE}, same_connection=True,
                      small=True)
    rule = spec.entry.reentry
    refused = past if rule.rule == "once" else past.filter(pl.col("status").is_in(list(LIVE)))
    frame = frame.join(refused.select("customer_id").unique(), on="customer_id", how="anti")
    if rule.rule == "every":
        recent = past.group_by("customer_id").agg(last=pl.col("entered_at").max())
        frame = frame.join(recent, on="customer_id", how="left").filter(
            pl.col("last").is_null() | (pl.col("entered_at") - pl.col("last") >= timedelta(days=rule.days))).drop("last")
    # Several entries of one customer in one pass: the first only.
    return frame.sort("entered_at").unique(subset=["customer_id"], keep="first", maintain_order=True)


def enroll(session: Session, ctx: Context, journey_id: int, version: int, spec: JourneySpec,
           entries: pl.DataFrame) -> int:
    """Enroll (customer_id, entry_key, entered_at[, properties]) entries that pass the audience and the re-entry
    rule; an entry key seen before for the customer enrolls nothing (the same event claimed twice)."""
    now = ctx.clock.now()
    members = audience(step_campaign_for_audience(spec), _plan_inputs_for_audience(
        session, entries["customer_id"].unique().to_list(), spec), local_date_of(now, ctx.settings.default_time_zone))
    entries = entries.join(members.select("customer_id"), on="customer_id", how="semi")
    if entries.is_empty():
        return 0
    entries = _reentry_allowed(session, journey_id, spec, entries)
    unless = spec.entry.trigger.unless
    wait = timedelta(minutes=unless.within_minutes) if unless else timedelta(0)
    if "properties" not in entries.columns:
        entries = entries.with_columns(properties=pl.lit(None, dtype=pl.String))
    frame = entries.select(
        journey_id=pl.lit(journey_id, dtype=pl.Int64), version=pl.lit(version, dtype=pl.Int64),
        customer_id="customer_id", status=pl.lit("pending"), step_id=pl.lit(None, dtype=pl.String),
        seq=pl.lit(0, dtype=pl.Int64), wake_at=pl.max_horizontal(pl.col("entered_at") + wait, pl.lit(now)),
        entry_key="entry_key", entered_at="entered_at",
        context=pl.concat_str(pl.lit('{"entry": '), pl.col("properties").fill_null("{}"), pl.lit("}")),
        updated_at=pl.lit(now))
    stage_frame(session, "stage_journey_entries", frame, ENROLLMENT_TYPES)
    columns = ", ".join(ENROLLMENT_TYPES)
    result = session.connection().execute(text(
        f"INSERT INTO journey_enrollment ({columns}) SELECT {columns} FROM stage_journey_entries WHERE true "
        "ON CONFLICT (journey_id, customer_id, entry_key) DO NOTHING"))
    entered = result.rowcount or 0
    if entered > 0:
        metrics.business().enrollments.labels(spec.name).inc(entered)
    return entered


def step_campaign_for_audience(spec: JourneySpec):
    """The journey's audience as a campaign spec the planner's audience filter reads."""
    return CampaignSpec(name=spec.name, channels=[ChannelStep(channel="email", template="audience")],
                        schedule=Schedule(kind="daily"), audience=spec.entry.audience, holdout_share=0)


def enter_on_dates(session: Session, ctx: Context, *, journeys: ActiveJourneys | None = None) -> int:
    """Birthday and N-days-after-signup entries for today (the shop's date); repeated calls add nothing."""
    journeys = journeys or ActiveJourneys(session)
    today = local_date_of(ctx.clock.now(), ctx.settings.default_time_zone)
    enrolled = 0
    for journey_id, (journey, spec) in journeys.journeys.items():
        trigger = spec.entry.trigger
        if trigger.kind not in DATE_TRIGGERS:
            continue
        found = birthdays_on(session, today) if trigger.kind == "birthday" else signed_up_on(
            session, today - timedelta(days=trigger.days or 0))
        key = f"birthday:{today.year}" if trigger.kind == "birthday" else f"signup+{trigger.days}"
        if not found.is_empty():
            enrolled += enroll(session, ctx, journey_id, journey.version, spec, found.select(
                "customer_id", entry_key=pl.lit(key), entered_at=pl.lit(ctx.clock.now())))
    return enrolled


# ---------------------------------------------------------------- advancing due enrollments


def _claim_due(session: Session, now: datetime, limit: int, only: list[int] | None = None) -> list[dict[str, Any]]:
    """Lock up to `limit` due enrollments of active journeys (rows another worker holds are skipped)."""
    e, j = JourneyEnrollment.__table__, Journey.__table__
    query = (sa_select(e.c.id, e.c.journey_id, e.c.version, e.c.customer_id, e.c.status, e.c.step_id, e.c.seq,
                       e.c.entered_at, e.c.context)
             .where(e.c.status.in_(LIVE), e.c.wake_at <= now,
                    e.c.journey_id.in_(sa_select(j.c.id).where(j.c.status == "active")))
             .order_by(e.c.wake_at, e.c.id).limit(limit))
    if only is not None:
        query = query.where(e.c.id.in_(only))
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True, of=e)
    names = ("id", "journey_id", "version", "customer_id", "status", "step_id", "seq", "entered_at", "context")
    return [dict(zip(names, r, strict=True)) for r in session.connection().execute(query)]


def _facts(session: Session, claimed: list[dict[str, Any]], journeys: ActiveJourneys) -> dict[int, Facts]:
    """What the engine may ask about the batch's customers, read in a few set-based queries."""
    customers = sorted({r["customer_id"] for r in claimed})
    since = min(ensure_utc(r["entered_at"]) for r in claimed)
    facts = {c: Facts() for c in customers}
    people = contactability_frame(session, customer_ids=customers)
    for customer_id, zone in people.select("customer_id", "time_zone").iter_rows():
        facts[customer_id].time_zone = zone
    for customer_id, at in latest_orders_since(session, customers, since).iter_rows():
        facts[customer_id].last_order_at = at
        facts[customer_id].events["order"] = at
    wanted = sorted({name for r in claimed for name in _events_asked(journeys.spec(r["journey_id"], r["version"]))})
    if wanted:
        for customer_id, kind, at in latest_events_since(session, customers, wanted, since).iter_rows():
            facts[customer_id].events[kind] = at
    if any(_asks_segments(journeys.spec(r["journey_id"], r["version"])) for r in claimed):
        for customer_id, tier, layer, *_ in segments_frame(session, customer_ids=customers).iter_rows():
            facts[customer_id].tier, facts[customer_id].layer = tier, layer
        for customer_id, tags in tags_frame(session, customer_ids=customers).group_by("customer_id").agg(
                pl.col("tag")).iter_rows():
            facts[customer_id].tags = frozenset(tags)
        scores = scores_frame(session, customer_ids=customers).select("customer_id", "probability", "at_risk")
        for customer_id, probability, at_risk in scores.iter_rows():
            facts[customer_id].probability, facts[customer_id].at_risk = probability, bool(at_risk)
        for customer_id, attributes in attributes_of(session, customers).items():
            facts[customer_id].attributes = attributes
    if _asks_gap(claimed, journeys):
        for customer_id, gap in purchase_gaps(session, customers).items():
            facts[customer_id].purchase_gap_days = gap
    _last_messages(session, claimed, facts)
    return facts


def _asks_gap(claimed: list[dict[str, Any]], journeys: ActiveJourneys) -> bool:
    versions = {(r["journey_id"], r["version"]) for r in claimed}
    return any(step.type == "wait" and step.purchase_gap is not None
               for key in versions for step in journeys.spec(*key).steps)


def _events_asked(spec: JourneySpec) -> set[str]:
    unless = spec.entry.trigger.unless
    asked = {unless.event} if unless is not None and unless.kind == "event" else set()
    return asked | {s.until_event for s in spec.steps if s.type == "wait" and s.until_event and s.until_event != "order"}


def _asks_segments(spec: JourneySpec) -> bool:
    return any(s.type == "branch" and s.condition not in ("ordered_since_entry", "opened_last", "clicked_last")
               for s in spec.steps)


def _last_messages(session: Session, claimed: list[dict[str, Any]], facts: dict[int, Facts]) -> None:
    keys = [(r["customer_id"], _context(r)["last_message"]) for r in claimed if _context(r).get("last_message")]
    if not keys:
        return
    senders = _in_clause(sorted({k[1]["sender"] for k in keys}))
    customers = _in_clause(sorted({k[0] for k in keys}))
    rows = session.connection().execute(text(
        "SELECT m.customer_id, m.campaign_id, m.occurrence, m.opened_at, m.clicked_at FROM message m "
        f"WHERE m.campaign_id IN ({senders}) AND m.customer_id IN ({customers})")).all()
    found = {(r[0], r[1], r[2]): {"opened_at": r[3], "clicked_at": r[4]} for r in rows}
    for customer_id, last in keys:
        facts[customer_id].last_message = found.get((customer_id, last["sender"], last["occurrence"]))


def _context(row: dict[str, Any]) -> dict[str, Any]:
    value = row["context"]
    return value if isinstance(value, dict) else json.loads(value or "{}")


def advance_due(session: Session, ctx: Context, *, limit: int = 2000, rails: GuardRails | None = None,
                journeys: ActiveJourneys | None = None, only: list[int] | None = None) -> dict[str, Any]:
    """Advance up to `limit` due enrollments (or only those named): confirm entries, take steps, plan sends under
    the rails, write it all."""
    now = ctx.clock.now()
    started = tick = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal tick
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - tick, 3)
        tick = time.perf_counter()

    claimed = _claim_due(session, now, limit, only)
    if not claimed:
        return {"advanced": 0, "steps": 0, "messages": 0}
    journeys = journeys or ActiveJourneys(session)
    rails = rails or guard_rails(session, ctx)
    lap("claim_s")
    facts = _facts(session, claimed, journeys)
    lap("facts_s")
    control = dict(zip([r["customer_id"] for r in claimed], in_global_control(
        rails.global_control_share, rails.global_control_salt,
        pl.Series([r["customer_id"] for r in claimed], dtype=pl.Int64)).to_list(), strict=True)) \
        if rails.global_control_share > 0 else {}
    positions = []
    for row in claimed:
        spec = journeys.spec(row["journey_id"], row["version"])
        position = Position(enrollment_id=row["id"], journey_id=row["journey_id"], customer_id=row["customer_id"],
                            status=row["status"], step_id=row["step_id"], seq=row["seq"],
                            entered_at=ensure_utc(row["entered_at"]), context=_context(row))
        if position.status == "pending":
            confirm_entry(spec, position, facts[position.customer_id], now,
                          in_global_control=control.get(position.customer_id, False))
        positions.append((row, spec, advance(spec, position, facts[position.customer_id], now)))
    lap("step_s")
    messages = 0
    for _ in range(10):  # send, then the steps after it, until every enrollment waits or ends
        waiting = [(row, spec, p) for row, spec, p in positions if p.send is not None]
        if not waiting:
            break
        messages += _plan_group_sends(session, ctx, rails, waiting, now, timings)
        tick = time.perf_counter()
        for _row, spec, position in waiting:
            advance(spec, position, facts[position.customer_id], now)
        lap("step_s")
    steps = _write_positions(session, [p for _, _, p in positions], now)
    lap("write_positions_s")
    return {"advanced": len(positions), "steps": steps, "messages": messages,
            "seconds": round(time.perf_counter() - started, 3), "timings": timings}


def _plan_group_sends(session: Session, ctx: Context, rails: GuardRails,
                      waiting: list[tuple[dict[str, Any], JourneySpec, Position]], now: datetime,
                      timings: dict[str, float]) -> int:
    """Plan every waiting send, one group per (journey version, step), through the planner and into the outbox."""
    # Planning reads the ledger and writes to it: one planner at a time, as for campaigns (caps and budgets hold
    # across campaigns and journeys).
    lock_for_transaction(session, "planning")
    groups: dict[tuple[int, int, str], list[tuple[JourneySpec, Position]]] = {}
    for row, spec, position in waiting:
        groups.setdefault((row["journey_id"], row["version"], position.send.id), []).append((spec, position))
    written = 0
    for (journey_id, _version, step_id), members in groups.items():
        spec = members[0][0]
        campaign = step_campaign(spec, spec.step(step_id))
        ids = sorted({p.customer_id for _, p in members})
        tick = time.perf_counter()
        inputs, _ = load_inputs(session, ctx, campaign, local_date_of(now, ctx.settings.default_time_zone), rails,
                                customer_ids=ids)
        timings["plan_read_s"] = round(timings.get("plan_read_s", 0.0) + time.perf_counter() - tick, 3)
        tick = time.perf_counter()
        occurrences = {p.customer_id: f"e{p.enrollment_id}.{p.seq + 1}" for _, p in members}
        due = pl.DataFrame({"customer_id": [p.customer_id for _, p in members],
                            "send_at": [now] * len(members),
                            "coupon_key": [p.enrollment_id for _, p in members]},
                           schema={"customer_id": pl.Int64, "send_at": UTC_TYPE, "coupon_key": pl.Int64})
        plan = plan_sends(campaign, journey_sender(journey_id), f"j{journey_id}.{step_id}", due, inputs, rails, now)
        rows = plan.rows.with_columns(occurrence=pl.col("customer_id").replace_strict(
            occurrences, return_dtype=pl.String))
        timings["plan_s"] = round(timings.get("plan_s", 0.0) + time.perf_counter() - tick, 3)
        tick = time.perf_counter()
        written += _write_messages(session, campaign, journey_id, rows, now)
        preempt(session, journey_sender(journey_id), plan.preempted, now)  # lower priorities' slots it took
        timings["write_messages_s"] = round(timings.get("write_messages_s", 0.0) + time.perf_counter() - tick, 3)
        outcome = _outcomes(rows, inputs, campaign)
        for _, position in members:
            sent, reason, send_at = outcome.get(position.customer_id, (False, "no_contact", None))
            occurrence = occurrences[position.customer_id]
            if sent:
                position.context["last_message"] = {"sender": journey_sender(journey_id), "occurrence": occurrence}
            after_send(spec, position, sent, reason, send_at, now)
    return written


def _outcomes(rows: pl.DataFrame, inputs: PlanInputs, campaign: Any) -> dict[int, tuple[bool, str | None, Any]]:
    """Per customer: sent (a planned message), why not (the skip's reason, or the first channel's refusal)."""
    out: dict[int, tuple[bool, str | None, Any]] = {}
    for customer_id, status, reason, send_at in rows.select("customer_id", "status", "reason", "send_at").iter_rows():
        if status == "planned":
            out[customer_id] = (True, reason, send_at)
        elif customer_id not in out:
            out[customer_id] = (False, reason, None)
    first = campaign.channels[0].channel
    consent_channel = CHANNELS.get(first).consent
    opted_in = set(inputs.consent.filter((pl.col("channel") == consent_channel)
                                         & (pl.col("status") == "opted_in"))["customer_id"].to_list())
    for customer_id, has_contact in inputs.customers.select("customer_id", contact_column(first)).iter_rows():
        if customer_id not in out:
            out[customer_id] = (False, "no_contact" if not has_contact else (
                "no_consent" if customer_id not in opted_in else "not_eligible"), None)
    return out


def _write_messages(session: Session, campaign: Any, journey_id: int, rows: pl.DataFrame, now: datetime) -> int:
    if rows.is_empty():
        return 0
    for column, dtype in (("discount_value", pl.Float64), ("coupon_code", pl.String), ("valid_until", UTC_TYPE)):
        if column not in rows.columns:
            rows = rows.with_columns(pl.lit(None, dtype=dtype).alias(column))
    frame = rows.select(
        campaign_id=pl.lit(journey_sender(journey_id), dtype=pl.Int64), occurrence="occurrence",
        customer_id="customer_id", channel="channel", status="status", reason="reason",
        priority=pl.lit(campaign.priority, dtype=pl.Int64), transactional=pl.lit(False), send_at="send_at",
        expires_at=pl.col("send_at") + timedelta(days=1), template="template", locale="locale", variant="variant",
        offer=offer_json(rows), discount_value=pl.col("discount_value").fill_null(0.0), coupon_code="coupon_code",
        valid_until="valid_until", attempts=pl.lit(0, dtype=pl.Int64), created_at=pl.lit(now), updated_at=pl.lit(now))
    insert_frame(session, "message", frame, MESSAGE_TYPES)
    return frame.filter(pl.col("status") == "planned").height


def _write_positions(session: Session, positions: list[Position], now: datetime) -> int:
    """The enrollments' new positions, the steps they took and their tag and attribute updates, set-based."""
    moves = pl.DataFrame([{
        "id": p.enrollment_id, "status": p.status, "step_id": p.step_id, "seq": p.seq,
        "wake_at": p.wake_at or (now + timedelta(minutes=1) if p.status in LIVE else None),
        "ended_at": now if p.status in ENDED else None, "end_reason": p.end_reason,
        "context": json.dumps(p.context, default=str), "updated_at": now} for p in positions],
        schema={"id": pl.Int64, "status": pl.String, "step_id": pl.String, "seq": pl.Int64, "wake_at": UTC_TYPE,
                "ended_at": UTC_TYPE, "end_reason": pl.String, "context": pl.String, "updated_at": UTC_TYPE})
    stage_frame(session, "stage_journey_moves", moves, MOVE_TYPES)
    assignments = ", ".join(f"{c} = s.{c}" for c in MOVE_TYPES if c != "id")
    session.connection().execute(text(f"UPDATE journey_enrollment SET {assignments} FROM stage_journey_moves s "
                                      "WHERE journey_enrollment.id = s.id"))
    steps = pl.DataFrame([{"enrollment_id": p.enrollment_id, "journey_id": p.journey_id, "seq": t.seq,
                           "step_id": t.step_id, "kind": t.kind, "outcome": t.outcome, "reason": t.reason, "at": now}
                          for p in positions for t in p.taken],
                         schema={"enrollment_id": pl.Int64, "journey_id": pl.Int64, "seq": pl.Int64,
                                 "step_id": pl.String, "kind": pl.String, "outcome": pl.String, "reason": pl.String,
                                 "at": UTC_TYPE})
    insert_frame(session, "journey_step", steps, STEP_TYPES)
    _apply_updates(session, positions, now)
    counted = metrics.business().journey_steps
    for kind, outcome, taken in steps.group_by("kind", "outcome").len().rows():
        counted.labels(kind, outcome).inc(taken)
    return steps.height


def _apply_updates(session: Session, positions: list[Position], now: datetime) -> None:
    """Journey tags (through segmentation) and customer attributes (through crm)."""
    for position in positions:
        for update in position.updates:
            set_journey_tags(session, position.customer_id, update["add_tags"], update["remove_tags"], now,
                             {"journey": position.journey_id})
            if update["set_attributes"]:
                set_attributes(session, position.customer_id, update["set_attributes"], now)
    session.flush()


def run_once(session: Session, ctx: Context, *, activity_limit: int = 5000, due_limit: int = 2000,
             dates: bool = False) -> dict[str, Any]:
    """One worker pass: entries from the feed (and from dates when asked), then due enrollments."""
    journeys = ActiveJourneys(session)
    entered = enter_from_activity(session, ctx, limit=activity_limit, journeys=journeys)
    entered["dates"] = enter_on_dates(session, ctx, journeys=journeys) if dates else 0
    return {"entry": entered, "advance": advance_due(session, ctx, limit=due_limit, journeys=journeys)}


def serve(ctx: Context, *, once: bool, stop: Any, poll_seconds: float = 1.0, batch: int = 10_000,
          dates_every: timedelta = timedelta(hours=1)) -> dict[str, int]:
    """The journey worker: passes (each its own transaction) until idle (once) or until `stop` is set; date
    triggers are looked at on the first pass and then every `dates_every`."""
    totals: dict[str, int] = {"passes": 0, "enrolled": 0, "advanced": 0, "messages": 0}
    last_dates: datetime | None = None
    while not stop.is_set():
        dates = last_dates is None or ctx.clock.now() - last_dates >= dates_every
        try:
            with session_scope(ctx.engine) as session:
                result = run_once(session, ctx, dates=dates, due_limit=batch, activity_limit=max(batch, 100))
        except OperationalError as busy:
            # The database is down, or (SQLite) another process held its one writer past the busy timeout: the
            # pass rolled back whole (nothing half done); wait and run it again rather than exit.
            log.warning("journey pass rolled back, retrying: %s", str(busy.orig).splitlines()[0][:200])
            totals["retried"] = totals.get("retried", 0) + 1
            stop.wait(poll_seconds)
            continue
        last_dates = ctx.clock.now() if dates else last_dates
        totals["passes"] += 1
        totals["enrolled"] += result["entry"]["enrolled"] + result["entry"]["dates"]
        totals["advanced"] += result["advance"]["advanced"]
        totals["messages"] += result["advance"]["messages"]
        idle = result["entry"]["activity"] == 0 and result["advance"]["advanced"] == 0
        if idle and once:
            break
        if idle:
            stop.wait(poll_seconds)
    return totals


def backlog(session: Session, now: datetime) -> dict[str, int]:
    """Enrollments in progress and those whose next step is due now (the worker's backlog)."""
    e = JourneyEnrollment.__table__
    live = session.connection().execute(sa_select(func.count()).where(e.c.status.in_(LIVE))).scalar_one()
    due = session.connection().execute(sa_select(func.count()).where(e.c.status.in_(LIVE), e.c.wake_at <= now)
                                       ).scalar_one()
    return {"journey_active": live, "journey_due": due}
