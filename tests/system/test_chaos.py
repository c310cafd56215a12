"""Crash chaos: the API, the scheduler and the dispatcher, each SIGKILLed (some SIGTERMed) at random
moments of the daily pipeline and restarted, while a client uploads orders and reads profiles. Afterwards: no
message sent twice or lost, the ledger agrees with the providers, the outbox equals a calm run's, no import
half-written, the pipeline finished once, and every SIGTERM was a clean stop. bench/bench_chaos.py runs it longer."""

from __future__ import annotations

import json

import polars as pl

from tests.support.chaos import ChaosOptions, Harness


def test_random_kills_during_the_daily_pipeline_lose_and_duplicate_nothing(scratch_url, tmp_path, fake_server,
                                                                          providers):
    options = ChaosOptions(customers=1500, signals=12, seed=3)
    report = Harness(scratch_url, tmp_path, fake_server, options).run()
    (tmp_path / "chaos-report.json").write_text(json.dumps(report.as_dict(), default=str, indent=2))
    # The problems first: CI shows the head of a long assertion message.
    assert report.problems == [], json.dumps({"problems": report.problems, "figures": report.figures,
                                              "signals": report.signals}, default=str, indent=1)
    # The run really was chaotic: every service was hit, some while a pipeline step ran, and the graceful stops
    # at the end were checked.
    struck = {s["target"] for s in report.signals if s["signal"] == "SIGKILL"}
    assert struck == {"api", "scheduler", "dispatcher"}, report.signals
    assert any(s["pipeline_step"] and s["was_ready"] for s in report.signals
               if s["signal"] == "SIGKILL" and s["target"] == "scheduler"), "no leader was killed mid-step"
    assert report.figures["pipeline_attempts"] >= 2
    graceful = [s for s in report.signals if s["signal"] == "SIGTERM"]
    assert {s["target"] for s in graceful} == {"api", "scheduler", "dispatcher"}
    assert all(s["exit_code"] == 0 for s in graceful)
    figures = report.figures
    assert figures["accepted_by_providers"] > 100 and figures["planned_compared"] > 100, figures
    assert figures["uploads_accepted"] >= 4 and figures["client"].get("http_200", 0) > 0, figures
    # What the three processes wrote through all of it names no customer: every email and phone of the shop.
    people = pl.read_csv(tmp_path / "data" / "customers.csv", columns=["email", "phone"], infer_schema=False)
    contact = {v for v in people["email"].drop_nulls().to_list() + people["phone"].drop_nulls().to_list() if v}
    for name in ("api", "scheduler", "dispatcher"):
        logged = (tmp_path / "chaos-logs" / f"{name}.log").read_text(errors="replace")
        leaked = [value for value in contact if value in logged]
        assert not leaked, f"{name}'s output names customers' contact data: {leaked[:3]}"
