"""Two real `crm scheduler` processes: exactly one leads; after SIGKILL the standby takes over in time; SIGTERM
stops cleanly; a job's occurrence runs once across the handover."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from sqlalchemy import text

from kit.db import make_engine
from kit.migrations import upgrade_to_head
from tests.conftest import cli_env

TAKEOVER_SECONDS = 3.0


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def kill_all(*processes: subprocess.Popen | None) -> None:
    """Whatever a failed test left running."""
    for process in processes:
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def test_one_leader_takeover_after_sigkill_and_one_run_per_occurrence(scratch_url, tmp_path):
    engine = make_engine(scratch_url)
    upgrade_to_head(engine)
    env = cli_env(scratch_url, tmp_path) | {
        "CRM_SCHEDULER_JOBS": json.dumps(["cleanup"]), "CRM_SCHEDULER_HEARTBEAT_SECONDS": "0.3",
        "CRM_SCHEDULER_TAKEOVER_SECONDS": str(TAKEOVER_SECONDS)}

    def start(name: str) -> subprocess.Popen:
        log = (tmp_path / f"{name}.log").open("w")
        return subprocess.Popen([sys.executable, "-m", "wiring.cli", "scheduler"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)

    def role(process: subprocess.Popen) -> str | None:
        with engine.connect() as connection:
            return connection.execute(text("SELECT role FROM scheduler_instance WHERE instance = :i"),
                                      {"i": f"{socket.gethostname()}:{process.pid}"}).scalar_one_or_none()

    def cleanup_runs() -> list[tuple]:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.execute(text(
                "SELECT occurrence, status, attempts FROM job_run WHERE job = 'cleanup'"))]

    first = start("first")
    second = None
    try:
        wait_for(lambda: role(first) == "leader", 30, "the first scheduler to lead")
        second = start("second")
        wait_for(lambda: role(second) == "standby", 30, "the second scheduler to stand by")
        runs = wait_for(lambda: [r for r in cleanup_runs() if r[1] == "succeeded"], 30, "the leader's catch-up run")
        time.sleep(1.0)  # several heartbeats: still one leader
        assert (role(first), role(second)) == ("leader", "standby")

        first.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: role(second) == "leader", TAKEOVER_SECONDS + 5, "the standby to take over")
        took = time.monotonic() - killed
        assert took <= TAKEOVER_SECONDS + 1.0, f"takeover took {took:.1f}s"
        time.sleep(1.5)  # the new leader's own catch-up has run by now: it found the occurrence done
        assert cleanup_runs() == runs and len(runs) == 1 and runs[0][2] == 1

        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0, (tmp_path / "second.log").read_text()
        assert role(second) is None  # a clean stop removes its heartbeat row
        assert "is the scheduler leader" in (tmp_path / "second.log").read_text()
    finally:
        kill_all(first, second)


def test_a_leader_killed_mid_pipeline_is_replaced_and_the_pipeline_resumes_where_it_died(scratch_url, tmp_path):
    """The real daily pipeline under `crm scheduler` on a generated shop: SIGKILL the leader after its segment step,
    the standby takes over, reruns the occurrence from the step that died, and nothing is planned or sent twice."""
    from datetime import UTC, datetime

    from tests.support.shops import generated_shop

    ctx = generated_shop(scratch_url, tmp_path, customers=2500, now=datetime.now(UTC))  # the scheduler's clock is real
    engine = ctx.engine
    env = cli_env(scratch_url, tmp_path) | {
        "CRM_SCHEDULER_JOBS": json.dumps(["pipeline"]), "CRM_SCHEDULER_HEARTBEAT_SECONDS": "0.3",
        "CRM_SCHEDULER_TAKEOVER_SECONDS": str(TAKEOVER_SECONDS)}

    def start(name: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "wiring.cli", "scheduler"], env=env,
                                stdout=(tmp_path / f"{name}.log").open("w"), stderr=subprocess.STDOUT)

    def query(sql: str) -> list[tuple]:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.execute(text(sql))]

    first = start("first")
    second = None
    try:
        wait_for(lambda: query("SELECT 1 FROM job_step WHERE step = 'segment' AND status = 'succeeded'"), 90,
                 "the first leader to finish the segment step")
        assert query("SELECT status FROM job_run WHERE job = 'pipeline'") == [("running",)], "finished too soon"
        first.send_signal(signal.SIGKILL)
        first.wait()
        segment_done_at = query("SELECT finished_at FROM job_step WHERE step = 'segment'")
        second = start("second")
        wait_for(lambda: query("SELECT 1 FROM job_run WHERE job = 'pipeline' AND status = 'succeeded'"), 180,
                 "the new leader to finish the pipeline")
        [(attempts,)] = query("SELECT attempts FROM job_run WHERE job = 'pipeline'")
        assert attempts == 2
        steps = dict(query("SELECT step, status FROM job_step"))
        assert steps == {s: "succeeded" for s in ("segment", "score", "uplift", "plan", "dispatch", "attribute")}
        assert query("SELECT finished_at FROM job_step WHERE step = 'segment'") == segment_done_at  # not rerun
        assert query("SELECT count(*) FROM segment_run") == [(1,)]
        assert query("SELECT count(*) FROM message")[0][0] > 0
        assert query("SELECT campaign_id, occurrence, customer_id, channel FROM message "
                     "GROUP BY campaign_id, occurrence, customer_id, channel HAVING count(*) > 1") == []
        assert "was interrupted" in (tmp_path / "second.log").read_text()
    finally:
        kill_all(first, second)
