"""The report routes: every package's reports by name (the catalogue in wiring.report_catalog), as JSON or CSV."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from campaigns import service
from crm.api import ContextDep, SessionDep
from crm.auth import Principal, require
from crm.models import Role
from kit.http import Page, PageDep
from wiring import report_catalog
from wiring.schemas import CampaignReport, Report, ReportListed, SampleSize

router = APIRouter(tags=["reports"])
READERS = (Role.admin, Role.marketer)
EDITORS = (Role.admin, Role.marketer)
Format = Annotated[Literal["json", "csv"], Query(description="json, or csv for the report's table")]
Since = Annotated[datetime | None, Query(description="period start (messages by send time), ISO 8601")]
Until = Annotated[datetime | None, Query(description="period end, ISO 8601; default now")]


def _respond(name: str, report: dict[str, Any], format: str) -> Any:
    if format == "csv":
        return Response(report_catalog.to_csv(name, report), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})
    return report


@router.get("/reports", response_model=Page[ReportListed])
def get_reports(page: PageDep, _: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    """The reports there are."""
    return page.slice(lambda n: [{"name": r.name, "description": r.description}
                                 for r in report_catalog.REPORTS.values()])


@router.get("/reports/sample-size", response_model=SampleSize)
def get_sample_size(baseline: Annotated[float, Query(gt=0, lt=1, description="p: expected conversion rate")],
                    error: Annotated[float, Query(ge=report_catalog.MIN_TOLERATED_ERROR, lt=1,
                                                  description="E: tolerated error on the rate")],
                    confidence: Annotated[float, Query(ge=0.5, lt=1)] = 0.95,
                    _: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    """Members each A/B arm needs: n = z²·p(1−p)/E²."""
    return report_catalog.sample_size(baseline, error, confidence)


@router.get("/reports/campaigns/{campaign_id}", response_model=CampaignReport, responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}})
def get_campaign_report(campaign_id: int, session: SessionDep, ctx: ContextDep, since: Since = None,
                        until: Until = None, format: Format = "json",
                        _: Principal = Depends(require(*READERS))) -> Any:
    """One campaign's report, with its uplift and A/B verdict."""
    report = report_catalog.build("campaigns", session, ctx, since=since, until=until, campaign_id=campaign_id)
    if format == "csv":
        return _respond("campaigns", report, format)
    found = report["campaigns"]
    if found:
        return found[0]
    campaign = service.get_campaign(session, campaign_id)  # 404 when there is no such campaign
    return {"campaign_id": campaign.id, "campaign": campaign.name, "status": campaign.status,
            "since": since, "until": until, "members": {"treated": 0, "holdout": 0, "global_control": 0},
            "note": "no messages in the period"}


@router.get("/reports/{name}", response_model=Report, responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}})
def get_report(name: str, session: SessionDep, ctx: ContextDep, since: Since = None, until: Until = None,
               format: Format = "json", _: Principal = Depends(require(*READERS))) -> Any:
    """A report by name (see GET /v1/reports), as JSON or CSV."""
    return _respond(name, report_catalog.build(name, session, ctx, since=since, until=until), format)


def install(app) -> None:
    """Wire the report routes into the app."""
    app.include_router(router)
