"""Campaigns: validated, versioned and audited specifications, their status moves, the fairness gate on activation,
and the default touch plans."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session, select

from campaigns.authoring import rendering
from campaigns.authoring.fairness import OfferReach, added_violations
from campaigns.authoring.guard_rail_settings import GuardRailSettings, current_settings
from campaigns.authoring.spec import STATUSES, Audience, CampaignSpec
from campaigns.authoring.templates import (
    content_problems,
    find_template,
    offer_description,
    shop_sample_context,
)
from campaigns.models import (
    Campaign,
    CampaignVersion,
)
from crm import audit
from kit.context import Context
from kit.errors import Conflict, Forbidden, InvalidInput, NotFound
from segmentation.service import current_rule_set

STATUS_MOVES = {"draft": {"active", "archived"}, "active": {"paused", "archived"},
                "paused": {"active", "archived"}, "archived": set()}


def parse_spec(body: dict[str, Any]) -> CampaignSpec:
    """Validate a campaign body; every error names its field."""
    try:
        return CampaignSpec.model_validate(body)
    except ValidationError as error:
        raise InvalidInput.from_validation("campaign", error) from error


def _admin_keeps_transactional(campaign: Campaign, may_define_transactional: bool) -> None:
    """A transactional campaign, once made, is changed by an admin only (its spec, its status)."""
    if campaign.spec.get("transactional") and not may_define_transactional:
        raise Forbidden("only an admin may change a transactional campaign",
                        errors=[{"field": "transactional", "reason": "transactional messages are defined by admins"}])


def _check_kind(spec: CampaignSpec, may_define_transactional: bool) -> None:
    """A transactional notice is an admin's to define, and carries no offer and no A/B test."""
    if not spec.transactional:
        return
    if not may_define_transactional:
        raise Forbidden("only an admin may define transactional messages",
                        errors=[{"field": "transactional", "reason": "transactional messages are defined by admins"}])
    errors = []
    if spec.makes_offers:
        errors.append({"field": "offer", "reason": "a transactional notice never carries an offer"})
    if spec.experiment is not None:
        errors.append({"field": "experiment", "reason": "a transactional notice is not A/B tested"})
    if errors:
        raise InvalidInput(f"invalid campaign: {', '.join(e['field'] for e in errors)}", errors=errors)


def segment_names(session: Session) -> dict[str, set[str]]:
    """The tiers, layers and tags the current rule sets define."""
    _, tiers = current_rule_set(session, "tier")
    _, layers = current_rule_set(session, "layer")
    _, tags = current_rule_set(session, "tags")
    return {"tiers": {r.name for r in tiers.rules} | {tiers.fallback},
            "layers": {r.name for r in layers.rules} | {layers.fallback}, "tags": {t.name for t in tags.tags}}


def audience_errors(audience: Audience, known: dict[str, set[str]], prefix: str,
                    extra_tags: set[str] = frozenset()) -> list[dict[str, str]]:
    """An error per tier, layer or tag the audience names that no rule set defines (`extra_tags`: others known)."""
    errors = []
    for field, kind in (("tiers", "tiers"), ("exclude_tiers", "tiers"), ("layers", "layers"),
                        ("exclude_layers", "layers"), ("tags", "tags"), ("exclude_tags", "tags")):
        names = known[kind] | (set(extra_tags) if kind == "tags" else set())
        for index, value in enumerate(getattr(audience, field)):
            if value not in names:
                errors.append({"field": f"{prefix}{field}.{index}",
                               "reason": f"unknown {kind[:-1]} '{value}' (known: {', '.join(sorted(names))})"})
    return errors


def _check_semantics(session: Session, ctx: Context, spec: CampaignSpec) -> None:
    """Names the spec refers to exist: tiers, layers, tags, and a renderable template per channel that passes the
    content rules of the campaign's kind."""
    known = segment_names(session)
    errors = audience_errors(spec.audience, known, "audience.")
    schedule = spec.schedule
    if schedule.trigger == "entered_tier" and schedule.value not in known["tiers"]:
        errors.append({"field": "schedule.value", "reason": f"unknown tier '{schedule.value}'"})
    if schedule.trigger == "entered_tag" and schedule.value not in known["tags"]:
        errors.append({"field": "schedule.value", "reason": f"unknown tag '{schedule.value}'"})
    rails = current_settings(session, ctx)[1]
    arms = [("", spec)] + ([(f"experiment.variants.{i}.", spec.for_variant(v))
                            for i, v in enumerate(spec.experiment.variants)] if spec.experiment else [])
    for prefix, arm in arms:
        errors += template_errors(session, ctx, arm, prefix, rails)
    if errors:
        raise InvalidInput(f"invalid campaign: {', '.join(e['field'] for e in errors)}", errors=errors)


