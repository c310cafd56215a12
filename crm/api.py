"""HTTP routes of the core: customers, profiles, consent, imports, keys, audit, health."""

from __future__ import annotations

import functools
import tempfile
from datetime import datetime
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session

from crm import audit, auth, ingest, privacy, service
from crm.auth import ADMIN, STAFF, Principal, require
from crm.models import Customer, Role
from crm.profiles import ProfileRequest
from crm.schemas import (
    AuditRead,
    ConsentChangeRead,
    ConsentUpdate,
    ContactRead,
    CustomerExport,
    CustomerPage,
    CustomerRead,
    CustomerSearch,
    EraseRequest,
    ErasureResult,
    Health,
    ImportJobRead,
    KeyCreate,
    KeyCreated,
    KeyRead,
    Liveness,
    OrderRead,
    ProfileRead,
)
from crm.validation import SPECS
from kit import http
from kit.context import Context, ContextDep
from kit.db import SessionDep
from kit.errors import InvalidInput
from kit.http import Page, PageDep
from kit.jobs import scheduler_health
from kit.migrations import head_revision, probe

router = APIRouter()
IMPORTERS = (Role.admin, Role.scheduler)
IMPORT_READERS = (Role.admin, Role.scheduler, Role.marketer)


def customer_read(ctx: Context, customer: Customer, principal: Principal) -> CustomerRead:
    """Shape a customer for the caller: only admins see contact data unmasked."""
    masked = principal.role != Role.admin
    return CustomerRead(
        external_id=customer.external_id,
        contact=ContactRead(**service.contact_of(ctx, customer, masked=masked), masked=masked),
        time_zone=customer.time_zone, locale=customer.locale, birthday=customer.birthday,
        signed_up_at=customer.signed_up_at, membership_level=customer.membership_level,
        attributes=customer.attributes, created_at=customer.created_at, updated_at=customer.updated_at)


@router.get("/health/live", response_model=Liveness, tags=["ops"])
async def live() -> Liveness:
    """The process is up and serving (no database call: a restart would not cure a database outage)."""
    return Liveness(status="ok")


@router.get("/health/ready", response_model=Health, tags=["ops"],
            responses={503: {"model": Health, "description": "not ready: the body says which check failed"}})
def ready(request: Request, response: Response, session: SessionDep) -> Health:
    """Ready for traffic: database reachable, migrations at head, a scheduler leader that beat within the takeover
    bound. 503 with the same body when any fails (load balancers and orchestrators read the status)."""
    ctx: Context = request.app.state.ctx
    head = head_revision()
    reachable, revision = probe(ctx.engine)
    at_head = reachable and revision == head
    scheduler = scheduler_health(session, ctx) if at_head else None
    leader = bool(scheduler and scheduler["running"])
    ok = at_head and (leader or not ctx.settings.ready_requires_leader)
    if not ok:
        response.status_code = 503
    return Health(status="ok" if ok else "degraded", database=reachable, migrations_at_head=revision == head,
                  revision=revision, head=head, scheduler=scheduler)


CUSTOMER_LIST_PARAMS = {"cursor", "limit", "locale", "time_zone", "membership_level"}
CONTACT_PARAMS = {"email", "phone", "q", "name"}  # never in a URL: POST /v1/customers/search takes them


@router.get("/customers", response_model=CustomerPage, tags=["customers"])
async def list_customers(
    request: Request, session: SessionDep, ctx: ContextDep, principal: Principal = Depends(require(*STAFF)),
    cursor: Annotated[str | None, Query(max_length=40, description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="at most this many items")] = 100,
    locale: Annotated[str | None, Query(max_length=16)] = None,
    time_zone: Annotated[str | None, Query(max_length=64)] = None,
    membership_level: Annotated[str | None, Query(max_length=32)] = None,
) -> CustomerPage:
    """Customers in id order with cursor pagination (lookups by email or phone: POST /v1/customers/search).

    Upper packages add filters (e.g. tier, layer, tag, rfm); an unknown parameter is a 422.
    """
    # A hot read: async with the work in one thread trip (a sync route takes a second trip to check its response).
    return await run_in_threadpool(customer_page, request, session, ctx, principal, cursor=cursor, limit=limit,
                                   email=None, phone=None, locale=locale, time_zone=time_zone,
                                   membership_level=membership_level)


