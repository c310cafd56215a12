"""HTTP for measurement: promoting an A/B winner (the reports themselves are served by wiring.reports_api)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from campaigns.authoring import campaigns as service
from campaigns.measurement import reports
from campaigns.schemas import CampaignWritten, WinnerChoice
from crm.api import ContextDep, SessionDep
from crm.auth import Principal, require
from crm.models import Role

router = APIRouter(tags=["reports"])
EDITORS = (Role.admin, Role.marketer)


@router.post("/campaigns/{campaign_id}/experiment/promote", response_model=CampaignWritten)
def post_promote(campaign_id: int, choice: WinnerChoice, session: SessionDep, ctx: ContextDep,
                 principal: Principal = Depends(require(*EDITORS))) -> dict[str, Any]:
    """Send the A/B winner to the whole audience: a new campaign version without the test (audited)."""
    campaign, warnings = reports.promote_winner(session, ctx, campaign_id, choice.variant, principal.actor)
    return service.describe(campaign) | {"fairness_warnings": warnings}


def install(app) -> None:
    """Wire the measurement routes into the app."""
    app.include_router(router)
