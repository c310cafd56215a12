"""The audit trail: every write records who, when, what, before and after."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlmodel import Session

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
