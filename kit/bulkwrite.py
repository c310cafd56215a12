"""Set-based writes of polars frames: staging tables (COPY / executemany) and merge (upsert) statements.

Shared by the import and by every package that writes many rows at once (segment states, churn scores).
"""

from __future__ import annotations

import json
from datetime import date, datetime

import polars as pl
from sqlalchemy import text
from sqlmodel import Session

STAGED = "crm_staged_tables"  # connection.info key: temporary tables this connection holds, by column signature


# A staging table's statistics are refreshed when its row count moved this many times from the count they were
# taken at; a small temporary table is emptied by DELETE, truncated once dead rows piled up (see stage_frame).
RESTAT_FACTOR = 4
DEAD_ROWS_MAX = 200  # rows DELETE may leave behind before a TRUNCATE: a page or two


def stage_frame(session: Session, name: str, frame: pl.DataFrame, types: dict[str, str]) -> None:
    """Fill a temporary staging table with the frame's columns (created on first use per connection).

    The table lives on the (pooled) connection. Its columns can follow the file being imported, so one left
    with other columns is dropped and made again; one with the same columns is emptied and reused, which keeps a
    single-event write from paying a CREATE (catalog rows) per staging table. A rollback forgets what this
    connection holds (kit.db clears the note), since it may have taken the tables with it.

    On PostgreSQL a temporary table has no statistics until ANALYZE, and a join on a few staged keys planned
    without them scanned whole tables; but ANALYZE, like TRUNCATE (a new file each time), costs a millisecond
    or two, several times over per single-event write. So between fills of a few rows (`SMALL_FRAME_ROWS`) the
    table is emptied with DELETE — truncated once `DEAD_ROWS_MAX` dead rows piled up, as nothing vacuums
    temporary tables and the planner scales its row estimate with the pages they fill — and analysed again only
    when its row count moved `RESTAT_FACTOR` times from the one its statistics saw; larger fills are truncated
    and analysed every time.
    """
    pg = session.get_bind().dialect.name == "postgresql"
    columns = ", ".join(f"{c} {sql_type(t, pg)}" for c, t in types.items())
    connection = session.connection()
    held = connection.info.setdefault(STAGED, {})
    note = held.get(name)
    rows = len(frame)
    if note is not None and note["columns"] == columns:
        # Only between small fills: the dead rows DELETE leaves grow the table's pages, and the planner scales
        # its row estimate with them (500-row batches emptied this way were planned as 100k rows, with hash
        # joins over whole tables).
        small = rows <= SMALL_FRAME_ROWS and (note["analysed_rows"] or 0) <= SMALL_FRAME_ROWS
        if pg and small and note["dead_rows"] + rows <= DEAD_ROWS_MAX:
            connection.exec_driver_sql(f"DELETE FROM {name}")
            note["dead_rows"] += rows
        else:
            note["dead_rows"] = 0
            connection.exec_driver_sql(f"TRUNCATE {name}" if pg else f"DELETE FROM {name}")
            note["analysed_rows"] = None  # TRUNCATE forgets the statistics
    else:
        connection.exec_driver_sql(f"DROP TABLE IF EXISTS {'pg_temp' if pg else 'temp'}.{name}")
        connection.exec_driver_sql(f"CREATE TEMP TABLE {name} ({columns})")
        note = held[name] = {"columns": columns, "analysed_rows": None, "dead_rows": 0}
    insert_frame(session, name, frame, types)
    seen = note["analysed_rows"]
    if pg and (seen is None or not max(seen, 1) / RESTAT_FACTOR <= max(rows, 1) <= max(seen, 1) * RESTAT_FACTOR):
        connection.exec_driver_sql(f"ANALYZE {name}")
        note["analysed_rows"] = rows


def insert_frame(session: Session, table: str, frame: pl.DataFrame, types: dict[str, str]) -> None:
    """Append a frame's columns to a table: COPY on PostgreSQL, one executemany on SQLite."""
    frame = frame.select(list(types))
    if frame.is_empty():
        return
    if session.get_bind().dialect.name == "postgresql":
        copy_in(session, table, frame, types)
        return
    ready = frame.with_columns(
        pl.col(c).dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%d %H:%M:%S.%6f")
        for c, t in types.items() if t == "timestamp")
    ready = ready.with_columns(pl.col(c).cast(pl.String) for c, t in types.items() if t == "date")
    placeholders = ", ".join("?" for _ in types)
    raw = session.connection().connection.driver_connection
    raw.executemany(f"INSERT INTO {table} ({', '.join(types)}) VALUES ({placeholders})", ready.iter_rows())


