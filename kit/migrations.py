"""Running Alembic from code: upgrade to head, check the revision, compare models with the schema."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from alembic import command
from kit.settings import PROJECT_ROOT


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic Config bound to this project's scripts and the given connection or URL."""
    config = Config(str(Path(PROJECT_ROOT) / "alembic.ini"))
    config.set_main_option("script_location", str(Path(PROJECT_ROOT) / "alembic"))
    config.attributes["configure_logging"] = False
    if connection is not None:
        config.attributes["connection"] = connection
    if url is not None:
        config.attributes["url"] = url
    return config


def upgrade_to_head(engine: Engine) -> None:
    """Apply all migrations to the engine's database."""
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection=connection), "head")


def head_revision() -> str:
    """The newest migration revision in the repository."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at (None before the first migration)."""
    return MigrationContext.configure(connection).get_current_revision()


def probe(engine) -> tuple[bool, str | None]:
    """Whether the database answers, and the revision it is at (readiness and `crm health database` ask this)."""
    try:
        with engine.connect() as connection:
            return True, current_revision(connection)  # reads alembic_version: the database answers
    except Exception:  # noqa: BLE001 - any failure to reach the database is what the callers report
        return False, None
