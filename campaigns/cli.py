"""campaigns' commands: `crm campaigns …` (touch plans, dry-runs, planning) and `crm dispatch run` (the outbox)."""

from __future__ import annotations

import json
import logging
from datetime import date
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from campaigns import service as campaigns
from kit import metrics
from kit.cli import CliError, cli_context, console, optional_day, worker_context
from kit.context import Context
from kit.db import session_scope
from kit.logs import configure_logging

log = logging.getLogger("crm.workers")

app = typer.Typer(no_args_is_help=True)
campaigns_app = typer.Typer(help="Campaigns: default plans, dry-runs, planning.", no_args_is_help=True)
app.add_typer(campaigns_app, name="campaigns")
dispatch_app = typer.Typer(help="Dispatch: send due outbox messages through the channels.", no_args_is_help=True)
app.add_typer(dispatch_app, name="dispatch")
journeys_app = typer.Typer(help="Journeys: event-triggered multi-step automation.", no_args_is_help=True)
app.add_typer(journeys_app, name="journeys")
uplift_app = typer.Typer(help="Uplift: who a message changes, learnt from past holdouts.", no_args_is_help=True)
app.add_typer(uplift_app, name="uplift")


@campaigns_app.command("install-defaults")
def campaigns_install_defaults(
        draft: Annotated[bool, typer.Option("--draft", help="leave them in draft instead of activating")] = False,
) -> None:
    """Create the default touch plans (VIP call, potential coupon, lost win-back, at-risk, birthday, first order) and
    the default journeys (abandoned cart, onboarding, post-purchase, staged recall, win-back)."""
    ctx = cli_context()
    for row in install_defaults(ctx, activate=not draft):
        print_installed(row)
    _install_journeys(ctx, draft)


def install_defaults(ctx: Context, activate: bool = True) -> list[dict]:
    """Create (and activate) the default touch plans that do not exist yet."""
    with session_scope(ctx.engine) as session:
        return campaigns.install_defaults(session, ctx, "cli", activate=activate)


def print_installed(row: dict) -> None:
    """One installed default campaign, with its first fairness warning."""
    state = "created" if row["created"] else "exists"
    console.print(f"campaign {row['id']}: {row['name']} ({row['status']}, {state})")
    if row["warnings"]:
        first = row["warnings"][0]
        console.print(f"  [yellow]fairness warning[/yellow] at {len(row['warnings'])} price points, e.g. "
                      f"{first['tier']} pays {first['loyal_price']} for a basket of {first['basket']:g}, "
                      f"new customers {first['new_customer_price']}")


@campaigns_app.command("list")
def campaigns_list() -> None:
    """Campaigns, highest priority first."""
    ctx = cli_context()
    with session_scope(ctx.engine) as session:
        for c in campaigns.list_campaigns(session):
            console.print(f"{c.id}\t{c.status}\tpriority {c.priority}\t{c.name}")


@campaigns_app.command("dry-run")
def campaigns_dry_run(campaign_id: int,
                      on: Annotated[str | None, typer.Option("--date", help="YYYY-MM-DD local occurrence date")] = None,
                      as_json: Annotated[bool, typer.Option("--json", help="print JSON (for scripts) instead of text")] = False) -> None:
    """What the campaign's occurrence would do — writes nothing."""
    result = _dry_run(cli_context(), campaign_id, optional_day(on))
    if as_json:
        print(json.dumps(result, default=str, ensure_ascii=False))
    else:
        _print_dry_run(result)


def _dry_run(ctx: Context, campaign_id: int, day: date | None) -> dict:
    with session_scope(ctx.engine) as session:
        return campaigns.dry_run(session, ctx, campaign_id, day)


