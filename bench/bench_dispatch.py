"""Dispatch benchmark: messages per second through the real Twilio SDK to the local fake provider, ledger on PostgreSQL.

    .venv/bin/python bench/bench_dispatch.py --customers 20000 --workers 1,2,4

Customers come from the project's generator (imported into a fresh PostgreSQL database); every customer with a
phone and SMS consent gets one due marketing SMS in the outbox. Each run resets those messages to `planned`, starts
the fake provider (tests/support/fake_providers.py) in its own process, runs `crm dispatch run --once --workers W` and
times it; the dispatcher reports where its time went (claim and admit, render, provider calls, record), summed
over workers. The fake's log proves every message reached it exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import PG_SERVER, fake_provider, machine, parser, save  # noqa: E402
from wiring.generator import GeneratorConfig, write_dataset  # noqa: E402

NOW = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # noon in Shanghai: outside quiet hours
SETUP = """
import sys
from sqlalchemy import text
from kit.context import build_context
from kit.db import session_scope
from crm.ingest import file_chunks, run_import
from kit.migrations import upgrade_to_head
from kit.settings import Settings
url, path = sys.argv[1], sys.argv[2]
ctx = build_context(Settings(database_url=url, secret_key="bench-secret"))
upgrade_to_head(ctx.engine)
with session_scope(ctx.engine) as session:
    run_import(session, ctx, kind="customers", chunks=file_chunks(path), actor="bench")
    session.connection().execute(text(
        "INSERT INTO campaign (name, status, version, priority, spec, created_at, created_by, updated_at, updated_by) "
        "VALUES ('bench', 'active', 1, 0, '{}', now(), 'bench', now(), 'bench')"))
"""
RESET = """
INSERT INTO message (campaign_id, occurrence, customer_id, channel, status, priority, transactional, send_at,
                     template, locale, discount_value, attempts, created_at, updated_at)
SELECT (SELECT id FROM campaign LIMIT 1), %(occurrence)s, c.id, 'sms', 'planned', 0, false, %(now)s,
       'at_risk_care', c.locale, 0, 0, %(now)s, %(now)s
FROM customer c JOIN consent k ON k.customer_id = c.id AND k.channel = 'sms' AND k.status = 'opted_in'
WHERE c.phone_hash IS NOT NULL
"""


def main() -> None:
    """Run the benchmark and write bench/results/dispatch.json."""
    options = parser("postgres")
    options.add_argument("--workers", default="1,2,4")
    options.add_argument("--concurrency", type=int, default=16)
    options.set_defaults(customers=20_000)
    args = options.parse_args()
    data = args.data / f"dispatch-{args.customers}-{args.seed}"
    if not (data / "manifest.json").exists():
        write_dataset(GeneratorConfig(customers=args.customers, seed=args.seed, end=date(2026, 11, 1)), data)
    name = f"crm_bench_dispatch_{args.customers}"
    plain = PG_SERVER.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(f"{plain}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_SERVER}/{name}"
    subprocess.run([sys.executable, "-c", SETUP, url, str(data / "customers.csv")], check=True, cwd=ROOT)
    results: dict = {"machine": machine(), "customers": args.customers, "concurrency_per_worker": args.concurrency,
                     "runs": []}
    for run, workers in enumerate(int(w) for w in args.workers.split(",")):
        with psycopg.connect(f"{plain}/{name}", autocommit=True) as connection:
            connection.execute("DELETE FROM message")
            connection.execute(RESET, {"occurrence": f"bench{run}", "now": NOW})
            connection.execute("VACUUM ANALYZE message")
            messages = connection.execute("SELECT count(*) FROM message").fetchone()[0]
        fake, base = fake_provider()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")} | {
            "CRM_DATABASE_URL": url, "CRM_SECRET_KEY": "bench-secret", "CRM_SMS_PROVIDER": "twilio",
            "CRM_TWILIO_AUTH_TOKEN": "bench", "CRM_TWILIO_FROM": "+15005550006", "CRM_TWILIO_BASE_URL": base,
            "CRM_PROVIDER_RATE_PER_SECOND": json.dumps({"twilio": 1_000_000}),
            "CRM_DISPATCH_CONCURRENCY": str(args.concurrency), "CRM_DISPATCH_BATCH_SIZE": "500"}
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "wiring.cli", "dispatch", "run", "--once", "--json", "--workers",
                              str(workers), "--now", NOW.isoformat()], env=env, capture_output=True, text=True,
                             cwd=ROOT)
        seconds = time.perf_counter() - started
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        report = json.loads(out.stdout.strip().splitlines()[-1])
        log = httpx.get(f"{base}/_fake/log", timeout=30).json()["accepted"]
        fake.terminate()
        fake.wait()
        per_message = Counter(m["message_id"] for m in log)
        row = {"workers": workers, "messages": messages, "sent": report.get("sent_sms", 0),
               "seconds": round(seconds, 2), "messages_per_second": round(report.get("sent_sms", 0) / seconds),
               "provider_received": len(log), "sent_twice": sum(1 for v in per_message.values() if v > 1),
               "worker_seconds": {k.removeprefix("seconds_"): v for k, v in report.items() if k.startswith("seconds_")}}
        print(json.dumps(row), flush=True)
        results["runs"].append(row)
    print(f"wrote {save('dispatch', {'postgres': results})}")


if __name__ == "__main__":
    main()
