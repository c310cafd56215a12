"""Customer-state benchmark: rebuild, a typical day written through the write path, then the nightly segmentation.

    .venv/bin/python bench/bench_state.py --customers 1000000

Loads the generator's data set into a fresh PostgreSQL database (`crm_bench_state_<N>`), then, each step in its
own process (peak memory its own): `crm state rebuild`; the metrics the old way (from the whole history); the
nightly segmentation of the load's last day; a typical day (1% of customers active: 3 orders and 20 events
per 100 customers) written through the ingestion write path in batches of 500 events / 100 orders; and the
next night's segmentation, which reads the state and recomputes only the customers whose windows moved.
"""

from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import PG_SERVER, machine, parser, run_json, save  # noqa: E402
from crm.ingest import file_chunks, run_import  # noqa: E402
from kit.context import build_context  # noqa: E402
from kit.db import make_engine, session_scope  # noqa: E402
from kit.migrations import upgrade_to_head  # noqa: E402
from kit.settings import Settings  # noqa: E402
from wiring.generator import GeneratorConfig, write_dataset  # noqa: E402

END = date(2026, 11, 1)
PRELUDE = """
import json, resource, sys, time
from datetime import datetime, UTC
from kit.context import build_context
from kit.db import session_scope
from kit.settings import Settings
url = sys.argv[1]
ctx = build_context(Settings(database_url=url, secret_key="bench-secret"))
def peak(): return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
started = time.perf_counter()
"""
REBUILD = PRELUDE + """
from crm import state
with session_scope(ctx.engine) as session:
    done = state.rebuild(session, ctx, datetime.fromisoformat(sys.argv[2]).replace(tzinfo=UTC), uncommitted=False)
print(json.dumps({"seconds": round(time.perf_counter() - started, 2), "peak_mb": peak(), **done}))
"""
FROM_HISTORY = PRELUDE + """
from crm.service import customers_frame, events_frame, order_flags_frame, orders_frame
from kit.columnar import columnar_reader
from segmentation.metrics import MetricParams, compute_metrics
as_of = datetime.fromisoformat(sys.argv[2]).replace(tzinfo=UTC)
with session_scope(ctx.engine) as session, columnar_reader(session) as reader:
    orders = orders_frame(session, None, as_of, reader=reader, costs=False).join(
        order_flags_frame(session, reader=reader), on="order_id", how="left")
    events = events_frame(session, None, as_of, reader=reader)
    customers = customers_frame(session, reader=reader)
read = time.perf_counter() - started
metrics = compute_metrics(customers, orders, events, as_of, MetricParams())
print(json.dumps({"seconds": round(time.perf_counter() - started, 2), "read_s": round(read, 2),
                  "rows_read": len(orders) + len(events), "peak_mb": peak()}))
"""
SEGMENT = PRELUDE + """
from segmentation.service import run_segmentation, summary_of
with session_scope(ctx.engine) as session:
    run = summary_of(run_segmentation(session, ctx, datetime.fromisoformat(sys.argv[2]).replace(tzinfo=UTC)))
print(json.dumps({"seconds": round(time.perf_counter() - started, 2), "timings": run["timings"],
                  "customer_state": run["moves_since_previous_run"].get("customer_state"), "peak_mb": peak()},
                 default=str))
"""
TYPICAL_DAY = PRELUDE + """
import numpy as np
from crm import writes
from kit.clock import FixedClock
from sqlalchemy import text
day = datetime.fromisoformat(sys.argv[2]).replace(tzinfo=UTC)
import dataclasses
ctx = dataclasses.replace(ctx, clock=FixedClock(day.replace(hour=23, minute=59)))
with ctx.engine.connect() as connection:
    ids = [r[0] for r in connection.execute(text("SELECT external_id FROM customer ORDER BY id"))]
rng = np.random.default_rng(5)
active = rng.choice(ids, size=max(len(ids) // 100, 1), replace=False)
n_orders, n_events = len(ids) * 3 // 100, len(ids) * 20 // 100
def moment(): return (day.timestamp() + rng.integers(0, 86_400)) * 1.0
events = [{"unique_id": f"day-e{i}", "customer_id": str(active[rng.integers(len(active))]),
           "time": datetime.fromtimestamp(moment(), UTC).isoformat(),
           "type": ["view", "login", "cart_add", "cart_abandon", "search"][rng.integers(5)]} for i in range(n_events)]
orders = [{"external_id": f"day-o{i}", "customer_id": str(active[rng.integers(len(active))]),
           "ordered_at": datetime.fromtimestamp(moment(), UTC).isoformat(), "amount_paid": float(rng.integers(5, 400)),
           "items": [{"sku": "S1", "qty": 1, "unit_price": 10.0}]} for i in range(n_orders)]
latencies = {"events": [], "orders": []}
for kind, items, size in (("events", events, 500), ("orders", orders, 100)):
    for start in range(0, len(items), size):
        tick = time.perf_counter()
        with session_scope(ctx.engine) as session:
            result = writes.write_items(session, ctx, kind, items[start:start + size], cause="api",
                                        first_wins=kind == "events")
        assert result.rejected == 0, result.items[:3]
        latencies[kind].append(time.perf_counter() - tick)
def summary(kind, n):
    values = np.array(latencies[kind])
    return {"items": n, "batches": len(values), "seconds": round(float(values.sum()), 2),
            "items_per_s": round(n / float(values.sum())), "p50_ms": round(float(np.percentile(values, 50)) * 1000, 1),
            "p99_ms": round(float(np.percentile(values, 99)) * 1000, 1)}
print(json.dumps({"active_customers": len(active), "events": summary("events", n_events),
                  "orders": summary("orders", n_orders), "peak_mb": peak()}))
"""


