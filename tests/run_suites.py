"""Run the test suite on SQLite and on PostgreSQL (a throw-away database), and say loudly which ran.

CRM_TEST_POSTGRES_URL points at the server (default: postgres@127.0.0.1:5432/test);
CRM_REQUIRE_POSTGRES=1 (set by .ci/run) turns an unreachable PostgreSQL into a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psycopg

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _run(label: str, env: dict[str, str], extra: list[str]) -> int:
    print(f"\n===== test suite on {label} =====", flush=True)
    code = subprocess.call([sys.executable, "-m", "pytest", *extra], env=env)
    # pytest exits 5 when it collected nothing: a suite that runs no test is a failure here.
    return 1 if code == 5 else code


def main() -> int:
    """Run both suites; returns the process exit code."""
    extra = sys.argv[1:]
    results: dict[str, str] = {}
    base = dict(os.environ)
    sqlite_code = _run("SQLite", base | {"CRM_TEST_BACKEND": "sqlite"}, extra)
    results["SQLite"] = "passed" if sqlite_code == 0 else f"FAILED (exit {sqlite_code})"

    server_url = os.environ.get("CRM_TEST_POSTGRES_URL", DEFAULT_PG)
    plain = server_url.replace("postgresql+psycopg://", "postgresql://")
    name = f"crm_test_{uuid.uuid4().hex[:10]}"
    pg_code = 0
    try:
        with psycopg.connect(plain, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as unreachable:
        first_line = str(unreachable).strip().splitlines()[0] if str(unreachable).strip() else "no answer"
        results["PostgreSQL"] = f"NOT RUN: PostgreSQL unreachable at {plain.split('@')[-1]} ({first_line})"
        if os.environ.get("CRM_REQUIRE_POSTGRES") == "1":
            pg_code = 1
    else:
        url = server_url.rsplit("/", 1)[0] + f"/{name}"
        try:
            pg_code = _run("PostgreSQL", base | {"CRM_TEST_BACKEND": "postgres", "CRM_TEST_DATABASE_URL": url}, extra)
        finally:
            with psycopg.connect(plain, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        results["PostgreSQL"] = "passed" if pg_code == 0 else f"FAILED (exit {pg_code})"

    print("\n===== summary =====")
    for label, outcome in results.items():
        print(f"{label:>10}: {outcome}")
    if results["PostgreSQL"].startswith("NOT RUN"):
        print("!!!!! PostgreSQL suite did NOT run: set CRM_TEST_POSTGRES_URL or start PostgreSQL !!!!!")
    return 1 if sqlite_code or pg_code else 0


if __name__ == "__main__":
    sys.exit(main())