def template_errors(session: Session, ctx: Context, spec: CampaignSpec, prefix: str,
                    rails: GuardRailSettings, locale: str | None = None) -> list[dict[str, str]]:
    """A renderable template per channel step of the spec (an A/B arm's steps named under its variant), in the
    shop's default locale or the one given."""
    errors = []
    for index, step in enumerate(spec.channels):
        field = f"{prefix}channels.{index}.template"
        source = find_template(session, ctx, step.template, step.channel, locale or ctx.settings.default_locale)
        if source is None:
            errors.append({"field": field, "reason": f"no {step.channel} template named '{step.template}'"})
            continue
        sample = shop_sample_context(ctx, source.locale, with_offer=spec.offer is not None)
        if spec.offer is not None:
            sample["offer"]["description"] = offer_description(spec.offer.model_dump(), source.locale)
        try:
            checked = rendering.validate(source, sample)
        except rendering.TemplateProblem as problem:
            errors.append({"field": field, "reason": f"does not render ({problem.part}): {problem.reason}"})
            continue
        if spec.transactional and source.kind != "transactional":
            errors.append({"field": field, "reason": f"'{step.template}' is a marketing template; a transactional "
                                                     "notice needs a transactional one"})
            continue
        for problem in content_problems(session, ctx, source, checked["rendered"], rails):
            errors.append({"field": field, "reason": f"{problem['field']}: {problem['reason']}"})
    return errors


def offer_reaches(name: str, spec: CampaignSpec) -> list[OfferReach]:
    """Whom the campaign's offers reach: its own and each A/B arm's (a journey's send steps pass as campaigns)."""
    arms = [spec] + ([spec.for_variant(v) for v in spec.experiment.variants] if spec.experiment else [])
    newcomers = "first_order_only" in spec.audience.tags or spec.schedule.trigger == "days_after_first_order"
    return [OfferReach(campaign=name, tiers=tuple(spec.audience.tiers), new_customers=newcomers,
                       amount_off=arm.offer.amount_off, percent_off=arm.offer.percent_off,
                       min_spend=arm.offer.min_spend, exclude_tiers=tuple(spec.audience.exclude_tiers))
            for arm in arms if arm.offer is not None]


def fairness_check(session: Session, ctx: Context, campaign: Campaign, spec: CampaignSpec) -> list[dict]:
    """Violations this campaign adds to those of the other active campaigns (what is already there is not its doing:
    e.g. a newcomer offer accepted with `warn` must not block every later change to a loyal-tier campaign)."""
    others = session.exec(select(Campaign).where(Campaign.status == "active", Campaign.id != campaign.id)).all()
    reaches = [r for o in others for r in offer_reaches(o.name, CampaignSpec.model_validate(o.spec))]
    mine = offer_reaches(campaign.name, spec)
    if not mine:
        return []
    return added_violations(reaches, mine, tuple(ctx.settings.loyal_tiers))


def _snapshot(session: Session, campaign: Campaign, actor: str, at: datetime) -> None:
    session.add(CampaignVersion(campaign_id=campaign.id, version=campaign.version, status=campaign.status,
                                spec=campaign.spec, created_at=at, created_by=actor))


def create_campaign(session: Session, ctx: Context, body: dict[str, Any], actor: str, *,
                    may_define_transactional: bool = False) -> Campaign:
    """A new campaign in draft, version 1 (validated, audited); transactional ones are an admin's."""
    spec = parse_spec(body)
    _check_kind(spec, may_define_transactional)
    _check_semantics(session, ctx, spec)
    if session.exec(select(Campaign).where(Campaign.name == spec.name)).first() is not None:
        raise Conflict(f"a campaign named '{spec.name}' exists", errors=[{"field": "name", "reason": "taken"}])
    now = ctx.clock.now()
    campaign = Campaign(name=spec.name, status="draft", version=1, priority=spec.priority,
                        spec=spec.model_dump(mode="json"), created_at=now, created_by=actor, updated_at=now,
                        updated_by=actor)
    session.add(campaign)
    session.flush()
    _snapshot(session, campaign, actor, now)
    audit.record(session, actor=actor, action="campaign.create", entity="campaign", entity_id=campaign.id, at=now,
                 after={"status": campaign.status, "spec": campaign.spec})
    return campaign


def get_campaign(session: Session, campaign_id: int) -> Campaign:
    """One campaign, or NotFound."""
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(f"campaign {campaign_id} does not exist")
    return campaign


def list_campaigns(session: Session, status: str | None = None) -> list[Campaign]:
    """Campaigns, highest priority first."""
    query = select(Campaign).order_by(Campaign.priority.desc(), Campaign.id)
    if status is not None:
        query = query.where(Campaign.status == status)
    return list(session.exec(query))


def campaign_versions(session: Session, campaign_id: int) -> list[CampaignVersion]:
    """Every saved state of a campaign, oldest first."""
    get_campaign(session, campaign_id)
    return list(session.exec(select(CampaignVersion).where(CampaignVersion.campaign_id == campaign_id)
                             .order_by(CampaignVersion.version)))