@router.post("/customers/search", response_model=CustomerPage, tags=["customers"])
async def search_customers(search: CustomerSearch, request: Request, session: SessionDep, ctx: ContextDep,
                           principal: Principal = Depends(require(*STAFF))) -> CustomerPage:
    """Customers by exact email or phone (through their keyed hashes); the values travel in the body only."""
    if search.email is None and search.phone is None:
        raise InvalidInput("give email or phone", errors=[{"field": "email", "reason": "email or phone is required"}])
    return await run_in_threadpool(customer_page, request, session, ctx, principal, cursor=search.cursor,
                                   limit=search.limit, email=search.email, phone=search.phone, locale=None,
                                   time_zone=None, membership_level=None, extra_filters=False)


list_customers.accepts_registered_filters = True  # type: ignore[attr-defined]  # checked in customer_page


def customer_page(request: Request, session: Session, ctx: Context, principal: Principal, *, cursor: str | None,
                  limit: int, email: str | None, phone: str | None, locale: str | None, time_zone: str | None,
                  membership_level: str | None, extra_filters: bool = True) -> CustomerPage:
    """One page of GET /v1/customers or POST /v1/customers/search (the filters checked, the rows masked)."""
    registry = request.app.state.customer_filters
    conditions = []
    for name, value in (request.query_params.items() if extra_filters else ()):
        if name in CUSTOMER_LIST_PARAMS:
            continue
        if name in CONTACT_PARAMS:
            raise InvalidInput(f"'{name}' is not a URL parameter", errors=[
                {"field": name, "reason": "contact data never goes in a URL: POST /v1/customers/search with it in "
                                          "the body"}])
        extra = registry.get(name)
        if extra is None:
            known = sorted(CUSTOMER_LIST_PARAMS | {f.name for f in registry.all()})
            raise InvalidInput(f"unknown filter '{name}'", errors=[
                {"field": name, "reason": f"not a filter; known: {', '.join(known)}"}])
        if not value or len(value) > extra.max_length:
            raise InvalidInput(f"bad value for '{name}'", errors=[
                {"field": name, "reason": f"1 to {extra.max_length} characters"}])
        conditions.append(extra.build(session, value, Customer.id))
    rows = service.find_customers(session, ctx, after_id=http.read_cursor(cursor), limit=limit, email=email, phone=phone,
                                  locale=locale, time_zone=time_zone, membership_level=membership_level,
                                  conditions=conditions)
    items = [customer_read(ctx, c, principal) for c in rows]
    return CustomerPage(items=items, next_cursor=http.make_cursor(rows[-1].id) if len(rows) == limit else None)


@router.get("/customers/{external_id}", response_model=CustomerRead, tags=["customers"])
def get_customer(external_id: str, session: SessionDep, ctx: ContextDep,
                 principal: Principal = Depends(require(*STAFF))) -> CustomerRead:
    """One customer by the shop's id."""
    return customer_read(ctx, service.customer_by_external_id(session, external_id), principal)


@router.get("/customers/{external_id}/profile", response_model=ProfileRead, tags=["customers"])
async def get_profile(external_id: str, request: Request, session: SessionDep, ctx: ContextDep,
                      principal: Principal = Depends(require(*STAFF))) -> ProfileRead:
    """The profile support agents open: customer, consent and every registered section."""
    # A hot read: async with the work in one thread trip (a sync route takes a second trip to check its response).
    language = (request.headers.get("accept-language") or "").split(",")[0].split(";")[0].strip() or None
    return await run_in_threadpool(profile_of, request.app, session, ctx, external_id, principal, language)


