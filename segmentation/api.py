"""HTTP for segmentation: rule sets (versioned), summary, history, runs; plus the profile section and list filters."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request, Response

from crm.api import ContextDep, SessionDep
from crm.auth import ADMIN, Principal, require
from crm.models import Role
from crm.profiles import CustomerFilter
from kit import http
from kit.errors import InvalidInput
from kit.http import Page, PageDep
from segmentation import service
from segmentation.defaults import DEFAULTS
from segmentation.rules import RuleSet
from segmentation.schemas import HistoryEntry, RuleSetRead, SegmentationRun
from segmentation.tags import TagSet

router = APIRouter(prefix="/segmentation", tags=["segmentation"])
EDITORS = (Role.admin, Role.marketer)
READERS = (Role.admin, Role.marketer, Role.scheduler)


@router.get("/rule-sets/{name}", response_model=RuleSetRead)
def get_rule_set(name: str, response: Response, session: SessionDep,
                 _: Principal = Depends(require(*EDITORS))) -> dict[str, Any]:
    """The rule set in force (tier, layer or tags), its version and the metrics rules may use."""
    version, rule_set = service.current_rule_set(session, name)
    http.tag(response, version)
    return {"name": name, "version": version, "body": rule_set.model_dump(mode="json", by_alias=True,
                                                                         exclude_none=True),
            "metrics": {m: {"kind": k, "description": d} for m, (k, d) in service.METRICS.items()}}


@router.put("/rule-sets/{name}", response_model=RuleSetRead, openapi_extra=http.read_body_doc(
    RuleSet, TagSet, description="a RuleSet for tier and layer, a TagSet for tags (GET shows the one in force)",
    example=DEFAULTS["tier"].model_dump(mode="json", by_alias=True, exclude_none=True)))
def put_rule_set(name: str, request: Request, response: Response, session: SessionDep, ctx: ContextDep,
                 body: Annotated[dict[str, Any], Body()],
                 principal: Principal = Depends(require(*EDITORS))) -> dict[str, Any]:
    """Replace a rule set: validated (unknown metric, empty range, unreachable rule → 422), versioned, audited; a
    stale If-Match is a 412."""
    current, _ = service.current_rule_set(session, name)  # 404 for an unknown name before validating the body
    http.require_current(request, current)
    version, parsed = service.put_rule_set(session, ctx, name, body, principal.actor)
    http.tag(response, version)
    return {"name": name, "version": version, "body": parsed.model_dump(mode="json", by_alias=True,
                                                                        exclude_none=True)}


@router.post("/runs", response_model=SegmentationRun)
def post_run(session: SessionDep, ctx: ContextDep, as_of: date | None = None,
             principal: Principal = Depends(require(*ADMIN, Role.scheduler))) -> dict[str, Any]:
    """Run segmentation now (as of a date: data strictly before its midnight UTC)."""
    moment = datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC) if as_of else None
    run = service.run_segmentation(session, ctx, moment)
    return service.summary_of(run)


@router.get("/summary", response_model=SegmentationRun)
def get_summary(session: SessionDep, _: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    """Distribution per tier, layer and tag against the expected shares, and the moves of the newest run."""
    return service.summary(session)


@router.get("/history", response_model=Page[HistoryEntry])
def get_history(session: SessionDep, page: PageDep, _: Principal = Depends(require(*READERS)),
                start: Annotated[date | None, Query(alias="from", description="first as-of day")] = None,
                end: Annotated[date | None, Query(alias="to", description="day after the last")] = None
                ) -> dict[str, Any]:
    """Distribution over time: one entry per run with from <= as-of < to."""
    if start and end and end <= start:
        raise InvalidInput("'to' must be after 'from'", errors=[{"field": "to", "reason": "must be after 'from'"}])
    bound = [datetime(d.year, d.month, d.day, tzinfo=UTC) if d else None for d in (start, end)]
    return page.slice(lambda n: service.history(session, *bound))


def install(app: FastAPI) -> None:
    """Wire segmentation into the app: routes, the profile section, the customer-list filters."""
    app.include_router(router)
    app.state.profiles.register("segment", service.segment_section)
    app.state.exports.register("segmentation", service.segment_export)
    for name, description in (("tier", "current tier"), ("layer", "current behaviour layer"),
                              ("tag", "carries this behaviour tag"), ("rfm", "RFM cell such as 545")):
        app.state.customer_filters.register(CustomerFilter(
            name=name, description=description,
            build=lambda session, value, column, name=name: service.customer_ids_where(
                session, column, **{name: value})))

