"""Columnar reads: the same frames from the session's connection and from the committed fast path."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
from sqlmodel import Session

from crm.service import events_frame, orders_frame
from kit.context import Context
from kit.crypto import ContactCipher
from kit.db import make_engine
from kit.migrations import upgrade_to_head
from tests.conftest import TEST_SECRET
from tests.support.factories import ORDER_HEADER, csv_text, customers, run


def _load(session, ctx):
    customers(session, ctx, 2)
    run(session, ctx, "orders", csv_text(ORDER_HEADER, [
        ("O1", "C1", "2025-01-01T00:00:00.250000Z", "100.10", "5", "40", "X"),
        ("O2", "C2", "2025-01-02T08:00:00+08:00", "20", "", "", ""),
        ("O3", "C2", "2025-03-01T00:00:00Z", "30.5", "0", "", ""),
    ]))
    run(session, ctx, "events", csv_text(("customer_external_id", "occurred_at", "type"), [
        ("C1", "2025-01-01T00:00:00Z", "login"), ("C2", "2025-02-01T12:30:00.5Z", "view")]))


def _check(orders: pl.DataFrame, events: pl.DataFrame):
    assert orders.schema["ordered_at"] == pl.Datetime("us", "UTC")
    rows = orders.sort("ordered_at").select("ordered_at", "amount_paid", "discount", "cost_of_goods", "has_coupon")
    assert rows.rows() == [
        (datetime(2025, 1, 1, 0, 0, 0, 250000, tzinfo=UTC), 100.10, 5.0, 40.0, True),
        (datetime(2025, 1, 2, 0, 0, tzinfo=UTC), 20.0, 0.0, None, False),
    ]
    assert events.sort("occurred_at")["occurred_at"].to_list() == [
        datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, 12, 30, 0, 500000, tzinfo=UTC)]


def test_frames_inside_the_transaction(session, ctx):
    _load(session, ctx)
    window = (datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC))
    _check(orders_frame(session, *window), events_frame(session, window[0], datetime(2025, 3, 1, tzinfo=UTC)))
    assert len(orders_frame(session, None, datetime(2030, 1, 1, tzinfo=UTC))) == 3


def test_fast_path_on_committed_data(scratch_url, settings, clock):
    """Committed data through a fresh session: ADBC over the file on SQLite, COPY on PostgreSQL."""
    engine = make_engine(scratch_url)
    upgrade_to_head(engine)
    ctx = Context(settings=settings, engine=engine, cipher=ContactCipher(TEST_SECRET), clock=clock)
    with Session(engine) as session:
        _load(session, ctx)
    with Session(engine) as session:
        window = (datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC))
        _check(orders_frame(session, *window), events_frame(session, window[0], datetime(2025, 3, 1, tzinfo=UTC)))
    engine.dispose()


def test_a_fast_read_of_the_sqlite_file_keeps_this_process_s_write_lock(tmp_path):
    # The fast path once read SQLite through DuckDB's own copy of SQLite; closing its files dropped the POSIX locks
    # of this process's connections, so another process was granted the write lock held here (and the crash chaos
    # test found the file corrupted). Whatever backend the suite runs on, this hazard is SQLite's.
    import subprocess
    import sys

    from sqlalchemy import text

    from kit.columnar import read_frame

    path = tmp_path / "locks.sqlite3"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (x INTEGER)"))
        connection.execute(text("INSERT INTO t VALUES (1), (2)"))
    probe = ("import sqlite3, sys\n"
             f"c = sqlite3.connect({str(path)!r}, timeout=0.5, isolation_level=None)\n"
             "try:\n    c.execute('BEGIN IMMEDIATE')\nexcept sqlite3.OperationalError:\n    sys.exit(0)\n"
             "sys.exit('another process got the write lock this one holds')\n")
    with engine.begin() as writer:
        writer.execute(text("INSERT INTO t VALUES (3)"))  # holds the write lock until the block ends
        with Session(engine) as reader:
            frame = read_frame(reader, "SELECT x FROM t WHERE x >= :low", {"low": 2}, {"x": pl.Int64})
        assert frame["x"].to_list() == [2]  # committed data only: the uncommitted 3 is the writer's
        refused = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        assert refused.returncode == 0, refused.stderr
    engine.dispose()


def test_reads_for_many_keys_over_several_connections_equal_one(scratch_url, settings, clock):
    """Committed rows for a set of keys: split over two connections of their own (PostgreSQL) or read on the
    session's (SQLite, and inside a transaction), the same frame."""
    from kit.columnar import read_for_keys

    engine = make_engine(scratch_url)
    upgrade_to_head(engine)
    ctx = Context(settings=settings, engine=engine, cipher=ContactCipher(TEST_SECRET), clock=clock)
    with Session(engine) as session:
        _load(session, ctx)
    query = ("SELECT d.customer_id, d.day, d.orders, d.last_order_at FROM customer_day d JOIN {keys} k "
             "ON k.key = d.customer_id WHERE d.day >= :since")
    schema = {"customer_id": pl.Int64, "day": pl.Date, "orders": pl.Int64, "last_order_at": pl.Int64}
    params = {"since": datetime(2025, 1, 2).date()}
    with Session(engine) as session:
        keys = pl.Series([row[0] for row in session.connection().exec_driver_sql("SELECT id FROM customer").all()])
        both = read_for_keys(session, query, keys, params, schema, committed=True, min_keys=0).sort("day")
        one = read_for_keys(session, query, keys, params, schema).sort("day")
        assert both.to_dicts() == one.to_dicts()
        assert both["day"].to_list() == [datetime(2025, 1, 2).date(), datetime(2025, 2, 1).date(),
                                         datetime(2025, 3, 1).date()]  # O2's and O3's days, and C2's view
        assert both["orders"].to_list() == [1, 0, 1]
        only_first = read_for_keys(session, query, keys.sort()[:1], params, schema, committed=True, min_keys=0)
        assert only_first.is_empty()  # C1's only day is before `since`
    engine.dispose()
