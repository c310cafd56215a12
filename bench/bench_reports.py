"""Measurement benchmark: attribution and every report over the 1M-customer PostgreSQL database.

    .venv/bin/python bench/bench_reports.py             # after bench_pipeline.py (it plans a Tuesday's campaigns)

Uses `crm_bench_seg_<N>` as bench_pipeline.py leaves it: the day's campaigns planned into the outbox (~800k rows:
planned, holdouts, global control, skips). The day's planned messages are marked sent and delivered at their send
times (as dispatch would), the week after is simulated with the project's generator (`simulate_responses`: 5%
buy anyway, +3 points when messaged) and imported through the importer; then, with the clock past the attribution
window, attribution and each report are timed. Afterwards the simulated orders and conversions are removed, so the
other benchmarks see the database as before.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import PG_SERVER, machine, parser, save  # noqa: E402
from campaigns.measurement.conversions import attribute_conversions  # noqa: E402
from campaigns.measurement.reports import customers_reached, simulated_truth  # noqa: E402
from crm.ingest import run_import  # noqa: E402
from kit.clock import FixedClock  # noqa: E402
from kit.context import build_context  # noqa: E402
from kit.db import session_scope  # noqa: E402
from kit.settings import Settings  # noqa: E402
from kit.timezones import utc_midnight  # noqa: E402
from wiring.generator import simulate_responses  # noqa: E402
from wiring.report_catalog import REPORTS, build  # noqa: E402


def _timed(label: str, timings: dict, action):
    started = time.perf_counter()
    result = action()
    timings[label] = round(time.perf_counter() - started, 2)
    print(f"{label}: {timings[label]} s", flush=True)
    return result


def main() -> None:
    """Run the benchmark and write bench/results/reports.json."""
    options = parser("postgres")
    options.add_argument("--day", default="2026-11-03", help="the day bench_pipeline.py planned")
    args = options.parse_args()
    name = f"crm_bench_seg_{args.customers}"
    plain = PG_SERVER.replace("postgresql+psycopg://", "postgresql://")
    day = date.fromisoformat(args.day)
    start, end = utc_midnight(day) - timedelta(days=1), utc_midnight(day) + timedelta(days=2)
    with psycopg.connect(f"{plain}/{name}", autocommit=True) as connection:
        rows = connection.execute("SELECT status, count(*) FROM message WHERE send_at >= %s AND send_at < %s "
                                  "GROUP BY status", (start, end)).fetchall()
        if not rows:
            raise SystemExit(f"nothing planned for {day} in {name}: run bench/bench_pipeline.py first")
        connection.execute("DELETE FROM conversion")
        connection.execute("DELETE FROM orders WHERE external_id LIKE 'SIM-%%'")
        connection.execute("UPDATE message SET status = 'delivered', sent_at = send_at, delivered_at = send_at, "
                           "attempts = 1 WHERE status IN ('planned', 'sent') AND send_at >= %s AND send_at < %s",
                           (start, end))
        connection.execute("VACUUM ANALYZE message")
    outbox = dict(rows)
    data_dir = args.data / "reports"
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(database_url=f"{PG_SERVER}/{name}", secret_key="bench-secret", data_dir=data_dir)
    ctx = build_context(settings, clock=FixedClock(utc_midnight(day) + timedelta(hours=20)))
    timings: dict[str, float] = {}
    with session_scope(ctx.engine) as session:
        members, arms = _timed("read campaign members", timings, lambda: customers_reached(session, start, end))
        external = pl.DataFrame(session.connection().exec_driver_sql(
            "SELECT id, external_id FROM customer").all(), schema={"customer_id": pl.Int64, "external_id": pl.String},
            orient="row")
    orders = _timed("simulate responses", timings, lambda: simulate_responses(
        members.join(external, on="customer_id"), baseline=0.05, true_uplift=0.03,
        window_days=settings.attribution_window_days, seed=1))
    path = data_dir / "simulated_orders.csv"
    orders.write_csv(path, datetime_format="%Y-%m-%dT%H:%M:%SZ")
    with session_scope(ctx.engine) as session:
        _timed("import simulated orders", timings, lambda: run_import(
            session, ctx, kind="orders", chunks=[path.read_bytes()], source=str(path), actor="bench"))
    later = build_context(settings, clock=FixedClock(utc_midnight(day) + timedelta(days=9)))
    with session_scope(later.engine) as session:
        attributed = _timed("attribute", timings, lambda: attribute_conversions(session, later))
    figures: dict[str, dict] = {}
    for report_name in REPORTS:
        with session_scope(later.engine) as session:
            since = start if report_name == "campaigns" else None
            report = _timed(f"report {report_name}", timings, lambda n=report_name, s=since: build(
                n, session, later, since=s, until=end if n == "campaigns" else None))
        figures[report_name] = report
    truth = simulated_truth(members, arms, 0.03)
    campaigns = [{"campaign": r["campaign"], "members": r["members"], "reach": r["reach"],
                  "true_uplift": truth.get(r["campaign_id"]), "uplift": r["uplift"]["conversion"],
                  "incremental_revenue": r["uplift"]["incremental_revenue"], "roi": r["roi"]}
                 for r in figures["campaigns"]["campaigns"]]
    for row in campaigns:
        print(json.dumps(row, default=str), flush=True)
    with psycopg.connect(f"{plain}/{name}", autocommit=True) as connection:
        connection.execute("DELETE FROM conversion")
        connection.execute("DELETE FROM orders WHERE external_id LIKE 'SIM-%%'")
    results = {"machine": machine(), "customers": args.customers, "day": args.day, "measured_on": str(date.today()),
               "outbox_rows_for_the_day": outbox, "members": members.height, "simulated_orders": orders.height,
               "conversions": attributed["conversions"], "seconds": timings, "campaigns": campaigns,
               "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
               "finished_at": datetime.now(UTC).isoformat()}
    print(f"wrote {save('reports', {'postgres': results})}")


if __name__ == "__main__":
    main()
