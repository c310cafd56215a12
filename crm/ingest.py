"""Bulk, idempotent, validated imports (CSV or NDJSON): good rows kept, bad rows reported by number.

A file is read as a stream of blocks; each block is validated vectorised (polars), staged (COPY on
PostgreSQL, executemany on SQLite) and upserted in one transaction together with the job's counters,
so a crash never leaves half a batch and the job record always agrees with what was written.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, select

from crm import activity, audit, state
from crm.models import ImportJob
from crm.validation import ERROR_SCHEMA, ROW, SPECS, validate
from kit.bulkwrite import (
    csv_payload,
    drop_secondary_structures,
    merge_staged,
    restore_structures,
    stage_frame,
)
from kit.channels import CHANNELS
from kit.columnar import few, read_frame
from kit.context import Context
from kit.db import refresh_statistics
from kit.errors import InvalidInput, NotFound
from kit.locks import NamedLock, try_lock

FORMATS = ("csv", "ndjson")
Progress = Callable[[int, int], None]


class ImportRejected(InvalidInput):
    """The file as a whole cannot be imported (unknown kind or format, missing columns, no header)."""


class ImportTooLarge(ImportRejected):
    """An upload beyond a size limit (413, naming the limit)."""

    status = 413
    title = "Payload too large"

    @classmethod
    def upload(cls, limit: int) -> ImportTooLarge:
        """The whole upload is past CRM_IMPORT_MAX_BYTES."""
        return cls(f"the upload is larger than {limit} bytes (CRM_IMPORT_MAX_BYTES)",
                   errors=[{"field": "body", "reason": f"more than {limit} bytes"}])


_QUOTE_OR_NEWLINE = re.compile(rb'["\n]')
_LONE_CR = re.compile(rb"\r(?!\n)")


def unify_newlines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lone CR line endings (old Mac exports) as LF; CRLF stays. A CR at a chunk's end waits for the next byte."""
    carry = b""
    for chunk in chunks:
        chunk = carry + chunk
        carry = b""
        if chunk.endswith(b"\r"):
            chunk, carry = chunk[:-1], b"\r"
        yield _LONE_CR.sub(b"\n", chunk) if b"\r" in chunk else chunk
    if carry:
        yield b"\n"


def split_records(chunks: Iterable[bytes], *, quoted: bool, block_bytes: int, max_record_bytes: int | None = None,
                  max_total_bytes: int | None = None) -> Iterator[bytes]:
    """Regroup arbitrary byte chunks into blocks of about block_bytes ending on record boundaries.

    With `quoted` (CSV) a newline inside a quoted field is not a boundary. Each new chunk is scanned once, in C
    (bytes.rfind and bytes.count over segments), with the quote state carried from chunk to chunk: re-counting
    quotes from the buffer's start for every newline made an early unterminated quote cost minutes. Memory stays
    within block_bytes + a chunk + max_record_bytes: a record that grows past max_record_bytes (no newline:
    /dev/zero, an unterminated quote, a giant header) stops the import, as does an upload past max_total_bytes.
    """
    buffer = bytearray()
    base = 0  # absolute offset of buffer[0], always a record boundary
    last_end = 0  # absolute offset just past the last record boundary seen
    in_quotes, total = False, 0
    for chunk in unify_newlines(chunks):
        start, total = total, total + len(chunk)
        if max_total_bytes is not None and total > max_total_bytes:
            raise ImportTooLarge.upload(max_total_bytes)
        buffer += chunk
        found, in_quotes = _last_boundary(buffer, start - base, in_quotes, quoted)
        if found >= 0:
            last_end = base + found
        while len(buffer) >= block_bytes and last_end > base:
            cut = _cut(buffer, block_bytes, last_end - base, quoted)
            yield bytes(buffer[:cut])
            del buffer[:cut]
            base += cut
        if max_record_bytes is not None and total - last_end > max_record_bytes:
            raise ImportTooLarge(
                f"a record longer than {max_record_bytes} bytes (CRM_IMPORT_MAX_RECORD_BYTES) after byte "
                f"{last_end}: a missing line end or an unterminated quote?",
                errors=[{"field": "body", "reason": f"record longer than {max_record_bytes} bytes"}])
    if buffer.strip():
        if not buffer.endswith(b"\n"):
            buffer += b"\n"
        yield bytes(buffer)


def _last_boundary(buffer: bytearray, start: int, in_quotes: bool, quoted: bool) -> tuple[int, bool]:
    """Offset just past the last boundary in buffer[start:] (-1 if none) and whether its end is inside quotes."""
    end = len(buffer)
    if not quoted:
        return buffer.rfind(b"\n", start) + 1 or -1, False
    at_end = in_quotes ^ bool(buffer.count(b'"', start, end) % 2)
    position = buffer.rfind(b"\n", start, end)
    inside = at_end ^ bool(buffer.count(b'"', position, end) % 2) if position >= 0 else True
    while position >= 0 and inside:  # walk back newline by newline; each segment's quotes are counted once
        previous = buffer.rfind(b"\n", start, position)
        if previous < 0:
            position = -1
            break
        inside ^= bool(buffer.count(b'"', previous, position) % 2)
        position = previous
    return (position + 1 if position >= 0 else -1), at_end


