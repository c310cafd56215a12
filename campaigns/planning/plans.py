"""Planning an occurrence into the outbox: read the inputs once (columnar), decide with the planner under the guard
rails in force, write the rows in one statement; the day's due and ahead-of-time passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

import polars as pl
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, func, select

from campaigns.authoring.campaigns import get_campaign, list_campaigns
from campaigns.authoring.spec import ANY_SEGMENT, CampaignSpec, campaign_segment
from campaigns.models import (
    Campaign,
    CampaignOccurrence,
    Message,
    UpliftScore,
)
from campaigns.planning.caps import COUNTED_STATUSES, LEDGER_SCHEMA
from campaigns.planning.guardrails import guard_rails
from campaigns.planning.planner import (
    GuardRails,
    Plan,
    PlanInputs,
    occurrence_key,
    plan_occurrence,
)
from churn.service import scores_frame
from crm.service import (
    consent_frame,
    contactability_frame,
    customer_time_zones,
    first_orders_frame,
    money_frame,
    shop_cost_ratio,
    used_coupon_codes,
)
from kit.bulkwrite import insert_frame
from kit.channels import CHANNELS
from kit.clock import ensure_utc
from kit.columnar import SharedFrames, columnar_reader, customer_clause, read_frame
from kit.context import Context
from kit.db import refresh_statistics
from kit.errors import Conflict, DomainError, InvalidInput
from kit.locks import lock_for_transaction
from kit.timezones import local_date_of, local_to_utc, utc_midnight
from segmentation.service import entered_between, segments_frame, tags_frame

MESSAGE_TYPES = {"campaign_id": "int", "occurrence": "text", "customer_id": "int", "channel": "text", "status": "text",
                 "reason": "text", "priority": "int", "transactional": "bool", "send_at": "timestamp",
                 "expires_at": "timestamp", "template": "text", "locale": "text", "variant": "text", "offer": "json",
                 "discount_value": "float", "coupon_code": "text", "valid_until": "timestamp", "attempts": "int",
                 "created_at": "timestamp", "updated_at": "timestamp"}


def next_occurrence(spec: CampaignSpec, today: date) -> date | None:
    """The first local date on or after today on which the schedule fires (within a year)."""
    for offset in range(367):
        day = today + timedelta(days=offset)
        if spec.schedule.fires_on(day):
            return day
    return None


def shop_today(ctx: Context) -> date:
    """Today in the shop's default zone, by the injected clock."""
    return local_date_of(ctx.clock.now(), ctx.settings.default_time_zone)


def read_ledger(session: Session, now: datetime, horizon_days: int, customer_id: int | None,
                customer_ids: list[int] | None = None) -> pl.DataFrame:
    """Live marketing messages within `horizon_days` of now (they count against caps and cooldowns), and every
    offer still open whenever it was sent (it counts against the discount budget); all customers', one's or a
    few's."""
    statuses = ", ".join(f"'{s}'" for s in COUNTED_STATUSES)
    one, keyed, small = customer_clause("m.customer_id", customer_id, customer_ids, keyword="AND")
    is_open = "m.valid_until > :now AND m.redeemed_order_id IS NULL"
    # Both branches have an index (status, send_at; valid_until): the read grows with the caps' windows and the
    # offers still open, never with the months of messages behind them.
    query = (f"SELECT m.customer_id, m.channel, m.send_at, m.priority, m.id, "
             f"m.status = 'planned' AND m.attempts = 0, m.campaign_id, "
             f"CASE WHEN {is_open} THEN m.discount_value ELSE 0 END, "
             f"CASE WHEN {is_open} THEN m.coupon_code END "
             f"FROM message m WHERE m.status IN ({statuses}) AND m.transactional = :no "
             f"AND ((m.send_at >= :start AND m.send_at < :end) OR ({is_open} AND m.discount_value > 0)) {one}")
    params = {"now": now, "no": False, "start": now - timedelta(days=horizon_days),
              "end": now + timedelta(days=horizon_days)} | keyed
    schema = LEDGER_SCHEMA | {"campaign_id": pl.Int64, "open_offer": pl.Float64, "open_code": pl.String}
    # On the session's own connection, never the columnar fast path (which reads committed data only): the
    # campaigns of one day are planned in one transaction, and each must count what the previous ones planned.
    ledger = read_frame(session, query, params, schema, same_connection=True, small=small)
    # A coupon stops being an open offer once an order used it: from then on the order's discount is what counts.
    # Asked of crm as one set lookup (a correlated EXISTS per message let PostgreSQL scan all orders per row).
    open_codes = ledger["open_code"].drop_nulls().unique().to_list()
    used = used_coupon_codes(session, open_codes) if open_codes else set()
    return ledger.with_columns(open_offer=pl.when(pl.col("open_code").is_in(list(used)))
                               .then(pl.lit(0.0)).otherwise(pl.col("open_offer"))).drop("open_code")


