"""Crash chaos: the API, the scheduler and the dispatcher run as real processes on one database while a client
imports orders and reads profiles through the API; random SIGKILLs (and some SIGTERMs) hit them during the daily
pipeline and each is restarted at once. Afterwards the invariants are checked against the database, the fake
providers' log and a reference run of the same pipeline without crashes.

Used by tests/system/test_chaos.py (a bounded run in CI) and bench/bench_chaos.py (many more signals, bigger shop).
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import text

from campaigns.service import create_campaign, set_status
from crm.auth import create_key
from crm.ingest import mark_interrupted_imports
from crm.models import Role
from kit.db import make_engine, session_scope, writer_engine
from tests.conftest import cli_env, pg_admin
from tests.support.dispatch_support import fake_env, fake_settings

CRM = [sys.executable, "-m", "wiring.cli"]
PIPELINE_STEPS = ("segment", "score", "uplift", "plan", "dispatch", "attribute")
IMPORT_BATCH = 300  # orders per client upload
CLIENT_CUSTOMERS = 10  # the client's orders go to these customers, left out of the plan comparison


@dataclass
class ChaosOptions:
    """How hard to shake: signals sent while the pipeline runs, the pause between them, the SIGTERM share."""

    customers: int = 1500
    signals: int = 12
    pause: tuple[float, float] = (0.5, 2.0)
    sigterm_share: float = 0.25
    seed: int = 1
    settle_seconds: float = 240.0


@dataclass
class ChaosReport:
    """What happened (each signal, the client's requests) and every broken invariant found afterwards."""

    signals: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-ready."""
        return {"signals": self.signals, "problems": self.problems, "figures": self.figures}


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Service:
    """One `crm` process that the chaos loop kills and restarts; its output goes to a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, ready_line: str) -> None:
        self.name, self.argv, self.env, self.ready_line = name, argv, env, ready_line
        self.log = log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.starts = 0

    def start(self) -> None:
        """Start (again); output appended to the log."""
        with self.log.open("a") as out:
            out.write(f"--- start {self.starts + 1} at {datetime.now(UTC).isoformat()}\n")
            out.flush()
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.started_at = time.time()
        self.starts += 1

    def ready(self) -> bool:
        """The current process has said it is up (its signal handlers are installed by then)."""
        return self.ready_line in self.log.read_text().rsplit("--- start", 1)[-1]

    @property
    def instance(self) -> str:
        """The name the process writes on rows it holds (host:pid)."""
        return f"{socket.gethostname()}:{self.process.pid}"

    def stop(self, signum: int, timeout: float) -> tuple[int | None, float]:
        """Send a signal and wait for the exit: (exit code or None if it outlived the timeout, seconds)."""
        began = time.monotonic()
        self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            code = None
        return code, round(time.monotonic() - began, 2)

    def kill_quietly(self) -> None:
        """Whatever is left when the harness ends."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Client(threading.Thread):
    """Drives the API as users would: order uploads (retried until accepted) and profile lookups."""

    def __init__(self, base_url: str, key: str, customers: list[str], client_customers: list[str],
                 rng: random.Random, ordered_at: datetime) -> None:
        super().__init__(daemon=True)
        self.base_url, self.key, self.customers = base_url, key, customers
        self.client_customers, self.rng, self.ordered_at = client_customers, rng, ordered_at
        self.stop_event = threading.Event()
        self.batches_wanted = 0
        self.accepted: dict[int, int] = {}  # batch -> import job id
        self.outcomes: Counter = Counter()

    def batch_csv(self, batch: int) -> bytes:
        """One upload: IMPORT_BATCH orders with ids chaos-<batch>-<n>, the same bytes on every retry."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["external_id", "customer_external_id", "ordered_at", "amount_paid", "discount",
                         "cost_of_goods", "coupon_code"])
        for n in range(IMPORT_BATCH):
            writer.writerow([f"chaos-{batch}-{n}", self.client_customers[n % len(self.client_customers)],
                             self.ordered_at.strftime("%Y-%m-%dT%H:%M:%SZ"), "25.0", "0.0", "10.0", ""])
        return out.getvalue().encode()

    def run(self) -> None:
        """Until stopped: upload the next unaccepted batch or read a profile, counting what the API answered."""
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=30.0) as http:
            while not self.stop_event.is_set() or len(self.accepted) < self.batches_wanted:
                pending = [b for b in range(self.batches_wanted) if b not in self.accepted]
                try:
                    if pending and (self.stop_event.is_set() or self.rng.random() < 0.3):
                        batch = pending[0]
                        answer = http.post("/v1/imports/orders", content=self.batch_csv(batch),
                                           headers={"Content-Type": "text/csv", "X-Filename": f"chaos-{batch}.csv"})
                        if answer.status_code == 201:
                            self.accepted[batch] = answer.json()["id"]
                    else:
                        answer = http.get(f"/v1/customers/{self.rng.choice(self.customers)}/profile")
                    self.outcomes[f"http_{answer.status_code}"] += 1
                except httpx.TransportError:  # the API is down (killed, restarting): try again shortly
                    self.outcomes["connection_error"] += 1
                    time.sleep(0.2)

    def want_batches(self, count: int) -> None:
        """Ask for more uploads."""
        self.batches_wanted = max(self.batches_wanted, count)


