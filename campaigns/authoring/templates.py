"""Message templates: stored versions over the shipped files, the content rules by kind, previews, and what a
template sees for one customer (their facts, the offer in words, the unsubscribe link)."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, select

from campaigns.authoring import compliance, rendering
from campaigns.authoring.guard_rail_settings import GuardRailSettings, current_settings
from campaigns.models import (
    MessageTemplate,
)
from crm import audit
from crm.service import (
    customer_by_external_id,
)
from kit.channels import CHANNELS
from kit.context import Context
from kit.errors import Forbidden, InvalidInput, NotFound
from segmentation.service import segments_frame

TEMPLATE_KINDS = ("marketing", "transactional")


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
    return f"{ctx.settings.public_base_url}/v1/unsubscribe/{ctx.cipher.sign_link('unsubscribe', str(customer_id))}"


def shop_sample_context(ctx: Context, locale: str, with_offer: bool = True) -> dict[str, Any]:
    """The sample context templates are checked against, with this shop's name and a sample unsubscribe link."""
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
    if CHANNELS.get(source.channel).opt_out_text and \
            not compliance.has_opt_out_text(rendered.get("body", ""), rails.sms_opt_out_texts):
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
            raise InvalidInput.field(field, "is required")
        if len(body[field]) > longest:
            raise InvalidInput.field(field, f"longer than {longest} characters")
    parts = body.get("parts")
    if not isinstance(parts, dict) or not all(isinstance(v, str) for v in parts.values()):
        raise InvalidInput.field("parts", "must map part names to template text")
    for part, text in parts.items():
        if len(text) > rendering.MAX_SOURCE_CHARS:
            raise InvalidInput.field(f"parts.{part}", f"longer than {rendering.MAX_SOURCE_CHARS} characters")
    kind = body.get("kind", "marketing")
    if kind not in TEMPLATE_KINDS:
        raise InvalidInput.field("kind", f"must be one of {', '.join(TEMPLATE_KINDS)}")
    if kind == "transactional" and not may_define_transactional:
        raise Forbidden("only an admin may define transactional templates",
                        errors=[{"field": "kind", "reason": "transactional templates are defined by admins"}])
    source = rendering.TemplateSource(name=body["name"], channel=body["channel"], locale=body["locale"],
                                      parts=parts, origin="candidate", kind=kind)
    try:
        checked = rendering.validate(source, shop_sample_context(ctx, body["locale"]))
    except rendering.TemplateProblem as problem:
        raise InvalidInput.field(f"parts.{problem.part}" if body["channel"] in CHANNELS and problem.part in CHANNELS.get(body["channel"]).parts
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
        raise InvalidInput.field(f"parts.{problem.part}", problem.reason) from problem
    # The rules may have changed since the template was saved (a phrase added to the list): preview says so.
    _raise_content_problems(content_problems(session, ctx, _source_of(row), rendered))
    return {"template_id": row.id, "customer": external_id, "rendered": rendered, **facts}


def message_context(ctx: Context, customer_id: int, external_id: str, locale: str, time_zone: str,
                    tier: str | None, *, offer: dict | None = None, sample_offer: bool = False,
                    campaign: str = "") -> dict[str, Any]:
    """What a template sees for one customer: their facts, the offer, the shop and their unsubscribe link."""
    context = shop_sample_context(ctx, locale, with_offer=sample_offer)
    context["customer"] = {"external_id": external_id, "locale": locale, "tier": tier, "time_zone": time_zone}
    context["unsubscribe_url"] = unsubscribe_url(ctx, customer_id)
    context["campaign"] = {"name": campaign or "preview"}
    if offer is not None:
        context["offer"] = offer
    return context


def offer_description(offer: dict, locale: str) -> str:
    """An offer in words for templates, e.g. '50 off orders of 300 or more' / '满300减50'."""
    chinese = locale.lower().startswith("zh")
    parts = []
    if offer.get("amount_off"):
        amount, minimum = f"{offer['amount_off']:g}", offer.get("min_spend") or 0
        if chinese:
            parts.append(f"满{minimum:g}减{amount}" if minimum else f"立减{amount}")
        else:
            parts.append(f"{amount} off orders of {minimum:g} or more" if minimum else f"{amount} off")
    if offer.get("percent_off"):
        percent, minimum, cap = offer["percent_off"], offer.get("min_spend") or 0, offer.get("max_discount")
        if chinese:
            parts.append((f"满{minimum:g}享" if minimum else "") + f"{(100 - percent) / 10:g}折"
                         + (f"（最多减{cap:g}）" if cap else ""))
        else:
            parts.append(f"{percent:g}% off" + (f" orders of {minimum:g} or more" if minimum else "")
                         + (f" (up to {cap:g} off)" if cap else ""))
    if offer.get("free_shipping"):
        parts.append("包邮" if chinese else "free shipping")
    return ("，" if chinese else " + ").join(parts)


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
