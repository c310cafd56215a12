"""API keys (random, shown once, stored as keyed hashes), roles and the FastAPI dependencies."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from fastapi import Depends, Request
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from crm import audit
from crm.models import ApiKey, ConsoleSession, Role
from kit.columnar import driver_rows
from kit.context import Context, ContextDep
from kit.db import SessionDep
from kit.errors import Forbidden, NotFound, TooManyAttempts, Unauthorized

log = logging.getLogger(__name__)

KEY_PREFIX = "crm"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    key_id: int | None
    name: str
    role: Role

    @property
    def actor(self) -> str:
        """How the caller is named in the audit log."""
        return f"key:{self.key_id}:{self.name}" if self.key_id is not None else self.name


@dataclass(frozen=True)
class IssuedKey:
    """A freshly created key: the secret is only available here."""

    record: ApiKey
    secret: str


def create_key(session: Session, ctx: Context, *, name: str, role: Role, actor: str) -> IssuedKey:
    """Create a key for a role; returns the plaintext once."""
    token = secrets.token_urlsafe(32)
    prefix = secrets.token_hex(4)
    plaintext = f"{KEY_PREFIX}_{prefix}_{token}"
    now = ctx.clock.now()
    record = ApiKey(name=name, role=role.value, key_prefix=prefix, key_hash=ctx.cipher.hash_api_key(plaintext),
                    created_at=now, created_by=actor)
    session.add(record)
    session.flush()
    audit.record(session, actor=actor, action="api_key.create", entity="api_key", entity_id=record.id, at=now,
                 after={"name": name, "role": role.value, "prefix": prefix})
    return IssuedKey(record=record, secret=plaintext)


def revoke_key(session: Session, ctx: Context, *, key_id: int, actor: str) -> ApiKey:
    """Revoke a key; revoking twice is harmless."""
    record = session.get(ApiKey, key_id)
    if record is None:
        raise NotFound(f"api key {key_id} does not exist")
    if record.revoked_at is None:
        now = ctx.clock.now()
        record.revoked_at = now
        session.add(record)
        audit.record(session, actor=actor, action="api_key.revoke", entity="api_key", entity_id=key_id, at=now,
                     before={"revoked_at": None}, after={"revoked_at": now})
    return record


def list_keys(session: Session) -> list[ApiKey]:
    """All keys, newest first (hashes are never returned by the API)."""
    return list(session.exec(select(ApiKey).order_by(ApiKey.id.desc())))


def authenticate(session: Session, ctx: Context, presented: str) -> Principal:
    """Resolve a presented key to its principal, or raise Unauthorized."""
    # Every request asks this: a plain driver read, not an ORM entity (that was a tenth of a loaded worker's time).
    forms = ctx.cipher.api_key_hashes(presented)  # today's form first, then the keyed hashes of before
    marks = ", ".join(f":h{i}" for i in range(len(forms)))
    found = driver_rows(session, f"SELECT id, name, role, key_hash FROM api_key WHERE key_hash IN ({marks}) "
                                 "AND revoked_at IS NULL", {f"h{i}": form for i, form in enumerate(forms)})
    if not found:
        raise Unauthorized("invalid or revoked API key")
    key_id, name, role, stored = found[0]
    if stored != forms[0]:  # an old keyed hash: now that the key is in hand, store it in the form rotation keeps
        _upgrade_hash(session, key_id, forms[0])
    return Principal(key_id=key_id, name=name, role=Role(role))


def _upgrade_hash(session: Session, key_id: int, key_hash: str) -> None:
    """Best effort: a busy database (SQLite's one writer) must not fail the request; the next use tries again."""
    try:
        with session.begin_nested():
            session.execute(update(ApiKey).where(ApiKey.id == key_id).values(key_hash=key_hash))
    except OperationalError:
        log.info("api key %s: hash upgrade deferred (database busy)", key_id)


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send 'Authorization: Bearer <api key>'")
    return token.strip()


def key_prefix(presented: str) -> str:
    """The public part of a presented key ('crm_<prefix>_…'), the throttle's unit; '-' for other shapes."""
    parts = presented.split("_")
    return parts[1][:16] if len(parts) >= 3 and parts[0] == KEY_PREFIX else "-"


def authenticate_request(request: Request, session: Session, ctx: Context, presented: str) -> Principal:
    """`authenticate`, throttled: wrong keys are counted per (client address, presented key prefix), and past the
    limit further wrong keys from there get 429 until the window passes.

    A valid key is never refused for failures — others' behind the same address (a proxy), or an attacker's
    guessing at the same prefix: it is checked first, and a guess that matches 256 random bits is not a threat
    a throttle could stop. The address is the socket's peer unless `CRM_FORWARDED_ALLOW_IPS` names the proxy."""
    throttle = getattr(request.app.state, "auth_throttle", None)
    client = request.client.host if request.client else "unknown"
    now = ctx.clock.now()
    try:
        return authenticate(session, ctx, presented)
    except Unauthorized:
        if throttle is None:
            raise
        buckets = (f"{client}|{key_prefix(presented)}", client)
        if wait := throttle.wait_seconds(buckets, now):
            raise TooManyAttempts(f"too many failed API key attempts from this address; retry in {wait} s",
                                  retry_after=wait) from None
        throttle.failed(buckets, now)
        raise


def current_principal(request: Request, session: SessionDep, ctx: ContextDep) -> Principal:
    """FastAPI dependency: the caller behind the bearer key."""
    principal = authenticate_request(request, session, ctx, _bearer(request))
    request.state.principal = principal  # the access log names the acting key and role
    return principal


def require(*roles: Role):
    """Dependency factory: only the given roles pass; the roles are kept on it for the route table."""

    async def dependency(principal: Principal = Depends(current_principal)) -> Principal:  # async: no pool hop
        if principal.role not in roles:
            allowed = ", ".join(r.value for r in roles)
            raise Forbidden(f"role '{principal.role.value}' may not do this (allowed: {allowed})")
        return principal

    dependency.allowed_roles = frozenset(roles)  # type: ignore[attr-defined]
    return dependency


ADMIN = (Role.admin,)
STAFF = (Role.admin, Role.marketer, Role.support)


def open_console_session(session: Session, ctx: Context, principal: Principal, lifetime: timedelta) -> str:
    """A new server-side console session for a principal that just proved its key; returns the session's id."""
    now = ctx.clock.now()
    row = ConsoleSession(id=secrets.token_hex(16), key_id=principal.key_id, created_at=now, expires_at=now + lifetime)
    session.add(row)
    session.flush()
    return row.id


def revoke_console_session(session: Session, ctx: Context, session_id: str) -> None:
    """Sign a console session out (a copied cookie naming it stops working too)."""
    row = session.get(ConsoleSession, session_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = ctx.clock.now()
        session.add(row)
        session.flush()


def console_session_principal(session: Session, ctx: Context, session_id: str) -> Principal | None:
    """Who a console session belongs to: None when it is unknown, expired, signed out, or its key was revoked."""
    row = session.get(ConsoleSession, session_id)
    now = ctx.clock.now()
    if row is None or row.revoked_at is not None or not row.created_at <= now < row.expires_at:
        return None
    record = session.get(ApiKey, row.key_id)
    if record is None or record.revoked_at is not None:
        return None
    return Principal(key_id=record.id, name=record.name, role=Role(record.role))
