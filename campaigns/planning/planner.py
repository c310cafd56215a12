"""Planning one occurrence of a campaign, pure and vectorised: audience → holdout → channels, consent and contact
→ discount ceilings → quiet hours → frequency caps. Frames in, a decision per customer (and channel) out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import numpy as np
import polars as pl

from campaigns.authoring.spec import CampaignSpec, Experiment
from campaigns.planning.caps import LEDGER_SCHEMA, Cap, check_caps
from campaigns.planning.discounts import WITHHELD, DiscountRules, OfferTerms, apply_ceilings
from campaigns.planning.localtime import wall_times_to_utc
from campaigns.planning.quiet_hours import QuietHours, defer_out_of_quiet_hours
from kit.channels import CHANNELS, default_caps

UTC_TYPE = pl.Datetime("us", "UTC")
# Reasons a customer in the audience gets no message (or a changed one), as dry-runs and reports count them.
EXCLUSION_REASONS = ("cooldown", "global_control", "holdout", "no_consent", "no_contact", "capped", "lower_priority",
                     "offer_withheld")
ADJUSTMENT_REASONS = ("deferred_quiet_hours", "deferred_cap", "offer_reduced", "preempted")
COUPON_ALPHABET = np.array(list("ABCDEFGHJKLMNPQRSTUVWXYZ23456789"))


@dataclass(frozen=True)
class GuardRails:
    """Every guard rail's settings."""

    caps: tuple[Cap, ...] = field(default_factory=lambda: tuple(
        Cap(limit, days, channel) for channel, (limit, days) in default_caps().items()))
    quiet: QuietHours = QuietHours()
    discounts: DiscountRules = field(default_factory=DiscountRules)
    global_control_share: float = 0.0
    global_control_salt: int = 0


@dataclass
class PlanInputs:
    """What planning reads; frames keyed by customer_id (see the service for their columns)."""

    customers: pl.DataFrame
    segments: pl.DataFrame
    tags: pl.DataFrame
    scores: pl.DataFrame
    consent: pl.DataFrame
    ledger: pl.DataFrame  # live messages: LEDGER_SCHEMA columns plus campaign_id and open_offer (value still open)
    money: pl.DataFrame
    first_orders: pl.DataFrame
    entered: pl.DataFrame | None = None
    uplift: pl.DataFrame | None = None  # customer_id, uplift: predicted for the campaign's segment (when asked)
    shop_cost_ratio: float | None = None  # given when `money` holds one customer only (explanations)


