"""The console in a real browser: Playwright drives Debian's Chromium headless against the app served by uvicorn
on a generated shop. Screenshots of the main pages go to test-artifacts/console/ (git-ignored)."""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import uvicorn
from sqlmodel import select

from campaigns.authoring.campaigns import create_campaign, set_status, update_campaign
from campaigns.measurement.conversions import attribute_conversions
from campaigns.measurement.reports import customers_reached
from crm.auth import create_key
from crm.ingest import run_import
from crm.models import Customer, Role
from kit.clock import FixedClock
from kit.db import session_scope
from kit.jobs import run_job
from kit.timezones import utc_midnight
from tests.support.shops import generated_shop
from wiring.app import create_app, job_registry
from wiring.generator import simulate_responses

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "console"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's package (`apt-get install -y chromium`; "
                    "`make test` and .ci/run do when they may)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield launched
        launched.close()


DEEP_NEWCOMER = {"name": "Newcomers 80 off", "audience": {"tags": ["first_order_only"]},
                 "channels": [{"channel": "email", "template": "first_repeat"}],
                 "offer": {"amount_off": 80, "min_spend": 100, "valid_days": 14, "coupon_prefix": "DEEP"},
                 "schedule": {"kind": "daily", "local_hour": 10}, "fairness": "refuse"}


@pytest.fixture
def served(scratch_url, tmp_path):
    """A generated shop after one daily pipeline, served on a free loopback port; yields (base URL, keys)."""
    ctx = generated_shop(scratch_url, tmp_path, customers=300)
    with session_scope(ctx.engine) as session:
        # Activated while it only warned, paused, then made strict: resuming it will be refused.
        deep = create_campaign(session, ctx, DEEP_NEWCOMER | {"fairness": "warn"}, "test")
        set_status(session, ctx, deep.id, "active", "test")
        set_status(session, ctx, deep.id, "paused", "test")
        update_campaign(session, ctx, deep.id, DEEP_NEWCOMER, "test")
    pipeline = job_registry(ctx.settings).get("pipeline")
    outcome = run_job(ctx, pipeline, pipeline.schedule.latest(ctx.clock.now()), trigger="cli",
                      options={"dispatch": "replay"})
    assert outcome.status == "succeeded", outcome.error
    # The week after, simulated as the demo does, so the reports page has an uplift to draw.
    today = utc_midnight(ctx.clock.now().date())
    with session_scope(ctx.engine) as session:
        reached, _ = customers_reached(session, today - timedelta(days=1), today + timedelta(days=3))
        external = dict(session.exec(select(Customer.id, Customer.external_id)).all())
    members = reached.with_columns(external_id=reached["customer_id"].replace_strict(external))
    orders = simulate_responses(members, baseline=0.05, true_uplift=0.1, window_days=7, seed=5)
    with session_scope(ctx.engine) as session:
        run_import(session, ctx, kind="orders", chunks=[orders.write_csv(datetime_format="%Y-%m-%dT%H:%M:%SZ")
                                                        .encode()], actor="test")
    ctx.clock = FixedClock(ctx.clock.now() + timedelta(days=10))
    with session_scope(ctx.engine) as session:
        attribute_conversions(session, ctx)
    with session_scope(ctx.engine) as session:
        keys = {role: create_key(session, ctx, name=f"{role.value}-agent", role=role, actor="test").secret
                for role in (Role.support, Role.marketer)}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(ctx), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", keys, ctx
    server.should_exit = True
    thread.join(timeout=10)


