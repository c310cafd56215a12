"""Console pages under /console: sign-in, customer lookup and profile, VIP call tasks, campaigns with dry-runs,
reports, the churn model and jobs. Views only translate HTTP: every figure comes from the packages' services, and
each page allows the roles its API allows."""

from __future__ import annotations

import posixpath
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, unquote, urlsplit

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlmodel import Session

from campaigns import service
from churn import service as churn_service
from console import charts
from console.i18n import LANGUAGES, pick, translator
from console.session import (
    COOKIE,
    LANG_COOKIE,
    LIFETIME,
    LOGIN_COOKIE,
    LOGIN_FORM_LIFETIME,
    ConsoleUser,
    csrf_ok,
    end_session,
    login_token,
    login_token_ok,
    session_cookie,
    user_of,
)
from crm.api import profile_of
from crm.auth import authenticate_request
from crm.models import Role
from crm.service import customer_by_external_id, find_customers
from kit import jobs
from kit.context import Context, ContextDep
from kit.db import SessionDep
from kit.errors import DomainError, TooManyAttempts, Unauthorized
from kit.settings import PROJECT_ROOT
from segmentation.reports import retention_report, tier_history_report

router = APIRouter(prefix="/console", include_in_schema=False)
templates = Jinja2Templates(directory=str(PROJECT_ROOT / "templates" / "console"))
STATIC = Path(__file__).parent / "static"
# Each page allows the roles the API allows for what it shows.
STAFF = (Role.admin, Role.marketer, Role.support)
SUPPORT = (Role.admin, Role.support)
MARKETING = (Role.admin, Role.marketer)
OPERATIONS = (Role.admin, Role.marketer, Role.scheduler)
NAVIGATION = (("customers", "/console/customers", STAFF), ("tasks", "/console/tasks", SUPPORT),
              ("campaigns", "/console/campaigns", MARKETING), ("reports", "/console/reports", MARKETING),
              ("churn", "/console/churn", MARKETING), ("jobs", "/console/jobs", OPERATIONS))
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class LoginRequired(Exception):
    """No valid console session: go to the sign-in page (and come back)."""

    def __init__(self, back: str) -> None:
        super().__init__(back)
        self.back = back


class PageError(Exception):
    """A page that cannot be shown: rendered as an error page with its status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _language(request: Request) -> str:
    return pick(request.query_params.get("lang"), request.cookies.get(LANG_COOKIE))


def render(request: Request, page: str, user: ConsoleUser | None, status: int = 200, **values: Any) -> HTMLResponse:
    """A page in the request's language, with the navigation the user's role may follow."""
    language = _language(request)
    nav = [(key, url) for key, url, roles in NAVIGATION if user and user.role in roles]
    response = templates.TemplateResponse(request, page, {
        "t": translator(language), "lang": language, "languages": LANGUAGES, "user": user, "nav": nav,
        "path": request.url.path, **values}, status_code=status)
    if request.query_params.get("lang") in LANGUAGES:
        response.set_cookie(LANG_COOKIE, language, max_age=365 * 86400, samesite="strict", path="/console")
    response.headers.update(SECURITY_HEADERS)
    return response


def _signed_in(request: Request, session: SessionDep, ctx: ContextDep) -> ConsoleUser:
    user = user_of(session, ctx, request.cookies.get(COOKIE))
    if user is None:
        raise LoginRequired(request.url.path)
    return user


def allow(*roles: Role):
    """Dependency: a signed-in user whose role may open the page."""
    def dependency(request: Request, user: ConsoleUser = Depends(_signed_in)) -> ConsoleUser:
        if user.role not in roles:
            raise PageError(403, translator(_language(request))("forbidden"))
        return user
    return dependency


def _checked(user: ConsoleUser, csrf: str, request: Request) -> None:
    if not csrf_ok(user, csrf):
        raise PageError(403, translator(_language(request))("expired_form"))


def _call(action, *args, **kwargs):
    """Run a service call; its domain errors become error pages with their status."""
    try:
        return action(*args, **kwargs)
    except DomainError as error:
        raise PageError(error.status, error.detail) from error


# ---------------------------------------------------------------- sign-in


def _login_form(request: Request, ctx: Context, status: int = 200, **values: Any) -> HTMLResponse:
    """The sign-in form with a fresh form token, also set as a cookie the post must bring back."""
    token = login_token(ctx)
    response = render(request, "login.html", None, status=status, login_token=token, **values)
    response.set_cookie(LOGIN_COOKIE, token, max_age=int(LOGIN_FORM_LIFETIME.total_seconds()), httponly=True,
                        samesite="strict", secure=ctx.settings.public_base_url.startswith("https"),
                        path="/console/login")
    return response


def _same_origin(request: Request, ctx: Context) -> bool:
    """A form post from our own pages: its Origin (when the browser sends one) is the service's own."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # browsers send Origin on cross-site posts; the form token covers the rest
    own = {ctx.settings.public_base_url.rstrip("/"), f"{request.url.scheme}://{request.url.netloc}"}
    return origin.rstrip("/") in own