def _database(customers: int, reload: bool, suffix: str = "") -> tuple[str, bool]:
    """URL of the kept bench database and whether it must be (re)loaded (a load that did not finish is redone)."""
    name = f"crm_bench_state_{customers}{suffix}"
    plain = PG_SERVER.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(f"{plain}/postgres", autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and not reload:
            with psycopg.connect(f"{plain}/{name}") as db:
                done = db.execute("SELECT count(*) FROM import_job WHERE kind = 'events' AND status = 'completed'"
                                  ).fetchone()[0]
            if done:
                return f"{PG_SERVER}/{name}", False
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_SERVER}/{name}", True


TRAIN = PRELUDE + """
from churn.service import train_model
with session_scope(ctx.engine) as session:
    row = train_model(session, ctx, as_of=datetime.fromisoformat(sys.argv[2]).replace(tzinfo=UTC))
print(json.dumps({"seconds": round(time.perf_counter() - started, 2), "model_id": row.id, "peak_mb": peak(),
                  "timings": row.training.get("timings"), "shipped": row.metrics.get("shipped"),
                  "roc_auc": row.metrics.get("roc_auc"), "brier": row.metrics.get("brier"),
                  "flag": row.metrics.get("flag"), "population": row.metrics.get("population"),
                  "baselines": {k: {m: v.get(m) for m in ("roc_auc", "brier")}
                                for k, v in row.metrics.get("baselines", {}).items()}}, default=str))
"""
SCORE = PRELUDE + """
from churn.service import score_customers
with session_scope(ctx.engine) as session:
    done = score_customers(session, ctx, as_of=datetime.fromisoformat(sys.argv[2]).replace(tzinfo=UTC))
print(json.dumps({"seconds": round(time.perf_counter() - started, 2), "peak_mb": peak(),
                  **{k: done[k] for k in ("scored", "at_risk", "rows_written", "features_from", "timings")}}))
"""


def _reset_day(url: str) -> None:
    """Every measurement starts from the loaded history: no typical day, no segmentation state yet."""
    from sqlalchemy import text

    with make_engine(url).begin() as connection:
        for statement in ("DELETE FROM order_item WHERE order_id IN (SELECT id FROM orders WHERE external_id "
                          "LIKE 'day-o%')", "DELETE FROM orders WHERE external_id LIKE 'day-o%'",
                          "DELETE FROM event WHERE external_id LIKE 'day-e%'", "DELETE FROM customer_change",
                          "DELETE FROM customer_segment", "DELETE FROM customer_tag", "DELETE FROM segment_transition",
                          "DELETE FROM segment_value_step", "DELETE FROM segment_run", "DELETE FROM churn_score"):
            connection.execute(text(statement))


