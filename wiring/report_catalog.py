"""Every report by name, as the API, the CSV export and `crm report` serve them: how to build it and which of
its parts is the table (flattened to columns for CSV)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlmodel import Session

from campaigns.measurement import reports
from campaigns.measurement.stats import sample_size_per_arm
from churn.reports import churn_quality_report, clv_report
from kit.context import Context
from kit.errors import InvalidInput
from segmentation.reports import retention_report, tier_history_report, winback_report


@dataclass(frozen=True)
class Report:
    """A named report: its builder (session, ctx, options) and where its table is."""

    name: str
    description: str
    build: Callable[..., dict[str, Any]]
    table: Callable[[dict[str, Any]], list[dict[str, Any]]]
    period: bool = False  # takes since / until


def _campaign_table(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "experiment"} for row in report["campaigns"]]


def _tier_table(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"as_of": r["as_of"], "customers": r["customers"], "tier": r["tier"], "layer": r["layer"]}
            for r in report["runs"]]


def _campaigns(session: Session, ctx: Context, **options: Any) -> dict[str, Any]:
    return {"campaigns": reports.campaign_reports(session, ctx, **options)}


REPORTS: dict[str, Report] = {r.name: r for r in (
    Report("campaigns", "per campaign: reach, delivery, opens, clicks, conversions, revenue, costs, ROI, uplift",
           _campaigns, _campaign_table, period=True),
    Report("global-control", "all marketing against the global control group", reports.global_control_report,
           lambda r: [r], period=True),
    Report("winback", "win-back rate of the lost tier per month", winback_report, lambda r: r["months"], period=True),
    Report("tiers", "tier and layer distribution over time", tier_history_report, _tier_table, period=True),
    Report("retention", "30- and 90-day retention by first-order cohort", retention_report, lambda r: r["cohorts"]),
    Report("clv", "lifetime value per tier: historical and predicted (BG/NBD + Gamma-Gamma)", clv_report,
           lambda r: r["tiers"]),
    Report("churn-quality", "churn model quality over time: predicted against what happened", churn_quality_report,
           lambda r: [{k: v for k, v in run.items() if k != "calibration"} for run in r["runs"]]),
    Report("fairness", "effective price per product by tier against new customers", reports.fairness_report,
           lambda r: r["rows"], period=True),
)}


def build(name: str, session: Session, ctx: Context, *, since: datetime | None = None,
          until: datetime | None = None, campaign_id: int | None = None) -> dict[str, Any]:
    """Build a report by name (422 naming `report` for an unknown one)."""
    report = REPORTS.get(name)
    if report is None:
        raise InvalidInput(f"report: unknown report '{name}' (known: {', '.join(REPORTS)})",
                           errors=[{"field": "report", "reason": f"unknown; known are {', '.join(REPORTS)}"}])
    options: dict[str, Any] = {"since": since, "until": until} if report.period else {}
    if campaign_id is not None and name == "campaigns":
        options["campaign_id"] = campaign_id
    return report.build(session, ctx, **options)


MIN_TOLERATED_ERROR = 1e-4


def sample_size(baseline: float, tolerated_error: float, confidence: float = 0.95) -> dict[str, Any]:
    """The seed's rule n = z²·p(1−p)/E² per arm, with its inputs."""
    if not 0 < baseline < 1:
        raise InvalidInput("baseline: must be between 0 and 1", errors=[{"field": "baseline", "reason": "not in (0, 1)"}])
    if not MIN_TOLERATED_ERROR <= tolerated_error < 1:  # below it E² underflows and no test could reach the size
        raise InvalidInput(f"error: must be in [{MIN_TOLERATED_ERROR}, 1)",
                           errors=[{"field": "error", "reason": f"not in [{MIN_TOLERATED_ERROR}, 1)"}])
    if not 0.5 <= confidence < 1:
        raise InvalidInput("confidence: must be in [0.5, 1)",
                           errors=[{"field": "confidence", "reason": "not in [0.5, 1)"}])
    return {"baseline": baseline, "tolerated_error": tolerated_error, "confidence": confidence,
            "per_arm": sample_size_per_arm(baseline, tolerated_error, confidence)}


def _flat(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= _flat(value, f"{name}.")
        elif isinstance(value, list):
            flat[name] = json.dumps(value, default=str)
        elif isinstance(value, datetime | date):
            flat[name] = value.isoformat()
        else:
            flat[name] = value
    return flat


def flat_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows with nested fields as dotted columns, lists as JSON and times as ISO 8601."""
    return [_flat(r) for r in rows]


def to_csv(name: str, report: dict[str, Any]) -> str:
    """The report's table as CSV: nested fields become dotted columns, lists JSON."""
    rows = flat_rows(REPORTS[name].table(report))
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[spreadsheet_safe(c) for c in columns], extrasaction="ignore")
    writer.writeheader()
    writer.writerows({spreadsheet_safe(k): spreadsheet_safe(v) for k, v in row.items()} for row in rows)
    return out.getvalue()


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (=HYPERLINK(…), +cmd, @SUM …) gets a leading apostrophe
    (OWASP's advice for CSV injection); numbers, negative ones included, stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
