"""Helpers for dispatch tests: a committed scratch database with customers, outbox rows, and the fake providers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select, text

from campaigns.models import Campaign, Message
from kit.clock import FixedClock
from kit.context import Context
from kit.crypto import ContactCipher
from kit.db import make_engine, session_scope
from kit.migrations import upgrade_to_head
from kit.settings import Settings
from tests.conftest import TEST_NOW, TEST_SECRET
from tests.support import factories

PHONES = {i: f"+86138001{i:05d}" for i in range(1, 1000)}


def fake_settings(tmp_path: Path, base_url: str, url: str = "", **overrides) -> Settings:
    """Settings that send every channel through the real SDKs to the fake providers at base_url."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    account = tmp_path / "fcm-service-account.json"
    account.write_text(json.dumps({"type": "service_account", "project_id": "fake", "private_key_id": "k1",
                                   "private_key": pem, "client_email": "crm@fake.iam.gserviceaccount.com",
                                   "client_id": "1", "token_uri": f"{base_url}/token"}))
    values = dict(secret_key=TEST_SECRET, data_dir=tmp_path, database_url=url, sms_provider="twilio",
                  email_provider="sendgrid", push_provider="fcm", twilio_account_sid="AC" + "1" * 32,
                  twilio_auth_token="twilio-test-token", twilio_from="+15005550006", twilio_base_url=base_url,
                  sendgrid_api_key="SG.test", sendgrid_base_url=base_url, fcm_service_account_file=account,
                  fcm_base_url=base_url, provider_timeout_seconds=1.0, dispatch_backoff_seconds=60.0,
                  provider_rate_per_second={"twilio": 1000.0, "sendgrid": 1000.0, "fcm": 1000.0, "tasks": 1000.0,
                                            "console": 1000.0})
    return Settings(**(values | overrides))


def fake_env(settings: Settings) -> dict[str, str]:
    """The same settings as CRM_* environment variables, for `crm` subprocesses."""
    keys = ("sms_provider", "email_provider", "push_provider", "twilio_account_sid", "twilio_auth_token",
            "twilio_from", "twilio_base_url", "sendgrid_api_key", "sendgrid_base_url", "fcm_service_account_file",
            "fcm_base_url", "provider_timeout_seconds", "dispatch_backoff_seconds")
    env = {f"CRM_{k.upper()}": str(getattr(settings, k)) for k in keys}
    return env | {"CRM_PROVIDER_RATE_PER_SECOND": json.dumps(settings.provider_rate_per_second)}


@dataclass
class Shop:
    """A committed scratch shop: its context (fixed clock), campaign id and customer ids by external id."""

    ctx: Context
    campaign_id: int
    customers: dict[str, int]

    def add_messages(self, rows: list[dict]) -> list[int]:
        """Insert outbox rows (defaults: planned marketing SMS due now) and return their ids."""
        now = self.ctx.clock.now()
        ids = []
        with session_scope(self.ctx.engine) as session:
            for index, row in enumerate(rows):
                values = {"campaign_id": self.campaign_id, "occurrence": "2026-11-01", "channel": "sms",
                          "status": "planned", "priority": 0, "transactional": False, "send_at": now,
                          "expires_at": now + timedelta(days=2), "template": "at_risk_care", "locale": "en-US",
                          "created_at": now, "updated_at": now, "attempts": 0, "discount_value": 0.0} | row
                values.setdefault("occurrence", f"o{index}")
                message = Message(**values)
                session.add(message)
                session.flush()
                ids.append(message.id)
        return ids

    def messages(self) -> dict[int, dict]:
        """Every outbox row by id."""
        with self.ctx.engine.connect() as connection:
            table = Message.__table__
            return {r.id: dict(r._mapping) for r in connection.execute(select(table).order_by(table.c.id))}

    def consent(self, external_id: str, channel: str) -> tuple[str, str] | None:
        """(status, source) of a customer's current consent on a channel."""
        with self.ctx.engine.connect() as connection:
            row = connection.execute(text("SELECT status, source FROM consent WHERE customer_id = :c AND channel = :ch"),
                                     {"c": self.customers[external_id], "ch": channel}).first()
        return tuple(row) if row else None


def build_shop(url: str, settings: Settings, customers: int = 6, zone: str = "Asia/Shanghai",
               now: datetime = TEST_NOW) -> Shop:
    """Migrate a scratch database, import customers with every contact channel opted in, and one campaign."""
    engine = make_engine(url)
    upgrade_to_head(engine)
    ctx = Context(settings=settings, engine=engine, cipher=ContactCipher(TEST_SECRET), clock=FixedClock(now))
    header = ("external_id", "email", "phone", "push_tokens", "time_zone", "locale", "sms_consent", "email_consent",
              "push_consent", "phone_consent", "consent_at")
    rows = [(f"C{i}", f"user{i}@example.com", PHONES[i], f'["token-{i}-a"]', zone, "en-US", "opted_in", "opted_in",
             "opted_in", "opted_in", "2026-01-01") for i in range(1, customers + 1)]
    with session_scope(engine) as session:
        factories.run(session, ctx, "customers", factories.csv_text(header, rows))
        campaign = Campaign(name="Dispatch test", status="active", version=1, priority=0, spec={}, created_at=now,
                            created_by="test", updated_at=now, updated_by="test")
        session.add(campaign)
        session.flush()
        campaign_id = campaign.id
        ids = dict(session.connection().execute(text("SELECT external_id, id FROM customer")).all())
    return Shop(ctx=ctx, campaign_id=campaign_id, customers=ids)


class FakeProviders:
    """Client for the fake provider server: its log and its fault switchboard."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def reset(self) -> None:
        """Forget accepted messages and faults."""
        httpx.post(f"{self.base_url}/_fake/reset")

    def faults(self, *faults: dict) -> None:
        """Queue faults (see tests/support/fake_providers.py)."""
        httpx.post(f"{self.base_url}/_fake/faults", json=list(faults))

    def accepted(self, provider: str | None = None) -> list[dict]:
        """Messages the fake accepted, optionally of one provider."""
        log = httpx.get(f"{self.base_url}/_fake/log").json()["accepted"]
        return [m for m in log if provider is None or m["provider"] == provider]

    def requests(self) -> dict[str, int]:
        """Request counts per endpoint."""
        return httpx.get(f"{self.base_url}/_fake/log").json()["requests"]
