"""When jobs fire, as pure functions of an instant: local wall times across DST changes, occurrences, catch-up.

A job's occurrence is named by its local date ("2026-11-25") or, for jobs that fire every few hours, by its UTC
hour ("2026-11-25T06:00Z"): a rerun of the same occurrence is recognised by that name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from kit.clock import ensure_utc
from kit.timezones import local_date_of, local_to_utc

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CATCH_UP_POLICIES = ("latest", "all")
_HH_MM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class Occurrence:
    """One firing of a schedule: its name, its local date and the UTC instant it is due."""

    key: str
    day: date
    fire_at: datetime


@dataclass(frozen=True)
class JobSchedule:
    """Daily or weekly at a local wall time in a zone, or every N hours (on the UTC hour)."""

    kind: Literal["daily", "weekly", "hourly"]
    time_zone: str = "UTC"
    hour: int = 0
    minute: int = 0
    weekday: int | None = None  # 0 = Monday, weekly only
    every_hours: int = 1

    def __post_init__(self) -> None:
        if self.kind == "weekly" and self.weekday is None:
            raise ValueError("a weekly schedule needs a weekday")
        if self.kind == "hourly" and not 1 <= self.every_hours <= 24:
            raise ValueError("every_hours must be between 1 and 24")

    def describe(self) -> str:
        """Human-readable, e.g. 'daily at 02:00 Asia/Shanghai'."""
        at = f"{self.hour:02d}:{self.minute:02d} {self.time_zone}"
        if self.kind == "daily":
            return f"daily at {at}"
        if self.kind == "weekly":
            return f"weekly on {WEEKDAYS[self.weekday or 0]} at {at}"
        return f"every {self.every_hours} h at minute {self.minute:02d} (UTC)"

    def _on_day(self, day: date) -> Occurrence | None:
        if self.kind == "weekly" and day.weekday() != self.weekday:
            return None
        return self._local(day)

    def _local(self, day: date) -> Occurrence:
        return Occurrence(day.isoformat(), day, local_to_utc(day, self.hour * 60 + self.minute, self.time_zone))

    def occurrences(self, after: datetime, until: datetime) -> list[Occurrence]:
        """Every occurrence with after < fire_at <= until, oldest first."""
        after, until = ensure_utc(after), ensure_utc(until)
        if until <= after:
            return []
        if self.kind == "hourly":
            return self._hourly(after, until)
        first, last = local_date_of(after, self.time_zone), local_date_of(until, self.time_zone)
        found = []
        for offset in range(-1, (last - first).days + 2):
            occurrence = self._on_day(first + timedelta(days=offset))
            if occurrence is not None and after < occurrence.fire_at <= until:
                found.append(occurrence)
        return found

    def _hourly(self, after: datetime, until: datetime) -> list[Occurrence]:
        start = after.replace(minute=self.minute, second=0, microsecond=0)
        start -= timedelta(hours=start.hour % self.every_hours)
        found, moment = [], start
        while moment <= until:
            if moment > after:
                found.append(Occurrence(moment.strftime("%Y-%m-%dT%H:%MZ"), local_date_of(moment, self.time_zone),
                                        moment))
            moment += timedelta(hours=self.every_hours)
        return found

    def latest(self, now: datetime) -> Occurrence | None:
        """The newest occurrence due at or before now (within the last 8 days)."""
        found = self.occurrences(ensure_utc(now) - timedelta(days=8), now)
        return found[-1] if found else None

    def next_after(self, instant: datetime) -> Occurrence:
        """The first occurrence strictly after the instant."""
        found = self.occurrences(instant, ensure_utc(instant) + timedelta(days=8))
        return found[0]

    def current(self, now: datetime) -> Occurrence:
        """The occurrence a manual run at `now` belongs to: today's local date (or the current hourly slot)."""
        if self.kind == "hourly":  # a window of one period holds exactly one slot
            return self._hourly(ensure_utc(now) - timedelta(hours=self.every_hours), ensure_utc(now))[-1]
        return self._local(local_date_of(now, self.time_zone))

    def of_key(self, key: str) -> Occurrence:
        """The occurrence an occurrence name stands for (a weekly job run by hand may name any date)."""
        if self.kind == "hourly":
            moment = datetime.strptime(key, "%Y-%m-%dT%H:%MZ").replace(tzinfo=UTC)
            return Occurrence(key, local_date_of(moment, self.time_zone), moment)
        return self._local(date.fromisoformat(key))


def due_occurrences(schedule: JobSchedule, now: datetime, *, last_done: datetime | None, done_keys: set[str],
                    policy: str = "latest", limit: int = 7) -> list[Occurrence]:
    """Occurrences to run now: after downtime the newest missed one ("latest") or each of them ("all", at most
    `limit`, oldest first); never one that already succeeded, never anything before the last success."""
    if policy not in CATCH_UP_POLICIES:
        raise ValueError(f"catch-up policy must be one of {CATCH_UP_POLICIES}")
    newest = schedule.latest(now)
    if newest is None:
        return []
    if last_done is None:  # a fresh install starts with today's occurrence, not with history
        return [] if newest.key in done_keys else [newest]
    missed = [o for o in schedule.occurrences(last_done, now) if o.key not in done_keys]
    if policy == "latest":
        return missed[-1:]
    return missed[-limit:]


def parse_local_time(value: str, field: str) -> tuple[int, int]:
    """'HH:MM' as (hour, minute); a ValueError naming the setting otherwise."""
    match = _HH_MM.match(value.strip())
    if not match:
        raise ValueError(f"{field} must be HH:MM (24-hour), got {value!r}")
    return int(match.group(1)), int(match.group(2))


def parse_weekday(value: str, field: str) -> int:
    """'mon'..'sun' as 0..6."""
    name = value.strip().lower()[:3]
    if name not in WEEKDAYS:
        raise ValueError(f"{field} must be one of {', '.join(WEEKDAYS)}, got {value!r}")
    return WEEKDAYS.index(name)