def _print_dry_run(result: dict) -> None:
    channels = ", ".join(f"{k} {v:,}" for k, v in result["per_channel"].items() if v)
    excluded = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in result["excluded"].items() if v)
    adjusted = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in result["adjusted"].items() if v)
    cost = result["estimated_cost"]
    console.print(f"[bold]{result['campaign']}[/bold] on {result['occurrence']}: audience {result['audience']:,}, "
                  f"recipients {result['recipients']:,} ({channels or 'none'})")
    console.print(f"  excluded: {excluded or 'nobody'}; adjusted: {adjusted or 'nothing'}")
    console.print(f"  estimated cost: messages {cost['messages']:,.2f}, discount {cost['discount_expected']:,.2f} "
                  f"expected ({cost['discount_if_all_redeemed']:,.2f} if every offer is redeemed)")
    for sample in result["samples"][:1]:
        text = sample["rendered"].get("body") or sample["rendered"].get("subject") or ""
        console.print(f"  sample {sample['channel']} to {sample['customer']} ({sample['locale']}): {text}")


@campaigns_app.command("plan")
def campaigns_plan(campaign_id: int,
                   on: Annotated[str | None, typer.Option("--date", help="YYYY-MM-DD local occurrence date")] = None,
                   as_json: Annotated[bool, typer.Option("--json", help="print JSON (for scripts) instead of text")] = False) -> None:
    """Plan an occurrence into the outbox (a second run adds nothing)."""
    ctx = cli_context()
    with session_scope(ctx.engine) as session:
        result = campaigns.plan_campaign(session, ctx, campaign_id, optional_day(on))
    if as_json:
        print(json.dumps(result, default=str))
    else:
        console.print(f"campaign {campaign_id} occurrence {result['occurrence']}: {result['added']:,} outbox rows added"
                      + (" (already planned)" if result["already_planned"] else ""))


def _dispatch_worker(share: float, once: bool, max_batches: int | None, now: str | None) -> dict:
    """One dispatcher process (also the target of --workers' child processes)."""
    from campaigns.delivery.channels import build_senders
    from campaigns.delivery.dispatch import serve as serve_dispatch

    # SIGTERM finishes the batch in hand and exits: its claimed messages are sent and recorded, none stranded.
    configure_logging("dispatcher")
    ctx, stop = worker_context(now)
    if not once:
        from campaigns.delivery.dispatch import worker_name

        log.info("dispatcher %s running (SIGTERM finishes the batch in hand)", worker_name())
    report = serve_dispatch(ctx, build_senders(ctx.settings), once=once, stop=stop, max_batches=max_batches,
                            share=share)
    return dict(report.counts) | {f"seconds_{k}": round(v, 3) for k, v in report.seconds.items()}


@dispatch_app.command("run")
def dispatch_run(
    once: Annotated[bool, typer.Option("--once", help="send what is due, then exit")] = False,
    workers: Annotated[int, typer.Option(min=1, max=64, help="worker processes (PostgreSQL; SQLite has one writer)")] = 1,
    max_batches: Annotated[int | None, typer.Option(min=1, help="stop after this many batches per pass")] = None,
    now: Annotated[str | None, typer.Option(help="ISO instant to dispatch as of (replays, tests)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (for scripts) instead of text")] = False,
) -> None:
    """Send due messages: claim, check caps/consent/quiet hours again, send, record; SIGTERM stops cleanly."""
    configure_logging("dispatcher")
    ctx = cli_context()
    metrics.configure(ctx.settings.metrics_directory())
    if workers > 1 and ctx.engine.dialect.name != "postgresql":
        raise CliError("SQLite has a single writer: run one dispatcher (use PostgreSQL for --workers)")
    if workers == 1:
        counts = _dispatch_worker(1.0, once, max_batches, now)
    else:
        import multiprocessing
        from collections import Counter

        pool = multiprocessing.get_context("spawn").Pool(workers)
        try:
            parts = pool.starmap(_dispatch_worker, [(1.0 / workers, once, max_batches, now)] * workers)
        finally:
            pool.close()
            pool.join()
        counts = {k: round(v, 3) if isinstance(v, float) else v
                  for k, v in sum((Counter(p) for p in parts), Counter()).items()}
    if as_json:
        print(json.dumps(counts))
    elif once:
        console.print("dispatched: " + (", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())) or "nothing due"))
    else:  # a service's output is its log
        log.info("dispatcher stopped: %s", ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())) or "nothing")


