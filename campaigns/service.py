"""Campaign service: campaigns and templates (versioned, audited), planning into the outbox, dry-runs, explanations."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

import polars as pl
from pydantic import ValidationError
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, func, select

from campaigns import compliance, rendering
from campaigns.caps import LEDGER_SCHEMA
from campaigns.discounts import budget_left
from campaigns.fairness import OfferReach, violations
from campaigns.guardrails import GuardRailSettings, current_settings, guard_rails
from campaigns.models import (
    CallTask,
    Campaign,
    CampaignOccurrence,
    CampaignVersion,
    Conversion,
    Message,
    MessageTemplate,
)
from campaigns.planner import (
    EXCLUSION_REASONS,
    GuardRails,
    Plan,
    PlanInputs,
    occurrence_key,
    offer_description,
    plan_occurrence,
)
from campaigns.spec import STATUSES, CampaignSpec
from churn.service import scores_frame
from crm import audit
from crm.bulkwrite import insert_frame
from crm.clock import ensure_utc
from crm.columnar import columnar_reader, driver_rows, driver_time, read_frame
from crm.context import Context
from crm.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound
from crm.locks import lock_for_transaction
from crm.profiles import ProfileRequest
from crm.service import (
    SharedFrames,
    consent_frame,
    contactability_frame,
    customer_by_external_id,
    customer_time_zones,
    first_orders_frame,
    order_money_frame,
    shop_cost_ratio,
)
from crm.timezones import local_date_of, local_to_utc, utc_midnight
from segmentation.service import current_rule_set, entered_between, segments_frame, tags_frame

TEMPLATE_KINDS = ("marketing", "transactional")
LIVE_STATUSES = ("planned", "sending", "sent", "delivered", "unknown")  # count against caps
STATUS_MOVES = {"draft": {"active", "archived"}, "active": {"paused", "archived"},
                "paused": {"active", "archived"}, "archived": set()}
MESSAGE_TYPES = {"campaign_id": "int", "occurrence": "text", "customer_id": "int", "channel": "text", "status": "text",
                 "reason": "text", "priority": "int", "transactional": "bool", "send_at": "timestamp",
                 "expires_at": "timestamp", "template": "text", "locale": "text", "variant": "text", "offer": "json",
                 "discount_value": "float", "coupon_code": "text", "valid_until": "timestamp", "attempts": "int",
                 "created_at": "timestamp", "updated_at": "timestamp"}


def _invalid(field: str, reason: str) -> InvalidInput:
    return InvalidInput(f"{field}: {reason}", errors=[{"field": field, "reason": reason}])


# ---------------------------------------------------------------- templates


def _stored(session: Session, name: str, channel: str, locale: str) -> MessageTemplate | None:
    return session.exec(select(MessageTemplate).where(
        MessageTemplate.name == name, MessageTemplate.channel == channel, MessageTemplate.locale == locale)
        .order_by(MessageTemplate.version.desc()).limit(1)).first()


def _source_of(row: MessageTemplate) -> rendering.TemplateSource:
    return rendering.TemplateSource(name=row.name, channel=row.channel, locale=row.locale, parts=dict(row.parts),
                                    origin=f"stored:{row.id}", kind=row.kind)


def find_template(session: Session, ctx: Context, name: str, channel: str, locale: str) -> rendering.TemplateSource | None:
    """A template for a customer's locale: stored through the API first, then files, with locale fallback."""
    files = rendering.file_templates()

    def lookup(n: str, c: str, loc: str) -> rendering.TemplateSource | None:
        row = _stored(session, n, c, loc)
        return _source_of(row) if row is not None else files.get((n, c, loc))

    def locales(n: str, c: str) -> list[str]:
        stored = session.exec(select(MessageTemplate.locale).where(
            MessageTemplate.name == n, MessageTemplate.channel == c).distinct()).all()
        return sorted({*stored, *(k[2] for k in files if k[0] == n and k[1] == c)})

    return rendering.resolve(lookup, name, channel, locale, ctx.settings.default_locale, locales)


def unsubscribe_url(ctx: Context, customer_id: int | str) -> str:
    """The customer's signed one-click email unsubscribe link."""
    return f"{ctx.settings.public_base_url}/unsubscribe/{ctx.cipher.sign_link('unsubscribe', str(customer_id))}"


def _sample(ctx: Context, locale: str, with_offer: bool = True) -> dict[str, Any]:
    context = rendering.sample_context(locale, with_offer=with_offer, unsubscribe_url=unsubscribe_url(ctx, "sample"))
    context["shop"]["name"] = ctx.settings.shop_name
    return context