SMALL_FRAME_ROWS = 50  # up to this many rows, CSV is written in Python: polars' writer costs ~0.4 ms to start


def csv_payload(frame: pl.DataFrame, types: dict[str, str]) -> bytes:
    """A frame's columns as CSV that PostgreSQL's COPY reads (bytes as \\x hex, empty fields NULL)."""
    if frame.height <= SMALL_FRAME_ROWS:
        return _small_csv(frame.select(list(types)), types)
    ready = frame.select(list(types)).with_columns(
        pl.col(c).map_elements(lambda b: "\\x" + b.hex(), return_dtype=pl.String, skip_nulls=True)
        for c, t in types.items() if t == "bytes")
    return ready.write_csv(include_header=False, null_value="",
                           datetime_format="%Y-%m-%dT%H:%M:%S%.6f%z").encode()


def _small_csv(frame: pl.DataFrame, types: dict[str, str]) -> bytes:
    """The same CSV for a few rows: every value quoted (so an empty text stays empty), NULL as an empty field."""
    kinds = [types[c] for c in frame.columns]
    lines = []
    for row in frame.iter_rows():
        fields = []
        for value, kind in zip(row, kinds, strict=True):
            if value is None:
                fields.append("")
                continue
            if kind == "bytes":
                text = "\\x" + bytes(value).hex()
            elif kind == "json" and not isinstance(value, str):
                text = json.dumps(value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, datetime | date):
                text = value.isoformat()
            else:
                text = repr(value) if isinstance(value, float) else str(value)
            fields.append('"' + text.replace('"', '""') + '"')
        lines.append(",".join(fields))
    return ("\n".join(lines) + "\n").encode() if lines else b""


def copy_in(session: Session, table: str, frame: pl.DataFrame, types: dict[str, str]) -> None:
    """COPY a frame's columns into a PostgreSQL table (CSV through the session's connection)."""
    raw = session.connection().connection.driver_connection
    with raw.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(types)}) FROM STDIN (FORMAT csv)") as copy:
        copy.write(csv_payload(frame, types))


def sql_type(kind: str, pg: bool) -> str:
    return {
        "text": "text", "int": "bigint" if pg else "INTEGER", "float": "double precision" if pg else "REAL", "money": "numeric(14,2)" if pg else "REAL",
        "timestamp": "timestamptz" if pg else "TEXT", "date": "date" if pg else "TEXT",
        "bool": "boolean" if pg else "INTEGER", "json": "jsonb" if pg else "TEXT", "bytes": "bytea" if pg else "BLOB",
    }[kind]


