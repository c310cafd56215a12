"""Journeys' pure parts, no database: property filters, the graph rules, local-time waits across DST, stepping."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest
from pydantic import ValidationError

from campaigns.journeys.definitions import graph_errors
from campaigns.journeys.engine import Facts, Position, advance, after_send, confirm_entry, next_local_time
from campaigns.journeys.spec import JourneySpec, PropertyFilter

ENTRY = {"trigger": {"kind": "event", "event": "cart_add"}}


def spec(*steps, **extra) -> JourneySpec:
    return JourneySpec.model_validate({"name": "j", "entry": ENTRY, "steps": list(steps), "holdout_share": 0} | extra)


def position(**overrides) -> Position:
    values = {"enrollment_id": 1, "journey_id": 1, "customer_id": 7, "status": "active", "step_id": None, "seq": 0,
              "entered_at": datetime(2026, 11, 1, 8, tzinfo=UTC), "context": {}}
    return Position(**(values | overrides))


@pytest.mark.parametrize(("rule", "properties", "holds"), [
    ({"property": "value", "op": "gte", "value": 500}, {"value": 500}, True),
    ({"property": "value", "op": "gt", "value": 500}, {"value": 500}, False),
    ({"property": "value", "op": "lt", "value": 500}, {"value": "cheap"}, False),  # not a number: no match
    ({"property": "category", "op": "in", "value": ["shoes", "bags"]}, {"category": "bags"}, True),
    ({"property": "category", "op": "ne", "value": "shoes"}, {}, True),  # absent differs from anything
    ({"property": "coupon", "op": "exists"}, {"coupon": None}, True),
])
def test_property_filters(rule, properties, holds):
    assert PropertyFilter.model_validate(rule).holds(properties) is holds


def test_a_filter_needs_a_value_of_its_kind():
    with pytest.raises(ValidationError):
        PropertyFilter.model_validate({"property": "value", "op": "gt", "value": "five"})


def test_graph_rules_name_the_step():
    errors = graph_errors(spec(
        {"id": "a", "type": "branch", "condition": "at_risk", "then": "b", "else": "missing"},
        {"id": "b", "type": "update", "add_tags": ["x"], "next": "a"}))
    fields = {e["field"]: e["reason"] for e in errors}
    assert fields == {"steps.0.else": "no step 'missing'"}
    looping = graph_errors(spec(
        {"id": "a", "type": "branch", "condition": "at_risk", "then": "b", "else": "c"},
        {"id": "b", "type": "update", "add_tags": ["x"], "next": "a"}, {"id": "c", "type": "exit"}))
    assert looping == [{"field": "steps.0", "reason": "steps a -> b -> a loop without a wait"}]
    waited = graph_errors(spec(
        {"id": "a", "type": "branch", "condition": "at_risk", "then": "w", "else": "c"},
        {"id": "w", "type": "wait", "duration": {"days": 1}, "next": "a"}, {"id": "c", "type": "exit"}))
    assert waited == []  # a loop through a wait is a fine weekly check


def test_a_local_time_wait_in_the_spring_forward_gap_moves_on_by_the_gap():
    # 14 March 2027, New York: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist that day.
    before = datetime(2027, 3, 14, 5, 0, tzinfo=UTC)  # 00:00 EST
    assert next_local_time(before, time(2, 30), "America/New_York") == datetime(2027, 3, 14, 7, 30, tzinfo=UTC)
    # The next day 02:30 exists again (EDT, UTC-4).
    assert next_local_time(datetime(2027, 3, 14, 8, 0, tzinfo=UTC), time(2, 30), "America/New_York") == \
        datetime(2027, 3, 15, 6, 30, tzinfo=UTC)


def test_stepping_stops_at_a_send_and_goes_on_after_it():
    journey = spec({"id": "tag", "type": "update", "add_tags": ["cart"], "next": "send"},
                   {"id": "send", "type": "send", "channels": [{"channel": "push", "template": "t"}], "next": "wait"},
                   {"id": "wait", "type": "wait", "duration": {"hours": 2}, "next": "done"},
                   {"id": "done", "type": "exit"})
    now = datetime(2026, 11, 1, 9, tzinfo=UTC)
    at = confirm_entry(journey, position(status="pending"), Facts(), now, in_global_control=False)
    assert (at.status, at.step_id) == ("active", "tag")
    advance(journey, at, Facts(), now)
    assert at.send.id == "send" and [t.step_id for t in at.taken] == ["tag"] and at.updates
    deferred = now + timedelta(hours=5)  # quiet hours moved the message to the morning
    after_send(journey, at, True, "deferred_quiet_hours", deferred, now)
    advance(journey, at, Facts(), now)
    assert at.step_id == "wait" and at.wake_at == deferred + timedelta(hours=2)
    advance(journey, at, Facts(), at.wake_at)
    assert at.status == "exited" and [t.seq for t in at.taken] == [1, 2, 3, 4]


def test_an_order_after_entry_is_the_goal_but_the_entering_order_is_not():
    journey = spec({"id": "wait", "type": "wait", "duration": {"days": 3}})
    entered = datetime(2026, 11, 1, 8, tzinfo=UTC)
    same = advance(journey, position(step_id="wait"), Facts(last_order_at=entered), entered)
    assert same.status == "active"
    later = advance(journey, position(step_id="wait"), Facts(last_order_at=entered + timedelta(hours=1)),
                    entered + timedelta(hours=2))
    assert (later.status, later.end_reason) == ("converted", "goal")
