"""The `crm` command line: a composition root like crm.app (demo, serve, generate, import, keys, migrate)."""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn
from rich.table import Table
from sqlmodel import select

from crm import auth, ingest
from crm.clock import SystemClock
from crm.context import Context, build_context
from crm.db import session_scope
from crm.errors import DomainError
from crm.generator import GeneratorConfig, write_dataset
from crm.logs import uvicorn_log_config
from crm.migrations import upgrade_to_head
from crm.models import Customer, Role
from crm.settings import MissingSecretKey, get_settings, load_secret_key

app = typer.Typer(help="CRM and customer-retention automation.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
segment_app = typer.Typer(help="Segmentation: RFM tiers, layers, tags.", no_args_is_help=True)
app.add_typer(segment_app, name="segment")
churn_app = typer.Typer(help="Churn: train, score, evaluate.", no_args_is_help=True)
app.add_typer(churn_app, name="churn")
campaigns_app = typer.Typer(help="Campaigns: default plans, dry-runs, planning.", no_args_is_help=True)
app.add_typer(campaigns_app, name="campaigns")
dispatch_app = typer.Typer(help="Dispatch: send due outbox messages through the channels.", no_args_is_help=True)
app.add_typer(dispatch_app, name="dispatch")
pipeline_app = typer.Typer(help="The daily retention pipeline: segment, score, plan, dispatch, attribute.",
                            no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")
jobs_app = typer.Typer(help="Scheduled jobs: list, runs, run one now.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
console = Console(soft_wrap=True)  # result lines stay whole, so scripts can grep them
KIND_ALIASES = {"customers": "customers", "orders": "orders", "order-items": "order_items",
                "order_items": "order_items", "items": "order_items", "events": "events"}
IMPORT_ORDER = ("customers", "orders", "order_items", "events")


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code 1."""


def _context(create_key: bool = False) -> Context:
    settings = get_settings()
    if create_key:
        _, created = load_secret_key(settings, create=True)
        if created:
            console.print(f"[yellow]created a local secret key in {settings.key_file()} (git-ignored); "
                          "set CRM_SECRET_KEY in production[/yellow]")
    return build_context(settings)


@app.command()
def migrate() -> None:
    """Apply database migrations up to head."""
    ctx = _context()
    upgrade_to_head(ctx.engine)
    console.print("database at head")


@app.command()
def init() -> None:
    """Create the local secret key if missing and migrate the database."""
    ctx = _context(create_key=True)
    upgrade_to_head(ctx.engine)
    console.print(f"ready: {ctx.engine.url.render_as_string(hide_password=True)}")


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("var/generated"),
    customers: Annotated[int, typer.Option(min=1)] = 20_000,
    seed: Annotated[int, typer.Option()] = 42,
    end: Annotated[str | None, typer.Option(help="last day of history, YYYY-MM-DD (default: today, UTC)")] = None,
    bad_rows: Annotated[float, typer.Option(min=0.0, max=0.5, help="share of deliberately bad rows")] = 0.0,
) -> None:
    """Write realistic customers, orders, order items and events as CSV (deterministic per seed and end)."""
    config = GeneratorConfig(customers=customers, seed=seed, end=_parse_day(end), bad_rows=bad_rows)
    started = time.perf_counter()
    counts = write_dataset(config, out)
    elapsed = time.perf_counter() - started
    console.print(", ".join(f"{k}: {v:,}" for k, v in counts.items()) + f" -> {out} in {elapsed:.1f}s")


def _parse_day(value: str | None, option: str = "--end") -> date:
    if value is None:
        return SystemClock().now().date()
    try:
        return date.fromisoformat(value)
    except ValueError as bad:
        raise CliError(f"{option}: '{value}' is not a date (YYYY-MM-DD)") from bad


def _import_file(ctx: Context, kind: str, path: Path, fmt: str | None, quiet: bool = False):
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    fmt = fmt or ("ndjson" if path.suffix.lower() in (".ndjson", ".jsonl") else "csv")
    total = path.stat().st_size
    with session_scope(ctx.engine) as session, Progress(
        TextColumn(f"[bold]{kind}[/bold]"), BarColumn(), TextColumn("{task.fields[rows]:>12,} rows"),
        TransferSpeedColumn(), TimeElapsedColumn(), console=console, disable=quiet, transient=quiet,
    ) as progress:
        task = progress.add_task(kind, total=total, rows=0)
        job = ingest.run_import(
            session, ctx, kind=kind, chunks=ingest.file_chunks(path), fmt=fmt, source=str(path), actor="cli",
            progress=lambda rows, done: progress.update(task, completed=done, rows=rows))
        return job


def _print_job(job) -> None:
    console.print(f"import #{job.id} {job.kind}: {job.rows_total:,} rows, {job.rows_inserted:,} inserted, "
                  f"{job.rows_updated:,} updated, {job.rows_unchanged:,} unchanged, {job.rows_failed:,} failed")
    for error in job.errors[:5]:
        console.print(f"  row {error['row']}: {error['field'] or 'record'}: {error['reason']}")
    if job.rows_failed > 5:
        console.print(f"  … see GET /imports/{job.id} for up to {len(job.errors)} reported errors")


@app.command("import")
def import_(
    kind: Annotated[str, typer.Argument(help="customers | orders | order-items | events")],
    file: Annotated[Path, typer.Argument(help="CSV or NDJSON file")],
    format: Annotated[str | None, typer.Option("--format", help="csv or ndjson (default: by extension)")] = None,
) -> None:
    """Import a file idempotently: good rows are kept, bad rows reported by number."""
    if kind not in KIND_ALIASES:
        raise CliError(f"unknown kind '{kind}': use customers, orders, order-items or events")
    _print_job(_import_file(_context(), KIND_ALIASES[kind], file, format))


@keys_app.command("create")
def keys_create(role: Annotated[str, typer.Option(help="admin | marketer | support | scheduler")],
                name: Annotated[str, typer.Option()]) -> None:
    """Create an API key; the key is printed once, as the last line."""
    try:
        parsed = Role(role)
    except ValueError as bad:
        raise CliError(f"unknown role '{role}': use admin, marketer, support or scheduler") from bad
    ctx = _context()
    with session_scope(ctx.engine) as session:
        issued = auth.create_key(session, ctx, name=name, role=parsed, actor="cli")
        console.print(f"created key #{issued.record.id} '{name}' ({parsed.value}); store it now, it is not shown again:")
    print(issued.secret)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (never their secrets)."""
    ctx = _context()
    table = Table("id", "name", "role", "prefix", "created", "revoked")
    with session_scope(ctx.engine) as session:
        for key in auth.list_keys(session):
            table.add_row(str(key.id), key.name, key.role, key.key_prefix, f"{key.created_at:%Y-%m-%d %H:%M}",
                          f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: int) -> None:
    """Revoke a key."""
    ctx = _context()
    with session_scope(ctx.engine) as session:
        auth.revoke_key(session, ctx, key_id=key_id, actor="cli")
    console.print(f"revoked key #{key_id}")


def _run_segmentation(ctx: Context, as_of: str | None):
    from segmentation import service as segmentation

    moment = None
    if as_of is not None:
        day = _parse_day(as_of, "--as-of")
        moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    with session_scope(ctx.engine) as session:
        run = segmentation.run_segmentation(session, ctx, moment)
        return segmentation.summary_of(run)


def _print_segment_summary(summary: dict) -> None:
    for dimension in ("tier", "layer"):
        table = Table(dimension, "customers", "share", "expected",
                      title=f"{dimension} distribution as of {summary['as_of']:%Y-%m-%d}")
        for name, cell in summary["distribution"][dimension].items():
            expected = "" if cell["expected_share"] is None else f"{cell['expected_share']:.0%}"
            table.add_row(name, f"{cell['customers']:,}", f"{cell['share']:.1%}", expected)
        console.print(table)
    tags = summary["distribution"]["tags"]
    console.print("tags: " + (", ".join(f"{k} {v:,}" for k, v in tags.items()) or "none"))
    moves = summary["moves_since_previous_run"]
    console.print(f"moves this run: tier {sum(moves['tier'].values()):,}, layer {sum(moves['layer'].values()):,}, "
                  f"tags +{sum(moves['tags_added'].values()):,} -{sum(moves['tags_removed'].values()):,}; "
                  f"state rows written {moves['state_rows_written']:,}; timings {summary['timings']}")


@segment_app.command("run")
def segment_run(as_of: Annotated[str | None, typer.Option(help="YYYY-MM-DD: use data strictly before it")] = None,
                as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False) -> None:
    """Compute tiers, layers, RFM scores and tags; write only what changed."""
    summary = _run_segmentation(_context(), as_of)
    if as_json:
        print(json.dumps(summary, default=str))
    else:
        _print_segment_summary(summary)


@segment_app.command("summary")
def segment_summary(as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False) -> None:
    """The newest run's distribution and moves."""
    from segmentation import service as segmentation

    ctx = _context()
    with session_scope(ctx.engine) as session:
        summary = segmentation.summary(session)
    if as_json:
        print(json.dumps(summary, default=str))
    else:
        _print_segment_summary(summary)


def _print_churn_model(row) -> None:
    metrics, baselines = row.metrics, row.metrics.get("baselines", {})
    table = Table("", "ROC AUC", "PR AUC", "Brier", title=f"churn model {row.id} on the validation window "
                  f"{row.training['validation_cutoff'][:10]} ({metrics['customers']:,} customers, "
                  f"churn rate {metrics['churn_rate']:.1%})")
    table.add_row("model", *(f"{metrics[k]:.4f}" for k in ("roc_auc", "pr_auc", "brier")))
    for name, cells in baselines.items():
        table.add_row(f"baseline: {name}", *(f"{cells[k]:.4f}" for k in ("roc_auc", "pr_auc", "brier")))
    console.print(table)
    console.print(f"threshold {metrics['threshold']:.3f}: precision {metrics['precision']:.1%}, recall "
                  f"{metrics['recall']:.1%}, F1 {metrics['f1']:.3f}, top-decile lift {metrics['lift_top_decile']:.2f}; "
                  f"{row.status}: {row.decision}")


def _train_churn(ctx: Context, as_of: str | None):
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from churn import service as churn

    moment = None
    if as_of is not None:
        day = _parse_day(as_of, "--as-of")
        moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as bar, session_scope(ctx.engine) as session:
        task = bar.add_task("reading orders and events", total=None)
        row = churn.train_model(session, ctx, as_of=moment, actor="cli",
                                progress=lambda text: bar.update(task, description=text))
        session.expunge(row)
    return row


def _score_churn(ctx: Context) -> dict:
    from churn import service as churn

    with session_scope(ctx.engine) as session:
        return churn.score_customers(session, ctx, actor="cli")


@churn_app.command("train")
def churn_train(as_of: Annotated[str | None, typer.Option(help="YYYY-MM-DD: labels end here (default today)")] = None,
                as_json: Annotated[bool, typer.Option("--json", help="print the model row as JSON")] = False) -> None:
    """Train a candidate on rolling snapshots; promote it when it beats the current model on the same window."""
    row = _train_churn(_context(), as_of)
    if as_json:
        print(json.dumps(row.model_dump(), default=str))
    else:
        _print_churn_model(row)


@churn_app.command("score")
def churn_score(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Score every active customer with the current model; flag the at-risk ones with reasons."""
    summary = _score_churn(_context())
    print(json.dumps(summary, default=str)) if as_json else console.print(summary)


@churn_app.command("evaluate")
def churn_evaluate(
    transactions: Annotated[Path, typer.Option(help="CSV, one row per order")],
    cutoff: Annotated[str, typer.Option(help="YYYY-MM-DD")],
    horizon: Annotated[int, typer.Option(min=1, max=730)] = 90,
    customer_col: Annotated[str, typer.Option()] = "customer_id",
    time_col: Annotated[str, typer.Option()] = "ordered_at",
    amount_col: Annotated[str, typer.Option(help="empty: no amounts")] = "amount",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Train and test the whole method on a plain transactions CSV (no database needed)."""
    from churn.evaluation import TransactionsError, evaluate_transactions, read_transactions

    if not transactions.is_file():
        raise CliError(f"no such file: {transactions}")
    day = _parse_day(cutoff, "--cutoff")
    try:
        orders, skipped = read_transactions(transactions, customer_col=customer_col, time_col=time_col,
                                            amount_col=amount_col or None)
        result = evaluate_transactions(orders, datetime(day.year, day.month, day.day, tzinfo=UTC), horizon)
    except TransactionsError as problem:
        raise CliError(str(problem)) from problem
    result["rows_skipped"] = skipped
    print(json.dumps(result)) if as_json else console.print(result)


def _optional_day(value: str | None) -> date | None:
    return _parse_day(value, "--date") if value is not None else None


@campaigns_app.command("install-defaults")
def campaigns_install_defaults(
        draft: Annotated[bool, typer.Option("--draft", help="leave them in draft instead of activating")] = False,
) -> None:
    """Create the default touch plans (VIP call, potential coupon, lost win-back, at-risk, birthday, first order)."""
    for row in _install_defaults(_context(), activate=not draft):
        _print_installed(row)


def _install_defaults(ctx: Context, activate: bool = True) -> list[dict]:
    from campaigns import service as campaigns

    with session_scope(ctx.engine) as session:
        return campaigns.install_defaults(session, ctx, "cli", activate=activate)


def _print_installed(row: dict) -> None:
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
    from campaigns import service as campaigns

    ctx = _context()
    with session_scope(ctx.engine) as session:
        for c in campaigns.list_campaigns(session):
            console.print(f"{c.id}\t{c.status}\tpriority {c.priority}\t{c.name}")


@campaigns_app.command("dry-run")
def campaigns_dry_run(campaign_id: int,
                      on: Annotated[str | None, typer.Option("--date", help="YYYY-MM-DD local occurrence date")] = None,
                      as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """What the campaign's occurrence would do — writes nothing."""
    result = _dry_run(_context(), campaign_id, _optional_day(on))
    if as_json:
        print(json.dumps(result, default=str, ensure_ascii=False))
    else:
        _print_dry_run(result)


def _dry_run(ctx: Context, campaign_id: int, day: date | None) -> dict:
    from campaigns import service as campaigns

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
                   as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Plan an occurrence into the outbox (a second run adds nothing)."""
    from campaigns import service as campaigns

    ctx = _context()
    with session_scope(ctx.engine) as session:
        result = campaigns.plan_campaign(session, ctx, campaign_id, _optional_day(on))
    if as_json:
        print(json.dumps(result, default=str))
    else:
        console.print(f"campaign {campaign_id} occurrence {result['occurrence']}: {result['added']:,} outbox rows added"
                      + (" (already planned)" if result["already_planned"] else ""))


def _dispatch_worker(share: float, once: bool, max_batches: int | None, now: str | None) -> dict:
    """One dispatcher process (also the target of --workers' child processes)."""
    import signal
    import threading

    from campaigns.channels import build_senders
    from campaigns.dispatch import serve as serve_dispatch
    from crm.clock import FixedClock

    ctx = _context()
    if now is not None:
        ctx.clock = FixedClock(_parse_instant(now))
    stop = threading.Event()
    # SIGTERM finishes the batch in hand and exits: its claimed messages are sent and recorded, none stranded.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if not once:
        from campaigns.dispatch import worker_name

        print(f"dispatcher {worker_name()} running (SIGTERM finishes the batch in hand)", file=sys.stderr, flush=True)
    report = serve_dispatch(ctx, build_senders(ctx.settings), once=once, stop=stop, max_batches=max_batches,
                            share=share)
    return dict(report.counts) | {f"seconds_{k}": round(v, 3) for k, v in report.seconds.items()}


def _parse_instant(value: str, option: str = "--now") -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CliError(f"{option} must be an ISO date-time, got {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dispatch_app.command("run")
def dispatch_run(
    once: Annotated[bool, typer.Option("--once", help="send what is due, then exit")] = False,
    workers: Annotated[int, typer.Option(min=1, max=64, help="worker processes (PostgreSQL; SQLite has one writer)")] = 1,
    max_batches: Annotated[int | None, typer.Option(min=1, help="stop after this many batches per pass")] = None,
    now: Annotated[str | None, typer.Option(help="ISO instant to dispatch as of (replays, tests)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Send due messages: claim, check caps/consent/quiet hours again, send, record; SIGTERM stops cleanly."""
    ctx = _context()
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
    else:
        console.print("dispatched: " + (", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())) or "nothing due"))


# ---------------------------------------------------------------- scheduler, pipeline, jobs


@app.command()
def scheduler() -> None:
    """Run the scheduler: the leader runs the jobs, others stand by to take over; SIGTERM finishes the running
    job and exits."""
    import logging
    import signal
    import threading

    from crm.app import job_registry
    from crm.scheduler import SchedulerService, instance_name

    ctx = _context()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry = job_registry(ctx.settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    service = SchedulerService(ctx, registry, stop=stop)
    for job in service.jobs:
        console.print(f"{job.name}: {job.schedule.describe()} — {job.description}")
    console.print(f"scheduler {instance_name()} starting (leader or standby; takeover within "
                  f"{ctx.settings.scheduler_takeover_seconds:g}s)")
    service.run()
    console.print("scheduler stopped")


def _run_job(ctx: Context, name: str, occurrence: str | None, force: bool, options: dict | None = None):
    from rich.progress import SpinnerColumn

    from crm.app import job_registry
    from crm.jobs import occurrence_for, run_job

    job = job_registry(ctx.settings).get(name)
    chosen = occurrence_for(job, ctx.clock.now(), occurrence)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task(f"{name} {chosen.key}", total=None)
        outcome = run_job(ctx, job, chosen, trigger="cli", force=force, options=options,
                          progress=lambda text: bar.update(task, description=text))
    return outcome


def _print_steps(outcome) -> None:
    table = Table("step", "status", "seconds", "counts", title=f"{outcome.job} {outcome.occurrence}: {outcome.status}")
    for step in outcome.steps:
        counts = step.get("counts") or {}
        brief = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v:.4g}" if isinstance(v, float)
                          else f"{k} {v}" for k, v in counts.items()
                          if isinstance(v, (int, float, str)) and k != "timings")
        table.add_row(step["step"], step["status"], f"{step.get('seconds', 0):.1f}",
                      step.get("error") or step.get("reason") or brief)
    console.print(table)


@pipeline_app.command("run")
def pipeline_run(
    on: Annotated[str | None, typer.Option("--date", help="YYYY-MM-DD occurrence (default today)")] = None,
    force: Annotated[bool, typer.Option("--force", help="rerun steps that already succeeded")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run the daily pipeline once in the foreground: segment, score, plan, dispatch, attribute."""
    ctx = _context()
    if on is not None:
        _parse_day(on, "--date")
    outcome = _run_job(ctx, "pipeline", on, force)
    if as_json:
        print(json.dumps(outcome.as_dict(), default=str, ensure_ascii=False))
    else:
        _print_pipeline_summary(ctx, outcome)
    if outcome.status != "succeeded":
        raise CliError(f"pipeline {outcome.occurrence} failed at {outcome.error}")


def _print_pipeline_summary(ctx: Context, outcome) -> None:
    """Tiers and moves, at-risk customers with top reasons, each campaign's recipients and exclusions, sends."""
    from collections import Counter

    from campaigns.webhooks import delivery_counts
    from churn import service as churn

    _print_steps(outcome)
    steps = {s["step"]: s.get("counts") or {} for s in outcome.steps}
    segment = steps.get("segment", {})
    if segment.get("tiers"):
        console.print("tiers: " + ", ".join(f"{k} {v:,}" for k, v in segment["tiers"].items()) + "; moves: "
                      + (", ".join(f"{k} {v:,}" for k, v in segment.get("tier_moves", {}).items()) or "none"))
    score = steps.get("score", {})
    with session_scope(ctx.engine) as session:
        flagged = churn.at_risk_customers(session, limit=500)
        counts = delivery_counts(session)
    if score:
        # Grouped by the sentence with its numbers blanked: "only 0.3 orders" and "only 0.5 orders" are one reason.
        reasons = Counter(re.sub(r"\d+(\.\d+)?%?", "N", r) for row in flagged for r in (row["reasons"] or [])[:1])
        console.print(f"at risk: {score.get('at_risk', 0):,} of {score.get('scored', 0):,}; most common first "
                      "reasons: " + "; ".join(f"{why} ({n})" for why, n in reasons.most_common(3)))
        for row in sorted(flagged, key=lambda r: -r["probability"])[:3]:
            console.print(f"  {row['external_id']}  p={row['probability']:.2f}  " + "; ".join(row["reasons"] or []))
    for campaign in steps.get("plan", {}).get("campaigns", []):
        excluded = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in campaign["excluded"].items()) or "nobody"
        line = (f"  {campaign['campaign']} {campaign['occurrence']}: error {campaign['error']}" if campaign["error"]
                else f"  {campaign['campaign']} {campaign['occurrence']}: {campaign['recipients']:,} recipients "
                     f"({', '.join(f'{k} {v:,}' for k, v in campaign['channels'].items()) or 'none'}); "
                     f"excluded {excluded}" + (" (planned before)" if campaign["already_planned"] else ""))
        console.print(line)
    console.print("messages per channel: " + "; ".join(
        f"{channel} " + ", ".join(f"{status} {n:,}" for status, n in statuses.items())
        for channel, statuses in counts.items()))


@jobs_app.command("list")
def jobs_list() -> None:
    """Jobs with their schedules, next run times and newest runs."""
    from crm.app import job_registry
    from crm.jobs import overview

    ctx = _context()
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
             as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Run one job now, in the foreground (finished steps of the occurrence are skipped)."""
    outcome = _run_job(_context(), name, occurrence, force)
    print(json.dumps(outcome.as_dict(), default=str, ensure_ascii=False)) if as_json else _print_steps(outcome)
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
    """Print a report (the same as GET /reports/{name}): a table, the full JSON, or CSV to a file."""
    from campaigns.report_catalog import build, to_csv

    ctx = _context()
    with session_scope(ctx.engine) as session:
        result = build(name, session, ctx, since=since and _parse_instant(since, "--since"),
                       until=until and _parse_instant(until, "--until"), campaign_id=campaign)
    if csv_path is not None:
        csv_path.write_text(to_csv(name, result), encoding="utf-8")
        console.print(f"{name} -> {csv_path}")
    elif as_json:
        print(json.dumps(result, default=str, ensure_ascii=False))
    elif name == "campaigns":
        _print_campaign_reports(result["campaigns"])
    else:
        _print_report_table(name, result)


def _print_report_table(name: str, result: dict) -> None:
    from campaigns.report_catalog import REPORTS, flat_rows

    rows = flat_rows(REPORTS[name].table(result))
    if not rows:
        console.print(f"{name}: nothing to report yet")
        return
    columns = list(dict.fromkeys(c for row in rows for c in row))
    table = Table(*columns, title=name)
    for row in rows:
        table.add_row(*(f"{v:,.4g}" if isinstance(v, float) else str(v if v is not None else "–")
                        for v in (row.get(c) for c in columns)))
    console.print(table)


def _print_campaign_reports(rows: list[dict]) -> None:
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


@app.command()
def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Run the API (OpenAPI docs at /docs)."""
    import signal

    import uvicorn

    ctx = _context()  # fail early with a clear message when no key is configured
    # Uvicorn drains in-flight requests on SIGTERM, then raises the signal again with the handler found at start:
    # this one turns that into a clean exit status 0 instead of death by signal.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # The access log drops query strings: a lookup's parameters (contact data, say) never reach a log line.
    proxies = ctx.settings.forwarded_allow_ips
    uvicorn.run("crm.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_config=uvicorn_log_config(), proxy_headers=bool(proxies), forwarded_allow_ips=proxies or None)


@app.command()
def demo(
    customers: Annotated[int, typer.Option(min=100)] = 20_000,
    seed: Annotated[int, typer.Option()] = 42,
    bad_rows: Annotated[float, typer.Option(min=0.0, max=0.5)] = 0.002,
    true_uplift: Annotated[float, typer.Option(min=0.0, max=0.5, help="simulated effect of a message on buying "
                                                                      "within the window")] = 0.03,
    baseline: Annotated[float, typer.Option(min=0.0, max=0.5, help="simulated chance of buying anyway")] = 0.05,
) -> None:
    """From nothing: migrate the embedded database, generate a shop, import it, run the daily pipeline, then
    simulate the week after with a known uplift and report what the measurement recovers."""
    ctx = _context(create_key=True)
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
        job = _import_file(ctx, kind, out / f"{kind}.csv", "csv")
        _print_job(job)
        jobs.append(job)
    _summary(ctx, jobs)
    console.rule("[bold]Churn model")
    _print_churn_model(_train_churn(ctx, None))
    console.rule("[bold]Campaigns")
    for row in _install_defaults(ctx):
        _print_installed(row)
    console.rule("[bold]Daily pipeline")
    console.print("segment → score churn → plan today's campaigns → dispatch to the console sender (the clock jumps "
                  "to each customer's local send time; first lines per channel shown) → attribute")
    outcome = _run_job(ctx, "pipeline", None, False, {"dispatch": "replay", "console_show": 2})
    _print_pipeline_summary(ctx, outcome)
    _print_next_occurrences(ctx)
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

    import polars as pl

    from campaigns.conversions import attribute_conversions
    from campaigns.reports import campaign_reports, customers_reached, simulated_truth
    from crm.clock import FixedClock
    from crm.generator import simulate_responses
    from crm.timezones import utc_midnight

    today = utc_midnight(ctx.clock.now().date())
    window = ctx.settings.attribution_window_days
    with session_scope(ctx.engine) as session:
        members, arms = customers_reached(session, today - timedelta(days=1), today + timedelta(days=2))
        external = pl.DataFrame(session.exec(select(Customer.id, Customer.external_id)).all(),
                                schema={"customer_id": pl.Int64, "external_id": pl.String}, orient="row")
    if members.is_empty():
        console.print("no campaign fired today: nothing to measure")
        return
    orders = simulate_responses(members.join(external, on="customer_id"), baseline=baseline,
                                true_uplift=true_uplift, window_days=window, seed=seed)
    path = out / "simulated_orders.csv"
    orders.write_csv(path, datetime_format="%Y-%m-%dT%H:%M:%SZ")
    job = _import_file(ctx, "orders", path, "csv", quiet=True)
    console.print(f"simulated {job.rows_total - job.rows_failed:,} orders from {members.height:,} campaign members over the next {window} "
                  f"days: {baseline:.0%} buy anyway, a message adds {true_uplift:.1%} (the known true uplift)")
    later = replace(ctx, clock=FixedClock(ctx.clock.now() + timedelta(days=window + 2)))
    with session_scope(ctx.engine) as session:
        attribute_conversions(session, later)
    with session_scope(ctx.engine) as session:  # reports read committed data: the conversions are in
        rows = campaign_reports(session, later, since=today - timedelta(days=1), until=today + timedelta(days=2))
    _print_campaign_reports(rows)
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


def _print_next_occurrences(ctx: Context) -> None:
    """Active campaigns that did not fire today, with their next occurrence."""
    from campaigns import service as campaigns
    from campaigns.spec import CampaignSpec

    today = campaigns.shop_today(ctx)
    with session_scope(ctx.engine) as session:
        for campaign in campaigns.list_campaigns(session, "active"):
            spec = CampaignSpec.model_validate(campaign.spec)
            if not spec.schedule.fires_on(today):
                upcoming = campaigns.next_occurrence(spec, today)
                console.print(f"  {campaign.name}: next on {upcoming or 'no date within a year'}")


def _summary(ctx: Context, jobs) -> None:
    from sqlalchemy import text

    table = Table("table", "rows", title="What the database holds now")
    with ctx.engine.connect() as connection:
        for name in ("customer", "consent", "consent_change", "orders", "order_item", "event", "audit_log"):
            table.add_row(name, f"{connection.execute(text(f'SELECT count(*) FROM {name}')).scalar_one():,}")
    console.print(table)
    failed = sum(j.rows_failed for j in jobs)
    console.print(f"{failed:,} deliberately bad rows were reported by row number and skipped; "
                  "running `make demo` again changes nothing (imports are idempotent).")


def _fail(message: str, code: int = 1) -> None:
    """Print one plain line on stderr (no wrapping, no markup) and exit."""
    sys.stderr.write(" ".join(message.split()) + "\n")
    sys.exit(code)


def main() -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit, never a traceback."""
    try:
        app(standalone_mode=False)
    except (CliError, MissingSecretKey) as failure:
        _fail(f"error: {failure}")
    except DomainError as failure:
        fields = ", ".join(e["field"] for e in failure.errors if e.get("field"))
        _fail(f"error: {failure.detail}" + (f" ({fields})" if fields and fields not in failure.detail else ""))
    except (typer.Abort, KeyboardInterrupt):
        _fail("error: aborted", 130)
    except Exception as failure:  # noqa: BLE001 - the CLI promises one line, never a traceback
        import click

        if isinstance(failure, click.exceptions.Exit):
            sys.exit(failure.exit_code)
        if isinstance(failure, click.exceptions.ClickException):
            _fail(f"error: {failure.format_message()}", failure.exit_code)
        first_line = str(failure).strip().splitlines()[0] if str(failure).strip() else ""
        _fail(f"error: {type(failure).__name__}: {first_line}")


if __name__ == "__main__":
    main()
