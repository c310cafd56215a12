"""segmentation's commands: `crm segment run | summary | follow`."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from kit.cli import cli_context, console, day_start, phases, seconds_text
from kit.context import Context
from kit.db import session_scope
from segmentation import service as segmentation

app = typer.Typer(help="Segmentation: RFM tiers, layers, tags.", no_args_is_help=True)


def run_segmentation(ctx: Context, as_of: str | None) -> dict:
    """Segment as of a day (or now), with a progress bar over its phases, and return the run's summary."""
    with phases("segmenting", segmentation.SEGMENTATION_PHASES) as done, session_scope(ctx.engine) as session:
        run = segmentation.run_segmentation(session, ctx, day_start(as_of, "--as-of"), progress=done)
        return segmentation.summary_of(run)


def print_segment_summary(summary: dict) -> None:
    """Tier and layer distributions against their expected shares, tags, and this run's moves."""
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
                  f"state rows written {moves['state_rows_written']:,}; took {seconds_text(summary['timings'])}")


@app.command("run")
def segment_run(as_of: Annotated[str | None, typer.Option(help="YYYY-MM-DD: use data strictly before it")] = None,
                as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False) -> None:
    """Compute tiers, layers, RFM scores and tags; write only what changed."""
    summary = run_segmentation(cli_context(), as_of)
    if as_json:
        print(json.dumps(summary, default=str))
    else:
        print_segment_summary(summary)


@app.command("summary")
def segment_summary(as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False) -> None:
    """The newest run's distribution and moves."""
    ctx = cli_context()
    with session_scope(ctx.engine) as session:
        summary = segmentation.summary(session)
    if as_json:
        print(json.dumps(summary, default=str))
    else:
        print_segment_summary(summary)


@app.command("follow")
def follow(every: Annotated[float, typer.Option(help="seconds between looks for state changes")] = 15.0,
           once: Annotated[bool, typer.Option(help="process what is waiting, then stop")] = False) -> None:
    """Re-evaluate the tags of customers whose state changed, as the changes arrive (a worker; run one or more)."""
    import signal
    import threading

    from segmentation.realtime import refresh_changed_tags

    ctx = cli_context()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        with session_scope(ctx.engine) as session:
            done = refresh_changed_tags(session, ctx)
        if done["changes"]:  # more may be waiting: look again at once
            console.print(f"{done['changes']} changes, {done['customers']} customers: tags +{done['tags_added']} "
                          f"-{done['tags_removed']}")
            continue
        if once or stop.wait(every):
            return
