"""The activity feed: what customers just did or became, for consumers that react within minutes (journeys).

The one write path records an activity in the same transaction as the raw row, for the kinds some consumer listens
to (`activity_interest`) and only when it is fresh (a bulk backfill of last year's events triggers nothing). A
consumer claims rows by deleting them in its own transaction (skipping rows another consumer holds), so each is
acted on once whatever crashes; what it acts on must itself be idempotent, because a row written twice (an event
sent again) is claimed twice.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import polars as pl
from sqlalchemy import delete as sa_delete
from sqlalchemy import select, text
from sqlmodel import Session, delete

from crm.models import ActivityInterest, CustomerActivity
from kit.bulkwrite import insert_frame
from kit.db import is_postgres

ANY = "*"
FRESH = timedelta(days=1)  # older activity, when it arrives, is history: it updates the state, it triggers nothing
KINDS = ("event", "order", "refund", "signup", "tier", "layer", "tag", "at_risk")
ACTIVITY_TYPES = {"customer_id": "int", "kind": "text", "name": "text", "ref_id": "int", "properties": "json",
                  "occurred_at": "timestamp", "recorded_at": "timestamp"}
ACTIVITY_SCHEMA = {"id": pl.Int64, "customer_id": pl.Int64, "kind": pl.String, "name": pl.String,
                   "ref_id": pl.Int64, "properties": pl.String, "occurred_at": pl.Datetime("us", "UTC")}


def interests(session: Session) -> dict[str, set[str]]:
    """The names listened to per kind ('*': every name)."""
    wanted: dict[str, set[str]] = {}
    for kind, name in session.connection().execute(select(ActivityInterest.kind, ActivityInterest.name)).all():
        wanted.setdefault(kind, set()).add(name)
    return wanted


def set_interests(session: Session, pairs: set[tuple[str, str]]) -> None:
    """Replace the listened-to (kind, name) pairs (the consumer's whole set)."""
    session.exec(delete(ActivityInterest))  # type: ignore[call-overload]
    session.add_all([ActivityInterest(kind=kind, name=name) for kind, name in sorted(pairs)])
    session.flush()


def _names_clause(names: set[str], column: str) -> tuple[str, dict[str, Any]]:
    if ANY in names:
        return "", {}
    listed = sorted(names)
    binds = {f"name_{i}": name for i, name in enumerate(listed)}
    return f"AND {column} IN ({', '.join(':' + k for k in binds)})", binds


def record_staged(session: Session, kind: str, stage: str, now: datetime) -> int:
    """Record the fresh rows of a staged batch just written (events or orders, joined back by external id)."""
    names = interests(session).get(kind)
    if not names:
        return 0
    if kind == "event":
        source = ("SELECT t.customer_id, 'event', t.type, t.id, t.properties, t.occurred_at, :now FROM event t "
                  f"JOIN {stage} s ON s.external_id = t.external_id WHERE t.occurred_at >= :fresh")
        clause, binds = _names_clause(names, "t.type")
    else:
        source = ("SELECT t.customer_id, 'order', t.status, t.id, NULL, t.ordered_at, :now FROM orders t "
                  f"JOIN {stage} s ON s.external_id = t.external_id WHERE t.ordered_at >= :fresh")
        clause, binds = _names_clause(names, "t.status")
    result = session.connection().execute(text(
        "INSERT INTO customer_activity (customer_id, kind, name, ref_id, properties, occurred_at, recorded_at) "
        f"{source} {clause}"), {"now": now, "fresh": now - FRESH} | binds)
    return result.rowcount or 0


def record(session: Session, rows: pl.DataFrame, now: datetime) -> int:
    """Record activity rows (customer_id, kind, name, occurred_at; ref_id and properties optional) that some
    consumer listens to and that are fresh."""
    if rows.is_empty():
        return 0
    wanted = interests(session)
    if not wanted:
        return 0
    listened = pl.lit(False)
    for kind, names in wanted.items():
        listened = listened | ((pl.col("kind") == kind) & (pl.lit(True) if ANY in names
                                                            else pl.col("name").is_in(sorted(names))))
    for column, dtype in (("ref_id", pl.Int64), ("properties", pl.String), ("name", pl.String)):
        if column not in rows.columns:
            rows = rows.with_columns(pl.lit(None, dtype=dtype).alias(column))
    kept = rows.filter(listened & (pl.col("occurred_at") >= now - FRESH)).with_columns(recorded_at=pl.lit(now))
    insert_frame(session, "customer_activity", kept, ACTIVITY_TYPES)
    return kept.height


def claim(session: Session, limit: int) -> pl.DataFrame:
    """Take (delete) up to `limit` of the oldest activity rows in the caller's transaction, skipping rows another
    consumer holds; they come back if the transaction rolls back."""
    table = CustomerActivity.__table__
    picked = select(table.c.id).order_by(table.c.id).limit(limit)
    if is_postgres(session):
        picked = picked.with_for_update(skip_locked=True)
    rows = session.connection().execute(sa_delete(table).where(table.c.id.in_(picked)).returning(
        table.c.id, table.c.customer_id, table.c.kind, table.c.name, table.c.ref_id, table.c.properties,
        table.c.occurred_at)).all()
    return pl.DataFrame([(r[0], r[1], r[2], r[3], r[4], None if r[5] is None else json.dumps(r[5]), r[6])
                         for r in rows], schema=ACTIVITY_SCHEMA, orient="row").sort("id")


def pending(session: Session) -> int:
    """How many activity rows wait to be claimed."""
    return int(session.connection().execute(text("SELECT COUNT(*) FROM customer_activity")).scalar_one())
