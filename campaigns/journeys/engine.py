"""Stepping one enrollment through its journey, pure: facts about the customer in, the steps taken out.

An enrollment advances through branches, splits and updates at once; it stops at a wait (with a wake-up time), at a
send (whose fate the planner decides under the guard rails, then `after_send` goes on) or at the end. Every step
taken is one record with the next sequence number, which is what makes it exactly once when written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from campaigns.journeys.spec import JourneySpec
from kit.timezones import local_date_of, local_to_utc

MAX_STEPS_PER_WAKE = 25  # validation forbids loops without a wait; this bounds a wake even so


@dataclass
class Facts:
    """What the engine may ask about a customer now (read for a whole batch by the runtime)."""

    time_zone: str = "UTC"
    last_order_at: datetime | None = None  # the latest order since the enrollment's entry, if any
    events: dict[str, datetime] = field(default_factory=dict)  # event type ('order' too) -> latest time
    tier: str | None = None
    layer: str | None = None
    tags: frozenset[str] = frozenset()
    probability: float | None = None
    at_risk: bool = False
    attributes: dict[str, Any] = field(default_factory=dict)
    last_message: dict[str, Any] | None = None  # opened_at, clicked_at of the journey's last message to them
    purchase_gap_days: float | None = None  # mean days between their orders (repeat buyers only)


@dataclass
class Taken:
    """One step taken: (seq, step id, kind, outcome, reason)."""

    seq: int
    step_id: str
    kind: str
    outcome: str
    reason: str | None = None


@dataclass
class Position:
    """Where an enrollment stands (mutated as it advances)."""

    enrollment_id: int
    journey_id: int
    customer_id: int
    status: str
    step_id: str | None
    seq: int
    entered_at: datetime
    context: dict[str, Any]
    wake_at: datetime | None = None
    end_reason: str | None = None
    taken: list[Taken] = field(default_factory=list)
    send: Any = None  # the send/call step it stopped at, for the planner
    updates: list[dict[str, Any]] = field(default_factory=list)  # tag and attribute changes to apply

    def take(self, step: Any, outcome: str, reason: str | None = None) -> None:
        """Record a step taken (the next sequence number)."""
        self.seq += 1
        self.taken.append(Taken(self.seq, step.id, step.type, outcome, reason))

    def end(self, status: str, reason: str, now: datetime) -> None:
        """Leave the journey."""
        self.status, self.end_reason, self.wake_at, self.step_id = status, reason, None, None
        self.context["ended_at"] = now.isoformat()


def draw(journey_id: int, customer_id: int, salt: str) -> float:
    """A stable uniform number in [0, 1) per (journey, customer, purpose)."""
    digest = hashlib.blake2b(f"{journey_id}:{customer_id}:{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def next_local_time(now: datetime, wall: Any, zone: str) -> datetime:
    """The next instant at or after now when the customer's clock shows `wall` (DST gaps move forward)."""
    minute = wall.hour * 60 + wall.minute
    day = local_date_of(now, zone)
    for offset in range(3):
        candidate = local_to_utc(day + timedelta(days=offset), minute, zone)
        if candidate >= now:
            return candidate
    return local_to_utc(day + timedelta(days=3), minute, zone)


def _ordered_since(position: Position, facts: Facts) -> bool:
    """An order after the entry (the order that let a customer into a post-purchase journey is not its goal)."""
    return facts.last_order_at is not None and facts.last_order_at > position.entered_at


def _goal_reached(spec: JourneySpec, position: Position, facts: Facts) -> bool:
    return spec.goal.kind != "none" and _ordered_since(position, facts)


def _condition(step: Any, position: Position, facts: Facts) -> bool:
    kind, value = step.condition, step.value
    if kind == "ordered_since_entry":
        return _ordered_since(position, facts)
    if kind in ("opened_last", "clicked_last"):
        column = "opened_at" if kind == "opened_last" else "clicked_at"
        return bool(facts.last_message and facts.last_message.get(column))
    if kind == "has_tag":
        return value in facts.tags
    if kind == "tier_in":
        return facts.tier in value
    if kind == "layer_in":
        return facts.layer in value
    if kind == "at_risk":
        return facts.at_risk
    if kind == "risk_above":
        return facts.probability is not None and facts.probability > value
    (name, wanted), = value.items()
    return facts.attributes.get(name) == wanted


def _arm(step: Any, position: Position) -> Any:
    point = draw(position.journey_id, position.customer_id, f"split:{step.id}") * sum(a.weight for a in step.arms)
    for arm in step.arms:
        point -= arm.weight
        if point < 0:
            return arm
    return step.arms[-1]


def _go(position: Position, target: str | None, now: datetime) -> None:
    if target is None:
        position.end("completed", "journey_end", now)
    else:
        position.step_id = target