def load_inputs(session: Session, ctx: Context, spec: CampaignSpec, day: date, rails: GuardRails, *,
                customer_id: int | None = None, customer_ids: list[int] | None = None,
                shared: SharedFrames | None = None) -> tuple[PlanInputs, dict[str, float]]:
    """Everything planning reads, through one columnar reader; with customer_id (or customer_ids: a journey's
    batch) only those customers' rows.

    `shared` carries the frames planning does not change (customers, segments, tags, scores, consent, money,
    first orders) from one campaign of a day to the next; the ledger is always read again.
    """
    now = ctx.clock.now()
    horizon = max([c.window_days for c in rails.caps] + [spec.cooldown_days or 0, 1]) + spec.defer_days
    timings: dict[str, float] = {}
    started = time.perf_counter()
    few_customers = customer_id is not None or customer_ids is not None
    with columnar_reader(session) as reader:
        use = None if few_customers else reader
        one: dict[str, Any] = {"customer_id": customer_id} if customer_id is not None else (
            {"customer_ids": customer_ids} if customer_ids is not None else {})
        frames = shared if shared is not None and not few_customers else SharedFrames()

        def once(name: str, read: Callable[[], pl.DataFrame]) -> pl.DataFrame:
            return frames.whole(f"plan:{name}", read)  # prefixed: other steps cache other `customers` frames

        customers = once("customers", lambda: contactability_frame(session, reader=use, **one))
        segments = once("segments", lambda: segments_frame(session, reader=use, **one))
        tags = once("tags", lambda: tags_frame(session, reader=use, **one)) \
            if (spec.audience.tags or spec.audience.exclude_tags) else \
            pl.DataFrame(schema={"customer_id": pl.Int64, "tag": pl.String})
        scores = once("scores", lambda: scores_frame(session, reader=use, **one))
        # A journey's batch asks only for its step's channels; a campaign's day shares one read of them all.
        wanted = sorted({CHANNELS.get(step.channel).consent for step in spec.channels}) \
            if customer_ids is not None else None
        consent = once("consent", lambda: consent_frame(session, reader=use, channels=wanted, **one))
        ledger = read_ledger(session, now, horizon, customer_id, customer_ids)
        money = once("money", lambda: money_frame(session, now, reader=use, **one)[0]) \
            if spec.makes_offers else pl.DataFrame(schema={"customer_id": pl.Int64, "spend": pl.Float64,
                                                    "discount": pl.Float64, "orders": pl.Int64,
                                                    "cost_known_value": pl.Float64, "cost": pl.Float64})
        needs_first = spec.schedule.trigger == "days_after_first_order"
        first_orders = once("first_orders", lambda: first_orders_frame(session, now, reader=use, **one)) \
            if needs_first else pl.DataFrame(schema={"customer_id": pl.Int64,
                                                     "first_order_at": pl.Datetime("us", "UTC")})
        # One customer's money says nothing about the shop's margins: ask for the shop-wide ratio separately.
        shop_ratio = shop_cost_ratio(session, now) if spec.makes_offers and few_customers else None
    timings["read_s"] = round(time.perf_counter() - started, 3)
    entered = None
    if spec.schedule.trigger in ("entered_tier", "entered_tag"):
        dimension = "tier" if spec.schedule.trigger == "entered_tier" else "tag"
        entered = entered_between(session, dimension, spec.schedule.value or "", utc_midnight(day),
                                  utc_midnight(day) + timedelta(days=1), customer_id=customer_id)
    uplift = uplift_frame(session, campaign_segment(spec), customer_id=customer_id, customer_ids=customer_ids) \
        if spec.audience.uses_uplift else None
    return PlanInputs(customers=customers, segments=segments, tags=tags, scores=scores, consent=consent,
                      ledger=ledger, money=money, first_orders=first_orders, entered=entered,
                      shop_cost_ratio=shop_ratio, uplift=uplift), timings


def uplift_segment_in_use(session: Session, segment: str) -> str | None:
    """The segment whose predicted uplift planning reads: the campaign's own when it has scores, else `any`'s."""
    for candidate in (segment, ANY_SEGMENT):
        if session.exec(select(UpliftScore.customer_id).where(UpliftScore.segment == candidate).limit(1)).first():
            return candidate
    return None


