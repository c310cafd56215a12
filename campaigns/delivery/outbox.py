"""Reading the outbox: messages filtered for the API and the console, and their JSON shape."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, select

from campaigns.models import Message
from crm.service import external_ids_of


def list_messages(session: Session, *, status: str | None = None, campaign_id: int | None = None,
                  customer_id: int | None = None, channel: str | None = None, after: int | None = None,
                  limit: int = 100) -> list[Message]:
    """Outbox rows in id order, filtered by status, campaign, customer or channel; `after` is the id cursor."""
    query = select(Message).order_by(Message.id).limit(limit)
    if status is not None:
        query = query.where(Message.status == status)
    if channel is not None:
        query = query.where(Message.channel == channel)
    if campaign_id is not None:
        query = query.where(Message.campaign_id == campaign_id)
    if customer_id is not None:
        query = query.where(Message.customer_id == customer_id)
    if after is not None:
        query = query.where(Message.id > after)
    return list(session.exec(query))


def messages_json(session: Session, rows: list[Message]) -> list[dict[str, Any]]:
    """Outbox rows for the API: the customer by the shop's id (internal row ids never leave the service)."""
    external = external_ids_of(session, sorted({m.customer_id for m in rows}))
    return [{k: v for k, v in m.model_dump().items() if k != "customer_id"}
            | {"customer": external.get(m.customer_id),
               "offer": m.offer if not isinstance(m.offer, str) else json.loads(m.offer)} for m in rows]


OPEN_STATUSES = ("planned", "sending", "unknown", "dead")  # what still needs a send, an answer or an operator


def depth(session: Session) -> dict[tuple[str, str], int]:
    """Messages waiting in the outbox, by (status, channel): planned, sending, unknown and dead letters."""
    rows = session.exec(select(Message.status, Message.channel, func.count()).where(
        Message.status.in_(OPEN_STATUSES)).group_by(Message.status, Message.channel))
    return {(status, channel): count for status, channel, count in rows}
