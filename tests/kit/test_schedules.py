"""When jobs fire (pure): local wall times across DST, month ends, catch-up after downtime, APScheduler's trigger."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from campaigns.authoring.spec import Schedule
from kit.scheduler import LocalTimeTrigger
from kit.schedules import JobSchedule, due_occurrences, parse_local_time, parse_weekday

NEW_YORK = "America/New_York"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_a_daily_time_that_does_not_exist_on_the_spring_forward_day_runs_once_after_the_gap():
    schedule = JobSchedule("daily", NEW_YORK, 2, 30)  # 2026-03-08 02:00 EST jumps to 03:00 EDT
    fired = schedule.occurrences(utc(2026, 3, 7), utc(2026, 3, 10))
    assert [o.key for o in fired] == ["2026-03-07", "2026-03-08", "2026-03-09"]
    assert [o.fire_at for o in fired] == [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 6, 30)]
    # 07:30 UTC on the 8th is 03:30 EDT: moved forward by the gap, as wall clocks are.
    assert fired[1].fire_at.astimezone(schedule_zone()).strftime("%H:%M %Z") == "03:30 EDT"


def schedule_zone():
    from zoneinfo import ZoneInfo

    return ZoneInfo(NEW_YORK)


def test_a_daily_time_that_occurs_twice_on_the_fall_back_day_runs_once_at_the_first():
    schedule = JobSchedule("daily", NEW_YORK, 1, 30)  # 2026-11-01 01:00-02:00 happens twice
    fired = schedule.occurrences(utc(2026, 10, 31, 12), utc(2026, 11, 2, 12))
    assert [o.key for o in fired] == ["2026-11-01", "2026-11-02"]
    assert fired[0].fire_at == utc(2026, 11, 1, 5, 30)  # 01:30 EDT, not 01:30 EST an hour later
    assert fired[1].fire_at == utc(2026, 11, 2, 6, 30)


def test_daily_occurrences_are_named_by_the_local_date_not_the_utc_one():
    schedule = JobSchedule("daily", "Asia/Shanghai", 2, 0)
    [occurrence] = schedule.occurrences(utc(2026, 11, 25, 12), utc(2026, 11, 25, 23))
    assert occurrence.key == "2026-11-26" and occurrence.fire_at == utc(2026, 11, 25, 18)


def test_weekly_and_hourly_schedules():
    weekly = JobSchedule("weekly", "Asia/Shanghai", 3, 0, weekday=parse_weekday("Sunday", "w"))
    fired = weekly.occurrences(utc(2026, 11, 1), utc(2026, 11, 30))
    # Sunday 1 Nov 03:00 in Shanghai is 31 Oct 19:00 UTC, before the window: four Sundays follow.
    assert [o.day.weekday() for o in fired] == [6, 6, 6, 6] and fired[0].key == "2026-11-08"
    hourly = JobSchedule("hourly", "UTC", minute=15, every_hours=6)
    keys = [o.key for o in hourly.occurrences(utc(2026, 11, 1, 0, 15), utc(2026, 11, 2, 0, 15))]
    assert keys == ["2026-11-01T06:15Z", "2026-11-01T12:15Z", "2026-11-01T18:15Z", "2026-11-02T00:15Z"]
    assert hourly.of_key("2026-11-01T06:15Z").fire_at == utc(2026, 11, 1, 6, 15)


def test_the_pipeline_plans_month_end_campaigns_on_the_last_day_of_short_months():
    """The daily pipeline's occurrence days against monthly schedules on the 29th, 30th and 31st."""
    pipeline = JobSchedule("daily", "Asia/Shanghai", 2, 0)
    days = [o.day for o in pipeline.occurrences(utc(2027, 1, 27), utc(2028, 3, 2))]
    assert len(days) == len(set(days)) == (date(2028, 3, 2) - date(2027, 1, 28)).days + 1  # none skipped or doubled

    def fires(day_of_month: int) -> list[date]:
        schedule = Schedule(kind="monthly", day_of_month=day_of_month)
        return [d for d in days if schedule.fires_on(d) and d.month in (1, 2, 3, 4)]

    assert fires(31)[:4] == [date(2027, 1, 31), date(2027, 2, 28), date(2027, 3, 31), date(2027, 4, 30)]
    assert fires(29)[:3] == [date(2027, 1, 29), date(2027, 2, 28), date(2027, 3, 29)]
    assert date(2028, 2, 29) in fires(29) and date(2028, 2, 28) not in fires(29)  # leap year
    assert date(2028, 2, 29) in fires(30)


