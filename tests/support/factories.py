"""Plain factory helpers: CSV text for imports and direct imports through the real importer."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from sqlmodel import Session

from crm import ingest
from kit.context import Context


def csv_text(header: Iterable[str], rows: Iterable[Iterable[object]]) -> bytes:
    """A CSV document as bytes."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buffer.getvalue().encode()


def run(session: Session, ctx: Context, kind: str, data: bytes, fmt: str = "csv", block_bytes: int | None = None):
    """Import bytes through the real importer and return the job."""
    options = {"block_bytes": block_bytes} if block_bytes else {}
    return ingest.run_import(session, ctx, kind=kind, chunks=[data], fmt=fmt, source="test", actor="test",
                             **options)


def import_shop(session: Session, ctx: Context, folder) -> None:
    """Import a generated shop's four files (customers, orders, items, events); every row must load."""
    for kind in ("customers", "orders", "order_items", "events"):
        job = run(session, ctx, kind, (folder / f"{kind}.csv").read_bytes())
        assert job.rows_failed == 0, job.errors[:3]


CUSTOMER_HEADER = ("external_id", "email", "phone", "time_zone", "locale", "birthday", "signed_up_at",
                   "sms_consent", "email_consent")


def customers(session: Session, ctx: Context, count: int = 3):
    """Import `count` simple, valid customers C1..Cn."""
    rows = [(f"C{i}", f"user{i}@example.com", f"+86138001{i:05d}", "Asia/Shanghai", "zh-CN", "1990-01-02",
             "2024-01-01T00:00:00Z", "opted_in", "opted_out") for i in range(1, count + 1)]
    return run(session, ctx, "customers", csv_text(CUSTOMER_HEADER, rows))


ORDER_HEADER = ("external_id", "customer_external_id", "ordered_at", "amount_paid", "discount", "cost_of_goods",
                "coupon_code")