def profile_of(app: Any, session: Session, ctx: Context, external_id: str, principal: Principal,
               reader_locale: str | None = None) -> ProfileRead:
    """A customer's profile as this principal may see it (contact data masked by role), for the API and console;
    generated text (churn reasons) in the reader's language when given, else the customer's."""
    customer = service.customer_by_external_id(session, external_id)
    sections = app.state.profiles.build(
        ProfileRequest(session=session, ctx=ctx, customer_id=customer.id, viewer_role=principal.role.value,
                       reader_locale=reader_locale))
    return ProfileRead(customer=customer_read(ctx, customer, principal),
                       consent=service.consent_of(session, customer.id), sections=sections)


@router.get("/customers/{external_id}/export", tags=["customers"], response_model=CustomerExport)
def export_customer(external_id: str, request: Request, session: SessionDep, ctx: ContextDep,
                    principal: Principal = Depends(require(*ADMIN))) -> dict[str, Any]:
    """Everything held about one customer, contact data in clear (a data-subject access request; audited)."""
    return privacy.export_customer(session, ctx, request.app.state.exports, external_id, principal.actor)


@router.post("/customers/{external_id}/erase", tags=["customers"], response_model=ErasureResult)
def erase_customer(external_id: str, body: EraseRequest, request: Request, session: SessionDep, ctx: ContextDep,
                   principal: Principal = Depends(require(*ADMIN))) -> dict[str, Any]:
    """Erase one customer's personal data on request; orders stay, anonymised, for statistics (audited)."""
    return privacy.erase_customer(session, ctx, request.app.state.erasers, external_id, body.confirm,
                                  principal.actor)


@router.get("/customers/{external_id}/orders", response_model=Page[OrderRead], tags=["customers"])
def customer_orders(external_id: str, session: SessionDep, page: PageDep,
                    _: Principal = Depends(require(*STAFF))) -> dict[str, Any]:
    """A customer's orders, newest first."""
    customer = service.customer_by_external_id(session, external_id)
    return page.slice(lambda n: [
        OrderRead(external_id=o.external_id, ordered_at=o.ordered_at, amount_paid=float(o.amount_paid),
                  discount=float(o.discount), coupon_code=o.coupon_code)
        for o in service.recent_orders(session, customer.id, n)])


@router.get("/customers/{external_id}/consents", response_model=Page[ConsentChangeRead], tags=["customers"])
def get_consent_history(external_id: str, session: SessionDep, page: PageDep,
                        _: Principal = Depends(require(*STAFF))) -> dict[str, Any]:
    """The customer's consent history, oldest first."""
    customer = service.customer_by_external_id(session, external_id)
    return page.slice(lambda n: [ConsentChangeRead(**c.model_dump())
                                 for c in service.consent_history(session, customer.id)])


@router.post("/customers/{external_id}/consents", response_model=Page[ConsentChangeRead], tags=["customers"])
def post_consent(external_id: str, update: ConsentUpdate, session: SessionDep, ctx: ContextDep,
                 principal: Principal = Depends(require(*STAFF))) -> dict[str, Any]:
    """Record a consent statement (e.g. an opt-out taken by phone); returns the whole history."""
    customer = service.customer_by_external_id(session, external_id)
    service.record_consent(session, ctx, customer_id=customer.id, channel=update.channel, status=update.status,
                           source=update.source, actor=principal.actor, at=update.at)
    session.flush()
    return {"items": [ConsentChangeRead(**c.model_dump()) for c in service.consent_history(session, customer.id)],
            "next_cursor": None}


IMPORT_EXAMPLES = {
    "text/csv": "external_id,customer_external_id,ordered_at,amount_paid,discount\n"
                "O-1001,C0000042,2026-12-01T10:00:00Z,358,40\n",
    "application/x-ndjson": '{"external_id": "C0000042", "email": "ana.li@example.com", "time_zone": "Asia/Shanghai"}\n',
}


@router.post("/imports/{kind}", response_model=ImportJobRead, status_code=201, tags=["imports"],
             openapi_extra=http.raw_body_doc(IMPORT_EXAMPLES, "the rows as CSV with a header line, or NDJSON; "
                                             "columns per kind in docs/api.md (streamed: no size limit but "
                                             "CRM_IMPORT_MAX_BYTES)"))
