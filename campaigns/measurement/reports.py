"""Campaign reports: engagement, attributed revenue and costs, uplift against the holdout, A/B verdicts, the
global control group and the price-fairness report. Reads the outbox, conversions and orders as frames."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import polars as pl
from sqlmodel import Session

from campaigns.authoring.campaigns import get_campaign, list_campaigns, update_campaign
from campaigns.authoring.spec import CampaignSpec
from campaigns.measurement.arms import (
    ROW_SCHEMA,
    ArmResult,
    ab_verdict,
    engagement,
    member_arms,
    outcomes,
    uplift,
)
from campaigns.measurement.stats import mean_difference, rate_difference
from campaigns.models import Campaign
from campaigns.planning.planner import in_global_control
from crm.service import customers_frame, first_order_times_frame, order_lines_frame, orders_frame
from kit.columnar import as_float, read_frame
from kit.context import Context
from kit.errors import Conflict, InvalidInput
from segmentation.service import segments_frame

DEFAULT_PERIOD_DAYS = 90
UTC_TYPE = pl.Datetime("us", "UTC")


def period(ctx: Context, since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    """The reporting period (messages by send time): by default the last 90 days up to now."""
    until = until or ctx.clock.now()
    since = since or until - timedelta(days=DEFAULT_PERIOD_DAYS)
    if since >= until:
        raise InvalidInput("since: must be before until", errors=[{"field": "since", "reason": "not before until"}])
    return since, until


def message_rows(session: Session, since: datetime, until: datetime, campaign_id: int | None = None) -> pl.DataFrame:
    """Outbox rows with send_at in [since, until) (of one campaign when given), in the arms' ROW_SCHEMA."""
    one = "AND m.campaign_id = :campaign_id" if campaign_id is not None else ""
    query = (f"SELECT m.campaign_id, m.occurrence, m.customer_id, m.channel, m.status, m.reason, m.variant, "
             f"m.send_at, m.sent_at, m.delivered_at, m.opened_at, m.clicked_at FROM message m "
             f"WHERE m.send_at >= :since AND m.send_at < :until {one}")
    params = {"since": since, "until": until} | ({"campaign_id": campaign_id} if campaign_id is not None else {})
    return read_frame(session, query, params, ROW_SCHEMA)


def _attributed(session: Session, since: datetime, until: datetime) -> pl.DataFrame:
    query = (f"SELECT c.campaign_id, COUNT(*), {as_float(session, 'SUM(c.revenue)')}, "
             f"{as_float(session, 'SUM(c.discount)')} FROM conversion c "
             f"JOIN message m ON m.id = c.message_id WHERE m.send_at >= :since AND m.send_at < :until "
             f"GROUP BY c.campaign_id")
    return read_frame(session, query, {"since": since, "until": until},
                      {"campaign_id": pl.Int64, "conversions": pl.Int64, "revenue": pl.Float64,
                       "discount_cost": pl.Float64})


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def campaign_reports(session: Session, ctx: Context, *, since: datetime | None = None,
                     until: datetime | None = None, campaign_id: int | None = None) -> list[dict[str, Any]]:
    """Per campaign with messages in the period: reach, delivery, open and click rates, attributed conversions,
    revenue and discount cost, message cost, ROI, and uplift against its holdout (with A/B verdicts)."""
    since, until = period(ctx, since, until)
    now = ctx.clock.now()
    window = timedelta(days=ctx.settings.attribution_window_days)
    rows = message_rows(session, since, until, campaign_id)
    arms = member_arms(rows)
    orders = orders_frame(session, since, min(until + window, now), costs=False)
    measured = outcomes(arms, orders, window, now)
    sending = engagement(rows, ctx.settings.message_unit_cost)
    attributed = _attributed(session, since, until)
    campaigns = {c.id: c for c in ([get_campaign(session, campaign_id)] if campaign_id is not None
                                   else list_campaigns(session))}
    reports = []
    for cid in sorted(set(arms["campaign_id"].to_list())):
        campaign = campaigns.get(cid)
        if campaign is None:
            continue
        reports.append(_campaign_report(campaign, arms.filter(pl.col("campaign_id") == cid),
                                        measured.filter(pl.col("campaign_id") == cid),
                                        sending.filter(pl.col("campaign_id") == cid),
                                        attributed.filter(pl.col("campaign_id") == cid), since, until))
    return reports