def content_problems(session: Session, ctx: Context, source: rendering.TemplateSource,
                     rendered: dict[str, str], rails: GuardRailSettings | None = None) -> list[dict[str, str]]:
    """The rules on what a message says, by kind: marketing copy carries no absolute claims (advertising law) and
    a marketing SMS its opt-out text; a transactional notice refers to no offer and carries no marketing words."""
    rails = rails or current_settings(session, ctx)[1]  # one read when a caller checks many templates
    problems = []
    if source.kind == "transactional":
        for part, text in source.parts.items():
            if compliance.uses_offer(text):
                problems.append({"field": f"parts.{part}", "reason": "a transactional notice carries no offer"})
        for part, text in rendered.items():
            for phrase in compliance.phrases_in(text, rails.marketing_phrases):
                problems.append({"field": f"parts.{part}",
                                 "reason": f"marketing content '{phrase}' in a transactional notice"})
        return problems
    for part, text in rendered.items():
        for phrase in compliance.phrases_in(text, rails.forbidden_ad_phrases):
            problems.append({"field": f"parts.{part}",
                             "reason": f"'{phrase}' is an absolute claim the advertising law forbids in ad copy"})
    if source.channel == "sms" and not compliance.has_opt_out_text(rendered.get("body", ""), rails.sms_opt_out_texts):
        problems.append({"field": "parts.body", "reason": "a marketing SMS must carry its opt-out text (e.g. "
                         f"{' / '.join(rails.sms_opt_out_texts[:2])})"})
    return problems


def _raise_content_problems(problems: list[dict[str, str]]) -> None:
    if problems:
        raise InvalidInput(f"{problems[0]['field']}: {problems[0]['reason']}", errors=problems)


def save_template(session: Session, ctx: Context, body: dict[str, Any], actor: str, *,
                  may_define_transactional: bool = False) -> tuple[MessageTemplate, dict]:
    """Store a new version of a template after it renders against a sample context and passes the content rules
    of its kind (else 422 naming the part); transactional templates are an admin's."""
    for field, longest in (("name", 80), ("channel", 8), ("locale", 16)):
        if not isinstance(body.get(field), str) or not body[field].strip():
            raise _invalid(field, "is required")
        if len(body[field]) > longest:
            raise _invalid(field, f"longer than {longest} characters")
    parts = body.get("parts")
    if not isinstance(parts, dict) or not all(isinstance(v, str) for v in parts.values()):
        raise _invalid("parts", "must map part names to template text")
    for part, text in parts.items():
        if len(text) > rendering.MAX_SOURCE_CHARS:
            raise _invalid(f"parts.{part}", f"longer than {rendering.MAX_SOURCE_CHARS} characters")
    kind = body.get("kind", "marketing")
    if kind not in TEMPLATE_KINDS:
        raise _invalid("kind", f"must be one of {', '.join(TEMPLATE_KINDS)}")
    if kind == "transactional" and not may_define_transactional:
        raise Forbidden("only an admin may define transactional templates",
                        errors=[{"field": "kind", "reason": "transactional templates are defined by admins"}])
    source = rendering.TemplateSource(name=body["name"], channel=body["channel"], locale=body["locale"],
                                      parts=parts, origin="candidate", kind=kind)
    try:
        checked = rendering.validate(source, _sample(ctx, body["locale"]))
    except rendering.TemplateProblem as problem:
        raise _invalid(f"parts.{problem.part}" if problem.part in rendering.PARTS.get(body["channel"], ())
                       else problem.part, problem.reason) from problem
    _raise_content_problems(content_problems(session, ctx, source, checked["rendered"]))
    previous = _stored(session, body["name"], body["channel"], body["locale"])
    row = MessageTemplate(name=body["name"], channel=body["channel"], locale=body["locale"],
                          version=(previous.version + 1) if previous else 1, parts=parts, kind=kind,
                          created_at=ctx.clock.now(), created_by=actor)
    session.add(row)
    session.flush()
    audit.record(session, actor=actor, action="template.save", entity="message_template", entity_id=row.id,
                 at=row.created_at, before={"version": previous.version, "parts": previous.parts} if previous else None,
                 after={"name": row.name, "channel": row.channel, "locale": row.locale, "version": row.version,
                        "kind": kind, "parts": parts})
    return row, checked


def list_templates(session: Session) -> list[dict[str, Any]]:
    """Stored templates (newest version of each) and the file templates shipped in templates/."""
    rows = session.exec(select(MessageTemplate).order_by(MessageTemplate.name, MessageTemplate.channel,
                                                         MessageTemplate.locale, MessageTemplate.version)).all()
    newest = {(r.name, r.channel, r.locale): r for r in rows}
    out = [{"id": r.id, "name": r.name, "channel": r.channel, "locale": r.locale, "version": r.version,
            "kind": r.kind, "origin": "stored", "parts": r.parts} for r in newest.values()]
    out += [{"id": None, "name": s.name, "channel": s.channel, "locale": s.locale, "version": None, "origin": "file",
             "kind": s.kind, "parts": s.parts} for key, s in sorted(rendering.file_templates().items()) if key not in newest]
    return out


def get_template(session: Session, template_id: int) -> MessageTemplate:
    """One stored template version."""
    row = session.get(MessageTemplate, template_id)
    if row is None:
        raise NotFound(f"template {template_id} does not exist")
    return row


def preview_template(session: Session, ctx: Context, template_id: int, external_id: str) -> dict[str, Any]:
    """Render a stored template for one real customer (their tier, locale and unsubscribe link)."""
    row = get_template(session, template_id)
    customer = customer_by_external_id(session, external_id)
    segment = segments_frame(session, customer_id=customer.id)
    context = message_context(ctx, customer.id, external_id, row.locale, customer.time_zone,
                           segment["tier"][0] if segment.height else None, sample_offer=True)
    try:
        rendered = rendering.render(_source_of(row), context)
        facts = rendering.check_rendered(row.channel, rendered, context)
    except rendering.TemplateProblem as problem:
        raise _invalid(f"parts.{problem.part}", problem.reason) from problem
    # The rules may have changed since the template was saved (a phrase added to the list): preview says so.
    _raise_content_problems(content_problems(session, ctx, _source_of(row), rendered))
    return {"template_id": row.id, "customer": external_id, "rendered": rendered, **facts}