async def post_import(kind: str, request: Request, response: Response, session: SessionDep, ctx: ContextDep,
                      principal: Principal = Depends(require(*IMPORTERS))) -> ImportJobRead:
    """Import customers, orders, order_items or events from a CSV or NDJSON body (streamed to disk first)."""
    if kind not in SPECS:
        raise InvalidInput(f"unknown import kind '{kind}'",
                           errors=[{"field": "kind", "reason": f"one of {', '.join(SPECS)}"}])
    content_type = request.headers.get("content-type", "text/csv").split(";")[0].strip().lower()
    fmt = "ndjson" if content_type in ("application/x-ndjson", "application/ndjson", "application/jsonl") else "csv"
    # The body is spooled to a temporary file as it arrives, so a large upload never sits in memory.
    limit = ctx.settings.import_max_bytes
    with tempfile.TemporaryFile() as spool:
        async for chunk in request.stream():
            spool.write(chunk)
            if spool.tell() > limit:  # refused while it arrives: the disk is not filled first
                raise ingest.ImportTooLarge.upload(limit)
        spool.seek(0)
        # On threads of their own: a long import must not hold one of the few threads short reads run on.
        job = await anyio.to_thread.run_sync(functools.partial(
            ingest.run_import, session, ctx, kind=kind, chunks=iter(lambda: spool.read(4 << 20), b""), fmt=fmt,
            source=f"api:{request.headers.get('x-filename', 'upload')}"[:300], actor=principal.actor),
            limiter=request.app.state.import_threads)
    http.created(response, f"/v1/imports/{job.id}")
    return ImportJobRead(**job.model_dump())


@router.get("/imports/{job_id}", response_model=ImportJobRead, tags=["imports"])
def get_import(job_id: int, session: SessionDep, ctx: ContextDep,
               _: Principal = Depends(require(*IMPORT_READERS))) -> ImportJobRead:
    """An import job's counts and row errors (`interrupted` when its process died: committed blocks are kept)."""
    return ImportJobRead(**ingest.get_job(session, job_id, ctx).model_dump())


@router.get("/keys", response_model=Page[KeyRead], tags=["keys"])
def get_keys(session: SessionDep, page: PageDep, _: Principal = Depends(require(*ADMIN))) -> dict[str, Any]:
    """Every API key's metadata."""
    return page.slice(lambda n: [KeyRead(**k.model_dump()) for k in auth.list_keys(session)])


@router.post("/keys", response_model=KeyCreated, status_code=201, tags=["keys"])
def post_key(body: KeyCreate, response: Response, session: SessionDep, ctx: ContextDep,
             principal: Principal = Depends(require(*ADMIN))) -> KeyCreated:
    """Create a key; the response carries the key itself, shown only this once."""
    issued = auth.create_key(session, ctx, name=body.name, role=body.role, actor=principal.actor)
    http.created(response, f"/v1/keys/{issued.record.id}")
    return KeyCreated(**issued.record.model_dump(), key=issued.secret)


@router.delete("/keys/{key_id}", response_model=KeyRead, tags=["keys"])
def delete_key(key_id: int, session: SessionDep, ctx: ContextDep,
               principal: Principal = Depends(require(*ADMIN))) -> KeyRead:
    """Revoke a key."""
    return KeyRead(**auth.revoke_key(session, ctx, key_id=key_id, actor=principal.actor).model_dump())


@router.get("/audit", response_model=Page[AuditRead], tags=["audit"])
def get_audit(session: SessionDep, page: PageDep, _: Principal = Depends(require(*ADMIN)),
              entity: Annotated[str | None, Query(max_length=64, description="e.g. campaign, api_key")] = None,
              entity_id: Annotated[str | None, Query(max_length=128)] = None,
              since: Annotated[datetime | None, Query(description="entries at or after this instant")] = None,
              ) -> dict[str, Any]:
    """The audit trail, newest first."""
    return page.slice(lambda n: [AuditRead(**a.model_dump()) for a in audit.entries(
        session, entity=entity, entity_id=entity_id, since=since, limit=n)])



