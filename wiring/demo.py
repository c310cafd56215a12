"""`crm demo`: from nothing to a measured campaign — migrate, generate a shop, import it, train, install the touch
plans, run the daily pipeline, then simulate the week after with a known uplift and report what was recovered."""

from __future__ import annotations

import time
from datetime import UTC, timedelta
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import polars as pl
import typer
from rich.table import Table

from campaigns.cli import install_defaults, print_campaign_reports, print_installed
from churn.cli import print_churn_model, train_churn
from crm.cli import IMPORT_ORDER, import_file, print_import_job
from crm.service import core_row_counts, external_ids_frame
from kit.cli import cli_context, console
from kit.context import Context
from kit.db import session_scope
from kit.migrations import upgrade_to_head
from kit.settings import get_settings
from wiring.generator import GeneratorConfig, write_dataset
from wiring.pipeline import print_pipeline_summary, run_job_in_foreground


def demo(
    customers: Annotated[int, typer.Option(min=100, help="how many customers the demo shop has")] = 20_000,
    seed: Annotated[int, typer.Option(help="random seed: the same seed makes the same shop")] = 42,
    bad_rows: Annotated[float, typer.Option(min=0.0, max=0.5, help="share of deliberately bad import rows, to "
                                                                   "show how they are reported")] = 0.002,
    true_uplift: Annotated[float, typer.Option(min=0.0, max=0.5, help="simulated effect of a message on buying "
                                                                      "within the window")] = 0.03,
    baseline: Annotated[float, typer.Option(min=0.0, max=0.5, help="simulated chance of buying anyway")] = 0.05,
) -> None:
    """From nothing: migrate the embedded database, generate a shop, import it, run the daily pipeline, then
    simulate the week after with a known uplift and report what the measurement recovers."""
    ctx = cli_context(create_key=True)
    console.rule("[bold]CRM retention demo")
    console.print(f"database: {ctx.engine.url.render_as_string(hide_password=True)}")
    upgrade_to_head(ctx.engine)
    end = ctx.clock.now().date()
    out = get_settings().data_dir / "demo-data"
    started = time.perf_counter()
    counts = write_dataset(GeneratorConfig(customers=customers, seed=seed, end=end, bad_rows=bad_rows), out)
    console.print(f"generated {', '.join(f'{v:,} {k}' for k, v in counts.items())} up to {end} "
                  f"in {time.perf_counter() - started:.1f}s -> {out}")
    jobs = []
    for kind in IMPORT_ORDER:
        job = import_file(ctx, kind, out / f"{kind}.csv", "csv")
        print_import_job(job)
        jobs.append(job)
    _summary(ctx, jobs)
    console.rule("[bold]Churn model")
    print_churn_model(train_churn(ctx, None))
    console.rule("[bold]Campaigns")
    for row in install_defaults(ctx):
        print_installed(row)
    for row in install_default_journeys(ctx):
        console.print(f"journey {row['id']}: {row['name']} ({row['status']}, "
                      f"{'created' if row['created'] else 'exists'})")
    console.rule("[bold]Daily pipeline")
    console.print("segment → score churn → refresh uplift → plan today's campaigns → dispatch to the console sender (the clock jumps "
                  "to each customer's local send time; first lines per channel shown) → attribute")
    outcome = run_job_in_foreground(ctx, "pipeline", None, False, {"dispatch": "replay", "console_show": 2})
    print_pipeline_summary(ctx, outcome)
    _print_next_occurrences(ctx)
    console.rule("[bold]Journeys")
    _journeys(ctx)
    console.rule("[bold]Measurement: the week after")
    _simulate_week_after(ctx, out, seed, baseline, true_uplift)
    console.print("next: `crm keys create --role admin --name me`, `crm serve`, then http://127.0.0.1:8000/console/ "
                  "(sign in with the key) or /docs; "
                  "`crm scheduler` runs the daily jobs; `crm jobs list` shows them; `crm report campaigns` (or "
                  "clv, retention, fairness, …) reports")