@router.get("/login")
def login_page(request: Request, ctx: ContextDep, next: str = "/console/") -> HTMLResponse:
    """The sign-in form."""
    return _login_form(request, ctx, next=_local(next))


@router.post("/login")
def login(request: Request, session: SessionDep, ctx: ContextDep, api_key: Annotated[str, Form(max_length=200)],
          next: Annotated[str, Form(max_length=300)] = "/console/",
          token: Annotated[str, Form(max_length=200)] = "") -> Response:
    """Exchange an API key for a session cookie (HttpOnly, SameSite=Strict, Secure behind https); the post must
    come from our own form (Origin and the form's token: no login CSRF)."""
    language = translator(_language(request))
    if not _same_origin(request, ctx) or not login_token_ok(ctx, token, request.cookies.get(LOGIN_COOKIE)):
        return _login_form(request, ctx, status=403, next=_local(next), error=language("expired_form"))
    try:
        cookie = session_cookie(session, ctx, authenticate_request(request, session, ctx, api_key.strip()))
    except Unauthorized:
        return _login_form(request, ctx, status=401, next=_local(next), error=language("bad_key"))
    except TooManyAttempts as throttled:
        response = _login_form(request, ctx, status=429, next=_local(next), error=language("too_many"))
        response.headers["Retry-After"] = str(throttled.retry_after)
        return response
    response = RedirectResponse(_local(next), status_code=303)
    response.set_cookie(COOKIE, cookie, max_age=int(LIFETIME.total_seconds()), httponly=True, samesite="strict",
                        secure=ctx.settings.public_base_url.startswith("https"), path="/console")
    response.delete_cookie(LOGIN_COOKIE, path="/console/login")
    return response


@router.post("/logout")
def logout(request: Request, session: SessionDep, ctx: ContextDep, csrf: Annotated[str, Form()] = "",
           user: ConsoleUser = Depends(_signed_in)) -> Response:
    """End the session: revoked on the server (a copied cookie stops working too) and cleared in the browser."""
    _checked(user, csrf, request)
    end_session(session, ctx, request.cookies.get(COOKIE))
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path="/console")
    return response


def _local(target: str) -> str:
    """Only console paths are followed after sign-in (no open redirect): the path is normalised first, so
    `/console/../../evil` is `/evil` and refused; schemes, hosts and backslashes never pass."""
    parsed = urlsplit(target)
    if parsed.scheme or parsed.netloc or "\\" in target or not parsed.path.startswith("/"):
        return "/console/"
    path = posixpath.normpath(unquote(parsed.path))
    if path != "/console" and not path.startswith("/console/"):
        return "/console/"
    return quote(path + ("/" if parsed.path.endswith("/") and not path.endswith("/") else ""), safe="/") + (
        f"?{parsed.query}" if parsed.query else "")


# ---------------------------------------------------------------- customers and tasks


@router.get("/")
def home(request: Request, user: ConsoleUser = Depends(_signed_in)) -> HTMLResponse:
    """The start page: the sections this role may open."""
    return render(request, "home.html", user)


@router.get("/customers")
def customers(request: Request, user: ConsoleUser = Depends(allow(*STAFF))) -> Response:
    """The lookup form (the query is posted: an email or phone never sits in a URL or an access log)."""
    return render(request, "customers.html", user, q="", found=[])


@router.post("/customers")
def lookup(request: Request, session: SessionDep, ctx: ContextDep, q: Annotated[str, Form(max_length=200)] = "",
           csrf: Annotated[str, Form()] = "", user: ConsoleUser = Depends(allow(*STAFF))) -> Response:
    """Look a customer up by external id, email or phone (exact, through the keyed hashes)."""
    _checked(user, csrf, request)
    query = q.strip()
    if not query:
        return render(request, "customers.html", user, q="", found=[])
    found = _lookup(session, ctx, query)
    if len(found) == 1:
        return RedirectResponse(f"/console/customers/{quote(found[0], safe='')}", status_code=303)
    return render(request, "customers.html", user, q=query, found=found)


