"""Journeys as definitions: validated (graph, names, templates in every locale, the fairness gate), versioned and
audited like campaigns; each step that sends is planned as a one-step campaign under the same rails."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import update
from sqlmodel import Session, select

from campaigns.authoring.campaigns import (
    audience_errors,
    offer_reaches,
    segment_names,
    status_moves,
    template_errors,
)
from campaigns.authoring.fairness import added_violations
from campaigns.authoring.guard_rail_settings import current_settings
from campaigns.authoring.spec import CampaignSpec, ChannelStep, Schedule
from campaigns.journeys.spec import ACTIVITY_OF_TRIGGER, JourneySpec, successors
from campaigns.models import Campaign, Journey, JourneyEnrollment, JourneyVersion
from crm import activity, audit
from kit.context import Context
from kit.errors import Conflict, InvalidInput, NotFound

LOCALES = ("zh-CN", "en-US")  # every template a journey sends must render in each (and in the shop's default)


def parse_journey(body: dict[str, Any]) -> JourneySpec:
    """Validate a journey body; every error names its field (steps by their place in the list)."""
    try:
        return JourneySpec.model_validate(body)
    except ValidationError as error:
        raise InvalidInput.from_validation("journey", error) from error


def step_campaign(spec: JourneySpec, step: Any) -> CampaignSpec:
    """A send or call step as the one-step campaign the planner plans (no holdout: the journey holds out at entry)."""
    channels = step.channels if step.type == "send" else [ChannelStep(channel="phone", template=step.template)]
    waits = step.type == "send" and step.when_blocked == "wait"
    return CampaignSpec(name=f"{spec.name} / {step.id}"[:120], channels=channels, offer=step.offer,
                        schedule=Schedule(kind="daily"), priority=spec.priority, holdout_share=0,
                        defer_days=step.max_wait_days if waits else 0, audience=spec.entry.audience)


def graph_errors(spec: JourneySpec) -> list[dict[str, str]]:
    """Well-formed: unique ids, every target exists, every step reachable, every branch outcome given, and no cycle
    that could run without passing a wait."""
    errors: list[dict[str, str]] = []
    places: dict[str, int] = {}
    for index, step in enumerate(spec.steps):
        if step.id in places:
            errors.append({"field": f"steps.{index}.id", "reason": f"step id '{step.id}' is used twice"})
        places.setdefault(step.id, index)
    if spec.start is not None and spec.start not in places:
        errors.append({"field": "start", "reason": f"no step '{spec.start}'"})
    edges: dict[str, list[str]] = {}
    for index, step in enumerate(spec.steps):
        targets = []
        for field, target in successors(step):
            if target is None:
                if step.type == "branch":
                    errors.append({"field": f"steps.{index}.{field}", "reason": "a branch needs both outcomes"})
                continue
            if target not in places:
                errors.append({"field": f"steps.{index}.{field}", "reason": f"no step '{target}'"})
                continue
            targets.append(target)
        edges[step.id] = targets
    if errors:
        return errors
    seen, todo = set(), [spec.first_step]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(edges[current])
    for step in spec.steps:
        if step.id not in seen:
            errors.append({"field": f"steps.{places[step.id]}", "reason": f"step '{step.id}' cannot be reached"})
    kinds = {step.id: step.type for step in spec.steps}
    loop = _cycle_without_wait(edges, kinds)
    if loop:
        errors.append({"field": f"steps.{places[loop[0]]}",
                       "reason": f"steps {' -> '.join(loop)} loop without a wait"})
    return errors


def _cycle_without_wait(edges: dict[str, list[str]], kinds: dict[str, str]) -> list[str] | None:
    """A cycle among non-wait steps, if any (depth-first, colouring)."""
    colour: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        path.append(node)
        for target in edges[node]:
            if kinds[target] == "wait":
                continue
            if colour.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in colour:
                found = visit(target)
                if found:
                    return found
        path.pop()
        colour[node] = 2
        return None

    for node, kind in kinds.items():
        if kind != "wait" and node not in colour:
            found = visit(node)
            if found:
                return found
    return None


def journey_tags(spec: JourneySpec) -> set[str]:
    """Tags the journey's update steps set."""
    return {tag for step in spec.steps if step.type == "update" for tag in (*step.add_tags, *step.remove_tags)}


