"""Single items and small batches (ingestion API, shop webhooks) through the import's write path.

Items arrive as JSON objects; each batch becomes the same text frame a file block becomes, is validated by the
same validators and written by the same loaders, and moves the customer state in the same transaction. A bad
item is reported by its index and field; the good items of the batch are kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import polars as pl
from sqlmodel import Session, select

from crm import activity, audit, ingest, state
from crm.models import Order, OrderRefund
from crm.validation import ROW, SPECS, validate
from kit.clock import ensure_utc
from kit.context import Context
from kit.errors import InvalidInput, NotFound

MAX_BATCH = 1000

# API field -> import column, where the names differ (the API speaks the shop's words).
RENAMES = {
    "events": {"customer_id": "customer_external_id", "time": "occurred_at", "unique_id": "external_id"},
    "orders": {"customer_id": "customer_external_id"},
    "customers": {},
}


@dataclass
class ItemsResult:
    """What a batch did: totals and one result per item (index, status, errors)."""

    accepted: int = 0
    rejected: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The answer body."""
        return {"accepted": self.accepted, "rejected": self.rejected, "inserted": self.inserted,
                "updated": self.updated, "unchanged": self.unchanged, "items": self.items}


def as_batch(body: Any, what: str) -> list[Any]:
    """One object or a list of them (at most MAX_BATCH); anything else is a 422 naming the body."""
    items = [body] if isinstance(body, dict) else body
    if not isinstance(items, list) or not items:
        raise InvalidInput(f"the body must be one {what} object or a non-empty array of them",
                           errors=[{"field": "body", "reason": "not an object or a non-empty array"}])
    if len(items) > MAX_BATCH:
        raise InvalidInput(f"at most {MAX_BATCH} {what}s per request",
                           errors=[{"field": "body", "reason": f"{len(items)} items; at most {MAX_BATCH}"}])
    return items


def _frame(kind: str, items: list[dict[str, Any]], indexes: list[int]) -> pl.DataFrame:
    columns = SPECS[kind].columns
    rows = [[index, *(ingest.as_text(item.get(c)) for c in columns)] for index, item in zip(indexes, items, strict=True)]
    return pl.DataFrame(rows, schema={ROW: pl.Int64, **{c: pl.String for c in columns}}, orient="row")


def _columns(kind: str, item: dict[str, Any]) -> dict[str, Any]:
    """An API item in the import's column names (consent as one column per channel)."""
    renamed = {RENAMES[kind].get(k, k): v for k, v in item.items()}
    if kind == "customers" and isinstance(item.get("consent"), dict):
        for channel, status in item["consent"].items():
            renamed[f"{channel}_consent"] = status
    return renamed