def merge_staged(session: Session, *, table: str, stage: str, key: list[str], columns: list[str], compare: list[str],
           params: dict, insert_extra: dict[str, str] | None = None, update_extra: dict[str, str] | None = None,
           insert_order: str | None = None) -> tuple[int, int]:
    """Write a staged batch: insert missing rows, update rows whose compared columns differ.

    `update_extra` expressions name the incoming row `{new}` and the stored row `t`.
    Returns (inserted, updated). PostgreSQL does it in one INSERT … ON CONFLICT DO UPDATE … WHERE changed
    (one index probe per row) and tells inserts from updates with RETURNING (xmax = 0); SQLite, which
    cannot tell them apart that way, runs an UPDATE of changed rows and then an INSERT of missing ones.
    """
    connection = session.connection()
    extra = insert_extra or {}
    target = [*columns, *extra]
    source = [*(f"s.{c}" for c in columns), *extra.values()]
    order = f" ORDER BY s.{insert_order}" if insert_order else ""
    if session.get_bind().dialect.name == "postgresql":
        if compare:
            assignments = [f"{c} = excluded.{c}" for c in compare] + [
                f"{c} = {e.format(new='excluded')}" for c, e in (update_extra or {}).items()]
            changed = " OR ".join(f"t.{c} IS DISTINCT FROM excluded.{c}" for c in compare)
            on_conflict = f"DO UPDATE SET {', '.join(assignments)} WHERE {changed}"
        else:
            on_conflict = "DO NOTHING"
        flags = connection.execute(text(
            f"INSERT INTO {table} AS t ({', '.join(target)}) SELECT {', '.join(source)} FROM {stage} s{order} "
            f"ON CONFLICT ({', '.join(key)}) {on_conflict} RETURNING (xmax = 0)"), params).scalars().all()
        inserted = sum(flags)
        return inserted, len(flags) - inserted
    match = " AND ".join(f"t.{k} = s.{k}" for k in key)
    updated = 0
    if compare:
        assignments = [f"{c} = s.{c}" for c in compare] + [
            f"{c} = {e.format(new='s')}" for c, e in (update_extra or {}).items()]
        changed = " OR ".join(f"t.{c} IS DISTINCT FROM s.{c}" for c in compare)
        updated = connection.execute(text(
            f"UPDATE {table} AS t SET {', '.join(assignments)} FROM {stage} s WHERE {match} AND ({changed})"),
            params).rowcount
    inserted = connection.execute(text(
        f"INSERT INTO {table} ({', '.join(target)}) SELECT {', '.join(source)} FROM {stage} s "
        f"WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {match}){order} "
        f"ON CONFLICT ({', '.join(key)}) DO NOTHING"), params).rowcount
    return inserted, updated


def drop_secondary_structures(session: Session, table: str) -> list[str]:
    """Drop a PostgreSQL table's secondary indexes, unique and foreign-key constraints; return what rebuilds them.

    For filling an empty table inside one transaction: per-row foreign-key checks and index upkeep cost
    several times the COPY itself (1M segment rows: 10 s with them, 1.3 s without), while re-adding them
    afterwards is one index build and one validating join each. The primary key stays; so does any index a
    foreign key of another table leans on. Takes the table's ACCESS EXCLUSIVE lock until the transaction ends.
    """
    connection = session.connection()
    connection.exec_driver_sql(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    rebuild = []
    for name, definition in connection.exec_driver_sql(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            f"WHERE conrelid = '{table}'::regclass AND contype = 'f'").all():
        connection.exec_driver_sql(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        rebuild.append(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
    indexes = connection.exec_driver_sql(
        "SELECT i.relname, pg_get_indexdef(x.indexrelid), c.conname, pg_get_constraintdef(c.oid) "
        "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid "
        f"WHERE x.indrelid = '{table}'::regclass AND NOT x.indisprimary AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.conindid = x.indexrelid)").all()
    for index, index_sql, constraint, constraint_sql in indexes:
        if constraint:
            connection.exec_driver_sql(f'ALTER TABLE {table} DROP CONSTRAINT "{constraint}"')
            rebuild.append(f'ALTER TABLE {table} ADD CONSTRAINT "{constraint}" {constraint_sql}')
        else:
            connection.exec_driver_sql(f'DROP INDEX "{index}"')
            rebuild.insert(0, index_sql)  # indexes first: a re-added foreign key may lean on one
    return rebuild


def restore_structures(session: Session, table: str, rebuild: list[str]) -> None:
    """Run what `drop_secondary_structures` returned, then refresh the planner's statistics."""
    connection = session.connection()
    for statement in rebuild:
        connection.exec_driver_sql(statement)
    connection.exec_driver_sql(f"ANALYZE {table}")


def fill_empty_table(session: Session, table: str, frame: pl.DataFrame, types: dict[str, str], *,
                     min_rows: int = 50_000) -> None:
    """Insert many rows; into an empty PostgreSQL table without per-row constraint upkeep (see above)."""
    connection = session.connection()
    big_first_fill = (session.get_bind().dialect.name == "postgresql" and len(frame) >= min_rows
                      and not connection.exec_driver_sql(f"SELECT EXISTS (SELECT 1 FROM {table})").scalar())
    if not big_first_fill:
        insert_frame(session, table, frame, types)
        return
    rebuild = drop_secondary_structures(session, table)
    insert_frame(session, table, frame, types)
    restore_structures(session, table, rebuild)