def test_after_downtime_across_two_runs_the_newest_missed_run_is_caught_up_once():
    schedule = JobSchedule("daily", "Asia/Shanghai", 2, 0)
    last = schedule.of_key("2026-11-01")
    now = utc(2026, 11, 3, 19)  # 03:00 on the 4th in Shanghai: the 2nd, 3rd and 4th were missed
    done = {"2026-11-01"}
    latest = due_occurrences(schedule, now, last_done=last.fire_at, done_keys=done, policy="latest")
    assert [o.key for o in latest] == ["2026-11-04"]
    every = due_occurrences(schedule, now, last_done=last.fire_at, done_keys=done, policy="all")
    assert [o.key for o in every] == ["2026-11-02", "2026-11-03", "2026-11-04"]
    capped = due_occurrences(schedule, now, last_done=last.fire_at, done_keys=done, policy="all", limit=2)
    assert [o.key for o in capped] == ["2026-11-03", "2026-11-04"]
    done_now = done | {"2026-11-04"}
    assert due_occurrences(schedule, now, last_done=schedule.of_key("2026-11-04").fire_at, done_keys=done_now) == []


def test_before_todays_time_the_due_occurrence_is_yesterdays_and_a_fresh_install_runs_only_that():
    schedule = JobSchedule("daily", "Asia/Shanghai", 2, 0)
    now = utc(2026, 11, 3, 17)  # 01:00 on the 4th in Shanghai: today's run is not due yet
    assert [o.key for o in due_occurrences(schedule, now, last_done=None, done_keys=set())] == ["2026-11-03"]
    assert due_occurrences(schedule, now, last_done=None, done_keys={"2026-11-03"}) == []
    with pytest.raises(ValueError, match="catch-up policy"):
        due_occurrences(schedule, now, last_done=None, done_keys=set(), policy="every")


def test_apscheduler_trigger_follows_the_schedule_across_dst_and_downtime():
    trigger = LocalTimeTrigger(JobSchedule("daily", NEW_YORK, 2, 30))
    first = trigger.get_next_fire_time(None, utc(2026, 3, 7, 12))
    second = trigger.get_next_fire_time(first, utc(2026, 3, 7, 12))
    third = trigger.get_next_fire_time(second, second)
    assert [first, second, third] == [utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 6, 30), utc(2026, 3, 10, 6, 30)]
    # After days down, APScheduler walks the trigger from the last firing: every step stays a real occurrence.
    walked, moment = [], first
    while moment <= utc(2026, 3, 12):
        walked.append(moment)
        moment = trigger.get_next_fire_time(moment, utc(2026, 3, 12))
    assert len(walked) == 4 and all(b - a >= timedelta(hours=23) for a, b in zip(walked, walked[1:], strict=False))


def test_settings_values_are_checked():
    assert parse_local_time("02:30", "x") == (2, 30)
    for bad in ("2:30", "24:00", "02:60", "noon"):
        with pytest.raises(ValueError, match="pipeline_local_time must be HH:MM"):
            parse_local_time(bad, "pipeline_local_time")
    with pytest.raises(ValueError, match="retrain_weekday"):
        parse_weekday("someday", "retrain_weekday")
    with pytest.raises(ValueError, match="weekday"):
        JobSchedule("weekly", "UTC", 1, 0)
