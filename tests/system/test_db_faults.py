"""Database faults: the connection of a running job is terminated from another session (pg_terminate_backend).
The job fails cleanly — or its bookkeeping does and says so —, nothing half-written stays, and a rerun finishes.

PostgreSQL only (a SQLite file has no server connection to drop), so both suites run it on a scratch PostgreSQL
database; without a reachable server it fails saying so."""

from __future__ import annotations

import threading
import time

import psycopg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from kit.jobs import run_job
from tests.support.shops import generated_shop, scalar
from wiring.app import job_registry


def _terminate_first_busy_backend(plain: str, name: str, stop: threading.Event, killed: list[int]) -> None:
    """Poll the database's sessions; terminate the first one 150 ms into a transaction — a step's work, not the
    run's short bookkeeping (killing a connection the pool already got back would change nothing)."""
    with psycopg.connect(f"{plain}/postgres", autocommit=True) as watcher:
        while not stop.is_set() and not killed:
            rows = watcher.execute(
                "SELECT pid, left(query, 80) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                "AND state IN ('active', 'idle in transaction') AND xact_start < clock_timestamp() - interval '150 ms' "
                # The run's own records (a read of its finished steps left idle in its transaction, say) are not a
                # step's work: killing one of those proves nothing about the step.
                "AND query NOT LIKE '%%job_step%%' AND query NOT LIKE '%%job_run%%'",
                (name,)).fetchall()
            for pid, query in rows:
                if watcher.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]:
                    killed.append((pid, query))
                    return
            time.sleep(0.005)


def test_a_job_whose_connection_is_terminated_fails_cleanly_and_a_rerun_finishes(postgres_url, tmp_path):
    url, plain, name = postgres_url
    ctx = generated_shop(url, tmp_path, customers=300)
    pipeline = job_registry(ctx.settings).get("pipeline")
    occurrence = pipeline.schedule.latest(ctx.clock.now())
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=_terminate_first_busy_backend, args=(plain, name, stop, killed))
    watcher.start()
    try:
        outcome = run_job(ctx, pipeline, occurrence, trigger="manual", options={"dispatch": "replay"})
        failed_cleanly = outcome.status == "failed"
        error = outcome.error or ""
    except DBAPIError as raised:  # the terminated connection was the run's own bookkeeping: it says so and stops
        failed_cleanly, error = True, str(raised)
    finally:
        stop.set()
        watcher.join()
    assert killed, "the watcher found no busy session to terminate"
    print(f"terminated {killed}; run error: {error[:200]}")
    assert failed_cleanly and error, f"the run must fail (or raise) after {killed}, not report success"
    # Nothing half-written: a step's work and its "succeeded" row commit together.
    ctx.engine.dispose()  # the pool may hold the terminated connection
    with ctx.engine.connect() as connection:
        finished = {row[0] for row in connection.execute(text(
            "SELECT s.step FROM job_step s WHERE s.status = 'succeeded'"))}
    if "segment" not in finished:
        assert scalar(ctx, "SELECT count(*) FROM customer_segment") == 0
    if "plan" not in finished:
        assert scalar(ctx, "SELECT count(*) FROM message") == 0
    again = run_job(ctx, pipeline, occurrence, trigger="manual", options={"dispatch": "replay"})
    assert again.status == "succeeded", again.error
    assert scalar(ctx, "SELECT count(*) FROM customer_segment") == scalar(ctx, "SELECT count(*) FROM customer")
    assert scalar(ctx, "SELECT count(*) FROM (SELECT campaign_id, occurrence, customer_id, channel, count(*) "
                       "FROM message GROUP BY 1, 2, 3, 4 HAVING count(*) > 1) AS twice") == 0