def write_items(session: Session, ctx: Context, kind: str, body: Any, *, cause: str,
                first_wins: bool = False) -> ItemsResult:
    """Validate and write a batch of one kind (customers, orders or events) in the caller's transaction."""
    items = as_batch(body, kind.removesuffix("s"))
    result = ItemsResult()
    errors: dict[int, list[dict[str, str]]] = {}
    usable, indexes = [], []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            errors[index] = [{"field": f"[{index}]", "reason": "not a JSON object"}]
            continue
        usable.append(_columns(kind, item))
        indexes.append(index)
    present = {c for c in SPECS[kind].columns if any(c in item for item in usable)}
    for item, index in zip(usable, indexes, strict=True):
        unknown = sorted(set(item) - set(SPECS[kind].columns) - {"consent", "items"})
        if unknown:
            errors.setdefault(index, []).append({"field": unknown[0], "reason": "not a known field"})
    order_items = _order_items(usable, indexes, errors) if kind == "orders" else None
    frame = _frame(kind, usable, indexes).filter(~pl.col(ROW).is_in(list(errors)))
    frame = frame.select(ROW, *[c for c in SPECS[kind].columns if c in present or c in SPECS[kind].required])
    defaults = ({"default_time_zone": ctx.settings.default_time_zone, "default_locale": ctx.settings.default_locale,
                 "default_region": ctx.settings.default_phone_region, "now": ctx.clock.now()}
                if kind == "customers" else {})
    good, bad = validate(kind, frame, **defaults)
    # The same id twice in one batch: an event is stored once (a retry inside the batch); an order or a customer
    # keeps its first item and the repeat is refused, as in a file.
    repeated = good.filter(pl.col(SPECS[kind].key).is_duplicated() & ~pl.col(SPECS[kind].key).is_first_distinct())
    good = good.unique(subset=[SPECS[kind].key], keep="first", maintain_order=True)
    if kind != "events":
        bad = pl.concat([bad, repeated.select(pl.col(ROW).alias("row"), pl.lit(SPECS[kind].key).alias("field"),
                                              pl.lit("duplicate id inside the batch (first kept)").alias("reason"))])
    marks = present | ({ingest.FIRST_WINS} if first_wins else set())
    batch = ingest.LOADERS[kind](session, ctx, good, marks) if not good.is_empty() else ingest.BatchResult()
    touched = batch.touched
    for row in pl.concat([bad, batch.errors]).iter_rows(named=True):
        errors.setdefault(row["row"], []).append({"field": row["field"], "reason": row["reason"]})
    if order_items is not None:
        written_orders = set(good["_row"].to_list()) - set(errors)
        lines = order_items.filter(pl.col("_order_row").is_in(list(written_orders)))
        if not lines.is_empty():
            line_result = _write_lines(session, ctx, lines)
            touched = pl.concat([touched, line_result.touched])
            for row in line_result.errors.iter_rows(named=True):
                errors.setdefault(row["row"], []).append(row)
    state.refresh(session, ctx, touched, cause=cause)
    result.inserted, result.updated, result.unchanged = batch.inserted, batch.updated, batch.unchanged
    for index in range(len(items)):
        if index in errors:
            result.rejected += 1
            result.items.append({"index": index, "status": "rejected",
                                 "errors": [{"field": e["field"], "reason": e["reason"]} for e in errors[index]]})
        else:
            result.accepted += 1
            result.items.append({"index": index, "status": "accepted"})
    return result


def _order_items(orders: list[dict[str, Any]], indexes: list[int],
                 errors: dict[int, list[dict[str, str]]]) -> pl.DataFrame:
    """The `items` of each order as order-line rows (line numbers from their place when not given)."""
    columns = SPECS["order_items"].columns
    rows = []
    for order, index in zip(orders, indexes, strict=True):
        lines = order.get("items") or []
        if not isinstance(lines, list) or not all(isinstance(line, dict) for line in lines):
            errors.setdefault(index, []).append({"field": "items", "reason": "not an array of objects"})
            continue
        for number, line in enumerate(lines, start=1):
            line = {"order_external_id": order.get("external_id"), "line_no": number} | line
            rows.append([index, len(rows), *(ingest.as_text(line.get(c)) for c in columns)])
    return pl.DataFrame(rows, schema={"_order_row": pl.Int64, ROW: pl.Int64, **{c: pl.String for c in columns}},
                        orient="row")


def _write_lines(session: Session, ctx: Context, lines: pl.DataFrame) -> ingest.BatchResult:
    owner = dict(zip(lines[ROW].to_list(), lines["_order_row"].to_list(), strict=True))
    good, bad = validate("order_items", lines.drop("_order_row"))
    result = ingest.load_order_items(session, ctx, good, set(SPECS["order_items"].columns)) if not good.is_empty() \
        else ingest.BatchResult()
    errors = pl.concat([bad, result.errors])
    result.errors = errors.with_columns(
        pl.col("row").replace_strict(owner, return_dtype=pl.Int64),
        pl.concat_str([pl.lit("items."), pl.col("field")]).alias("field"))
    return result


# ---------------------------------------------------------------- refunds and cancels