def _sign_in(page, base: str, key: str) -> None:
    page.goto(f"{base}/console/login")
    page.fill("#api-key", key)
    page.click("#sign-in")
    page.wait_for_url(f"{base}/console/")


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_support_looks_up_a_customer_and_sees_the_profile_with_masked_contact_data(browser, served):
    base, keys, ctx = served
    from sqlalchemy import text

    with ctx.engine.connect() as connection:
        external_id = connection.execute(text(
            "SELECT c.external_id FROM customer c JOIN churn_score s ON s.customer_id = c.id "
            "JOIN customer_segment g ON g.customer_id = c.id WHERE c.email_hash IS NOT NULL AND s.at_risk "
            "ORDER BY c.id LIMIT 1")).scalar_one()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{base}/console/login")
    _shot(page, "01-login")
    _sign_in(page, base, keys[Role.support])
    assert page.locator("nav a").all_inner_texts() == ["客户查询", "VIP 回访任务"]  # Chinese, the default
    page.goto(f"{base}/console/customers")
    page.fill("#lookup", external_id)
    page.click("#search")
    page.wait_for_url(f"**/console/customers/{external_id}")
    assert page.inner_text("#customer-id") == external_id
    email = page.inner_text("#contact-email")
    assert "***@" in email, email  # masked for support
    assert page.inner_text("#tier") and page.locator("#tier-history li").count() >= 1
    assert page.locator("#churn-reasons li").count() >= 1  # an at-risk customer: the reasons are shown
    assert page.inner_text("#risk-level") == "高" and page.inner_text("#predicted-clv")  # predictive fields too
    page.wait_for_selector("#trend-chart[data-drawn='true']", timeout=15_000)
    _shot(page, "02-profile-support-zh")
    page.click("#lang-en")
    page.wait_for_load_state()
    assert "Customer profile" in page.inner_text("h1")
    assert page.inner_text("#risk-level") == "high" and page.locator("#churn-reasons li").count() >= 1
    assert page.inner_text("#churn-reasons li >> nth=0").isascii()  # the reasons follow the reader's language
    _shot(page, "03-profile-support-en")
    phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone.context.add_cookies(page.context.cookies())
    phone.goto(f"{base}/console/customers/{external_id}?lang=en")
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), "no sideways scroll"
    _shot(phone, "04-profile-phone")
    page.goto(f"{base}/console/tasks")
    _shot(page, "05-tasks")
    # A support key cannot reach the campaign pages, and they are not in its navigation.
    response = page.goto(f"{base}/console/campaigns")
    assert response.status == 403 and page.locator("#page-error").is_visible()
    response = page.goto(f"{base}/console/reports")
    assert response.status == 403
    page.click("#sign-out")
    page.wait_for_url("**/console/login")
    assert page.goto(f"{base}/console/customers").url.startswith(f"{base}/console/login")


def test_marketer_runs_a_dry_run_and_sees_the_chart_drawn(browser, served):
    base, keys, _ = served
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    _sign_in(page, base, keys[Role.marketer])
    page.goto(f"{base}/console/campaigns?lang=en")
    _shot(page, "06-campaigns")
    page.click("text=At-risk retention (regular)")
    page.click("#dry-run")
    page.wait_for_selector("#exclusions-chart[data-drawn='true']", timeout=15_000)
    assert page.locator("#exclusions-chart svg.main-svg").count() >= 1  # plotly drew into the element
    assert page.locator("#exclusions-chart .bars .point").count() >= 2  # one bar per exclusion reason
    assert int(page.inner_text("#dry-audience")) > 0
    _shot(page, "07-campaign-dry-run")
    # Resume a deeper newcomers' offer: the fairness gate refuses it, since loyal tiers would pay more than new
    # customers for the same basket — the page says why instead of resuming.
    page.goto(f"{base}/console/campaigns?lang=en")
    page.click(f"text={DEEP_NEWCOMER['name']}")
    page.click("#toggle-status")
    assert "new customers" in page.inner_text("#page-error")
    page.goto(f"{base}/console/campaigns")
    page.click("text=Birthday greeting")  # no offer: pauses and resumes freely
    page.click("#toggle-status")
    page.wait_for_selector("#campaign-status:has-text('paused')")
    page.click("#toggle-status")
    page.wait_for_selector("#campaign-status:has-text('active')")
    page.goto(f"{base}/console/reports")
    page.wait_for_selector("#uplift-chart[data-drawn='true']", timeout=15_000)
    assert page.locator("#uplift-table tr").count() >= 2
    page.wait_for_selector("#tier-chart[data-drawn='true']", timeout=15_000)
    page.wait_for_selector("#retention-chart[data-drawn='true']", timeout=15_000)
    _shot(page, "08-reports")
    page.goto(f"{base}/console/churn")
    page.wait_for_selector("#calibration-chart[data-drawn='true']", timeout=15_000)
    page.wait_for_selector("#metrics-chart[data-drawn='true']", timeout=15_000)
    _shot(page, "09-churn-model")
    page.goto(f"{base}/console/jobs")
    assert "pipeline" in page.inner_text("#job-table")
    _shot(page, "10-jobs")
    assert not errors, errors  # no script errors (e.g. the Content-Security-Policy blocking plotly)
