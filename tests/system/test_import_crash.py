"""Crash safety: a `crm import` killed with SIGKILL at random moments never leaves half a batch, and its job is
then marked interrupted (never `running` for ever)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from datetime import date

from sqlalchemy import text

from crm.ingest import mark_interrupted_imports
from kit.context import build_context
from kit.db import make_engine, session_scope
from kit.settings import Settings
from tests.conftest import TEST_SECRET, cli_env
from wiring.generator import GeneratorConfig, write_dataset


def _counts(engine) -> tuple[int, int, int]:
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT count(*) FROM orders")).scalar_one()
        counted, batches = connection.execute(text(
            "SELECT coalesce(sum(rows_inserted), 0), coalesce(sum(batches_committed), 0) "
            "FROM import_job WHERE kind = 'orders'")).one()
    return stored, counted, batches


def _jobs(engine) -> list[tuple]:
    with engine.connect() as connection:
        return [tuple(r) for r in connection.execute(text("SELECT id, status, batches_committed FROM import_job"))]


def _sweep(ctx) -> int:
    with session_scope(ctx.engine) as session:
        return mark_interrupted_imports(session, ctx)


def test_sigkill_mid_import_leaves_whole_batches_only(scratch_url, tmp_path, db_backend):
    counts = write_dataset(GeneratorConfig(customers=1500, seed=11, end=date(2026, 6, 1)), tmp_path / "data")
    env = cli_env(scratch_url, tmp_path) | {"CRM_IMPORT_BLOCK_BYTES": "32768"}
    crm = [sys.executable, "-m", "wiring.cli"]
    subprocess.run([*crm, "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([*crm, "import", "customers", str(tmp_path / "data" / "customers.csv")], env=env, check=True,
                   capture_output=True)
    engine = make_engine(scratch_url)
    ctx = build_context(Settings(database_url=scratch_url, secret_key=TEST_SECRET, data_dir=tmp_path), engine=engine)
    rng = random.Random(5)
    kills = interrupted = 0
    for _ in range(6):
        process = subprocess.Popen([*crm, "import", "orders", str(tmp_path / "data" / "orders.csv")], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start_batches = _counts(engine)[2]
        deadline = time.monotonic() + 60
        while _counts(engine)[2] == start_batches and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        if process.poll() is None:
            assert _sweep(ctx) == 0, "a live import was marked interrupted"
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        stored, counted, _ = _counts(engine)
        # Data and the job's counters commit in one transaction: they always agree.
        assert stored == counted, f"after a kill: {stored} orders stored, jobs account for {counted}"
        # A killed import left its job `running` (unless the kill came as it exited); its process is gone, so the
        # sweep marks it once the server has noticed the closed connection that held the job's lock (milliseconds).
        expected = sum(1 for _, status, _ in _jobs(engine) if status == "running")
        interrupted += expected
        deadline = time.monotonic() + 10
        swept = _sweep(ctx)
        while swept < expected and time.monotonic() < deadline:
            time.sleep(0.05)
            swept += _sweep(ctx)
        assert swept == expected, _jobs(engine)
    assert kills >= 3, "the import finished too fast to be interrupted; enlarge the data set"
    with engine.connect() as connection:
        statuses = dict(connection.execute(text(
            "SELECT status, count(*) FROM import_job WHERE kind = 'orders' GROUP BY status")).all())
    assert statuses.get("interrupted", 0) == interrupted and "running" not in statuses, statuses
    assert interrupted or db_backend == "postgres", "no import was caught mid-way"
    assert _sweep(ctx) == 0  # idempotent
    finished = subprocess.run([*crm, "import", "orders", str(tmp_path / "data" / "orders.csv")], env=env,
                              capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    stored, counted, _ = _counts(engine)
    assert stored == counted == counts["orders"]
    with engine.connect() as connection:
        distinct = connection.execute(text("SELECT count(DISTINCT external_id) FROM orders")).scalar_one()
    assert distinct == counts["orders"]
    engine.dispose()


def test_a_running_import_reads_interrupted_once_its_process_is_gone(scratch_url, tmp_path):
    """The liveness lock on both backends: held → the job stays `running`; its holder gone without unlocking (a
    dead process's connection or file descriptor closing) → `GET /imports/{id}`'s lookup marks it `interrupted`."""
    from crm.ingest import get_job, start_job
    from kit.migrations import upgrade_to_head

    engine = make_engine(scratch_url)
    upgrade_to_head(engine)
    ctx = build_context(Settings(database_url=scratch_url, secret_key=TEST_SECRET, data_dir=tmp_path), engine=engine)
    locks = []
    with session_scope(engine) as session:
        job_id = start_job(session, ctx, kind="orders", fmt="csv", source="test", actor="test", liveness=locks).id
    assert len(locks) == 1
    with session_scope(engine) as session:
        assert get_job(session, job_id, ctx).status == "running"  # its importer is alive
    holder = locks[0]
    if holder._connection is not None:  # PostgreSQL: the session that holds the advisory lock goes away
        holder._connection.invalidate()
    else:  # SQLite: the file descriptor holding the flock closes
        holder._handle.close()
    deadline = time.monotonic() + 10
    status = "running"
    while status == "running" and time.monotonic() < deadline:
        with session_scope(engine) as session:
            status = get_job(session, job_id, ctx).status
        time.sleep(0.05)
    assert status == "interrupted"
    with session_scope(engine) as session:
        job = get_job(session, job_id, ctx)
        assert "import the same file again" in job.message and job.finished_at is not None
    engine.dispose()
