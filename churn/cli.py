"""churn's commands: `crm churn train | score | evaluate`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from churn import service as churn
from kit.cli import CliError, Population, choice, cli_context, console, day_start, parse_day, phases
from kit.context import Context
from kit.db import session_scope

FlagPolicyName = choice("FlagPolicyName", ("precision", "capacity", "value"))
app = typer.Typer(help="Churn: train, score, evaluate.", no_args_is_help=True)


def print_churn_model(row) -> None:
    """A model's validation metrics against its baselines, its threshold and the promotion decision."""
    metrics, baselines = row.metrics, row.metrics.get("baselines", {})
    table = Table("", "ROC AUC", "PR AUC", "Brier", title=f"churn model {row.id} on the validation window "
                  f"{row.training['validation_cutoff'][:10]} ({metrics['customers']:,} customers, "
                  f"churn rate {metrics['churn_rate']:.1%})")
    table.add_row("model", *(f"{metrics[k]:.4f}" for k in ("roc_auc", "pr_auc", "brier")))
    for name, cells in baselines.items():
        table.add_row(f"baseline: {name}", *(f"{cells[k]:.4f}" for k in ("roc_auc", "pr_auc", "brier")))
    console.print(table)
    flag = metrics.get("flag")
    if flag:
        print_flag(flag)
    population = metrics.get("population")
    if population:
        console.print(f"population {population['rule']}: {population['size']:,} customers; left out: "
                      + ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in population["left_out"].items()))
    console.print(f"shipped score: {metrics.get('shipped', 'model')}; top-decile lift "
                  f"{metrics['lift_top_decile']:.2f}; {row.status}: {row.decision}")


def print_flag(flag: dict) -> None:
    """The at-risk flag in one line: policy, base rate, flagged, precision, recall and lift."""
    if not flag.get("flagged"):
        console.print(f"flag ({flag['policy']}, {flag['aim']}): nobody flagged — {flag['note']}")
        return
    console.print(f"flag ({flag['policy']}, {flag['aim']}{'' if flag['met'] else ', not met'}): "
                  f"{flag['flagged']:,} flagged ({flag['flagged_share']:.1%}), base rate {flag['base_rate']:.1%}, "
                  f"precision {flag['precision']:.1%}, recall {flag['recall']:.1%}, lift {flag['lift']:.2f}")


def train_churn(ctx: Context, as_of: str | None, population: str | None = None, lookback: int | None = None):
    """Train a candidate model with a progress spinner; returns its (detached) row."""
    from dataclasses import replace

    moment = day_start(as_of, "--as-of")
    config = churn.training_config(ctx.settings)
    try:
        config = replace(config, features=replace(config.features, population=population or config.features.population,
                                                  lookback_days=lookback or config.features.lookback_days))
    except ValueError as problem:
        raise CliError(str(problem)) from problem
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as bar, session_scope(ctx.engine) as session:
        task = bar.add_task("reading orders and events", total=None)
        row = churn.train_model(session, ctx, as_of=moment, actor="cli", config=config,
                                progress=lambda text: bar.update(task, description=text))
        session.expunge(row)
    return row


def _score_churn(ctx: Context) -> dict:
    with phases("scoring", churn.SCORING_PHASES) as done, session_scope(ctx.engine) as session:
        return churn.score_customers(session, ctx, actor="cli", progress=done)


@app.command("train")
def churn_train(as_of: Annotated[str | None, typer.Option(help="YYYY-MM-DD: labels end here (default today)")] = None,
                population: Annotated[Population | None, typer.Option(help="who is scored (default: the settings')")]
                = None,
                lookback: Annotated[int | None, typer.Option(min=1, max=730, help="look-back days (default: the "
                                                                                 "settings')")] = None,
                as_json: Annotated[bool, typer.Option("--json", help="print the model row as JSON")] = False) -> None:
    """Train a candidate on rolling snapshots; promote it when it beats the current model on the same window."""
    row = train_churn(cli_context(), as_of, population.value if population else None, lookback)
    if as_json:
        print(json.dumps(row.model_dump(), default=str))
    else:
        print_churn_model(row)


