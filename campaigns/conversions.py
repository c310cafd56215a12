"""Conversions: orders attributed to the messages they followed, written once per order (the pipeline's last step)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import polars as pl
from sqlmodel import Session

from campaigns.attribution import attribute
from crm.bulkwrite import insert_frame
from crm.columnar import read_frame
from crm.context import Context
from crm.service import orders_frame

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
    return {"orders_checked": orders.height, "conversions": frame.height, "touch": touch,
            "window_days": window.days, "revenue": round(float(frame["revenue"].sum() or 0.0), 2),
            "per_campaign": {str(k): v for k, v in per_campaign.items()}}
