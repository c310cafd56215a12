"""Scratch shops for tests that commit for real: a migrated database, optionally holding a generated shop."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text

from campaigns.service import install_defaults
from crm.ingest import file_chunks, run_import
from kit.clock import FixedClock
from kit.context import Context
from kit.crypto import ContactCipher
from kit.db import make_engine, session_scope
from kit.migrations import upgrade_to_head
from kit.settings import Settings
from tests.conftest import TEST_SECRET
from wiring.generator import GeneratorConfig, write_dataset

# 02:00 on Sunday 15 November in Shanghai: the lost-tier win-back fires (monthly on the 15th, 10:00 local).
FIRE_AT = datetime(2026, 11, 14, 18, 0, tzinfo=UTC)


def generated_shop(url: str, tmp_path, customers: int = 400, now: datetime = FIRE_AT, **settings) -> Context:
    """A scratch database holding a generated shop (orders up to the day before `now`), defaults installed.

    The churn flag's precision target is 0.6 unless given: a few hundred customers' validation half cannot show
    the default 0.75 (the policy would rightly flag nobody, and the at-risk plans would have no one to reach)."""
    settings.setdefault("churn_target_precision", 0.6)
    settings = Settings(secret_key=TEST_SECRET, data_dir=tmp_path, database_url=url, **settings)
    engine = make_engine(url)
    upgrade_to_head(engine)
    ctx = Context(settings=settings, engine=engine, cipher=ContactCipher(TEST_SECRET), clock=FixedClock(now))
    out = tmp_path / "data"
    write_dataset(GeneratorConfig(customers=customers, seed=11, end=now.date()), out)
    for kind in ("customers", "orders", "order_items", "events"):
        with session_scope(engine) as session:
            run_import(session, ctx, kind=kind, chunks=file_chunks(out / f"{kind}.csv"), actor="test")
    with session_scope(engine) as session:
        install_defaults(session, ctx, "test")
    return ctx


def scalar(ctx: Context, query: str, **params) -> int:
    """One value from a query on the scratch database."""
    with ctx.engine.connect() as connection:
        return connection.execute(text(query), params).scalar_one()


def scratch_context(url: str, tmp_path, now: datetime, **settings) -> Context:
    """A migrated scratch database's context at a fixed moment."""
    engine = make_engine(url)
    upgrade_to_head(engine)
    return Context(settings=Settings(secret_key=TEST_SECRET, data_dir=tmp_path, database_url=url, **settings),
                   engine=engine, cipher=ContactCipher(TEST_SECRET), clock=FixedClock(now))