def message_context(ctx: Context, customer_id: int, external_id: str, locale: str, time_zone: str,
                    tier: str | None, *, offer: dict | None = None, sample_offer: bool = False,
                    campaign: str = "") -> dict[str, Any]:
    """What a template sees for one customer: their facts, the offer, the shop and their unsubscribe link."""
    context = _sample(ctx, locale, with_offer=sample_offer)
    context["customer"] = {"external_id": external_id, "locale": locale, "tier": tier, "time_zone": time_zone}
    context["unsubscribe_url"] = unsubscribe_url(ctx, customer_id)
    context["campaign"] = {"name": campaign or "preview"}
    if offer is not None:
        context["offer"] = offer
    return context


# ---------------------------------------------------------------- campaigns


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


def _check_semantics(session: Session, ctx: Context, spec: CampaignSpec) -> None:
    """Names the spec refers to exist: tiers, layers, tags, and a renderable template per channel that passes the
    content rules of the campaign's kind."""
    errors = []
    _, tiers = current_rule_set(session, "tier")
    _, layers = current_rule_set(session, "layer")
    _, tags = current_rule_set(session, "tags")
    known = {"tiers": {r.name for r in tiers.rules} | {tiers.fallback},
             "layers": {r.name for r in layers.rules} | {layers.fallback},
             "tags": {t.name for t in tags.tags}}
    for field, kind in (("tiers", "tiers"), ("exclude_tiers", "tiers"), ("layers", "layers"),
                        ("exclude_layers", "layers"), ("tags", "tags"), ("exclude_tags", "tags")):
        for index, value in enumerate(getattr(spec.audience, field)):
            if value not in known[kind]:
                errors.append({"field": f"audience.{field}.{index}",
                               "reason": f"unknown {kind[:-1]} '{value}' (known: {', '.join(sorted(known[kind]))})"})
    schedule = spec.schedule
    if schedule.trigger == "entered_tier" and schedule.value not in known["tiers"]:
        errors.append({"field": "schedule.value", "reason": f"unknown tier '{schedule.value}'"})
    if schedule.trigger == "entered_tag" and schedule.value not in known["tags"]:
        errors.append({"field": "schedule.value", "reason": f"unknown tag '{schedule.value}'"})
    rails = current_settings(session, ctx)[1]
    arms = [("", spec)] + ([(f"experiment.variants.{i}.", spec.for_variant(v))
                            for i, v in enumerate(spec.experiment.variants)] if spec.experiment else [])
    for prefix, arm in arms:
        errors += _template_errors(session, ctx, arm, prefix, rails)
    if errors:
        raise InvalidInput(f"invalid campaign: {', '.join(e['field'] for e in errors)}", errors=errors)


def _template_errors(session: Session, ctx: Context, spec: CampaignSpec, prefix: str,
                     rails: GuardRailSettings) -> list[dict[str, str]]:
    """A renderable template per channel step of the spec (an A/B arm's steps named under its variant)."""
    errors = []
    for index, step in enumerate(spec.channels):
        field = f"{prefix}channels.{index}.template"
        source = find_template(session, ctx, step.template, step.channel, ctx.settings.default_locale)
        if source is None:
            errors.append({"field": field, "reason": f"no {step.channel} template named '{step.template}'"})
            continue
        sample = _sample(ctx, source.locale, with_offer=spec.offer is not None)
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


def _reaches(name: str, spec: CampaignSpec) -> list[OfferReach]:
    """Whom the campaign's offers reach: its own and each A/B arm's."""
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
    reaches = [r for o in others for r in _reaches(o.name, CampaignSpec.model_validate(o.spec))]
    mine = _reaches(campaign.name, spec)
    if not mine:
        return []
    loyal = tuple(ctx.settings.loyal_tiers)
    existing = violations(reaches, loyal)
    return [v for v in violations([*reaches, *mine], loyal) if v not in existing]


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


def set_status(session: Session, ctx: Context, campaign_id: int, status: str, actor: str, *,
               may_define_transactional: bool = True) -> tuple[Campaign, list[dict]]:
    """Move a campaign draft → active ⇄ paused → archived; activation passes the fairness gate (a transactional
    campaign's status is an admin's to change)."""
    campaign = get_campaign(session, campaign_id)
    _admin_keeps_transactional(campaign, may_define_transactional)
    if status not in STATUSES:
        raise _invalid("status", f"must be one of {', '.join(STATUSES)}")
    if status == campaign.status:
        return campaign, []
    if status not in STATUS_MOVES[campaign.status]:
        raise Conflict(f"a {campaign.status} campaign cannot become {status}",
                       errors=[{"field": "status", "reason": f"allowed: {sorted(STATUS_MOVES[campaign.status])}"}])
    spec = CampaignSpec.model_validate(campaign.spec)
    warnings = _fairness_gate(session, ctx, campaign, spec) if status == "active" else []
    return _save(session, ctx, campaign, spec, status, actor, f"campaign.{status}"), warnings


