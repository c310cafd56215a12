"""Fast columnar reads into polars: COPY on PostgreSQL, ADBC on SQLite (committed data)."""

from __future__ import annotations

import io
import re
from datetime import datetime
from typing import Any

import polars as pl
from sqlmodel import Session

from crm.clock import ensure_utc

_PARAM = re.compile(r"(?<!:):([a-z_][a-z0-9_]*)")  # :name, but not a ::cast

# Tests run inside a transaction that is rolled back; ADBC's own connection could not see those rows,
# so a test session sets this flag and reads go through the session's connection instead.
SAME_CONNECTION_FLAG = "columnar_same_connection"


def _sqlite_value(value: Any) -> Any:
    """Bind values the way the SQLite columns store them (UTC text for datetimes)."""
    if isinstance(value, datetime):
        return ensure_utc(value).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def _pg_copy_csv(session: Session, query: str, params: dict[str, Any]) -> bytes:
    """Run COPY (query) TO STDOUT as CSV on the session's own connection (sees its transaction)."""
    from psycopg import sql

    raw = session.connection().connection.driver_connection
    literal = {k: sql.Literal(ensure_utc(v) if isinstance(v, datetime) else v).as_string(raw)
               for k, v in params.items()}
    inlined = _PARAM.sub(lambda m: literal[m.group(1)], query)
    buffer = io.BytesIO()
    with raw.cursor() as cursor, cursor.copy(f"COPY ({inlined}) TO STDOUT (FORMAT csv)") as copy:
        for block in copy:
            buffer.write(block)
    return buffer.getvalue()


def _sqlite_path(session: Session) -> str:
    return session.get_bind().url.database


def read_frame(session: Session, query: str, params: dict[str, Any], schema: dict[str, pl.DataType], *,
               same_connection: bool = False) -> pl.DataFrame:
    """Run a SELECT whose columns match `schema` (named :params) and return a polars frame.

    Datetime columns must be selected as integer microseconds since the epoch (see `epoch_us`).
    On SQLite the fast path reads committed data through its own ADBC connection; `same_connection`
    (for small reads inside a transaction, e.g. of temporary tables) uses the session's connection.
    """
    dialect = session.get_bind().dialect.name
    raw_schema = {name: (pl.Int64 if isinstance(dtype, pl.Datetime) else dtype) for name, dtype in schema.items()}
    if dialect == "postgresql":
        data = _pg_copy_csv(session, query, params)
        # COPY writes booleans as t/f: read them as text, then compare.
        text_schema = {n: (pl.String if t == pl.Boolean else t) for n, t in raw_schema.items()}
        frame = (pl.read_csv(data, has_header=False, new_columns=list(schema), schema=text_schema)
                 if data else pl.DataFrame(schema=text_schema))
        frame = frame.with_columns(pl.col(n) == "t" for n, t in raw_schema.items() if t == pl.Boolean)
    else:
        names = _PARAM.findall(query)
        positional = _PARAM.sub("?", query)
        values = [_sqlite_value(params[n]) for n in names]
        if same_connection or session.info.get(SAME_CONNECTION_FLAG):
            rows = session.connection().exec_driver_sql(positional, tuple(values)).fetchall()
            frame = pl.DataFrame(rows, schema=raw_schema, orient="row")
        else:
            import adbc_driver_sqlite.dbapi as adbc_sqlite

            with adbc_sqlite.connect(_sqlite_path(session)) as conn, conn.cursor() as cursor:
                cursor.execute(positional, values)
                frame = pl.from_arrow(cursor.fetch_arrow_table())
            frame = frame.rename(dict(zip(frame.columns, schema, strict=True))).cast(raw_schema)
    casts = [pl.col(n).cast(pl.Datetime("us")).dt.replace_time_zone("UTC") for n, t in schema.items()
             if isinstance(t, pl.Datetime)]
    return frame.with_columns(casts) if casts else frame


def epoch_us(session: Session, column: str) -> str:
    """SQL for a timestamp column as integer microseconds since the Unix epoch, per dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return f"CAST(EXTRACT(EPOCH FROM {column}) * 1000000 AS bigint)"
    # SQLite keeps 'YYYY-MM-DD HH:MM:SS.ffffff' text: whole seconds from strftime, microseconds from the tail.
    return (f"(CAST(strftime('%s', {column}) AS INTEGER) * 1000000"
            f" + CAST(substr({column}, 21, 6) AS INTEGER))")


def as_float(session: Session, column: str) -> str:
    """SQL casting a NUMERIC column to a float (ADBC on SQLite needs one type per column)."""
    return f"CAST({column} AS {'double precision' if session.get_bind().dialect.name == 'postgresql' else 'REAL'})"
