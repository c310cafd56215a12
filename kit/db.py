"""Database engine and sessions: the request dependency and the job/CLI scope own commit and rollback."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import Depends, Request
from sqlalchemy import Engine, create_engine, event
from sqlmodel import Session


def make_engine(url: str, **kwargs) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and working SAVEPOINTs."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60}, **kwargs)
        private_file(engine.url.database)
        _tune_sqlite(engine)
    else:
        engine = create_engine(url, pool_pre_ping=True, **kwargs)
    _forget_staging_on_rollback(engine)
    return engine


def _forget_staging_on_rollback(engine: Engine) -> None:
    """A rollback (of a transaction or a savepoint) may drop temporary tables made inside it: forget them all, so
    kit.bulkwrite.stage_frame makes them again rather than filling one that is gone."""
    from kit.bulkwrite import STAGED

    def forget(connection, *_args) -> None:
        connection.info.pop(STAGED, None)

    event.listen(engine, "rollback", forget)
    event.listen(engine, "rollback_savepoint", forget)


def private_file(path: str | None) -> None:
    """The embedded database file readable by its owner only (0600): attributes, birthdays and the audit trail are
    plaintext there. Created so before SQLite opens it; its WAL and shared-memory files take the same mode."""
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(target, os.O_CREAT | os.O_RDWR, 0o600))
    for companion in (target, target.with_name(target.name + "-wal"), target.with_name(target.name + "-shm")):
        if companion.exists():
            companion.chmod(0o600)


def _tune_sqlite(engine: Engine) -> None:
    """pysqlite's own transaction handling breaks SAVEPOINT; take it over (SQLAlchemy's documented recipe)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.execute("PRAGMA cache_size=-200000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        # See writer_engine: a unit of work that reads before it writes takes the write lock up front.
        immediate = connection.get_execution_options().get("sqlite_immediate", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def writer_engine(engine: Engine) -> Engine:
    """The engine for units of work that read, then write, while other processes write too (job steps, the
    scheduler's heartbeat). On SQLite their transactions begin IMMEDIATE, taking the write lock at their first
    statement: a deferred transaction whose read snapshot predates another connection's commit cannot become a
    writer (SQLITE_BUSY_SNAPSHOT, no busy wait helps), while an immediate one waits its turn. PostgreSQL: as is."""
    return engine.execution_options(sqlite_immediate=True) if engine.dialect.name == "sqlite" else engine


def is_postgres(engine_or_session) -> bool:
    """True when the bound database is PostgreSQL."""
    bind = engine_or_session.get_bind() if isinstance(engine_or_session, Session) else engine_or_session
    return bind.dialect.name == "postgresql"


# A write of this many rows changes a table's shape faster than autovacuum's analyze notices it; until then the
# planner plans against the old shape (measured at 1M customers: consent read by a sequential scan per dispatch
# batch, 0.36 s against 2 ms by its index; the outbox's send-time ledger 0.27 s against milliseconds).
STATISTICS_AFTER_ROWS = 50_000


def refresh_statistics(session: Session, tables: tuple[str, ...] | list[str], rows_written: int) -> None:
    """After a large write on PostgreSQL, refresh the planner's statistics of the tables (ANALYZE samples them:
    a fraction of a second); a no-op for small writes and on SQLite."""
    if rows_written >= STATISTICS_AFTER_ROWS and is_postgres(session):
        for table in tables:
            session.connection().exec_driver_sql(f"ANALYZE {table}")


def _end_session(session: Session, commit: bool) -> None:
    """End a unit of work: commit it (or roll it back), then give its connection back to the pool."""
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    finally:
        session.close()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A unit of work for jobs and the CLI: commit on success, roll back on error."""
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
    except BaseException:
        _end_session(session, commit=False)
        raise
    _end_session(session, commit=True)


_ENDS: anyio.CapacityLimiter | None = None


def _ends_limiter() -> anyio.CapacityLimiter:
    """Threads of their own for ending sessions (made on first use, inside the running event loop).

    Ending a session shares nothing with the routes' thread pool: when every route thread waits on a row lock
    (two ingestion batches for one customer), the transaction holding it must still be able to commit, or the
    whole worker waits for ever (seen under load before this limiter existed).
    """
    global _ENDS
    if _ENDS is None:
        _ENDS = anyio.CapacityLimiter(16)
    return _ENDS


async def get_session(request: Request) -> AsyncIterator[Session]:
    """FastAPI dependency: one session per request, committed when the endpoint returns.

    Async, so that opening costs no trip to the thread pool (a Session does no I/O until its first statement); the
    end (commit or rollback, then the connection back to the pool) is one trip, shielded from cancellation.
    """
    session = Session(request.app.state.ctx.engine, expire_on_commit=False)
    try:
        yield session
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_end_session, session, False, limiter=_ends_limiter())
        raise
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(_end_session, session, True, limiter=_ends_limiter())


# scope="function": the commit runs before the response is sent. FastAPI's default ("request") commits after the
# client already has its 2xx, so a failed commit or a process killed in between lost writes the client saw accepted.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
