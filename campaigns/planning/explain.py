"""What planning would do and why, writing nothing: a campaign's dry-run (counts, exclusions, rendered samples,
costs) and one customer's eligibility with each audience condition."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import polars as pl
from sqlmodel import Session

from campaigns.authoring import rendering
from campaigns.authoring.campaigns import get_campaign
from campaigns.authoring.spec import CampaignSpec
from campaigns.authoring.templates import find_template, message_context, offer_for_template
from campaigns.models import (
    Campaign,
)
from campaigns.planning.planner import (
    EXCLUSION_REASONS,
    PlanInputs,
    occurrence_key,
)
from campaigns.planning.plans import compute_plan, resolve_day
from crm.service import (
    consent_frame,
    contactability_frame,
    customer_by_external_id,
)
from kit.channels import CHANNELS
from kit.context import Context
from segmentation.service import segments_frame


def dry_run(session: Session, ctx: Context, campaign_id: int, day: date | None = None, sample_size: int = 5
            ) -> dict[str, Any]:
    """What planning would do now — audience, recipients per channel, exclusions per reason, samples, costs —
    writing nothing."""
    campaign = get_campaign(session, campaign_id)
    spec = CampaignSpec.model_validate(campaign.spec)
    day = resolve_day(ctx, spec, day)
    plan, _, timings = compute_plan(session, ctx, campaign, day)
    planned = plan.rows.filter(pl.col("status") == "planned")
    units = ctx.settings.message_unit_cost
    samples, segments = _samples(session, ctx, campaign, spec, planned, sample_size)
    message_cost = sum(plan.counts.get(f"channel_{c.name}", 0) * units.get(c.name, 0.0) * (segments if c.segments else 1)
                       for c in CHANNELS.all())
    discount_max = float(planned["discount_value"].sum()) if "discount_value" in planned.columns else 0.0
    excluded = {r: plan.counts.get(r, 0) for r in EXCLUSION_REASONS}
    adjusted = {r: plan.counts.get(r, 0) for r in ("deferred_quiet_hours", "deferred_cap", "offer_reduced")}
    return {"campaign_id": campaign.id, "campaign": campaign.name, "status": campaign.status,
            "occurrence": occurrence_key(day), "audience": plan.audience_size,
            "recipients": plan.counts.get("recipients", 0), "messages": plan.counts.get("messages", 0),
            "per_channel": {c: plan.counts.get(f"channel_{c}", 0) for c in CHANNELS.names()},
            "excluded": excluded, "adjusted": adjusted, "samples": samples,
            "estimated_cost": {"messages": round(message_cost, 2), "sms_segments_per_message": segments,
                               "discount_if_all_redeemed": round(discount_max, 2),
                               "discount_expected": round(discount_max * ctx.settings.offer_redemption_rate, 2),
                               "redemption_rate": ctx.settings.offer_redemption_rate},
            "timings": timings}


def _samples(session: Session, ctx: Context, campaign: Campaign, spec: CampaignSpec, planned: pl.DataFrame,
             size: int) -> tuple[list[dict[str, Any]], int]:
    """Rendered messages for the first few recipients, and the SMS segment count seen in them."""
    out, segments = [], 1
    pick = planned.sort("customer_id").head(size)
    if pick.is_empty():
        return out, segments
    tiers, external = {}, {}
    for customer_id in pick["customer_id"]:  # a handful of samples: one indexed lookup each
        segment = segments_frame(session, customer_id=customer_id)
        tiers[customer_id] = segment["tier"][0] if segment.height else None
        external[customer_id] = contactability_frame(session, customer_id=customer_id)["external_id"][0]
    for row in pick.iter_rows(named=True):
        source = find_template(session, ctx, row["template"], row["channel"], row["locale"])
        # The offer is described in the language of the template that will carry it.
        offer = offer_for_template(row | {"locale": source.locale if source else row["locale"]}) \
            if spec.makes_offers else None
        context = message_context(ctx, row["customer_id"], external.get(row["customer_id"], ""), row["locale"],
                               row["time_zone"], tiers.get(row["customer_id"]), offer=offer, campaign=campaign.name)
        try:
            rendered = rendering.render(source, context) if source else {}
            facts = rendering.check_rendered(row["channel"], rendered, context) if source else {}
        except rendering.TemplateProblem as problem:
            rendered, facts = {"error": str(problem)}, {}
        segments = max(segments, facts.get("segments", 1))
        out.append({"customer": external.get(row["customer_id"]), "channel": row["channel"],
                    "send_at": row["send_at"], "locale": source.locale if source else row["locale"],
                    "rendered": rendered, **facts})
    return out, segments


def eligibility(session: Session, ctx: Context, campaign_id: int, external_id: str, day: date | None = None
                ) -> dict[str, Any]:
    """Whether and why one customer would get this campaign's next (or given) occurrence."""
    campaign = get_campaign(session, campaign_id)
    spec = CampaignSpec.model_validate(campaign.spec)
    customer = customer_by_external_id(session, external_id)
    day = resolve_day(ctx, spec, day)
    plan, inputs, _ = compute_plan(session, ctx, campaign, day, customer_id=customer.id)
    facts = _audience_facts(spec, inputs, day)
    rows = plan.rows.filter(pl.col("customer_id") == customer.id)
    reasons = [r for r in EXCLUSION_REASONS if plan.counts.get(r)]
    decisions = [{"channel": r["channel"], "status": r["status"], "reason": r["reason"], "send_at": r["send_at"],
                  "offer": offer_for_template(r) if spec.makes_offers else None,
                  "offer_decision": r.get("offer_decision"), "offer_reasons": r.get("offer_reasons")}
                 for r in rows.iter_rows(named=True)]
    would_receive = any(d["status"] == "planned" for d in decisions)
    consent = consent_frame(session, customer_id=customer.id)
    return {"campaign_id": campaign.id, "customer": external_id, "occurrence": occurrence_key(day),
            "in_audience": plan.audience_size > 0, "audience_checks": facts, "would_receive": would_receive,
            "reasons": reasons if not would_receive else [], "decisions": decisions,
            "consent": {c: s for _, c, s in consent.iter_rows()}}


