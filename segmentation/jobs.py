"""Segmentation's scheduled work: the pipeline's segment step and the tag re-evaluation job."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from kit.context import Context
from kit.jobs import JobDefinition, Step, StepRun
from kit.schedules import JobSchedule
from kit.settings import Settings
from kit.timezones import utc_midnight
from segmentation.service import run_segmentation, summary_of


def segment_step(session: Session, ctx: Context, run: StepRun) -> dict[str, Any]:
    """Tiers, layers and tags as of the occurrence's day (midnight UTC, as triggered campaigns read transitions)."""
    summary = summary_of(run_segmentation(session, ctx, utc_midnight(run.occurrence.day), shared=run.shared))
    moves = summary["moves_since_previous_run"]
    return {"run_id": summary["run_id"], "customers": summary["customers"],
            "tiers": {name: cell["customers"] for name, cell in summary["distribution"]["tier"].items()},
            "layers": {name: cell["customers"] for name, cell in summary["distribution"]["layer"].items()},
            "tier_moves": moves["tier"], "layer_moves": sum(moves["layer"].values()),
            "tags_added": sum(moves["tags_added"].values()), "tags_removed": sum(moves["tags_removed"].values()),
            "state_rows_written": moves["state_rows_written"], "timings": summary["timings"]}


SEGMENT = Step("segment", segment_step, "RFM tiers, layers and behaviour tags")


def jobs(settings: Settings) -> list[JobDefinition]:
    """Tag re-evaluation every few hours: today's orders and events move tags before tomorrow's pipeline."""
    schedule = JobSchedule("hourly", settings.scheduler_zone(), every_hours=settings.tags_every_hours, minute=15)
    return [JobDefinition("tags", "re-evaluate tiers and behaviour tags with the day's new orders and events",
                          schedule, (SEGMENT,), catch_up="latest")]