def _cut(buffer: bytearray, limit: int, known_end: int, quoted: bool) -> int:
    """Where to cut a block: the last boundary within `limit`, else the last one known (buffer[0] is a boundary)."""
    if known_end <= limit:
        return known_end
    position = buffer.rfind(b"\n", 0, limit)
    if position < 0:
        return known_end
    if not quoted:
        return position + 1
    inside = bool(buffer.count(b'"', 0, position) % 2)
    while inside:
        previous = buffer.rfind(b"\n", 0, position)
        if previous < 0:
            return known_end
        inside ^= bool(buffer.count(b'"', previous, position) % 2)
        position = previous
    return position + 1


def _normalise_header(names: Iterable[str]) -> list[str]:
    return [n.strip().lstrip("\ufeff").strip().lower() for n in names]


def _csv_frame(header: list[str], block: bytes, first_row: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Parse one CSV block (all text); on malformed input fall back to the csv module row by row."""
    try:
        frame = pl.read_csv(block, has_header=False, new_columns=header, infer_schema=False,
                            schema={h: pl.String for h in header})
        return frame.with_row_index(ROW, offset=first_row).with_columns(pl.col(ROW).cast(pl.Int64)), \
            pl.DataFrame(schema=ERROR_SCHEMA)
    except Exception:  # noqa: BLE001 - polars raises several types for malformed CSV; the slow path judges
        rows, errors = [], []
        # surrogateescape keeps undecodable bytes recognisable, so such a row is refused rather than its bytes
        # silently becoming U+FFFD (two distinct Latin-1 ids could then collide).
        reader = csv.reader(io.StringIO(block.decode("utf-8", errors="surrogateescape")))
        offset = 0
        while True:
            number = first_row + offset
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as error:  # e.g. a field beyond the csv module's size limit
                errors.append({"row": number, "field": "", "reason": f"unreadable CSV: {error}"[:200]})
                offset += 1
                continue
            offset += 1
            if any(_UNDECODABLE.search(value) for value in record):
                errors.append({"row": number, "field": "", "reason": "not UTF-8 text (re-save the file as UTF-8)"})
            elif len(record) > len(header):
                errors.append({"row": number, "field": "", "reason":
                               f"expected {len(header)} fields, found {len(record)}"})
            else:  # missing trailing fields are empty, as polars reads them
                rows.append([number, *record, *([""] * (len(header) - len(record)))])
        frame = pl.DataFrame(rows, schema={ROW: pl.Int64, **{h: pl.String for h in header}}, orient="row")
        return frame.with_columns(pl.col(h).replace("", None) for h in header), \
            pl.DataFrame(errors, schema=ERROR_SCHEMA)


_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _ndjson_frame(block: bytes, first_row: int, columns: tuple[str, ...]) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """Parse one NDJSON block into text columns; returns (frame, errors, rows in block)."""
    rows, errors = [], []
    lines = [line for line in block.split(b"\n") if line.strip()]
    for offset, line in enumerate(lines):
        number = first_row + offset
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; deep nesting a RecursionError
            errors.append({"row": number, "field": "", "reason": "not valid UTF-8 JSON (or nested too deep)"})
            continue
        if not isinstance(record, dict):
            errors.append({"row": number, "field": "", "reason": "not a JSON object"})
            continue
        rows.append([number, *(as_text(record.get(c)) for c in columns)])
    frame = pl.DataFrame(rows, schema={ROW: pl.Int64, **{c: pl.String for c in columns}}, orient="row")
    return frame, pl.DataFrame(errors, schema=ERROR_SCHEMA), len(lines)


def as_text(value: Any) -> str | None:
    """A JSON value as the text a CSV cell would hold (objects and lists as JSON)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


class SeenKeys:
    """Remembers the keys of an import (as 64-bit hashes) to report duplicates inside one file."""

    def __init__(self) -> None:
        self._sorted = np.empty(0, dtype=np.uint64)

    def duplicates(self, keys: pl.Series) -> pl.Series:
        """True for each key already seen earlier in the file; remembers the rest."""
        hashes = keys.hash(seed=7).to_numpy()
        within = (keys.is_duplicated() & ~keys.is_first_distinct()).to_numpy()
        position = np.searchsorted(self._sorted, hashes)
        position[position >= len(self._sorted)] = 0
        earlier = (self._sorted[position] == hashes) if len(self._sorted) else np.zeros(len(hashes), bool)
        duplicate = within | earlier
        fresh = np.sort(hashes[~duplicate])
        # Both runs are sorted, so a stable sort of the concatenation is a linear merge.
        self._sorted = np.sort(np.concatenate([self._sorted, fresh]), kind="stable")
        return pl.Series(duplicate)


NOTHING_TOUCHED = pl.DataFrame(schema={"customer_id": pl.Int64, "day": pl.Date})


@dataclass
class BatchResult:
    """What one loader call did; `touched`: the (customer_id, day) pairs whose state must be recomputed."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=ERROR_SCHEMA))
    touched: pl.DataFrame = field(default_factory=lambda: NOTHING_TOUCHED)


def _existing_ids(session: Session, table: str, keys: pl.Series) -> pl.DataFrame:
    """Map external ids to row ids for the keys of one batch (staged, then joined in the database)."""
    stage_frame(session, "stage_keys", pl.DataFrame({"external_id": keys.unique()}), {"external_id": "text"})
    return read_frame(
        session,
        f"SELECT t.external_id, t.id FROM {table} t JOIN stage_keys s ON s.external_id = t.external_id",
        {}, {"external_id": pl.String, "id": pl.Int64}, same_connection=True, small=few(len(keys)))


def _unknown_reference(frame: pl.DataFrame, ids: pl.DataFrame, column: str, what: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Join a reference column to known ids; rows pointing nowhere become errors."""
    joined = frame.join(ids.rename({"external_id": column, "id": f"{column}__id"}), on=column, how="left")
    missing = joined.filter(pl.col(f"{column}__id").is_null())
    errors = missing.select(pl.col(ROW).alias("row"), pl.lit(column).alias("field"),
                            pl.lit(f"unknown {what}").alias("reason"))
    return joined.filter(pl.col(f"{column}__id").is_not_null()), errors


# The fact tables an empty database can take in bulk, and the table their rows point to.
BULK_TABLES = {"orders": "customer", "order_item": "orders", "event": "customer"}


class BulkLoad:
    """First load of an empty fact table on PostgreSQL: one COPY straight in, secondary indexes rebuilt once.

    Maintaining the unique and (customer, time) indexes row by row is what bounds INSERT … ON CONFLICT
    (about 110k rows/s here); building them once at the end is several times cheaper. All blocks stream
    into a single COPY fed by a writer thread, so the server parses rows while Python validates the next
    block. The price: the whole file is one transaction (a crash leaves the table empty, as it was) and
    the table is locked against other writers and readers until the import ends. Conflicts cannot arise:
    the table was empty under that lock and duplicates inside the file are already rejected by `SeenKeys`.
    The foreign key to the referenced table is re-added (validated in one join) at the end too: every
    reference was resolved through `ids`, so it only fails if a referenced row was deleted meanwhile,
    and then the whole load rolls back.
    """

    def __init__(self, session: Session, table: str, rebuild: list[str]) -> None:
        self.table = table
        self._session = session
        self._rebuild = rebuild
        self._ids: pl.DataFrame | None = None
        self._copy: ExitStack | None = None
        self._stream = None

    @classmethod
    def begin(cls, session: Session, table: str) -> BulkLoad | None:
        """Take the table for a bulk load if it is an empty fact table on PostgreSQL (else None)."""
        if table not in BULK_TABLES or session.get_bind().dialect.name != "postgresql":
            return None
        connection = session.connection()
        if connection.exec_driver_sql(f"SELECT EXISTS (SELECT 1 FROM {table})").scalar():
            return None
        connection.exec_driver_sql(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        if connection.exec_driver_sql(f"SELECT EXISTS (SELECT 1 FROM {table})").scalar():
            return None  # rows arrived between the look and the lock
        rebuild = drop_secondary_structures(session, table)
        return cls(session, table, rebuild)

    def ids(self, keys: pl.Series) -> pl.DataFrame:
        """External id → row id of the referenced table, read whole once before the COPY starts.

        A reference committed by someone else after that read is reported as unknown (importing the
        file again picks it up); looking it up would need a second connection, which would wait on
        this import's own locks when the import runs inside a larger transaction.
        """
        if self._ids is None:
            self._ids = read_frame(self._session, f"SELECT external_id, id FROM {BULK_TABLES[self.table]}", {},
                                   {"external_id": pl.String, "id": pl.Int64}, same_connection=True)
        return self._ids.join(pl.DataFrame({"external_id": keys.unique()}), on="external_id", how="semi")

    def write(self, frame: pl.DataFrame, types: dict[str, str], order: list[str]) -> tuple[int, int]:
        """Stream the batch into the table's COPY; returns (inserted, updated) like `_merge`."""
        from psycopg.copy import QueuedLibpqWriter

        if self._copy is None:
            self._copy = ExitStack()
            raw = self._session.connection().connection.driver_connection
            cursor = self._copy.enter_context(raw.cursor())
            self._stream = self._copy.enter_context(cursor.copy(
                f"COPY {self.table} ({', '.join(types)}) FROM STDIN (FORMAT csv)", writer=QueuedLibpqWriter(cursor)))
        self._stream.write(csv_payload(frame.sort(order), types))
        return len(frame), 0

    def finish(self) -> None:
        """End the COPY, rebuild the dropped indexes and refresh the planner's statistics."""
        if self._copy is not None:
            self._copy.close()
        restore_structures(self._session, self.table, self._rebuild)

    def abort(self, failure: BaseException) -> None:
        """Cancel the COPY so the transaction can be rolled back."""
        if self._copy is not None:
            self._copy.__exit__(type(failure), failure, failure.__traceback__)


def load_orders(session: Session, ctx: Context, frame: pl.DataFrame, present: set[str],
                bulk: BulkLoad | None = None) -> BatchResult:
    """Write validated orders; unknown customers are row errors."""
    keys = frame["customer_external_id"]
    ids = bulk.ids(keys) if bulk else _existing_ids(session, "customer", keys)
    frame, errors = _unknown_reference(frame, ids, "customer_external_id", "customer")
    frame = frame.rename({"customer_external_id__id": "customer_id"})
    types = {"external_id": "text", "customer_id": "int", "ordered_at": "timestamp", "amount_paid": "money",
             "discount": "money", "cost_of_goods": "money", "coupon_code": "text", "status": "text",
             "refunded_amount": "money"}
    if bulk:
        now = ctx.clock.now()
        stamped = frame.with_columns(created_at=pl.lit(now), updated_at=pl.lit(now))
        written = bulk.write(stamped, types | {"created_at": "timestamp", "updated_at": "timestamp"},
                             ["customer_id", "ordered_at"])
        return _result(len(frame), *written, errors)
    stage_frame(session, "stage_orders", frame, types)
    # An order moved to another day or customer leaves its old bucket too: read where it was before writing.
    before = _previous_places(session, "orders", "stage_orders", "ordered_at")
    optional = [c for c in ("discount", "cost_of_goods", "coupon_code", "status", "refunded_amount") if c in present]
    written = merge_staged(
        session, table="orders", stage="stage_orders", key=["external_id"], columns=list(types),
        compare=["customer_id", "ordered_at", "amount_paid", *optional], params={"now": ctx.clock.now()},
        insert_extra={"created_at": ":now", "updated_at": ":now"}, update_extra={"updated_at": ":now"},
        insert_order="customer_id")
    activity.record_staged(session, "order", "stage_orders", ctx.clock.now())
    touched = pl.concat([before, state.touched_days(frame, "customer_id", "ordered_at")])
    return _result(len(frame), *written, errors, touched)


def _previous_places(session: Session, table: str, stage: str, moment: str) -> pl.DataFrame:
    """(customer_id, day) of the stored rows a staged batch is about to overwrite (by external id)."""
    stored = read_frame(session, f"SELECT t.customer_id, t.{moment} FROM {table} t JOIN {stage} s "
                        "ON s.external_id = t.external_id", {},
                        {"customer_id": pl.Int64, moment: pl.Datetime("us", "UTC")}, same_connection=True,
                        small=True)  # a batch's stored rows: at most one per staged row, rarely any
    return state.touched_days(stored, "customer_id", moment)


def load_order_items(session: Session, ctx: Context, frame: pl.DataFrame, present: set[str],
                     bulk: BulkLoad | None = None) -> BatchResult:
    """Write validated order lines keyed on (order, line number); unknown orders are row errors."""
    keys = frame["order_external_id"]
    ids = bulk.ids(keys) if bulk else _existing_ids(session, "orders", keys)
    frame, errors = _unknown_reference(frame, ids, "order_external_id", "order")
    frame = frame.rename({"order_external_id__id": "order_id"})
    types = {"order_id": "int", "line_no": "int", "sku": "text", "category": "text", "qty": "int",
             "unit_price": "money", "list_price": "money", "is_new_product": "bool"}
    if bulk:
        return _result(len(frame), *bulk.write(frame, types, ["order_id", "line_no"]), errors)
    stage_frame(session, "stage_items", frame, types)
    optional = [c for c in ("category", "list_price", "is_new_product") if c in present]
    written = merge_staged(session, table="order_item", stage="stage_items", key=["order_id", "line_no"],
                     columns=list(types), compare=["sku", "qty", "unit_price", *optional], params={})
    # A line decides whether its order was discounted or held a new product: the order's day is recomputed.
    owners = read_frame(session, "SELECT o.customer_id, o.ordered_at FROM orders o WHERE o.id IN "
                        "(SELECT DISTINCT s.order_id FROM stage_items s)", {},
                        {"customer_id": pl.Int64, "ordered_at": pl.Datetime("us", "UTC")}, same_connection=True)
    return _result(len(frame), *written, errors, state.touched_days(owners, "customer_id", "ordered_at"))


def load_events(session: Session, ctx: Context, frame: pl.DataFrame, present: set[str],
                bulk: BulkLoad | None = None) -> BatchResult:
    """Write validated events keyed on their external id (or customer + time + type when none was given)."""
    keys = frame["customer_external_id"]
    ids = bulk.ids(keys) if bulk else _existing_ids(session, "customer", keys)
    frame, errors = _unknown_reference(frame, ids, "customer_external_id", "customer")
    frame = frame.rename({"customer_external_id__id": "customer_id"})
    types = {"external_id": "text", "customer_id": "int", "occurred_at": "timestamp", "type": "text",
             "properties": "json"}
    if bulk:
        return _result(len(frame), *bulk.write(frame, types, ["customer_id", "occurred_at"]), errors)
    stage_frame(session, "stage_events", frame, types)
    before = _previous_places(session, "event", "stage_events", "occurred_at") if ctx_updates_events(present) \
        else pl.DataFrame(schema={"customer_id": pl.Int64, "day": pl.Date})
    written = merge_staged(session, table="event", stage="stage_events", key=["external_id"], columns=list(types),
                     compare=["customer_id", "occurred_at", "type", "properties"] if ctx_updates_events(present)
                     else [], params={}, insert_order="customer_id")
    activity.record_staged(session, "event", "stage_events", ctx.clock.now())
    touched = pl.concat([before, state.touched_days(frame, "customer_id", "occurred_at")])
    return _result(len(frame), *written, errors, touched)


# An ingestion-API batch marks its events this way: a `unique_id` seen before is a duplicate, kept as first stored
# (Klaviyo's and Segment's rule), where a file re-imported corrects what it stored.
FIRST_WINS = "__first_wins__"


def ctx_updates_events(present: set[str]) -> bool:
    """Whether an event batch overwrites stored events with the same id (imports) or keeps the first (the API)."""
    return FIRST_WINS not in present


def load_customers(session: Session, ctx: Context, frame: pl.DataFrame, present: set[str],
                   bulk: BulkLoad | None = None) -> BatchResult:
    """Write customers (contact data encrypted, keyed hashes beside) and apply consent columns."""
    cipher = ctx.cipher
    contact: dict[str, pl.Series] = {}
    types = {"external_id": "text"}
    for name in ("email", "phone", "name", "push_tokens"):
        if name in frame.columns:
            values = frame[name].to_list()
            contact[f"{name}_ciphertext"] = pl.Series([cipher.encrypt(v) for v in values], dtype=pl.Binary)
            searchable = [name_search_key(v) for v in values] if name == "name" else values
            contact[f"{name}_hash"] = pl.Series([cipher.blind_index(v) for v in searchable], dtype=pl.String)
            types |= {f"{name}_ciphertext": "bytes", f"{name}_hash": "text"}
    plain = {"time_zone": "text", "locale": "text", "birthday": "date", "signed_up_at": "timestamp",
             "membership_level": "text", "attributes": "json"}
    types |= {c: t for c, t in plain.items() if c in frame.columns}
    stage_frame(session, "stage_customers", frame.with_columns(**contact), types)
    # Who exists already, asked only when a journey greets new customers (the signup activity).
    known = read_frame(session, "SELECT c.external_id FROM customer c JOIN stage_customers s "
                       "ON s.external_id = c.external_id", {}, {"external_id": pl.String},
                       same_connection=True)["external_id"] if activity.interests(session).get("signup") else None
    settings = ctx.settings
    defaults = {"time_zone": f"'{settings.default_time_zone}'", "locale": f"'{settings.default_locale}'",
                "attributes": "'{}'"}
    compare = [c for c in types if c != "external_id" and not c.endswith("_ciphertext")]
    # Ciphertexts carry a fresh nonce each time: they change only when the keyed hash says the value did.
    ciphertexts = {
        f"{c.removesuffix('_hash')}_ciphertext":
            f"CASE WHEN t.{c} IS DISTINCT FROM {{new}}.{c} THEN {{new}}.{c.removesuffix('_hash')}_ciphertext "
            f"ELSE t.{c.removesuffix('_hash')}_ciphertext END"
        for c in compare if c.endswith("_hash")}
    written = merge_staged(
        session, table="customer", stage="stage_customers", key=["external_id"], columns=list(types),
        compare=compare, params={"now": ctx.clock.now()},
        insert_extra={**{c: d for c, d in defaults.items() if c not in types}, "created_at": ":now",
                      "updated_at": ":now"},
        update_extra={**ciphertexts, "updated_at": ":now"})
    _apply_consent(session, ctx, frame)
    # Every customer has a state row from the moment it exists (a new one's is empty).
    ids = read_frame(session, "SELECT c.id, c.external_id FROM customer c "
                     "JOIN stage_customers s ON s.external_id = c.external_id", {},
                     {"customer_id": pl.Int64, "external_id": pl.String}, same_connection=True)
    if known is not None:  # a customer this write created has signed up (when they say so, or now)
        now = ctx.clock.now()
        created = ids.filter(~pl.col("external_id").is_in(known.to_list())).join(
            frame.select("external_id", *(["signed_up_at"] if "signed_up_at" in frame.columns else [])),
            on="external_id", how="left")
        moment = pl.col("signed_up_at").fill_null(now) if "signed_up_at" in created.columns else pl.lit(now)
        activity.record(session, created.select("customer_id", kind=pl.lit("signup"),
                                                occurred_at=moment.cast(pl.Datetime("us", "UTC"))), now)
    touched = ids.select("customer_id").with_columns(pl.lit(None, pl.Date).alias("day"))
    return _result(len(frame), *written, pl.DataFrame(schema=ERROR_SCHEMA), touched)


def name_search_key(name: str | None) -> str | None:
    """What a name's keyed hash is taken of: case-folded, inner spaces collapsed (so 'Ana  LI' finds 'ana li')."""
    return " ".join(name.casefold().split()) if name else None


def _apply_consent(session: Session, ctx: Context, frame: pl.DataFrame) -> None:
    """Record consent columns as history; an import never turns an opt-out back on unless it is newer."""
    parts = []
    now = ctx.clock.now()
    source = pl.col("consent_source") if "consent_source" in frame.columns else pl.lit(None, pl.String)
    stated_at = pl.col("consent_at") if "consent_at" in frame.columns else pl.lit(None, pl.Datetime("us", "UTC"))
    for channel in CHANNELS.consent_channels():
        column = f"{channel}_consent"
        if column in frame.columns:
            parts.append(frame.filter(pl.col(column).is_not_null()).select(
                pl.col("external_id"), pl.lit(channel).alias("channel"), pl.col(column).alias("status"),
                source.fill_null("import").alias("source"), stated_at.alias("stated_at")))
    if not parts:
        return
    # `position` keeps the history in the file's order (channel by channel, as the registry lists them) whatever
    # join order the database picks: changes stated at the same moment are told apart by their ids.
    changes = pl.concat(parts).with_columns(pl.col("stated_at").fill_null(now).alias("changed_at"),
                                            pl.col("stated_at").is_not_null().alias("explicit")).with_row_index(
        "position")
    stage_frame(session, "stage_consent", changes, {"position": "int", "external_id": "text", "channel": "text",
                                               "status": "text", "source": "text", "changed_at": "timestamp",
                                               "explicit": "bool"})
    applies = ("FROM stage_consent s JOIN customer c ON c.external_id = s.external_id "
               "LEFT JOIN consent cur ON cur.customer_id = c.id AND cur.channel = s.channel "
               "WHERE cur.customer_id IS NULL OR (cur.status <> s.status AND "
               "(s.status = 'opted_out' OR (s.explicit AND s.changed_at > cur.changed_at)))")
    connection = session.connection()
    connection.execute(text(
        "INSERT INTO consent_change (customer_id, channel, status, source, changed_at, recorded_at) "
        f"SELECT c.id, s.channel, s.status, s.source, s.changed_at, :now {applies} ORDER BY s.position"), {"now": now})
    connection.execute(text(
        "INSERT INTO consent (customer_id, channel, status, source, changed_at) "
        f"SELECT c.id, s.channel, s.status, s.source, s.changed_at {applies} "
        "ON CONFLICT (customer_id, channel) DO UPDATE SET status = excluded.status, "
        "source = excluded.source, changed_at = excluded.changed_at"))


def _result(valid: int, inserted: int, updated: int, errors: pl.DataFrame,
            touched: pl.DataFrame | None = None) -> BatchResult:
    return BatchResult(inserted=inserted, updated=updated, unchanged=valid - inserted - updated, errors=errors,
                       touched=touched if touched is not None else NOTHING_TOUCHED)


LOADERS = {"customers": load_customers, "orders": load_orders, "order_items": load_order_items,
           "events": load_events}
TABLES = {"customers": "customer", "orders": "orders", "order_items": "order_item", "events": "event"}
WRITTEN = {"customers": ("customer", "consent", "consent_change"), "orders": ("orders",),
           "order_items": ("order_item",), "events": ("event",)}


def _dedupe_key(kind: str, frame: pl.DataFrame) -> pl.Series:
    if kind == "order_items":
        return frame.select(pl.concat_str([pl.col("order_external_id"), pl.col("line_no").cast(pl.String)],
                                          separator="#")).to_series()
    return frame["external_id"]


@dataclass
class _Totals:
    rows: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)


def _liveness_lock_name(job_id: int) -> str:
    return f"import-{job_id}"


def start_job(session: Session, ctx: Context, *, kind: str, fmt: str, source: str, actor: str,
              liveness: list[NamedLock] | None = None) -> ImportJob:
    """Create and commit the job record before any row is read (with `liveness`, hold the job's lock from before
    the row is visible: a `running` job whose lock is free has lost its process)."""
    if kind not in SPECS:
        raise ImportRejected(f"unknown import kind '{kind}'", errors=[
            {"field": "kind", "reason": f"one of {', '.join(SPECS)}"}])
    if fmt not in FORMATS:
        raise ImportRejected(f"unknown format '{fmt}'", errors=[{"field": "format", "reason": "csv or ndjson"}])
    job = ImportJob(kind=kind, source=source[:300], format=fmt, status="running", created_by=actor,
                    started_at=ctx.clock.now())
    session.add(job)
    session.flush()
    if liveness is not None:
        lock = try_lock(ctx.engine, ctx.settings.data_dir, _liveness_lock_name(job.id), transient=True)
        if lock is not None:  # always free for a new id (a dead holder's lock is released with its process)
            liveness.append(lock)
    audit.record(session, actor=actor, action="import.start", entity="import_job", entity_id=job.id,
                 at=job.started_at, after={"kind": kind, "format": fmt, "source": source})
    session.commit()
    return job


def mark_interrupted_imports(session: Session, ctx: Context) -> int:
    """Mark `running` jobs whose process is gone (its liveness lock is free) as `interrupted`; returns how many.

    Their committed blocks stay (data and counters commit together); importing the same file again finishes the
    job, since rows already stored come back as unchanged.
    """
    count = 0
    for job_id in session.exec(select(ImportJob.id).where(ImportJob.status == "running")).all():
        lock = try_lock(ctx.engine, ctx.settings.data_dir, _liveness_lock_name(job_id), transient=True)
        if lock is None:  # its importer is alive
            continue
        try:
            job = session.get(ImportJob, job_id, populate_existing=True, with_for_update=True)  # it may have just finished
            if job is None or job.status != "running":
                continue
            job.status = "interrupted"
            job.finished_at = ctx.clock.now()
            job.message = (f"the importing process stopped after {job.batches_committed} committed blocks "
                           f"({job.rows_total} rows, all kept); import the same file again to finish")
            session.add(job)
            audit.record(session, actor="system", action="import.interrupted", entity="import_job", entity_id=job_id,
                         at=job.finished_at, after={"batches_committed": job.batches_committed,
                                                    "rows_total": job.rows_total})
            session.flush()
            count += 1
        finally:
            lock.release()
    return count


def run_import(session: Session, ctx: Context, *, kind: str, chunks: Iterable[bytes], fmt: str = "csv",
               source: str = "upload", actor: str = "system", progress: Progress | None = None,
               block_bytes: int | None = None) -> ImportJob:
    """Import a stream of bytes; commits once per block (data and job counters together)."""
    liveness: list[NamedLock] = []
    job = start_job(session, ctx, kind=kind, fmt=fmt, source=source, actor=actor, liveness=liveness)
    totals = _Totals()
    try:
        _import_blocks(session, ctx, job, kind, chunks, fmt, totals, progress,
                       block_bytes or ctx.settings.import_block_bytes)
    except ImportRejected as rejected:
        session.rollback()
        _finish(session, ctx, job, totals, status="rejected", message=rejected.detail)
        raise
    except Exception as failure:
        session.rollback()
        _finish(session, ctx, job, totals, status="failed", message=failure_message(failure))
        raise
    else:
        _finish(session, ctx, job, totals, status="completed", message=job.message)
    finally:
        for lock in liveness:  # after _finish committed: a sweep that gets the lock then sees the final status
            lock.release()
    return job


def failure_message(failure: BaseException) -> str:
    """What a failed job records: a database error only by kind and SQLSTATE — its text quotes the row's values
    (attributes, say), and the job's message is read by marketers; other failures with their text."""
    database = isinstance(failure, DBAPIError) or type(failure).__module__.split(".")[0] in ("psycopg", "sqlite3")
    if database:
        original = getattr(failure, "orig", failure)
        code = getattr(original, "sqlstate", None)
        return f"{type(original).__name__}" + (f" (SQLSTATE {code})" if code else "") + ": a database error"
    return f"{type(failure).__name__}: {failure}"[:500]


@dataclass
class _Prepared:
    """One block parsed and validated, ready to load."""

    good: pl.DataFrame
    errors: pl.DataFrame
    rows: int
    bytes_done: int


def _prepare_blocks(ctx: Context, job: ImportJob, kind: str, chunks: Iterable[bytes], fmt: str,
                    block_bytes: int, present: set[str]) -> Iterator[_Prepared]:
    """Split, parse and validate block by block (pure CPU work, run ahead of the loader)."""
    spec = SPECS[kind]
    settings = ctx.settings
    defaults = ({"default_time_zone": settings.default_time_zone, "default_locale": settings.default_locale,
                 "default_region": settings.default_phone_region, "now": ctx.clock.now()}
                if kind == "customers" else {})
    header: list[str] | None = None
    next_row = 1
    bytes_done = 0
    for block in split_records(chunks, quoted=fmt == "csv", block_bytes=block_bytes,
                               max_record_bytes=settings.import_max_record_bytes,
                               max_total_bytes=settings.import_max_bytes):
        bytes_done += len(block)
        if fmt == "csv":
            if header is None:
                first, _, block = block.partition(b"\n")
                try:
                    header = _normalise_header(next(csv.reader([first.decode("utf-8")]), []))
                except (csv.Error, UnicodeDecodeError) as unreadable:
                    raise ImportRejected("the header line is not readable UTF-8 CSV",
                                         errors=[{"field": "header", "reason": type(unreadable).__name__}]) from None
                if len(header) > settings.import_max_columns:
                    raise ImportRejected(
                        f"the header has {len(header)} columns; at most {settings.import_max_columns} "
                        "(CRM_IMPORT_MAX_COLUMNS)", errors=[{"field": "header", "reason": "too many columns"}])
                present |= _check_header(spec, header, job)
                if not block.strip():
                    continue
            frame, parse_errors = _csv_frame(header, block, next_row)
            block_rows = len(frame) + len(parse_errors)
        else:
            frame, parse_errors, block_rows = _ndjson_frame(block, next_row, spec.columns)
            present |= {c for c in spec.columns if frame[c].is_not_null().any()}
        next_row += block_rows
        frame = frame.select(ROW, *[pl.col(c) if c in frame.columns else pl.lit(None, pl.String).alias(c)
                                    for c in spec.columns if c in present or c in spec.required])
        good, errors = validate(kind, frame, **defaults)
        yield _Prepared(good, pl.concat([parse_errors, errors]), block_rows, bytes_done)
    if header is None and fmt == "csv":
        raise ImportRejected("the file is empty: a CSV import needs a header line",
                             errors=[{"field": "header", "reason": "missing"}])


_END = object()


def _read_ahead(iterator: Iterator[_Prepared]) -> Iterator[_Prepared]:
    """Prepare the next block on a second thread while the caller loads the current one."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-prepare") as pool:
        pending = pool.submit(next, iterator, _END)
        while (item := pending.result()) is not _END:
            pending = pool.submit(next, iterator, _END)
            yield item


def _import_blocks(session: Session, ctx: Context, job: ImportJob, kind: str, chunks: Iterable[bytes], fmt: str,
                   totals: _Totals, progress: Progress | None, block_bytes: int) -> None:
    present: set[str] = set()
    bulk = BulkLoad.begin(session, TABLES[kind]) if ctx.settings.import_bulk_load else None
    try:
        _load_blocks(session, ctx, job, kind, chunks, fmt, totals, progress, block_bytes, present, bulk)
    except BaseException as failure:
        if bulk:
            bulk.abort(failure)
        raise
    if bulk:
        bulk.finish()  # ends the COPY: only then may the session use its connection again
        _save_counters(session, job, totals)
        state.rebuild(session, ctx)  # a first load of history: rebuilding once beats a refresh per block
        session.commit()
    refresh_statistics(session, WRITTEN[kind], totals.inserted + totals.updated)
    session.commit()


def _load_blocks(session: Session, ctx: Context, job: ImportJob, kind: str, chunks: Iterable[bytes], fmt: str,
                 totals: _Totals, progress: Progress | None, block_bytes: int, present: set[str],
                 bulk: BulkLoad | None) -> None:
    spec = SPECS[kind]
    seen = SeenKeys()
    for prepared in _read_ahead(_prepare_blocks(ctx, job, kind, chunks, fmt, block_bytes, present)):
        good = prepared.good
        duplicate = seen.duplicates(_dedupe_key(kind, good))
        dup_errors = good.filter(duplicate).select(
            pl.col(ROW).alias("row"), pl.lit(spec.key or "line_no").alias("field"),
            pl.lit("duplicate id inside the file (first occurrence kept)").alias("reason"))
        good = good.filter(~duplicate)
        result = LOADERS[kind](session, ctx, good, present, bulk) if not good.is_empty() else BatchResult()
        if not bulk:  # the state moves in the same transaction as the rows (a bulk load rebuilds it at the end)
            state.refresh(session, ctx, result.touched, cause="import")
        block_errors = pl.concat([prepared.errors, dup_errors, result.errors]).sort("row")
        _accumulate(totals, prepared.rows, result, block_errors, ctx.settings.import_max_reported_errors)
        if not bulk:  # a bulk load is one transaction: its counters are saved once, with all its rows
            _save_counters(session, job, totals)
            session.commit()
        if progress:
            progress(totals.rows, prepared.bytes_done)


def _check_header(spec, header: list[str], job: ImportJob) -> set[str]:
    missing = [c for c in spec.required if c not in header]
    if missing:
        raise ImportRejected(
            f"missing required column(s): {', '.join(missing)}",
            errors=[{"field": c, "reason": "required column missing from the header"} for c in missing])
    ignored = [c for c in header if c not in spec.columns]
    if ignored:
        job.message = f"ignored unknown column(s): {', '.join(ignored)}"[:500]
    return {c for c in header if c in spec.columns}


def _accumulate(totals: _Totals, block_rows: int, result: BatchResult, errors: pl.DataFrame, cap: int) -> None:
    totals.rows += block_rows
    totals.inserted += result.inserted
    totals.updated += result.updated
    totals.unchanged += result.unchanged
    totals.failed += errors["row"].n_unique() if not errors.is_empty() else 0
    room = cap - len(totals.errors)
    if room > 0 and not errors.is_empty():
        totals.errors.extend(errors.head(room).to_dicts())


def _save_counters(session: Session, job: ImportJob, totals: _Totals) -> None:
    job.rows_total = totals.rows
    job.rows_inserted = totals.inserted
    job.rows_updated = totals.updated
    job.rows_unchanged = totals.unchanged
    job.rows_failed = totals.failed
    job.errors = list(totals.errors)
    job.batches_committed += 1
    session.add(job)


def _finish(session: Session, ctx: Context, job: ImportJob, totals: _Totals, *, status: str,
            message: str | None) -> None:
    job = session.get(ImportJob, job.id) or job
    job.status = status
    job.message = message
    job.finished_at = ctx.clock.now()
    session.add(job)
    audit.record(session, actor=job.created_by, action=f"import.{status}", entity="import_job", entity_id=job.id,
                 at=job.finished_at, after={"rows_total": job.rows_total, "inserted": job.rows_inserted,
                                            "updated": job.rows_updated, "failed": job.rows_failed})
    session.commit()


def get_job(session: Session, job_id: int, ctx: Context | None = None) -> ImportJob:
    """One import job, or NotFound; with a context, a `running` job whose process is gone reads `interrupted`."""
    job = session.get(ImportJob, job_id)
    if job is None:
        raise NotFound(f"import job {job_id} does not exist")
    if ctx is not None and job.status == "running" and mark_interrupted_imports(session, ctx):
        session.refresh(job)
    return job


def file_chunks(path, chunk_bytes: int = 4 * 1024 * 1024) -> Iterator[bytes]:
    """Read a file in chunks (never whole into memory)."""
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            yield chunk

