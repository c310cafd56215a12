"""Bulk import: validation by row, idempotency, updates, consent, duplicates, formats, atomic batches."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from crm import ingest
from crm.ingest import BulkLoad, ImportRejected, split_records
from crm.models import Consent, ConsentChange, Customer, Event, ImportJob, Order, OrderItem
from tests.support.factories import CUSTOMER_HEADER, ORDER_HEADER, csv_text, customers, run


def _errors(job) -> set[tuple[int, str]]:
    return {(e["row"], e["field"]) for e in job.errors}


def test_customers_import_keeps_good_rows_and_reports_bad_ones(session, ctx):
    rows = [
        ("C1", "a@example.com", "+8613800135678", "Asia/Shanghai", "zh-CN", "1990-01-02", "2024-01-01", "in", ""),
        ("C2", "not-an-email", "+8613800135679", "Asia/Shanghai", "zh-CN", "", "", "", ""),
        ("C3", "c@example.com", "12345", "Asia/Shanghai", "zh-CN", "", "", "", ""),
        ("C4", "d@example.com", "13800135680", "Mars/Base", "zh-CN", "", "", "", ""),
        ("C5", "e@example.com", "", "Europe/London", "en-GB", "1990-02-30", "", "", ""),
        ("C1", "dup@example.com", "", "Asia/Shanghai", "zh-CN", "", "", "", ""),
        ("C6", "f@example.com", "+1 415 555 2671", "", "", "", "", "", "maybe"),
        ("C7", "G@Example.COM", "138 0013 5681", "America/New_York", "en_US", "", "2024-03-01T10:00:00-05:00",
         "", "out"),
    ]
    job = run(session, ctx, "customers", csv_text(CUSTOMER_HEADER, rows))
    assert job.status == "completed"
    assert (job.rows_total, job.rows_inserted, job.rows_failed) == (8, 2, 6)
    assert _errors(job) == {(2, "email"), (3, "phone"), (4, "time_zone"), (5, "birthday"), (6, "external_id"),
                            (7, "email_consent")}
    reasons = {e["row"]: e["reason"] for e in job.errors}
    assert reasons[6] == "duplicate id inside the file (first occurrence kept)"
    stored = {c.external_id: c for c in session.exec(select(Customer))}
    assert set(stored) == {"C1", "C7"}
    c7 = stored["C7"]
    assert ctx.cipher.decrypt(c7.email_ciphertext) == "g@example.com"
    assert ctx.cipher.decrypt(c7.phone_ciphertext) == "+8613800135681"   # national number in the default region
    assert c7.locale == "en-US" and c7.time_zone == "America/New_York"
    assert c7.signed_up_at == datetime(2024, 3, 1, 15, 0, tzinfo=UTC)
    assert stored["C1"].birthday.isoformat() == "1990-01-02"


def test_contact_data_is_ciphertext_at_rest(session, ctx):
    customers(session, ctx, 2)
    raw_rows = session.connection().execute(text("SELECT * FROM customer")).fetchall()
    dump = " ".join(str(value) for row in raw_rows for value in row)
    assert "user1@example.com" not in dump and "8613800100001" not in dump
    hashes = session.connection().execute(text("SELECT email_hash FROM customer ORDER BY id")).scalars().all()
    assert hashes[0] == ctx.cipher.blind_index("user1@example.com")


def test_reimporting_the_same_file_changes_nothing(session, ctx):
    first = customers(session, ctx, 5)
    before = {c.external_id: (c.updated_at, c.email_ciphertext) for c in session.exec(select(Customer))}
    ctx.clock.advance(timedelta(hours=1))
    second = customers(session, ctx, 5)
    assert (first.rows_inserted, second.rows_inserted, second.rows_updated, second.rows_unchanged) == (5, 0, 0, 5)
    session.expire_all()
    after = {c.external_id: (c.updated_at, c.email_ciphertext) for c in session.exec(select(Customer))}
    assert after == before
    assert session.exec(select(ConsentChange)).all().__len__() == 10  # sms + email for 5 customers, once


def test_changed_rows_are_updated_and_counted(session, ctx):
    customers(session, ctx, 2)
    data = csv_text(ORDER_HEADER, [("O1", "C1", "2025-01-01T10:00:00Z", "100.00", "0", "40", ""),
                                   ("O2", "C2", "2025-01-02T10:00:00Z", "50.00", "5", "", "SAVE5")])
    run(session, ctx, "orders", data)
    ctx.clock.advance(timedelta(minutes=5))
    changed = csv_text(ORDER_HEADER, [("O1", "C1", "2025-01-01T10:00:00Z", "120.00", "0", "40", ""),
                                      ("O2", "C2", "2025-01-02T10:00:00Z", "50.00", "5", "", "SAVE5")])
    job = run(session, ctx, "orders", changed)
    assert (job.rows_inserted, job.rows_updated, job.rows_unchanged) == (0, 1, 1)
    order = session.exec(select(Order).where(Order.external_id == "O1")).one()
    session.refresh(order)
    assert float(order.amount_paid) == 120.0 and order.updated_at == ctx.clock.now()


def test_changed_email_replaces_ciphertext_and_hash(session, ctx):
    customers(session, ctx, 1)
    job = run(session, ctx, "customers", csv_text(("external_id", "email"), [("C1", "new@example.com")]))
    assert job.rows_updated == 1
    customer = session.exec(select(Customer)).one()
    session.refresh(customer)
    assert ctx.cipher.decrypt(customer.email_ciphertext) == "new@example.com"
    assert customer.email_hash == ctx.cipher.blind_index("new@example.com")
    assert ctx.cipher.decrypt(customer.phone_ciphertext) == "+8613800100001"  # absent column left alone


def test_orders_report_each_bad_row_by_number_field_and_reason(session, ctx):
    customers(session, ctx, 2)
    rows = [
        ("O1", "C1", "2025-01-01T10:00:00+08:00", "10.50", "", "", ""),
        ("O2", "C1", "2025-13-45", "10", "", "", ""),
        ("O3", "C1", "2025-01-01", "-5", "", "", ""),
        ("O4", "NOPE", "2025-01-01", "5", "", "", ""),
        ("O1", "C2", "2025-01-01", "5", "", "", ""),
        ("O5", "C2", "2025-01-01", "abc", "", "", ""),
        ("", "C2", "2025-01-01", "5", "", "", ""),
        ("O6", "C2", "2025-01-03 12:00:00", "7.25", "1.5", "3", "WELCOME"),
    ]
    job = run(session, ctx, "orders", csv_text(ORDER_HEADER, rows))
    assert _errors(job) == {(2, "ordered_at"), (3, "amount_paid"), (4, "customer_external_id"), (5, "external_id"),
                            (6, "amount_paid"), (7, "external_id")}
    assert {e["reason"] for e in job.errors if e["row"] == 4} == {"unknown customer"}
    assert {e["reason"] for e in job.errors if e["row"] == 3} == {"negative amount"}
    orders = {o.external_id: o for o in session.exec(select(Order))}
    assert set(orders) == {"O1", "O6"}
    assert orders["O1"].ordered_at == datetime(2025, 1, 1, 2, 0, tzinfo=UTC)
    assert float(orders["O6"].discount) == 1.5 and orders["O6"].coupon_code == "WELCOME"
    assert job.rows_failed == 6 and job.rows_inserted == 2


def test_order_items_and_events_import(session, ctx):
    customers(session, ctx, 1)
    run(session, ctx, "orders", csv_text(ORDER_HEADER, [("O1", "C1", "2025-01-01", "90", "10", "", "")]))
    items = csv_text(("order_external_id", "line_no", "sku", "category", "qty", "unit_price", "list_price",
                      "is_new_product"),
                     [("O1", 1, "S1", "shoes", 1, "50", "60", "true"), ("O1", 2, "S2", "", 2, "20", "", "no"),
                      ("O9", 1, "S1", "", 1, "5", "", ""), ("O1", 3, "S3", "", 0, "5", "", "")])
    job = run(session, ctx, "order_items", items)
    assert _errors(job) == {(3, "order_external_id"), (4, "qty")}
    lines = {i.line_no: i for i in session.exec(select(OrderItem))}
    assert lines[1].is_new_product and float(lines[2].list_price) == 20.0  # list price defaults to unit price
    events = csv_text(("customer_external_id", "occurred_at", "type", "properties"),
                      [("C1", "2025-01-01T09:00:00Z", "view", '{"sku": "S1"}'),
                       ("C1", "2025-01-01T09:00:00Z", "view", '{"sku": "S1"}'),
                       ("C1", "2025-01-01T09:05:00Z", "Cart_Add", ""),
                       ("C1", "2025-01-01T09:06:00Z", "bad type!", ""),
                       ("C1", "2025-01-01T09:07:00Z", "search", "[1, 2]")])
    job = run(session, ctx, "events", events)
    assert _errors(job) == {(2, "external_id"), (4, "type"), (5, "properties")}
    stored = session.exec(select(Event).order_by(Event.occurred_at)).all()
    assert [(e.type, e.properties) for e in stored] == [("view", {"sku": "S1"}), ("cart_add", {})]
    again = run(session, ctx, "events", events)
    assert again.rows_inserted == 0 and again.rows_unchanged == 2


def test_ndjson_import_with_bad_lines(session, ctx):
    lines = [json.dumps({"external_id": "C1", "email": "a@example.com", "attributes": {"vip": True}}),
             "{not json",
             json.dumps(["an", "array"]),
             json.dumps({"external_id": "C2", "time_zone": "Asia/Tokyo", "phone": 8613800135678})]
    job = run(session, ctx, "customers", ("\n".join(lines) + "\n").encode(), fmt="ndjson")
    assert _errors(job) == {(2, ""), (3, "")}
    stored = {c.external_id: c for c in session.exec(select(Customer))}
    assert stored["C1"].attributes == {"vip": True}
    assert ctx.cipher.decrypt(stored["C2"].phone_ciphertext) == "+8613800135678"
    assert stored["C2"].time_zone == "Asia/Tokyo" and stored["C1"].time_zone == ctx.settings.default_time_zone


def test_missing_required_column_rejects_the_file(session, ctx):
    with pytest.raises(ImportRejected) as rejected:
        run(session, ctx, "orders", csv_text(("external_id", "amount_paid"), [("O1", "5")]))
    assert {e["field"] for e in rejected.value.errors} == {"customer_external_id", "ordered_at"}
    job = session.exec(select(ImportJob).order_by(ImportJob.id.desc())).first()
    assert job.status == "rejected" and "customer_external_id" in job.message


def test_consent_opt_out_is_never_undone_by_an_older_import(session, ctx):
    customers(session, ctx, 1)  # sms opted_in
    run(session, ctx, "customers", csv_text(("external_id", "sms_consent", "consent_source"),
                                            [("C1", "opted_out", "crm-export")]))
    run(session, ctx, "customers", csv_text(("external_id", "sms_consent"), [("C1", "opted_in")]))
    consent = session.exec(select(Consent).where(Consent.channel == "sms")).one()
    assert consent.status == "opted_out" and consent.source == "crm-export"
    later = (ctx.clock.now() + timedelta(days=1)).isoformat()
    # A statement dated after the opt-out wins — once that date has come; until then it is refused per row.
    early = run(session, ctx, "customers", csv_text(("external_id", "sms_consent", "consent_at"),
                                                    [("C1", "in", later)]))
    assert early.rows_failed == 1 and early.errors[0]["field"] == "consent_at"
    ctx.clock.advance(timedelta(days=2))
    run(session, ctx, "customers", csv_text(("external_id", "sms_consent", "consent_at"), [("C1", "in", later)]))
    session.refresh(consent)
    assert consent.status == "opted_in"
    history = [c.status for c in session.exec(select(ConsentChange).where(ConsentChange.channel == "sms")
                                              .order_by(ConsentChange.id))]
    assert history == ["opted_in", "opted_out", "opted_in"]


@pytest.mark.parametrize("bulk_load", [True, False], ids=["bulk-allowed", "merge-only"])
def test_duplicates_are_found_across_blocks(session, ctx, db_backend, bulk_load):
    ctx.settings.import_bulk_load = bulk_load
    customers(session, ctx, 1)
    rows = [(f"O{i}", "C1", "2025-01-01", "1", "", "", "") for i in range(400)] + [("O7", "C1", "2025-01-02", "1",
                                                                                    "", "", "")]
    job = run(session, ctx, "orders", csv_text(ORDER_HEADER, rows), block_bytes=2048)
    # A bulk load (PostgreSQL, empty table) is one transaction however many blocks it reads.
    assert job.batches_committed == 1 if bulk_load and db_backend == "postgres" else job.batches_committed > 3
    assert _errors(job) == {(401, "external_id")}
    assert job.rows_inserted == 400
    assert session.exec(select(func.count()).select_from(Order)).one() == 400


def _index_definitions(session) -> set[str]:
    rows = session.connection().execute(text("SELECT indexdef FROM pg_indexes WHERE tablename = 'orders'"))
    return {row[0] for row in rows}


def test_bulk_load_fills_an_empty_table_and_rebuilds_its_indexes(session, ctx, db_backend):
    customers(session, ctx, 2)
    if db_backend != "postgres":
        assert BulkLoad.begin(session, "orders") is None, "SQLite always merges"
    indexes = _index_definitions(session) if db_backend == "postgres" else set()
    rows = [(f"O{i}", f"C{1 + i % 2}", f"2025-01-{1 + i % 28:02d}T08:00:00+08:00", f"{i}.5", "1", "", "")
            for i in range(300)] + [("O900", "C404", "2025-01-01", "1", "", "", "")]
    job = run(session, ctx, "orders", csv_text(ORDER_HEADER, rows), block_bytes=1024)
    assert (job.status, job.rows_inserted, job.rows_failed) == ("completed", 300, 1)
    assert _errors(job) == {(301, "customer_external_id")}
    stored = session.exec(select(Order).where(Order.external_id == "O7")).one()
    assert stored.ordered_at == datetime(2025, 1, 8, tzinfo=UTC) and float(stored.amount_paid) == 7.5
    if db_backend == "postgres":
        assert _index_definitions(session) == indexes and len(indexes) == 4  # pkey, external id, (customer, time), coupon code
    again = run(session, ctx, "orders", csv_text(ORDER_HEADER, rows), block_bytes=1024)
    assert (again.rows_inserted, again.rows_updated, again.rows_unchanged) == (0, 0, 300)
    # The rebuilt unique constraint holds.
    with pytest.raises(IntegrityError), session.begin_nested():
        session.connection().execute(text(
            "INSERT INTO orders (external_id, customer_id, ordered_at, amount_paid, discount, created_at, updated_at)"
            " SELECT external_id, customer_id, ordered_at, amount_paid, discount, created_at, updated_at "
            "FROM orders WHERE external_id = 'O7'"))


def test_a_failed_import_keeps_only_whole_committed_batches(session, ctx, db_backend):
    customers(session, ctx, 1)
    indexes = _index_definitions(session) if db_backend == "postgres" else set()
    block = csv_text(ORDER_HEADER, [(f"O{i}", "C1", "2025-01-01", "1", "", "", "") for i in range(100)])

    def upload_cut_off():
        yield block
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        ingest.run_import(session, ctx, kind="orders", chunks=upload_cut_off(), source="test", actor="test",
                          block_bytes=1024)
    job = session.exec(select(ImportJob).where(ImportJob.kind == "orders")).one()
    stored = session.exec(select(func.count()).select_from(Order)).one()
    assert job.status == "failed" and "client went away" in job.message
    assert stored == job.rows_inserted  # the table and the job's counters agree
    if db_backend == "postgres":  # a bulk load is all or nothing, and its dropped indexes come back
        assert stored == 0 and _index_definitions(session) == indexes
    else:
        assert 0 < stored < 100


def test_split_records_respects_quoted_newlines():
    data = b'a,b\n1,"x\ny"\n2,"z"\n3,w\n'
    chunks = [data[i:i + 3] for i in range(0, len(data), 3)]
    blocks = list(split_records(chunks, quoted=True, block_bytes=4))
    assert b"".join(blocks) == data
    assert all(block.count(b'"') % 2 == 0 for block in blocks)


def test_quoted_fields_and_ragged_rows(session, ctx):
    data = b'external_id,email,attributes\nC1,a@example.com,"{""note"":\n ""two lines""}"\nC2,b@example.com\nC3,c@example.com,{},extra\n'
    job = run(session, ctx, "customers", data)
    assert _errors(job) == {(3, "")}
    assert {e["reason"] for e in job.errors} == {"expected 3 fields, found 4"}
    stored = {c.external_id: c for c in session.exec(select(Customer))}
    assert stored["C1"].attributes == {"note": "two lines"} and "C2" in stored
