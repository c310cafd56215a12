"""Attribution, pure and vectorised: which message an order converts for (last or first touch in a window)."""

from __future__ import annotations

from datetime import timedelta

import polars as pl

CONVERSION_SCHEMA = {"order_id": pl.Int64, "message_id": pl.Int64, "campaign_id": pl.Int64,
                     "customer_id": pl.Int64, "channel": pl.String, "ordered_at": pl.Datetime("us", "UTC"),
                     "revenue": pl.Float64, "discount": pl.Float64}


def attribute(orders: pl.DataFrame, touches: pl.DataFrame, window: timedelta, touch: str = "last") -> pl.DataFrame:
    """Each order placed within `window` after one of its customer's messages (sent_at <= ordered_at <
    sent_at + window) goes to the latest such message ("last") or the earliest ("first"); other orders drop out."""
    if orders.is_empty() or touches.is_empty():
        return pl.DataFrame(schema=CONVERSION_SCHEMA)
    pairs = (orders.select("order_id", "customer_id", "ordered_at", pl.col("amount_paid").alias("revenue"),
                           "discount")
             .join(touches.select("message_id", "campaign_id", "customer_id", "channel", "sent_at"), on="customer_id")
             .filter((pl.col("sent_at") <= pl.col("ordered_at")) & (pl.col("ordered_at") < pl.col("sent_at") + window)))
    descending = touch == "last"
    chosen = (pairs.sort(["order_id", "sent_at", "message_id"], descending=[False, descending, descending])
              .unique(subset="order_id", keep="first", maintain_order=True))
    return chosen.select(list(CONVERSION_SCHEMA)).cast(CONVERSION_SCHEMA)
