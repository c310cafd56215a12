"""The models and the migrations agree, and the database is at head."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import make_url, text
from sqlmodel import Session

from alembic import command
from crm import state as crm_state
from kit.db import make_engine
from kit.migrations import alembic_config, current_revision, head_revision, upgrade_to_head
from wiring.models import all_metadata


def test_autogenerate_finds_no_difference(engine):
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, all_metadata())
    assert differences == [], f"models and migrations disagree: {differences}"


def test_database_is_at_head(engine):
    with engine.connect() as connection:
        assert current_revision(connection) == head_revision()


@pytest.fixture
def empty_database_url(db_backend, database_url, tmp_path):
    """A database of its own, with no tables yet, on the run's backend."""
    if db_backend != "postgres":
        yield f"sqlite:///{tmp_path / 'upgrade.sqlite3'}"
        return
    url = make_url(database_url)
    name = f"{url.database}_upgrade"
    admin = make_engine(url.render_as_string(hide_password=False)).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_an_upgrade_that_empties_the_customer_state_marks_it_for_the_nightly_rebuild(empty_database_url):
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection=connection), "0012")
            connection.execute(text("INSERT INTO customer (external_id, created_at, updated_at, time_zone, locale, attributes) "
                                    "VALUES ('C1', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 'UTC', 'en', '{}')"))
        upgrade_to_head(engine)
        with Session(engine) as session:
            row = crm_state.clock(session)
            assert crm_state.needs_rebuild(row) and row.as_of.tzinfo is not None
            assert crm_state.windows_of(row) == crm_state.StateWindows()
    finally:
        engine.dispose()