def _simulate_week_after(ctx: Context, out: Path, seed: int, baseline: float, true_uplift: float) -> None:
    """Generator purchases after today's sends with a known uplift, imported for real; then the clock moves past
    the attribution window and the campaign report shows what the holdouts let us measure."""
    from dataclasses import replace

    from campaigns.measurement.conversions import attribute_conversions
    from campaigns.measurement.reports import campaign_reports, customers_reached, simulated_truth
    from kit.clock import FixedClock
    from kit.timezones import utc_midnight
    from wiring.generator import simulate_responses

    today = utc_midnight(ctx.clock.now().date())
    window = ctx.settings.attribution_window_days
    with session_scope(ctx.engine) as session:
        members, arms = customers_reached(session, today - timedelta(days=1), today + timedelta(days=2))
        external = external_ids_frame(session)
    if members.is_empty():
        console.print("no campaign fired today: nothing to measure")
        return
    orders = simulate_responses(members.join(external, on="customer_id"), baseline=baseline,
                                true_uplift=true_uplift, window_days=window, seed=seed)
    path = out / "simulated_orders.csv"
    orders.write_csv(path, datetime_format="%Y-%m-%dT%H:%M:%SZ")
    job = import_file(ctx, "orders", path, "csv", quiet=True)
    console.print(f"simulated {job.rows_total - job.rows_failed:,} orders from {members.height:,} campaign members over the next {window} "
                  f"days: {baseline:.0%} buy anyway, a message adds {true_uplift:.1%} (the known true uplift)")
    later = replace(ctx, clock=FixedClock(ctx.clock.now() + timedelta(days=window + 2)))
    with session_scope(ctx.engine) as session:
        attribute_conversions(session, later)
    with session_scope(ctx.engine) as session:  # reports read committed data: the conversions are in
        rows = campaign_reports(session, later, since=today - timedelta(days=1), until=today + timedelta(days=2))
    print_campaign_reports(rows)
    truth = simulated_truth(members, arms, true_uplift)
    for row in rows:
        expected = truth.get(row["campaign_id"])
        conversion = row["uplift"]["conversion"]
        if expected is None or conversion["low"] is None:
            continue
        verdict = "contains" if conversion["low"] <= expected <= conversion["high"] else "misses"
        more = expected / true_uplift if true_uplift else 0.0
        console.print(f"  {row['campaign']}: true uplift {expected:+.2%} ({true_uplift:.1%} per message × {more:.2f} "
                      f"more messages per treated than per holdout member); the 95% interval {verdict} it")


def install_default_journeys(ctx: Context) -> list[dict]:
    """Create (and activate) the default journeys that do not exist yet."""
    from campaigns import service as campaigns

    with session_scope(ctx.engine) as session:
        return campaigns.install_default_journeys(session, ctx, "demo")


