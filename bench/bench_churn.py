"""Churn benchmark: `crm churn train` and `crm churn score` on 1M generator customers (PostgreSQL by default).

    .venv/bin/python bench/bench_churn.py --customers 1000000 --backends postgres

Uses the database bench/bench_segmentation.py loads and keeps (run that first); each step runs in a
subprocess so its peak memory is its own. Also evaluates the orders-only method on the generator's
orders.csv through `crm churn evaluate`, as a shop with nothing but a transaction log would.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PG_SERVER, machine, parser, run_json, save  # noqa: E402

STEP = """
import json, resource, sys, time
from datetime import datetime, UTC
from kit.context import build_context
from kit.db import session_scope
from kit.settings import Settings
from churn import service
url, data_dir, step, day = sys.argv[1:5]
ctx = build_context(Settings(database_url=url, secret_key="bench-secret", data_dir=data_dir))
as_of = datetime.fromisoformat(day).replace(tzinfo=UTC)
started = time.perf_counter()
with session_scope(ctx.engine) as session:
    if step == "train":
        row = service.train_model(session, ctx, as_of=as_of)
        out = {"model_id": row.id, "status": row.status, "decision": row.decision, "training": row.training,
               "metrics": {k: v for k, v in row.metrics.items() if k != "calibration"}}
    else:
        out = service.score_customers(session, ctx, as_of=as_of)
out["seconds"] = round(time.perf_counter() - started, 2)
out["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(out, default=str))
"""


def main() -> None:
    """Run the benchmark and write bench/results/churn.json."""
    options = parser("postgres")
    options.add_argument("--as-of", default="2026-11-01")
    args = options.parse_args()
    results: dict = {"machine": machine(), "customers": args.customers}
    for backend in args.backends.split(","):
        url = (f"sqlite:///{args.data / f'seg-{args.customers}.sqlite3'}" if backend == "sqlite"
               else f"{PG_SERVER}/crm_bench_seg_{args.customers}")
        from sqlalchemy import text

        from kit.db import make_engine
        from kit.migrations import upgrade_to_head

        engine = make_engine(url)
        try:
            with engine.connect() as connection:
                loaded = connection.execute(text("SELECT count(*) FROM customer")).scalar_one()
        except Exception:  # noqa: BLE001 - any failure here means the database is not there yet
            loaded = 0
        if not loaded:
            raise SystemExit(f"{backend}: no loaded bench database at {url}: run bench/bench_segmentation.py first")
        upgrade_to_head(engine)  # the bench database may predate the churn tables
        section = {"train": run_json("-c", STEP, url, str(args.data), "train", args.as_of)}
        print(f"{backend} train: {json.dumps(section['train'], default=str)}", flush=True)
        section["score"] = run_json("-c", STEP, url, str(args.data), "score", args.as_of)
        print(f"{backend} score: {json.dumps(section['score'], default=str)}", flush=True)
        results[backend] = section
    orders = args.data / f"{args.customers}-{args.seed}" / "orders.csv"
    if orders.exists():
        results["orders_only_evaluate"] = run_json(
            "-m", "wiring.cli", "churn", "evaluate", "--transactions", str(orders), "--cutoff", "2026-08-01",
            "--customer-col", "customer_external_id", "--amount-col", "amount_paid", "--json")
        print(f"orders only: {results['orders_only_evaluate']}", flush=True)
    print(f"wrote {save('churn', results)}")


if __name__ == "__main__":
    main()
