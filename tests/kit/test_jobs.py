"""Job runs: recorded per occurrence and step, failed steps retried alone, catch-up once, one run at a time; the
/jobs API and /health."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from campaigns.models import Campaign, Message, WebhookReceipt
from churn.models import ChurnPrediction
from crm import audit
from crm.auth import create_key
from crm.models import Event, ImportJob, Role
from kit.clock import FixedClock
from kit.context import Context
from kit.db import make_engine, session_scope
from kit.jobs import JobBusy, JobDefinition, JobRegistry, Step, run_due, run_job
from kit.locks import try_lock
from kit.migrations import upgrade_to_head
from kit.models import JobRun, SchedulerInstance
from kit.schedules import JobSchedule
from tests.conftest import cli_env
from tests.support.shops import scratch_context
from wiring.app import create_app, job_registry

DAILY = JobSchedule("daily", "Asia/Shanghai", 2, 0)


class Recorder:
    """Steps for exercising the runner: each call is remembered; `fail_next` makes the second step raise once."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail_next = False

    def first(self, session, ctx, run):
        self.calls.append(("first", run.occurrence.key))
        audit.record(session, actor="test", action="step.first", entity="job", entity_id=run.occurrence.key,
                     at=ctx.clock.now())
        return {"seen": len(self.calls)}

    def second(self, session, ctx, run):
        self.calls.append(("second", run.occurrence.key))
        # Written, then (when told to) failing: the write must roll back with the step.
        audit.record(session, actor="test", action="step.second", entity="job", entity_id=run.occurrence.key,
                     at=ctx.clock.now())
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("provider unreachable")
        return {"ok": True}

    def job(self, catch_up: str = "latest") -> JobDefinition:
        return JobDefinition("probe", "test job", DAILY, (Step("first", self.first), Step("second", self.second)),
                             catch_up=catch_up)


def audit_actions(ctx: Context) -> list[str]:
    with ctx.engine.connect() as connection:
        return [r[0] for r in connection.execute(text(
            "SELECT action FROM audit_log WHERE action LIKE 'step.%' ORDER BY id"))]


def test_a_failed_step_is_recorded_rolled_back_and_retried_alone(scratch_url, tmp_path):
    ctx = scratch_context(scratch_url, tmp_path, datetime(2026, 11, 1, 19, tzinfo=UTC))
    recorder = Recorder()
    recorder.fail_next = True
    job = recorder.job()
    occurrence = DAILY.of_key("2026-11-02")
    failed = run_job(ctx, job, occurrence, trigger="schedule")
    assert failed.status == "failed" and failed.error == "second: RuntimeError: provider unreachable"
    assert [s["status"] for s in failed.steps] == ["succeeded", "failed"]
    assert audit_actions(ctx) == ["step.first"]  # the failed step's write went with it

    retried = run_job(ctx, job, occurrence, trigger="manual")
    assert [s["status"] for s in retried.steps] == ["skipped", "succeeded"] and retried.status == "succeeded"
    assert recorder.calls == [("first", "2026-11-02"), ("second", "2026-11-02"), ("second", "2026-11-02")]
    assert audit_actions(ctx) == ["step.first", "step.second"]
    with ctx.engine.connect() as connection:
        run = connection.execute(text("SELECT status, attempts, trigger, error FROM job_run")).one()
        steps = connection.execute(text("SELECT step, status, counts FROM job_step ORDER BY position")).all()
    assert tuple(run) == ("succeeded", 2, "manual", None)
    assert [(s.step, s.status) for s in steps] == [("first", "succeeded"), ("second", "succeeded")]


def test_downtime_across_two_scheduled_runs_is_caught_up_once_or_each_per_policy(scratch_url, tmp_path):
    ctx = scratch_context(scratch_url, tmp_path, datetime(2026, 11, 1, 19, tzinfo=UTC))  # 03:00 on the 2nd
    recorder = Recorder()
    assert [o.occurrence for o in run_due(ctx, recorder.job())] == ["2026-11-02"]
    assert run_due(ctx, recorder.job()) == []  # the same firing again (a second scheduler tick) does nothing
    ctx.clock = FixedClock(datetime(2026, 11, 4, 19, tzinfo=UTC))  # down through the 3rd and 4th; now the 5th
    caught = run_due(ctx, recorder.job("latest"))
    assert [(o.occurrence, o.status) for o in caught] == [("2026-11-05", "succeeded")]
    ctx.clock = FixedClock(datetime(2026, 11, 7, 19, tzinfo=UTC))  # down through the 6th and 7th; now the 8th
    every = run_due(ctx, recorder.job("all"))
    assert [o.occurrence for o in every] == ["2026-11-06", "2026-11-07", "2026-11-08"]
    with ctx.engine.connect() as connection:
        triggers = dict(connection.execute(text("SELECT occurrence, trigger FROM job_run")).all())
    assert triggers == {"2026-11-02": "schedule", "2026-11-05": "schedule", "2026-11-06": "catch_up",
                        "2026-11-07": "catch_up", "2026-11-08": "schedule"}
    assert [c for c in recorder.calls if c[0] == "first"] == [("first", k) for k in sorted(triggers)]