def main() -> None:
    """Run the benchmark and write bench/results/state.json."""
    options = parser("postgres")
    options.add_argument("--reload", action="store_true", help="load the database again even when it is kept")
    options.add_argument("--load-only", action="store_true", help="load the kept database, measure nothing")
    options.add_argument("--pipeline", action="store_true",
                         help="train a churn model, then run the whole nightly pipeline job after the typical day")
    options.add_argument("--history-days", type=int, default=3 * 365, help="how far back the generated shop goes")
    options.add_argument("--quiet-night", metavar="YYYY-MM-DD",
                         help="after a --pipeline run: segment and score one more night with no new writes (the "
                              "scores written the night before stay; only those that moved are rewritten)")
    options.add_argument("--rebuild-only", action="store_true",
                         help="measure `crm state rebuild` alone (the other figures of the results file stay)")
    args = options.parse_args()
    suffix = "" if args.history_days == 3 * 365 else f"_h{args.history_days}"
    data = args.data / f"{args.customers}-{args.seed}{suffix.replace('_', '-')}"
    if not (data / "manifest.json").exists():
        write_dataset(GeneratorConfig(customers=args.customers, seed=args.seed, end=END,
                                      history_days=args.history_days), data)
    url, load = _database(args.customers, args.reload, suffix)
    if load:
        ctx = build_context(Settings(database_url=url, secret_key="bench-secret"), engine=make_engine(url))
        upgrade_to_head(ctx.engine)
        for kind in ("customers", "orders", "order_items", "events"):
            with session_scope(ctx.engine) as session:
                run_import(session, ctx, kind=kind, chunks=file_chunks(data / f"{kind}.csv"), actor="bench")
            print(f"loaded {kind}", flush=True)
        ctx.engine.dispose()
    if args.load_only:
        return
    upgrade_to_head(make_engine(url))  # a database kept from an older checkout
    if args.quiet_night:
        night = f"{args.quiet_night}T00:00:00"
        quiet = {"quiet_night": {"day": args.quiet_night, "segment": run_json("-c", SEGMENT, url, night),
                                 "score": run_json("-c", SCORE, url, night)}}
        print(json.dumps(quiet, indent=2, default=str))
        print(f"wrote {save(f'state-{args.customers}{suffix}', quiet)}")
        return
    _reset_day(url)
    night, next_night = f"{END.isoformat()}T00:00:00", "2026-11-02T00:00:00"
    if args.rebuild_only:
        rebuilt = {"state_rebuild": run_json("-c", REBUILD, url, night)}
        print(json.dumps(rebuilt, indent=2))
        print(f"wrote {save(f'state-{args.customers}{suffix}', rebuilt)}")
        return
    results = {"machine": machine(), "customers": args.customers, "history_days": args.history_days,
               "rows": json.loads((data / "manifest.json").read_text())["rows"]}
    results["state_rebuild"] = run_json("-c", REBUILD, url, night)
    results["metrics_from_history"] = run_json("-c", FROM_HISTORY, url, night)
    results["segment_first_night"] = run_json("-c", SEGMENT, url, night)
    if args.pipeline:  # the nightly pipeline needs a churn model: trained once, not part of the night
        results["churn_train"] = run_json("-c", TRAIN, url, night)
        # The first night's scores: the next night rewrites only those that moved.
        results["churn_score_first_night"] = run_json("-c", SCORE, url, night)
    results["typical_day_writes"] = run_json("-c", TYPICAL_DAY, url, END.isoformat() + "T00:00:00")
    if args.pipeline:
        from bench.bench_pipeline import FORGET, RUN_SCRIPT
        from bench.common import fake_provider

        with make_engine(url).begin() as connection:
            from sqlalchemy import text

            for table in FORGET:
                connection.execute(text(f"DELETE FROM {table}"))
        fake, base = fake_provider()
        try:
            data_dir = args.data / "state-pipeline"
            data_dir.mkdir(parents=True, exist_ok=True)
            run = run_json("-c", RUN_SCRIPT, url, base, str(data_dir), "2026-11-02")
        finally:
            fake.terminate()
        results["pipeline_next_night"] = {"seconds": run["seconds"], "peak_mb": run["peak_mb"],
                                          "status": run["status"], "steps": {
                                              s["step"]: {"seconds": s.get("seconds"),
                                                          "timings": (s.get("counts") or {}).get("timings")}
                                              for s in run["steps"]}}
    else:
        results["segment_next_night"] = run_json("-c", SEGMENT, url, next_night)
    print(json.dumps(results, indent=2, default=str))
    print(f"wrote {save(f'state-{args.customers}{suffix}', results)}")


if __name__ == "__main__":
    main()