def _semantic_errors(session: Session, ctx: Context, spec: JourneySpec) -> list[dict[str, str]]:
    known = segment_names(session)
    errors = audience_errors(spec.entry.audience, known, "entry.audience.", extra_tags=journey_tags(spec))
    trigger = spec.entry.trigger
    wanted = {"entered_tier": "tiers", "entered_layer": "layers", "entered_tag": "tags"}.get(trigger.kind)
    if wanted and trigger.value not in known[wanted] | (journey_tags(spec) if wanted == "tags" else set()):
        errors.append({"field": "entry.trigger.value", "reason": f"unknown {wanted[:-1]} '{trigger.value}'"})
    rails = current_settings(session, ctx)[1]
    for index, step in enumerate(spec.steps):
        if step.type == "update":
            computed = sorted(set(step.add_tags + step.remove_tags) & known["tags"])
            if computed:
                errors.append({"field": f"steps.{index}.add_tags", "reason": f"'{computed[0]}' is computed by the "
                               "tag rules; a journey sets tags of its own"})
        if step.type == "branch" and step.condition == "has_tag" and \
                step.value not in known["tags"] | journey_tags(spec):
            errors.append({"field": f"steps.{index}.value", "reason": f"unknown tag '{step.value}'"})
        if step.type not in ("send", "call"):
            continue
        campaign = step_campaign(spec, step)
        for locale in dict.fromkeys((ctx.settings.default_locale, *LOCALES)):
            for problem in template_errors(session, ctx, campaign, "", rails, locale):
                field = problem["field"] if step.type == "send" else "template"  # a call step has one template
                errors.append({"field": f"steps.{index}.{field}", "reason": f"{locale}: {problem['reason']}"})
    return list({(e["field"], e["reason"]): e for e in errors}.values())


def fairness_problems(session: Session, ctx: Context, spec: JourneySpec, journey_id: int | None) -> list[dict]:
    """Violations the journey's offers add to those of active campaigns and journeys."""
    def reaches_of(name: str, journey: JourneySpec) -> list:
        return [r for step in journey.steps if step.type in ("send", "call") and step.offer is not None
                for r in offer_reaches(f"{name} / {step.id}", step_campaign(journey, step))]

    others = [r for c in session.exec(select(Campaign).where(Campaign.status == "active")).all()
              for r in offer_reaches(c.name, CampaignSpec.model_validate(c.spec))]
    others += [r for j in session.exec(select(Journey).where(Journey.status == "active", Journey.id != journey_id))
               for r in reaches_of(j.name, JourneySpec.model_validate(j.spec))]
    mine = reaches_of(spec.name, spec)
    if not mine:
        return []
    return added_violations(others, mine, tuple(ctx.settings.loyal_tiers))


def _check(session: Session, ctx: Context, spec: JourneySpec) -> None:
    errors = graph_errors(spec)
    errors += _semantic_errors(session, ctx, spec) if not errors else []
    if errors:
        raise InvalidInput(f"invalid journey: {', '.join(e['field'] for e in errors)}", errors=errors)


def _fairness_gate(session: Session, ctx: Context, spec: JourneySpec, journey_id: int | None) -> None:
    found = fairness_problems(session, ctx, spec, journey_id)
    if found:
        raise InvalidInput("an offer of the journey would leave a loyal tier paying more than new customers",
                           errors=[{"field": "steps", "reason": f"{v['tier']} pays {v['loyal_price']} for a basket of "
                                    f"{v['basket']}, new customers {v['new_customer_price']} "
                                    f"({v['new_customer_campaign']})"} for v in found])


def _snapshot(session: Session, journey: Journey, actor: str) -> None:
    session.add(JourneyVersion(journey_id=journey.id, version=journey.version, status=journey.status,
                               spec=journey.spec, created_at=journey.updated_at, created_by=actor))