# ---------------------------------------------------------------- planning


def next_occurrence(spec: CampaignSpec, today: date) -> date | None:
    """The first local date on or after today on which the schedule fires (within a year)."""
    for offset in range(367):
        day = today + timedelta(days=offset)
        if spec.schedule.fires_on(day):
            return day
    return None


def shop_today(ctx: Context) -> date:
    """Today in the shop's default zone, by the injected clock."""
    return local_date_of(ctx.clock.now(), ctx.settings.default_time_zone)


def _ledger(session: Session, now: datetime, horizon_days: int, customer_id: int | None) -> pl.DataFrame:
    """Live marketing messages near now (they count against caps) and offers still open."""
    statuses = ", ".join(f"'{s}'" for s in LIVE_STATUSES)
    one = "AND m.customer_id = :customer_id" if customer_id is not None else ""
    # A coupon stops being an open offer once an order used it: from then on the order's discount is what counts.
    query = (f"SELECT m.customer_id, m.channel, m.send_at, m.priority, m.id, "
             f"m.status = 'planned' AND m.attempts = 0, m.campaign_id, "
             f"CASE WHEN m.valid_until > :now AND m.redeemed_order_id IS NULL AND NOT EXISTS "
             f"(SELECT 1 FROM orders o WHERE o.coupon_code = m.coupon_code) THEN m.discount_value ELSE 0 END "
             f"FROM message m WHERE m.status IN ({statuses}) AND m.transactional = :no "
             f"AND m.send_at >= :start AND m.send_at < :end {one}")
    params = {"now": now, "no": False, "start": now - timedelta(days=horizon_days),
              "end": now + timedelta(days=horizon_days)} | ({"customer_id": customer_id} if customer_id else {})
    schema = LEDGER_SCHEMA | {"campaign_id": pl.Int64, "open_offer": pl.Float64}
    # On the session's own connection, never the columnar fast path (which reads committed data only): the
    # campaigns of one day are planned in one transaction, and each must count what the previous ones planned.
    return read_frame(session, query, params, schema, same_connection=True, small=customer_id is not None)


def load_inputs(session: Session, ctx: Context, spec: CampaignSpec, day: date, rails: GuardRails, *,
                customer_id: int | None = None,
                shared: SharedFrames | None = None) -> tuple[PlanInputs, dict[str, float]]:
    """Everything planning reads, through one columnar reader; with customer_id only that customer's rows.

    `shared` carries the frames planning does not change (customers, segments, tags, scores, consent, money,
    first orders) from one campaign of a day to the next; the ledger is always read again.
    """
    now = ctx.clock.now()
    horizon = max([c.window_days for c in rails.caps] + [400]) + spec.defer_days
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with columnar_reader(session) as reader:
        use = None if customer_id is not None else reader
        one = {"customer_id": customer_id} if customer_id is not None else {}
        frames = shared if shared is not None and customer_id is None else SharedFrames()

        def once(name: str, read: Callable[[], pl.DataFrame]) -> pl.DataFrame:
            return frames.whole(f"plan:{name}", read)  # prefixed: other steps cache other `customers` frames

        customers = once("customers", lambda: contactability_frame(session, reader=use, **one))
        segments = once("segments", lambda: segments_frame(session, reader=use, **one))
        tags = once("tags", lambda: tags_frame(session, reader=use, **one)) \
            if (spec.audience.tags or spec.audience.exclude_tags) else \
            pl.DataFrame(schema={"customer_id": pl.Int64, "tag": pl.String})
        scores = once("scores", lambda: scores_frame(session, reader=use, **one))
        consent = once("consent", lambda: consent_frame(session, reader=use, **one))
        ledger = _ledger(session, now, horizon, customer_id)
        money = once("money", lambda: order_money_frame(session, now - timedelta(days=365), now, reader=use, **one)) \
            if spec.makes_offers else pl.DataFrame(schema={"customer_id": pl.Int64, "spend": pl.Float64,
                                                    "discount": pl.Float64, "orders": pl.Int64,
                                                    "cost_known_value": pl.Float64, "cost": pl.Float64})
        needs_first = spec.schedule.trigger == "days_after_first_order"
        first_orders = once("first_orders", lambda: first_orders_frame(session, now, reader=use, **one)) \
            if needs_first else pl.DataFrame(schema={"customer_id": pl.Int64,
                                                     "first_order_at": pl.Datetime("us", "UTC")})
        # One customer's money says nothing about the shop's margins: ask for the shop-wide ratio separately.
        shop_ratio = shop_cost_ratio(session, now - timedelta(days=365), now) \
            if spec.makes_offers and customer_id is not None else None
    timings["read_s"] = round(time.perf_counter() - started, 3)
    entered = None
    if spec.schedule.trigger in ("entered_tier", "entered_tag"):
        dimension = "tier" if spec.schedule.trigger == "entered_tier" else "tag"
        entered = entered_between(session, dimension, spec.schedule.value or "", utc_midnight(day),
                                  utc_midnight(day) + timedelta(days=1), customer_id=customer_id)
    return PlanInputs(customers=customers, segments=segments, tags=tags, scores=scores, consent=consent,
                      ledger=ledger, money=money, first_orders=first_orders, entered=entered,
                      shop_cost_ratio=shop_ratio), timings



