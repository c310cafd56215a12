"""HTTP for campaigns: campaigns (versioned, audited), templates, dry-runs, planning, eligibility, the outbox."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request, Response

from campaigns import service
from campaigns.authoring import guard_rail_settings
from campaigns.authoring.defaults import DEFAULT_CAMPAIGNS
from campaigns.authoring.guard_rail_settings import GuardRailSettings
from campaigns.authoring.spec import CampaignSpec
from campaigns.delivery import outbox
from campaigns.journeys import api as journeys_api
from campaigns.schemas import (
    CampaignRead,
    CampaignWritten,
    DryRun,
    Eligibility,
    GuardRailsRead,
    GuardRailVersion,
    MessageRead,
    PlanResult,
    StatusChange,
    TemplateBody,
    TemplateListed,
    TemplatePreview,
    TemplateRead,
    TemplateSaved,
    UpliftModelRead,
    VersionRead,
)
from crm.api import ContextDep, SessionDep
from crm.auth import Principal, require
from crm.models import Role
from crm.service import customer_by_external_id
from kit import http
from kit.channels import CHANNELS
from kit.errors import InvalidInput
from kit.http import Page, PageDep

router = APIRouter(tags=["campaigns"])
EDITORS = (Role.admin, Role.marketer)
READERS = (Role.admin, Role.marketer, Role.scheduler)
PLANNERS = (Role.admin, Role.scheduler)
# The services validate definitions with the same models the OpenAPI names (errors name the field); the routes
# hand them the JSON as sent, so what is stored is what the marketer wrote.
CampaignBody = Annotated[dict[str, Any], Body()]
CAMPAIGN_BODY = http.read_body_doc(CampaignSpec, example=DEFAULT_CAMPAIGNS[2])
GUARD_RAILS_BODY = http.read_body_doc(GuardRailSettings, description="the whole document (see GET)",
                                      example=GuardRailSettings().model_dump(mode="json"))
TEMPLATE_BODY = http.read_body_doc(TemplateBody)
OccurrenceDay = Annotated[date | None, Query(alias="date", description="the occurrence's local date (default: the "
                                                                      "next one)")]


@router.post("/campaigns", status_code=201, response_model=CampaignRead, openapi_extra=CAMPAIGN_BODY)
def post_campaign(body: CampaignBody, response: Response, session: SessionDep, ctx: ContextDep,
                  principal: Principal = Depends(require(*EDITORS))) -> dict[str, Any]:
    """Create a campaign in draft (validated: errors name the field; audited)."""
    campaign = service.create_campaign(session, ctx, body, principal.actor,
                                       may_define_transactional=principal.role == Role.admin)
    http.created(response, f"/v1/campaigns/{campaign.id}")
    http.tag(response, campaign.version)
    return service.describe(campaign)


@router.get("/campaigns", response_model=Page[CampaignRead])
def get_campaigns(session: SessionDep, page: PageDep, status: Annotated[str | None, Query(
                      pattern="^(draft|active|paused|archived)$", description="only campaigns in this status")] = None,
                  _: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    """Campaigns, highest priority first; `status` filters."""
    return page.slice(lambda n: [service.describe(c) for c in service.list_campaigns(session, status)])


@router.get("/uplift/models", response_model=Page[UpliftModelRead])
def get_uplift_models(session: SessionDep, page: PageDep,
                      _: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    """The current uplift model of every segment (kind:channel:offer, and `any`) with its held-out measurement:
    Qini and incremental conversions per 1,000 messages when targeting by uplift vs at random."""
    return page.slice(lambda n: service.uplift_models(session))


@router.post("/uplift/models", response_model=Page[UpliftModelRead])
def post_uplift_models(session: SessionDep, ctx: ContextDep,
                       principal: Principal = Depends(require(*PLANNERS))) -> dict[str, Any]:
    """Fit the uplift models now from the measured arms (treated vs holdout) of past campaigns and journeys;
    segments with too few members in an arm are reported, not fitted."""
    return {"items": service.train_uplift(session, ctx, principal.actor), "next_cursor": None}


@router.get("/campaigns/{campaign_id}", response_model=CampaignRead)
def get_campaign(campaign_id: int, response: Response, session: SessionDep,
                 _: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    """One campaign as it stands (its ETag is its version: send it back in If-Match on PUT)."""
    campaign = service.get_campaign(session, campaign_id)
    http.tag(response, campaign.version)
    return service.describe(campaign)


@router.put("/campaigns/{campaign_id}", response_model=CampaignWritten, openapi_extra=CAMPAIGN_BODY)
def put_campaign(campaign_id: int, body: CampaignBody, request: Request, response: Response, session: SessionDep,
                 ctx: ContextDep, principal: Principal = Depends(require(*EDITORS))) -> dict[str, Any]:
    """Replace a campaign's specification (a new version; audited; active ones pass the fairness gate); a stale
    If-Match is a 412."""
    http.require_current(request, service.get_campaign(session, campaign_id).version)
    campaign, warnings = service.update_campaign(session, ctx, campaign_id, body, principal.actor,
                                                 may_define_transactional=principal.role == Role.admin)
    return service.describe(campaign) | {"fairness_warnings": warnings}


@router.post("/campaigns/{campaign_id}/status", response_model=CampaignWritten)
def post_status(campaign_id: int, change: StatusChange, session: SessionDep, ctx: ContextDep,
                principal: Principal = Depends(require(*EDITORS))) -> dict[str, Any]:
    """Activate (through the fairness gate), pause, resume or archive a campaign."""
    campaign, warnings = service.set_status(session, ctx, campaign_id, change.status, principal.actor,
                                            may_define_transactional=principal.role == Role.admin)
    return service.describe(campaign) | {"fairness_warnings": warnings}


@router.get("/campaigns/{campaign_id}/versions", response_model=Page[VersionRead])
def get_versions(campaign_id: int, session: SessionDep, page: PageDep,
                 _: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    """Every saved state of the campaign, oldest first."""
    return page.slice(lambda n: [v.model_dump() for v in service.campaign_versions(session, campaign_id)])


@router.post("/campaigns/{campaign_id}/dry-run", response_model=DryRun)
def post_dry_run(campaign_id: int, session: SessionDep, ctx: ContextDep, on: OccurrenceDay = None,
                 _: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    """Audience, recipients per channel, exclusions per reason, rendered samples and costs — nothing written."""
    return service.dry_run(session, ctx, campaign_id, on)


@router.post("/campaigns/{campaign_id}/plan", response_model=PlanResult)
def post_plan(campaign_id: int, session: SessionDep, ctx: ContextDep, on: OccurrenceDay = None,
              _: Principal = Depends(require(*PLANNERS))) -> dict[str, Any]:
    """Plan an occurrence into the outbox (idempotent: a second call adds nothing)."""
    return service.plan_campaign(session, ctx, campaign_id, on)


@router.get("/campaigns/{campaign_id}/eligibility/{external_id}", response_model=Eligibility)
def get_eligibility(campaign_id: int, external_id: str, session: SessionDep, ctx: ContextDep,
                    on: OccurrenceDay = None,
                    _: Principal = Depends(require(*EDITORS, Role.support))) -> dict[str, Any]:
    """Whether one customer would get the occurrence, and why (audience, consent, caps, quiet hours, offer)."""
    return service.eligibility(session, ctx, campaign_id, external_id, on)


@router.get("/templates", response_model=Page[TemplateListed])
def get_templates(session: SessionDep, page: PageDep,
                  _: Principal = Depends(require(*EDITORS))) -> dict[str, Any]:
    """Stored templates (newest versions) and the file templates shipped with the service."""
    return page.slice(lambda n: service.list_templates(session))


@router.post("/templates", status_code=201, response_model=TemplateSaved, openapi_extra=TEMPLATE_BODY)
def post_template(response: Response, session: SessionDep, ctx: ContextDep,
                  body: Annotated[dict[str, Any], Body(description="{name, channel, locale, kind: marketing|"
                                                                   "transactional, parts: {part: text}}")],
                  principal: Principal = Depends(require(*EDITORS))) -> dict[str, Any]:
    """Save a template version; refused with 422 when it does not render against a sample context or breaks the
    content rules of its kind (opt-out text, advertising-law phrases, no marketing in transactional notices)."""
    row, checked = service.save_template(session, ctx, body, principal.actor,
                                         may_define_transactional=principal.role == Role.admin)
    http.created(response, f"/v1/templates/{row.id}")
    return row.model_dump() | {"sample": checked}


@router.get("/templates/{template_id}", response_model=TemplateRead)
def get_template(template_id: int, session: SessionDep, _: Principal = Depends(require(*EDITORS))) -> dict[str, Any]:
    """One stored template version."""
    return service.get_template(session, template_id).model_dump()


@router.post("/templates/{template_id}/preview", response_model=TemplatePreview)
def post_preview(template_id: int, session: SessionDep, ctx: ContextDep,
                 customer: Annotated[str, Query(description="the customer's external id", max_length=128)],
                 _: Principal = Depends(require(*EDITORS))) -> dict[str, Any]:
    """Render a stored template for one customer."""
    return service.preview_template(session, ctx, template_id, customer)


@router.get("/messages", response_model=Page[MessageRead])
def get_messages(session: SessionDep, status: Annotated[str | None, Query(max_length=24)] = None,
                 campaign_id: int | None = None,
                 customer: str | None = Query(default=None, max_length=128, description="the shop's customer id"),
                 channel: Annotated[str | None, Query(max_length=24)] = None, cursor: Annotated[str | None, Query(max_length=40)] = None,
                 limit: int = Query(default=100, ge=1, le=1000),
                 _: Principal = Depends(require(*READERS, Role.support))) -> dict[str, Any]:
    """The outbox and ledger, filtered by status, campaign, customer or channel; pages by `cursor` (the previous
    page's `next_cursor`)."""
    if channel is not None and channel not in CHANNELS:
        raise InvalidInput.field("channel", f"one of {', '.join(CHANNELS.names())}")
    customer_id = customer_by_external_id(session, customer).id if customer is not None else None
    rows = outbox.list_messages(session, status=status, campaign_id=campaign_id, customer_id=customer_id,
                                channel=channel, after=http.read_cursor(cursor), limit=limit)
    return {"items": outbox.messages_json(session, rows),
            "next_cursor": http.make_cursor(rows[-1].id) if len(rows) == limit else None}


@router.get("/guard-rails", response_model=GuardRailsRead)
def get_guard_rails(response: Response, session: SessionDep, ctx: ContextDep,
                    _: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    """The guard rails in force: caps, quiet hours, discount ceilings, SMS keywords, opt-out texts, ad phrases."""
    version, settings = guard_rail_settings.current_settings(session, ctx)
    http.tag(response, version)
    return {"version": version, "settings": settings.model_dump(mode="json")}


@router.put("/guard-rails", response_model=GuardRailsRead, openapi_extra=GUARD_RAILS_BODY)
def put_guard_rails(request: Request, response: Response, session: SessionDep, ctx: ContextDep,
                    body: Annotated[dict[str, Any], Body(description="the whole guard-rail document (see GET)")],
                    principal: Principal = Depends(require(Role.admin))) -> dict[str, Any]:
    """Replace the guard rails (a new version, audited; errors name the field); a stale If-Match is a 412."""
    http.require_current(request, guard_rail_settings.current_settings(session, ctx)[0])
    version, settings = guard_rail_settings.update_settings(session, ctx, body, principal.actor)
    http.tag(response, version)
    return {"version": version, "settings": settings.model_dump(mode="json")}


@router.get("/guard-rails/versions", response_model=Page[GuardRailVersion])
def get_guard_rail_versions(session: SessionDep, page: PageDep,
                            _: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    """Every stored version of the guard rails, oldest first (version 0, the environment's, is not stored)."""
    return page.slice(lambda n: [v.model_dump() for v in guard_rail_settings.versions(session)])


def install(app: FastAPI) -> None:
    """Wire campaigns into the app: routes and the contact-history and discount-budget profile sections."""
    app.include_router(router)
    journeys_api.install(app)
    app.state.profiles.register("contact_history", service.contact_history_section)
    app.state.profiles.register("discount_budget", service.discount_budget_section)
    app.state.exports.register("campaigns", service.campaign_export)
    app.state.erasers.register("campaigns", service.campaign_erasure)
