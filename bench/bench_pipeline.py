"""Daily pipeline benchmark: the `pipeline` job over the 1M-customer PostgreSQL database, providers faked locally.

    .venv/bin/python bench/bench_pipeline.py            # after bench_segmentation.py and bench_churn.py

Uses the database bench_segmentation.py loaded (`crm_bench_seg_<N>`: 1M customers, 10M orders, 22M events, with
segment state and the churn model bench_churn.py trained). Each run forgets earlier campaigns and their output (outbox,
occurrences, conversions, job runs), installs the default touch plans, starts the fake Twilio / SendGrid / FCM server
(tests/support/fake_providers.py) and runs the pipeline job for a Tuesday (the heaviest day of the defaults: the weekly
coupon plus the daily triggered plans) in its own process, at its scheduled moment (02:00 in Shanghai), reporting
each step's time. Then the day's messages are sent: `crm dispatch run --workers 4` with the clock at the
day's busiest send moment (10:00 in Shanghai), bounded by --max-batches, to measure the sending rate through the
SDKs to the fake.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import PG_SERVER, fake_provider, machine, parser, run_json, save  # noqa: E402

RUN_SCRIPT = """
import json, resource, sys, time
from pathlib import Path
from wiring.app import job_registry
from kit.clock import FixedClock
from kit.context import build_context
from kit.db import session_scope
from kit.jobs import run_job
from campaigns.service import install_defaults
from tests.support.dispatch_support import fake_settings
url, base, data_dir, day = sys.argv[1:5]
settings = fake_settings(Path(data_dir), base, url, dispatch_concurrency=16, dispatch_batch_size=500,
                         provider_rate_per_second={"twilio": 1e6, "sendgrid": 1e6, "fcm": 1e6, "tasks": 1e6,
                                                   "console": 1e6})
job = job_registry(settings).get("pipeline")
occurrence = job.schedule.of_key(day)
ctx = build_context(settings, clock=FixedClock(occurrence.fire_at))
with session_scope(ctx.engine) as session:
    install_defaults(session, ctx, "bench")
