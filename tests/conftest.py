"""Shared fixtures: one migrated database per run, each test inside a transaction that is rolled back."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from crm.auth import create_key
from crm.models import Role
from kit.clock import FixedClock
from kit.columnar import SAME_CONNECTION_FLAG
from kit.context import Context
from kit.crypto import ContactCipher
from kit.db import get_session, make_engine
from kit.idempotency import session_store
from kit.migrations import upgrade_to_head
from kit.settings import Settings
from wiring.app import create_app

TEST_SECRET = "test-secret-key-not-for-production"
TEST_NOW = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def backend() -> str:
    """Which database this run uses: sqlite (default) or postgres."""
    return os.environ.get("CRM_TEST_BACKEND", "sqlite")


@pytest.fixture(scope="session")
def db_backend() -> str:
    """The backend of this run, as a fixture."""
    return backend()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory) -> str:
    """The run's database: a fresh SQLite file, or the throw-away PostgreSQL database the runner made."""
    if backend() == "postgres":
        url = os.environ.get("CRM_TEST_DATABASE_URL")
        if not url:
            pytest.fail("CRM_TEST_BACKEND=postgres needs CRM_TEST_DATABASE_URL (use `make test`)")
        return url
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite3'}"


@pytest.fixture(scope="session")
def engine(database_url) -> Iterator[Engine]:
    """The schema is built once, by the migrations themselves (so they are tested too)."""
    engine = make_engine(database_url)
    try:
        upgrade_to_head(engine)
    except Exception as unreachable:  # a missing service must fail loudly, never skip
        pytest.fail(f"cannot prepare the test database at {database_url}: {unreachable}")
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> FixedClock:
    """A clock standing at TEST_NOW."""
    return FixedClock(TEST_NOW)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for tests (no environment leaks in)."""
    # No global control group by default: which of a handful of hand-made customers falls into it depends on
    # their row ids (which PostgreSQL sequences do not reuse); its own tests turn it on.
    return Settings(secret_key=TEST_SECRET, data_dir=tmp_path, database_url="", global_control_share=0.0)


@pytest.fixture
def ctx(settings, engine, clock) -> Context:
    """The runtime context tests pass to services."""
    return Context(settings=settings, engine=engine, cipher=ContactCipher(TEST_SECRET), clock=clock)


@pytest.fixture
def session(engine) -> Iterator[Session]:
    """A session inside an outer transaction that is rolled back after the test (commits become savepoints)."""
    connection = engine.connect()
    outer = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    session.info[SAME_CONNECTION_FLAG] = True
    try:
        yield session
    finally:
        session.close()
        outer.rollback()
        connection.close()


@pytest.fixture
def app(ctx, session):
    """The real app, its session dependency bound to the test's transaction."""
    application = create_app(ctx)

    def _session() -> Iterator[Session]:
        # Each request in a savepoint, as production gives each its own transaction: a statement that fails on
        # PostgreSQL (e.g. a number out of range) is rolled back with its request instead of aborting the test's.
        request = session.begin_nested()
        try:
            yield session
            session.flush()
        except Exception:
            if request.is_active:
                request.rollback()
            raise
        if request.is_active:
            request.commit()

    application.dependency_overrides[get_session] = _session
    # Idempotency records join the test's transaction too (a second connection would wait on its write lock).
    application.state.idempotency = session_store(session, ctx.clock, timedelta(hours=ctx.settings.idempotency_hours))
    return application


@pytest.fixture
def client(app) -> TestClient:
    """An HTTP client for the app (exceptions become responses, as in production)."""
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def keys(session, ctx) -> dict[Role, str]:
    """One API key per role."""
    return {role: create_key(session, ctx, name=f"test-{role.value}", role=role, actor="test").secret
            for role in Role}


@pytest.fixture
def auth_header(keys):
    """Build an Authorization header for a role."""
    return lambda role: {"Authorization": f"Bearer {keys[role]}"}


def pg_admin(server: str):
    """An autocommit connection to a PostgreSQL server's `postgres` database (CREATE / DROP DATABASE), from a
    SQLAlchemy server URL such as postgresql+psycopg://user@host:5432."""
    import psycopg

    return psycopg.connect(f"{server.replace('postgresql+psycopg://', 'postgresql://')}/postgres", autocommit=True)


@pytest.fixture
def scratch_url(database_url, tmp_path) -> Iterator[str]:
    """A separate, empty database for tests that commit for real (subprocesses, crash tests)."""
    if not database_url.startswith("postgresql"):
        yield f"sqlite:///{tmp_path / 'scratch.sqlite3'}"
        return
    import uuid

    server = database_url.rsplit("/", 1)[0]
    name = f"crm_scratch_{uuid.uuid4().hex[:8]}"
    with pg_admin(server) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server}/{name}"
    finally:
        with pg_admin(server) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def cli_env(url: str, data_dir: Path) -> dict[str, str]:
    """Environment for running the `crm` command against a scratch database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    return env | {"CRM_DATABASE_URL": url, "CRM_DATA_DIR": str(data_dir), "CRM_SECRET_KEY": TEST_SECRET}


@pytest.fixture(scope="session")
def fake_server():
    """The fake Twilio / SendGrid / FCM server (tests/support/fake_providers.py) in a thread of this process."""
    from tests.support.fake_providers import serve

    server = serve()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def providers(fake_server):
    """The fake providers, reset for this test."""
    from tests.support.dispatch_support import FakeProviders

    fake = FakeProviders(fake_server)
    fake.reset()
    return fake


POSTGRES_SERVER = os.environ.get("CRM_TEST_POSTGRES_URL",
                                 "postgresql+psycopg://postgres@127.0.0.1:5432/test").rsplit("/", 1)[0]


@pytest.fixture
def postgres_url():
    """A scratch PostgreSQL database (url, server, name) for a test that needs the server itself."""
    plain = POSTGRES_SERVER.replace("postgresql+psycopg://", "postgresql://")
    name = f"crm_fault_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect(f"{plain}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.fail(f"this test needs PostgreSQL at {POSTGRES_SERVER} (CRM_TEST_POSTGRES_URL): {error}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"{POSTGRES_SERVER}/{name}", plain, name
    with psycopg.connect(f"{plain}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
