"""Journeys at 1M customers on PostgreSQL: event → outbox latency, a due burst, waits firing on time, worker memory.

    .venv/bin/python bench/bench_journeys.py --customers 1000000 [--workers 1] [--memory-minutes 30]

Uses the database bench/bench_state.py loads (`crm_bench_state_<N>`; `--load-only` there builds it). A journey
"Bench cart" (cart_add → push now → wait 1 h → SMS) is the only active one. Phases, each against `crm journeys run`
worker processes (real commits, the system clock):

1. burst: 100,000 enrollments due at the same moment at the push step, committed while the workers run idle; the
   time from that commit until every one of them has taken it (sends planned under the rails).
2. stream: cart_add events for distinct push-reachable customers written through the ingestion write path at
   `--rate` events/s for `--seconds` (batches every 100 ms, from a producer process); latency = the outbox row's
   created_at − the event's time. Meanwhile 3,000 enrollments whose 1-hour wait ends during the stream (spread
   over it): delay = when the wait step was taken − when it was due.
3. pass: one pass of `--batch` due enrollments in process, with the time of each of its phases.
4. memory: one worker for `--memory-minutes` under a stream of `--memory-rate` events/s; its RSS sampled every
   15 s (peak, first and last quarter means).

Everything the benchmark wrote (its journey, enrollments, steps, messages, events, activity) is deleted afterwards.
Writes bench/results/journeys.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import PG_SERVER, machine, parser, save  # noqa: E402

SECRET = "bench-secret"
JOURNEY = {
    "name": "Bench cart", "holdout_share": 0.0, "priority": 60,
    "entry": {"trigger": {"kind": "event", "event": "cart_add"}, "reentry": {"rule": "unlimited"}},
    "steps": [
        {"id": "push", "type": "send", "channels": [{"channel": "push", "template": "cart_reminder"}],
         "next": "wait_1h"},
        {"id": "wait_1h", "type": "wait", "duration": {"hours": 1}, "next": "sms"},
        {"id": "sms", "type": "send", "channels": [{"channel": "sms", "template": "cart_reminder"}]}]}
PRODUCER = """
import json, sys, time
from datetime import datetime, UTC
from kit.context import build_context
from kit.db import session_scope
from kit.settings import Settings
from crm import writes
url, rate, seconds, prefix = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
ids = json.loads(sys.stdin.read())
ctx = build_context(Settings(database_url=url, secret_key="bench-secret"))
per_tick = max(int(rate / 10), 1)
start, sent, tick, behind = time.perf_counter(), 0, 0, 0.0
while time.perf_counter() - start < seconds and sent + per_tick <= len(ids):
    due = start + tick * 0.1
    wait = due - time.perf_counter()
    if wait > 0:
        time.sleep(wait)
    else:
        behind = max(behind, -wait)
    now = datetime.now(UTC).isoformat()
    batch = [{"customer_id": c, "type": "cart_add", "unique_id": f"{prefix}-{sent + i}", "time": now}
             for i, c in enumerate(ids[sent:sent + per_tick])]
    with session_scope(ctx.engine) as session:
        writes.write_items(session, ctx, "events", batch, cause="api", first_wins=True)
    sent += per_tick
    tick += 1
elapsed = time.perf_counter() - start
print(json.dumps({"events": sent, "seconds": round(elapsed, 1), "events_per_second": round(sent / elapsed, 1),
                  "most_behind_s": round(behind, 2)}))
