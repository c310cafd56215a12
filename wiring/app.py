"""The FastAPI app factory: the composition root that wires every package's routes, profile sections and jobs."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.routing import BaseRoute

from campaigns import api as campaigns_api
from campaigns.delivery import api as delivery_api
from campaigns.measurement import api as measurement_api
from churn import api as churn_api
from console import pages as console_pages
from crm import api, ingest_api
from crm import profiles as crm_profiles
from crm.auth import Principal, require
from crm.models import Role
from crm.profiles import CustomerFilterRegistry, ProfileRegistry
from kit import idempotency, metrics
from kit.context import Context, build_context
from kit.errors import install_handlers
from kit.jobs import JobRegistry
from kit.settings import Settings, get_settings
from kit.throttle import FailureThrottle
from segmentation import api as segmentation_api
from wiring import __version__, contract, jobs_api, reports_api


def job_registry(settings: Settings) -> JobRegistry:
    """Every package's scheduled jobs (the scheduler process, the jobs API and the CLI share this)."""
    from campaigns import jobs as campaign_jobs
    from churn import jobs as churn_jobs
    from segmentation import jobs as segmentation_jobs

    return JobRegistry([*campaign_jobs.jobs(settings), *churn_jobs.jobs(settings), *segmentation_jobs.jobs(settings)])


class ConcurrencyLimit:
    """Plain ASGI: at most `limit` requests of this process in progress, the others queued in arrival order (a
    request in progress holds a database connection; the pool has one for each).

    Uploads (POST /v1/imports/...) pass by: they wait on the client's body and run for minutes, and must not take the
    places of short reads.
    """

    def __init__(self, inner, limit: int) -> None:
        self.inner, self.limit = inner, limit
        self.slots: asyncio.Semaphore | None = None  # made on the first request, inside the server's event loop

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or (scope["method"] == "POST" and scope["path"].startswith("/v1/imports/")):
            await self.inner(scope, receive, send)
            return
        if self.slots is None:
            self.slots = asyncio.Semaphore(self.limit)
        async with self.slots:
            await self.inner(scope, receive, send)


access_log = logging.getLogger("crm.access")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Measure:
    """Counts, times and logs every HTTP request by route template, with a request id (the client's X-Request-ID
    when it is a plain token, else a new one) echoed in the response. Plain ASGI: Starlette's BaseHTTPMiddleware
    costs about a millisecond per request in task and stream plumbing."""

    def __init__(self, inner, requests: Counter, latency: Histogram, templates: Callable[[], dict[int, str]]) -> None:
        self.inner, self.requests, self.latency = inner, requests, latency
        self.templates, self.known = templates, None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]
        offered = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = offered if REQUEST_ID.match(offered) else uuid.uuid4().hex

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.inner(scope, receive, send_and_note)
        finally:
            if self.known is None:  # every route is registered by the first request
                self.known = self.templates()
            template = self.known.get(id(scope.get("route")), "unmatched")
            elapsed = time.perf_counter() - started
            self.requests.labels(scope["method"], template, str(status[0])).inc()
            self.latency.labels(scope["method"], template).observe(elapsed)
            principal = scope.get("state", {}).get("principal")
            access_log.info("%s %s %s", scope["method"], template, status[0], extra={
                "request_id": request_id, "method": scope["method"], "route": template, "status": status[0],
                "latency_ms": round(elapsed * 1000, 2), "key_id": getattr(principal, "key_id", None),
                "role": getattr(getattr(principal, "role", None), "value", None)})


def _install_metrics(app: FastAPI) -> None:
    """The /metrics route and the HTTP measures the Measure middleware records."""
    registry = CollectorRegistry()
    app.state.http_measures = {
        "requests": Counter("crm_http_requests_total", "HTTP requests", ["method", "route", "status"],
                            registry=registry),
        "latency": Histogram("crm_http_request_seconds", "HTTP request latency", ["method", "route"],
                             registry=registry)}

    gauges = metrics.DatabaseGauges(lambda: _database_gauges(app.state.ctx))

    @app.get("/metrics", tags=["ops"], response_class=Response, responses={200: {"content": {
        CONTENT_TYPE_LATEST: {"schema": {"type": "string"}, "example": "crm_sends_total{channel=\"sms\","
                                                                         "provider=\"twilio\"} 1842.0\n"}}}})
    def metrics_route(_: Principal = Depends(require(Role.admin, Role.scheduler))) -> Response:
        """Prometheus metrics of every process (API workers, scheduler, dispatcher, journey worker) and the
        database's gauges (outbox depth, journey backlog, activity lag)."""
        served = metrics.scrape_registry([registry, metrics.business().registry], gauges)
        return Response(generate_latest(served), media_type=CONTENT_TYPE_LATEST)


