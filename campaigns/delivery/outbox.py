"""Reading the outbox: messages filtered for the API and the console, and their JSON shape."""

from __future__ import annotations

import json
from typing import Any

from sqlmodel import Session, select

from campaigns.models import Message


def list_messages(session: Session, *, status: str | None = None, campaign_id: int | None = None,
                  customer_id: int | None = None, after: int | None = None, limit: int = 100) -> list[Message]:
    """Outbox rows in id order, filtered by status, campaign or customer; `after` is the id cursor."""
    query = select(Message).order_by(Message.id).limit(limit)
    if status is not None:
        query = query.where(Message.status == status)
    if campaign_id is not None:
        query = query.where(Message.campaign_id == campaign_id)
    if customer_id is not None:
        query = query.where(Message.customer_id == customer_id)
    if after is not None:
        query = query.where(Message.id > after)
    return list(session.exec(query))


def messages_json(rows: list[Message]) -> list[dict[str, Any]]:
    """Outbox rows for the API."""
    return [m.model_dump() | {"offer": m.offer if not isinstance(m.offer, str) else json.loads(m.offer)} for m in rows]