def _compute(session: Session, ctx: Context, campaign: Campaign, day: date, *, customer_id: int | None = None,
             shared: SharedFrames | None = None) -> tuple[Plan, PlanInputs, dict[str, float]]:
    spec = CampaignSpec.model_validate(campaign.spec)
    rails = guard_rails(session, ctx)  # read once: it bounds the ledger read and guides the plan
    inputs, timings = load_inputs(session, ctx, spec, day, rails, customer_id=customer_id, shared=shared)
    started = time.perf_counter()
    plan = plan_occurrence(spec, campaign.id, occurrence_key(day), day, inputs, rails, ctx.clock.now())
    timings["plan_s"] = round(time.perf_counter() - started, 3)
    return plan, inputs, timings


def _resolve_day(ctx: Context, spec: CampaignSpec, day: date | None) -> date:
    if day is not None:
        return day
    found = next_occurrence(spec, shop_today(ctx))
    if found is None:
        raise _invalid("date", "the schedule has no occurrence in the coming year")
    return found


def _offer_json(rows: pl.DataFrame) -> pl.Expr:
    if "offer_decision" not in rows.columns:
        return pl.lit(None, dtype=pl.String)
    return pl.when(pl.col("offer_decision").is_not_null()).then(pl.struct(
        decision=pl.col("offer_decision"), reasons=pl.col("offer_reasons"), amount_off=pl.col("offer_amount_off"),
        percent_off=pl.col("offer_percent_off"), min_spend=pl.col("min_spend"), max_discount=pl.col("max_discount"),
        free_shipping=pl.col("offer_free_shipping")).struct.json_encode())


def plan_campaign(session: Session, ctx: Context, campaign_id: int, day: date | None = None, *,
                  shared: SharedFrames | None = None) -> dict[str, Any]:
    """Plan one occurrence into the outbox; planning the same occurrence again adds nothing (`shared`: frames
    read by an earlier campaign of the same planning pass, see load_inputs)."""
    campaign = get_campaign(session, campaign_id)
    if campaign.status != "active":
        raise Conflict(f"campaign {campaign_id} is {campaign.status}; only active campaigns are planned")
    spec = CampaignSpec.model_validate(campaign.spec)
    day = _resolve_day(ctx, spec, day)
    if not spec.schedule.fires_on(day):
        raise _invalid("date", f"the schedule does not fire on {day.isoformat()}")
    key = occurrence_key(day)
    now = ctx.clock.now()
    # One planner at a time: each reads the ledger (caps, open offers against the discount budget) and then writes
    # to it, so two concurrent planners would each grant what only one may. Waits for the other to commit.
    lock_for_transaction(session, "planning")
    # Claim the occurrence first: a concurrent planner of the same occurrence waits here, then finds it taken.
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    claimed = session.connection().execute(insert(CampaignOccurrence).values(
        campaign_id=campaign.id, occurrence=key, campaign_version=campaign.version, planned_at=now, counts={})
        .on_conflict_do_nothing(index_elements=["campaign_id", "occurrence"])
        .returning(CampaignOccurrence.id)).first() is not None
    existing = session.exec(select(CampaignOccurrence).where(CampaignOccurrence.campaign_id == campaign.id,
                                                            CampaignOccurrence.occurrence == key)).one()
    if not claimed:
        return {"campaign_id": campaign.id, "occurrence": key, "already_planned": True, "added": 0,
                "counts": existing.counts}
    plan, _, timings = _compute(session, ctx, campaign, day, shared=shared)
    started = time.perf_counter()
    added = _write(session, campaign, spec, key, day, plan, now)
    timings["write_s"] = round(time.perf_counter() - started, 3)
    existing.counts = plan.counts | {"audience": plan.audience_size, "added": added}
    session.add(existing)
    session.flush()
    return {"campaign_id": campaign.id, "occurrence": key, "already_planned": False, "added": added,
            "counts": existing.counts, "timings": timings}


def _write(session: Session, campaign: Campaign, spec: CampaignSpec, key: str, day: date, plan: Plan,
           now: datetime) -> int:
    rows = plan.rows
    if rows.is_empty():
        return 0
    for column, dtype in (("discount_value", pl.Float64), ("coupon_code", pl.String),
                          ("valid_until", pl.Datetime("us", "UTC"))):
        if column not in rows.columns:
            rows = rows.with_columns(pl.lit(None, dtype=dtype).alias(column))
    frame = rows.select(
        campaign_id=pl.lit(campaign.id, dtype=pl.Int64), occurrence=pl.lit(key), customer_id="customer_id",
        channel="channel", status="status", reason="reason", priority=pl.lit(spec.priority, dtype=pl.Int64),
        transactional=pl.lit(spec.transactional), send_at="send_at",
        expires_at=pl.lit(utc_midnight(day) + timedelta(days=spec.defer_days + 2)), template="template",
        locale="locale", variant="variant", offer=_offer_json(rows),
        discount_value=pl.col("discount_value").fill_null(0.0),
        coupon_code="coupon_code", valid_until="valid_until", attempts=pl.lit(0, dtype=pl.Int64),
        created_at=pl.lit(now), updated_at=pl.lit(now))
    # Straight into the outbox (COPY on PostgreSQL): this transaction holds the occurrence's claim, so no other
    # planner can have written rows for it; the unique outbox key still guards against any duplicate.
    insert_frame(session, "message", frame, MESSAGE_TYPES)
    _preempt(session, campaign, plan.preempted, now)
    return frame.height


