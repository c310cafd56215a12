"""HTTP for journeys (under /v1): definitions, status, simulation, a customer's enrollments, the per-step funnel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse

from campaigns.journeys import definitions, reports
from campaigns.journeys.defaults import DEFAULT_JOURNEYS
from campaigns.journeys.spec import JourneySpec
from campaigns.schemas import (
    Enrollment,
    Funnel,
    JourneyRead,
    JsonSchemaDocument,
    MoveRequest,
    MoveResult,
    SimulateRequest,
    Simulation,
    StatusChange,
    VersionRead,
)
from crm.api import ContextDep, SessionDep
from crm.auth import Principal, require
from crm.models import Role
from crm.service import customer_by_external_id
from kit import http
from kit.http import Page, PageDep

router = APIRouter(tags=["journeys"])
EDITORS = (Role.admin, Role.marketer)
READERS = (Role.admin, Role.marketer, Role.scheduler)
# The definitions service validates with JourneySpec, the model the OpenAPI names (errors name the step and field).
JourneyBody = Annotated[dict[str, Any], Body()]
JOURNEY_BODY = http.read_body_doc(JourneySpec, example=DEFAULT_JOURNEYS[0])


@router.post("/journeys", status_code=201, response_model=JourneyRead, openapi_extra=JOURNEY_BODY)
def post_journey(body: JourneyBody, session: SessionDep, ctx: ContextDep,
                 principal: Principal = Depends(require(*EDITORS))) -> JSONResponse:
    """Create a journey in draft (validated: errors name the step and field; audited)."""
    journey = definitions.create_journey(session, ctx, body, principal.actor)
    return JSONResponse(definitions.describe_json(journey), status_code=201,
                        headers={"Location": f"/v1/journeys/{journey.id}", "ETag": http.etag(journey.version)})


@router.get("/journeys", response_model=Page[JourneyRead])
def get_journeys(session: SessionDep, page: PageDep, status: Annotated[str | None, Query(
                     pattern="^(draft|active|paused|archived)$", description="only journeys in this status")] = None,
                 _: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    """Journeys, highest priority first; `status` filters."""
    return page.slice(lambda n: [definitions.describe(j) for j in definitions.list_journeys(session, status)])


@router.get("/journeys/schema", response_model=JsonSchemaDocument)
def get_journey_schema(_: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    """The JSON schema of a journey definition."""
    return JourneySpec.model_json_schema(by_alias=True)


@router.get("/journeys/{journey_id}", response_model=JourneyRead)
def get_journey(journey_id: int, response: Response, session: SessionDep,
                _: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    """One journey as it stands (its ETag is its version: send it back in If-Match on PUT)."""
    journey = definitions.get_journey(session, journey_id)
    http.tag(response, journey.version)
    return definitions.describe(journey)


@router.put("/journeys/{journey_id}", response_model=JourneyRead, openapi_extra=JOURNEY_BODY)
def put_journey(journey_id: int, body: JourneyBody, request: Request, response: Response, session: SessionDep,
                ctx: ContextDep, principal: Principal = Depends(require(*EDITORS))) -> dict[str, Any]:
    """Replace the definition: a new version (customers in flight finish on theirs unless moved); a stale If-Match
    is a 412."""
    http.require_current(request, definitions.get_journey(session, journey_id).version)
    journey = definitions.update_journey(session, ctx, journey_id, body, principal.actor)
    http.tag(response, journey.version)
    return definitions.describe(journey)


@router.post("/journeys/{journey_id}/status", response_model=JourneyRead)
def post_status(journey_id: int, change: StatusChange, session: SessionDep, ctx: ContextDep,
                principal: Principal = Depends(require(*EDITORS))) -> dict[str, Any]:
    """Activate (through the fairness gate), pause (no entries, no sends), resume or archive."""
    return definitions.describe(definitions.set_status(session, ctx, journey_id, change.status, principal.actor))


@router.post("/journeys/{journey_id}/move", response_model=MoveResult)
def post_move(journey_id: int, body: MoveRequest, session: SessionDep, ctx: ContextDep,
              principal: Principal = Depends(require(*EDITORS))) -> dict[str, Any]:
    """Move customers in flight on an older version to the current one, step by step as mapped."""
    return definitions.move_enrollments(session, ctx, journey_id, body.from_version, body.step_map,
                                        principal.actor)


@router.get("/journeys/{journey_id}/versions", response_model=Page[VersionRead])
def get_versions(journey_id: int, session: SessionDep, page: PageDep,
                 _: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    """Every saved definition of the journey, oldest first."""
    return page.slice(lambda n: [v.model_dump() for v in definitions.journey_versions(session, journey_id)])


@router.post("/journeys/{journey_id}/simulate", response_model=Simulation)
def post_simulate(journey_id: int, body: SimulateRequest, session: SessionDep, ctx: ContextDep,
                  _: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    """The timeline one customer would take from now, with the guard rails' decisions; nothing is written."""
    result = reports.simulate(session, ctx, journey_id, customer_by_external_id(session, body.customer).id)
    return {"customer": body.customer} | {k: v for k, v in result.items() if k != "customer_id"}


@router.get("/journeys/{journey_id}/funnel", response_model=Funnel)
def get_funnel(journey_id: int, session: SessionDep, ctx: ContextDep,
               _: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    """Per step: taken, sent, not sent by reason, waiting now; converted and exited; uplift against the holdout."""
    return reports.funnel(session, ctx, journey_id)


@router.get("/customers/{external_id}/journeys", response_model=Page[Enrollment])
def get_customer_journeys(external_id: str, session: SessionDep, page: PageDep,
                          _: Principal = Depends(require(Role.admin, Role.marketer, Role.support))
                          ) -> dict[str, Any]:
    """The customer's enrollments: where they are, the steps taken and the next wake-up."""
    customer_id = customer_by_external_id(session, external_id).id
    return page.slice(lambda n: reports.enrollments_of(session, customer_id))


def install(app: FastAPI) -> None:
    """Wire journeys into the app: routes and the profile section."""
    app.include_router(router)
    app.state.profiles.register("journeys", reports.journeys_section)