def add_chaos_campaign(ctx) -> None:
    """A daily campaign for every tier, SMS first then email, due from the start of the customers' day, so the
    dispatcher has work while it is being killed."""
    with session_scope(ctx.engine) as session:
        campaign = create_campaign(session, ctx, {
            "name": "Chaos daily", "audience": {"tiers": ["VIP", "potential", "regular", "lost"]},
            "channels": [{"channel": "sms", "template": "at_risk_care"},
                         {"channel": "email", "template": "at_risk_care"}],
            "delivery": "first_eligible", "schedule": {"kind": "daily", "local_hour": 0},
            "holdout_share": 0.1, "priority": 90}, "chaos")
        set_status(session, ctx, campaign.id, "active", "chaos")


def copy_database(url: str, suffix: str) -> str:
    """A copy of the database (PostgreSQL template copy, or the SQLite file), for the reference run."""
    if url.startswith("sqlite"):
        import sqlite3

        source = Path(url.removeprefix("sqlite:///"))
        target = source.with_name(f"{source.stem}-{suffix}{source.suffix}")
        # The backup API copies what is committed, including pages still in the write-ahead log.
        with closing(sqlite3.connect(source)) as origin, closing(sqlite3.connect(target)) as copy:
            origin.backup(copy)
        return f"sqlite:///{target}"
    server, name = url.rsplit("/", 1)
    target = f"{name}_{suffix}"
    with pg_admin(server) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{target}"')
        admin.execute(f'CREATE DATABASE "{target}" TEMPLATE "{name}"')
    return f"{server}/{target}"


