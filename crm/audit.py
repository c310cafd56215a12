"""The audit trail: every write records who, when, what, before and after."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlmodel import Session, select

from crm.models import AuditLog


def _jsonable(value: Any) -> Any:
    """Make values (dates, decimals, nested containers) JSON-friendly for the audit row."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return "<redacted>"
    return value


def record(session: Session, *, actor: str, action: str, entity: str, entity_id: str | int | None,
           at: datetime, before: dict | None = None, after: dict | None = None) -> AuditLog:
    """Append one audit entry in the caller's transaction."""
    entry = AuditLog(
        at=at, actor=actor, action=action, entity=entity,
        entity_id=None if entity_id is None else str(entity_id),
        before=_jsonable(before) if before is not None else None,
        after=_jsonable(after) if after is not None else None,
    )
    session.add(entry)
    return entry


def entries(session: Session, *, entity: str | None = None, entity_id: str | None = None,
            since: datetime | None = None, limit: int = 100) -> list[AuditLog]:
    """The audit trail, newest first, filtered by entity, entity id and time."""
    query = select(AuditLog).order_by(AuditLog.id.desc()).limit(limit)
    if entity:
        query = query.where(AuditLog.entity == entity)
    if entity_id:
        query = query.where(AuditLog.entity_id == entity_id)
    if since:
        query = query.where(AuditLog.at >= since)
    return list(session.exec(query))
