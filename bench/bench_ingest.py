"""Ingestion API load: batches of events and single events posted to `crm serve` from a second process.

    .venv/bin/python bench/bench_ingest.py --customers 1000000 --workers 2

Uses the database bench/bench_state.py loads (`crm_bench_state_<N>`). Starts `crm serve` with N uvicorn workers and
an `ingest` key, then the open-loop generator of bench_load.py in its own process: request i leaves at t0 + i/rate
whatever the server's pace, latency counted from that moment. Phases: batches of 500 events at 10 requests/s
(5,000 events/s) and single events at 200 requests/s, each for `--seconds`. Then the state lag: an event posted,
then its customer's state read until it shows the event (the write path moves the state in the acknowledging
transaction, so the first read already does). The events it wrote are deleted afterwards and the state rebuilt.
Writes bench/results/ingest.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_load import cpu_seconds, wait_healthy  # noqa: E402
from bench.common import PG_SERVER, machine, parser, save  # noqa: E402

SECRET = "bench-secret"
TYPES = ("view", "login", "cart_add", "cart_abandon", "search")


def event_bodies(ids: list[str], count: int, batch: int, prefix: str, seed: int) -> list[dict]:
    """`count` requests of `batch` events each (one object when batch is 1), customers drawn from `ids`."""
    import random

    rng = random.Random(seed)
    now = datetime.now(UTC)
    bodies = []
    for request in range(count):
        events = [{"unique_id": f"{prefix}-{request}-{i}", "customer_id": rng.choice(ids), "type": rng.choice(TYPES),
                   "time": now.isoformat(), "properties": {"sku": f"S{rng.randrange(5000)}"}} for i in range(batch)]
        bodies.append({"path": "/v1/events", "json": events[0] if batch == 1 else events, "kind": "events"})
    return bodies


def state_lag(base_url: str, key: str, url: str, ids: list[str], samples: int = 50) -> dict:
    """Milliseconds from a 202 to the first read of the customer's state that shows the event."""
    import httpx
    import psycopg

    plain = url.replace("postgresql+psycopg://", "postgresql://")
    lags = []
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}) as client, \
            psycopg.connect(plain, autocommit=True) as db:
        for sample in range(samples):
            moment = datetime(2030, 1, 1, 0, 0, sample, tzinfo=UTC)  # later than anything: it must become the last
            customer = ids[sample]
            answer = client.post("/v1/events", json={"unique_id": f"lag-{sample}", "customer_id": customer,
                                                     "type": "view", "time": moment.isoformat()})
            acknowledged = time.perf_counter()
            assert answer.status_code == 202, answer.text
            while True:
                seen = db.execute("SELECT s.lifetime_last_event_at FROM customer_state s JOIN customer c "
                                  "ON c.id = s.customer_id WHERE c.external_id = %s", (customer,)).fetchone()[0]
                if seen is not None and seen >= moment:
                    lags.append((time.perf_counter() - acknowledged) * 1000)
                    break
    return {"samples": samples, "max_ms": round(max(lags), 2), "mean_ms": round(sum(lags) / len(lags), 2)}


