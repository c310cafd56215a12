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
from kit.cli import CliError, cli_context, console, day_start, parse_day
from kit.context import Context
from kit.db import session_scope

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
    console.print(f"threshold {metrics['threshold']:.3f}: precision {metrics['precision']:.1%}, recall "
                  f"{metrics['recall']:.1%}, F1 {metrics['f1']:.3f}, top-decile lift {metrics['lift_top_decile']:.2f}; "
                  f"{row.status}: {row.decision}")


def train_churn(ctx: Context, as_of: str | None):
    """Train a candidate model with a progress spinner; returns its (detached) row."""
    moment = day_start(as_of, "--as-of")
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as bar, session_scope(ctx.engine) as session:
        task = bar.add_task("reading orders and events", total=None)
        row = churn.train_model(session, ctx, as_of=moment, actor="cli",
                                progress=lambda text: bar.update(task, description=text))
        session.expunge(row)
    return row


def _score_churn(ctx: Context) -> dict:
    with session_scope(ctx.engine) as session:
        return churn.score_customers(session, ctx, actor="cli")


@app.command("train")
def churn_train(as_of: Annotated[str | None, typer.Option(help="YYYY-MM-DD: labels end here (default today)")] = None,
                as_json: Annotated[bool, typer.Option("--json", help="print the model row as JSON")] = False) -> None:
    """Train a candidate on rolling snapshots; promote it when it beats the current model on the same window."""
    row = train_churn(cli_context(), as_of)
    if as_json:
        print(json.dumps(row.model_dump(), default=str))
    else:
        print_churn_model(row)


@app.command("score")
def churn_score(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Score every active customer with the current model; flag the at-risk ones with reasons."""
    summary = _score_churn(cli_context())
    print(json.dumps(summary, default=str)) if as_json else console.print(summary)


@app.command("evaluate")
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
    day = parse_day(cutoff, "--cutoff")
    try:
        orders, skipped = read_transactions(transactions, customer_col=customer_col, time_col=time_col,
                                            amount_col=amount_col or None)
        result = evaluate_transactions(orders, datetime(day.year, day.month, day.day, tzinfo=UTC), horizon)
    except TransactionsError as problem:
        raise CliError(str(problem)) from problem
    result["rows_skipped"] = skipped
    print(json.dumps(result)) if as_json else console.print(result)