started = time.perf_counter()
outcome = run_job(ctx, job, occurrence, trigger="cli")
out = outcome.as_dict() | {"seconds": round(time.perf_counter() - started, 2),
                           "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
print(json.dumps(out, default=str))
"""
# Campaigns too: another benchmark (bench_campaigns.py) leaves its own campaign on this database.
FORGET = ("message", "campaign_occurrence", "conversion", "call_task", "webhook_receipt", "job_step", "job_run",
          "campaign_version", "campaign")


def main() -> None:
    """Run the benchmark and write bench/results/pipeline.json."""
    options = parser("postgres")
    options.add_argument("--day", default="2026-11-03", help="the occurrence (a Tuesday after the data's end)")
    options.add_argument("--dispatch-batches", type=int, default=40, help="batches of 500 per dispatch worker")
    args = options.parse_args()
    name = f"crm_bench_seg_{args.customers}"
    plain = PG_SERVER.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(f"{plain}/postgres", autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            raise SystemExit(f"no database {name}: run bench/bench_segmentation.py and bench/bench_churn.py first")
    url = f"{PG_SERVER}/{name}"
    from kit.db import make_engine
    from kit.migrations import upgrade_to_head

    upgrade_to_head(make_engine(url))  # a kept database may predate the newest migrations
    with psycopg.connect(f"{plain}/{name}", autocommit=True) as connection:
        for table in FORGET:
            connection.execute(f"DELETE FROM {table}")
        connection.execute("VACUUM ANALYZE message")
    data_dir = args.data / "pipeline"
    data_dir.mkdir(parents=True, exist_ok=True)
    fake, base = fake_provider()
    try:
        run = run_json("-c", RUN_SCRIPT, url, base, str(data_dir), args.day)
        print(json.dumps({s["step"]: s.get("seconds") for s in run["steps"]} | {"total": run["seconds"]}), flush=True)
        with psycopg.connect(f"{plain}/{name}") as connection:
            planned = dict(connection.execute(
                "SELECT channel, count(*) FROM message WHERE status = 'planned' GROUP BY channel").fetchall())
            # The busiest send moment (10:00 in Shanghai): a single instant at which the most messages are due and
            # none of them is in its recipient's quiet hours (the end of the day would defer most of them).
            busiest = connection.execute(
                "SELECT send_at FROM message WHERE status = 'planned' GROUP BY send_at ORDER BY count(*) DESC "
                "LIMIT 1").fetchone()
        end_of_day = busiest[0] if busiest else None
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")} | {
            "CRM_DATABASE_URL": url, "CRM_SECRET_KEY": "bench-secret", "CRM_DATA_DIR": str(data_dir),
            "CRM_SMS_PROVIDER": "twilio", "CRM_TWILIO_AUTH_TOKEN": "bench", "CRM_TWILIO_FROM": "+15005550006",
            "CRM_TWILIO_BASE_URL": base, "CRM_EMAIL_PROVIDER": "sendgrid", "CRM_SENDGRID_API_KEY": "SG.bench",
            "CRM_SENDGRID_BASE_URL": base, "CRM_PUSH_PROVIDER": "fcm", "CRM_FCM_BASE_URL": base,
            "CRM_FCM_SERVICE_ACCOUNT_FILE": str(data_dir / "fcm-service-account.json"),
            "CRM_DISPATCH_CONCURRENCY": "16", "CRM_DISPATCH_BATCH_SIZE": "500",
            "CRM_PROVIDER_RATE_PER_SECOND": json.dumps({"twilio": 1e6, "sendgrid": 1e6, "fcm": 1e6, "console": 1e6,
                                                        "tasks": 1e6})}
        dispatch = None
        if end_of_day is not None:
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "wiring.cli", "dispatch", "run", "--once", "--json", "--workers",
                                  "4", "--max-batches", str(args.dispatch_batches), "--now", end_of_day.isoformat()],
                                 env=env, capture_output=True, text=True, cwd=ROOT)
            seconds = time.perf_counter() - started
            if out.returncode != 0:
                raise SystemExit(out.stderr[-3000:])
            report = json.loads(out.stdout.strip().splitlines()[-1])
            sent = sum(v for k, v in report.items() if k.startswith("sent_"))
            received = len(httpx.get(f"{base}/_fake/log", timeout=60).json()["accepted"])
            phases = {k.removeprefix("seconds_"): v for k, v in report.items() if k.startswith("seconds_")}
            worker_seconds = sum(phases.values())
            mix = {k.removeprefix("sent_"): v for k, v in report.items() if k.startswith("sent_") and k != "sent_phone"}
            ceiling = run_json("-m", "bench.provider_ceiling", base, str(data_dir), json.dumps(mix))
            dispatch = {"workers": 4, "sent": sent, "provider_received": received, "seconds": round(seconds, 1),
                        "messages_per_second": round(sent / seconds), "report": report,
                        "worker_seconds": round(worker_seconds, 1),
                        "share_of_worker_time": {k: round(v / worker_seconds, 3) for k, v in phases.items()},
                        "ceiling": ceiling,
                        "share_of_ceiling": round(sent / seconds / ceiling["messages_per_second"], 3)}
            print(json.dumps(dispatch), flush=True)
    finally:
        fake.terminate()
        fake.wait()
    planned_total = sum(planned.values())
    results = {"machine": machine(), "customers": args.customers, "day": args.day, "measured_on": str(date.today()),
               "pipeline": run, "planned_for_the_day": planned, "dispatch_sample": dispatch,
               "projected_day_dispatch_seconds": round(planned_total / dispatch["messages_per_second"])
               if dispatch and dispatch["messages_per_second"] else None}
    print(f"wrote {save('pipeline', {'postgres': results})}")


if __name__ == "__main__":
    main()
