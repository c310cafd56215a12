"""Named exclusive locks that die with their holder: a PostgreSQL advisory lock, or a file lock beside SQLite.

Both are released by the operating system or the server when the holding process dies (its connection closes or its
file descriptors do), so a SIGKILLed leader or job never leaves a lock behind.
"""

from __future__ import annotations

import fcntl
import zlib
from pathlib import Path
from typing import IO

from sqlalchemy import Connection, Engine, text

LOCK_NAMESPACE = 8008  # first key of our two-int advisory locks; the dispatcher's per-customer locks use 7007


def _lock_key(name: str) -> int:
    """A stable signed 32-bit key for a lock name."""
    return zlib.crc32(name.encode()) - (1 << 31)


def _lock_file(engine: Engine, data_dir: Path, name: str) -> Path:
    database = engine.url.database
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    if database and database != ":memory:":
        return Path(f"{database}.{safe}.lock")
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir / f"{safe}.lock"


class NamedLock:
    """A held lock; `alive()` says whether it is still held, `release()` lets the next holder in."""

    def __init__(self, name: str, connection: Connection | None = None, handle: IO | None = None,
                 remove: Path | None = None) -> None:
        self.name = name
        self._connection = connection
        self._handle = handle
        self._remove = remove

    def alive(self) -> bool:
        """True while the lock is held (on PostgreSQL: the holding connection still answers and holds it)."""
        if self._handle is not None:
            return not self._handle.closed
        if self._connection is None:
            return False
        try:
            held = self._connection.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                "AND classid = :space AND objid = :key AND granted"),
                {"space": LOCK_NAMESPACE, "key": _lock_key(self.name) & 0xFFFFFFFF}).scalar_one()
            self._connection.commit()
            return held > 0
        except Exception:  # noqa: BLE001 - a dropped connection means the lock is gone
            return False

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        if self._handle is not None:
            if self._remove is not None:  # unlinked while held: a later opener gets a fresh file, never a stale lock
                self._remove.unlink(missing_ok=True)
            self._handle.close()
            self._handle = None
        if self._connection is not None:
            try:
                self._connection.execute(text("SELECT pg_advisory_unlock(:space, :key)"),
                                         {"space": LOCK_NAMESPACE, "key": _lock_key(self.name)})
                self._connection.commit()
                self._connection.close()
            except Exception:  # noqa: BLE001 - a broken connection has released the lock already
                self._connection.invalidate()
            self._connection = None

    def __enter__(self) -> NamedLock:
        return self

    def __exit__(self, *_exc) -> None:
        self.release()


def try_lock(engine: Engine, data_dir: Path, name: str, *, transient: bool = False) -> NamedLock | None:
    """Take the named lock without waiting; None when another process (or thread) holds it. A transient lock's
    file (SQLite) is removed on release, for locks named after something short-lived such as one import."""
    if engine.dialect.name == "postgresql":
        connection = engine.connect()
        try:
            got = connection.execute(text("SELECT pg_try_advisory_lock(:space, :key)"),
                                     {"space": LOCK_NAMESPACE, "key": _lock_key(name)}).scalar_one()
            connection.commit()  # the session-level lock outlives the transaction
        except BaseException:
            connection.close()
            raise
        if not got:
            connection.close()
            return None
        return NamedLock(name, connection=connection)
    path = _lock_file(engine, data_dir, name)
    handle = path.open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return NamedLock(name, handle=handle, remove=path if transient else None)


def lock_for_transaction(session, name: str) -> None:
    """Serialise transactions that read and then write shared state under `name`: on PostgreSQL a transaction-level
    advisory lock, released at commit or rollback. SQLite has a single writer already (nothing to take)."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection().execute(text("SELECT pg_advisory_xact_lock(:space, :key)"),
                                     {"space": LOCK_NAMESPACE, "key": _lock_key(name)})
