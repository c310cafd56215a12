"""Prometheus across processes: `crm serve --workers 2` answers one consistent total whichever worker a scrape
reaches, and what the dispatcher (a process that serves no HTTP) did shows in the API's /v1/metrics, beside the
database's gauges."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from crm.auth import create_key
from crm.models import Role
from kit.db import session_scope
from tests.conftest import cli_env
from tests.support.chaos import free_port
from tests.support.dispatch_support import PHONES, build_shop, fake_env, fake_settings

BASE = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # noon in Shanghai: no quiet hours in the way
CRM = [sys.executable, "-m", "wiring.cli"]


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_add_up_across_workers_and_processes(scratch_url, tmp_path, fake_server, providers):
    settings = fake_settings(tmp_path, fake_server, scratch_url)
    shop = build_shop(scratch_url, settings, customers=5, now=BASE)
    shop.add_messages([{"customer_id": c, "occurrence": "metrics", "expires_at": None}
                       for c in shop.customers.values()])
    with session_scope(shop.ctx.engine) as session:
        key = create_key(session, shop.ctx, name="scraper", role=Role.admin, actor="test").secret
    env = cli_env(scratch_url, tmp_path) | fake_env(settings) | {"CRM_READY_REQUIRES_LEADER": "false"}
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen([*CRM, "serve", "--port", str(port), "--workers", "2"], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/v1/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail(f"crm serve did not answer: {(tmp_path / 'serve.log').read_text(errors='replace')[-2000:]}")
        for _ in range(40):  # a new connection each: the kernel spreads them over both workers
            assert httpx.get(f"{base}/v1/health/ready", timeout=5).status_code == 200
        scrapes = [_samples(httpx.get(f"{base}/v1/metrics", headers=headers, timeout=5).text) for _ in range(6)]
        ready = [_value(s, "crm_http_requests_total", method="GET", route="/v1/health/ready", status="200")
                 for s in scrapes]
        assert ready == [40.0] * 6, ready  # one total, not each worker's own share
        assert {_value(s, "crm_outbox_messages", status="planned", channel="sms") for s in scrapes} == {5.0}

        sent = subprocess.run([*CRM, "dispatch", "run", "--once", "--now", BASE.isoformat()], env=env,
                              capture_output=True, text=True, timeout=180)
        assert sent.returncode == 0, sent.stderr
        for phone in (PHONES[i] for i in range(1, 6)):  # the dispatcher's whole output names no recipient
            assert phone not in sent.stdout + sent.stderr and phone.lstrip("+") not in sent.stdout + sent.stderr
        after = _samples(httpx.get(f"{base}/v1/metrics", headers=headers, timeout=5).text)
        assert _value(after, "crm_sends_total", channel="sms", provider="twilio") == 5.0  # the dispatcher's count
        assert _value(after, "crm_outbox_messages", status="planned", channel="sms") == 0.0
        assert _value(after, "crm_database_up") == 1.0
        assert any(name == "crm_activity_lag_seconds" for name, _ in after)
        body = httpx.get(f"{base}/v1/metrics", headers=headers, timeout=5).text
        assert re.search(r'^crm_http_request_seconds_bucket\{.*route="/v1/health/ready"', body, re.M)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