def uplift_frame(session: Session, segment: str, *, customer_id: int | None = None,
                 customer_ids: list[int] | None = None) -> pl.DataFrame:
    """customer_id, uplift: the predicted uplift of the segment in use (empty when no model has scored yet)."""
    schema = {"customer_id": pl.Int64, "uplift": pl.Float64}
    used = uplift_segment_in_use(session, segment)
    if used is None:
        return pl.DataFrame(schema=schema)
    only, params, small = customer_clause("s.customer_id", customer_id, customer_ids, keyword="AND")
    return read_frame(session, f"SELECT s.customer_id, s.uplift FROM uplift_score s WHERE s.segment = :segment {only}",
                      params | {"segment": used}, schema, small=small)


def compute_plan(session: Session, ctx: Context, campaign: Campaign, day: date, *, customer_id: int | None = None,
             shared: SharedFrames | None = None) -> tuple[Plan, PlanInputs, dict[str, float]]:
    """Plan one occurrence in memory (all customers, or one): the plan, its inputs and the timings."""
    spec = CampaignSpec.model_validate(campaign.spec)
    rails = guard_rails(session, ctx)  # read once: it bounds the ledger read and guides the plan
    inputs, timings = load_inputs(session, ctx, spec, day, rails, customer_id=customer_id, shared=shared)
    started = time.perf_counter()
    plan = plan_occurrence(spec, campaign.id, occurrence_key(day), day, inputs, rails, ctx.clock.now())
    timings["plan_s"] = round(time.perf_counter() - started, 3)
    return plan, inputs, timings


def resolve_day(ctx: Context, spec: CampaignSpec, day: date | None) -> date:
    """The given day, or the schedule's next occurrence from today."""
    if day is not None:
        return day
    found = next_occurrence(spec, shop_today(ctx))
    if found is None:
        raise InvalidInput.field("date", "the schedule has no occurrence in the coming year")
    return found


def offer_json(rows: pl.DataFrame) -> pl.Expr:
    """The outbox's offer column from a plan's per-customer offer columns (null where no offer)."""
    if "offer_decision" not in rows.columns:
        return pl.lit(None, dtype=pl.String)
    return pl.when(pl.col("offer_decision").is_not_null()).then(pl.struct(
        decision=pl.col("offer_decision"), reasons=pl.col("offer_reasons"), amount_off=pl.col("offer_amount_off"),
        percent_off=pl.col("offer_percent_off"), min_spend=pl.col("min_spend"), max_discount=pl.col("max_discount"),
        free_shipping=pl.col("offer_free_shipping")).struct.json_encode())


def plan_campaign(session: Session, ctx: Context, campaign_id: int, day: date | None = None, *,
                  shared: SharedFrames | None = None) -> dict[str, Any]:
    """Plan one occurrence into the outbox; planning the same occurrence again adds nothing (`shared`: frames
    read by an earlier campaign of the same planning pass, see load_inputs)."""
    campaign = get_campaign(session, campaign_id)
    if campaign.status != "active":
        raise Conflict(f"campaign {campaign_id} is {campaign.status}; only active campaigns are planned")
    spec = CampaignSpec.model_validate(campaign.spec)
    day = resolve_day(ctx, spec, day)
    if not spec.schedule.fires_on(day):
        raise InvalidInput.field("date", f"the schedule does not fire on {day.isoformat()}")
    key = occurrence_key(day)
    now = ctx.clock.now()
    # One planner at a time: each reads the ledger (caps, open offers against the discount budget) and then writes
    # to it, so two concurrent planners would each grant what only one may. Waits for the other to commit.
    lock_for_transaction(session, "planning")
    # Claim the occurrence first: a concurrent planner of the same occurrence waits here, then finds it taken.
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    claimed = session.connection().execute(insert(CampaignOccurrence).values(
        campaign_id=campaign.id, occurrence=key, campaign_version=campaign.version, planned_at=now, counts={})
        .on_conflict_do_nothing(index_elements=["campaign_id", "occurrence"])
        .returning(CampaignOccurrence.id)).first() is not None
    existing = session.exec(select(CampaignOccurrence).where(CampaignOccurrence.campaign_id == campaign.id,
                                                            CampaignOccurrence.occurrence == key)).one()
    if not claimed:
        return {"campaign_id": campaign.id, "occurrence": key, "already_planned": True, "added": 0,
                "counts": existing.counts}
    plan, _, timings = compute_plan(session, ctx, campaign, day, shared=shared)
    started = time.perf_counter()
    added = _write(session, campaign, spec, key, day, plan, now)
    timings["write_s"] = round(time.perf_counter() - started, 3)
    existing.counts = plan.counts | {"audience": plan.audience_size, "added": added}
    session.add(existing)
    session.flush()
    return {"campaign_id": campaign.id, "occurrence": key, "already_planned": False, "added": added,
            "counts": existing.counts, "timings": timings}


