"""Secret rotation: move every stored contact value (ciphertext and lookup hash) to the current key, in short
batches, while the service runs.

Reads and lookups work throughout: the cipher decrypts under every configured key and lookups match the hashes of
each (kit.crypto). Each row is rewritten only if its contact columns are still what the batch read — a customer
updated meanwhile was written under the current key already and is left as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from crm.ingest import name_search_key
from crm.models import Customer
from kit.context import Context
from kit.db import session_scope

CONTACT_FIELDS = ("email", "phone", "name", "push_tokens")


def _ciphertext(field: str):
    return getattr(Customer, f"{field}_ciphertext")


def _on_other_key(ctx: Context):
    """SQL: a row holds a contact value not under the current key (unmarked, or marked with another key id)."""
    current = ctx.cipher.current_mark
    return or_(*[and_(_ciphertext(f).is_not(None), func.substr(_ciphertext(f), 1, len(current)) != current)
                 for f in CONTACT_FIELDS])


def pending(session: Session, ctx: Context) -> int:
    """How many customers still hold a value under an older key."""
    return session.execute(select(func.count()).select_from(Customer).where(_on_other_key(ctx))).scalar_one()


def status(session: Session, ctx: Context) -> dict[str, Any]:
    """The current key id, the other configured ones, and what is left to rotate."""
    return {"current_key_id": ctx.cipher.key_id, "previous_key_ids": ctx.cipher.key_ids[1:],
            "customers_pending": pending(session, ctx)}


def rotate(ctx: Context, *, batch: int = 1000, progress: Callable[[int, int], None] | None = None
           ) -> dict[str, Any]:
    """Re-encrypt and re-hash every customer's contact data under the current key, `batch` rows per transaction;
    `progress(done, total)` after each. Safe to stop and run again: it resumes where rows are still old."""
    with session_scope(ctx.engine) as session:
        total = pending(session, ctx)
    rotated = skipped = 0
    after = 0
    while True:
        try:
            batch_rotated, batch_skipped, last = _rotate_batch(ctx, after, batch)
        except OperationalError:
            # SQLite's one writer was busy, or committed under this batch's read: it rolled back; read it again.
            time.sleep(0.05)
            continue
        if last is None:
            break
        rotated, skipped, after = rotated + batch_rotated, skipped + batch_skipped, last
        if progress is not None:
            progress(rotated + skipped, total)
    return {"key_id": ctx.cipher.key_id, "rotated": rotated, "changed_meanwhile": skipped,
            "customers_pending": _pending_now(ctx)}


def _rotate_batch(ctx: Context, after: int, batch: int) -> tuple[int, int, int | None]:
    """One transaction: up to `batch` customers after id `after` moved to the current key; (rotated, changed
    meanwhile, last id seen or None when none was left)."""
    with session_scope(ctx.engine) as session:
        rows = session.execute(
            select(Customer.id, *[_ciphertext(f) for f in CONTACT_FIELDS])
            .where(_on_other_key(ctx), Customer.id > after).order_by(Customer.id).limit(batch)).all()
        if not rows:
            return 0, 0, None
        params = []
        for row in rows:
            values: dict[str, Any] = {"cid": row[0]}
            for field, ciphertext in zip(CONTACT_FIELDS, row[1:], strict=True):
                plaintext = ctx.cipher.decrypt(ciphertext)
                searchable = name_search_key(plaintext) if field == "name" else plaintext
                values |= {f"old_{field}": ciphertext, f"new_{field}_ciphertext": ctx.cipher.encrypt(plaintext),
                           f"new_{field}_hash": ctx.cipher.blind_index(searchable)}
            params.append(values)
        # One statement for the batch; each row only if its contact columns are still what was read.
        unchanged = [_ciphertext(f).is_not_distinct_from(bindparam(f"old_{f}")) for f in CONTACT_FIELDS]
        statement = update(Customer).where(Customer.id == bindparam("cid"), *unchanged).values(
            {f"{f}_{part}": bindparam(f"new_{f}_{part}") for f in CONTACT_FIELDS for part in ("ciphertext", "hash")})
        written = session.connection().execute(statement, params).rowcount
        rotated, skipped = written, len(params) - written  # the others were written meanwhile, under the current key
        return rotated, skipped, rows[-1][0]


def _pending_now(ctx: Context) -> int:
    with session_scope(ctx.engine) as session:
        return pending(session, ctx)