def _lookup(session: Session, ctx: Context, query: str) -> list[str]:
    try:
        return [customer_by_external_id(session, query).external_id]
    except DomainError:
        pass
    field = "email" if "@" in query else "phone"
    try:
        return [c.external_id for c in find_customers(session, ctx, limit=20, **{field: query})]
    except DomainError:  # not an email or phone number either
        return []


@router.get("/customers/{external_id}")
def profile(request: Request, external_id: str, session: SessionDep, ctx: ContextDep,
            user: ConsoleUser = Depends(allow(*STAFF))) -> HTMLResponse:
    """One screen for support: contact data (masked by role), tier and its history, tags with why, churn risk with
    reasons and trend, consent per channel, contact history and the discount budget."""
    data = _call(profile_of, request.app, session, ctx, external_id, user.principal, _language(request))
    t = translator(_language(request))
    churn = data.sections.get("churn") or {}
    trend_chart = charts.trend(churn["trend"], t("trend")) if churn.get("trend") else None
    return render(request, "profile.html", user, profile=data, sections=data.sections, trend_chart=trend_chart)


@router.get("/tasks")
def task_list(request: Request, session: SessionDep, ctx: ContextDep,
              status: Annotated[str | None, Query(pattern="^(open|claimed|done)$")] = None,
              user: ConsoleUser = Depends(allow(*SUPPORT))) -> HTMLResponse:
    """VIP call tasks: open ones first; claim one, call, record the outcome."""
    rows = _call(service.list_tasks, session, ctx, user.principal.actor, status, 100)
    return render(request, "tasks.html", user, tasks=rows, outcomes=list(service.CALL_OUTCOMES), shown=status)


@router.post("/tasks/{task_id}/claim")
def task_claim(request: Request, task_id: int, session: SessionDep, ctx: ContextDep,
               csrf: Annotated[str, Form()] = "", user: ConsoleUser = Depends(allow(*SUPPORT))) -> Response:
    """Claim a task (audited)."""
    _checked(user, csrf, request)
    _call(service.claim_task, session, ctx, task_id, user.principal.actor)
    return RedirectResponse("/console/tasks", status_code=303)


@router.post("/tasks/{task_id}/outcome")
def task_outcome(request: Request, task_id: int, session: SessionDep, ctx: ContextDep,
                 outcome: Annotated[str, Form(max_length=20)], notes: Annotated[str, Form(max_length=2000)] = "",
                 csrf: Annotated[str, Form()] = "", user: ConsoleUser = Depends(allow(*SUPPORT))) -> Response:
    """Record a call's outcome (it decides the message's delivery; audited)."""
    _checked(user, csrf, request)
    _call(service.record_outcome, session, ctx, task_id, outcome, notes or None, user.principal.actor)
    return RedirectResponse("/console/tasks", status_code=303)


# ---------------------------------------------------------------- campaigns


@router.get("/campaigns")
def campaign_list(request: Request, session: SessionDep, user: ConsoleUser = Depends(allow(*MARKETING))
                  ) -> HTMLResponse:
    """Campaigns, highest priority first."""
    return render(request, "campaigns.html", user, campaigns=[service.describe(c) for c in
                                                             service.list_campaigns(session)])


@router.get("/campaigns/{campaign_id}")
def campaign_detail(request: Request, campaign_id: int, session: SessionDep,
                    user: ConsoleUser = Depends(allow(*MARKETING))) -> HTMLResponse:
    """One campaign: its specification, versions, and actions."""
    return _campaign_page(request, session, user, campaign_id, dry=None, chart=None)


@router.post("/campaigns/{campaign_id}/dry-run")
def campaign_dry_run(request: Request, campaign_id: int, session: SessionDep, ctx: ContextDep,
                     csrf: Annotated[str, Form()] = "", user: ConsoleUser = Depends(allow(*MARKETING))
                     ) -> HTMLResponse:
    """What planning would do now, with the exclusions by reason drawn as a chart (writes nothing)."""
    _checked(user, csrf, request)
    dry = _call(service.dry_run, session, ctx, campaign_id)
    chart = charts.exclusions(dry["excluded"], translator(_language(request))("exclusions"))
    return _campaign_page(request, session, user, campaign_id, dry=dry, chart=chart)