def _journeys(ctx: Context) -> None:
    """The journey worker after the night (new at-risk flags enrolled customers in the staged recall), a cart
    abandoned and answered within the hour on a simulated clock, an order and a signup entering their journeys, a
    win-back simulated; then every journey's enrollments."""
    from dataclasses import replace

    from campaigns import service as campaigns
    from crm import writes
    from crm.service import external_ids_of, reachable_customers
    from kit.clock import FixedClock

    with session_scope(ctx.engine) as session:
        campaigns.run_journeys_once(session, ctx, activity_limit=200_000, due_limit=200_000, dates=True)
    with session_scope(ctx.engine) as session:
        candidates = reachable_customers(session, "push", zone=ctx.settings.default_time_zone, limit=200)
        free = next((c for c in candidates if not campaigns.customer_journeys(session, c)), None)
        who = external_ids_of(session, [free]).get(free) if free is not None else None
    if who is None:
        console.print("  no customer with push consent to abandon a cart")
        return
    # 11:00 local today: the reminder an hour later is outside quiet hours.
    local = ctx.clock.now().astimezone(ZoneInfo(ctx.settings.default_time_zone)).replace(hour=11, minute=0, second=0,
                                                                                         microsecond=0)
    clock = FixedClock(local.astimezone(UTC))
    simulated = replace(ctx, clock=clock)
    with session_scope(ctx.engine) as session:
        writes.write_items(session, simulated, "events", [{"customer_id": who, "type": "cart_add",
                                                           "unique_id": f"demo-cart-{local:%Y%m%d}",
                                                           "occurred_at": clock.now().isoformat(),
                                                           "properties": {"sku": "SKU-DEMO", "value": 320}}],
                           cause="api", first_wins=True)
    console.print(f"  {local:%H:%M} {who} adds an item to the cart and leaves (simulated clock)")
    for minutes in (30, 31):
        clock.advance(timedelta(minutes=minutes))
        with session_scope(ctx.engine) as session:
            campaigns.run_journeys_once(session, simulated)
            taken = [s for e in campaigns.customer_journeys(session, free) for s in e["steps"]]
        at = clock.now().astimezone(local.tzinfo)
        console.print(f"  {at:%H:%M} journey worker: " + ("; ".join(f"{s['step']} {s['outcome']}" for s in taken)
                                                          or "no order yet, the hour is not over: waiting"))
    clock.advance(timedelta(hours=2))
    newcomer = f"demo-new-{local:%Y%m%d}"
    with session_scope(ctx.engine) as session:
        writes.write_items(session, simulated, "orders", [{"external_id": f"demo-order-{local:%Y%m%d}",
                                                           "customer_id": who, "amount_paid": "320",
                                                           "ordered_at": clock.now().isoformat()}], cause="api")
        writes.write_items(session, simulated, "customers", [{"external_id": newcomer,
                                                              "email": "new.customer@example.com",
                                                              "consent": {"email": "opted_in"}}], cause="api")
    with session_scope(ctx.engine) as session:
        campaigns.run_journeys_once(session, simulated)
        newcomer_id = campaigns.customer_id_of(session, newcomer)
        moves = [(name, e) for name, c in ((who, free), (newcomer, newcomer_id))
                 for e in campaigns.customer_journeys(session, c)]
    console.print(f"  {clock.now().astimezone(local.tzinfo):%H:%M} {who} orders; a new customer signs up:")
    for name, enrollment in reversed(moves):
        console.print(f"    {name} · {enrollment['journey']}: {enrollment['status']}"
                      + (f" (next: {enrollment['step']})" if enrollment["step"] else ""))
    _simulate_win_back(ctx)
    with session_scope(ctx.engine) as session:
        for journey in campaigns.list_journeys(session, "active"):
            funnel = campaigns.journey_funnel(session, ctx, journey.id)
            sent = sum(step["sent"] for step in funnel["steps"])
            states = ", ".join(f"{k} {v:,}" for k, v in sorted(funnel["enrollments"].items())) or "nobody yet"
            console.print(f"  {journey.name}: {states}; {sent:,} messages planned")


def _simulate_win_back(ctx: Context) -> None:
    """The win-back journey's timeline for one lost customer, simulated (nothing written)."""
    from campaigns import service as campaigns
    from crm.service import external_ids_of, reachable_customers
    from segmentation.service import segments_frame

    with session_scope(ctx.engine) as session:
        journey = next((j for j in campaigns.list_journeys(session, "active") if j.name == "Win-back"), None)
        reachable = reachable_customers(session, "email", limit=500)
        lost = segments_frame(session, customer_ids=reachable).filter(pl.col("tier") == "lost")["customer_id"]
        if journey is None or lost.is_empty():
            return
        customer_id = int(lost.min())
        result = campaigns.simulate_journey(session, ctx, journey.id, customer_id)
        name = external_ids_of(session, [customer_id])[customer_id]
    console.print(f"  Win-back simulated for {name} (lost tier; nothing written):")
    for step in result["timeline"]:
        console.print(f"    {step['at']:%Y-%m-%d %H:%M} UTC {step['step']}: {step['outcome']}"
                      + (f" ({step['reason']})" if step["reason"] else ""))


def _print_next_occurrences(ctx: Context) -> None:
    """Active campaigns that did not fire today, with their next occurrence."""
    from campaigns import service as campaigns
    from campaigns.authoring.spec import CampaignSpec

    today = campaigns.shop_today(ctx)
    with session_scope(ctx.engine) as session:
        for campaign in campaigns.list_campaigns(session, "active"):
            spec = CampaignSpec.model_validate(campaign.spec)
            if not spec.schedule.fires_on(today):
                upcoming = campaigns.next_occurrence(spec, today)
                console.print(f"  {campaign.name}: next on {upcoming or 'no date within a year'}")


def _summary(ctx: Context, jobs) -> None:
    table = Table("table", "rows", title="What the database holds now")
    with session_scope(ctx.engine) as session:
        for name, rows in core_row_counts(session).items():
            table.add_row(name, f"{rows:,}")
    console.print(table)
    failed = sum(j.rows_failed for j in jobs)
    console.print(f"{failed:,} deliberately bad rows were reported by row number and skipped; "
                  "running `make demo` again changes nothing (imports are idempotent).")
