"""Shopify webhooks: realistic payloads signed the way Shopify signs them, mapped onto the one write path."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from sqlmodel import select

from crm.models import Consent, Customer, CustomerState, Order, OrderItem, OrderRefund

SECRET = "shpss_test_secret"
CUSTOMER = {"id": 706405506930370084, "email": "bob@example.com", "phone": "+16135551212", "first_name": "Bob",
            "last_name": "Norman", "created_at": "2026-09-01T12:00:00-04:00", "updated_at": "2026-09-01T12:00:00-04:00",
            "state": "enabled", "tags": "", "currency": "USD",
            "email_marketing_consent": {"state": "subscribed", "opt_in_level": "single_opt_in",
                                        "consent_updated_at": "2026-09-01T12:00:00-04:00"},
            "sms_marketing_consent": {"state": "not_subscribed", "opt_in_level": None,
                                      "consent_updated_at": None, "consent_collected_from": "OTHER"}}
ORDER = {"id": 820982911946154508, "email": "bob@example.com", "created_at": "2026-10-20T09:15:00-04:00",
         "processed_at": "2026-10-20T09:15:00-04:00", "updated_at": "2026-10-20T09:16:00-04:00",
         "name": "#9999", "number": 234, "currency": "USD", "financial_status": "paid", "cancelled_at": None,
         "total_price": "199.00", "subtotal_price": "189.00", "total_discounts": "10.00",
         "total_line_items_price": "199.00", "total_tax": "0.00", "taxes_included": False,
         "discount_codes": [{"code": "TENOFF", "amount": "10.00", "type": "fixed_amount"}],
         "line_items": [{"id": 866550311766439020, "variant_id": 808950810, "product_id": 632910392,
                         "title": "IPod Nano - 8GB", "quantity": 1, "sku": "IPOD2008PINK", "price": "199.00",
                         "total_discount": "10.00", "gift_card": False, "taxable": True}],
         "customer": CUSTOMER, "refunds": []}
REFUND = {"id": 929361463, "order_id": 820982911946154508, "created_at": "2026-10-25T10:00:00-04:00",
          "note": "wrong size", "restock": True,
          "refund_line_items": [{"id": 1058498307, "line_item_id": 866550311766439020, "quantity": 1,
                                 "subtotal": 50.0, "total_tax": 0.0}],
          "transactions": [{"id": 389404469, "order_id": 820982911946154508, "kind": "refund", "status": "success",
                            "amount": "50.00", "currency": "USD", "gateway": "bogus"}]}


@pytest.fixture
def shopify_client(client, ctx):
    ctx.settings.shopify_webhook_secret = SECRET
    return client


def _deliver(client, topic: str, payload: dict, webhook_id: str, *, secret: str = SECRET):
    body = json.dumps(payload).encode()
    signature = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    return client.post("/v1/webhooks/shopify", content=body, headers={
        "Content-Type": "application/json", "X-Shopify-Topic": topic, "X-Shopify-Hmac-Sha256": signature,
        "X-Shopify-Webhook-Id": webhook_id, "X-Shopify-Shop-Domain": "example.myshopify.com",
        "X-Shopify-API-Version": "2026-10"})


def test_order_create_then_refund_counts_net_and_a_redelivery_changes_nothing(shopify_client, session, ctx):
    created = _deliver(shopify_client, "orders/create", ORDER, "wh-1")
    assert created.status_code == 200, created.text
    assert created.json()["orders"]["accepted"] == 1
    order = session.exec(select(Order)).one()
    assert order.external_id == "820982911946154508" and order.coupon_code == "TENOFF"
    assert float(order.amount_paid) == 199.0 and order.status == "paid"
    assert order.ordered_at.isoformat().startswith("2026-10-20T13:15")  # stored in UTC
    line = session.exec(select(OrderItem)).one()
    assert line.sku == "IPOD2008PINK" and float(line.unit_price) == 189.0 and float(line.list_price) == 199.0
    customer = session.exec(select(Customer)).one()
    assert customer.external_id == "706405506930370084" and customer.name_hash == ctx.cipher.blind_index("bob norman")
    assert [(c.channel, c.status) for c in session.exec(select(Consent))] == [("email", "opted_in")]
    again = _deliver(shopify_client, "orders/create", ORDER, "wh-1")
    assert again.status_code == 200 and again.json()["duplicate"] is True
    refunded = _deliver(shopify_client, "refunds/create", REFUND, "wh-2")
    assert refunded.status_code == 200, refunded.text
    assert refunded.json()["refund"]["status"] == "partially_refunded"
    _deliver(shopify_client, "refunds/create", REFUND, "wh-3")  # a new delivery id, the same refund: counted once
    assert len(session.exec(select(OrderRefund)).all()) == 1
    state = session.get(CustomerState, customer.id)
    session.refresh(state)
    assert float(state.lifetime_spend) == 149.0 and state.lifetime_orders == 1


def test_cancelled_orders_and_customer_updates(shopify_client, session):
    _deliver(shopify_client, "orders/create", ORDER, "wh-1")
    cancelled = ORDER | {"cancelled_at": "2026-10-21T08:00:00-04:00", "financial_status": "voided"}
    assert _deliver(shopify_client, "orders/updated", cancelled, "wh-2").json()["orders"]["updated"] == 1
    assert session.exec(select(Order)).one().status == "cancelled"
    state = session.exec(select(CustomerState)).one()
    session.refresh(state)
    assert state.lifetime_orders == 0
    update = CUSTOMER | {"email_marketing_consent": {"state": "unsubscribed",
                                                     "consent_updated_at": "2026-10-22T08:00:00-04:00"}}
    assert _deliver(shopify_client, "customers/update", update, "wh-3").status_code == 200
    assert [(c.channel, c.status) for c in session.exec(select(Consent))] == [("email", "opted_out")]


def test_a_bad_signature_or_topic_is_refused_and_nothing_is_written(shopify_client, session):
    assert _deliver(shopify_client, "orders/create", ORDER, "wh-1", secret="wrong").status_code == 403
    unsigned = shopify_client.post("/v1/webhooks/shopify", json=ORDER, headers={"X-Shopify-Topic": "orders/create",
                                                                                "X-Shopify-Webhook-Id": "wh-9"})
    assert unsigned.status_code == 403
    odd = _deliver(shopify_client, "carts/update", {"id": 1}, "wh-4")
    assert odd.status_code == 422 and odd.json()["errors"][0]["field"] == "X-Shopify-Topic"
    assert session.exec(select(Order)).all() == []
