"""Secret rotation: `crm secrets rotate` over every customer's contact data (email, phone, name, push tokens: four
ciphertexts and four lookup hashes each), and lookups by email while it runs.

    .venv/bin/python bench/bench_rotation.py --customers 1000000

Imports the generator's customers (bench/bench_foundation.py's data set) into a PostgreSQL database kept between
runs (`crm_bench_rot_<N>`), then rotates from the key they were written with to a new one and back (each way a
full pass), in a subprocess per pass, while this process looks customers up by email through the service (the API's
search path) and records the latency. Writes bench/results/rotation.json.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import kept_postgres_database, machine, parser, save  # noqa: E402
from crm import service  # noqa: E402
from crm.ingest import file_chunks, run_import  # noqa: E402
from kit.context import build_context  # noqa: E402
from kit.db import make_engine, session_scope  # noqa: E402
from kit.migrations import upgrade_to_head  # noqa: E402
from kit.settings import Settings  # noqa: E402
from wiring.generator import GeneratorConfig, write_dataset  # noqa: E402

END = date(2026, 11, 1)
KEYS = ("bench-secret", "bench-secret-rotated-" + "r" * 24)
PASS_SCRIPT = """
import json, sys, time
from crm import key_rotation
from kit.context import build_context
from kit.settings import Settings
url, current, previous, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ctx = build_context(Settings(database_url=url, secret_key=current, secret_key_previous=[previous]))
started = time.perf_counter()
outcome = key_rotation.rotate(ctx, batch=batch)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent (which generated the data set).
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps(outcome | {"seconds": round(time.perf_counter() - started, 1), "peak_mb": round(peak / 1024)}))
"""


def _lookups(url: str, keys: tuple[str, str], emails: list[str], stop: threading.Event, latencies: list[float],
             failures: list[str]) -> None:
    """What the API does meanwhile: customer search by email (through the keyed hashes), one after another."""
    ctx = build_context(Settings(database_url=url, secret_key=keys[0], secret_key_previous=[keys[1]]))
    rng = random.Random(7)
    while not stop.is_set():
        email = rng.choice(emails)
        started = time.perf_counter()
        with session_scope(ctx.engine) as session:
            found = service.find_customers(session, ctx, email=email, limit=5)
            if not found or service.contact_of(ctx, found[0], masked=False)["email"] != email:
                failures.append(email)
        latencies.append(time.perf_counter() - started)


def _pass(url: str, current: str, previous: str, batch: int, emails: list[str]) -> dict:
    stop, latencies, failures = threading.Event(), [], []
    reader = threading.Thread(target=_lookups, args=(url, (current, previous), emails, stop, latencies, failures))
    reader.start()
    try:
        out = subprocess.run([sys.executable, "-c", PASS_SCRIPT, url, current, previous, str(batch)],
                             capture_output=True, text=True, cwd=ROOT)
    finally:
        stop.set()
        reader.join()
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    ordered = sorted(latencies)
    return result | {"customers_per_second": round(result["rotated"] / result["seconds"]),
                     "lookups": len(latencies), "lookup_failures": len(failures),
                     "lookup_p50_ms": round(statistics.median(ordered) * 1000, 1),
                     "lookup_p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 1)}


def main() -> None:
    """Run the benchmark and write bench/results/rotation.json."""
    options = parser("postgres")
    options.add_argument("--batch", type=int, default=1000)
    args = options.parse_args()
    data = args.data / f"{args.customers}-{args.seed}"
    if not (data / "manifest.json").exists():
        write_dataset(GeneratorConfig(customers=args.customers, seed=args.seed, end=END), data)
    url, load = kept_postgres_database(f"crm_bench_rot_{args.customers}")
    upgrade_to_head(make_engine(url))
    if load:
        ctx = build_context(Settings(database_url=url, secret_key=KEYS[0]), engine=make_engine(url))
        started = time.perf_counter()
        with session_scope(ctx.engine) as session:
            run_import(session, ctx, kind="customers", chunks=file_chunks(data / "customers.csv"), actor="bench")
        print(f"loaded customers in {time.perf_counter() - started:.0f}s", flush=True)
    emails = pl.read_csv(data / "customers.csv", columns=["email"]).drop_nulls()["email"].sample(
        5000, seed=1).str.to_lowercase().to_list()
    first = _pass(url, KEYS[1], KEYS[0], args.batch, emails)
    print(f"rotated to the new key: {json.dumps(first)}", flush=True)
    back = _pass(url, KEYS[0], KEYS[1], args.batch, emails)  # leaves the database as it was loaded
    print(f"rotated back: {json.dumps(back)}", flush=True)
    out = save("rotation", {"machine": machine(), "customers": args.customers, "batch": args.batch,
                            "to_new_key": first, "back": back})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