def _mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a fixed, well-spread hash (stable across runs and library versions)."""
    z = values.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = (z + np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _uniform(keys: np.ndarray) -> np.ndarray:
    """Hashed keys as uniform numbers in [0, 1) (the top 53 bits of the mix)."""
    return (_mix64(keys) >> np.uint64(11)).astype(np.float64) / float(2**53)


def holdout_draw(campaign_id: int, customer_ids: pl.Series) -> pl.Series:
    """A uniform number in [0, 1) per customer from a hash of (campaign, customer): reruns split identically."""
    keys = customer_ids.to_numpy().astype(np.uint64) ^ (np.uint64(campaign_id) << np.uint64(40))
    return pl.Series("draw", _uniform(keys))


def control_draw(salt: int, customer_ids: pl.Series) -> pl.Series:
    """A uniform number in [0, 1) per customer for the global control group (independent of every campaign's)."""
    keys = _mix64(customer_ids.to_numpy().astype(np.uint64)) ^ _mix64(np.array([salt], dtype=np.uint64))
    return pl.Series("control_draw", _uniform(keys))


def in_global_control(share: float, salt: int, customer_ids: pl.Series) -> pl.Series:
    """Whether each customer is in the global control group."""
    return (control_draw(salt, customer_ids) < share).alias("global_control")


def assign_variants(campaign_id: int, customer_ids: pl.Series, experiment: Experiment) -> pl.Series:
    """Each treated customer's A/B arm, by weight, from a hash of (campaign, customer): the same on every run."""
    keys = _mix64(customer_ids.to_numpy().astype(np.uint64) ^ (np.uint64(campaign_id) << np.uint64(40)))
    draw = _uniform(keys ^ np.uint64(0xA5A5A5A5))  # mixed once more: independent of the holdout draw
    weights = np.array([v.weight for v in experiment.variants], dtype=float)
    edges = np.cumsum(weights / weights.sum())
    index = np.minimum(np.searchsorted(edges, draw, side="right"), len(edges) - 1)
    names = np.array([v.name for v in experiment.variants], dtype=object)
    return pl.Series("variant", names[index], dtype=pl.String)


def coupon_codes(prefix: str, campaign_id: int, occurrence: str, customer_ids: pl.Series) -> pl.Series:
    """A unique, unguessable-enough code per customer and occurrence (60 hash bits, 12 characters)."""
    salt = int.from_bytes(hashlib.blake2b(f"{campaign_id}:{occurrence}".encode(), digest_size=8).digest(), "little")
    keys = customer_ids.to_numpy().astype(np.uint64) ^ np.uint64(salt)
    mixed = _mix64(keys)
    digits = np.stack([(mixed >> np.uint64(5 * i)) & np.uint64(31) for i in range(12)], axis=1).astype(np.intp)
    body = np.ascontiguousarray(COUPON_ALPHABET[digits]).view(f"<U{12}").ravel()
    return pl.select(pl.lit(f"{prefix}{campaign_id}-") + pl.Series(body)).to_series().alias("coupon_code")


def _range(column: str, bounds) -> pl.Expr:
    return pl.col(column).is_between(bounds.min, bounds.max)


def audience(spec: CampaignSpec, inputs: PlanInputs, day: date) -> pl.DataFrame:
    """Customers matching the audience and, for triggered campaigns, the trigger on this local day."""
    frame = (inputs.customers
             .join(inputs.segments, on="customer_id", how="left")
             .join(inputs.scores, on="customer_id", how="left"))
    rules = spec.audience
    conditions: list[pl.Expr] = []
    if rules.tiers:
        conditions.append(pl.col("tier").is_in(rules.tiers))
    if rules.exclude_tiers:
        conditions.append(~pl.col("tier").is_in(rules.exclude_tiers).fill_null(False))
    if rules.layers:
        conditions.append(pl.col("layer").is_in(rules.layers))
    if rules.exclude_layers:
        conditions.append(~pl.col("layer").is_in(rules.exclude_layers).fill_null(False))
    if rules.churn_risk_above is not None:
        conditions.append(pl.col("probability") > rules.churn_risk_above)
    if rules.at_risk is not None:
        conditions.append(pl.col("at_risk").fill_null(False) == rules.at_risk)
    if rules.risk_levels:
        conditions.append(pl.col("risk_level").is_in(rules.risk_levels))
    if rules.predicted_clv_min is not None:
        conditions.append(pl.col("predicted_clv_12m") >= rules.predicted_clv_min)
    if rules.predicted_clv_max is not None:
        conditions.append(pl.col("predicted_clv_12m") <= rules.predicted_clv_max)
    if rules.p_alive_min is not None:
        conditions.append(pl.col("p_alive") >= rules.p_alive_min)
    if rules.uses_uplift:
        frame = frame.join(inputs.uplift if inputs.uplift is not None else
                           pl.DataFrame(schema={"customer_id": pl.Int64, "uplift": pl.Float64}),
                           on="customer_id", how="left")
        if rules.uplift_min is not None:  # no prediction: no evidence the message changes anything
            conditions.append(pl.col("uplift").fill_null(float("-inf")) >= rules.uplift_min)
        if rules.exclude_sleeping_dogs:  # no prediction: no evidence they are put off either
            conditions.append(pl.col("uplift").fill_null(0.0) >= 0)
    if rules.next_order_within_days is not None:
        due = pl.col("expected_next_order_at").dt.date()
        conditions.append(due.is_between(pl.lit(day), pl.lit(day + timedelta(days=rules.next_order_within_days))))
    for column, bounds in (("r_score", rules.r_score), ("f_score", rules.f_score), ("m_score", rules.m_score)):
        if bounds is not None:
            conditions.append(_range(column, bounds))
    if rules.customers:
        conditions.append(pl.col("external_id").is_in(rules.customers))
    if rules.exclude_customers:
        conditions.append(~pl.col("external_id").is_in(rules.exclude_customers))
    if conditions:
        frame = frame.filter(pl.all_horizontal(conditions).fill_null(False))
    if rules.tags:
        frame = frame.join(inputs.tags.filter(pl.col("tag").is_in(rules.tags)).select("customer_id").unique(),
                           on="customer_id", how="semi")
    if rules.exclude_tags:
        frame = frame.join(inputs.tags.filter(pl.col("tag").is_in(rules.exclude_tags)).select("customer_id"),
                           on="customer_id", how="anti")
    return _triggered(spec, frame, inputs, day)


def _triggered(spec: CampaignSpec, frame: pl.DataFrame, inputs: PlanInputs, day: date) -> pl.DataFrame:
    schedule = spec.schedule
    if schedule.kind != "triggered":
        return frame
    if schedule.trigger == "at_risk":
        return frame.filter(pl.col("at_risk").fill_null(False))
    if schedule.trigger == "birthday":
        # 29 February birthdays are celebrated on the 28th in common years.
        leap = day.year % 4 == 0 and (day.year % 100 != 0 or day.year % 400 == 0)
        month, dom = pl.col("birthday").dt.month(), pl.col("birthday").dt.day()
        on_day = (month == day.month) & (dom == day.day)
        if not leap and (day.month, day.day) == (2, 28):
            on_day = on_day | ((month == 2) & (dom == 29))
        return frame.filter(on_day.fill_null(False))
    if schedule.trigger == "days_after_first_order":
        wanted = day - timedelta(days=schedule.days or 0)
        firsts = inputs.first_orders.filter(pl.col("first_order_at").dt.date() == wanted).select("customer_id")
        return frame.join(firsts, on="customer_id", how="semi")
    entered = inputs.entered if inputs.entered is not None else pl.DataFrame(schema={"customer_id": pl.Int64})
    return frame.join(entered, on="customer_id", how="semi")


def send_times(frame: pl.DataFrame, spec: CampaignSpec, day: date, now: datetime) -> pl.Series:
    """Each customer's send time: the schedule's local hour on the day in their own zone, never in the past."""
    local = frame.select("time_zone").with_columns(
        __day=pl.lit(day, dtype=pl.Date), __minute=pl.lit(spec.schedule.local_minute_of_day, dtype=pl.Int32))
    at = wall_times_to_utc(local, zone_column="time_zone", date_column="__day", minute_column="__minute")
    return pl.select(pl.max_horizontal(at, pl.lit(now, dtype=UTC_TYPE))).to_series().alias("send_at")


@dataclass
class Plan:
    """One occurrence's decisions: `rows` go to the outbox (planned, holdout, guard-rail skips); `counts` by reason."""

    rows: pl.DataFrame
    counts: dict[str, int]
    audience_size: int
    preempted: list[int] = field(default_factory=list)  # planned messages of lower priority whose slots were taken


def contact_column(channel: str) -> str:
    """The contactability column (crm's has_<contact field>) a channel needs true."""
    return f"has_{CHANNELS.get(channel).contact_field}"


def _eligible(step_channel: str, frame: pl.DataFrame, consent: pl.DataFrame, transactional: bool) -> pl.DataFrame:
    """Adds `block` (no_contact / no_consent / null) for one channel.

    Marketing needs an opt-in for the channel. A transactional notice needs no opt-in, but an opt-out still
    wins: it never reaches a channel the customer opted out of."""
    mine = consent.filter(pl.col("channel") == CHANNELS.get(step_channel).consent)
    if transactional:
        refused = mine.filter(pl.col("status") == "opted_out").select("customer_id", __out=pl.lit(True))
        frame = frame.join(refused, on="customer_id", how="left").with_columns(
            __consent=~pl.col("__out").fill_null(False)).drop("__out")
    else:
        allowed = mine.filter(pl.col("status") == "opted_in").select("customer_id", __consent=pl.lit(True))
        frame = frame.join(allowed, on="customer_id", how="left")
    contact = pl.col(contact_column(step_channel)).fill_null(False)
    consented = pl.col("__consent").fill_null(False)
    return frame.with_columns(block=pl.when(~contact).then(pl.lit("no_contact"))
                              .when(~consented).then(pl.lit("no_consent")).otherwise(None)).drop("__consent")


def _money(frame: pl.DataFrame, inputs: PlanInputs) -> pl.DataFrame:
    money = inputs.money
    shop_ratio = inputs.shop_cost_ratio
    if shop_ratio is None and money.height and (money["cost_known_value"].sum() or 0) > 0:
        shop_ratio = money["cost"].sum() / money["cost_known_value"].sum()
    enriched = frame.join(money, on="customer_id", how="left").with_columns(
        spend_365=pl.col("spend").fill_null(0.0), discount_365=pl.col("discount").fill_null(0.0),
        basket=((pl.col("spend") + pl.col("discount")) / pl.col("orders")),
        cost_ratio=pl.when(pl.col("cost_known_value") > 0).then(pl.col("cost") / pl.col("cost_known_value"))
        .otherwise(pl.lit(shop_ratio, dtype=pl.Float64)))
    open_offers = inputs.ledger.filter(pl.col("open_offer") > 0).group_by("customer_id").agg(
        open_offers=pl.col("open_offer").sum())
    return enriched.join(open_offers, on="customer_id", how="left").with_columns(pl.col("open_offers").fill_null(0.0)).drop(
        "spend", "discount", "orders", "cost", "cost_known_value")


def plan_occurrence(spec: CampaignSpec, campaign_id: int, occurrence: str, day: date, inputs: PlanInputs,
                    rails: GuardRails, now: datetime) -> Plan:
    """Decide who gets what, when and on which channel for one occurrence (pure: nothing is written)."""
    members = audience(spec, inputs, day)
    counts: dict[str, int] = {reason: 0 for reason in (*EXCLUSION_REASONS, *ADJUSTMENT_REASONS)}
    size = members.height
    if spec.cooldown_days:
        recent = inputs.ledger.filter((pl.col("campaign_id") == campaign_id)
                                      & (pl.col("send_at") > pl.lit(now - timedelta(days=spec.cooldown_days))))
        before = members.height
        members = members.join(recent.select("customer_id"), on="customer_id", how="anti")
        counts["cooldown"] = before - members.height
    members = members.with_columns(holdout_draw(campaign_id, members["customer_id"]))
    members = members.with_columns(send_at=send_times(members, spec, day, now))
    out_rows: list[pl.DataFrame] = []
    if not spec.transactional and rails.global_control_share > 0:
        # The global control group gets no marketing from any campaign: recorded per campaign, like a holdout.
        in_control = in_global_control(rails.global_control_share, rails.global_control_salt, members["customer_id"])
        control = members.filter(in_control)
        members = members.filter(~in_control)
        counts["global_control"] = control.height
        out_rows.append(_decided(control, spec, "holdout", "global_control"))
    # Only members some channel could reach are held out, so both arms hold reachable customers alike; an
    # unreachable member drawn for the holdout goes on with the treated, where the channel checks count them.
    reachable = _reachable(spec, members, inputs.consent)
    in_holdout = (members["draw"] < spec.holdout_share) & reachable
    held, treated = members.filter(in_holdout), members.filter(~in_holdout)
    counts["holdout"] = held.height
    out_rows.append(_decided(held, spec, "holdout", "holdout"))
    arms = [(None, spec, treated)]
    if spec.experiment is not None and not treated.is_empty():
        assigned = treated.with_columns(variant=assign_variants(campaign_id, treated["customer_id"],
                                                                spec.experiment))
        arms = [(v.name, spec.for_variant(v), assigned.filter(pl.col("variant") == v.name).drop("variant"))
                for v in spec.experiment.variants]
    ledger = ledger_frame(inputs.ledger)
    recipients_parts: list[pl.DataFrame] = []
    preempted: set[int] = set()
    for variant, arm_spec, arm in arms:
        rows, recipients, ledger = _plan_treated(arm_spec, arm, inputs, rails, campaign_id, occurrence, ledger,
                                                 counts, now, preempted)
        out_rows.append(rows.with_columns(variant=pl.lit(variant, dtype=pl.String)))
        recipients_parts.append(recipients)
    recipients = pl.concat(recipients_parts, how="diagonal_relaxed")
    non_empty = [r for r in out_rows if not r.is_empty()]
    rows = pl.concat(non_empty, how="diagonal_relaxed") if non_empty else out_rows[-1]  # the last: an arm's
    if "variant" not in rows.columns:  # only holdout or control rows: no arm decided anyone
        rows = rows.with_columns(variant=pl.lit(None, dtype=pl.String))
    counts["recipients"] = recipients.select("customer_id").n_unique() if not recipients.is_empty() else 0
    counts["messages"] = recipients.height
    for channel in CHANNELS.names():
        counts[f"channel_{channel}"] = recipients.filter(pl.col("channel") == channel).height \
            if not recipients.is_empty() else 0
    counts["preempted"] = len(preempted)
    return Plan(rows=rows, counts={k: int(v) for k, v in counts.items()}, audience_size=size,
                preempted=sorted(preempted))


def plan_sends(spec: CampaignSpec, sender_id: int, occurrence: str, due: pl.DataFrame, inputs: PlanInputs,
               rails: GuardRails, now: datetime) -> Plan:
    """One message step for customers already chosen (a journey's due enrollments: `due` holds customer_id,
    send_at and coupon_key, e.g. the enrollment id, which makes each coupon code unique): no audience, holdout or
    schedule, but the same consent, contact, ceilings, quiet hours and caps as a campaign's occurrence."""
    counts: dict[str, int] = {reason: 0 for reason in (*EXCLUSION_REASONS, *ADJUSTMENT_REASONS)}
    members = (due.select("customer_id", "send_at", "coupon_key")
               .join(inputs.customers, on="customer_id", how="inner")
               .join(inputs.segments, on="customer_id", how="left"))
    rows, recipients, _ = _plan_treated(spec, members, inputs, rails, sender_id, occurrence, ledger_frame(inputs.ledger),
                                        counts, now, preempted := set())
    counts["recipients"] = recipients.select("customer_id").n_unique() if not recipients.is_empty() else 0
    counts["messages"] = recipients.height
    return Plan(rows=rows.with_columns(variant=pl.lit(None, dtype=pl.String)), counts=counts,
                audience_size=members.height, preempted=sorted(preempted))


def ledger_frame(ledger: pl.DataFrame) -> pl.DataFrame:
    """The ledger's cap columns (a ledger without message ids or preemptible flags holds firm slots only)."""
    missing = {"message_id": pl.lit(None, dtype=pl.Int64), "preemptible": pl.lit(False)}
    return ledger.with_columns(**{k: v for k, v in missing.items() if k not in ledger.columns}).select(
        list(LEDGER_SCHEMA)).cast(LEDGER_SCHEMA)


def _decided(frame: pl.DataFrame, spec: CampaignSpec, status: str, reason: str) -> pl.DataFrame:
    """Outbox rows for members decided before any channel check (holdouts), on the first channel's template."""
    return frame.select("customer_id", "send_at", "locale", "time_zone", channel=pl.lit(spec.channels[0].channel),
                        template=pl.lit(spec.channels[0].template), status=pl.lit(status), reason=pl.lit(reason))


def _reachable(spec: CampaignSpec, members: pl.DataFrame, consent: pl.DataFrame) -> pl.Series:
    """Whether any of the campaign's channels (or any arm's) has contact data and consent for each member."""
    steps = {step.channel for step in spec.channels}
    if spec.experiment is not None:
        steps |= {step.channel for v in spec.experiment.variants for step in (v.channels or [])}
    frame = members.select("customer_id", *{contact_column(c) for c in steps})
    flags = [_eligible(channel, frame, consent, spec.transactional)["block"].is_null() for channel in sorted(steps)]
    return pl.select(pl.any_horizontal(flags)).to_series()


def _plan_treated(spec: CampaignSpec, treated: pl.DataFrame, inputs: PlanInputs, rails: GuardRails,
                  campaign_id: int, occurrence: str, ledger: pl.DataFrame, counts: dict[str, int],
                  now: datetime, preempted: set[int]) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Offer ceilings, channels, consent, quiet hours and caps for the treated members (of one A/B arm).

    Returns the arm's outbox rows, its recipients and the ledger with them added; adds to `counts`."""
    treated, offer_rows = _apply_offer(spec, treated, inputs, rails, campaign_id, occurrence)
    withheld = treated.filter(pl.col("offer_decision") == WITHHELD) if spec.offer and not \
        spec.offer.send_without_offer else treated.clear()
    counts["offer_withheld"] += withheld.height
    counts["offer_reduced"] += treated.filter(pl.col("offer_decision") == "reduced").height if spec.offer else 0
    out_rows = [_decided(withheld, spec, "skipped", "offer_withheld")]
    pending = treated.join(withheld.select("customer_id"), on="customer_id", how="anti")
    last_block: pl.DataFrame | None = None
    accepted_parts = []
    for step in spec.channels:
        if pending.is_empty():
            break
        checked = _eligible(step.channel, pending.with_columns(channel=pl.lit(step.channel),
                                                               template=pl.lit(step.template)),
                            inputs.consent, spec.transactional)
        reachable = checked.filter(pl.col("block").is_null())
        reachable = defer_out_of_quiet_hours(reachable, rails.quiet, transactional=spec.transactional)
        reachable = _capped(reachable, ledger, rails, spec, now)
        accepted = reachable.filter(~pl.col("capped"))
        accepted_parts.append(accepted)
        taken = set(accepted["preempts"].explode().drop_nulls().to_list()) if accepted.height else set()
        preempted |= taken
        # The slots taken leave the ledger; this campaign's messages join it as firm (planned in this pass).
        ledger = pl.concat([ledger.filter(~pl.col("message_id").is_in(sorted(taken)).fill_null(False)),
                            accepted.select("customer_id", "channel", "send_at",
                                            priority=pl.lit(spec.priority, dtype=pl.Int64),
                                            message_id=pl.lit(None, dtype=pl.Int64), preemptible=pl.lit(False))])
        blocked = pl.concat([checked.filter(pl.col("block").is_not_null()),
                             reachable.filter(pl.col("capped")).with_columns(block=pl.col("cap_reason"))],
                            how="diagonal_relaxed")
        last_block = blocked if spec.delivery == "first_eligible" else (
            blocked if last_block is None else pl.concat([last_block, blocked], how="diagonal_relaxed"))
        if spec.delivery == "first_eligible":
            pending = pending.join(accepted.select("customer_id"), on="customer_id", how="anti")
    recipients = pl.concat(accepted_parts, how="diagonal_relaxed") if accepted_parts else pending.clear()
    if last_block is not None and not last_block.is_empty():
        # first_eligible: customers no channel took; all: every refused channel. Cap skips are ledger rows.
        unreached = last_block.join(recipients.select("customer_id"), on="customer_id", how="anti") \
            if spec.delivery == "first_eligible" else last_block
        for reason, number in unreached.group_by("block").len().iter_rows():
            counts[reason] = counts.get(reason, 0) + number
        out_rows.append(unreached.filter(pl.col("block").is_in(["capped", "lower_priority"])).select(
            "customer_id", "send_at", "locale", "time_zone", "channel", "template", status=pl.lit("skipped"),
            reason=pl.col("block")))
    if not recipients.is_empty():
        counts["deferred_quiet_hours"] += recipients["deferred_quiet"].sum()
        counts["deferred_cap"] += recipients["deferred_cap"].sum()
        out_rows.append(recipients.select(
            "customer_id", "send_at", "locale", "time_zone", "channel", "template", status=pl.lit("planned"),
            reason=pl.when(pl.col("deferred_cap")).then(pl.lit("deferred_cap"))
            .when(pl.col("deferred_quiet")).then(pl.lit("deferred_quiet_hours")).otherwise(None)))
    rows = pl.concat([r for r in out_rows if not r.is_empty()] or [out_rows[0]], how="diagonal_relaxed")
    if offer_rows is not None:
        # Valid for N days from each message's final send time, after quiet hours and cap deferrals moved it.
        rows = rows.join(offer_rows, on="customer_id", how="left").with_columns(
            valid_until=pl.when(pl.col("coupon_code").is_not_null())
            .then(pl.col("send_at") + timedelta(days=spec.offer.valid_days)).cast(UTC_TYPE))
    return rows, recipients, ledger


def _capped(frame: pl.DataFrame, ledger: pl.DataFrame, rails: GuardRails, spec: CampaignSpec,
            now: datetime) -> pl.DataFrame:
    """Cap check; with defer_days, a capped message moves to when the cap frees up (then quiet hours again)."""
    caps = [] if spec.transactional else list(rails.caps)
    checked = check_caps(frame, ledger, caps, spec.priority).with_columns(deferred_cap=pl.lit(False))
    if spec.defer_days <= 0 or not checked["capped"].any():
        return checked.drop("cap_label", "free_at")
    retry = checked.filter(pl.col("capped") & pl.col("free_at").is_not_null())
    limit = pl.col("send_at") + timedelta(days=spec.defer_days)
    retry = retry.with_columns(__limit=limit, send_at=pl.col("free_at")).drop(
        "capped", "cap_reason", "cap_label", "free_at", "deferred_cap", "deferred_quiet", "preempts")
    retry = defer_out_of_quiet_hours(retry, rails.quiet)
    again = check_caps(retry, ledger, caps, spec.priority)
    moved = again.filter(~pl.col("capped") & (pl.col("send_at") <= pl.col("__limit"))).with_columns(
        deferred_cap=pl.lit(True)).drop("__limit")
    kept = checked.join(moved.select("customer_id"), on="customer_id", how="anti")
    return pl.concat([kept, moved], how="diagonal_relaxed").drop("cap_label", "free_at")


def _apply_offer(spec: CampaignSpec, treated: pl.DataFrame, inputs: PlanInputs, rails: GuardRails,
                 campaign_id: int, occurrence: str) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Ceilings per customer; returns the frame with offer_decision and the per-customer offer columns."""
    if spec.offer is None or treated.is_empty():
        return treated.with_columns(offer_decision=pl.lit(None, dtype=pl.String)), None
    offer = spec.offer
    terms = OfferTerms(amount_off=offer.amount_off, percent_off=offer.percent_off, min_spend=offer.min_spend,
                       free_shipping=offer.free_shipping, max_discount=offer.max_discount)
    decided = apply_ceilings(_money(treated.select("customer_id", "tier", "send_at"), inputs), terms, rails.discounts)
    keys = decided["customer_id"] if "coupon_key" not in treated.columns else decided.select("customer_id").join(
        treated.select("customer_id", "coupon_key"), on="customer_id", how="left")["coupon_key"]
    decided = decided.with_columns(coupon_code=coupon_codes(offer.coupon_prefix, abs(campaign_id), occurrence, keys))
    decided = decided.with_columns(coupon_code=pl.when(pl.col("offer_decision") == WITHHELD).then(None)
                                   .otherwise(pl.col("coupon_code")))
    offer_rows = decided.select("customer_id", "offer_decision", "offer_reasons", "offer_amount_off",
                                "offer_percent_off", "offer_free_shipping", "discount_value", "coupon_code",
                                min_spend=pl.col("offer_min_spend"), max_discount=pl.col("offer_max_discount"))
    return treated.join(decided.select("customer_id", "offer_decision"), on="customer_id", how="left"), offer_rows


def occurrence_key(day: date) -> str:
    """The outbox key's occurrence part for a local day."""
    return day.isoformat()