def update_campaign(session: Session, ctx: Context, campaign_id: int, body: dict[str, Any], actor: str, *,
                    may_define_transactional: bool = False) -> tuple[Campaign, list[dict]]:
    """Replace the specification (a new version); an active campaign is checked for fairness again. Only an admin
    changes a transactional campaign, or makes one."""
    campaign = get_campaign(session, campaign_id)
    if campaign.status == "archived":
        raise Conflict("an archived campaign cannot change")
    spec = parse_spec(body)
    _admin_keeps_transactional(campaign, may_define_transactional)
    _check_kind(spec, may_define_transactional)
    _check_semantics(session, ctx, spec)
    clash = session.exec(select(Campaign).where(Campaign.name == spec.name, Campaign.id != campaign_id)).first()
    if clash is not None:
        raise Conflict(f"a campaign named '{spec.name}' exists", errors=[{"field": "name", "reason": "taken"}])
    warnings = _fairness_gate(session, ctx, campaign, spec) if campaign.status == "active" else []
    return _save(session, ctx, campaign, spec, campaign.status, actor, "campaign.update"), warnings


def _fairness_gate(session: Session, ctx: Context, campaign: Campaign, spec: CampaignSpec) -> list[dict]:
    found = fairness_check(session, ctx, campaign, spec)
    if found and spec.fairness == "refuse":
        raise InvalidInput("the offer would leave a loyal tier paying more than new customers for the same basket",
                           errors=[{"field": "offer", "reason": f"{v['tier']} pays {v['loyal_price']} for a basket of "
                                    f"{v['basket']}, new customers {v['new_customer_price']} "
                                    f"({v['new_customer_campaign']})"} for v in found])
    return found


def _save(session: Session, ctx: Context, campaign: Campaign, spec: CampaignSpec, status: str, actor: str,
          action: str) -> Campaign:
    now = ctx.clock.now()
    before = {"status": campaign.status, "version": campaign.version, "spec": campaign.spec}
    campaign.spec, campaign.status, campaign.priority = spec.model_dump(mode="json"), status, spec.priority
    campaign.name, campaign.version = spec.name, campaign.version + 1
    campaign.updated_at, campaign.updated_by = now, actor
    session.add(campaign)
    session.flush()
    _snapshot(session, campaign, actor, now)
    audit.record(session, actor=actor, action=action, entity="campaign", entity_id=campaign.id, at=now,
                 before=before, after={"status": status, "version": campaign.version, "spec": campaign.spec})
    return campaign


def status_moves(current: str, wanted: str, kind: str) -> bool:
    """Whether a campaign's (or journey's) status changes (False: it is already there); an unknown status or a move
    the lifecycle forbids is refused, naming the field."""
    if wanted not in STATUSES:
        raise InvalidInput.field("status", f"must be one of {', '.join(STATUSES)}")
    if wanted == current:
        return False
    if wanted not in STATUS_MOVES[current]:
        raise Conflict(f"a {current} {kind} cannot become {wanted}",
                       errors=[{"field": "status", "reason": f"allowed: {sorted(STATUS_MOVES[current])}"}])
    return True


def set_status(session: Session, ctx: Context, campaign_id: int, status: str, actor: str, *,
               may_define_transactional: bool = True) -> tuple[Campaign, list[dict]]:
    """Move a campaign draft → active ⇄ paused → archived; activation passes the fairness gate (a transactional
    campaign's status is an admin's to change)."""
    campaign = get_campaign(session, campaign_id)
    _admin_keeps_transactional(campaign, may_define_transactional)
    if not status_moves(campaign.status, status, "campaign"):
        return campaign, []
    spec = CampaignSpec.model_validate(campaign.spec)
    warnings = _fairness_gate(session, ctx, campaign, spec) if status == "active" else []
    return _save(session, ctx, campaign, spec, status, actor, f"campaign.{status}"), warnings


def describe(campaign: Campaign) -> dict[str, Any]:
    """A campaign as the API shows it."""
    return {"id": campaign.id, "name": campaign.name, "status": campaign.status, "version": campaign.version,
            "priority": campaign.priority, "spec": campaign.spec, "created_at": campaign.created_at,
            "created_by": campaign.created_by, "updated_at": campaign.updated_at, "updated_by": campaign.updated_by}


def install_defaults(session: Session, ctx: Context, actor: str, *, activate: bool = True) -> list[dict[str, Any]]:
    """Create the default touch plans that do not exist yet (by name); activate them unless told not to."""
    from campaigns.authoring.defaults import DEFAULT_CAMPAIGNS

    out = []
    for body in DEFAULT_CAMPAIGNS:
        existing = session.exec(select(Campaign).where(Campaign.name == body["name"])).first()
        if existing is not None:
            out.append({"id": existing.id, "name": existing.name, "status": existing.status, "created": False,
                        "warnings": []})
            continue
        campaign = create_campaign(session, ctx, body, actor)
        warnings: list[dict] = []
        if activate:
            campaign, warnings = set_status(session, ctx, campaign.id, "active", actor)
        out.append({"id": campaign.id, "name": campaign.name, "status": campaign.status, "created": True,
                    "warnings": warnings})
    return out
