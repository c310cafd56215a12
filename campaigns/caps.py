"""Frequency caps per customer across all campaigns, from the message ledger (planned messages count too).

A cap "at most N per W days" must hold for every window of W days. A new message at t is allowed only when fewer
than N ledger messages lie within W of t on either side; then no window containing t can hold more than N. It is
the safe reading: planned future messages are respected as well as past ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import polars as pl

UTC_TYPE = pl.Datetime("us", "UTC")
LEDGER_SCHEMA = {"customer_id": pl.Int64, "channel": pl.String, "send_at": UTC_TYPE, "priority": pl.Int64}


@dataclass(frozen=True)
class Cap:
    """At most `limit` marketing messages per `window_days`, on one channel or (channel None) on all together."""

    limit: int
    window_days: int
    channel: str | None = None

    @property
    def label(self) -> str:
        """How the cap reads in reasons, e.g. 'sms 2/30d'."""
        return f"{self.channel or 'all channels'} {self.limit}/{self.window_days}d"


def _conflicts(candidates: pl.DataFrame, ledger: pl.DataFrame, cap: Cap) -> pl.DataFrame:
    """Per candidate row: ledger messages within the cap's window, their count and the latest and top priority."""
    window = timedelta(days=cap.window_days)
    keys = ["customer_id"] if cap.channel is None else ["customer_id", "channel"]
    mine = candidates.with_row_index("__row")
    if cap.channel is not None:
        mine = mine.filter(pl.col("channel") == cap.channel)
        ledger = ledger.filter(pl.col("channel") == cap.channel)
    pairs = mine.select("__row", *keys, "send_at").join(
        ledger.select(*keys, pl.col("send_at").alias("other_at"), pl.col("priority").alias("other_priority")),
        on=keys, how="inner")
    near = pairs.filter((pl.col("other_at") - pl.col("send_at")).abs() < window)
    return near.group_by("__row").agg(count=pl.len(), latest=pl.col("other_at").max(),
                                      top_priority=pl.col("other_priority").max())


def check_caps(candidates: pl.DataFrame, ledger: pl.DataFrame, caps: list[Cap], priority: int) -> pl.DataFrame:
    """Mark candidate rows (customer_id, channel, send_at) that a cap forbids.

    Adds `capped` (bool), `cap_reason` ('capped' or 'lower_priority' when a higher-priority campaign holds the
    slot), `cap_label` and `free_at` (the earliest moment the conflicting messages allow, for deferral).
    """
    out = candidates.with_columns(capped=pl.lit(False), cap_reason=pl.lit(None, dtype=pl.String),
                                  cap_label=pl.lit(None, dtype=pl.String), free_at=pl.lit(None, dtype=UTC_TYPE))
    for cap in caps:
        hits = _conflicts(candidates, ledger, cap).filter(pl.col("count") >= cap.limit)
        if hits.is_empty():
            continue
        flagged = out.with_row_index("__row").join(hits, on="__row", how="left")
        blocked = pl.col("count").is_not_null()
        out = flagged.with_columns(
            capped=pl.col("capped") | blocked,
            cap_reason=pl.when(blocked & pl.col("cap_reason").is_null()).then(
                pl.when(pl.col("top_priority") > priority).then(pl.lit("lower_priority")).otherwise(pl.lit("capped"))
            ).otherwise(pl.col("cap_reason")),
            cap_label=pl.when(blocked & pl.col("cap_label").is_null()).then(pl.lit(cap.label))
            .otherwise(pl.col("cap_label")),
            free_at=pl.max_horizontal(pl.col("free_at"), pl.col("latest") + timedelta(days=cap.window_days)),
        ).drop("__row", "count", "latest", "top_priority")
    return out


def exceeded(ledger: pl.DataFrame, cap: Cap) -> pl.DataFrame:
    """Ledger messages that end a window holding more than the cap allows (empty when the cap holds)."""
    keys = ["customer_id"] if cap.channel is None else ["customer_id", "channel"]
    rows = ledger if cap.channel is None else ledger.filter(pl.col("channel") == cap.channel)
    rows = rows.select(*keys, "send_at").with_row_index("__id")
    pairs = rows.join(rows.select(*keys, pl.col("send_at").alias("other_at"), pl.col("__id").alias("__other")),
                      on=keys)
    window = timedelta(days=cap.window_days)
    inside = pairs.filter((pl.col("other_at") <= pl.col("send_at"))
                          & (pl.col("send_at") - pl.col("other_at") < window))
    return inside.group_by("__id", *keys).agg(in_window=pl.len()).filter(pl.col("in_window") > cap.limit)