def _preempt(session: Session, campaign: Campaign, message_ids: list[int], now: datetime) -> int:
    """Give lower-priority planned messages' slots to this campaign: they become `preempted` and are never sent.

    Only messages still planned and never attempted change; one a dispatcher claimed meanwhile goes on, and the
    dispatcher's own cap check at send time then decides between the two (exactly once either way)."""
    changed = 0
    for start in range(0, len(message_ids), 10_000):  # SQLite binds at most 32,766 values per statement
        result = session.exec(update(Message).where(  # type: ignore[call-overload]
            Message.id.in_(message_ids[start:start + 10_000]), Message.status == "planned",
            Message.attempts == 0).values(status="preempted", reason=f"preempted_by_campaign_{campaign.id}"[:40],
                                          updated_at=now))
        changed += result.rowcount or 0
    return changed


def dry_run(session: Session, ctx: Context, campaign_id: int, day: date | None = None, sample_size: int = 5
            ) -> dict[str, Any]:
    """What planning would do now — audience, recipients per channel, exclusions per reason, samples, costs —
    writing nothing."""
    campaign = get_campaign(session, campaign_id)
    spec = CampaignSpec.model_validate(campaign.spec)
    day = _resolve_day(ctx, spec, day)
    plan, _, timings = _compute(session, ctx, campaign, day)
    planned = plan.rows.filter(pl.col("status") == "planned")
    units = ctx.settings.message_unit_cost
    samples, segments = _samples(session, ctx, campaign, spec, planned, sample_size)
    message_cost = sum(plan.counts.get(f"channel_{c}", 0) * units.get(c, 0.0) * (segments if c == "sms" else 1)
                       for c in ("sms", "email", "push", "phone"))
    discount_max = float(planned["discount_value"].sum()) if "discount_value" in planned.columns else 0.0
    excluded = {r: plan.counts.get(r, 0) for r in EXCLUSION_REASONS}
    adjusted = {r: plan.counts.get(r, 0) for r in ("deferred_quiet_hours", "deferred_cap", "offer_reduced")}
    return {"campaign_id": campaign.id, "campaign": campaign.name, "status": campaign.status,
            "occurrence": occurrence_key(day), "audience": plan.audience_size,
            "recipients": plan.counts.get("recipients", 0), "messages": plan.counts.get("messages", 0),
            "per_channel": {c: plan.counts.get(f"channel_{c}", 0) for c in ("sms", "email", "push", "phone")},
            "excluded": excluded, "adjusted": adjusted, "samples": samples,
            "estimated_cost": {"messages": round(message_cost, 2), "sms_segments_per_message": segments,
                               "discount_if_all_redeemed": round(discount_max, 2),
                               "discount_expected": round(discount_max * ctx.settings.offer_redemption_rate, 2),
                               "redemption_rate": ctx.settings.offer_redemption_rate},
            "timings": timings}


def _samples(session: Session, ctx: Context, campaign: Campaign, spec: CampaignSpec, planned: pl.DataFrame,
             size: int) -> tuple[list[dict[str, Any]], int]:
    """Rendered messages for the first few recipients, and the SMS segment count seen in them."""
    out, segments = [], 1
    pick = planned.sort("customer_id").head(size)
    if pick.is_empty():
        return out, segments
    tiers, external = {}, {}
    for customer_id in pick["customer_id"]:  # a handful of samples: one indexed lookup each
        segment = segments_frame(session, customer_id=customer_id)
        tiers[customer_id] = segment["tier"][0] if segment.height else None
        external[customer_id] = contactability_frame(session, customer_id=customer_id)["external_id"][0]
    for row in pick.iter_rows(named=True):
        source = find_template(session, ctx, row["template"], row["channel"], row["locale"])
        # The offer is described in the language of the template that will carry it.
        offer = offer_for_template(row | {"locale": source.locale if source else row["locale"]}) \
            if spec.makes_offers else None
        context = message_context(ctx, row["customer_id"], external.get(row["customer_id"], ""), row["locale"],
                               row["time_zone"], tiers.get(row["customer_id"]), offer=offer, campaign=campaign.name)
        try:
            rendered = rendering.render(source, context) if source else {}
            facts = rendering.check_rendered(row["channel"], rendered, context) if source else {}
        except rendering.TemplateProblem as problem:
            rendered, facts = {"error": str(problem)}, {}
        segments = max(segments, facts.get("segments", 1))
        out.append({"customer": external.get(row["customer_id"]), "channel": row["channel"],
                    "send_at": row["send_at"], "locale": source.locale if source else row["locale"],
                    "rendered": rendered, **facts})
    return out, segments


def offer_for_template(row: dict[str, Any]) -> dict[str, Any] | None:
    """The offer as templates see it, from a planned row (None when withheld or absent)."""
    if row.get("offer_decision") in (None, "withheld"):
        return None
    offer = {"amount_off": row.get("offer_amount_off"), "percent_off": row.get("offer_percent_off"),
             "min_spend": row.get("min_spend") or 0, "max_discount": row.get("max_discount"),
             "free_shipping": bool(row.get("offer_free_shipping")),
             "code": row.get("coupon_code"),
             "valid_until": row["valid_until"].date().isoformat() if row.get("valid_until") else None}
    offer["description"] = offer_description(offer, row["locale"])
    return offer


