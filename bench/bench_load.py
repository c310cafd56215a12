"""API load: profile lookups and customer searches at a fixed rate against `crm serve` on the 1M-customer database.

    .venv/bin/python bench/bench_load.py --customers 1000000 --rate 200 --seconds 60 --workers 2

Uses the PostgreSQL database bench/bench_segmentation.py loads (run it, bench_churn.py and bench_pipeline.py first,
so profiles have tiers, churn scores and contact history). Starts `crm serve` with N uvicorn worker processes, then a
load generator in a second process on loopback: an open loop that sends request i at t0 + i/rate whatever the
server's pace (latency counts from that scheduled moment, so a slow server cannot hide its queue), half profile
lookups (`GET /v1/customers/{id}/profile`) and half searches (`POST /v1/customers/search` by email or phone, exact match through
the keyed hashes), every request with a 5 s timeout and the whole run under a hard deadline. Customers, emails and
phones are drawn from the generator's own customers.csv. Writes bench/results/load.json (one entry per
workers and rate, so several runs draw the latency curve).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import PG_SERVER, machine, parser, save  # noqa: E402

SECRET = "bench-secret"  # the key bench_segmentation.py encrypted the contact data with
PROFILE_SHARE = 0.5
REQUEST_TIMEOUT = 5.0


def targets(data: Path, count: int, seed: int) -> list[dict]:
    """`count` requests ({path, json}): profiles (GET) and email/phone searches (POST, contact data in the body)
    of customers from customers.csv."""
    from urllib.parse import quote

    import polars as pl

    people = (pl.scan_csv(data / "customers.csv", schema_overrides={"phone": pl.String})
              .select("external_id", "email", "phone").collect())
    rng = random.Random(seed)
    rows = people.sample(n=min(count, people.height), with_replacement=count > people.height, seed=seed).rows()
    paths = []
    for external_id, email, phone in rows:
        kind = rng.random()
        if kind < PROFILE_SHARE or (email is None and phone is None):
            paths.append({"path": f"/v1/customers/{quote(external_id)}/profile", "json": None})
        elif email is not None and (phone is None or kind < PROFILE_SHARE + (1 - PROFILE_SHARE) / 2):
            paths.append({"path": "/v1/customers/search", "json": {"email": email}})
        else:
            paths.append({"path": "/v1/customers/search", "json": {"phone": phone}})
    return paths


async def open_loop(base_url: str, key: str, paths: list[dict], rate: float, concurrency: int,
                    deadline: float) -> dict:
    """Send paths[i] at t0 + i/rate; latency from the scheduled moment; errors by kind. Whatever has not
    completed `deadline` seconds after the start is cancelled and counted as `not_completed`."""
    # aiohttp (already installed with the Twilio SDK) costs about a third of httpx's CPU per request: the generator
    # shares the two cores with the server and PostgreSQL, so its own appetite is part of what is measured.
    import aiohttp

    latencies: dict[str, list[float]] = {"profile": [], "search": []}
    for target in paths:  # other benchmarks name their own kinds of request
        latencies.setdefault(target.get("kind", "profile"), [])
    errors: dict[str, int] = {}
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base_url=base_url, headers={"Authorization": f"Bearer {key}"},
                                     connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as client:
        start = time.perf_counter() + 0.2

        async def one(index: int, target: dict) -> None:
            scheduled = start + index / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            path = target["path"]
            call = client.get(path) if target["json"] is None else client.post(path, json=target["json"])
            async with gate:
                try:
                    async with call as answer:
                        await answer.read()
                        if not 200 <= answer.status < 300:
                            errors[f"http_{answer.status}"] = errors.get(f"http_{answer.status}", 0) + 1
                            return
                except (aiohttp.ClientError, TimeoutError) as error:
                    errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
                    return
            kind = target.get("kind") or ("profile" if path.endswith("/profile") else "search")
            latencies[kind].append((time.perf_counter() - scheduled) * 1000)

        cpu_before = time.process_time()
        tasks = [asyncio.ensure_future(one(i, p)) for i, p in enumerate(paths)]
        _, pending = await asyncio.wait(tasks, timeout=deadline)
        for task in pending:
            task.cancel()
        if pending:
            errors["not_completed"] = len(pending)
            await asyncio.wait(pending)
        elapsed = time.perf_counter() - start
        generator_cpu = time.process_time() - cpu_before
    return {"latencies": latencies, "errors": errors, "elapsed_s": round(elapsed, 2),
            "generator_cpu_s": round(generator_cpu, 2)}


def percentiles(values: list[float]) -> dict:
    """p50 / p90 / p99 / max in ms."""
    import numpy as np

    if not values:
        return {"count": 0}
    array = np.asarray(values)
    return {"count": len(values), "p50_ms": round(float(np.percentile(array, 50)), 1),
            "p90_ms": round(float(np.percentile(array, 90)), 1), "p99_ms": round(float(np.percentile(array, 99)), 1),
            "max_ms": round(float(array.max()), 1)}


def client_main(args: list[str]) -> None:
    """The load generator process: `bench_load.py --client URL KEY PATHS_FILE RATE CONCURRENCY DEADLINE`."""
    base_url, key, paths_file, rate, concurrency, deadline = args
    paths = json.loads(Path(paths_file).read_text())
    result = asyncio.run(open_loop(base_url, key, paths, float(rate), int(concurrency), float(deadline)))
    lat = result["latencies"]
    everything = [value for values in lat.values() for value in values]
    print(json.dumps({"sent": len(paths), "ok": len(everything), "errors": result["errors"],
                      "elapsed_s": result["elapsed_s"], "generator_cpu_s": result["generator_cpu_s"], "completed_rps": round(len(everything) / result["elapsed_s"], 1),
                      "all": percentiles(everything), "profile": percentiles(lat["profile"]),
                      "search": percentiles(lat["search"])}))


def cpu_seconds(select) -> float:
    """User + system CPU seconds of the processes whose (pid, command name, parent pid) `select` accepts."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        if select(int(entry.name), name, int(fields[1])):
            total += int(fields[11]) + int(fields[12])
    return total / tick


