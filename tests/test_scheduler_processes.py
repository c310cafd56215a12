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

from crm.db import make_engine
from crm.migrations import upgrade_to_head
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


def test_one_leader_takeover_after_sigkill_and_one_run_per_occurrence(scratch_url, tmp_path):
    engine = make_engine(scratch_url)
    upgrade_to_head(engine)
    env = cli_env(scratch_url, tmp_path) | {
        "CRM_SCHEDULER_JOBS": json.dumps(["cleanup"]), "CRM_SCHEDULER_HEARTBEAT_SECONDS": "0.3",
        "CRM_SCHEDULER_TAKEOVER_SECONDS": str(TAKEOVER_SECONDS)}

    def start(name: str) -> subprocess.Popen:
        log = (tmp_path / f"{name}.log").open("w")
        return subprocess.Popen([sys.executable, "-m", "crm.cli", "scheduler"], env=env, stdout=log,
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
        for process in (first, second):
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