def _campaign_report(campaign: Campaign, arms: pl.DataFrame, measured: pl.DataFrame, sending: pl.DataFrame,
                     attributed: pl.DataFrame, since: datetime, until: datetime) -> dict[str, Any]:
    sent = sending.row(0, named=True) if sending.height else {"reach": 0, "sent": 0, "delivered": 0, "opened": 0,
                                                               "clicked": 0, "message_cost": 0.0}
    credit = attributed.row(0, named=True) if attributed.height else {"conversions": 0, "revenue": 0.0,
                                                                      "discount_cost": 0.0}
    message_cost = round(float(sent["message_cost"] or 0.0), 2)
    discount_cost = round(float(credit["discount_cost"] or 0.0), 2)
    revenue = round(float(credit["revenue"] or 0.0), 2)
    cost = message_cost + discount_cost
    lift = uplift(measured)
    incremental = lift["incremental_revenue"]["difference"]
    arm_sizes = dict(arms.group_by("arm").len().iter_rows())
    report = {
        "campaign_id": campaign.id, "campaign": campaign.name, "status": campaign.status,
        "since": since, "until": until, "occurrences": arms["occurrence"].n_unique(),
        "members": {"treated": arm_sizes.get("treated", 0), "holdout": arm_sizes.get("holdout", 0),
                    "global_control": arm_sizes.get("global_control", 0)},
        "measured_members": measured.filter(pl.col("arm") != "global_control").height,
        "reach": sent["reach"], "sent": sent["sent"], "delivered": sent["delivered"],
        "delivery_rate": _ratio(sent["delivered"], sent["sent"]), "open_rate": _ratio(sent["opened"], sent["delivered"]),
        "click_rate": _ratio(sent["clicked"], sent["delivered"]),
        "conversions": credit["conversions"], "revenue": revenue, "discount_cost": discount_cost,
        "message_cost": message_cost, "cost": round(cost, 2),
        "roi": _ratio(revenue - cost, cost), "incremental_roi": _ratio(incremental - cost, cost)
        if incremental is not None else None,
        "uplift": lift,
    }
    spec = CampaignSpec.model_validate(campaign.spec)
    if spec.experiment is not None:
        report["experiment"] = experiment_verdict(spec, measured)
    return report


