"""Idempotency-Key on every POST: the first request with a key runs and its 2xx answer is stored; a repeat with the
same body gets that answer again (nothing runs twice), a repeat with another body is a 422, one that arrives while
the first still runs is a 409. Keys are per caller (the Authorization header) and per path, kept `ttl`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

import anyio.to_thread
from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from kit.clock import Clock
from kit.errors import PROBLEM_JSON
from kit.models import IdempotencyRecord

HEADER = b"idempotency-key"
MAX_STORED_BODY = 4 << 20  # a larger answer runs again on a repeat rather than fill the table
TABLE = IdempotencyRecord.__table__


class IdempotencyStore:
    """The records, read and written in short transactions of their own (`begin` opens one)."""

    def __init__(self, begin: Callable[[], AbstractContextManager[Connection]], clock: Clock, ttl: timedelta) -> None:
        self.begin, self.clock, self.ttl = begin, clock, ttl

    def find(self, identity: str) -> dict[str, Any] | None:
        """The live record for an identity (expired ones do not count)."""
        with self.begin() as connection:
            row = connection.execute(select(TABLE).where(TABLE.c.identity == identity,
                                                         TABLE.c.expires_at > self.clock.now())).mappings().first()
        return dict(row) if row else None

    def claim(self, identity: str) -> bool:
        """Mark an identity in flight; False when another request holds it (expired records are cleared first)."""
        now = self.clock.now()
        try:
            with self.begin() as connection:
                connection.execute(delete(TABLE).where(TABLE.c.expires_at <= now))
                connection.execute(insert(TABLE).values(identity=identity, created_at=now,
                                                        expires_at=now + self.ttl))
        except IntegrityError:
            return False
        return True

    def finish(self, identity: str, request_hash: str, status: int, headers: list[list[str]], body: bytes) -> None:
        """Store the answer to replay."""
        with self.begin() as connection:
            connection.execute(update(TABLE).where(TABLE.c.identity == identity).values(
                request_hash=request_hash, status=status, headers=headers, body=body))

    def release(self, identity: str) -> None:
        """Forget an in-flight claim whose answer is not kept (an error: a repeat may run again)."""
        with self.begin() as connection:
            connection.execute(delete(TABLE).where(TABLE.c.identity == identity))


def _problem(status: int, title: str, detail: str, field: str | None = None) -> tuple[int, list, bytes]:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if field:
        body["errors"] = [{"field": field, "reason": detail}]
    return status, [(b"content-type", PROBLEM_JSON.encode())], json.dumps(body).encode()


class Idempotency:
    """Plain ASGI middleware around the versioned API; `store` is read from the app's state on each request (so a
    test can bind it to its transaction)."""

    def __init__(self, inner, store: Callable[[], IdempotencyStore], prefix: str = "/v1/") -> None:
        self.inner, self.store, self.prefix = inner, store, prefix

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith(self.prefix):
            await self.inner(scope, receive, send)
            return
        headers = dict(scope["headers"])
        key = headers.get(HEADER)
        if not key:  # none (or empty): an ordinary request
            await self.inner(scope, receive, send)
            return
        # Any length is hashed into the identity; a malformed key is no reason to answer before the route has
        # checked the caller (a role that may not POST here must hear 403, whatever the key).
        store = self.store()
        caller = headers.get(b"authorization", b"")
        identity = hashlib.sha256(b"\0".join((caller, scope["path"].encode(), key))).hexdigest()
        stored = await anyio.to_thread.run_sync(store.find, identity)
        if stored is None and await anyio.to_thread.run_sync(store.claim, identity):
            await self._first(scope, receive, send, store, identity)
            return
        body_hash = await _hash_whole_body(receive)
        if stored is None or stored["status"] is None:
            await _answer(send, *_problem(409, "Conflict", "a request with this Idempotency-Key is still in "
                                                           "progress: retry when it has finished"))
        elif stored["request_hash"] != body_hash:
            await _answer(send, *_problem(422, "Invalid input", "this Idempotency-Key was used with another body: "
                                                                "use a new key for a new request", "Idempotency-Key"))
        else:
            replayed = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in stored["headers"]]
            await _answer(send, stored["status"], [*replayed, (b"idempotency-replayed", b"true")], stored["body"])

    async def _first(self, scope, receive, send, store: IdempotencyStore, identity: str) -> None:
        digest, finished = hashlib.sha256(), [False]
        status, kept_headers, chunks, size = [500], [], [], [0]

        async def hashing_receive():
            message = await receive()
            if message["type"] == "http.request":
                digest.update(message.get("body", b""))
                finished[0] = finished[0] or not message.get("more_body", False)
            return message

        async def capturing_send(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                kept_headers.extend([k.decode("latin-1"), v.decode("latin-1")] for k, v in message.get("headers", ())
                                    if k.lower() not in (b"content-length", b"date", b"server"))
            elif message["type"] == "http.response.body":
                size[0] += len(message.get("body", b""))
                if size[0] <= MAX_STORED_BODY:
                    chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.inner(scope, hashing_receive, capturing_send)
        finally:
            # Only a success is kept, and only when the whole body was read (its hash is what a repeat is held to).
            if 200 <= status[0] < 300 and finished[0] and size[0] <= MAX_STORED_BODY:
                await anyio.to_thread.run_sync(store.finish, identity, digest.hexdigest(), status[0], kept_headers,
                                               b"".join(chunks))
            else:
                await anyio.to_thread.run_sync(store.release, identity)


async def _hash_whole_body(receive) -> str:
    digest = hashlib.sha256()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        digest.update(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return digest.hexdigest()


async def _answer(send, status: int, headers: list, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def purge_expired(session, now) -> int:
    """Delete the records whose replay window has closed (the cleanup job); returns how many."""
    return session.execute(delete(TABLE).where(TABLE.c.expires_at < now)).rowcount or 0


def engine_store(engine, clock: Clock, ttl: timedelta) -> IdempotencyStore:
    """The store of a running service: its own committed transactions on the engine."""
    return IdempotencyStore(engine.begin, clock, ttl)


def session_store(session, clock: Clock, ttl: timedelta) -> IdempotencyStore:
    """A store inside an open session's transaction, each operation in a savepoint (tests)."""
    from contextlib import contextmanager

    @contextmanager
    def begin() -> Iterator[Connection]:
        with session.begin_nested():
            yield session.connection()

    return IdempotencyStore(begin, clock, ttl)