def print_campaign_reports(rows: list[dict]) -> None:
    """Per campaign: arms, conversion treated vs holdout, uplift with its interval, revenue, costs and ROI."""
    if not rows:
        console.print("no campaign messages in the period")
        return
    table = Table("campaign", "treated / holdout", "conversion T vs H", "uplift [95% CI]", "p",
                  "incremental revenue [95% CI]", "attributed revenue / cost / incremental ROI",
                  title="Campaigns")
    notes = []
    for row in rows:
        conv = row["uplift"]["conversion"]
        incremental = row["uplift"]["incremental_revenue"]
        rates = ("–" if conv["difference"] is None else
                 f"{conv['treated_rate']:.1%} vs {conv['control_rate']:.1%}")
        lift = ("–" if conv["difference"] is None else
                f"{conv['difference']:+.2%} [{conv['low']:+.2%}, {conv['high']:+.2%}]"
                + (" *" if conv["significant"] else "") + (" †" if conv["small_sample"] else ""))
        money = ("–" if incremental["difference"] is None or incremental["low"] is None else
                 f"{incremental['difference']:,.0f} [{incremental['low']:,.0f}, {incremental['high']:,.0f}]")
        roi = "–" if row["incremental_roi"] is None else f"{row['incremental_roi']:.1f}"
        table.add_row(row["campaign"], f"{row['members']['treated']:,} / {row['members']['holdout']:,}", rates, lift,
                      "–" if conv["p_value"] is None else f"{conv['p_value']:.3g}", money,
                      f"{row['revenue']:,.0f} / {row['cost']:,.0f} / {roi}")
        still = row["uplift"]["sample_still_needed"]
        if still and (still["treated"] or still["control"]):
            notes.append(f"  {row['campaign']}: not significant yet; about {still['treated']:,} more treated and "
                         f"{still['control']:,} more holdout members would settle it (80% power)")
        if "experiment" in row:
            verdict = row["experiment"]
            notes.append(f"  {row['campaign']}: A/B on {verdict['variable']}: {verdict['status']}"
                         + (f", winner {verdict['winner']}" if verdict["winner"] else ""))
    # Wide enough for the intervals even when piped (rich assumes 80 columns there).
    Console(soft_wrap=True, width=max(console.width, 170)).print(table)
    for note in notes:
        console.print(note)
    console.print("* significant at 95%; † an arm has fewer than 10 conversions or non-conversions (rough "
                  "interval); uplift = conversion within the attribution window, treated − holdout")


@journeys_app.command("list")
def journeys_list() -> None:
    """Journeys, highest priority first, with their enrollments by status."""
    ctx = cli_context()
    with session_scope(ctx.engine) as session:
        for journey in campaigns.list_journeys(session):
            counts = campaigns.journey_funnel(session, ctx, journey.id)["enrollments"]
            shown = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())) or "no enrollments"
            console.print(f"{journey.id}\t{journey.status}\tpriority {journey.priority}\t{journey.name}\t{shown}")


@journeys_app.command("install-defaults")
def journeys_install_defaults(
        draft: Annotated[bool, typer.Option("--draft", help="leave them in draft instead of activating")] = False,
) -> None:
    """Create the default journeys (abandoned cart, onboarding, post-purchase, staged recall, win-back)."""
    _install_journeys(cli_context(), draft)


def _install_journeys(ctx: Context, draft: bool) -> None:
    with session_scope(ctx.engine) as session:
        for row in campaigns.install_default_journeys(session, ctx, "cli", activate=not draft):
            console.print(f"journey {row['id']}: {row['name']} ({row['status']}, "
                          f"{'created' if row['created'] else 'exists'})")


@journeys_app.command("simulate")
def journeys_simulate(
        journey_id: Annotated[int, typer.Argument(help="the journey's id")],
        customer: Annotated[str, typer.Option(help="the customer's external id")],
        as_json: Annotated[bool, typer.Option("--json", help="print JSON (for scripts) instead of text")] = False,
) -> None:
    """The timeline a customer would take through the journey from now (nothing is written)."""
    ctx = cli_context()
    with session_scope(ctx.engine) as session:
        customer_id = campaigns.customer_id_of(session, customer)
        result = campaigns.simulate_journey(session, ctx, journey_id, customer_id)
    if as_json:
        print(json.dumps(result, default=str))
        return
    if not result["enters"]:
        console.print(f"{customer} would not enter: {result['reason']}")
        return
    for step in result["timeline"]:
        console.print(f"{step['at']:%Y-%m-%d %H:%M} UTC  {step['step']:<20} {step['kind']:<7} {step['outcome']}"
                      + (f" ({step['reason']})" if step["reason"] else ""))
    console.print(f"ends: {result['status']} ({result['end_reason'] or 'still in the journey'})")