def _campaign_page(request: Request, session: Session, user: ConsoleUser, campaign_id: int, *,
                   dry: dict[str, Any] | None, chart: str | None) -> HTMLResponse:
    campaign = _call(service.get_campaign, session, campaign_id)
    return render(request, "campaign.html", user, campaign=service.describe(campaign),
                  spec=service.CampaignSpec.model_validate(campaign.spec),
                  versions=service.campaign_versions(session, campaign_id), dry=dry, exclusions_chart=chart)


@router.post("/campaigns/{campaign_id}/status")
def campaign_status(request: Request, campaign_id: int, session: SessionDep, ctx: ContextDep,
                    status: Annotated[str, Form(pattern="^(active|paused)$")], csrf: Annotated[str, Form()] = "",
                    user: ConsoleUser = Depends(allow(*MARKETING))) -> Response:
    """Pause or resume (audited; resuming passes the fairness gate)."""
    _checked(user, csrf, request)
    _call(service.set_status, session, ctx, campaign_id, status, user.principal.actor)
    return RedirectResponse(f"/console/campaigns/{campaign_id}", status_code=303)


# ---------------------------------------------------------------- reports, churn model, jobs


@router.get("/reports")
def report_page(request: Request, session: SessionDep, ctx: ContextDep,
                user: ConsoleUser = Depends(allow(*MARKETING))) -> HTMLResponse:
    """Campaign uplift with its interval, tier distribution over time, cohort retention."""
    t = translator(_language(request))
    rows = service.campaign_reports(session, ctx)
    tiers = tier_history_report(session, ctx)
    retention = retention_report(session, ctx)
    return render(request, "reports.html", user, campaigns=rows, retention=retention["cohorts"],
                  uplift_chart=charts.uplift(rows, t("uplift")) if rows else None,
                  tier_chart=charts.tiers_over_time(tiers["runs"], t("tier_over_time")) if tiers["runs"] else None,
                  retention_chart=charts.retention(retention["cohorts"], t("cohort_retention"))
                  if retention["cohorts"] else None)


@router.get("/churn")
def churn_page(request: Request, session: SessionDep, user: ConsoleUser = Depends(allow(*MARKETING))
               ) -> HTMLResponse:
    """The churn models: the current one's metrics against the baselines and its calibration."""
    t = translator(_language(request))
    models = churn_service.list_models(session)
    current = next((m for m in models if m.status == "current"), None)
    metrics = current.metrics if current else {}
    return render(request, "churn.html", user, models=models, current=current, metrics=metrics,
                  metrics_chart=charts.model_against_baselines(metrics, t("model_metrics")) if current else None,
                  calibration_chart=charts.calibration(metrics.get("calibration", []), t("predicted"),
                                                       t("observed"), t("calibration")) if current else None)


@router.get("/jobs")
def jobs_page(request: Request, session: SessionDep, ctx: ContextDep,
              user: ConsoleUser = Depends(allow(*OPERATIONS))) -> HTMLResponse:
    """Scheduled jobs with their next runs, and the newest runs with their steps."""
    return render(request, "jobs.html", user, jobs=jobs.overview(session, ctx, request.app.state.jobs),
                  runs=jobs.list_runs(session, limit=30))


# ---------------------------------------------------------------- static files


@cache
def _plotly_js() -> bytes:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().encode()


@router.get("/static/plotly.min.js")
def plotly_js() -> Response:
    """plotly.js as shipped inside the plotly package (the console works offline)."""
    return Response(_plotly_js(), media_type="text/javascript",
                    headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"})


@router.get("/static/{name}")
def static(name: str) -> Response:
    """The console's own script and style sheet."""
    files = {"console.js": "text/javascript", "console.css": "text/css"}
    if name not in files:
        raise PageError(404, "not found")
    return Response((STATIC / name).read_bytes(), media_type=files[name],
                    headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})


def install(app: FastAPI) -> None:
    """Mount the console and its two error handlers (sign-in redirect, HTML error pages)."""
    app.include_router(router)

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, error: LoginRequired) -> Response:
        return RedirectResponse(f"/console/login?next={quote(error.back)}", status_code=303)

    @app.exception_handler(PageError)
    async def _error(request: Request, error: PageError) -> Response:
        ctx = request.app.state.ctx
        with Session(ctx.engine) as session:  # the error page keeps the signed-in user's navigation
            user = user_of(session, ctx, request.cookies.get(COOKIE))
        return render(request, "error.html", user, status=error.status, message=error.message)

