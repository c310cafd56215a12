"""Running a job in the foreground and printing what the daily pipeline did (for `crm pipeline run`, `crm jobs run`
and the demo)."""

from __future__ import annotations

import re

from rich.progress import (
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from kit.cli import console
from kit.context import Context
from kit.db import session_scope
from kit.jobs import occurrence_for, run_job


def run_job_in_foreground(ctx: Context, name: str, occurrence: str | None, force: bool, options: dict | None = None):
    """Run one job's occurrence now with a progress spinner; returns its outcome."""
    from wiring.app import job_registry

    job = job_registry(ctx.settings).get(name)
    chosen = occurrence_for(job, ctx.clock.now(), occurrence)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task(f"{name} {chosen.key}", total=None)
        outcome = run_job(ctx, job, chosen, trigger="cli", force=force, options=options,
                          progress=lambda text: bar.update(task, description=text))
    return outcome


def print_steps(outcome) -> None:
    """A job outcome's steps: status, seconds and counts."""
    table = Table("step", "status", "seconds", "counts", title=f"{outcome.job} {outcome.occurrence}: {outcome.status}")
    for step in outcome.steps:
        counts = step.get("counts") or {}
        brief = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v:.4g}" if isinstance(v, float)
                          else f"{k} {v}" for k, v in counts.items()
                          if isinstance(v, (int, float, str)) and k != "timings")
        table.add_row(step["step"], step["status"], f"{step.get('seconds', 0):.1f}",
                      step.get("error") or step.get("reason") or brief)
    console.print(table)


def print_pipeline_summary(ctx: Context, outcome) -> None:
    """Tiers and moves, at-risk customers with top reasons, each campaign's recipients and exclusions, sends."""
    from collections import Counter

    from campaigns.delivery.webhooks import delivery_counts
    from churn import service as churn

    print_steps(outcome)
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
