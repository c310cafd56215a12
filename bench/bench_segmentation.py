"""Segmentation benchmark: `crm segment run` end to end on generator data, first run and reruns, vs the naive way.

    .venv/bin/python bench/bench_segmentation.py --customers 1000000 --backends postgres,sqlite

Loads the generator's data set (bench/bench_foundation.py's cache) into a database kept between runs
(`crm_bench_seg_<N>` on PostgreSQL, var/bench-data/seg-<N>.sqlite3), then runs segmentation in a
subprocess per run so peak memory is that run's own. The naive way (pandas.read_sql + groupby + one
ORM object per customer) runs on a 100k-customer sample and is extrapolated linearly.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import kept_postgres_database, machine, parser, run_json, save  # noqa: E402
from crm.ingest import file_chunks, run_import  # noqa: E402
from kit.context import build_context  # noqa: E402
from kit.db import make_engine, session_scope  # noqa: E402
from kit.migrations import upgrade_to_head  # noqa: E402
from kit.settings import Settings  # noqa: E402
from wiring.generator import GeneratorConfig, write_dataset  # noqa: E402

END = date(2026, 11, 1)
RUN_SCRIPT = """
import json, resource, sys, time
from datetime import datetime, UTC
from kit.context import build_context
from kit.db import session_scope
from kit.settings import Settings
from segmentation.service import run_segmentation, summary_of
url, day = sys.argv[1], sys.argv[2]
ctx = build_context(Settings(database_url=url, secret_key="bench-secret"))
started = time.perf_counter()
with session_scope(ctx.engine) as session:
    run = run_segmentation(session, ctx, datetime.fromisoformat(day).replace(tzinfo=UTC))
    summary = summary_of(run)
print(json.dumps({"seconds": round(time.perf_counter() - started, 2), "timings": summary["timings"],
                  "changes": summary["moves_since_previous_run"], "peak_mb":
                  round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}, default=str))
"""
NAIVE_SCRIPT = """
import json, resource, sys, time
import pandas as pd
from sqlalchemy import text
from sqlmodel import Session
from kit.db import make_engine
import crm.models  # noqa: F401 - registers the customer table the foreign key points to
from segmentation.models import CustomerSegment
url, limit, as_of = sys.argv[1], int(sys.argv[2]), sys.argv[3]
engine = make_engine(url)
started = time.perf_counter()
with engine.connect() as connection:
    orders = pd.read_sql(text("SELECT customer_id, ordered_at, amount_paid FROM orders WHERE customer_id <= :n "
                              "AND ordered_at < :as_of"), connection, params={"n": limit, "as_of": as_of})
orders["ordered_at"] = pd.to_datetime(orders["ordered_at"], utc=True)
as_of_ts = pd.Timestamp(as_of, tz="UTC")
window = orders[orders["ordered_at"] >= as_of_ts - pd.Timedelta(days=365)]
last = orders.groupby("customer_id")["ordered_at"].max()
freq = window.groupby("customer_id").size()
money = window.groupby("customer_id")["amount_paid"].sum()
with Session(engine) as session:
    session.execute(text("DELETE FROM customer_segment WHERE customer_id <= :n"), {"n": limit})
    for customer_id, last_at in last.items():
        recency = (as_of_ts - last_at).days
        f, m = int(freq.get(customer_id, 0)), float(money.get(customer_id, 0))
        tier = ("VIP" if recency <= 30 and f >= 4 and m >= 2000 else "potential" if recency <= 90 and f >= 2
                and m >= 500 else "regular" if recency <= 180 else "lost")
        session.add(CustomerSegment(customer_id=int(customer_id), tier=tier, tier_since=as_of_ts, tier_matched=True,
                                    tier_version=1, layer="potential", layer_since=as_of_ts, layer_matched=True,
                                    layer_version=1, first_seen_at=as_of_ts))
    session.flush()
    session.rollback()  # measured, not kept: the bench database stays as the real runs left it
print(json.dumps({"customers": int(len(last)), "seconds": round(time.perf_counter() - started, 2),
                  "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def _database(backend: str, customers: int, data_dir: Path) -> tuple[str, bool]:
    """URL of the kept bench database, and whether it must be loaded."""
    if backend == "sqlite":
        path = data_dir / f"seg-{customers}.sqlite3"
        return f"sqlite:///{path}", not path.exists()
    return kept_postgres_database(f"crm_bench_seg_{customers}")


def main() -> None:
    """Run the benchmark and write bench/results/segmentation.json."""
    options = parser("postgres,sqlite")
    options.add_argument("--naive-sample", type=int, default=100_000)
    args = options.parse_args()
    data = args.data / f"{args.customers}-{args.seed}"
    if not (data / "manifest.json").exists():
        write_dataset(GeneratorConfig(customers=args.customers, seed=args.seed, end=END), data)
    results: dict = {"machine": machine(),
        "rows": json.loads((data / "manifest.json").read_text())["rows"]}
    for backend in args.backends.split(","):
        url, load = _database(backend, args.customers, args.data)
        if load:
            ctx = build_context(Settings(database_url=url, secret_key="bench-secret"), engine=make_engine(url))
            upgrade_to_head(ctx.engine)
            for kind in ("customers", "orders", "order_items", "events"):
                started = time.perf_counter()
                with session_scope(ctx.engine) as session:
                    run_import(session, ctx, kind=kind, chunks=file_chunks(data / f"{kind}.csv"), actor="bench")
                print(f"{backend}: loaded {kind} in {time.perf_counter() - started:.0f}s", flush=True)
            ctx.engine.dispose()
        upgrade_to_head(make_engine(url))  # a kept database may predate the newest migrations
        with make_engine(url).begin() as connection:  # every measurement starts from no segmentation state
            from sqlalchemy import text
            for table in ("customer_segment", "customer_tag", "segment_transition", "segment_run"):
                connection.execute(text(f"DELETE FROM {table}"))
        section = {
            "first_run": run_json("-c", RUN_SCRIPT, url, "2026-10-01"),
            "rerun_same_day": run_json("-c", RUN_SCRIPT, url, "2026-10-01"),
            "next_day": run_json("-c", RUN_SCRIPT, url, "2026-10-02"),
        }
        naive = run_json("-c", NAIVE_SCRIPT, url, str(args.naive_sample), "2026-10-02")
        factor = args.customers / max(naive["customers"], 1)
        naive["extrapolated_seconds"] = round(naive["seconds"] * factor, 1)
        section["naive_sample"] = naive
        section["naive_over_ours"] = round(naive["extrapolated_seconds"] / section["first_run"]["seconds"], 1)
        print(f"{backend}: {json.dumps(section, default=str)}", flush=True)
        results[backend] = section
    print(f"wrote {save('segmentation', results)}")


if __name__ == "__main__":
    main()