def _start_wait(step: Any, position: Position, facts: Facts, now: datetime, *, since: datetime | None = None) -> None:
    """Enter a wait: when to wake (a duration counts from the last message's send time when it went out later;
    `since`: a wait already begun on an older version's step, moved here)."""
    base = max(now, datetime.fromisoformat(position.context["clock"])) if position.context.get("clock") else now
    base = since or base
    if step.duration is not None:
        wake = base + step.duration.delta
    elif step.until_local_time is not None:
        wake = next_local_time(base, step.until_local_time, facts.time_zone)
    elif step.purchase_gap is not None:
        rule = step.purchase_gap
        days = facts.purchase_gap_days if facts.purchase_gap_days is not None else rule.fallback_days
        wake = (since or position.entered_at) + timedelta(days=min(max(days, rule.min_days), rule.max_days))
    else:
        wake = (since or now) + step.timeout.delta
    position.context["wait"] = {"step": step.id, "since": (since or now).isoformat(), "until": wake.isoformat(),
                                "until_event": step.until_event is not None}
    position.wake_at = wake


def _waited(step: Any, position: Position, facts: Facts, now: datetime) -> str | None:
    """At a wait already entered: the outcome once it is over, None while it goes on."""
    wait = position.context["wait"]
    if step.until_event is not None:
        seen = facts.events.get(step.until_event)
        if seen is not None and seen >= datetime.fromisoformat(wait["since"]):
            return "event"
    if now >= datetime.fromisoformat(wait["until"]):
        return "timeout" if step.until_event is not None else "waited"
    position.wake_at = datetime.fromisoformat(wait["until"])
    return None


def advance(spec: JourneySpec, position: Position, facts: Facts, now: datetime) -> Position:
    """Take every step due now: stops at a wait, a send (position.send set) or the end."""
    steps = spec.by_id()
    for _ in range(MAX_STEPS_PER_WAKE):
        if position.status != "active" or position.send is not None:
            return position
        if _goal_reached(spec, position, facts):
            position.end("converted", "goal", now)
            return position
        step = steps[position.step_id]
        if step.type in ("send", "call"):
            position.send = step
            return position
        if step.type == "wait":
            wait = position.context.get("wait", {})
            if wait.get("step") != step.id or wait.get("until") is None:
                moved = datetime.fromisoformat(wait["since"]) if wait.get("step") == step.id else None
                _start_wait(step, position, facts, now, since=moved)
                if position.wake_at > now:
                    return position
            outcome = _waited(step, position, facts, now)
            if outcome is None:
                return position
            position.context.pop("wait")
            position.take(step, outcome)
            _go(position, step.on_event if outcome == "event" else step.next, now)
        elif step.type == "branch":
            holds = _condition(step, position, facts)
            position.take(step, "then" if holds else "else")
            _go(position, step.then if holds else step.otherwise, now)
        elif step.type == "split":
            arm = _arm(step, position)
            position.context.setdefault("arms", {})[step.id] = arm.name
            position.take(step, arm.name)
            _go(position, arm.next, now)
        elif step.type == "update":
            position.updates.append({"add_tags": step.add_tags, "remove_tags": step.remove_tags,
                                     "set_attributes": step.set_attributes})
            # Later steps of this wake see the update (a branch on the tag just set).
            facts.tags = (facts.tags | set(step.add_tags)) - set(step.remove_tags)
            facts.attributes = {**facts.attributes, **step.set_attributes}
            position.take(step, "updated")
            _go(position, step.next, now)
        else:  # exit
            position.take(step, "exited")
            position.end("exited", "exit_step", now)
    position.wake_at = now + timedelta(minutes=1)  # a long chain of instant steps goes on at the next wake
    return position


def after_send(spec: JourneySpec, position: Position, sent: bool, reason: str | None, send_at: datetime | None,
               now: datetime) -> Position:
    """The planner's verdict on the send step the enrollment stopped at; then it goes on."""
    step = position.send
    position.send = None
    position.take(step, "sent" if sent else "not_sent", reason)
    if sent and send_at is not None:
        position.context["clock"] = send_at.isoformat()  # waits after a deferred message count from its send
    target = step.next if sent else (step.not_sent if step.not_sent is not None else step.next)
    _go(position, target, now)
    return position


def confirm_entry(spec: JourneySpec, position: Position, facts: Facts, now: datetime, *,
                  in_global_control: bool) -> Position:
    """A pending entry: cancelled when the 'unless' happened, held out (journey or global), or started."""
    unless = spec.entry.trigger.unless
    if unless is not None:
        kind = "order" if unless.kind == "order" else unless.event
        seen = facts.events.get(kind)
        if seen is not None and seen >= position.entered_at:
            position.end("cancelled", f"unless_{unless.kind}", now)
            return position
    if in_global_control:
        position.end("holdout", "global_control", now)
        return position
    # Per (journey, customer): a customer who enters again stays in the same arm.
    if draw(position.journey_id, position.customer_id, "holdout") < spec.holdout_share:
        position.end("holdout", "holdout", now)
        return position
    position.status, position.step_id = "active", spec.first_step
    return position
