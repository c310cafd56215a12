"""Wall-clock time in a named zone (zoneinfo rules): local moments to UTC and back, DST-correct."""

from __future__ import annotations

from datetime import UTC, date, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """The zoneinfo rules of a zone name (cached)."""
    return ZoneInfo(name)


def local_to_utc(day: date, minute_of_day: int, zone_name: str) -> datetime:
    """The UTC instant of a local wall-clock time.

    A time that does not exist (the spring-forward gap) moves forward by the gap, as clocks do; a time that occurs
    twice (fall back) means its first occurrence.
    """
    hour, minute = divmod(minute_of_day, 60)
    # fold=0 (PEP 495): an ambiguous time takes its first occurrence; a time in a gap takes the offset from
    # before the change, which lands the instant after the gap, shifted forward by the gap's length.
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone(zone_name)).astimezone(UTC)


def local_date_of(instant: datetime, zone_name: str) -> date:
    """The local calendar date at a UTC instant."""
    return instant.astimezone(zone(zone_name)).date()


def utc_midnight(day: date) -> datetime:
    """00:00 UTC of a calendar date."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
