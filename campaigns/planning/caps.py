"""Frequency caps per customer across all campaigns, from the message ledger (planned messages count too).

A cap "at most N per W days" must hold for every window of W days. A new message at t is allowed only when fewer
than N ledger messages lie within W of t on either side; then no window containing t can hold more than N. It is
the safe reading: planned future messages are respected as well as past ones.

Preemption: a ledger message that is still only planned (never attempted) holds its slot against equal or higher
priorities only. A higher-priority candidate that finds the window full may take the slot of the lowest-priority
such messages (the newest first); the caller marks them `preempted`. Sent, sending or retrying messages are firm.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import polars as pl

UTC_TYPE = pl.Datetime("us", "UTC")
# The one definition of the messages that hold a cap slot: out, on their way, or planned to go. A planned message
# never attempted holds its slot provisionally (`preemptible`): a higher priority may take it when planning, and at
# send time it is not counted yet (it is checked itself when it goes).
COUNTED_STATUSES = ("planned", "sending", "sent", "delivered", "unknown")
LEDGER_SCHEMA = {"customer_id": pl.Int64, "channel": pl.String, "send_at": UTC_TYPE, "priority": pl.Int64,
                 "message_id": pl.Int64, "preemptible": pl.Boolean}


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


def _conflicts(candidates: pl.DataFrame, ledger: pl.DataFrame, cap: Cap, priority: int) -> pl.DataFrame:
    """Per candidate row: ledger messages within the cap's window, how many of them are firm (cannot be preempted
    by this priority), the latest and top priority, and the preemptible ones' ids, cheapest to preempt first."""
    window = timedelta(days=cap.window_days)
    keys = ["customer_id"] if cap.channel is None else ["customer_id", "channel"]
    mine = candidates.with_row_index("__row")
    if cap.channel is not None:
        mine = mine.filter(pl.col("channel") == cap.channel)
        ledger = ledger.filter(pl.col("channel") == cap.channel)
    pairs = mine.select("__row", *keys, "send_at").join(
        ledger.select(*keys, pl.col("send_at").alias("other_at"), pl.col("priority").alias("other_priority"),
                      pl.col("message_id").alias("other_id"),
                      (pl.col("preemptible").fill_null(False) & (pl.col("priority") < priority)
                       & pl.col("message_id").is_not_null()).alias("soft")),
        on=keys, how="inner")
    near = pairs.filter((pl.col("other_at") - pl.col("send_at")).abs() < window)
    return near.group_by("__row").agg(
        count=pl.len(), firm=(~pl.col("soft")).sum(), latest=pl.col("other_at").max(),
        top_priority=pl.col("other_priority").max(),
        soft_ids=pl.col("other_id").filter(pl.col("soft")).sort_by(
            [pl.col("other_priority").filter(pl.col("soft")), pl.col("other_at").filter(pl.col("soft"))],
            descending=[False, True]))


def check_caps(candidates: pl.DataFrame, ledger: pl.DataFrame, caps: list[Cap], priority: int) -> pl.DataFrame:
    """Mark candidate rows (customer_id, channel, send_at) that a cap forbids.

    Adds `capped` (bool), `cap_reason` ('capped' or 'lower_priority' when a higher-priority campaign holds the
    slot), `cap_label`, `free_at` (the earliest moment the conflicting messages allow, for deferral) and
    `preempts` (ids of lower-priority planned messages whose slots an uncapped row takes; empty when none).
    """
    out = candidates.with_columns(capped=pl.lit(False), cap_reason=pl.lit(None, dtype=pl.String),
                                  cap_label=pl.lit(None, dtype=pl.String), free_at=pl.lit(None, dtype=UTC_TYPE),
                                  preempts=pl.lit([], dtype=pl.List(pl.Int64)))
    for cap in caps:
        hits = _conflicts(candidates, ledger, cap, priority).filter(pl.col("count") >= cap.limit)
        if hits.is_empty():
            continue
        flagged = out.with_row_index("__row").join(hits, on="__row", how="left")
        full = pl.col("count").is_not_null()
        blocked = full & (pl.col("firm") >= cap.limit)
        taken = pl.col("soft_ids").list.head((pl.col("count") - cap.limit + 1).clip(lower_bound=0))
        out = flagged.with_columns(
            capped=pl.col("capped") | blocked,
            cap_reason=pl.when(blocked & pl.col("cap_reason").is_null()).then(
                pl.when(pl.col("top_priority") > priority).then(pl.lit("lower_priority")).otherwise(pl.lit("capped"))
            ).otherwise(pl.col("cap_reason")),
            cap_label=pl.when(blocked & pl.col("cap_label").is_null()).then(pl.lit(cap.label))
            .otherwise(pl.col("cap_label")),
            free_at=pl.when(blocked).then(
                pl.max_horizontal(pl.col("free_at"), pl.col("latest") + timedelta(days=cap.window_days)))
            .otherwise(pl.col("free_at")),
            preempts=pl.when(full & ~blocked).then(pl.concat_list("preempts", taken).list.unique().list.sort())
            .otherwise(pl.col("preempts")),
        ).drop("__row", "count", "firm", "latest", "top_priority", "soft_ids")
    return out.with_columns(preempts=pl.when(pl.col("capped")).then(pl.lit([], dtype=pl.List(pl.Int64)))
                            .otherwise(pl.col("preempts")))


# At send time the message going out outranks every provisional slot: a planned message never attempted is checked
# itself when it goes, so it does not hold its slot against one being sent now.
SEND_TIME_PRIORITY = 2**62


def check_at_send(candidates: pl.DataFrame, ledger: pl.DataFrame, caps: list[Cap]) -> pl.DataFrame:
    """The send-time verdict for a batch of marketing messages (customer_id, channel, send_at = now, priority, id),
    by the same rule as planning: adds `capped` and `cap_label`.

    The caller passes the ledger of the trailing window only (a narrower window, not another rule). Within the
    batch the highest priority goes first: round k checks every customer's k-th message against the ledger plus
    what the earlier rounds admitted.
    """
    ordered = candidates.sort(["priority", "id"], descending=[True, False]).with_columns(
        __round=pl.int_range(pl.len()).over("customer_id"))
    ledger = ledger.select(list(LEDGER_SCHEMA)).cast(LEDGER_SCHEMA)
    verdicts = []
    for round_number in range(int(ordered["__round"].max() or 0) + 1 if ordered.height else 0):
        batch = ordered.filter(pl.col("__round") == round_number).drop("__round")
        checked = check_caps(batch, ledger, caps, SEND_TIME_PRIORITY).select(*batch.columns, "capped", "cap_label")
        admitted = checked.filter(~pl.col("capped"))
        ledger = pl.concat([ledger, admitted.select(
            "customer_id", "channel", "send_at", "priority", message_id="id",
            preemptible=pl.lit(False)).cast(LEDGER_SCHEMA)])
        verdicts.append(checked)
    if not verdicts:
        return candidates.with_columns(capped=pl.lit(False), cap_label=pl.lit(None, dtype=pl.String))
    return pl.concat(verdicts)


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