def main() -> None:
    """Start the server, run the phases in a second process, write bench/results/ingest.json."""
    options = parser("postgres")
    options.add_argument("--seconds", type=float, default=60.0)
    options.add_argument("--workers", type=int, default=2)
    options.add_argument("--concurrency", type=int, default=64)
    options.add_argument("--port", type=int, default=8766)
    args = options.parse_args()

    from sqlalchemy import text

    from crm import state
    from crm.auth import create_key, revoke_key
    from crm.models import Role
    from kit.context import build_context
    from kit.db import make_engine, session_scope
    from kit.migrations import upgrade_to_head
    from kit.settings import Settings

    url = f"{PG_SERVER}/crm_bench_state_{args.customers}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    ctx = build_context(Settings(database_url=url, secret_key=SECRET), engine=engine)
    with session_scope(engine) as session:
        ids = [r[0] for r in session.execute(text("SELECT external_id FROM customer ORDER BY id LIMIT 200000"))]
        issued = create_key(session, ctx, name="ingest benchmark", role=Role.ingest, actor="bench")
        key, key_id = issued.secret, issued.record.id
    base_url = f"http://127.0.0.1:{args.port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")} | {
        "CRM_DATABASE_URL": url, "CRM_SECRET_KEY": SECRET, "CRM_DATA_DIR": str(args.data)}
    log = (args.data / "ingest-server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "wiring.cli", "serve", "--port", str(args.port), "--workers",
                               str(args.workers)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    results: dict = {"machine": machine(), "customers": args.customers, "seconds": args.seconds,
                     "server": f"crm serve: uvicorn, {args.workers} workers; PostgreSQL and the generator on the same "
                               "2 cores"}
    phases = (("warmup_batches", 500, 10.0, 10.0), ("batches_of_500", 500, 10.0, args.seconds),
              ("single_events", 1, 200.0, args.seconds))
    try:
        if not wait_healthy(base_url, 120):
            raise SystemExit(f"the server did not come up; see {log.name}")
        for phase, batch, rate, seconds in phases:
            bodies = event_bodies(ids, int(rate * seconds), batch, f"ing-{phase}", len(phase))
            bodies_file = args.data / f"ingest-{phase}.json"
            bodies_file.write_text(json.dumps(bodies))
            serving = lambda pid, _name, parent: pid == server.pid or parent == server.pid  # noqa: E731
            postgres = lambda _pid, name, _parent: name == "postgres"  # noqa: E731
            before = (cpu_seconds(serving), cpu_seconds(postgres), time.perf_counter())
            out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_load.py"), "--client", base_url, key,
                                  str(bodies_file), str(rate), str(args.concurrency), str(seconds + 30)],
                                 capture_output=True, text=True, timeout=seconds + 90, cwd=ROOT)
            if out.returncode != 0 or not out.stdout.strip():
                raise SystemExit(out.stderr[-2000:])
            measured = json.loads(out.stdout.strip().splitlines()[-1])
            wall = time.perf_counter() - before[2]
            measured["events_per_s"] = round(measured["ok"] * batch / measured["elapsed_s"])
            measured["cpu_cores"] = {"server": round((cpu_seconds(serving) - before[0]) / wall, 2),
                                     "postgres": round((cpu_seconds(postgres) - before[1]) / wall, 2),
                                     "generator": round(measured["generator_cpu_s"] / wall, 2)}
            measured.pop("profile", None)
            measured.pop("search", None)
            results[phase] = measured
            print(f"{phase}: {json.dumps(measured)}", flush=True)
        results["state_lag"] = state_lag(base_url, key, url, ids)
        print(f"state lag: {results['state_lag']}", flush=True)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        with session_scope(engine) as session:
            revoke_key(session, ctx, key_id=key_id, actor="bench")
            session.execute(text("DELETE FROM event WHERE external_id LIKE 'ing-%' OR external_id LIKE 'lag-%'"))
            session.execute(text("DELETE FROM idempotency_record"))
        with session_scope(engine) as session:  # the deleted events leave the state as a rebuild says
            state.rebuild(session, ctx, uncommitted=False)
    batches, singles = results.get("batches_of_500", {}), results.get("single_events", {})
    results["targets_met"] = {
        "batches": bool(batches.get("events_per_s", 0) >= 5000 and batches.get("all", {}).get("p99_ms", 1e9) <= 150
                        and not batches.get("errors")),
        "singles": bool(singles.get("all", {}).get("p99_ms", 1e9) <= 25 and not singles.get("errors"))}
    print(f"wrote {save('ingest', {f'{args.customers}_{args.workers}_workers': results})}")


if __name__ == "__main__":
    main()
