"""Shopify webhooks: signature check and the mapping of their payloads onto the ingestion write path.

Topics: `orders/create`, `orders/updated`, `refunds/create`, `customers/create`, `customers/update`. Shopify signs
the raw body with the app's secret (HMAC-SHA256, base64, in `X-Shopify-Hmac-Sha256`) and may deliver a webhook
more than once (`X-Shopify-Webhook-Id` names the delivery). Shopify's own ids become the shop's external ids.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from decimal import Decimal
from typing import Any

from sqlmodel import Session

from crm import writes
from crm.models import ShopWebhookReceipt
from kit.context import Context
from kit.errors import Forbidden, InvalidInput

TOPICS = ("orders/create", "orders/updated", "refunds/create", "customers/create", "customers/update")
# financial_status -> the order's status (a cancelled_at always means cancelled).
FINANCIAL_STATUS = {"pending": "placed", "authorized": "placed", "partially_paid": "placed", "paid": "paid",
                    "partially_refunded": "partially_refunded", "refunded": "refunded", "voided": "cancelled"}
CONSENT_STATE = {"subscribed": "opted_in", "unsubscribed": "opted_out"}  # not_subscribed: no statement


def verify(secret: str, body: bytes, signature: str | None) -> None:
    """Refuse (403) a body whose HMAC-SHA256 under the shop's secret is not the header's, compared in constant time."""
    if not secret:
        raise Forbidden("Shopify webhooks are not configured (CRM_SHOPIFY_WEBHOOK_SECRET)")
    expected = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    if not signature or not hmac.compare_digest(expected, signature.strip()):
        raise Forbidden("the Shopify signature (X-Shopify-Hmac-Sha256) does not match the body")


def customer_item(customer: dict[str, Any]) -> dict[str, Any]:
    """A Shopify customer as an ingestion customer item."""
    item: dict[str, Any] = {"external_id": str(customer.get("id") or "")}
    for field in ("email", "phone"):
        if customer.get(field):
            item[field] = customer[field]
    name = " ".join(str(customer[p]) for p in ("first_name", "last_name") if customer.get(p))
    if name:
        item["name"] = name
    if customer.get("created_at"):
        item["signed_up_at"] = customer["created_at"]
    consent, moments = {}, []
    for channel, key in (("email", "email_marketing_consent"), ("sms", "sms_marketing_consent")):
        stated = customer.get(key) or {}
        status = CONSENT_STATE.get(str(stated.get("state") or ""))
        if status:
            consent[channel] = status
            moments.append(stated.get("consent_updated_at"))
    if consent:
        item["consent"] = consent
        item["consent_source"] = "shopify"
        known = [m for m in moments if m]
        if known and len(known) == len(moments):
            item["consent_at"] = max(known)
    return item


def order_item(order: dict[str, Any]) -> dict[str, Any]:
    """A Shopify order as an ingestion order item (its lines as items; refunds are recorded separately)."""
    status = "cancelled" if order.get("cancelled_at") else FINANCIAL_STATUS.get(
        str(order.get("financial_status") or "paid"), "paid")
    customer = order.get("customer") or {}
    codes = [c.get("code") for c in order.get("discount_codes") or [] if isinstance(c, dict) and c.get("code")]
    lines = []
    for number, line in enumerate(order.get("line_items") or [], start=1):
        quantity = int(line.get("quantity") or 1)
        price = Decimal(str(line.get("price") or 0))
        discount = Decimal(str(line.get("total_discount") or 0))
        lines.append({"line_no": number, "sku": str(line.get("sku") or line.get("variant_id") or line.get("id")),
                      "qty": quantity, "unit_price": float(max(price - discount / max(quantity, 1), Decimal(0))),
                      "list_price": float(price)})
    item = {"external_id": str(order.get("id") or ""), "customer_id": str(customer.get("id") or ""),
            "ordered_at": order.get("processed_at") or order.get("created_at"),
            "amount_paid": order.get("total_price"), "discount": order.get("total_discounts") or 0,
            "status": status, "items": lines}
    if codes:
        item["coupon_code"] = codes[0]
    return item


def refund_body(refund: dict[str, Any]) -> dict[str, Any]:
    """A Shopify refund as an ingestion refund: the amount its successful refund transactions returned."""
    transactions = [t for t in refund.get("transactions") or []
                    if t.get("kind") == "refund" and t.get("status", "success") == "success"]
    amount = sum((Decimal(str(t.get("amount") or 0)) for t in transactions), Decimal(0))
    if not transactions:  # a refund of lines only: the lines' subtotals
        amount = sum((Decimal(str(line.get("subtotal") or 0)) for line in refund.get("refund_line_items") or []),
                     Decimal(0))
    return {"refund_id": f"shopify-{refund.get('id')}", "amount": str(amount), "refunded_at": refund.get("created_at"),
            "reason": refund.get("note"),
            "items": [{"line_item_id": line.get("line_item_id"), "qty": line.get("quantity")}
                      for line in refund.get("refund_line_items") or []]}


def receive(session: Session, ctx: Context, topic: str, webhook_id: str | None, payload: Any) -> dict[str, Any]:
    """Process one verified delivery in the caller's transaction; a delivery already processed changes nothing."""
    if topic not in TOPICS:
        raise InvalidInput(f"unsupported Shopify topic '{topic[:64]}'",
                           errors=[{"field": "X-Shopify-Topic", "reason": f"one of {', '.join(TOPICS)}"}])
    if not webhook_id or len(webhook_id) > 128:
        raise InvalidInput("X-Shopify-Webhook-Id: missing or longer than 128 characters",
                           errors=[{"field": "X-Shopify-Webhook-Id", "reason": "missing or too long"}])
    if not isinstance(payload, dict):
        raise InvalidInput("the body is not a JSON object", errors=[{"field": "body", "reason": "not an object"}])
    if session.get(ShopWebhookReceipt, ("shopify", webhook_id)) is not None:
        return {"topic": topic, "duplicate": True}
    session.add(ShopWebhookReceipt(source="shopify", webhook_id=webhook_id, topic=topic,
                                   received_at=ctx.clock.now()))
    session.flush()
    answer: dict[str, Any] = {"topic": topic, "duplicate": False}
    if topic.startswith("customers/"):
        answer["customers"] = writes.write_items(session, ctx, "customers", customer_item(payload),
                                                 cause="webhook").as_dict()
    elif topic.startswith("orders/"):
        if isinstance(payload.get("customer"), dict):  # the buyer first, so the order has someone to belong to
            answer["customers"] = writes.write_items(session, ctx, "customers", customer_item(payload["customer"]),
                                                     cause="webhook").as_dict()
        answer["orders"] = writes.write_items(session, ctx, "orders", order_item(payload), cause="webhook").as_dict()
        if answer["orders"]["accepted"]:
            answer["refunds"] = [_refund(session, ctx, str(payload["id"]), refund)
                                 for refund in payload.get("refunds") or [] if isinstance(refund, dict)]
    else:
        answer["refund"] = _refund(session, ctx, str(payload.get("order_id")), payload)
    return answer


def _refund(session: Session, ctx: Context, order_id: str, refund: dict[str, Any]) -> dict[str, Any]:
    body = refund_body(refund)
    if Decimal(body["amount"]) <= 0:  # lines restocked, no money returned: spend is unchanged
        return {"refund_id": body["refund_id"], "amount": 0.0, "recorded": False}
    return writes.refund_order(session, ctx, order_id, body, actor="shopify", cause="webhook")
