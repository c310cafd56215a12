"""VIP call tasks for support agents (claim, call, record the outcome: it is the delivery) and admin retries."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlmodel import Session, select

from campaigns.delivery.webhooks import advance
from campaigns.models import CallTask, Campaign, Journey, Message
from crm import audit
from crm.models import Channel, ConsentStatus
from crm.service import contact_of, get_customer, record_consent
from kit.context import Context
from kit.errors import Conflict, Forbidden, InvalidInput, NotFound

# What an agent can record, and what it means for the message and the customer's phone consent.
OUTCOMES = {"reached": ("delivered", None), "voicemail": ("delivered", None), "no_answer": ("failed", None),
            "wrong_number": ("failed", None), "declined": ("delivered", ConsentStatus.opted_out)}
RETRYABLE = ("dead", "failed", "unknown")


def _task(session: Session, task_id: int) -> CallTask:
    task = session.get(CallTask, task_id)
    if task is None:
        raise NotFound(f"task {task_id} does not exist")
    return task


def describe_task(session: Session, ctx: Context, task: CallTask, *, reveal: bool) -> dict[str, Any]:
    """A task as an agent sees it: the phone number in full only to the agent who claimed it."""
    customer = get_customer(session, task.customer_id)
    campaign = session.get(Campaign, task.campaign_id) if task.campaign_id > 0 else \
        session.get(Journey, -task.campaign_id)  # a journey's call step (campaigns.models.journey_sender)
    contact = contact_of(ctx, customer, masked=not reveal) if customer else {}
    return {"id": task.id, "status": task.status, "campaign": campaign.name if campaign else None,
            "customer": customer.external_id if customer else None, "locale": customer.locale if customer else None,
            "time_zone": customer.time_zone if customer else None, "phone": contact.get("phone"),
            "script": task.script, "claimed_by": task.claimed_by, "claimed_at": task.claimed_at,
            "outcome": task.outcome, "notes": task.notes, "done_at": task.done_at, "created_at": task.created_at}


def list_tasks(session: Session, ctx: Context, actor: str, status: str | None, limit: int,
               after: int | None = None) -> list[dict[str, Any]]:
    """Tasks, oldest first, optionally by status; `after` is the id to continue after."""
    query = select(CallTask).order_by(CallTask.id).limit(limit)
    if after is not None:
        query = query.where(CallTask.id > after)
    if status is not None:
        query = query.where(CallTask.status == status)
    return [describe_task(session, ctx, t, reveal=t.claimed_by == actor and t.status == "claimed")
            for t in session.exec(query)]


def claim_task(session: Session, ctx: Context, task_id: int, actor: str) -> dict[str, Any]:
    """An agent takes an open task; the number is revealed to them (and the reveal audited)."""
    task = _task(session, task_id)
    if task.status != "open" and task.claimed_by != actor:
        raise Conflict(f"task {task_id} is {task.status} by someone else")
    now = ctx.clock.now()
    if task.status == "open":
        task.status, task.claimed_by, task.claimed_at = "claimed", actor, now
        session.add(task)
        audit.record(session, actor=actor, action="task.claim", entity="call_task", entity_id=task.id, at=now,
                     after={"status": "claimed", "phone_revealed_for_customer": task.customer_id})
    return describe_task(session, ctx, task, reveal=True)


def record_outcome(session: Session, ctx: Context, task_id: int, outcome: str, notes: str | None, actor: str
                   ) -> dict[str, Any]:
    """The call's outcome: it decides the message's delivery (and a refusal opts the customer out of calls)."""
    if outcome not in OUTCOMES:
        raise InvalidInput(f"outcome must be one of {', '.join(OUTCOMES)}",
                           errors=[{"field": "outcome", "reason": f"one of {', '.join(OUTCOMES)}"}])
    task = _task(session, task_id)
    if task.status == "done":
        raise Conflict(f"task {task_id} already has its outcome ({task.outcome})")
    if task.claimed_by != actor:
        raise Forbidden("claim the task before recording its outcome")
    now = ctx.clock.now()
    task.status, task.outcome, task.notes, task.done_at = "done", outcome, (notes or "")[:2000] or None, now
    session.add(task)
    status, consent = OUTCOMES[outcome]
    message = session.get(Message, task.message_id)
    if message is not None:
        advance(session, message, status, now, f"call_{outcome}")
    if consent is not None:
        record_consent(session, ctx, customer_id=task.customer_id, channel=Channel.phone, status=consent,
                       source="call_declined", actor=actor)
    audit.record(session, actor=actor, action="task.outcome", entity="call_task", entity_id=task.id, at=now,
                 after={"outcome": outcome})
    return describe_task(session, ctx, task, reveal=False)


def retry_message(session: Session, ctx: Context, message_id: int, actor: str) -> Message:
    """An admin sends a dead, failed or unknown message again (for unknown, accepting a possible duplicate)."""
    message = session.get(Message, message_id)
    if message is None:
        raise NotFound(f"message {message_id} does not exist")
    if message.status not in RETRYABLE:
        raise Conflict(f"message {message_id} is {message.status}; only {', '.join(RETRYABLE)} can be retried")
    now = ctx.clock.now()
    before = {"status": message.status, "reason": message.reason, "attempts": message.attempts}
    message.status, message.reason, message.send_at, message.attempts = "planned", "admin_retry", now, 0
    message.expires_at = now + timedelta(days=1)  # the old expiry may have passed while it waited for an admin
    message.updated_at = now
    session.add(message)
    audit.record(session, actor=actor, action="message.retry", entity="message", entity_id=message.id, at=now,
                 before=before, after={"status": "planned"})
    return message