@app.command("score")
def churn_score(as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False) -> None:
    """Score every active customer with the current model; flag the at-risk ones with reasons."""
    summary = _score_churn(cli_context())
    if as_json:
        print(json.dumps(summary, default=str))
        return
    levels = summary["risk_levels"]
    console.print(f"model {summary['model_id']} as of {summary['as_of'][:10]}: {summary['scored']:,} scored "
                  f"(features from the {summary['features_from']}), {summary['at_risk']:,} at risk "
                  f"({summary['policy']} policy, threshold {summary['threshold']:.3f}); risk levels "
                  f"high {levels['high']:,} / medium {levels['medium']:,} / low {levels['low']:,}; "
                  f"{summary['rows_written']:,} rows rewritten")


@app.command("evaluate")
def churn_evaluate(
    transactions: Annotated[Path, typer.Option(help="CSV, one row per order")],
    cutoff: Annotated[str, typer.Option(help="YYYY-MM-DD")],
    horizon: Annotated[int, typer.Option(min=1, max=730, help="days without an order that count as churned")] = 90,
    customer_col: Annotated[str, typer.Option(help="the transactions file's customer column")] = "customer_id",
    time_col: Annotated[str, typer.Option(help="the transactions file's order time column")] = "ordered_at",
    amount_col: Annotated[str, typer.Option(help="empty: no amounts")] = "amount",
    population: Annotated[Population, typer.Option(help="active (an order in the look-back) or all (an order in the "
                                                        "two-year history)")] = Population.active,
    lookback: Annotated[int, typer.Option(min=1, max=730, help="look-back days of the active population")] = 365,
    policy: Annotated[FlagPolicyName, typer.Option(help="who is flagged: precision, capacity or value")]
    = FlagPolicyName.precision,
    target_precision: Annotated[float, typer.Option(min=0.01, max=1.0, help="precision policy's target")] = 0.75,
    capacity: Annotated[int, typer.Option(min=1, help="capacity policy: customers the team can treat")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Train and test the whole method on a plain transactions CSV (no database needed)."""
    from churn.evaluation import TransactionsError, evaluate_transactions, read_transactions
    from churn.policy import FlagPolicy

    population, policy = population.value, policy.value

    if not transactions.is_file():
        raise CliError(f"no such file: {transactions}")
    day = parse_day(cutoff, "--cutoff")
    try:
        orders, skipped = read_transactions(transactions, customer_col=customer_col, time_col=time_col,
                                            amount_col=amount_col or None)
        result = evaluate_transactions(
            orders, datetime(day.year, day.month, day.day, tzinfo=UTC), horizon, population=population,
            lookback_days=lookback, policy=FlagPolicy(kind=policy, target_precision=target_precision,
                                                      daily_capacity=capacity))
    except TransactionsError as problem:
        raise CliError(str(problem)) from problem
    result["rows_skipped"] = skipped
    if as_json:
        print(json.dumps(result))
        return
    table = Table("", "ROC AUC", "PR AUC", "Brier", title=f"churn on {transactions.name} after {cutoff} "
                  f"({result['n_customers']:,} customers, churn rate {result['churn_rate']:.1%})")
    table.add_row(f"shipped ({result['shipped']})", *(f"{result[k]:.4f}" for k in ("roc_auc", "pr_auc", "brier")))
    for name, cells in result["baselines"].items():
        table.add_row(f"baseline: {name}", *(f"{cells[k]:.4f}" for k in ("roc_auc", "pr_auc", "brier")))
    console.print(table)
    print_flag(result["flag"])
    chosen = result["population"]
    console.print(f"population {chosen['rule']}: {chosen['size']:,} customers; left out: "
                  + ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in chosen["left_out"].items())
                  + f"; {skipped:,} unusable rows skipped")
