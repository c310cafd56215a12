"""HTTP for churn: the model registry (list, promote, roll back) and the at-risk list; plus the profile section."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query

from churn import service
from churn.schemas import AtRiskPage, ChurnModelRead
from crm.api import ContextDep, SessionDep
from crm.auth import Principal, require
from crm.models import Role
from crm.profiles import CustomerFilter
from kit.http import Page, PageDep

router = APIRouter(prefix="/churn", tags=["churn"])
READERS = (Role.admin, Role.marketer, Role.scheduler)


def _model(row: service.ChurnModelVersion) -> dict[str, Any]:
    return row.model_dump(exclude={"artifact"})


@router.get("/models", response_model=Page[ChurnModelRead])
def get_models(session: SessionDep, page: PageDep, _: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    """Every trained model with its metrics, baselines, training window and promotion decision."""
    return page.slice(lambda n: [_model(row) for row in service.list_models(session)])


@router.post("/models/{model_id}/promote", response_model=ChurnModelRead)
def post_promote(model_id: int, session: SessionDep, ctx: ContextDep,
                 principal: Principal = Depends(require(Role.admin))) -> dict[str, Any]:
    """Make a stored model current (admin, audited); it must clear the ROC AUC floor."""
    return _model(service.promote(session, ctx, model_id, principal.actor))


@router.post("/models/rollback", response_model=ChurnModelRead)
def post_rollback(session: SessionDep, ctx: ContextDep,
                  principal: Principal = Depends(require(Role.admin))) -> dict[str, Any]:
    """Bring back the model that was current before this one (admin, audited)."""
    return _model(service.rollback(session, ctx, principal.actor))


@router.get("/at-risk", response_model=AtRiskPage, response_model_exclude_unset=True)
def get_at_risk(session: SessionDep, page: PageDep,
                tier: Annotated[str | None, Query(max_length=32, description="only this tier")] = None,
                locale: str | None = Query(default=None, pattern="^(zh-CN|en-US)$",
                                           description="language of the reasons (default: each customer's)"),
                _: Principal = Depends(require(Role.admin, Role.marketer, Role.support, Role.scheduler))
                ) -> dict[str, Any]:
    """Flagged customers with probability, risk level, value and reasons; `tier` filters; the first page also
    counts the flagged customers per reason topic (`top_reasons`)."""
    after = page.after()
    rows = service.at_risk_customers(session, tier=tier, after=after, limit=page.limit, locale=locale)
    answer = {"items": [{k: v for k, v in row.items() if k != "customer_id"} for row in rows],
              "next_cursor": page.next_after(rows, lambda row: row["customer_id"])}
    return answer | ({"top_reasons": service.top_reasons(session, locale)} if after is None else {})


def install(app: FastAPI) -> None:
    """Wire churn into the app: routes and the profile section."""
    app.include_router(router)
    app.state.profiles.register("churn", service.churn_section)
    app.state.exports.register("churn", service.churn_export)
    app.state.customer_filters.register(CustomerFilter(
        name="at_risk", description="flagged by the current churn model (true/false)",
        build=service.at_risk_condition, max_length=5))
    for name, description, build in (
            ("risk_level", "churn risk level: low, medium or high (comma-separated)", service.risk_level_condition),
            ("predicted_clv_min", "predicted 12-month value net of refunds at least this", service.clv_min_condition),
            ("next_order_within_days", "expected next order due within this many days",
             service.next_order_condition)):
        app.state.customer_filters.register(CustomerFilter(name=name, description=description, build=build,
                                                           max_length=20))
