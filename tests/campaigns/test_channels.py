"""Adding a channel (docs/development.md, "Adding a channel"): a throw-away WhatsApp-like channel registered at run
time is validated in specs, planned under its consent, contact field, default cap and quiet hours, rendered with its
template parts and sent by its provider's sender — with no other file changed."""

from __future__ import annotations

import random
from datetime import timedelta

import polars as pl
import pytest
from sqlmodel import select

from campaigns import service
from campaigns.delivery import channels as delivery_channels
from campaigns.delivery.channels.base import SENT, Outgoing, SendResult
from campaigns.delivery.dispatch import BatchReport, Renderer, admit, claim, record_results
from campaigns.models import Message
from campaigns.planning.guardrails import guard_rails
from crm.models import ConsentStatus
from crm.service import record_consent
from kit.channels import CHANNELS, ChannelSpec
from kit.context import Context
from kit.errors import InvalidInput
from kit.settings import Settings
from tests.campaigns.test_campaigns import TUESDAY, _active, _potential
from tests.conftest import TEST_SECRET


class RecordingSender:
    """The new channel's sender: what a provider module would hold (here it keeps what it was asked to send)."""

    channel, provider, can_reconcile = "wa", "fake_wa", False

    def __init__(self) -> None:
        self.sent: list[Outgoing] = []

    def send(self, message: Outgoing) -> SendResult:
        """Accept the message."""
        self.sent.append(message)
        return SendResult(SENT, provider_id=f"wa-{message.message_id}")

    def reconcile(self, message, since, known_provider_ids=frozenset()):
        """Not askable."""
        raise NotImplementedError


@pytest.fixture
def whatsapp(tmp_path, engine, clock):
    """Step 1 and 2 of the guide: the channel's spec and its provider, registered; a context built after them."""
    sender = RecordingSender()
    CHANNELS.register(ChannelSpec("wa", contact_field="phone", parts=("body",), required_parts=("body",),
                                  quiet_hours=True, default_cap=(1, 7), unit_cost=0.01, providers=("fake_wa",)))
    delivery_channels.register_provider(delivery_channels.Provider("fake_wa", lambda settings, spec, show: sender))
    try:
        settings = Settings(secret_key=TEST_SECRET, data_dir=tmp_path, database_url="", global_control_share=0.0)
        from kit.crypto import ContactCipher

        yield Context(settings=settings, engine=engine, cipher=ContactCipher(TEST_SECRET), clock=clock), sender
    finally:
        CHANNELS.unregister("wa")
        delivery_channels.PROVIDERS.pop("fake_wa", None)


def test_a_channel_registered_at_run_time_is_planned_rendered_and_sent(whatsapp, session, people):
    ctx, sender = whatsapp
    # Step 3: its template (stored here; a file under templates/wa/ would do the same).
    service.save_template(session, ctx, {"name": "wa_hello", "channel": "wa", "locale": ctx.settings.default_locale,
                                         "parts": {"body": "Hello {{ customer.external_id }}: {{ offer.description }}"}},
                          "test")
    with pytest.raises(InvalidInput) as wrong_part:
        service.save_template(session, ctx, {"name": "wa_bad", "channel": "wa", "locale": "en-US",
                                             "parts": {"subject": "x", "body": "y"}}, "test")
    assert wrong_part.value.errors[0]["field"] == "subject"
    # Its consent is its own: only P1 and P2 said yes to it.
    for external in ("P1", "P2"):
        record_consent(session, ctx, customer_id=people[external], channel="wa", status=ConsentStatus.opted_in,
                       source="test", actor="test")
    rails = guard_rails(session, ctx)
    assert "wa" in rails.quiet.channels and any(c.channel == "wa" and c.limit == 1 for c in rails.caps)

    campaign = _active(session, ctx, _potential(channels=[{"channel": "wa", "template": "wa_hello"}]))
    plan = service.plan_campaign(session, ctx, campaign.id, TUESDAY)
    rows = session.exec(select(Message).where(Message.campaign_id == campaign.id)).all()
    planned = {r.customer_id for r in rows if r.status == "planned"}
    assert planned == {people["P1"], people["P2"]}  # P3: no consent to the new channel
    assert all(r.channel == "wa" for r in rows) and plan["counts"]["channel_wa"] == 2
    # Its default cap (1 per 7 days) holds: a second campaign on the same day cannot send within the week.
    second = _active(session, ctx, _potential(name="Second", priority=50,
                                              channels=[{"channel": "wa", "template": "wa_hello"}]))
    again = service.plan_campaign(session, ctx, second.id, TUESDAY)
    later = session.exec(select(Message).where(Message.campaign_id == second.id)).all()
    assert again["counts"]["lower_priority"] == 2  # the higher-priority campaign holds the week's one slot
    assert sorted((m.status, m.reason) for m in later) == [("skipped", "lower_priority")] * 2

    # Dispatch: claimed, checked at send time, rendered to the customer's phone, sent by its provider's sender.
    senders = delivery_channels.build_senders(ctx.settings)
    assert senders["wa"] is sender
    late = max(r.send_at for r in rows if r.status == "planned")  # 10:00 in New York is 23:00 in Shanghai
    to_send, decided = _dispatch_at(session, ctx, senders, late, campaign.id)
    assert [d["decision"] for d in decided] == ["deferred"] and decided[0]["customer_id"] == people["P1"]
    assert [r["customer_id"] for r in to_send] == [people["P2"]]  # the new channel waits out quiet hours too
    to_send, decided = _dispatch_at(session, ctx, senders, decided[0]["new_send_at"], campaign.id)
    assert decided == [] and [r["customer_id"] for r in to_send] == [people["P1"]]
    assert sorted(o.to[0] for o in sender.sent) == ["+12025550102", "+8613800000001"]
    assert all(o.parts["body"].startswith("Hello P") for o in sender.sent)
    session.expire_all()  # the dispatcher wrote with core statements: read the rows again
    sent = session.exec(select(Message).where(Message.campaign_id == campaign.id, Message.status == "sent")).all()
    assert len(sent) == 2 and {m.provider for m in sent} == {"fake_wa"}


def _dispatch_at(session, ctx, senders, now, campaign_id):
    """One dispatcher batch at `now` on the test's transaction: claim, admit, render, send, record."""
    claimed = [r for r in claim(session, now, "test-worker", timedelta(minutes=5), 10) if r["campaign_id"] == campaign_id]
    to_send, decided = admit(session, ctx, claimed, now)
    ready, unsendable = Renderer(session, ctx).render(to_send)
    assert unsendable == []
    answers = [senders[o.channel].send(o) for _, o in ready]
    record_results(session, ctx, [(row, o, a) for (row, o), a in zip(ready, answers, strict=True)], senders, now,
                   random.Random(1), BatchReport())
    return to_send, decided


def test_an_unknown_channel_is_refused_by_name(session, ctx, people):
    with pytest.raises(InvalidInput) as refused:
        service.create_campaign(session, ctx, _potential(channels=[{"channel": "wa", "template": "x"}]), "test")
    assert refused.value.errors[0]["field"] == "channels.0.channel"
    assert "unknown channel 'wa'" in refused.value.errors[0]["reason"]
    assert pl.Series(list(CHANNELS.names())).to_list() == ["sms", "email", "push", "phone"]
