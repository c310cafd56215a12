"""Quiet hours in each customer's own zone: a marketing message due inside them is deferred to their end, never dropped."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from campaigns.planning.localtime import local_parts, wall_times_to_utc
from kit.channels import quiet_hours_channels


@dataclass(frozen=True)
class QuietHours:
    """A nightly window [start, end) in local minutes of the day; it may wrap past midnight (21:00–09:00)."""

    start_minute: int = 21 * 60
    end_minute: int = 9 * 60
    channels: tuple[str, ...] = field(default_factory=quiet_hours_channels)

    def contains(self, minute: pl.Expr) -> pl.Expr:
        """Whether a local minute of the day falls inside the window."""
        if self.start_minute == self.end_minute:
            return pl.lit(False)
        if self.start_minute < self.end_minute:
            return (minute >= self.start_minute) & (minute < self.end_minute)
        return (minute >= self.start_minute) | (minute < self.end_minute)


def defer_out_of_quiet_hours(frame: pl.DataFrame, quiet: QuietHours, *, transactional: bool = False) -> pl.DataFrame:
    """Move send_at of rows (send_at UTC, time_zone, channel) out of quiet hours; adds `deferred_quiet` (bool).

    A message due at night goes out at the window's end on the customer's next allowed local morning, computed
    with the zone's own rules, so DST changes move it correctly. Transactional messages are never held.
    """
    if frame.is_empty() or transactional:
        return frame.with_columns(deferred_quiet=pl.lit(False))
    local = local_parts(frame["send_at"], frame["time_zone"])
    work = frame.with_columns(local["local_date"], local["minute_of_day"])
    inside = quiet.contains(pl.col("minute_of_day")) & pl.col("channel").is_in(list(quiet.channels))
    # Past the window's start on a wrapping window, the end comes on the next local day.
    next_day = (pl.col("minute_of_day") >= quiet.start_minute) & pl.lit(quiet.start_minute > quiet.end_minute)
    work = work.with_columns(
        deferred_quiet=inside,
        end_date=pl.when(next_day).then(pl.col("local_date") + pl.duration(days=1)).otherwise(pl.col("local_date")),
        end_minute=pl.lit(quiet.end_minute, dtype=pl.Int32))
    if not work["deferred_quiet"].any():
        return work.drop("local_date", "minute_of_day", "end_date", "end_minute")
    ends = wall_times_to_utc(work, zone_column="time_zone", date_column="end_date", minute_column="end_minute")
    return work.with_columns(send_at=pl.when(pl.col("deferred_quiet")).then(ends).otherwise(pl.col("send_at"))
                             ).drop("local_date", "minute_of_day", "end_date", "end_minute")
