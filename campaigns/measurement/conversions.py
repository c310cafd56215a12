"""Conversions: orders attributed to the messages they followed, written once per order (the pipeline's last step)."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import polars as pl
from sqlalchemy import text
from sqlmodel import Session

from campaigns.measurement.attribution import attribute
from crm.service import first_orders_by_coupon, orders_frame
from kit.bulkwrite import insert_frame
from kit.columnar import read_frame
from kit.context import Context

log = logging.getLogger(__name__)
REDEMPTION_LOOKBACK = timedelta(days=90)  # orders imported late still find coupons that expired this long ago
TOUCH_STATUSES = ("sent", "delivered")
CONVERSION_TYPES = {"order_id": "int", "message_id": "int", "campaign_id": "int", "customer_id": "int",
                    "channel": "text", "touch": "text", "ordered_at": "timestamp", "revenue": "float",
                    "discount": "float", "attributed_at": "timestamp"}
TOUCH_SCHEMA = {"message_id": pl.Int64, "campaign_id": pl.Int64, "customer_id": pl.Int64, "channel": pl.String,
                "sent_at": pl.Datetime("us", "UTC")}


def attribute_conversions(session: Session, ctx: Context) -> dict[str, Any]:
    """Attribute recent orders not yet attributed (late imports included: orders of the last two windows)."""
    now = ctx.clock.now()
    window = timedelta(days=ctx.settings.attribution_window_days)
    touch = ctx.settings.attribution_touch
    orders = orders_frame(session, now - 2 * window, now, costs=False)
    statuses = ", ".join(f"'{s}'" for s in TOUCH_STATUSES)
    touches = read_frame(session, (
        f"SELECT m.id, m.campaign_id, m.customer_id, m.channel, m.sent_at FROM message m "
        f"WHERE m.status IN ({statuses}) AND m.sent_at IS NOT NULL AND m.sent_at >= :start AND m.sent_at < :end"),
        {"start": now - 3 * window, "end": now}, TOUCH_SCHEMA, same_connection=True)
    done = read_frame(session, "SELECT c.order_id FROM conversion c WHERE c.ordered_at >= :start",
                      {"start": now - 2 * window}, {"order_id": pl.Int64}, same_connection=True)
    fresh = attribute(orders.join(done, on="order_id", how="anti"), touches, window, touch)
    frame = fresh.with_columns(touch=pl.lit(touch), attributed_at=pl.lit(now, dtype=pl.Datetime("us", "UTC")))
    insert_frame(session, "conversion", frame, CONVERSION_TYPES)
    per_campaign = dict(frame.group_by("campaign_id").len().sort("campaign_id").iter_rows())
    redeemed, over_terms = record_redemptions(session, ctx)
    return {"orders_checked": orders.height, "conversions": frame.height, "touch": touch,
            "redemptions": redeemed, "redemptions_over_terms": over_terms,
            "window_days": window.days, "revenue": round(float(frame["revenue"].sum() or 0.0), 2),
            "per_campaign": {str(k): v for k, v in per_campaign.items()}}


def record_redemptions(session: Session, ctx: Context) -> tuple[int, int]:
    """Record on each coupon's message the order that used it and the discount it really granted; returns how many
    were recorded and how many of them the shop's checkout granted beyond the coupon's terms (its maximum
    discount, or below its minimum basket) — a checkout that does not apply the terms is the shop's to fix."""
    now = ctx.clock.now()
    connection = session.connection()
    # A coupon can only be redeemed while it is valid.
    open_coupons = connection.execute(text(
        "SELECT m.id, m.coupon_code FROM message m WHERE m.coupon_code IS NOT NULL "
        "AND m.redeemed_order_id IS NULL AND m.valid_until >= :since"), {"since": now - REDEMPTION_LOOKBACK}).all()
    if not open_coupons:
        return 0, 0
    # The first order (by time, then id) that carries the code redeems it; one order per coupon.
    firsts = first_orders_by_coupon(session, sorted({code for _, code in open_coupons}))
    orders = {message_id: firsts[code] for message_id, code in open_coupons if code in firsts}
    if not orders:
        return 0, 0
    connection.execute(text("UPDATE message SET redeemed_order_id = :order_id, redeemed_discount = :discount, "
                            "redeemed_at = :now WHERE id = :message_id"),
                       [{"message_id": message_id, "order_id": order["order_id"], "discount": order["discount"],
                         "now": now} for message_id, order in orders.items()])
    offers = connection.execute(text("SELECT id, offer FROM message WHERE redeemed_at = :now"), {"now": now}).all()
    redeemed = [(message_id, offer, orders[message_id]) for message_id, offer in offers if message_id in orders]
    rows = [(message_id, offer, order["discount"], order["basket"]) for message_id, offer, order in redeemed]
    recorded = len(rows)
    over = 0
    for message_id, offer, granted, basket in rows:
        terms = json.loads(offer) if isinstance(offer, str) else (offer or {})
        cap = terms.get("max_discount") or terms.get("amount_off")  # free shipping is not in the order's discount
        if (cap is not None and float(granted or 0) > float(cap) + 0.005) or \
                float(basket or 0) < float(terms.get("min_spend") or 0) - 0.005:
            over += 1
            log.warning("coupon of message %s redeemed beyond its terms", message_id)
    return recorded, over
