"""Foundation benchmark: generator speed, bulk import into PostgreSQL and SQLite, columnar read vs pandas.

    .venv/bin/python bench/bench_foundation.py --customers 1000000 --backends postgres,sqlite

Data comes from the project's own generator (seeded); each backend gets a fresh database. Reads run in
subprocesses so their peak memory is measured on its own. Results go to bench/results/foundation.json.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
import uuid
from datetime import date
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, parser  # noqa: E402
from crm.ingest import file_chunks, run_import  # noqa: E402
from kit.context import build_context  # noqa: E402
from kit.db import make_engine, session_scope  # noqa: E402
from kit.migrations import upgrade_to_head  # noqa: E402
from kit.settings import Settings  # noqa: E402
from wiring.generator import GeneratorConfig, write_dataset  # noqa: E402

PG_SERVER = os.environ.get("CRM_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")
READ_SCRIPT = """
import resource, sys, time, json
from datetime import datetime, UTC
from kit.db import make_engine
from sqlmodel import Session
url, how = sys.argv[1], sys.argv[2]
engine = make_engine(url)
end = datetime(2100, 1, 1, tzinfo=UTC)
started = time.perf_counter()
if how == "columnar":
    from crm.service import orders_frame
    with Session(engine) as session:
        rows = len(orders_frame(session, None, end))
else:
    import pandas as pd
    with engine.connect() as connection:
        frame = pd.read_sql("SELECT id, customer_id, ordered_at, amount_paid, discount, cost_of_goods, "
                            "coupon_code FROM orders", connection)
        rows = len(frame)
elapsed = time.perf_counter() - started
print(json.dumps({"rows": rows, "seconds": elapsed,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def fresh_database(backend: str, data_dir: Path) -> tuple[str, callable]:
    """A new empty database URL and a function that drops it."""
    if backend == "sqlite":
        path = data_dir / f"bench-{uuid.uuid4().hex[:6]}.sqlite3"
        return f"sqlite:///{path}", lambda: [p.unlink(missing_ok=True) for p in data_dir.glob(f"{path.name}*")]
    name = f"crm_bench_{uuid.uuid4().hex[:8]}"
    plain = PG_SERVER.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(f"{plain}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(f"{plain}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{PG_SERVER}/{name}", drop


def timed_import(ctx, kind: str, path: Path) -> dict:
    """Import one file, return rows, seconds and rows/s."""
    started = time.perf_counter()
    with session_scope(ctx.engine) as session:
        job = run_import(session, ctx, kind=kind, chunks=file_chunks(path), actor="bench")
    seconds = time.perf_counter() - started
    return {"rows": job.rows_total, "inserted": job.rows_inserted, "failed": job.rows_failed,
            "seconds": round(seconds, 1), "rows_per_s": round(job.rows_total / seconds)}


def timed_read(url: str, how: str) -> dict:
    """Read all orders in a subprocess; time and peak memory of that process."""
    out = subprocess.run([sys.executable, "-c", READ_SCRIPT, url, how], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}


def main() -> None:
    """Run the benchmark and write bench/results/foundation.json."""
    options = parser("postgres,sqlite")
    options.add_argument("--kinds", default="customers,orders", help="also: order_items,events")
    options.add_argument("--skip-pandas", action="store_true")
    args = options.parse_args()

    data = args.data / f"{args.customers}-{args.seed}"
    manifest = data / "manifest.json"
    results: dict = {"machine": machine() | {"python": platform.python_version()},
        "customers": args.customers, "seed": args.seed}
    if not manifest.exists():
        started = time.perf_counter()
        counts = write_dataset(GeneratorConfig(customers=args.customers, seed=args.seed, end=date(2026, 11, 1)), data)
        results["generator"] = {"seconds": round(time.perf_counter() - started, 1), "rows": counts}
        print(f"generator: {results['generator']}", flush=True)
    results["rows"] = json.loads(manifest.read_text())["rows"]

    for backend in args.backends.split(","):
        url, drop = fresh_database(backend, args.data)
        try:
            settings = Settings(database_url=url, secret_key="bench-secret", data_dir=args.data)
            ctx = build_context(settings, engine=make_engine(url))
            upgrade_to_head(ctx.engine)
            section: dict = {}
            for kind in args.kinds.split(","):
                section[f"import_{kind}"] = timed_import(ctx, kind, data / f"{kind}.csv")
                print(f"{backend} import {kind}: {section[f'import_{kind}']}", flush=True)
            ctx.engine.dispose()
            section["read_columnar_after_import"] = timed_read(url, "columnar")
            print(f"{backend} columnar read right after the import: {section['read_columnar_after_import']}",
                  flush=True)
            if backend == "postgres":
                # The first scan after a bulk load sets hint bits on every tuple (it writes); autovacuum
                # does the same in steady state, so the read is timed again after VACUUM (ANALYZE).
                plain = url.replace("postgresql+psycopg://", "postgresql://")
                with psycopg.connect(plain, autocommit=True) as connection:
                    connection.execute("VACUUM (ANALYZE) orders")
            section["read_columnar"] = timed_read(url, "columnar")
            print(f"{backend} columnar read (steady state): {section['read_columnar']}", flush=True)
            if not args.skip_pandas:
                section["read_pandas"] = timed_read(url, "pandas")
                print(f"{backend} pandas.read_sql: {section['read_pandas']}", flush=True)
            results[backend] = section
        finally:
            drop()
    out = ROOT / "bench" / "results" / "foundation.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps(previous | results, indent=2))  # a run of one backend keeps the other's figures
    print(f"peak RSS of the benchmark process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
