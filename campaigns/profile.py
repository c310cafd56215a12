"""campaigns' parts of a customer's profile: contact history and discount budget sections, the data export and
the erasure of everything rendered from the customer."""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, update
from sqlmodel import select

from campaigns.models import (
    CallTask,
    Conversion,
    JourneyEnrollment,
    JourneyStep,
    Message,
)
from campaigns.planning.discounts import budget_left
from campaigns.planning.guardrails import guard_rails
from campaigns.planning.plans import read_ledger
from crm.profiles import ProfileRequest
from crm.service import money_frame
from crm.state import MONEY_DAYS
from kit.columnar import driver_rows, driver_time


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
    money, source = money_frame(request.session, now, customer_id=request.customer_id)
    spend = float(money["spend"][0]) if money.height else 0.0
    discount = float(money["discount"][0]) if money.height else 0.0
    open_offers = read_ledger(request.session, now, 0, request.customer_id)["open_offer"].sum() or 0.0
    rules = guard_rails(request.session, request.ctx).discounts
    return {"window_days": MONEY_DAYS, "read_from": source, "spend": round(spend, 2), "discount_granted": round(discount, 2),
            "open_offers": round(float(open_offers), 2), "budget_share": rules.budget_share,
            "budget": round(rules.budget_share * spend, 2),
            "left": round(budget_left(spend, discount, float(open_offers), rules), 2)}


def campaign_export(request: ProfileRequest) -> dict[str, Any] | None:
    """Every message, conversion, call task and journey enrollment (with its steps) of a customer, for an export."""
    session, customer_id = request.session, request.customer_id
    messages = session.exec(select(Message).where(Message.customer_id == customer_id).order_by(Message.send_at)).all()
    conversions = session.exec(select(Conversion).where(Conversion.customer_id == customer_id)).all()
    calls = session.exec(select(CallTask).where(CallTask.customer_id == customer_id)).all()
    enrollments = session.exec(select(JourneyEnrollment).where(JourneyEnrollment.customer_id == customer_id)
                               .order_by(JourneyEnrollment.id)).all()
    steps = session.exec(select(JourneyStep).where(JourneyStep.enrollment_id.in_([e.id for e in enrollments]))
                         .order_by(JourneyStep.enrollment_id, JourneyStep.seq)).all() if enrollments else []
    return {"messages": [m.model_dump(exclude={"customer_id", "worker", "lease_until"}) for m in messages],
            "conversions": [c.model_dump(exclude={"customer_id", "id"}) for c in conversions],
            "call_tasks": [t.model_dump(exclude={"customer_id"}) for t in calls],
            "journey_enrollments": [e.model_dump(exclude={"customer_id"}) for e in enrollments],
            "journey_steps": [t.model_dump(exclude={"id"}) for t in steps]}


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
    # Journeys: nothing more is sent, and the entry's event properties (which a shop may fill with anything) go.
    journeys = session.exec(update(JourneyEnrollment).where(  # type: ignore[call-overload]
        JourneyEnrollment.customer_id == customer_id).values(
        status=case((JourneyEnrollment.status.in_(("pending", "active")), "exited"), else_=JourneyEnrollment.status),
        end_reason=case((JourneyEnrollment.status.in_(("pending", "active")), "customer_erased"),
                        else_=JourneyEnrollment.end_reason),
        step_id=None, wake_at=None, context={}, updated_at=now)).rowcount
    return {"planned_messages_cancelled": cancelled, "call_tasks_cleared": calls, "provider_errors_cleared": errors,
            "journey_enrollments_ended": journeys}