def customers_reached(session: Session, since: datetime, until: datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
    """For simulating responses: per customer in any campaign of the period, the earliest and latest (would-be)
    send times and how many campaigns sent them a message (`messaged`); and each campaign's members with their arm."""
    rows = message_rows(session, since, until)
    sent = rows.group_by("campaign_id", "customer_id").agg(sent=pl.col("sent_at").is_not_null().any())
    arms = member_arms(rows).join(sent, on=["campaign_id", "customer_id"], how="left")
    reached = (arms.group_by("customer_id")
               .agg(send_at=pl.col("send_at").min(), last_send_at=pl.col("send_at").max(),
                    messaged=((pl.col("arm") == "treated") & pl.col("sent").fill_null(False)).sum())
               .sort("customer_id"))
    return reached, arms.select("campaign_id", "customer_id", "arm")


def simulated_truth(reached: pl.DataFrame, arms: pl.DataFrame, true_uplift: float) -> dict[int, float]:
    """The uplift each campaign truly has when every message adds `true_uplift` to the chance of buying: the
    difference in messages received between its treated and holdout members, times the effect. Not just the
    effect: a campaign's treated members may lose other campaigns' messages to the caps (its holdout keeps them)."""
    received = arms.join(reached.select("customer_id", "messaged"), on="customer_id")
    means = received.group_by("campaign_id", "arm").agg(pl.col("messaged").mean())
    table = {(c, a): m for c, a, m in means.iter_rows()}
    return {c: true_uplift * (table[(c, "treated")] - table[(c, "holdout")])
            for c in {c for c, _ in table} if (c, "treated") in table and (c, "holdout") in table}


def experiment_verdict(spec: CampaignSpec, measured: pl.DataFrame) -> dict[str, Any]:
    """The A/B verdict from the measured treated members of each arm."""
    treated = measured.filter(pl.col("arm") == "treated")
    arms = []
    for variant in spec.experiment.variants:
        members = treated.filter(pl.col("variant") == variant.name)
        arms.append(ArmResult(variant.name, members.height, int(members["converted"].sum())))
    return ab_verdict(arms, spec.experiment)


def promote_winner(session: Session, ctx: Context, campaign_id: int, variant: str, actor: str
                   ) -> tuple[Campaign, list[dict]]:
    """Make the declared winner the whole audience's version (a new campaign version without the test; audited)."""
    campaign = get_campaign(session, campaign_id)
    spec = CampaignSpec.model_validate(campaign.spec)
    if spec.experiment is None:
        raise Conflict(f"campaign {campaign_id} runs no A/B test")
    chosen = next((v for v in spec.experiment.variants if v.name == variant), None)
    if chosen is None:
        names = ", ".join(v.name for v in spec.experiment.variants)
        raise InvalidInput(f"variant: no variant '{variant}' (variants: {names})",
                           errors=[{"field": "variant", "reason": f"unknown; variants are {names}"}])
    report = campaign_reports(session, ctx, campaign_id=campaign_id,
                              since=ctx.clock.now() - timedelta(days=3650))
    verdict = report[0]["experiment"] if report else {"status": "collecting", "winner": None}
    if verdict["winner"] != variant:
        why = "no winner is declared yet" if verdict["winner"] is None else f"the winner is '{verdict['winner']}'"
        raise Conflict(f"cannot promote '{variant}': {why} (status {verdict['status']})")
    promoted = spec.for_variant(chosen)
    return update_campaign(session, ctx, campaign_id, promoted.model_dump(mode="json"), actor)


def global_control_report(session: Session, ctx: Context, *, since: datetime | None = None,
                          until: datetime | None = None) -> dict[str, Any]:
    """All marketing vs none: the global control group against everyone else — share of customers who ordered
    in the period and revenue per customer, with intervals."""
    since, until = period(ctx, since, until)
    customers = customers_frame(session).select("customer_id")
    share, salt = ctx.settings.global_control_share, ctx.settings.global_control_salt
    groups = customers.with_columns(in_global_control(share, salt, customers["customer_id"]))
    spend = (orders_frame(session, since, until, costs=False).group_by("customer_id")
             .agg(revenue=pl.col("amount_paid").sum()))
    measured = groups.join(spend, on="customer_id", how="left").with_columns(
        revenue=pl.col("revenue").fill_null(0.0)).with_columns(ordered=pl.col("revenue") > 0)
    marketed = measured.filter(~pl.col("global_control"))
    control = measured.filter(pl.col("global_control"))
    rates = rate_difference(int(marketed["ordered"].sum()), marketed.height, int(control["ordered"].sum()),
                            control.height)
    revenue = mean_difference(marketed["revenue"].to_numpy(), control["revenue"].to_numpy())
    return {"since": since, "until": until, "share": share, "marketed": marketed.height, "control": control.height,
            "ordering_rate": rates.as_dict(), "revenue_per_customer": revenue.as_dict()}


def fairness_report(session: Session, ctx: Context, *, since: datetime | None = None,
                    until: datetime | None = None, min_orders: int = 3, tolerance: float = 0.01) -> dict[str, Any]:
    """Effective price paid per product and month by tier against new customers (their first order); flags
    every (product, month, loyal tier) whose mean price was above the new customers' by more than `tolerance`.

    The effective price spreads an order's discount over its lines by value; tiers are today's."""
    since, until = period(ctx, since, until)
    lines = order_lines_frame(session, since, until)
    firsts = first_order_times_frame(session)
    tiers = segments_frame(session).select("customer_id", "tier")
    priced = (lines.with_columns(gross=(pl.col("unit_price") * pl.col("qty")).sum().over("order_id"))
              .with_columns(price=pl.col("unit_price") * pl.when(pl.col("gross") > 0)
                            .then(pl.col("amount_paid") / pl.col("gross")).otherwise(1.0).clip(upper_bound=1.0))
              .join(firsts, on="customer_id", how="left").join(tiers, on="customer_id", how="left")
              .with_columns(group=pl.when(pl.col("ordered_at") == pl.col("first_at")).then(pl.lit("new"))
                            .otherwise(pl.col("tier").fill_null("unknown")),
                            month=pl.col("ordered_at").dt.strftime("%Y-%m")))
    table = (priced.group_by("sku", "month", "group")
             .agg(orders=pl.col("order_id").n_unique(), units=pl.col("qty").sum(),
                  mean_price=(pl.col("price") * pl.col("qty")).sum() / pl.col("qty").sum())
             .filter(pl.col("orders") >= min_orders))
    loyal = tuple(ctx.settings.loyal_tiers)
    newcomers = table.filter(pl.col("group") == "new").select("sku", "month", new_price="mean_price",
                                                            new_orders="orders")
    compared = (table.filter(pl.col("group").is_in(loyal)).join(newcomers, on=["sku", "month"])
                .with_columns(premium=(pl.col("mean_price") / pl.col("new_price") - 1).round(4))
                .sort("sku", "month", "group"))
    flagged = compared.filter(pl.col("premium") > tolerance)
    return {"since": since, "until": until, "loyal_tiers": list(loyal), "min_orders": min_orders,
            "tolerance": tolerance, "compared": compared.height, "flagged": flagged.height,
            "rows": flagged.with_columns(pl.col("mean_price").round(2), pl.col("new_price").round(2)).to_dicts()}
