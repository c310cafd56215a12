"""What the benchmark scripts share: the machine's size, subprocess steps, the usual options, result files."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_SERVER = os.environ.get("CRM_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")


def machine() -> dict:
    """CPU count and memory, quoted beside every figure."""
    return {"cpus": os.cpu_count(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)}


def run_json(*args: str) -> dict:
    """Run `python ARGS` from the project root (its own process, so peak memory is its own); parse its last line."""
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def fake_provider() -> tuple[subprocess.Popen, str]:
    """Start tests/support/fake_providers.py (Twilio, SendGrid, FCM) in its own process; returns it and its base URL."""
    process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "support" / "fake_providers.py"), "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
    port = process.stdout.readline().split()[-1]
    return process, f"http://127.0.0.1:{port}"


def kept_postgres_database(name: str) -> tuple[str, bool]:
    """URL of a PostgreSQL database kept between runs (created when missing), and whether it was just created."""
    import psycopg

    plain = PG_SERVER.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(f"{plain}/postgres", autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            admin.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_SERVER}/{name}", not exists


def parser(backends: str) -> argparse.ArgumentParser:
    """The options every benchmark takes."""
    result = argparse.ArgumentParser()
    result.add_argument("--customers", type=int, default=1_000_000)
    result.add_argument("--seed", type=int, default=1)
    result.add_argument("--data", type=Path, default=ROOT / "var" / "bench-data")
    result.add_argument("--backends", default=backends)
    return result


def save(name: str, results: dict) -> Path:
    """Merge into bench/results/NAME.json (a run of one backend keeps the other's figures)."""
    out = ROOT / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps(previous | results, indent=2, default=str))
    return out
