"""Concurrent writers on PostgreSQL: six threads post overlapping events, orders and refunds for the same customers
and days through the write path at once, while the nightly clock moves. None fails, and the state they leave is
exactly the rebuilt one. (Both suites run it on a scratch PostgreSQL database: SQLite has one writer.)"""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta

from crm import state, writes
from kit.clock import FixedClock
from kit.context import Context
from kit.crypto import ContactCipher
from kit.db import make_engine, session_scope
from kit.migrations import upgrade_to_head
from kit.settings import Settings
from tests.conftest import TEST_SECRET
from tests.crm.test_state import snapshot

NOW = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)
CUSTOMERS = [f"C{i}" for i in range(6)]


def test_concurrent_writers_leave_the_rebuilt_state(postgres_url, tmp_path):
    url, _, _ = postgres_url
    engine = make_engine(url)
    upgrade_to_head(engine)
    ctx = Context(settings=Settings(secret_key=TEST_SECRET, data_dir=tmp_path, database_url=url), engine=engine,
                  cipher=ContactCipher(TEST_SECRET), clock=FixedClock(NOW))
    with session_scope(engine) as session:
        writes.write_items(session, ctx, "customers", [{"external_id": c} for c in CUSTOMERS], cause="api")
    failures: list[BaseException] = []

    def writer(number: int) -> None:
        rng = random.Random(number)
        try:
            for batch in range(12):
                with session_scope(engine) as session:
                    if batch % 4 == 3:
                        writes.write_items(session, ctx, "orders", {
                            "external_id": f"O{number}-{batch}", "customer_id": rng.choice(CUSTOMERS),
                            "amount_paid": 50, "ordered_at": (NOW - timedelta(days=rng.randrange(3))).isoformat()},
                            cause="api")
                    else:
                        writes.write_items(session, ctx, "events", [
                            {"unique_id": f"E{number}-{batch}-{i}", "customer_id": rng.choice(CUSTOMERS),
                             "type": rng.choice(["login", "view", "cart_abandon"]),
                             "time": (NOW - timedelta(days=rng.randrange(3), minutes=i)).isoformat()}
                            for i in range(20)], cause="api", first_wins=True)
                if number == 0 and batch == 6:  # the nightly step moves the clock while the others write
                    with session_scope(engine) as session:
                        state.advance(session, ctx, datetime(2026, 11, 3, tzinfo=UTC))
        except BaseException as failure:  # noqa: BLE001 - collected and reported below
            failures.append(failure)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    with session_scope(engine) as session:
        kept = snapshot(session)
        state.rebuild(session, ctx)
        rebuilt = snapshot(session)
    assert kept[1]["lifetime_orders"].sum() == 6 * 3
    for mine, fresh in zip(kept, rebuilt, strict=True):
        assert mine.to_dicts() == fresh.to_dicts()
    engine.dispose()
