"""Behaviour tags: an add rule, a remove rule and a freshness period each, evaluated vectorised."""

from __future__ import annotations

from datetime import datetime

import polars as pl
from pydantic import BaseModel, Field, field_validator

from segmentation.rules import MAX_CONDITIONS, MAX_RULES, Condition, require_unique_names

DAY_US = 86_400_000_000


class TagRule(BaseModel):
    """One tag: set when `add` holds, dropped when `remove` holds.

    Without a remove rule the tag lapses once `add` stops holding. A tag younger than `freshness_days`
    is kept even when `add` no longer holds (only its remove rule drops it); after that it must be
    earned again by `add`, so stale evidence never keeps a tag alive.
    """

    name: str = Field(min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9_]*$")
    add: dict[str, Condition] = Field(min_length=1, max_length=MAX_CONDITIONS)
    remove: dict[str, Condition] | None = Field(default=None, max_length=MAX_CONDITIONS)
    freshness_days: int = Field(default=90, ge=0, le=3650)
    description: str | None = Field(default=None, max_length=200)

    model_config = {"extra": "forbid", "allow_inf_nan": False}


class TagSet(BaseModel):
    """Every tag the shop uses."""

    tags: list[TagRule] = Field(min_length=1, max_length=MAX_RULES)

    model_config = {"extra": "forbid", "allow_inf_nan": False}

    @field_validator("tags")
    @classmethod
    def _unique(cls, tags: list[TagRule]) -> list[TagRule]:
        return require_unique_names(tags, "tag")


def _all(conditions: dict[str, Condition]) -> pl.Expr:
    return pl.all_horizontal([c.expression(m) for m, c in conditions.items()])


def _why(metrics: list[str]) -> pl.Expr:
    """The metric values behind a decision, as a JSON object."""
    return pl.struct([pl.col(m) for m in metrics]).struct.json_encode().alias("why")


def evaluate_tags(metrics: pl.DataFrame, current: pl.DataFrame, as_of: datetime,
                  tag_set: TagSet) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Return (added, removed) frames of customer_id, tag, why.

    `current` holds the tags set so far: customer_id, tag, since. Remove wins over add, so a tag is
    never set on a run whose remove rule holds.
    """
    added, removed = [], []
    for rule in tag_set.tags:
        mine = current.filter(pl.col("tag") == rule.name).select("customer_id", "since")
        frame = metrics.join(mine, on="customer_id", how="left")
        add = _all(rule.add)
        remove = _all(rule.remove) if rule.remove else pl.lit(False)
        age_days = (pl.lit(as_of).cast(pl.Datetime("us", "UTC")) - pl.col("since")).dt.total_microseconds() // DAY_US
        stale = ~add & (age_days >= rule.freshness_days)
        tagged = pl.col("since").is_not_null()
        add_metrics = list(rule.add)
        remove_metrics = list(rule.remove or rule.add)
        flags = frame.select("customer_id", (~tagged & add & ~remove).alias("_add"),
                             (tagged & (remove | stale)).alias("_remove"),
                             _why(add_metrics).alias("_why_add"), _why(remove_metrics).alias("_why_remove"))
        added.append(flags.filter("_add").select("customer_id", pl.lit(rule.name).alias("tag"),
                                                 pl.col("_why_add").alias("why")))
        removed.append(flags.filter("_remove").select("customer_id", pl.lit(rule.name).alias("tag"),
                                                      pl.col("_why_remove").alias("why")))
    schema = {"customer_id": pl.Int64, "tag": pl.String, "why": pl.String}
    return (pl.concat([f.cast(schema) for f in added]) if added else pl.DataFrame(schema=schema),
            pl.concat([f.cast(schema) for f in removed]) if removed else pl.DataFrame(schema=schema))
