"""The ingestion API (/v1): events, customers, orders and refunds as they happen, retried safely.

For the `ingest` role (server-to-server; it can write customer data and read nothing) and admins. Like every
POST, each honours an `Idempotency-Key` (kit.idempotency): a retry with the same body replays the stored answer.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from crm import shopify, writes
from crm.auth import Principal, require
from crm.models import Role
from kit.context import ContextDep
from kit.db import SessionDep
from kit.errors import InvalidInput

router = APIRouter(tags=["ingestion"])
WRITERS = (Role.ingest, Role.admin)


JsonBody = Annotated[Any, Body()]


def _items_route(kind: str, *, first_wins: bool = False):
    def route(body: JsonBody, session: SessionDep, ctx: ContextDep,
              principal: Principal = Depends(require(*WRITERS))) -> JSONResponse:
        return JSONResponse(writes.write_items(session, ctx, kind, body, cause="api", first_wins=first_wins).as_dict(),
                            status_code=202)

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
def refund(order_id: str, body: JsonBody, session: SessionDep, ctx: ContextDep,
           principal: Principal = Depends(require(*WRITERS))) -> JSONResponse:
    """A refund with its own id, amount, time and refunded lines; spend everywhere counts net of it."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a refund object", errors=[{"field": "body", "reason": "not an object"}])
    return JSONResponse(writes.refund_order(session, ctx, order_id, body, actor=f"key:{principal.name}"),
                        status_code=202)


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