def _database_gauges(ctx: Context) -> dict[str, Any]:
    from sqlmodel import Session

    from campaigns import service as campaigns_service
    from crm import service as crm_service

    now = ctx.clock.now()
    with Session(ctx.engine) as session:
        found: dict[str, Any] = {"outbox": campaigns_service.outbox_depth(session)}
        found |= campaigns_service.journey_backlog(session, now)
        oldest = crm_service.oldest_unclaimed_activity_at(session)
    found["activity_lag_seconds"] = max((now - oldest).total_seconds(), 0.0) if oldest else 0.0
    return found


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Each worker process: route code on `api_threads` threads (see Settings.api_threads)."""
    anyio.to_thread.current_default_thread_limiter().total_tokens = app.state.ctx.settings.api_threads
    # What was loaded at start (the libraries, the app) lives as long as the process: out of the collector's sight,
    # a full collection no longer walks it mid-request (one walk over it took ~130 ms here).
    gc.collect()
    gc.freeze()
    yield


API_PREFIX = "/v1"
UNVERSIONED = ("/console", "/docs", "/redoc")  # the console's pages and the API's docs are for people, not integrators


def _version_routes(app: FastAPI) -> None:
    """Put every API route under /v1 (routers declare their paths without it): a breaking change gets /v2 beside
    /v1, and integrators move when they choose."""
    keep, versioned = [], APIRouter()
    for route in app.router.routes:
        path = getattr(route, "path", None)
        if path is None:  # an included router
            path = route.original_router.prefix if hasattr(route, "original_router") else ""
        if isinstance(route, BaseRoute) and not path.startswith(UNVERSIONED) and path != app.openapi_url:
            versioned.routes.append(route)
        else:
            keep.append(route)
    app.router.routes = keep
    app.include_router(versioned, prefix=API_PREFIX, dependencies=[Depends(contract.refuse_unknown_query)])


def create_app(ctx: Context | None = None) -> FastAPI:
    """Build the app around a Context (the default one reads CRM_* settings)."""
    ctx = ctx or build_context(get_settings())
    app = FastAPI(title="CRM retention service", version=__version__, lifespan=_lifespan, docs_url=None,
                  redoc_url=None, openapi_url=f"{API_PREFIX}/openapi.json",
                  description="Segmentation, churn risk and guarded retention campaigns for e-commerce shops.")
    _install_local_docs(app)
    app.state.ctx = ctx
    app.state.import_threads = anyio.CapacityLimiter(ctx.settings.api_import_threads)
    app.state.auth_throttle = FailureThrottle(ctx.settings.auth_failure_limit,
                                              timedelta(seconds=ctx.settings.auth_failure_window_seconds))
    if ctx.settings.cors_origins:  # browsers elsewhere may call the API only from the listed origins
        app.add_middleware(CORSMiddleware, allow_origins=ctx.settings.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "PUT", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"])
    app.state.profiles = ProfileRegistry()
    app.state.profiles.register("orders", crm_profiles.orders_section)
    app.state.exports = ProfileRegistry()  # upper packages add their parts of a customer's data export
    app.state.erasers = ProfileRegistry()  # and what they erase on request
    app.state.customer_filters = CustomerFilterRegistry()
    install_handlers(app)
    app.include_router(api.router)
    app.include_router(ingest_api.router)
    segmentation_api.install(app)
    churn_api.install(app)
    campaigns_api.install(app)
    delivery_api.install(app)
    reports_api.install(app)
    measurement_api.install(app)
    console_pages.install(app)
    jobs_api.install(app, job_registry(ctx.settings))
    _install_metrics(app)
    _version_routes(app)
    app.state.idempotency = idempotency.engine_store(ctx.engine, ctx.clock,
                                                     timedelta(hours=ctx.settings.idempotency_hours))
    app.add_middleware(idempotency.Idempotency, store=lambda: app.state.idempotency, prefix=f"{API_PREFIX}/")
    app.add_middleware(ConcurrencyLimit, limit=ctx.settings.api_concurrency)
    app.add_middleware(Measure, **app.state.http_measures, templates=lambda: contract.route_templates(app))  # outermost: its latency includes the wait for a place
    _document_customer_filters(app)
    contract.document(app)
    return app


SWAGGER_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}
REDOC_FILE = "redoc.standalone.js"


def _install_local_docs(app: FastAPI) -> None:
    """Swagger UI and ReDoc served by the app itself (FastAPI's default loads them from a CDN: blank offline, and a
    third party sees who reads the docs)."""
    from importlib.resources import files

    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from swagger_ui_bundle import swagger_ui_path

    root = Path(swagger_ui_path)
    redoc = Path(str(files("fastapi_offline") / "static" / REDOC_FILE))

    @app.get("/redoc", include_in_schema=False)
    def redoc_page() -> HTMLResponse:
        return get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} — API",
                              redoc_js_url=f"/docs/static/{REDOC_FILE}", redoc_favicon_url="data:,",
                              with_google_fonts=False)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} — API",
                                   swagger_js_url="/docs/static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/static/swagger-ui.css",
                                   swagger_favicon_url="data:,", oauth2_redirect_url="/docs/oauth2-redirect")

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def docs_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/docs/static/{file}", include_in_schema=False)
    def docs_static(file: str) -> Response:
        if file == REDOC_FILE:
            return FileResponse(redoc, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})
        if file not in SWAGGER_FILES:
            return Response(status_code=404)
        return FileResponse(root / file, media_type=SWAGGER_FILES[file], headers={"Cache-Control": "max-age=86400"})


def _document_customer_filters(app: FastAPI) -> None:
    """Show the filters upper packages registered as query parameters of GET /customers in the OpenAPI."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            operation = schema["paths"][f"{API_PREFIX}/customers"]["get"]
            operation.setdefault("parameters", []).extend(
                {"name": f.name, "in": "query", "required": False, "description": f.description,
                 "schema": {"type": "string", "maxLength": f.max_length}}
                for f in app.state.customer_filters.all())
        return app.openapi_schema

    app.openapi = openapi