def _write(session: Session, campaign: Campaign, spec: CampaignSpec, key: str, day: date, plan: Plan,
           now: datetime) -> int:
    rows = plan.rows
    if rows.is_empty():
        return 0
    for column, dtype in (("discount_value", pl.Float64), ("coupon_code", pl.String),
                          ("valid_until", pl.Datetime("us", "UTC"))):
        if column not in rows.columns:
            rows = rows.with_columns(pl.lit(None, dtype=dtype).alias(column))
    frame = rows.select(
        campaign_id=pl.lit(campaign.id, dtype=pl.Int64), occurrence=pl.lit(key), customer_id="customer_id",
        channel="channel", status="status", reason="reason", priority=pl.lit(spec.priority, dtype=pl.Int64),
        transactional=pl.lit(spec.transactional), send_at="send_at",
        expires_at=pl.lit(utc_midnight(day) + timedelta(days=spec.defer_days + 2)), template="template",
        locale="locale", variant="variant", offer=offer_json(rows),
        discount_value=pl.col("discount_value").fill_null(0.0),
        coupon_code="coupon_code", valid_until="valid_until", attempts=pl.lit(0, dtype=pl.Int64),
        created_at=pl.lit(now), updated_at=pl.lit(now))
    # Straight into the outbox (COPY on PostgreSQL): this transaction holds the occurrence's claim, so no other
    # planner can have written rows for it; the unique outbox key still guards against any duplicate.
    insert_frame(session, "message", frame, MESSAGE_TYPES)
    refresh_statistics(session, ("message",), frame.height)  # the send-time checks read the outbox by customer
    preempt(session, campaign.id, plan.preempted, now)
    return frame.height


def _preempted_by(sender_id: int) -> str:
    """The reason a preempted message records: which campaign (or journey: a negative sender) took its slot."""
    return (f"preempted_by_campaign_{sender_id}" if sender_id > 0 else f"preempted_by_journey_{-sender_id}")[:40]


def preempt(session: Session, sender_id: int, message_ids: list[int], now: datetime) -> int:
    """Give lower-priority planned messages' slots to this campaign: they become `preempted` and are never sent.

    Only messages still planned and never attempted change; one a dispatcher claimed meanwhile goes on, and the
    dispatcher's own cap check at send time then decides between the two (exactly once either way)."""
    changed = 0
    for start in range(0, len(message_ids), 10_000):  # SQLite binds at most 32,766 values per statement
        result = session.exec(update(Message).where(  # type: ignore[call-overload]
            Message.id.in_(message_ids[start:start + 10_000]), Message.status == "planned",
            Message.attempts == 0).values(status="preempted", reason=_preempted_by(sender_id),
                                          updated_at=now))
        changed += result.rowcount or 0
    return changed


def _plan_isolated(session: Session, ctx: Context, campaign: Campaign, day: date,
                   shared: SharedFrames) -> dict[str, Any]:
    """Plan one occurrence in a savepoint: a campaign that cannot be planned rolls back alone, with its error."""
    try:
        with session.begin_nested():
            result = plan_campaign(session, ctx, campaign.id, day, shared=shared)
    except DomainError as failure:
        result = {"campaign_id": campaign.id, "occurrence": occurrence_key(day), "added": 0, "error": failure.detail}
    return result | {"campaign": campaign.name}


def plan_due(session: Session, ctx: Context, day: date | None = None) -> list[dict[str, Any]]:
    """Plan every active campaign that fires on the day, highest priority first (so it wins capped slots); a
    campaign that cannot be planned is reported with its error and the others go on."""
    day = day or shop_today(ctx)
    shared = SharedFrames()  # what planning does not change is read once for all of the day's campaigns
    return [_plan_isolated(session, ctx, campaign, day, shared) for campaign in list_campaigns(session, "active")
            if CampaignSpec.model_validate(campaign.spec).schedule.fires_on(day)]


def plan_ahead(session: Session, ctx: Context, day: date, before: datetime) -> list[dict[str, Any]]:
    """Plan the scheduled campaigns of `day` already when some customer's local send time on it comes before
    `before` (the next pipeline run): customers in zones far ahead of the scheduler's still get their local time."""
    zones = customer_time_zones(session)
    results: list[dict[str, Any]] = []
    shared = SharedFrames()
    for campaign in list_campaigns(session, "active"):
        schedule = CampaignSpec.model_validate(campaign.spec).schedule
        if schedule.kind == "triggered" or not schedule.fires_on(day) or not zones:
            continue
        earliest = min(local_to_utc(day, schedule.local_minute_of_day, zone) for zone in zones)
        if earliest < before:
            results.append(_plan_isolated(session, ctx, campaign, day, shared))
    return results


def latest_planned_send(session: Session) -> datetime | None:
    """When the last message still planned in the outbox is due (None when nothing is planned)."""
    newest = session.exec(select(func.max(Message.send_at)).where(Message.status == "planned")).one()
    return ensure_utc(newest) if newest is not None else None