def create_journey(session: Session, ctx: Context, body: dict[str, Any], actor: str) -> Journey:
    """A new journey in draft, version 1 (validated, audited)."""
    spec = parse_journey(body)
    _check(session, ctx, spec)
    if session.exec(select(Journey).where(Journey.name == spec.name)).first() is not None:
        raise Conflict(f"a journey named '{spec.name}' exists", errors=[{"field": "name", "reason": "taken"}])
    now = ctx.clock.now()
    journey = Journey(name=spec.name, status="draft", version=1, priority=spec.priority,
                      spec=spec.model_dump(mode="json", by_alias=True), created_at=now, created_by=actor,
                      updated_at=now, updated_by=actor)
    session.add(journey)
    session.flush()
    _snapshot(session, journey, actor)
    audit.record(session, actor=actor, action="journey.create", entity="journey", entity_id=journey.id, at=now,
                 after={"status": journey.status, "spec": journey.spec})
    return journey


def get_journey(session: Session, journey_id: int) -> Journey:
    """One journey, or NotFound."""
    journey = session.get(Journey, journey_id)
    if journey is None:
        raise NotFound(f"journey {journey_id} does not exist")
    return journey


def list_journeys(session: Session, status: str | None = None) -> list[Journey]:
    """Journeys, highest priority first."""
    query = select(Journey).order_by(Journey.priority.desc(), Journey.id)
    if status is not None:
        query = query.where(Journey.status == status)
    return list(session.exec(query))


def journey_versions(session: Session, journey_id: int) -> list[JourneyVersion]:
    """Every saved definition of a journey, oldest first."""
    get_journey(session, journey_id)
    return list(session.exec(select(JourneyVersion).where(JourneyVersion.journey_id == journey_id)
                             .order_by(JourneyVersion.version)))


def version_spec(session: Session, journey_id: int, version: int) -> JourneySpec:
    """The definition an enrollment runs on."""
    row = session.exec(select(JourneyVersion).where(JourneyVersion.journey_id == journey_id,
                                                    JourneyVersion.version == version)).one()
    return JourneySpec.model_validate(row.spec)


def _save(session: Session, ctx: Context, journey: Journey, spec: JourneySpec, status: str, actor: str,
          action: str) -> Journey:
    now = ctx.clock.now()
    before = {"status": journey.status, "version": journey.version}
    journey.spec, journey.status, journey.priority = spec.model_dump(mode="json", by_alias=True), status, spec.priority
    journey.name, journey.version = spec.name, journey.version + 1
    journey.updated_at, journey.updated_by = now, actor
    session.add(journey)
    session.flush()
    _snapshot(session, journey, actor)
    audit.record(session, actor=actor, action=action, entity="journey", entity_id=journey.id, at=now,
                 before=before, after={"status": status, "version": journey.version, "spec": journey.spec})
    refresh_interests(session)
    return journey


def update_journey(session: Session, ctx: Context, journey_id: int, body: dict[str, Any], actor: str) -> Journey:
    """A new version of the definition; customers in flight finish on theirs unless moved (`move_enrollments`)."""
    journey = get_journey(session, journey_id)
    if journey.status == "archived":
        raise Conflict("an archived journey cannot change")
    spec = parse_journey(body)
    _check(session, ctx, spec)
    clash = session.exec(select(Journey).where(Journey.name == spec.name, Journey.id != journey_id)).first()
    if clash is not None:
        raise Conflict(f"a journey named '{spec.name}' exists", errors=[{"field": "name", "reason": "taken"}])
    if journey.status == "active":
        _fairness_gate(session, ctx, spec, journey.id)
    return _save(session, ctx, journey, spec, journey.status, actor, "journey.update")


def set_status(session: Session, ctx: Context, journey_id: int, status: str, actor: str) -> Journey:
    """draft → active ⇄ paused → archived; activation passes the fairness gate. Paused: no entries, no sends."""
    journey = get_journey(session, journey_id)
    if not status_moves(journey.status, status, "journey"):
        return journey
    spec = JourneySpec.model_validate(journey.spec)
    if status == "active":
        _check(session, ctx, spec)  # the templates or tag rules may have changed since it was saved
        _fairness_gate(session, ctx, spec, journey.id)
    if status == "archived":  # nobody is left waiting in a journey that will never run again
        now = ctx.clock.now()
        session.exec(update(JourneyEnrollment).where(  # type: ignore[call-overload]
            JourneyEnrollment.journey_id == journey.id, JourneyEnrollment.status.in_(("pending", "active"))).values(
            status="exited", end_reason="journey_archived", step_id=None, wake_at=None, ended_at=now, updated_at=now))
    return _save(session, ctx, journey, spec, status, actor, f"journey.{status}")