def wait_healthy(base_url: str, timeout: float) -> bool:
    """The server answers /v1/health/live."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/v1/health/live", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def main() -> None:
    """Start the server, warm it, run the measured load in a second process, write bench/results/load.json."""
    options = parser("postgres")
    options.add_argument("--rate", type=float, default=200.0)
    options.add_argument("--seconds", type=float, default=60.0)
    options.add_argument("--warmup-seconds", type=float, default=10.0)
    options.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    options.add_argument("--concurrency", type=int, default=64, help="most requests in flight")
    options.add_argument("--port", type=int, default=8765)
    args = options.parse_args()

    from crm.auth import create_key, revoke_key
    from crm.models import Role
    from kit.context import build_context
    from kit.db import make_engine, session_scope
    from kit.migrations import upgrade_to_head
    from kit.settings import Settings

    url = f"{PG_SERVER}/crm_bench_seg_{args.customers}"
    data = args.data / f"{args.customers}-{args.seed}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    ctx = build_context(Settings(database_url=url, secret_key=SECRET), engine=engine)
    with session_scope(engine) as session:
        from sqlalchemy import text

        counts = session.execute(text("SELECT (SELECT count(*) FROM customer), (SELECT count(*) FROM segment_value_step), "
                                      "(SELECT count(*) FROM churn_score), (SELECT count(*) FROM message)")).one()
        if not counts[1] or not counts[2]:
            raise SystemExit("run bench_segmentation.py, bench_churn.py and bench_pipeline.py first (profiles need "
                             "a segmentation run with its spend steps, churn scores and messages)")
        issued = create_key(session, ctx, name="load benchmark", role=Role.support, actor="bench")
        key, key_id = issued.secret, issued.record.id
    base_url = f"http://127.0.0.1:{args.port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")} | {
        "CRM_DATABASE_URL": url, "CRM_SECRET_KEY": SECRET, "CRM_DATA_DIR": str(args.data)}
    log = (args.data / "load-server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "wiring.cli", "serve", "--port", str(args.port), "--workers",
                               str(args.workers)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    results: dict = {"machine": machine(), "customers": counts[0], "messages": counts[3],
                     "server": f"crm serve: uvicorn, {args.workers} worker processes, each FastAPI's sync routes on "
                               "its default thread pool (40 threads), SQLAlchemy pool 5 + 10 overflow per worker; "
                               "PostgreSQL on the same 2 cores",
                     "rate": args.rate, "seconds": args.seconds, "concurrency_cap": args.concurrency,
                     "mix": f"{PROFILE_SHARE:.0%} profile lookups, the rest email / phone searches"}
    try:
        if not wait_healthy(base_url, 120):
            raise SystemExit(f"the server did not come up; see {log.name}")
        for phase, seconds, seed in (("warmup", args.warmup_seconds, args.seed + 1), ("measured", args.seconds,
                                                                                     args.seed)):
            paths = targets(data, int(args.rate * seconds), seed)
            paths_file = args.data / f"load-{phase}.json"
            paths_file.write_text(json.dumps(paths))
            # Where the two cores went: the server (uvicorn's master and workers), every PostgreSQL process, and
            # the generator (it reports its own).
            serving = lambda pid, _name, parent: pid == server.pid or parent == server.pid  # noqa: E731
            postgres = lambda _pid, name, _parent: name == "postgres"  # noqa: E731
            before = (cpu_seconds(serving), cpu_seconds(postgres), time.perf_counter())
            out = subprocess.run([sys.executable, __file__, "--client", base_url, key, str(paths_file), str(args.rate),
                                  str(args.concurrency), str(seconds + 15)], capture_output=True, text=True,
                                 timeout=seconds + 60, cwd=ROOT)
            if out.returncode != 0 or not out.stdout.strip():
                raise SystemExit(out.stderr[-2000:])
            results[phase] = json.loads(out.stdout.strip().splitlines()[-1])
            wall = time.perf_counter() - before[2]
            results[phase]["cpu_cores"] = {
                "server": round((cpu_seconds(serving) - before[0]) / wall, 2),
                "postgres": round((cpu_seconds(postgres) - before[1]) / wall, 2),
                "generator": round(results[phase]["generator_cpu_s"] / wall, 2)}
            print(f"{phase}: {json.dumps(results[phase])}", flush=True)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        with session_scope(engine) as session:
            revoke_key(session, ctx, key_id=key_id, actor="bench")
    measured = results["measured"]
    results["target_met"] = bool(measured.get("all", {}).get("p99_ms", 1e9) <= 50 and not measured.get("errors"))
    print(f"wrote {save('load', {f'{args.workers}_workers_{args.rate:g}_rps': results})}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2:])
    else:
        main()
