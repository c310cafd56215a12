"""Crash safety: a `crm import` killed with SIGKILL at random moments never leaves half a batch."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from datetime import date

from sqlalchemy import text

from crm.db import make_engine
from crm.generator import GeneratorConfig, write_dataset
from tests.conftest import cli_env


def _counts(engine) -> tuple[int, int, int]:
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT count(*) FROM orders")).scalar_one()
        counted, batches = connection.execute(text(
            "SELECT coalesce(sum(rows_inserted), 0), coalesce(sum(batches_committed), 0) "
            "FROM import_job WHERE kind = 'orders'")).one()
    return stored, counted, batches


def test_sigkill_mid_import_leaves_whole_batches_only(scratch_url, tmp_path):
    counts = write_dataset(GeneratorConfig(customers=1500, seed=11, end=date(2026, 6, 1)), tmp_path / "data")
    env = cli_env(scratch_url, tmp_path) | {"CRM_IMPORT_BLOCK_BYTES": "32768"}
    crm = [sys.executable, "-m", "crm.cli"]
    subprocess.run([*crm, "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([*crm, "import", "customers", str(tmp_path / "data" / "customers.csv")], env=env, check=True,
                   capture_output=True)
    engine = make_engine(scratch_url)
    rng = random.Random(5)
    kills = 0
    for _ in range(6):
        process = subprocess.Popen([*crm, "import", "orders", str(tmp_path / "data" / "orders.csv")], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start_batches = _counts(engine)[2]
        deadline = time.monotonic() + 60
        while _counts(engine)[2] == start_batches and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        stored, counted, _ = _counts(engine)
        # Data and the job's counters commit in one transaction: they always agree.
        assert stored == counted, f"after a kill: {stored} orders stored, jobs account for {counted}"
    assert kills >= 3, "the import finished too fast to be interrupted; enlarge the data set"
    finished = subprocess.run([*crm, "import", "orders", str(tmp_path / "data" / "orders.csv")], env=env,
                              capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    stored, counted, _ = _counts(engine)
    assert stored == counted == counts["orders"]
    with engine.connect() as connection:
        distinct = connection.execute(text("SELECT count(DISTINCT external_id) FROM orders")).scalar_one()
    assert distinct == counts["orders"]
    engine.dispose()