@journeys_app.command("run")
def journeys_run(
        once: Annotated[bool, typer.Option("--once", help="work until nothing is due, then exit")] = False,
        now: Annotated[str | None, typer.Option(help="ISO instant to run as of (replays, tests)")] = None,
        batch: Annotated[int, typer.Option(min=1, max=50_000, help="enrollments advanced per pass (transaction)")] = 10_000,
        as_json: Annotated[bool, typer.Option("--json", help="print JSON (for scripts) instead of text")] = False,
) -> None:
    """The journey worker: entries from fresh activity and dates, due steps under the guard rails; several may run
    (PostgreSQL); SIGTERM finishes the pass in hand."""
    configure_logging("journeys")
    ctx, stop = worker_context(now)
    metrics.configure(ctx.settings.metrics_directory())
    if not once:
        log.info("journey worker running (SIGTERM finishes the pass in hand)")
    totals = campaigns.serve_journeys(ctx, once=once, stop=stop, batch=batch)
    if as_json:
        print(json.dumps(totals))
    elif once:
        console.print("journeys: " + ", ".join(f"{k} {v:,}" for k, v in totals.items()))
    else:
        log.info("journey worker stopped: %s", ", ".join(f"{k} {v:,}" for k, v in totals.items()))


@uplift_app.command("train")
def uplift_train(as_json: Annotated[bool, typer.Option("--json", help="print JSON (for scripts) instead of text")] = False) -> None:
    """Fit the uplift models (one per campaign kind, channel and offer, and one over all) from past arms."""
    ctx = cli_context()
    with session_scope(ctx.engine) as session:
        rows = campaigns.train_uplift(session, ctx, "cli")
    if as_json:
        print(json.dumps(rows, default=str))
        return
    if not rows:
        console.print("no measured arms yet: a campaign or journey needs a holdout and a closed window")
    for row in rows:
        if not row["fitted"]:
            console.print(f"{row['segment']}: not fitted ({row['members']:,} members; {row['reason']})")
            continue
        ranks = row["rankings"]
        console.print(f"{row['segment']}: model {row['model_id']} on {row['members']:,} members; held out "
                      f"{row['held_out']:,}: Qini {ranks['uplift']['qini']:.4f} (random {ranks['random']['qini']:.4f}), "
                      f"top {row['target_share']:.0%} by uplift {_per_thousand(ranks['uplift']['measured'])} vs "
                      f"random {_per_thousand(ranks['random']['measured'])} incremental conversions per 1,000")


def _per_thousand(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


@uplift_app.command("score")
def uplift_score(on: Annotated[str | None, typer.Option("--date", help="YYYY-MM-DD (default today)")] = None) -> None:
    """Refresh every customer's predicted uplift under each current model."""
    from kit.timezones import utc_midnight

    ctx = cli_context()
    day = optional_day(on) or ctx.clock.now().date()
    with session_scope(ctx.engine) as session:
        summary = campaigns.score_uplift(session, ctx, utc_midnight(day))
    console.print(f"{summary['scored']:,} uplift scores over {len(summary['segments'])} segment(s)"
                  + (f": {', '.join(summary['segments'])}" if summary["segments"] else " (no model yet)"))


@uplift_app.command("models")
def uplift_models_list() -> None:
    """The current uplift model of every segment."""
    ctx = cli_context()
    with session_scope(ctx.engine) as session:
        rows = campaigns.uplift_models(session)
    for row in rows:
        ranks = row["metrics"]["rankings"]
        console.print(f"{row['id']}\t{row['segment']}\t{row['members']:,} members\tQini {ranks['uplift']['qini']:.4f}"
                      f"\ttrained {row['trained_at'][:10]}")