def refresh_interests(session: Session) -> None:
    """Tell the write path what the active journeys react to: their triggers, waits for events, and orders
    (every goal, 'unless', and 'has ordered' is an order)."""
    pairs: set[tuple[str, str]] = set()
    for journey in list_journeys(session, "active"):
        spec = JourneySpec.model_validate(journey.spec)
        trigger = spec.entry.trigger
        kind = ACTIVITY_OF_TRIGGER.get(trigger.kind)
        if kind is not None:
            name = trigger.event if trigger.kind == "event" else (trigger.value or activity.ANY)
            pairs.add((kind, name if kind in ("event", "tier", "layer", "tag") else activity.ANY))
        if trigger.unless is not None and trigger.unless.kind == "event":
            pairs.add(("event", trigger.unless.event))
        for step in spec.steps:
            if step.type == "wait" and step.until_event and step.until_event != "order":
                pairs.add(("event", step.until_event))
        pairs.add(("order", activity.ANY))
    activity.set_interests(session, pairs)


def describe(journey: Journey) -> dict[str, Any]:
    """A journey as the API shows it."""
    return {"id": journey.id, "name": journey.name, "status": journey.status, "version": journey.version,
            "priority": journey.priority, "spec": journey.spec, "created_at": journey.created_at,
            "created_by": journey.created_by, "updated_at": journey.updated_at, "updated_by": journey.updated_by}


def install_defaults(session: Session, ctx: Context, actor: str, *, activate: bool = True) -> list[dict[str, Any]]:
    """Create the default journeys that do not exist yet (by name); activate them unless told not to."""
    from campaigns.journeys.defaults import DEFAULT_JOURNEYS

    out = []
    for body in DEFAULT_JOURNEYS:
        existing = session.exec(select(Journey).where(Journey.name == body["name"])).first()
        if existing is not None:
            out.append({"id": existing.id, "name": existing.name, "status": existing.status, "created": False})
            continue
        journey = create_journey(session, ctx, body, actor)
        if activate:
            journey = set_status(session, ctx, journey.id, "active", actor)
        out.append({"id": journey.id, "name": journey.name, "status": journey.status, "created": True})
    return out


def describe_json(journey: Journey) -> dict[str, Any]:
    """`describe` with its timestamps as ISO strings (for a hand-built response)."""
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in describe(journey).items()}


def move_enrollments(session: Session, ctx: Context, journey_id: int, from_version: int, step_map: dict[str, str],
                     actor: str) -> dict[str, Any]:
    """Move live enrollments on `from_version` to the current version; each one's step must be mapped to a step of
    the current definition (a step not in the map keeps its customers on their version)."""
    journey = get_journey(session, journey_id)
    spec = JourneySpec.model_validate(journey.spec)
    known = spec.by_id()
    bad = [{"field": f"step_map.{old}", "reason": f"no step '{new}' in version {journey.version}"}
           for old, new in step_map.items() if new not in known]
    if bad:
        raise InvalidInput("the step map names steps the current version lacks", errors=bad)
    now, moved = ctx.clock.now(), 0
    in_flight = session.exec(select(JourneyEnrollment).where(
        JourneyEnrollment.journey_id == journey_id, JourneyEnrollment.version == from_version,
        JourneyEnrollment.status == "active", JourneyEnrollment.step_id.in_(list(step_map)))).all()
    for enrollment in in_flight:
        context = dict(enrollment.context)
        wait = context.get("wait")
        if wait and wait.get("step") == enrollment.step_id:
            # The time already waited counts: the new step's wait is measured from when this one began.
            context["wait"] = {**wait, "step": step_map[enrollment.step_id], "until": None}
        enrollment.step_id, enrollment.version = step_map[enrollment.step_id], journey.version
        enrollment.context, enrollment.wake_at, enrollment.updated_at = context, now, now
        session.add(enrollment)
        moved += 1
    session.flush()
    audit.record(session, actor=actor, action="journey.move", entity="journey", entity_id=journey_id,
                 at=ctx.clock.now(), after={"from_version": from_version, "to_version": journey.version,
                                            "step_map": step_map, "moved": moved})
    return {"journey_id": journey_id, "from_version": from_version, "to_version": journey.version, "moved": moved}
