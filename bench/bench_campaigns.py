"""Campaign benchmark: dry-run and planning of one campaign over every customer (1M), vs the naive per-customer way.

    .venv/bin/python bench/bench_campaigns.py --customers 1000000 --backends postgres

Uses the database bench/bench_segmentation.py loads (tiers and tags) and bench/bench_churn.py scores. The campaign
reaches everyone (no audience filter), SMS else push, with a 10% offer, so every guard rail runs on every customer:
consent and contact, discount ceilings with each customer's 365-day spend, quiet hours, frequency caps. Each step
runs in its own process (peak memory is its own). The naive way — one customer at a time through the ORM, as a
plugin-style tool does it — runs on a sample and is extrapolated.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PG_SERVER, machine, parser, run_json, save  # noqa: E402

SETUP = """
import json, sys
from datetime import datetime, UTC
from sqlalchemy import text
from kit.clock import FixedClock
from kit.context import build_context
from kit.db import session_scope
from kit.migrations import upgrade_to_head
from kit.settings import Settings
from campaigns import service
url = sys.argv[1]
ctx = build_context(Settings(database_url=url, secret_key="bench-secret"), clock=FixedClock(datetime(2026, 11, 1, tzinfo=UTC)))
upgrade_to_head(ctx.engine)
with session_scope(ctx.engine) as session:
    for table in ("message", "campaign_occurrence", "campaign_version", "campaign"):
        session.connection().execute(text(f"DELETE FROM {table}"))
    campaign = service.create_campaign(session, ctx, {
        "name": "Bench everyone", "channels": [{"channel": "sms", "template": "at_risk_care"},
                                               {"channel": "push", "template": "at_risk_care"}],
        "offer": {"percent_off": 10, "valid_days": 14}, "schedule": {"kind": "daily", "local_hour": 10},
        "holdout_share": 0.05}, "bench")
    service.set_status(session, ctx, campaign.id, "active", "bench")
    print(json.dumps({"campaign_id": campaign.id}))
"""
STEP = """
import json, resource, sys, time
from datetime import date, datetime, UTC
from kit.clock import FixedClock
from kit.context import build_context
from kit.db import session_scope
from kit.settings import Settings
from campaigns import service
url, step, campaign_id = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = build_context(Settings(database_url=url, secret_key="bench-secret"), clock=FixedClock(datetime(2026, 11, 1, tzinfo=UTC)))
started = time.perf_counter()
with session_scope(ctx.engine) as session:
    if step == "dry_run":
        result = service.dry_run(session, ctx, campaign_id, date(2026, 11, 2))
        out = {k: result[k] for k in ("audience", "recipients", "messages", "per_channel", "excluded", "adjusted",
                                      "estimated_cost", "timings")}
    else:
        out = service.plan_campaign(session, ctx, campaign_id, date(2026, 11, 2))
out["seconds"] = round(time.perf_counter() - started, 2)
out["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(out, default=str))
"""
NAIVE = """
import json, resource, sys, time
from datetime import datetime, timedelta, UTC
from zoneinfo import ZoneInfo
from sqlalchemy import func
from sqlmodel import Session, select
from kit.db import make_engine
from crm.models import Consent, Customer, Order
from segmentation.models import CustomerSegment
from campaigns.models import Message
url, limit = sys.argv[1], int(sys.argv[2])
engine = make_engine(url)
now = datetime(2026, 11, 1, tzinfo=UTC)
started = time.perf_counter()
planned = 0
with Session(engine) as session:
    for customer in session.exec(select(Customer).order_by(Customer.id).limit(limit)):
        segment = session.get(CustomerSegment, customer.id)
        consents = {c.channel: c.status for c in session.exec(select(Consent).where(Consent.customer_id == customer.id))}
        channel = next((c for c in ("sms", "push") if consents.get(c) == "opted_in"), None)
        if channel is None:
            continue
        recent = session.exec(select(func.count()).select_from(Message).where(
            Message.customer_id == customer.id, Message.channel == channel,
            Message.send_at >= now - timedelta(days=30))).one()
        if recent >= 2:
            continue
        spend, discount = session.exec(select(func.coalesce(func.sum(Order.amount_paid), 0),
                                              func.coalesce(func.sum(Order.discount), 0)).where(
            Order.customer_id == customer.id, Order.ordered_at >= now - timedelta(days=365))).one()
        budget = 0.15 * float(spend) - float(discount)
        local = datetime(2026, 11, 2, 10, tzinfo=ZoneInfo(customer.time_zone)).astimezone(UTC)
        planned += budget > 0 and segment is not None and local > now
print(json.dumps({"customers": limit, "planned": int(planned), "seconds": round(time.perf_counter() - started, 2),
                  "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def main() -> None:
    """Run the benchmark and write bench/results/campaigns.json."""
    options = parser("postgres")
    options.add_argument("--naive-sample", type=int, default=20_000)
    args = options.parse_args()
    results: dict = {"machine": machine(), "customers": args.customers}
    for backend in args.backends.split(","):
        url = (f"sqlite:///{args.data / f'seg-{args.customers}.sqlite3'}" if backend == "sqlite"
               else f"{PG_SERVER}/crm_bench_seg_{args.customers}")
        campaign_id = str(run_json("-c", SETUP, url)["campaign_id"])
        section = {"dry_run": run_json("-c", STEP, url, "dry_run", campaign_id),
                   "plan": run_json("-c", STEP, url, "plan", campaign_id),
                   "plan_again": run_json("-c", STEP, url, "plan", campaign_id)}
        naive = run_json("-c", NAIVE, url, str(args.naive_sample))
        naive["extrapolated_seconds"] = round(naive["seconds"] * args.customers / args.naive_sample, 1)
        section["naive_sample"] = naive
        section["naive_over_plan"] = round(naive["extrapolated_seconds"] / section["plan"]["seconds"], 1)
        print(f"{backend}: {section}", flush=True)
        results[backend] = section
    print(f"wrote {save('campaigns', results)}")


if __name__ == "__main__":
    main()
