"""The ingestion API (/v1): events, customers, orders and refunds as they happen, retried safely.

For the `ingest` role (server-to-server; it can write customer data and read nothing) and admins. Every POST
honours an `Idempotency-Key`: the same key with the same body replays the stored answer for 24 hours, the same
key with another body is a 422.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from crm import shopify, writes
from crm.auth import Principal, require
from crm.jobs import IDEMPOTENCY_HOURS
from crm.models import IdempotentRequest, Role
from kit.context import Context, ContextDep
from kit.db import SessionDep
from kit.errors import Conflict, InvalidInput

router = APIRouter(tags=["ingestion"])
WRITERS = (Role.ingest, Role.admin)
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=64)]


JsonBody = Annotated[Any, Body()]


def digest_of(body: Any) -> str:
    """The digest of a body's canonical JSON (key order and spacing do not matter)."""
    return hashlib.sha256(writes.dumps(body).encode()).hexdigest()


def idempotent(session: Session, ctx: Context, principal: Principal, key: str | None, route: str, digest: str,
               work) -> JSONResponse:
    """Run `work()` once per (key, caller): a replay returns the stored answer; another body under the key is a 422."""
    if key is not None:
        stored = session.get(IdempotentRequest, (key, principal.key_id))
        if stored is not None and stored.created_at >= ctx.clock.now() - timedelta(hours=IDEMPOTENCY_HOURS):
            if stored.body_digest != digest or stored.route != route:
                raise InvalidInput("Idempotency-Key: already used with another request body",
                                   errors=[{"field": "Idempotency-Key", "reason": "used with another body"}])
            return JSONResponse(stored.response, status_code=stored.status_code,
                                headers={"Idempotency-Replayed": "true"})
        if stored is not None:  # older than the window: the key may be reused
            session.delete(stored)
            session.flush()
    answer = work()
    if key is not None:
        session.add(IdempotentRequest(key=key, key_id=principal.key_id, route=route, body_digest=digest,
                                      status_code=202, response=answer, created_at=ctx.clock.now()))
        try:
            session.flush()
        except IntegrityError:
            raise Conflict("Idempotency-Key: a request with this key is being processed; retry it") from None
    return JSONResponse(answer, status_code=202)


def _items_route(kind: str, *, first_wins: bool = False):
    def route(body: JsonBody, session: SessionDep, ctx: ContextDep, key: IdempotencyKey = None,
              principal: Principal = Depends(require(*WRITERS))) -> JSONResponse:
        return idempotent(session, ctx, principal, key, kind, digest_of(body), lambda: writes.write_items(
            session, ctx, kind, body, cause="api", first_wins=first_wins).as_dict())

    route.__doc__ = {
        "events": "Track one event or a batch (at most 1,000): customer_id, type, time, properties, unique_id.",
        "customers": "Identify (create or update) one customer or a batch: the import's fields, name and consent.",
        "orders": "Record one order with its items or a batch; status placed, paid, cancelled or refunded.",
    }[kind]
    return route


router.add_api_route("/events", _items_route("events", first_wins=True), methods=["POST"], status_code=202,
                     summary="Track events")
router.add_api_route("/customers", _items_route("customers"), methods=["POST"], status_code=202,
                     summary="Identify customers")
router.add_api_route("/orders", _items_route("orders"), methods=["POST"], status_code=202, summary="Record orders")


@router.post("/orders/{order_id}/refunds", status_code=202, summary="Refund an order (whole or partly)")
def refund(order_id: str, body: JsonBody, session: SessionDep, ctx: ContextDep, key: IdempotencyKey = None,
           principal: Principal = Depends(require(*WRITERS))) -> JSONResponse:
    """A refund with its own id, amount, time and refunded lines; spend everywhere counts net of it."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a refund object", errors=[{"field": "body", "reason": "not an object"}])
    return idempotent(session, ctx, principal, key, f"refund:{order_id}", digest_of(body), lambda: writes.refund_order(
        session, ctx, order_id, body, actor=f"key:{principal.name}"))


@router.post("/webhooks/shopify", summary="Shopify webhooks (orders, refunds, customers)")
async def shopify_webhook(request: Request, session: SessionDep, ctx: ContextDep,
                          topic: Annotated[str, Header(alias="X-Shopify-Topic")] = "",
                          webhook_id: Annotated[str | None, Header(alias="X-Shopify-Webhook-Id")] = None,
                          signature: Annotated[str | None, Header(alias="X-Shopify-Hmac-Sha256")] = None
                          ) -> JSONResponse:
    """Signed by the shop's webhook secret (no key); a redelivery (same webhook id) is acknowledged, not redone."""
    raw = await request.body()
    shopify.verify(ctx.settings.shopify_webhook_secret, raw, signature)
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidInput("the body is not JSON", errors=[{"field": "body", "reason": "not JSON"}]) from None
    answer = await run_in_threadpool(shopify.receive, session, ctx, topic, webhook_id, payload)
    return JSONResponse(answer, status_code=200)