def eligibility(session: Session, ctx: Context, campaign_id: int, external_id: str, day: date | None = None
                ) -> dict[str, Any]:
    """Whether and why one customer would get this campaign's next (or given) occurrence."""
    campaign = get_campaign(session, campaign_id)
    spec = CampaignSpec.model_validate(campaign.spec)
    customer = customer_by_external_id(session, external_id)
    day = _resolve_day(ctx, spec, day)
    plan, inputs, _ = _compute(session, ctx, campaign, day, customer_id=customer.id)
    facts = _audience_facts(spec, inputs)
    rows = plan.rows.filter(pl.col("customer_id") == customer.id)
    reasons = [r for r in EXCLUSION_REASONS if plan.counts.get(r)]
    decisions = [{"channel": r["channel"], "status": r["status"], "reason": r["reason"], "send_at": r["send_at"],
                  "offer": offer_for_template(r) if spec.makes_offers else None,
                  "offer_decision": r.get("offer_decision"), "offer_reasons": r.get("offer_reasons")}
                 for r in rows.iter_rows(named=True)]
    would_receive = any(d["status"] == "planned" for d in decisions)
    consent = consent_frame(session, customer_id=customer.id)
    return {"campaign_id": campaign.id, "customer": external_id, "occurrence": occurrence_key(day),
            "in_audience": plan.audience_size > 0, "audience_checks": facts, "would_receive": would_receive,
            "reasons": reasons if not would_receive else [], "decisions": decisions,
            "consent": {c: s for _, c, s in consent.iter_rows()}}


def _audience_facts(spec: CampaignSpec, inputs: PlanInputs) -> list[dict[str, Any]]:
    """Each audience condition with the customer's value and whether it holds (one customer)."""
    seg = inputs.segments.row(0, named=True) if inputs.segments.height else {}
    score = inputs.scores.row(0, named=True) if inputs.scores.height else {}
    tags = set(inputs.tags["tag"]) if inputs.tags.height else set()
    rules, checks = spec.audience, []

    def add(condition: str, value: Any, holds: bool) -> None:
        checks.append({"condition": condition, "value": value, "holds": bool(holds)})

    if rules.tiers:
        add(f"tier in {rules.tiers}", seg.get("tier"), seg.get("tier") in rules.tiers)
    if rules.exclude_tiers:
        add(f"tier not in {rules.exclude_tiers}", seg.get("tier"), seg.get("tier") not in rules.exclude_tiers)
    if rules.layers:
        add(f"layer in {rules.layers}", seg.get("layer"), seg.get("layer") in rules.layers)
    if rules.tags:
        add(f"has a tag of {rules.tags}", sorted(tags), bool(tags & set(rules.tags)))
    if rules.exclude_tags:
        add(f"has no tag of {rules.exclude_tags}", sorted(tags), not tags & set(rules.exclude_tags))
    if rules.churn_risk_above is not None:
        p = score.get("probability")
        add(f"churn risk > {rules.churn_risk_above}", p, p is not None and p > rules.churn_risk_above)
    if rules.at_risk is not None or spec.schedule.trigger == "at_risk":
        wanted = True if rules.at_risk is None else rules.at_risk
        add(f"at risk = {wanted}", score.get("at_risk"), bool(score.get("at_risk")) == wanted)
    return checks


def _plan_isolated(session: Session, ctx: Context, campaign: Campaign, day: date,
                   shared: SharedFrames) -> dict[str, Any]:
    """Plan one occurrence in a savepoint: a campaign that cannot be planned rolls back alone, with its error."""
    try:
        with session.begin_nested():
            result = plan_campaign(session, ctx, campaign.id, day, shared=shared)
    except DomainError as failure:
        result = {"campaign_id": campaign.id, "occurrence": occurrence_key(day), "added": 0, "error": failure.detail}
    return result | {"campaign": campaign.name}


def plan_due(session: Session, ctx: Context, day: date | None = None) -> list[dict[str, Any]]:
    """Plan every active campaign that fires on the day, highest priority first (so it wins capped slots); a
    campaign that cannot be planned is reported with its error and the others go on."""
    day = day or shop_today(ctx)
    shared = SharedFrames()  # what planning does not change is read once for all of the day's campaigns
    return [_plan_isolated(session, ctx, campaign, day, shared) for campaign in list_campaigns(session, "active")
            if CampaignSpec.model_validate(campaign.spec).schedule.fires_on(day)]


def plan_ahead(session: Session, ctx: Context, day: date, before: datetime) -> list[dict[str, Any]]:
    """Plan the scheduled campaigns of `day` already when some customer's local send time on it comes before
    `before` (the next pipeline run): customers in zones far ahead of the scheduler's still get their local time."""
    zones = customer_time_zones(session)
    results: list[dict[str, Any]] = []
    shared = SharedFrames()
    for campaign in list_campaigns(session, "active"):
        schedule = CampaignSpec.model_validate(campaign.spec).schedule
        if schedule.kind == "triggered" or not schedule.fires_on(day) or not zones:
            continue
        earliest = min(local_to_utc(day, schedule.local_minute_of_day, zone) for zone in zones)
        if earliest < before:
            results.append(_plan_isolated(session, ctx, campaign, day, shared))
    return results