def drop_database(url: str) -> None:
    """Remove a copy made by copy_database."""
    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
        return
    server, name = url.rsplit("/", 1)
    with pg_admin(server) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_until(condition, timeout: float, interval: float = 0.2):
    """The condition's first truthy value, or None after the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return None


class Harness:
    """One chaos run on a scratch database (a generated shop is built in it)."""

    def __init__(self, url: str, workdir: Path, fake_url: str, options: ChaosOptions) -> None:
        from tests.support.shops import generated_shop

        self.url, self.workdir, self.fake_url, self.options = url, workdir, fake_url, options
        self.rng = random.Random(options.seed)
        self.report = ChaosReport()
        started = time.perf_counter()
        self.ctx = generated_shop(url, workdir, customers=options.customers, now=datetime.now(UTC))
        add_chaos_campaign(self.ctx)
        with session_scope(self.ctx.engine) as session:
            self.key = create_key(session, self.ctx, name="chaos client", role=Role.admin, actor="chaos").secret
        self.customers = [r[0] for r in self.query("SELECT external_id FROM customer ORDER BY id")]
        self.client_customers = self.customers[:CLIENT_CUSTOMERS]
        self.report.figures["shop_seconds"] = round(time.perf_counter() - started, 1)
        self.ctx.engine.dispose()
        self.reference_url = copy_database(url, "ref")  # before anything runs: the same shop, to run calmly later
        settings = fake_settings(workdir, fake_url, url, dispatch_backoff_seconds=1.0)
        self.env = cli_env(url, workdir) | fake_env(settings) | {
            "CRM_QUIET_HOURS_CHANNELS": "[]",  # the run happens whenever CI does: nothing deferred to the morning
            "CRM_SCHEDULER_JOBS": json.dumps(["pipeline"]), "CRM_SCHEDULER_HEARTBEAT_SECONDS": "0.3",
            "CRM_SCHEDULER_TAKEOVER_SECONDS": "2", "CRM_DISPATCH_LEASE_SECONDS": "3",
            "CRM_DISPATCH_POLL_SECONDS": "0.3", "CRM_DISPATCH_BATCH_SIZE": "25"}
        self.port = free_port()
        logs = workdir / "chaos-logs"
        logs.mkdir(exist_ok=True)
        self.services = {
            "api": Service("api", [*CRM, "serve", "--port", str(self.port)], self.env, logs,
                           "Application startup complete"),
            "scheduler": Service("scheduler", [*CRM, "scheduler"], self.env, logs, "starting (leader or standby"),
            "dispatcher": Service("dispatcher", [*CRM, "dispatch", "run"], self.env, logs, "running (SIGTERM"),
        }

    def query(self, sql: str, **params) -> list[tuple]:
        """Rows of a read on the chaos database."""
        with self.ctx.engine.connect() as connection:
            return [tuple(r) for r in connection.execute(text(sql), params)]

    def api_ready(self) -> bool:
        """The API process answers /v1/health/live."""
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/v1/health/live", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def pipeline(self) -> tuple | None:
        """(status, instance, occurrence) of the pipeline's run, if it has started."""
        rows = self.query("SELECT status, instance, occurrence FROM job_run WHERE job = 'pipeline'")
        return rows[0] if rows else None

    def running_step(self) -> str | None:
        """The pipeline step running now."""
        rows = self.query("SELECT step FROM job_step WHERE status = 'running'")
        return rows[0][0] if rows else None

    def leader_in_step(self) -> bool:
        """The scheduler process running now leads the pipeline and is inside one of its steps."""
        scheduler = self.services["scheduler"]
        run = self.pipeline()
        return bool(run and run[0] == "running" and run[1] == scheduler.instance and scheduler.ready()
                    and self.running_step())

    # ------------------------------------------------------------ the run

    def run(self) -> ChaosReport:
        """Start everything, shake, let it settle, stop gracefully, check."""
        options = self.options
        client = None
        try:
            for service in self.services.values():
                service.start()
            if not wait_until(self.api_ready, 60):
                self.report.problems.append("the API did not come up")
                return self.report
            # The client's orders are dated two days ahead, after the as-of moment of every step of today's
            # pipeline (the first churn model trains up to the occurrence's midnight): they must not change what the
            # calm reference run, which never sees them, plans for everyone else.
            client = Client(f"http://127.0.0.1:{self.port}", self.key, self.customers, self.client_customers,
                            self.rng, datetime.now(UTC) + timedelta(days=2))
            client.want_batches(4)
            client.start()
            if not wait_until(self.pipeline, 60):
                self.report.problems.append("the scheduler never started the pipeline")
                return self.report
            shaking = time.perf_counter()
            # The first signal kills the leading scheduler in the middle of a step, whatever the machine's speed (a
            # fast machine finishes a small shop's pipeline before a random pause is over).
            if not wait_until(self.leader_in_step, 60, interval=0.02):
                self.report.problems.append(f"no pipeline step seen running under the scheduler: {self.pipeline()}")
                return self.report
            self.strike("scheduler", signal.SIGKILL)
            targets: list[str] = []
            for index in range(1, options.signals):
                if not targets:  # rounds in random order: each service is hit every three signals
                    targets = self.rng.sample(sorted(self.services), len(self.services))
                time.sleep(self.rng.uniform(*options.pause))
                client.want_batches(4 + index)
                self.strike(targets.pop())
            self.report.figures["shaking_seconds"] = round(time.perf_counter() - shaking, 1)
            self.settle(client)
            for name in sorted(self.services):  # a last, graceful stop of each
                self.strike(name, signal.SIGTERM, restart=False)
        finally:
            if client is not None:
                client.stop_event.set()
            for service in self.services.values():
                service.kill_quietly()
        self.report.figures["client"] = dict(client.outcomes) if client else {}
        self.report.figures["uploads_accepted"] = len(client.accepted) if client else 0
        self.report.figures["restarts"] = {n: s.starts - 1 for n, s in self.services.items()}
        self.check(client)
        return self.report

    def strike(self, name: str, signum: int | None = None, restart: bool = True) -> None:
        """Signal one service (SIGKILL, or SIGTERM at the configured share), check a graceful stop, restart."""
        service = self.services[name]
        if service.process.poll() is not None:  # nobody signalled it: a crash of its own is a finding
            self.report.problems.append(f"{name} had exited on its own with {service.process.returncode}: see "
                                        f"{service.log}")
        if signum is None:  # each service's first signal is a SIGKILL: the first round kills mid-pipeline for sure
            first = not any(r["target"] == name for r in self.report.signals)
            signum = (signal.SIGTERM if not first and self.rng.random() < self.options.sigterm_share
                      else signal.SIGKILL)
        if signum == signal.SIGTERM and not wait_until(service.ready, 90):  # a graceful stop needs its handler
            self.report.problems.append(f"{name} never said it was ready: see {service.log}")
        record = {"target": name, "signal": signal.Signals(signum).name, "at": datetime.now(UTC).isoformat(),
                  "pipeline_step": self.running_step(), "was_ready": service.ready(),
                  "uptime_seconds": round(time.time() - service.started_at, 2)}
        instance = service.instance
        run_before = self.pipeline()
        if name == "api" and signum == signal.SIGTERM:  # imports of earlier, killed servers are not in flight
            # SQLite: read-then-write beside busy writers must take the write lock up front (kit.db.writer_engine)
            with session_scope(writer_engine(self.ctx.engine)) as session:
                mark_interrupted_imports(session, self.ctx)
        jobs_before = {r[0] for r in self.query("SELECT id FROM import_job WHERE status = 'running'")}
        code, seconds = service.stop(signum, timeout=180.0 if signum == signal.SIGTERM else 10.0)
        record |= {"exit_code": code, "seconds_to_exit": seconds}
        if signum == signal.SIGTERM:
            self.check_graceful(name, instance, code, run_before, jobs_before, record)
        self.report.signals.append(record)
        if restart:
            service.start()

    def check_graceful(self, name: str, instance: str, code: int | None, run_before: tuple | None,
                       jobs_before: set[int], record: dict) -> None:
        """SIGTERM: exit 0, and what the process had in hand is finished or handed back."""
        if code != 0:
            self.report.problems.append(f"{name} exited {code} after SIGTERM ({record})")
        if name == "dispatcher":
            held = self.query("SELECT count(*) FROM message WHERE status = 'sending' AND worker = :w", w=instance)
            if held[0][0]:
                self.report.problems.append(f"the dispatcher left {held[0][0]} messages 'sending' after SIGTERM")
        after = self.pipeline()
        if name == "scheduler" and after and after[1] == instance:  # it ran the pipeline at some point
            if after[0] != "succeeded":
                self.report.problems.append(f"the scheduler stopped by SIGTERM left the pipeline {after[0]}")
            elif run_before and run_before[0] == "running":
                record["finished_running_pipeline"] = True
        if name == "api" and jobs_before:
            left = self.query("SELECT id, status FROM import_job WHERE status != 'completed'")
            unfinished = [r for r in left if r[0] in jobs_before]
            record["imports_in_flight"] = len(jobs_before)
            if unfinished:
                self.report.problems.append(f"imports in flight at the API's SIGTERM did not complete: {unfinished}")

    def settle(self, client: Client) -> None:
        """Let the pipeline finish, the client's uploads land and every due message be sent."""
        started = time.perf_counter()
        limit = self.options.settle_seconds
        if not wait_until(lambda: (self.pipeline() or ("",))[0] == "succeeded", limit):
            self.report.problems.append(f"the pipeline did not finish: {self.pipeline()}")
        client.stop_event.set()
        client.join(timeout=60)
        if client.is_alive():
            self.report.problems.append("the client's uploads were not all accepted")

        def drained() -> bool:
            return not self.query("SELECT 1 FROM message WHERE status = 'sending' OR (status = 'planned' "
                                  "AND send_at <= :now) OR (status = 'unknown' AND channel = 'sms') LIMIT 1",
                                  now=datetime.now(UTC))
        if not wait_until(drained, 90, interval=0.5):
            self.report.problems.append("due messages were still waiting: "
                                        f"{self.query('SELECT status, count(*) FROM message GROUP BY status')}")
        self.report.figures["settle_seconds"] = round(time.perf_counter() - started, 1)

    # ------------------------------------------------------------ the invariants

    def check(self, client: Client | None) -> None:
        """Everything that must hold however the processes died."""
        problems = self.report.problems
        run = self.query("SELECT id, status, attempts, occurrence FROM job_run WHERE job = 'pipeline'")
        if len(run) != 1 or run[0][1] != "succeeded":
            problems.append(f"pipeline runs: {run}")
            return
        run_id, _, attempts, occurrence = run[0]
        self.report.figures["pipeline_attempts"] = attempts
        steps = self.query("SELECT step, status FROM job_step WHERE run_id = :r", r=run_id)
        if sorted(steps) != sorted((s, "succeeded") for s in PIPELINE_STEPS):
            problems.append(f"pipeline steps: {steps}")
        segment_runs = self.query("SELECT count(*), count(finished_at) FROM segment_run")[0]
        if segment_runs != (1, 1):
            problems.append(f"segment runs (all, finished): {segment_runs}")
        duplicates = self.query("SELECT campaign_id, occurrence, customer_id, channel, count(*) FROM message "
                                "GROUP BY campaign_id, occurrence, customer_id, channel HAVING count(*) > 1")
        if duplicates:
            problems.append(f"duplicate outbox rows: {duplicates[:5]}")
        self.check_sends()
        self.check_imports(client)
        self.check_plan_matches_reference(occurrence)

    def check_sends(self) -> None:
        """At most one provider acceptance per message, and the ledger agrees with the providers."""
        log = httpx.get(f"{self.fake_url}/_fake/log", timeout=10).json()["accepted"]
        ids = Counter(str(m["message_id"]) for m in log if m.get("message_id"))
        twice = [k for k, v in ids.items() if v > 1]
        if twice:
            self.report.problems.append(f"sent twice: {twice[:10]}")
        # Call tasks (the phone channel) are sent to agents, never to a provider: they have no acceptance to match.
        # The shop is generated at the real clock, so whether the default at-risk care calls (11:00 in the
        # customer's zone) fall due while the processes are shaken depends on the time of day the test runs.
        rows = self.query("SELECT id, status FROM message WHERE provider IS NULL OR provider <> 'tasks'")
        ours = {str(i) for i, _ in rows}
        accepted = set(ids) & ours  # the fake is shared within a test session
        sent = {str(i) for i, s in rows if s in ("sent", "delivered")}
        unknown = {str(i) for i, s in rows if s == "unknown"}
        if sent - accepted:
            self.report.problems.append(f"recorded sent, never accepted: {sorted(sent - accepted)[:10]}")
        if accepted - sent - unknown:
            self.report.problems.append(f"accepted, recorded otherwise: {sorted(accepted - sent - unknown)[:10]}")
        statuses = Counter(s for _, s in rows)
        self.report.figures["messages"] = dict(statuses)
        self.report.figures["accepted_by_providers"] = len(accepted)

    def check_imports(self, client: Client | None) -> None:
        """No import half-written: counters match the rows, dead jobs read `interrupted`, every upload whole."""
        with session_scope(writer_engine(self.ctx.engine)) as session:
            self.report.figures["imports_interrupted"] = mark_interrupted_imports(session, self.ctx)
        statuses = Counter(s for (s,) in self.query("SELECT status FROM import_job WHERE kind = 'orders'"))
        self.report.figures["import_jobs"] = dict(statuses)
        if statuses.get("running"):
            self.report.problems.append(f"imports left running: {statuses}")
        stored, counted = self.query("SELECT (SELECT count(*) FROM orders), (SELECT coalesce(sum(rows_inserted), 0) "
                                     "FROM import_job WHERE kind = 'orders')")[0]
        if stored != counted:
            self.report.problems.append(f"{stored} orders stored, import jobs account for {counted}")
        if client is not None:
            per_batch = Counter(r[0].split("-")[1] for r in self.query(
                "SELECT external_id FROM orders WHERE external_id LIKE 'chaos-%'"))
            broken = {b: n for b, n in per_batch.items() if n != IMPORT_BATCH}
            missing = [b for b in client.accepted if str(b) not in per_batch]
            if broken or missing:
                self.report.problems.append(f"uploads not whole: partial {broken}, missing {missing}")

    def check_plan_matches_reference(self, occurrence: str) -> None:
        """The same pipeline on a copy of the shop, run once without crashes, planned the same outbox."""
        env = self.env | {"CRM_DATABASE_URL": self.reference_url, "CRM_TWILIO_BASE_URL": "http://127.0.0.1:9",
                          "CRM_SENDGRID_BASE_URL": "http://127.0.0.1:9", "CRM_FCM_BASE_URL": "http://127.0.0.1:9"}
        env.pop("CRM_SCHEDULER_JOBS")
        # The reference plans only (no sends: its providers point nowhere); dispatch and attribute are not compared.
        started = time.perf_counter()
        out = subprocess.run([*CRM, "jobs", "run", "pipeline", "--occurrence", occurrence, "--json"], env=env,
                             capture_output=True, text=True, timeout=600)
        self.report.figures["reference_seconds"] = round(time.perf_counter() - started, 1)
        if out.returncode != 0:
            self.report.problems.append(f"the reference pipeline failed: {out.stderr[-500:]}")
            return
        excluded = ", ".join(f"'{c}'" for c in self.client_customers)
        sql = ("SELECT m.campaign_id, c.external_id, m.channel, m.status = 'holdout' FROM message m "
               f"JOIN customer c ON c.id = m.customer_id WHERE c.external_id NOT IN ({excluded})")
        reference_engine = make_engine(self.reference_url)
        try:
            with reference_engine.connect() as connection:
                expected = {tuple(r) for r in connection.execute(text(sql))}
        finally:
            reference_engine.dispose()
            drop_database(self.reference_url)
        got = {tuple(r) for r in self.query(sql)}
        self.report.figures["planned_compared"] = len(expected)
        if got != expected:
            self.report.problems.append(f"outbox differs from the calm run: {len(expected - got)} missing "
                                        f"(e.g. {sorted(expected - got)[:3]}), {len(got - expected)} extra "
                                        f"(e.g. {sorted(got - expected)[:3]})")


def main() -> None:
    """Run one chaos round from the command line (see bench/bench_chaos.py)."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--fake-url", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--customers", type=int, default=ChaosOptions.customers)
    parser.add_argument("--signals", type=int, default=ChaosOptions.signals)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    options = ChaosOptions(customers=args.customers, signals=args.signals, seed=args.seed)
    report = Harness(args.url, args.workdir, args.fake_url, options).run()
    print(json.dumps(report.as_dict(), default=str))
    sys.exit(1 if report.problems else 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
