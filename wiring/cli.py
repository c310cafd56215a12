"""The `crm` command line, assembled from every package's Typer sub-app; the composition root's own commands are
the cross-package ones (migrate, generate, scheduler, pipeline, jobs, report, serve, demo)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from campaigns import cli as campaigns_cli
from campaigns.cli import print_campaign_reports
from churn import cli as churn_cli
from crm import cli as crm_cli
from kit import metrics
from kit.cli import (
    CliError,
    GeneratorVariant,
    choice,
    cli_context,
    console,
    human_number,
    parse_day,
    parse_instant,
    phases,
    run_cli,
)
from kit.db import session_scope
from kit.logs import configure_logging, uvicorn_log_config
from kit.migrations import upgrade_to_head
from kit.settings import get_settings
from segmentation import cli as segmentation_cli
from wiring import __version__
from wiring.demo import demo
from wiring.generator import DATASET_PHASES, GeneratorConfig, write_dataset
from wiring.pipeline import print_pipeline_summary, print_steps, run_job_in_foreground

LabChannel = choice("LabChannel", ("sms", "email", "push", "phone"))
app = typer.Typer(help="CRM and customer-retention automation.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
app.add_typer(crm_cli.app)  # `crm import`, `crm keys …`
app.add_typer(segmentation_cli.app, name="segment")
app.add_typer(churn_cli.app, name="churn")
app.add_typer(campaigns_cli.app)  # `crm campaigns …`, `crm dispatch run`
pipeline_app = typer.Typer(help="The daily retention pipeline: segment, score, uplift, plan, dispatch, attribute.",
                           no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")
jobs_app = typer.Typer(help="Scheduled jobs: list, runs, run one now.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.command()(demo)


def _print_version(asked: bool) -> None:
    if asked:
        console.print(f"crm {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                          help="print the version and exit")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="show the traceback of an unexpected error "
                                                        "(also CRM_DEBUG=1)")] = False,
) -> None:
    """CRM and customer-retention automation."""
    if debug:
        os.environ["CRM_DEBUG"] = "1"


@app.command()
def migrate() -> None:
    """Apply database migrations up to head."""
    ctx = cli_context()
    upgrade_to_head(ctx.engine)
    console.print("database at head")


@app.command()
def init() -> None:
    """Create the local secret key if missing and migrate the database."""
    ctx = cli_context(create_key=True)
    upgrade_to_head(ctx.engine)
    console.print(f"ready: {ctx.engine.url.render_as_string(hide_password=True)}")


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("var/generated"),
    customers: Annotated[int, typer.Option(min=1, help="how many customers the shop has")] = 20_000,
    seed: Annotated[int, typer.Option(help="random seed: the same seed makes the same shop")] = 42,
    end: Annotated[str | None, typer.Option(help="last day of history, YYYY-MM-DD (default: today, UTC)")] = None,
    bad_rows: Annotated[float, typer.Option(min=0.0, max=0.5, help="share of deliberately bad rows")] = 0.0,
    variant: Annotated[GeneratorVariant, typer.Option(help="standard, or hard: drifting rates, strong seasons, "
                                                           "promotions that pull orders forward, customers back "
                                                           "after long gaps")] = GeneratorVariant.standard,
) -> None:
    """Write realistic customers, orders, order items and events as CSV (deterministic per seed and end)."""
    try:
        config = GeneratorConfig.variant(variant.value, customers=customers, seed=seed, end=parse_day(end),
                                         bad_rows=bad_rows)
    except ValueError as problem:
        raise CliError(str(problem)) from problem
    started = time.perf_counter()
    with phases("generating", DATASET_PHASES) as done:
        counts = write_dataset(config, out, done)
    elapsed = time.perf_counter() - started
    console.print(", ".join(f"{k}: {v:,}" for k, v in counts.items()) + f" -> {out} in {elapsed:.1f}s")


@app.command()
def scheduler() -> None:
    """Run the scheduler: the leader runs the jobs, others stand by to take over; SIGTERM finishes the running
    job and exits."""
    import logging
    import signal
    import threading

    from kit.scheduler import SchedulerService, instance_name
    from wiring.app import job_registry

    ctx = cli_context()
    configure_logging("scheduler")
    metrics.configure(ctx.settings.metrics_directory())
    registry = job_registry(ctx.settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    service = SchedulerService(ctx, registry, stop=stop)
    log = logging.getLogger("crm.scheduler")
    for job in service.jobs:
        log.info("job %s: %s — %s", job.name, job.schedule.describe(), job.description, extra={"job": job.name})
    log.info("scheduler %s starting (leader or standby; takeover within %gs)", instance_name(),
             ctx.settings.scheduler_takeover_seconds)
    service.run()
    log.info("scheduler stopped")


@pipeline_app.command("run")
def pipeline_run(
    on: Annotated[str | None, typer.Option("--date", help="YYYY-MM-DD occurrence (default today)")] = None,
    force: Annotated[bool, typer.Option("--force", help="rerun steps that already succeeded")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (for scripts) instead of text")] = False,
) -> None:
    """Run the daily pipeline once in the foreground: segment, score, uplift, plan, dispatch, attribute."""
    ctx = cli_context()
    if on is not None:
        parse_day(on, "--date")
    outcome = run_job_in_foreground(ctx, "pipeline", on, force)
    if as_json:
        print(json.dumps(outcome.as_dict(), default=str, ensure_ascii=False))
    else:
        print_pipeline_summary(ctx, outcome)
    if outcome.status != "succeeded":
        raise CliError(f"pipeline {outcome.occurrence} failed at {outcome.error}")


@jobs_app.command("list")
def jobs_list() -> None:
    """Jobs with their schedules, next run times and newest runs."""
    from kit.jobs import overview
    from wiring.app import job_registry

    ctx = cli_context()
    with session_scope(ctx.engine) as session:
        rows = overview(session, ctx, job_registry(ctx.settings))
    table = Table("job", "schedule", "next run (UTC)", "last run")
    for row in rows:
        last = row["last_run"]
        table.add_row(row["name"], row["schedule"], f"{row['next_run_at']:%Y-%m-%d %H:%M}",
                      f"{last['occurrence']} {last['status']}" if last else "never")
    console.print(table)


@jobs_app.command("run")
def jobs_run(name: str,
             occurrence: Annotated[str | None, typer.Option(help="default: the current occurrence")] = None,
             force: Annotated[bool, typer.Option("--force", help="rerun steps that already succeeded")] = False,
             as_json: Annotated[bool, typer.Option("--json", help="print JSON (for scripts) instead of text")] = False) -> None:
    """Run one job now, in the foreground (finished steps of the occurrence are skipped)."""
    outcome = run_job_in_foreground(cli_context(), name, occurrence, force)
    print(json.dumps(outcome.as_dict(), default=str, ensure_ascii=False)) if as_json else print_steps(outcome)
    if outcome.status != "succeeded":
        raise CliError(f"{name} {outcome.occurrence} failed at {outcome.error}")


@app.command()
def report(name: Annotated[str, typer.Argument(help="campaigns, global-control, winback, tiers, retention, clv, "
                                                    "churn-quality or fairness")],
           since: Annotated[str | None, typer.Option(help="period start, ISO 8601 (where the report has one)")] = None,
           until: Annotated[str | None, typer.Option(help="period end, ISO 8601; default now")] = None,
           campaign: Annotated[int | None, typer.Option(help="campaigns: only this campaign id")] = None,
           as_json: Annotated[bool, typer.Option("--json", help="the whole report as JSON")] = False,
           csv_path: Annotated[Path | None, typer.Option("--csv", help="write the report's table as CSV")] = None,
           ) -> None:
    """Print a report (the same as GET /v1/reports/{name}): a table, the full JSON, or CSV to a file."""
    from wiring.report_catalog import build, to_csv

    ctx = cli_context()
    with session_scope(ctx.engine) as session:
        result = build(name, session, ctx, since=since and parse_instant(since, "--since"),
                       until=until and parse_instant(until, "--until"), campaign_id=campaign)
    if csv_path is not None:
        csv_path.write_text(to_csv(name, result), encoding="utf-8")
        console.print(f"{name} -> {csv_path}")
    elif as_json:
        print(json.dumps(result, default=str, ensure_ascii=False))
    elif name == "campaigns":
        print_campaign_reports(result["campaigns"])
    else:
        _print_report_table(name, result)


def _print_report_table(name: str, result: dict) -> None:
    from wiring.report_catalog import REPORTS, flat_rows

    rows = flat_rows(REPORTS[name].table(result))
    if not rows:
        console.print(f"{name}: nothing to report yet")
        return
    columns = list(dict.fromkeys(c for row in rows for c in row))
    table = Table(title=name)
    for column in columns:  # headers in words, never cut; numbers right-aligned
        numeric = all(isinstance(row.get(column), int | float) for row in rows if row.get(column) is not None)
        table.add_column(column.replace("_", " "), justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        table.add_row(*(human_number(row.get(c), c) for c in columns))
    console.print(table)


@app.command()
def serve(host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
          port: Annotated[int | None, typer.Option(min=1, max=65535, help="TCP port (default CRM_API_PORT, 8000)")]
          = None,
          workers: Annotated[int, typer.Option(min=1, max=64, help="worker processes (metrics add up across them)")]
          = 1) -> None:
    """Run the API (OpenAPI docs at /docs)."""
    import signal

    import uvicorn

    ctx = cli_context()  # fail early with a clear message when no key is configured
    metrics.configure(ctx.settings.metrics_directory())
    port = port or ctx.settings.api_port
    # Uvicorn drains in-flight requests on SIGTERM, then raises the signal again with the handler found at start:
    # this one turns that into a clean exit status 0 instead of death by signal.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # The access log drops query strings: a lookup's parameters (contact data, say) never reach a log line.
    proxies = ctx.settings.forwarded_allow_ips
    uvicorn.run("wiring.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_config=uvicorn_log_config(), access_log=False, timeout_graceful_shutdown=int(
                    ctx.settings.api_drain_seconds), proxy_headers=bool(proxies), forwarded_allow_ips=proxies or None)


health_app = typer.Typer(help="Health checks for service managers (exit 0: healthy; else one line saying why).",
                         no_args_is_help=True)
app.add_typer(health_app, name="health")


@health_app.command("api")
def health_api(port: Annotated[int | None, typer.Option(min=1, max=65535, help="the local API's port (default "
                                                                              "CRM_API_PORT)")] = None) -> None:
    """The API on this host answers /v1/health/live (the API container's check)."""
    import httpx

    ctx_port = port or get_settings().api_port
    try:
        answer = httpx.get(f"http://127.0.0.1:{ctx_port}/v1/health/live", timeout=3)
    except httpx.HTTPError as failure:
        raise CliError(f"the API on port {ctx_port} does not answer: {type(failure).__name__}") from None
    if answer.status_code != 200:
        raise CliError(f"the API on port {ctx_port} answered {answer.status_code}")
    console.print("api: live")


@health_app.command("database")
def health_database() -> None:
    """The database answers and its schema is at the code's migration head (the workers' check)."""
    from kit.migrations import head_revision, probe

    ctx = cli_context()
    reachable, revision = probe(ctx.engine)
    if not reachable:
        raise CliError("the database does not answer")
    if revision != head_revision():
        raise CliError(f"the database is at migration {revision}, the code needs {head_revision()}: run crm migrate")
    console.print(f"database: at {revision}")


@health_app.command("scheduler")
def health_scheduler() -> None:
    """A scheduler leader beat within the takeover bound (the scheduler's check: some instance leads)."""
    from kit.jobs import scheduler_health

    ctx = cli_context()
    with session_scope(ctx.engine) as session:
        found = scheduler_health(session, ctx)
    if not found["running"]:
        raise CliError(f"no scheduler leader beat in the last {ctx.settings.scheduler_takeover_seconds:g} s")
    console.print(f"scheduler: {found['leader']} leads; standbys: {', '.join(found['standbys']) or 'none'}")


@campaigns_cli.uplift_app.command("evaluate")
def uplift_evaluate(
    customers: Annotated[int, typer.Option(min=2000, help="generated customers")] = 20_000,
    seed: Annotated[int, typer.Option(help="random seed of the generated shop and the split")] = 3,
    variant: Annotated[GeneratorVariant, typer.Option(help="generator variant")] = GeneratorVariant.standard,
    channel: Annotated[LabChannel, typer.Option(help="the simulated campaign's channel")] = LabChannel.sms,
    offer: Annotated[bool, typer.Option("--offer/--no-offer", help="whether it carries a coupon")] = True,
    share: Annotated[float, typer.Option(min=0.01, max=1.0, help="share of customers each ranking targets")] = 0.3,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (for scripts) instead of text")] = False,
) -> None:
    """On a generated shop with a known per-customer effect: one past campaign with a random holdout, the uplift
    model fitted on its arms, and targeting by uplift vs by churn risk vs at random on held-out members."""
    from datetime import UTC, date, datetime

    from wiring.uplift_lab import LabConfig, run_lab

    variant, channel = variant.value, channel.value
    try:
        config = GeneratorConfig.variant(variant, customers=customers, seed=seed, end=date(2026, 11, 1))
    except ValueError as problem:
        raise CliError(str(problem)) from problem
    result = run_lab(config, LabConfig(send_at=datetime(2026, 9, 1, tzinfo=UTC), channel=channel, offer=offer,
                                       target_share=share, seed=seed))
    if as_json:
        print(json.dumps(result))
        return
    console.print(f"{result['channel']} {'with' if offer else 'without'} a coupon to {result['customers']:,} customers "
                  f"(fitted on {result['members_fitted']:,}, measured on {result['members_held_out']:,} held out); "
                  f"true mean uplift {result['true_mean_uplift_per_1000']:.1f} per 1,000")
    table = Table("targeting", "Qini", f"measured per 1,000 (top {share:.0%})", "true per 1,000")
    for name, row in result["rankings"].items():
        table.add_row(f"by {name}" if name != "random" else "at random", f"{row['qini']:.4f}",
                      f"{row['measured']:.1f}" if row["measured"] is not None else "n/a", f"{row['true']:.1f}")
    console.print(table)
    console.print(f"sleeping dogs (put off by messages): {result['sleeping_dog_share']:.1%} of customers, "
                  f"{result['sleeping_dogs_found']:.0%} of them predicted negative "
                  f"({result['others_called_sleeping']:.0%} of the others)")


def main() -> None:
    """Entry point of the `crm` command."""
    run_cli(app)


if __name__ == "__main__":
    main()
