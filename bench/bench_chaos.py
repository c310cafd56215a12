"""Crash chaos, long: tests/support/chaos.py's harness with a bigger shop and many more signals, on PostgreSQL.

    .venv/bin/python bench/bench_chaos.py --customers 5000 --signals 60 --rounds 3

Each round builds a generated shop in a new database, runs the API, the scheduler and the dispatcher as real
processes, sends SIGKILLs (a quarter SIGTERMs) at random moments of the daily pipeline while a client uploads
orders and reads profiles, then checks: no message sent twice or lost, ledger = providers' log, outbox = a calm
run's, no import half-written, the pipeline finished once, every SIGTERM a clean stop. Writes
bench/results/chaos.json; exits 1 if any round found a problem.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import PG_SERVER, fake_provider, machine, parser, save  # noqa: E402


def main() -> None:
    """Run the rounds and write bench/results/chaos.json."""
    options = parser("postgres")
    options.set_defaults(customers=5000)
    options.add_argument("--signals", type=int, default=60)
    options.add_argument("--rounds", type=int, default=3)
    args = options.parse_args()
    plain = PG_SERVER.replace("postgresql+psycopg://", "postgresql://")
    rounds, failed = [], False
    for index in range(args.rounds):
        fake, fake_url = fake_provider()
        name = f"crm_bench_chaos_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(f"{plain}/postgres", autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        started = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory() as workdir:
                out = subprocess.run([sys.executable, "-m", "tests.support.chaos", "--url", f"{PG_SERVER}/{name}",
                                      "--fake-url", fake_url, "--workdir", workdir, "--customers", str(args.customers),
                                      "--signals", str(args.signals), "--seed", str(args.seed + index)],
                                     cwd=ROOT, capture_output=True, text=True)
        finally:
            fake.kill()
            with psycopg.connect(f"{plain}/postgres", autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not out.stdout.strip():
            raise SystemExit(out.stderr[-3000:])
        report = json.loads(out.stdout.strip().splitlines()[-1])
        kills = [s for s in report["signals"] if s["signal"] == "SIGKILL"]
        summary = {"seconds": round(time.perf_counter() - started, 1), "problems": report["problems"],
                   "sigkill": {t: sum(1 for s in kills if s["target"] == t) for t in ("api", "scheduler", "dispatcher")},
                   "sigkill_mid_step": sum(1 for s in kills if s["pipeline_step"]),
                   "sigterm_clean": sum(1 for s in report["signals"] if s["signal"] == "SIGTERM" and s["exit_code"] == 0),
                   "sigterm": sum(1 for s in report["signals"] if s["signal"] == "SIGTERM"), **report["figures"]}
        print(json.dumps(summary, default=str), flush=True)
        rounds.append(summary)
        failed = failed or bool(report["problems"])
    print(f"wrote {save('chaos', {'machine': machine(), 'customers': args.customers, 'signals': args.signals, 'rounds': rounds})}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