def _audience_facts(spec: CampaignSpec, inputs: PlanInputs, day: date) -> list[dict[str, Any]]:
    """Each audience condition with the customer's value and whether it holds (one customer)."""
    seg = inputs.segments.row(0, named=True) if inputs.segments.height else {}
    score = inputs.scores.row(0, named=True) if inputs.scores.height else {}
    tags = set(inputs.tags["tag"]) if inputs.tags.height else set()
    rules, checks = spec.audience, []

    def add(condition: str, value: Any, holds: bool) -> None:
        checks.append({"condition": condition, "value": value, "holds": bool(holds)})

    if rules.tiers:
        add(f"tier in {rules.tiers}", seg.get("tier"), seg.get("tier") in rules.tiers)
    if rules.exclude_tiers:
        add(f"tier not in {rules.exclude_tiers}", seg.get("tier"), seg.get("tier") not in rules.exclude_tiers)
    if rules.layers:
        add(f"layer in {rules.layers}", seg.get("layer"), seg.get("layer") in rules.layers)
    if rules.tags:
        add(f"has a tag of {rules.tags}", sorted(tags), bool(tags & set(rules.tags)))
    if rules.exclude_tags:
        add(f"has no tag of {rules.exclude_tags}", sorted(tags), not tags & set(rules.exclude_tags))
    if rules.churn_risk_above is not None:
        p = score.get("probability")
        add(f"churn risk > {rules.churn_risk_above}", p, p is not None and p > rules.churn_risk_above)
    if rules.risk_levels:
        add(f"risk level in {rules.risk_levels}", score.get("risk_level"), score.get("risk_level") in rules.risk_levels)
    clv = score.get("predicted_clv_12m")
    if rules.predicted_clv_min is not None:
        add(f"predicted value ≥ {rules.predicted_clv_min:g}", clv, clv is not None and clv >= rules.predicted_clv_min)
    if rules.predicted_clv_max is not None:
        add(f"predicted value ≤ {rules.predicted_clv_max:g}", clv, clv is not None and clv <= rules.predicted_clv_max)
    if rules.p_alive_min is not None:
        alive = score.get("p_alive")
        add(f"P(alive) ≥ {rules.p_alive_min:g}", alive, alive is not None and alive >= rules.p_alive_min)
    if rules.next_order_within_days is not None:
        due = score.get("expected_next_order_at")
        add(f"next order due within {rules.next_order_within_days} days", due and due.date().isoformat(),
            due is not None and day <= due.date() <= day + timedelta(days=rules.next_order_within_days))
    if rules.uses_uplift:
        found = inputs.uplift.row(0, named=True) if inputs.uplift is not None and inputs.uplift.height else {}
        lift = found.get("uplift")
        if rules.uplift_min is not None:
            add(f"predicted uplift ≥ {rules.uplift_min:g}", lift, lift is not None and lift >= rules.uplift_min)
        if rules.exclude_sleeping_dogs:
            add("not put off by messages (predicted uplift ≥ 0)", lift, lift is None or lift >= 0)
    if rules.at_risk is not None or spec.schedule.trigger == "at_risk":
        wanted = True if rules.at_risk is None else rules.at_risk
        add(f"at risk = {wanted}", score.get("at_risk"), bool(score.get("at_risk")) == wanted)
    return checks
