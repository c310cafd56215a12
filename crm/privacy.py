"""Data-subject requests: export everything held about one customer, and erase their personal data on request.

Erasure removes contact data (ciphertexts and blind indexes), free attributes, birthday and membership, replaces the
shop's external id with a random token, deletes raw events and opts every channel out; orders stay, linked to the
now anonymous row, so revenue and cohort statistics keep adding up. Upper packages add their parts through the
`exports` and `erasers` registries (e.g. campaigns cancel planned messages). Both are audited without the values."""

from __future__ import annotations

import secrets
from typing import Any

import polars as pl
from sqlalchemy import delete
from sqlmodel import Session, select

from crm import audit, state
from crm.models import ConsentStatus, Event, Order, OrderItem
from crm.profiles import ProfileRegistry, ProfileRequest
from crm.service import consent_history, consent_of, contact_of, customer_by_external_id, record_consent
from kit.channels import CHANNELS
from kit.clock import ensure_utc
from kit.context import Context
from kit.errors import InvalidInput

ERASED_PREFIX = "erased-"


def _rows(objects: list[Any], exclude: set[str] | None = None) -> list[dict[str, Any]]:
    return [o.model_dump(exclude=exclude) for o in objects]


def export_customer(session: Session, ctx: Context, exports: ProfileRegistry, external_id: str,
                    actor: str) -> dict[str, Any]:
    """Everything held about one customer, contact data decrypted (audited: who exported whom, not what)."""
    customer = customer_by_external_id(session, external_id)
    orders = list(session.exec(select(Order).where(Order.customer_id == customer.id).order_by(Order.ordered_at)))
    items = list(session.exec(select(OrderItem).where(OrderItem.order_id.in_([o.id for o in orders]))))  # type: ignore[attr-defined]
    by_order: dict[int, list[dict[str, Any]]] = {}
    for item in items:
        by_order.setdefault(item.order_id, []).append(item.model_dump(exclude={"id", "order_id"}))
    request = ProfileRequest(session=session, ctx=ctx, customer_id=customer.id, viewer_role="admin")
    now = ctx.clock.now()
    result = {
        "exported_at": now,
        "customer": {"external_id": customer.external_id, **contact_of(ctx, customer, masked=False),
                     "time_zone": customer.time_zone, "locale": customer.locale, "birthday": customer.birthday,
                     "signed_up_at": customer.signed_up_at, "membership_level": customer.membership_level,
                     "attributes": customer.attributes, "created_at": customer.created_at},
        "consent": consent_of(session, customer.id),
        "consent_history": _rows(consent_history(session, customer.id), {"id", "customer_id"}),
        "orders": [o.model_dump(exclude={"id", "customer_id"}) | {"items": by_order.get(o.id, [])} for o in orders],
        "events": _rows(list(session.exec(select(Event).where(Event.customer_id == customer.id)
                                          .order_by(Event.occurred_at))), {"id", "customer_id"}),
        **{name: part for name, part in exports.build(request).items() if part is not None},
    }
    audit.record(session, actor=actor, action="customer.export", entity="customer", entity_id=customer.id, at=now,
                 after={"parts": sorted(result)})
    return result


def erase_customer(session: Session, ctx: Context, erasers: ProfileRegistry, external_id: str, confirm: str,
                   actor: str) -> dict[str, Any]:
    """Erase one customer's personal data; `confirm` must repeat the external id (an erasure cannot be undone)."""
    if confirm != external_id:
        raise InvalidInput("confirm: repeat the customer's external id to erase it",
                           errors=[{"field": "confirm", "reason": "must equal the external id"}])
    customer = customer_by_external_id(session, external_id)
    now = ctx.clock.now()
    request = ProfileRequest(session=session, ctx=ctx, customer_id=customer.id, viewer_role="admin")
    parts = {name: counts for name, counts in erasers.build(request).items() if counts is not None}
    for channel in CHANNELS.consent_channels():
        record_consent(session, ctx, customer_id=customer.id, channel=channel, status=ConsentStatus.opted_out,
                       source="erasure", actor=actor)
    event_days = {ensure_utc(at).date() for at in session.exec(
        select(Event.occurred_at).where(Event.customer_id == customer.id)).all()}
    events = session.exec(delete(Event).where(Event.customer_id == customer.id)).rowcount  # type: ignore[call-overload]
    # The state forgets the deleted events in the same transaction (their buckets are recomputed, now empty).
    state.refresh(session, ctx, pl.DataFrame({"customer_id": [customer.id] * (len(event_days) or 1),
                                              "day": sorted(event_days) or [None]},
                                             schema={"customer_id": pl.Int64, "day": pl.Date}), cause="erasure")
    orders = len(session.exec(select(Order.id).where(Order.customer_id == customer.id)).all())
    customer.external_id = f"{ERASED_PREFIX}{secrets.token_hex(12)}"
    customer.email_ciphertext = customer.email_hash = None
    customer.phone_ciphertext = customer.phone_hash = None
    customer.name_ciphertext = customer.name_hash = None
    customer.push_tokens_ciphertext = customer.push_tokens_hash = None
    customer.attributes, customer.birthday, customer.membership_level = {}, None, None
    customer.updated_at = now
    session.add(customer)
    summary = {"customer_id": customer.id, "erased": ["external_id", "email", "phone", "name", "push_tokens", "attributes",
                                                      "birthday", "membership_level"],
               "events_deleted": events, "orders_kept_anonymised": orders, "consent": "opted_out on every channel",
               **parts}
    audit.record(session, actor=actor, action="customer.erase", entity="customer", entity_id=customer.id, at=now,
                 after=summary)
    session.flush()
    return {"customer": external_id} | {k: v for k, v in summary.items() if k != "customer_id"}