"""


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    return env | {"CRM_DATABASE_URL": url, "CRM_SECRET_KEY": SECRET, "CRM_DATA_DIR": str(ROOT / "var" / "bench-j")}


def _workers(url: str, count: int, batch: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-m", "wiring.cli", "journeys", "run", "--batch", str(batch)],
                             env=_env(url), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(count)]


def _stop(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait(timeout=120)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _percentiles(values: list[float]) -> dict:
    import numpy as np

    if not values:
        return {"n": 0}
    array = np.array(values)
    return {"n": len(values), "p50": round(float(np.percentile(array, 50)), 3),
            "p99": round(float(np.percentile(array, 99)), 3), "max": round(float(array.max()), 3)}


class Bench:
    """One benchmark database and its journey."""

    def __init__(self, url: str) -> None:
        from kit.context import build_context
        from kit.db import make_engine
        from kit.settings import Settings

        self.url = url
        self.ctx = build_context(Settings(database_url=url, secret_key=SECRET), engine=make_engine(url))

    def sql(self, statement: str, **params):
        """Run one statement in its own transaction; rows when it returns any."""
        from sqlalchemy import text

        with self.ctx.engine.begin() as connection:
            result = connection.execute(text(statement), params)
            return result.all() if result.returns_rows else result.rowcount

    def clean(self) -> None:
        """Remove everything a run of this benchmark wrote."""
        self.sql("DELETE FROM message WHERE campaign_id < 0")
        self.sql("DELETE FROM journey_step")
        self.sql("DELETE FROM journey_enrollment")
        self.sql("DELETE FROM customer_activity")
        self.sql("DELETE FROM journey_version")
        self.sql("DELETE FROM journey")
        self.sql("DELETE FROM activity_interest")
        self.sql("DELETE FROM event WHERE external_id LIKE 'jb-%'")
        # Each phase starts without the previous one's dead rows (a burst leaves 100k of them in four tables: the
        # next burst on the bloated tables took 16.5 s instead of 15.2 s with one worker, 14.9 s instead of 11.3
        # s with two).
        from sqlalchemy import text

        with self.ctx.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            for table in ("message", "journey_enrollment", "journey_step", "customer_activity", "event"):
                connection.execute(text(f"VACUUM ANALYZE {table}"))

    def install(self) -> int:
        """The bench journey, active."""
        from campaigns.journeys import definitions
        from kit.db import session_scope

        with session_scope(self.ctx.engine) as session:
            journey = definitions.create_journey(session, self.ctx, JOURNEY, "bench")
            definitions.set_status(session, self.ctx, journey.id, "active", "bench")
            return journey.id

    def reachable(self, part: int) -> list[tuple[int, str]]:
        """Customers with a push token and push consent, each phase its own share (the burst 100k, the stream
        40k, the memory run the rest; proportionally fewer on a smaller shop): (id, external id)."""
        if not hasattr(self, "_reachable"):
            self._reachable = [tuple(r) for r in self.sql(
                "SELECT c.id, c.external_id FROM customer c JOIN consent k ON k.customer_id = c.id "
                "AND k.channel = 'push' AND k.status = 'opted_in' WHERE c.push_tokens_hash IS NOT NULL ORDER BY c.id")]
        total = len(self._reachable)
        burst, stream = min(100_000, total * 4 // 10), min(40_000, total * 2 // 10)
        edges = [0, burst, burst + stream, total]
        return self._reachable[edges[part]:edges[part + 1]]

    def enroll(self, journey_id: int, customers: list[int], step: str, wake: list[datetime],
               context: list[str]) -> None:
        """Enrollments straight into the table (what entries would have made), in one COPY."""
        import polars as pl

        from kit.bulkwrite import insert_frame
        from kit.db import session_scope

        now = datetime.now(UTC)
        frame = pl.DataFrame({"journey_id": journey_id, "version": 2, "customer_id": customers, "status": "active",
                              "step_id": step, "seq": 0 if step == "push" else 1, "wake_at": wake,
                              "entry_key": [f"bench:{c}" for c in customers], "entered_at": now - timedelta(hours=1),
                              "context": context, "updated_at": now},
                             schema_overrides={"wake_at": pl.Datetime("us", "UTC"),
                                               "entered_at": pl.Datetime("us", "UTC"),
                                               "updated_at": pl.Datetime("us", "UTC")})
        types = {"journey_id": "int", "version": "int", "customer_id": "int", "status": "text", "step_id": "text",
                 "seq": "int", "wake_at": "timestamp", "entry_key": "text", "entered_at": "timestamp",
                 "context": "json", "updated_at": "timestamp"}
        with session_scope(self.ctx.engine) as session:
            insert_frame(session, "journey_enrollment", frame, types)
        self.sql("ANALYZE journey_enrollment")

    def due(self) -> int:
        """Enrollments due now."""
        return self.sql("SELECT COUNT(*) FROM journey_enrollment WHERE status IN ('pending', 'active') "
                        "AND wake_at <= now()")[0][0]


def burst(bench: Bench, journey_id: int, workers: int, batch: int) -> dict:
    """100k enrollments due at once at the push step; seconds until all took it."""
    people = bench.reachable(0)[:100_000]
    processes = _workers(bench.url, workers, batch)
    time.sleep(6)  # the workers are up and idle, polling: the burst lands on running workers
    now = datetime.now(UTC)
    bench.enroll(journey_id, [p[0] for p in people], "push", [now] * len(people), ["{}"] * len(people))
    started = time.perf_counter()  # from the commit that made them all due
    while bench.sql("SELECT COUNT(*) FROM journey_enrollment WHERE step_id = 'push'")[0][0] > 0:
        time.sleep(0.25)
        if time.perf_counter() - started > 600:
            break
    seconds = time.perf_counter() - started
    _stop(processes)
    outcomes = dict(bench.sql("SELECT status, COUNT(*) FROM message WHERE campaign_id = :s GROUP BY status",
                              s=-journey_id))
    return {"enrollments": len(people), "workers": workers, "batch": batch, "seconds": round(seconds, 1),
            "per_second": round(len(people) / seconds), "outbox_rows": outcomes}


def one_pass(bench: Bench, journey_id: int, batch: int) -> dict:
    """One pass of `batch` due enrollments in this process: where its time goes (advance_due's own timings)."""
    from campaigns.journeys import runtime
    from kit.db import session_scope

    people = bench.reachable(0)[:batch * 2]
    bench.enroll(journey_id, [p[0] for p in people], "push", [datetime.now(UTC)] * len(people), ["{}"] * len(people))
    passes = []
    for _ in range(2):  # the first pass warms the caches and the imports; the second is quoted
        started = time.perf_counter()
        with session_scope(bench.ctx.engine) as session:
            result = runtime.advance_due(session, bench.ctx, limit=batch)
        passes.append(result | {"with_commit_s": round(time.perf_counter() - started, 3)})
    return passes[-1]


def stream(bench: Bench, journey_id: int, workers: int, batch: int, rate: float, seconds: float) -> dict:
    """Events through the write path at `rate` for `seconds` while waits come due; latencies."""
    people = bench.reachable(1)[:int(rate * seconds) + 3_000]
    waiting, streaming = people[:min(3_000, len(people) // 4)], people[min(3_000, len(people) // 4):]
    start = datetime.now(UTC) + timedelta(seconds=5)
    wakes = [start + timedelta(seconds=seconds * i / len(waiting)) for i in range(len(waiting))]
    contexts = [json.dumps({"wait": {"step": "wait_1h", "since": (w - timedelta(hours=1)).isoformat(),
                                     "until": w.isoformat(), "until_event": False}, "bench_due": w.isoformat()})
                for w in wakes]
    bench.enroll(journey_id, [p[0] for p in waiting], "wait_1h", wakes, contexts)
    processes = _workers(bench.url, workers, batch)
    time.sleep(4)  # the workers are up
    producer = subprocess.run([sys.executable, "-c", PRODUCER, bench.url, str(rate), str(seconds), "jb-s"],
                              input=json.dumps([p[1] for p in streaming]), capture_output=True, text=True, cwd=ROOT,
                              env=_env(bench.url))
    if producer.returncode != 0:
        raise SystemExit(producer.stderr[-3000:])
    produced = json.loads(producer.stdout.strip().splitlines()[-1])
    deadline = time.perf_counter() + 120
    while time.perf_counter() < deadline and bench.sql(
            "SELECT COUNT(*) FROM customer_activity")[0][0] + bench.due() > 0:
        time.sleep(0.5)
    _stop(processes)
    latencies = [r[0] for r in bench.sql(
        "SELECT EXTRACT(EPOCH FROM m.created_at - e.occurred_at) FROM event e "
        "JOIN journey_enrollment j ON j.entry_key = 'event:' || e.id AND j.journey_id = :j "
        "JOIN message m ON m.campaign_id = :s AND m.occurrence = 'e' || j.id || '.1' "
        "WHERE e.external_id LIKE 'jb-s-%'", j=journey_id, s=-journey_id)]
    delays = [r[0] for r in bench.sql(
        "SELECT EXTRACT(EPOCH FROM s.at - (j.context->>'bench_due')::timestamptz) FROM journey_enrollment j "
        "JOIN journey_step s ON s.enrollment_id = j.id AND s.step_id = 'wait_1h' WHERE j.journey_id = :j "
        "AND j.entry_key LIKE 'bench:%'", j=journey_id)]
    control = bench.sql("SELECT COUNT(*) FROM journey_enrollment WHERE end_reason = 'global_control'")[0][0]
    return {"producer": produced, "workers": workers, "batch": batch,
            "event_to_outbox_s": _percentiles([float(v) for v in latencies]),
            "events_without_outbox_row": produced["events"] - len(latencies), "global_control_entrants": control,
            "waits_due": len(waiting), "wait_fired_late_s": _percentiles([float(v) for v in delays])}


def memory(bench: Bench, journey_id: int, minutes: float, rate: float, batch: int) -> dict:
    """One worker under a steady stream; its RSS over time."""
    people = bench.reachable(2)[:int(rate * minutes * 60) + 10]
    (worker,) = _workers(bench.url, 1, batch)
    producer = subprocess.Popen([sys.executable, "-c", PRODUCER, bench.url, str(rate), str(minutes * 60), "jb-m"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                env=_env(bench.url))
    producer.stdin.write(json.dumps([p[1] for p in people]))
    producer.stdin.close()
    samples = []
    started = time.perf_counter()
    time.sleep(10)  # the worker's start-up (imports, first pass) is not its steady state
    while producer.poll() is None:
        samples.append((round(time.perf_counter() - started), _rss_mb(worker.pid)))
        time.sleep(15)
    samples.append((round(time.perf_counter() - started), _rss_mb(worker.pid)))
    produced = json.loads(producer.stdout.read().strip().splitlines()[-1])
    _stop([worker])
    quarter = max(len(samples) // 4, 1)
    first = sum(s[1] for s in samples[:quarter]) / quarter
    last = sum(s[1] for s in samples[-quarter:]) / quarter
    enrollments = bench.sql("SELECT COUNT(*) FROM journey_enrollment")[0][0]
    return {"minutes": minutes, "producer": produced, "rss_peak_mb": max(s[1] for s in samples),
            "rss_first_quarter_mb": round(first, 1), "rss_last_quarter_mb": round(last, 1),
            "enrollments_at_end": enrollments, "samples": samples}


def main() -> None:
    """Run the phases and write bench/results/journeys.json."""
    options = parser("postgres")
    options.add_argument("--workers", type=int, default=1)
    options.add_argument("--batch", type=int, default=10_000)
    options.add_argument("--rate", type=float, default=500.0)
    options.add_argument("--seconds", type=float, default=60.0)
    options.add_argument("--memory-minutes", type=float, default=30.0)
    options.add_argument("--memory-rate", type=float, default=100.0)
    options.add_argument("--phases", default="burst,pass,stream,memory")
    args = options.parse_args()
    url = f"{PG_SERVER}/crm_bench_state_{args.customers}"
    from kit.db import make_engine
    from kit.migrations import upgrade_to_head

    upgrade_to_head(make_engine(url))
    bench = Bench(url)
    results: dict = {"machine": machine(), "customers": args.customers}
    phases = args.phases.split(",")
    try:
        for phase in phases:
            bench.clean()
            journey_id = bench.install()
            if phase == "burst":
                results["burst"] = burst(bench, journey_id, args.workers, args.batch)
            elif phase == "stream":
                results["stream"] = stream(bench, journey_id, args.workers, args.batch, args.rate, args.seconds)
            elif phase == "pass":
                results["pass"] = one_pass(bench, journey_id, args.batch)
            elif phase == "memory":
                results["memory"] = memory(bench, journey_id, args.memory_minutes, args.memory_rate, args.batch)
            print(json.dumps({phase: results[phase]}, default=str), flush=True)
    finally:
        bench.clean()
    key = "journeys" if args.workers == 1 else f"journeys-{args.workers}w"
    print(f"wrote {save(key, {k: v for k, v in results.items()})}")


if __name__ == "__main__":
    main()