def test_one_run_of_a_job_at_a_time(scratch_url, tmp_path):
    ctx = scratch_context(scratch_url, tmp_path, datetime(2026, 11, 1, 19, tzinfo=UTC))
    recorder = Recorder()
    held = try_lock(ctx.engine, ctx.settings.data_dir, "job:probe")
    assert held is not None and held.alive()
    with held, pytest.raises(JobBusy, match="running already"):
        run_job(ctx, recorder.job(), DAILY.of_key("2026-11-02"))
    assert recorder.calls == []
    assert run_job(ctx, recorder.job(), DAILY.of_key("2026-11-02")).status == "succeeded"  # released


def test_jobs_api_lists_runs_and_starts_a_manual_run(scratch_url, tmp_path):
    ctx = scratch_context(scratch_url, tmp_path, datetime(2026, 11, 1, 19, tzinfo=UTC))
    recorder = Recorder()
    app = create_app(ctx)
    app.state.jobs = JobRegistry([recorder.job(), *app.state.jobs])
    with session_scope(ctx.engine) as session:
        keys = {role: create_key(session, ctx, name=f"k-{role.value}", role=role, actor="test").secret
                for role in (Role.admin, Role.marketer, Role.scheduler)}
    client = TestClient(app, raise_server_exceptions=False)

    def call(method: str, url: str, role: Role):
        return client.request(method, url, headers={"Authorization": f"Bearer {keys[role]}"})

    listed = {j["name"]: j for j in call("GET", "/v1/jobs", Role.marketer).json()["items"]}
    assert {"pipeline", "retrain", "tags", "cleanup", "probe"} <= set(listed)
    assert listed["pipeline"]["schedule"] == "daily at 02:00 Asia/Shanghai"
    assert listed["pipeline"]["next_run_at"].startswith("2026-11-02T18:00")  # 02:00 on the 3rd in Shanghai
    assert listed["pipeline"]["steps"] == ["segment", "score", "uplift", "plan", "dispatch", "attribute"]
    assert call("POST", "/v1/jobs/probe/run", Role.marketer).status_code == 403

    started = call("POST", "/v1/jobs/probe/run", Role.scheduler)
    assert started.status_code == 202 and started.json()["occurrence"] == "2026-11-02"
    runs = call("GET", "/v1/jobs/runs?job=probe", Role.admin).json()["items"]
    assert [(r["occurrence"], r["status"], r["trigger"]) for r in runs] == [("2026-11-02", "succeeded", "manual")]
    assert [s["step"] for s in runs[0]["steps"]] == ["first", "second"]
    assert call("GET", "/v1/jobs", Role.admin).json()["items"][0]["last_run"]["status"] == "succeeded"

    bad = call("POST", "/v1/jobs/probe/run?occurrence=yesterday", Role.admin)
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
    assert "occurrence" in bad.text
    future = call("POST", "/v1/jobs/probe/run?occurrence=2026-12-01", Role.admin)
    assert future.status_code == 422 and "future" in future.text
    assert call("POST", "/v1/jobs/nothing/run", Role.admin).status_code == 404
    with try_lock(ctx.engine, ctx.settings.data_dir, "job:probe"):
        busy = call("POST", "/v1/jobs/probe/run", Role.admin)
    assert busy.status_code == 409 and "running already" in busy.text


def test_readiness_needs_a_live_scheduler_leader_and_reports_it(client, session, ctx):
    without_leader = client.get("/v1/health/ready")
    assert without_leader.status_code == 503 and without_leader.json()["status"] == "degraded"
    assert without_leader.json()["scheduler"] == {
        "running": False, "leader": None, "leader_since": None, "heartbeat_at": None, "standbys": []}
    assert client.get("/v1/health/live").json() == {"status": "ok"}  # the process itself is fine
    now = ctx.clock.now()
    session.add(SchedulerInstance(instance="host:1", role="leader", started_at=now, beat_at=now, leader_since=now))
    session.add(SchedulerInstance(instance="host:2", role="standby", started_at=now, beat_at=now))
    session.add(SchedulerInstance(instance="host:3", role="leader", started_at=now - timedelta(hours=1),
                                  beat_at=now - timedelta(minutes=5)))  # a dead leader's stale heartbeat
    session.flush()
    ready = client.get("/v1/health/ready")
    scheduler = ready.json()["scheduler"]
    assert ready.status_code == 200 and ready.json()["status"] == "ok"
    assert scheduler["running"] and scheduler["leader"] == "host:1" and scheduler["standbys"] == ["host:2"]