# ---------------------------------------------------------------- profile sections


def contact_history_section(request: ProfileRequest) -> dict[str, Any] | None:
    """The profile's contact history: the newest messages with status, channel and campaign."""
    # A driver read: the profile is the hot read (no ORM entities built for 50 messages).
    rows = driver_rows(request.session, "SELECT c.name, m.occurrence, m.channel, m.status, m.reason, m.send_at, "
                                        "m.coupon_code, m.discount_value FROM message m "
                                        "JOIN campaign c ON c.id = m.campaign_id WHERE m.customer_id = :customer_id "
                                        "ORDER BY m.send_at DESC LIMIT 50", {"customer_id": request.customer_id})
    return {"messages": [{"campaign": name, "occurrence": occurrence, "channel": channel, "status": status,
                          "reason": reason, "send_at": driver_time(send_at), "coupon_code": coupon_code,
                          "discount_value": discount_value}
                         for name, occurrence, channel, status, reason, send_at, coupon_code, discount_value in rows]}


def discount_budget_section(request: ProfileRequest) -> dict[str, Any] | None:
    """The profile's discount budget: spend and discount in the trailing 365 days, open offers, what is left."""
    now = request.ctx.clock.now()
    money = order_money_frame(request.session, now - timedelta(days=365), now, customer_id=request.customer_id)
    spend = float(money["spend"][0]) if money.height else 0.0
    discount = float(money["discount"][0]) if money.height else 0.0
    open_offers = _ledger(request.session, now, 400, request.customer_id)["open_offer"].sum() or 0.0
    rules = guard_rails(request.session, request.ctx).discounts
    return {"window_days": 365, "spend": round(spend, 2), "discount_granted": round(discount, 2),
            "open_offers": round(float(open_offers), 2), "budget_share": rules.budget_share,
            "budget": round(rules.budget_share * spend, 2),
            "left": round(budget_left(spend, discount, float(open_offers), rules), 2)}


def campaign_export(request: ProfileRequest) -> dict[str, Any] | None:
    """Every message, conversion and call task of a customer, for a data export."""
    session, customer_id = request.session, request.customer_id
    messages = session.exec(select(Message).where(Message.customer_id == customer_id).order_by(Message.send_at)).all()
    conversions = session.exec(select(Conversion).where(Conversion.customer_id == customer_id)).all()
    calls = session.exec(select(CallTask).where(CallTask.customer_id == customer_id)).all()
    return {"messages": [m.model_dump(exclude={"customer_id", "worker", "lease_until"}) for m in messages],
            "conversions": [c.model_dump(exclude={"customer_id", "id"}) for c in conversions],
            "call_tasks": [t.model_dump(exclude={"customer_id"}) for t in calls]}


ERASED_TEXT = "(erased)"


def campaign_erasure(request: ProfileRequest) -> dict[str, Any] | None:
    """On erasure: planned messages are cancelled (never sent); every text rendered from the customer or quoting
    them — call scripts and notes, provider error texts — is cleared."""
    session, customer_id, now = request.session, request.customer_id, request.ctx.clock.now()
    cancelled = session.exec(update(Message).where(  # type: ignore[call-overload]
        Message.customer_id == customer_id, Message.status == "planned").values(
        status="cancelled", reason="customer erased", updated_at=now)).rowcount
    # Provider error texts can quote the number or address a message went to.
    errors = session.exec(update(Message).where(  # type: ignore[call-overload]
        Message.customer_id == customer_id, Message.last_error.is_not(None)).values(last_error=None)).rowcount
    # A call script is the phone template rendered for this customer (their external id, say).
    calls = session.exec(update(CallTask).where(  # type: ignore[call-overload]
        CallTask.customer_id == customer_id).values(script=ERASED_TEXT, notes=None)).rowcount
    return {"planned_messages_cancelled": cancelled, "call_tasks_cleared": calls, "provider_errors_cleared": errors}


def latest_planned_send(session: Session) -> datetime | None:
    """When the last message still planned in the outbox is due (None when nothing is planned)."""
    newest = session.exec(select(func.max(Message.send_at)).where(Message.status == "planned")).one()
    return ensure_utc(newest) if newest is not None else None


def describe(campaign: Campaign) -> dict[str, Any]:
    """A campaign as the API shows it."""
    return {"id": campaign.id, "name": campaign.name, "status": campaign.status, "version": campaign.version,
            "priority": campaign.priority, "spec": campaign.spec, "created_at": campaign.created_at,
            "created_by": campaign.created_by, "updated_at": campaign.updated_at, "updated_by": campaign.updated_by}


def messages_json(rows: list[Message]) -> list[dict[str, Any]]:
    """Outbox rows for the API."""
    return [m.model_dump() | {"offer": m.offer if not isinstance(m.offer, str) else json.loads(m.offer)} for m in rows]



def install_defaults(session: Session, ctx: Context, actor: str, *, activate: bool = True) -> list[dict[str, Any]]:
    """Create the default touch plans that do not exist yet (by name); activate them unless told not to."""
    from campaigns.defaults import DEFAULT_CAMPAIGNS

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