def refund_order(session: Session, ctx: Context, order_external_id: str, body: dict[str, Any], *, actor: str,
                 cause: str = "refund") -> dict[str, Any]:
    """Record a refund (whole or partial) of an order; spend everywhere counts net of it. Idempotent by refund id."""
    order = session.exec(select(Order).where(Order.external_id == order_external_id)).first()
    if order is None:
        raise NotFound(f"order '{order_external_id}' does not exist")
    refund_id = str(body.get("refund_id") or body.get("id") or "")
    if not refund_id or len(refund_id) > 128:
        raise InvalidInput("refund_id: a refund needs its own id (at most 128 characters), so a retry counts once",
                           errors=[{"field": "refund_id", "reason": "missing or longer than 128 characters"}])
    amount = _money(body.get("amount"), "amount")
    refunded_at = _moment(body.get("refunded_at"), ctx)
    lines = body.get("items") or []
    if not isinstance(lines, list):
        raise InvalidInput("items: a list of refunded lines", errors=[{"field": "items", "reason": "not a list"}])
    existing = session.exec(select(OrderRefund).where(OrderRefund.external_id == refund_id)).first()
    if existing is not None:
        if existing.order_id != order.id or existing.amount != amount:
            raise InvalidInput(f"refund '{refund_id}' was already recorded with another order or amount",
                               errors=[{"field": "refund_id", "reason": "already used for another refund"}])
        return _refund_answer(order, existing, replayed=True)
    room = Decimal(order.amount_paid) - Decimal(order.refunded_amount)
    if amount > room:
        raise InvalidInput(f"amount: {amount} is more than the {room} not yet refunded",
                           errors=[{"field": "amount", "reason": f"more than the {room} left to refund"}])
    refund = OrderRefund(external_id=refund_id, order_id=order.id, amount=amount, refunded_at=refunded_at,
                         items=lines, reason=(str(body["reason"])[:200] if body.get("reason") else None),
                         created_at=ctx.clock.now())
    session.add(refund)
    order.refunded_amount = Decimal(order.refunded_amount) + amount
    order.status = "refunded" if order.refunded_amount >= Decimal(order.amount_paid) else "partially_refunded"
    order.updated_at = ctx.clock.now()
    session.add(order)
    session.flush()
    audit.record(session, actor=actor, action="order.refund", entity="order", entity_id=order.id,
                 at=order.updated_at, after={"refund_id": refund_id, "amount": float(amount), "status": order.status})
    activity.record(session, pl.DataFrame({"customer_id": [order.customer_id], "kind": ["refund"],
                                           "name": [order.status], "ref_id": [order.id],
                                           "occurred_at": [ensure_utc(refunded_at)]}), order.updated_at)
    _refresh_order(session, ctx, order, cause)
    return _refund_answer(order, refund, replayed=False)


def _refresh_order(session: Session, ctx: Context, order: Order, cause: str) -> None:
    state.refresh(session, ctx, pl.DataFrame({"customer_id": [order.customer_id],
                                              "day": [ensure_utc(order.ordered_at).date()]}), cause=cause)


def _refund_answer(order: Order, refund: OrderRefund, *, replayed: bool) -> dict[str, Any]:
    return {"order_id": order.external_id, "refund_id": refund.external_id, "amount": float(refund.amount),
            "status": order.status, "refunded_amount": float(order.refunded_amount),
            "net_amount": float(Decimal(order.amount_paid) - Decimal(order.refunded_amount)), "replayed": replayed}


def _money(value: Any, name: str) -> Decimal:
    try:
        amount = Decimal(str(value)).quantize(Decimal("0.01"))
    except (ArithmeticError, ValueError):
        raise InvalidInput(f"{name}: not a number", errors=[{"field": name, "reason": "not a number"}]) from None
    if not amount.is_finite() or amount <= 0:
        raise InvalidInput(f"{name}: must be more than 0", errors=[{"field": name, "reason": "not positive"}])
    return amount


def _moment(value: Any, ctx: Context) -> datetime:
    if value in (None, ""):
        return ctx.clock.now()
    try:
        return ensure_utc(datetime.fromisoformat(str(value).replace("Z", "+00:00")))
    except ValueError:
        raise InvalidInput("refunded_at: not an ISO 8601 time",
                           errors=[{"field": "refunded_at", "reason": "not an ISO 8601 time"}]) from None


def dumps(value: Any) -> str:
    """Canonical JSON of a body, for digests."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