def test_pipeline_cli_refuses_bad_dates_in_one_line(scratch_url, tmp_path):
    upgrade_to_head(make_engine(scratch_url))
    for date, message in (("2026-13-01", "--date"), ("2999-01-01", "in the future")):
        result = subprocess.run([sys.executable, "-m", "wiring.cli", "pipeline", "run", "--date", date],
                                env=cli_env(scratch_url, tmp_path), capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cleanup_removes_only_what_is_past_its_retention(scratch_url, tmp_path):
    now = datetime(2026, 11, 1, 21, tzinfo=UTC)  # 05:00 on the 2nd in Shanghai, after the 04:30 clean-up
    ctx = scratch_context(scratch_url, tmp_path, now, event_retention_days=365, job_run_retention_days=30,
                          webhook_receipt_retention_days=10, churn_quality_retention_days=365)
    old, recent = now - timedelta(days=400), now - timedelta(days=5)
    with session_scope(ctx.engine) as session:
        for key, at in (("old", old), ("recent", recent)):
            session.add(Event(external_id=f"e-{key}", customer_id=1, occurred_at=at, type="visit"))
            session.add(WebhookReceipt(provider="twilio", event_id=f"w-{key}", received_at=at))
            session.add(ChurnPrediction(scored_on=at, customer_id=1, model_id=1, probability=0.5))
            session.add(JobRun(job="probe", occurrence=key, status="succeeded", trigger="schedule", started_at=at,
                               finished_at=at))
        session.add(Campaign(name="c", status="active", version=1, priority=0, spec={}, created_at=old,
                             created_by="t", updated_at=old, updated_by="t"))
        # An import whose process died: `running`, nobody holding its liveness lock.
        session.add(ImportJob(kind="orders", source="dead.csv", format="csv", status="running", created_by="t",
                              started_at=recent, batches_committed=2, rows_total=1000))
        session.flush()
        for key, expires in (("lapsed", now - timedelta(hours=1)), ("open", now + timedelta(hours=1))):
            session.add(Message(campaign_id=1, occurrence=key, customer_id=1, channel="sms", status="planned",
                                priority=0, transactional=False, send_at=now - timedelta(days=1), expires_at=expires,
                                template="t", locale="en-US", created_at=old, updated_at=old, attempts=0,
                                discount_value=0.0))
    cleanup = job_registry(ctx.settings).get("cleanup")
    [outcome] = run_due(ctx, cleanup)
    assert outcome.status == "succeeded" and outcome.occurrence == "2026-11-02"
    counts = {s["step"]: s["counts"] for s in outcome.steps}
    assert counts == {"core-data": {"events_deleted": 1, "job_runs_deleted": 1, "imports_marked_interrupted": 1,
                                    "idempotency_keys_deleted": 0, "state_changes_deleted": 0},
                      "campaign-data": {"messages_expired": 1, "webhook_receipts_deleted": 1,
                                        "churn_predictions_deleted": 1}}
    with ctx.engine.connect() as connection:
        assert [r[0] for r in connection.execute(text("SELECT external_id FROM event"))] == ["e-recent"]
        assert [r[0] for r in connection.execute(text("SELECT event_id FROM webhook_receipt"))] == ["w-recent"]
        statuses = dict(connection.execute(text("SELECT occurrence, status FROM message")).all())
        runs = {r[0] for r in connection.execute(text("SELECT occurrence FROM job_run WHERE job = 'probe'"))}
        kept = [r[0] for r in connection.execute(text("SELECT probability FROM churn_prediction"))]
    assert statuses == {"lapsed": "expired", "open": "planned"} and runs == {"recent"} and len(kept) == 1


def test_a_run_that_died_mid_step_resumes_at_that_step(scratch_url, tmp_path, caplog):
    ctx = scratch_context(scratch_url, tmp_path, datetime(2026, 11, 1, 19, tzinfo=UTC))
    recorder = Recorder()
    occurrence = DAILY.of_key("2026-11-02")

    def dies(session, ctx, run):
        raise SystemExit("killed")  # not an Exception: nothing records the failure, as with a SIGKILL

    dying = JobDefinition("probe", "test job", DAILY, (Step("first", recorder.first), Step("second", dies)))
    with pytest.raises(SystemExit):
        run_job(ctx, dying, occurrence)
    with ctx.engine.connect() as connection:
        assert connection.execute(text("SELECT status FROM job_run")).scalar_one() == "running"
        assert dict(connection.execute(text("SELECT step, status FROM job_step")).all()) == {
            "first": "succeeded", "second": "running"}
    resumed = run_job(ctx, recorder.job(), occurrence, trigger="schedule")
    assert [s["status"] for s in resumed.steps] == ["skipped", "succeeded"] and resumed.status == "succeeded"
    assert "was interrupted" in caplog.text
