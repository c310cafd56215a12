"""The ingestion API (/v1): events, customers, orders and refunds as they happen, retried safely.

For the `ingest` role (server-to-server; it can write customer data and read nothing) and admins. Like every
POST, each honours an `Idempotency-Key` (kit.idempotency): a retry with the same body replays the stored answer.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from crm import shopify, writes
from crm.auth import Principal, require
from crm.models import Role
from crm.schemas import INGEST_BODIES, IngestResult, RefundIn, RefundResult, ShopWebhookResult
from kit import http, metrics
from kit.context import Context, ContextDep
from kit.db import SessionDep
from kit.errors import InvalidInput

router = APIRouter(tags=["ingestion"])
WRITERS = (Role.ingest, Role.admin)


JsonBody = Annotated[Any, Body()]


def _measure(ctx: Context, kind: str, body: Any, answer: dict[str, Any]) -> None:
    """Items accepted and rejected, and for events the lag from their time to their arrival."""
    measured = metrics.business()
    measured.ingested.labels(kind, "accepted").inc(answer["accepted"])
    measured.ingested.labels(kind, "rejected").inc(answer["rejected"])
    if kind != "events":
        return
    now = ctx.clock.now()
    for item in body if isinstance(body, list) else [body]:
        try:
            at = datetime.fromisoformat(str(item["time"]))
        except (KeyError, TypeError, ValueError):
            continue
        measured.ingestion_lag.observe(max((now - (at if at.tzinfo else at.replace(tzinfo=UTC))).total_seconds(), 0))


def _items_route(kind: str, *, first_wins: bool = False):
    def route(body: JsonBody, session: SessionDep, ctx: ContextDep,
              principal: Principal = Depends(require(*WRITERS))) -> JSONResponse:
        answer = writes.write_items(session, ctx, kind, body, cause="api", first_wins=first_wins).as_dict()
        _measure(ctx, kind, body, answer)
        return JSONResponse(answer, status_code=202)

    route.__doc__ = {
        "events": "Track one event or a batch (at most 1,000): customer_id, type, time, properties, unique_id.",
        "customers": "Identify (create or update) one customer or a batch: the import's fields, name and consent.",
        "orders": "Record one order with its items or a batch; status placed, paid, cancelled or refunded.",
    }[kind]
    return route


for _kind, _summary in (("events", "Track events"), ("customers", "Identify customers"), ("orders", "Record orders")):
    router.add_api_route(f"/{_kind}", _items_route(_kind, first_wins=_kind == "events"), methods=["POST"],
                         status_code=202, summary=_summary, response_model=IngestResult,
                         openapi_extra=http.read_body_doc(INGEST_BODIES[_kind], batch=writes.MAX_BATCH,
                                                          description="one item or a batch"))


@router.post("/orders/{order_id}/refunds", status_code=202, summary="Refund an order (whole or partly)",
             response_model=RefundResult, openapi_extra=http.read_body_doc(RefundIn))
def refund(order_id: str, body: JsonBody, session: SessionDep, ctx: ContextDep,
           principal: Principal = Depends(require(*WRITERS))) -> JSONResponse:
    """A refund with its own id, amount, time and refunded lines; spend everywhere counts net of it."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a refund object", errors=[{"field": "body", "reason": "not an object"}])
    return JSONResponse(writes.refund_order(session, ctx, order_id, body, actor=f"key:{principal.name}"),
                        status_code=202)


@router.post("/webhooks/shopify", summary="Shopify webhooks (orders, refunds, customers)",
             response_model=ShopWebhookResult, openapi_extra=http.raw_body_doc(
                 {"application/json": {"id": 820982911946154508, "email": "ana.li@example.com",
                                       "created_at": "2026-12-04T11:00:00+08:00", "total_price": "358.00",
                                       "customer": {"id": 115310627314723954}}},
                 "the shop's payload for X-Shopify-Topic (orders/create, orders/updated, refunds/create, "
                 "customers/create, customers/update), signed in X-Shopify-Hmac-Sha256",
                 {"type": "object", "required": ["id"], "properties": {"id": {
                     "type": "integer", "description": "Shopify's id of the order, refund or customer"}}}))
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
