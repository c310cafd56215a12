"""Customers' local time, vectorised: wall-clock moments in each customer's zone to UTC and back (zoneinfo rules).

A frame of a million customers holds a few dozen distinct zones and dates, so each distinct (zone, date, minute)
is resolved once with zoneinfo and joined back; polars converts instants per zone.
"""

from __future__ import annotations

import polars as pl

from kit.timezones import local_to_utc

UTC_TYPE = pl.Datetime("us", "UTC")


def wall_times_to_utc(frame: pl.DataFrame, *, zone_column: str, date_column: str, minute_column: str) -> pl.Series:
    """UTC instants of (zone, local date, minute of day) rows, resolved once per distinct combination."""
    keys = frame.select(zone_column, date_column, minute_column).unique()
    resolved = keys.with_columns(pl.Series(
        "__utc", [local_to_utc(d, int(m), z) for z, d, m in keys.iter_rows()], dtype=UTC_TYPE))
    return frame.select(zone_column, date_column, minute_column).join(
        resolved, on=[zone_column, date_column, minute_column], how="left", maintain_order="left")["__utc"]


def local_parts(instants: pl.Series, zones: pl.Series) -> pl.DataFrame:
    """Local date and minute of day of each UTC instant in its row's zone."""
    frame = pl.DataFrame({"__at": instants.cast(UTC_TYPE), "__zone": zones, "__row": range(len(instants))})
    parts = []
    for (zone_name,), group in frame.group_by("__zone"):
        local = group["__at"].dt.convert_time_zone(zone_name)
        parts.append(group.select("__row").with_columns(
            local_date=local.dt.date(), minute_of_day=(local.dt.hour().cast(pl.Int32) * 60 + local.dt.minute())))
    if not parts:
        return pl.DataFrame(schema={"local_date": pl.Date, "minute_of_day": pl.Int32})
    return pl.concat(parts).sort("__row").drop("__row")
