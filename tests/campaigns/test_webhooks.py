"""Webhooks signed the providers' way (Twilio's validator, SendGrid's ECDSA), the unsubscribe link and call tasks."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import select
from twilio.request_validator import RequestValidator

from campaigns.models import CallTask, Campaign, Message
from campaigns.service import unsubscribe_url
from crm.models import AuditLog, ConsentChange, Role
from crm.service import consent_of, customer_by_external_id
from tests.support import factories

TOKEN = "twilio-webhook-token"
BASE = "https://crm.example.com"


@pytest.fixture
def signing_key():
    """SendGrid's event webhook key pair, made the way SendGrid makes it (ECDSA P-256)."""
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def shop(session, ctx, signing_key):
    """Three imported customers (SMS opted in, email opted out), signed webhooks configured, one campaign."""
    public = signing_key.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    ctx.settings = ctx.settings.model_copy(update={
        "twilio_auth_token": TOKEN, "public_base_url": BASE,
        "sendgrid_webhook_public_key": base64.b64encode(public).decode()})
    factories.customers(session, ctx, 3)
    now = ctx.clock.now()
    campaign = Campaign(name="Webhook test", status="active", version=1, priority=0, spec={}, created_at=now,
                        created_by="t", updated_at=now, updated_by="t")
    session.add(campaign)
    session.flush()
    return campaign


def _message(session, ctx, campaign, external_id, channel="sms", provider_id="SM1", status="sent", occurrence=None):
    now = ctx.clock.now()
    message = Message(campaign_id=campaign.id, occurrence="2026-11-01", customer_id=customer_by_external_id(
        session, external_id).id, channel=channel, status=status, priority=0, transactional=False, send_at=now,
        template="t", locale="en-US", created_at=now, updated_at=now, provider_id=provider_id, sent_at=now)
    session.add(message)
    session.flush()
    return message


def _twilio(client, path, params, token=TOKEN):
    url = f"{BASE}{path}"
    signature = RequestValidator(token).compute_signature(url, params)
    return client.post(path, data=params, headers={"X-Twilio-Signature": signature})


def _sendgrid(client, ctx, key, events, *, age=0, tamper=False):
    body = json.dumps(events)
    timestamp = str(int(ctx.clock.now().timestamp()) - age)
    signature = base64.b64encode(key.sign((timestamp + body).encode(), ec.ECDSA(hashes.SHA256()))).decode()
    sent = body.replace("delivered", "bounce") if tamper else body
    return client.post("/v1/webhooks/sendgrid/events", content=sent, headers={
        "X-Twilio-Email-Event-Webhook-Signature": signature, "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        "Content-Type": "application/json"})


def test_twilio_status_callbacks_move_forward_once(client, session, ctx, shop):
    message = _message(session, ctx, shop, "C1")
    path = f"/v1/webhooks/twilio/status?message_id={message.id}"
    delivered = {"MessageSid": "SM1", "MessageStatus": "delivered", "AccountSid": "AC1"}
    assert _twilio(client, path, delivered).status_code == 200
    session.refresh(message)
    assert message.status == "delivered" and message.delivered_at is not None
    assert _twilio(client, path, delivered).json() == {"duplicate": True}  # a repeat changes nothing
    late = _twilio(client, path, {"MessageSid": "SM1", "MessageStatus": "sent", "AccountSid": "AC1"})
    assert late.json()["changed"] is False  # a late 'sent' never undoes 'delivered'
    session.refresh(message)
    assert message.status == "delivered"


def test_twilio_undelivered_21610_opts_out(client, session, ctx, shop):
    message = _message(session, ctx, shop, "C2", provider_id="SM2")
    params = {"MessageSid": "SM2", "MessageStatus": "undelivered", "ErrorCode": "21610"}
    assert _twilio(client, "/v1/webhooks/twilio/status", params).status_code == 200
    session.refresh(message)
    assert message.status == "failed" and message.reason == "twilio_undelivered_21610"
    assert consent_of(session, message.customer_id)["sms"]["status"] == "opted_out"


def test_forged_twilio_requests_are_refused_and_logged(client, session, ctx, shop, caplog):
    message = _message(session, ctx, shop, "C1")
    params = {"MessageSid": "SM1", "MessageStatus": "delivered"}
    forged = _twilio(client, "/v1/webhooks/twilio/status", params, token="not-the-token")
    assert forged.status_code == 403 and forged.headers["content-type"] == "application/problem+json"
    unsigned = client.post("/v1/webhooks/twilio/status", data=params)
    assert unsigned.status_code == 403
    # Signed for one URL, replayed against another.
    signature = RequestValidator(TOKEN).compute_signature(f"{BASE}/v1/webhooks/twilio/inbound", params)
    moved = client.post("/v1/webhooks/twilio/status", data=params, headers={"X-Twilio-Signature": signature})
    assert moved.status_code == 403
    session.refresh(message)
    assert message.status == "sent"
    assert "twilio webhook rejected" in caplog.text


@pytest.mark.parametrize("word", ["STOP", "stop", "Unsubscribe", "STOPALL", "CANCEL", "END", "QUIT", "退订", "TD",
                                  "ＴＤ", "td。", "T", "n", "取消订阅", "退订短信", "取消", "【退订】", "STOP!!", "ｓｔｏｐ"])
def test_inbound_stop_words_opt_out_at_once(client, session, ctx, shop, word):
    reply = _twilio(client, "/v1/webhooks/twilio/inbound", {"MessageSid": f"SMin-{word}", "From": "+8613800100001",
                                                           "Body": f" {word} "})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("application/xml")
    assert "<Response>" in reply.text
    customer = customer_by_external_id(session, "C1")
    assert consent_of(session, customer.id)["sms"]["status"] == "opted_out"
    change = session.exec(select(ConsentChange).where(ConsentChange.customer_id == customer.id)
                          .order_by(ConsentChange.id.desc())).first()
    assert change.source.startswith("sms_reply:") and change.status == "opted_out"


def test_inbound_start_opts_back_in_and_help_answers(client, session, ctx, shop):
    number = {"From": "+8613800100002"}
    _twilio(client, "/v1/webhooks/twilio/inbound", number | {"MessageSid": "a", "Body": "STOP"})
    again = _twilio(client, "/v1/webhooks/twilio/inbound", number | {"MessageSid": "b", "Body": "START"})
    customer = customer_by_external_id(session, "C2")
    assert consent_of(session, customer.id)["sms"]["status"] == "opted_in"
    assert "<Message>" in again.text
    helped = _twilio(client, "/v1/webhooks/twilio/inbound", number | {"MessageSid": "c", "Body": "help"})
    assert "TD" in helped.text or "STOP" in helped.text  # the answer says how to opt out
    chinese = _twilio(client, "/v1/webhooks/twilio/inbound", number | {"MessageSid": "c2", "Body": " 帮助？"})
    assert "<Message>" in chinese.text and "TD" in chinese.text
    chatter = _twilio(client, "/v1/webhooks/twilio/inbound", number | {"MessageSid": "d", "Body": "thanks, see you"})
    assert "<Message>" not in chatter.text
    assert consent_of(session, customer.id)["sms"]["status"] == "opted_in"


def test_a_stop_from_a_shared_number_opts_out_every_holder(client, session, ctx, shop):
    """Two customers share one number (a household): one STOP opts both out, and START both back in."""
    factories.run(session, ctx, "customers", factories.csv_text(
        ("external_id", "phone", "sms_consent", "consent_at"), [("C9", "+8613800100001", "opted_in", "2024-01-01")]))
    holders = [customer_by_external_id(session, e).id for e in ("C1", "C9")]
    reply = _twilio(client, "/v1/webhooks/twilio/inbound", {"MessageSid": "shared-1", "From": "+8613800100001",
                                                           "Body": "退订"})
    assert "<Message>" in reply.text
    assert [consent_of(session, h)["sms"]["status"] for h in holders] == ["opted_out", "opted_out"]
    assert consent_of(session, customer_by_external_id(session, "C2").id)["sms"]["status"] == "opted_in"
    _twilio(client, "/v1/webhooks/twilio/inbound", {"MessageSid": "shared-2", "From": "+8613800100001", "Body": "订阅"})
    assert [consent_of(session, h)["sms"]["status"] for h in holders] == ["opted_in", "opted_in"]


def test_reply_keywords_come_from_the_guard_rails(client, session, ctx, shop, auth_header):
    from campaigns.authoring import guard_rail_settings as guardrails

    version, rails = guardrails.current_settings(session, ctx)
    body = rails.model_dump(mode="json")
    body["sms_keywords"]["stop"].append("别发了")
    assert client.put("/v1/guard-rails", json=body, headers=auth_header(Role.admin)).status_code == 200
    _twilio(client, "/v1/webhooks/twilio/inbound", {"MessageSid": "kw-1", "From": "+8613800100003", "Body": " 别发了！"})
    assert consent_of(session, customer_by_external_id(session, "C3").id)["sms"]["status"] == "opted_out"


def test_a_future_dated_consent_import_never_overrides_a_stop(client, session, ctx, shop):
    _twilio(client, "/v1/webhooks/twilio/inbound", {"MessageSid": "f-1", "From": "+8613800100001", "Body": "STOP"})
    job = factories.run(session, ctx, "customers", factories.csv_text(
        ("external_id", "sms_consent", "consent_at"), [("C1", "opted_in", "2099-01-01"), ("C2", "opted_in",
                                                                                         "2026-10-01")]))
    assert job.rows_failed == 1 and job.errors[0]["row"] == 1 and job.errors[0]["field"] == "consent_at"
    assert consent_of(session, customer_by_external_id(session, "C1").id)["sms"]["status"] == "opted_out"


def test_a_sendgrid_unsubscribe_opts_out_every_holder_of_the_address(client, session, ctx, shop, signing_key):
    from crm.models import Channel, ConsentStatus
    from crm.service import record_consent

    factories.run(session, ctx, "customers", factories.csv_text(("external_id", "email"),
                                                                [("C8", "USER1@example.com")]))
    holders = [customer_by_external_id(session, e).id for e in ("C1", "C8")]
    for holder in holders:
        record_consent(session, ctx, customer_id=holder, channel=Channel.email, status=ConsentStatus.opted_in,
                       source="test", actor="test", at=ctx.clock.now() - timedelta(days=1))
    future = int(ctx.clock.now().timestamp()) + 86_400  # a provider clock a day ahead
    response = _sendgrid(client, ctx, signing_key, [{"event": "unsubscribe", "sg_event_id": "u-1",
                                                     "email": "user1@example.com", "timestamp": future}])
    assert response.status_code == 200
    states = [consent_of(session, h)["email"] for h in holders]
    assert [s["status"] for s in states] == ["opted_out", "opted_out"]
    assert all(s["changed_at"] <= ctx.clock.now() for s in states)


def test_sendgrid_events_update_status_engagement_and_consent(client, session, ctx, shop, signing_key):
    first = _message(session, ctx, shop, "C1", channel="email", provider_id="sg-1")
    second = _message(session, ctx, shop, "C2", channel="email", provider_id="sg-2")
    third = _message(session, ctx, shop, "C3", channel="email", provider_id="sg-3")
    at = int(ctx.clock.now().timestamp())
    events = [{"event": "delivered", "sg_event_id": "e1", "message_id": str(first.id), "timestamp": at},
              {"event": "open", "sg_event_id": "e2", "message_id": str(first.id), "timestamp": at + 60},
              {"event": "click", "sg_event_id": "e3", "message_id": str(first.id), "timestamp": at + 90},
              {"event": "bounce", "sg_event_id": "e4", "message_id": str(second.id), "timestamp": at},
              {"event": "unsubscribe", "sg_event_id": "e5", "message_id": str(third.id), "timestamp": at}]
    # C3 opted in to email first, so the unsubscribe is a real change.
    from crm.models import Channel, ConsentStatus
    from crm.service import record_consent

    record_consent(session, ctx, customer_id=third.customer_id, channel=Channel.email,
                   status=ConsentStatus.opted_in, source="test", actor="test", at=ctx.clock.now() - timedelta(days=1))
    response = _sendgrid(client, ctx, signing_key, events)
    assert response.status_code == 200 and response.json()["applied"] == 5
    for message in (first, second, third):
        session.refresh(message)
    assert first.status == "delivered" and first.opened_at and first.clicked_at
    assert second.status == "failed" and second.reason == "sendgrid_bounce"
    assert consent_of(session, third.customer_id)["email"] == {
        "status": "opted_out", "source": "sendgrid:unsubscribe", "changed_at": consent_of(
            session, third.customer_id)["email"]["changed_at"]}
    repeat = _sendgrid(client, ctx, signing_key, events)
    assert repeat.json() == {"applied": 0, "duplicate": 5, "ignored": 0, "invalid": 0}


def test_sendgrid_forged_or_stale_batches_are_refused(client, session, ctx, shop, signing_key):
    message = _message(session, ctx, shop, "C1", channel="email")
    events = [{"event": "delivered", "sg_event_id": "x1", "message_id": str(message.id)}]
    assert _sendgrid(client, ctx, signing_key, events, tamper=True).status_code == 403
    assert _sendgrid(client, ctx, signing_key, events, age=3600).status_code == 403
    other = ec.generate_private_key(ec.SECP256R1())
    assert _sendgrid(client, ctx, other, events).status_code == 403
    session.refresh(message)
    assert message.status == "sent"
    assert _sendgrid(client, ctx, signing_key, events).status_code == 200


def test_unsubscribe_link_needs_no_login_and_cannot_be_forged(client, session, ctx, shop):
    customer = customer_by_external_id(session, "C1")
    from crm.models import Channel, ConsentStatus
    from crm.service import record_consent

    record_consent(session, ctx, customer_id=customer.id, channel=Channel.email, status=ConsentStatus.opted_in,
                   source="test", actor="test")
    path = unsubscribe_url(ctx, customer.id).removeprefix(ctx.settings.public_base_url)
    page = client.get(path)
    assert page.status_code == 200 and "<form method='post'>" in page.text
    assert consent_of(session, customer.id)["email"]["status"] == "opted_in"  # a GET (link scanner) changes nothing
    assert client.post(path).status_code == 200
    assert consent_of(session, customer.id)["email"] == {
        "status": "opted_out", "source": "unsubscribe_link",
        "changed_at": consent_of(session, customer.id)["email"]["changed_at"]}
    other = customer_by_external_id(session, "C2")
    forged = path.replace(f"/{customer.id}.", f"/{other.id}.")
    assert client.post(forged).status_code == 404
    assert consent_of(session, other.id)["email"]["status"] == "opted_out"  # unchanged from the import
    assert session.exec(select(ConsentChange).where(ConsentChange.customer_id == other.id,
                                                    ConsentChange.source == "unsubscribe_link")).first() is None


def test_call_tasks_claim_reveal_and_outcome(client, session, ctx, shop, auth_header, keys):
    message = _message(session, ctx, shop, "C1", channel="phone", provider_id="task-1")
    session.add(CallTask(message_id=message.id, customer_id=message.customer_id, campaign_id=shop.id, status="open",
                         script="Invite to the presale", created_at=ctx.clock.now()))
    session.flush()
    support = auth_header(Role.support)
    listed = client.get("/v1/tasks?status=open", headers=support).json()["items"]
    assert len(listed) == 1 and "****" in listed[0]["phone"]  # masked until claimed
    task_id = listed[0]["id"]
    assert client.post(f"/v1/tasks/{task_id}/outcome", json={"outcome": "reached"}, headers=support).status_code == 403
    claimed = client.post(f"/v1/tasks/{task_id}/claim", headers=support).json()
    assert claimed["phone"] == "+8613800100001" and claimed["status"] == "claimed"
    taken = client.post(f"/v1/tasks/{task_id}/claim", headers=auth_header(Role.admin))
    assert taken.status_code == 409
    bad = client.post(f"/v1/tasks/{task_id}/outcome", json={"outcome": "maybe"}, headers=support)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "outcome"
    done = client.post(f"/v1/tasks/{task_id}/outcome", json={"outcome": "declined", "notes": "no calls"},
                       headers=support)
    assert done.status_code == 200 and done.json()["status"] == "done"
    session.refresh(message)
    assert message.status == "delivered"  # the call's outcome is the delivery
    assert consent_of(session, message.customer_id)["phone"]["source"] == "call_declined"
    assert session.exec(select(AuditLog).where(AuditLog.action == "task.claim")).first() is not None
    assert client.get("/v1/tasks?status=nonsense", headers=support).status_code == 422


def test_admin_retries_a_dead_message(client, session, ctx, shop, auth_header):
    message = _message(session, ctx, shop, "C1", status="dead")
    assert client.post(f"/v1/messages/{message.id}/retry", headers=auth_header(Role.marketer)).status_code == 403
    retried = client.post(f"/v1/messages/{message.id}/retry", headers=auth_header(Role.admin))
    assert retried.status_code == 200 and retried.json()["status"] == "planned"
    again = client.post(f"/v1/messages/{message.id}/retry", headers=auth_header(Role.admin))
    assert again.status_code == 409
    dead = client.get("/v1/messages?status=dead", headers=auth_header(Role.admin)).json()["items"]
    assert message.id not in [m["id"] for m in dead]
    counts = client.get("/v1/messages/counts", headers=auth_header(Role.support)).json()
    assert counts["sms"]["planned"] == 1


def _sendgrid_raw(client, ctx, key, body: str):
    timestamp = str(int(ctx.clock.now().timestamp()))
    signature = base64.b64encode(key.sign((timestamp + body).encode(), ec.ECDSA(hashes.SHA256()))).decode()
    return client.post("/v1/webhooks/sendgrid/events", content=body, headers={
        "X-Twilio-Email-Event-Webhook-Signature": signature, "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        "Content-Type": "application/json"})


def test_a_poisoned_sendgrid_batch_still_applies_its_good_events(client, session, ctx, shop, signing_key):
    """One event with a bad timestamp used to make the whole signed batch a 500: SendGrid retried it for ever and
    the unsubscribe in it never applied. Events without an id no longer all dedupe under ''."""
    from crm.models import Channel, ConsentStatus
    from crm.service import record_consent

    c3 = customer_by_external_id(session, "C3").id
    record_consent(session, ctx, customer_id=c3, channel=Channel.email, status=ConsentStatus.opted_in,
                   source="test", actor="test", at=ctx.clock.now() - timedelta(days=1))
    at = int(ctx.clock.now().timestamp())
    events = [{"event": "delivered", "sg_event_id": "p1", "timestamp": "yesterday", "email": "user1@example.com"},
              {"event": "delivered", "sg_event_id": "p2", "timestamp": 10**15, "email": "user1@example.com"},
              {"event": "unsubscribe", "sg_event_id": "p3", "timestamp": at, "email": "user3@example.com"},
              {"event": "open", "timestamp": at, "email": "user2@example.com", "message_id": "1" * 40},
              {"event": "open", "timestamp": at + 1, "email": "user2@example.com"}]
    answer = _sendgrid(client, ctx, signing_key, events)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"applied": 3, "duplicate": 0, "ignored": 0, "invalid": 2}
    assert consent_of(session, c3)["email"]["status"] == "opted_out"
    again = _sendgrid(client, ctx, signing_key, events)
    assert again.json()["duplicate"] == 3  # the id-less events dedupe by content, each on its own
    deep = _sendgrid_raw(client, ctx, signing_key, "[" * 100_000 + "]" * 100_000)
    assert deep.status_code == 422 and deep.headers["content-type"] == "application/problem+json"


def test_a_status_callback_recovers_a_message_whose_answer_was_lost(client, session, ctx, shop):
    """A worker killed after Twilio took the message: the callback (our id in its signed URL) records it sent."""
    message = _message(session, ctx, shop, "C1", provider_id=None, status="unknown")
    params = {"MessageSid": "SMlost", "MessageStatus": "sent", "AccountSid": "AC1"}
    assert _twilio(client, f"/v1/webhooks/twilio/status?message_id={message.id}", params).status_code == 200
    session.refresh(message)
    assert (message.status, message.provider_id, message.reason) == ("sent", "SMlost", "callback_recovered")
    # A callback naming a message we did record is matched by Twilio's sid, as before.
    other = _message(session, ctx, shop, "C2", provider_id="SMknown")
    assert _twilio(client, f"/v1/webhooks/twilio/status?message_id={message.id}", {
        "MessageSid": "SMknown", "MessageStatus": "delivered", "AccountSid": "AC1"}).status_code == 200
    session.refresh(other)
    session.refresh(message)
    assert other.status == "delivered" and message.provider_id == "SMlost"


def test_non_ascii_tokens_are_invalid_not_an_error(client, session, ctx, shop):
    assert client.get("/v1/unsubscribe/é.x").status_code == 404
    assert client.post("/v1/unsubscribe/é.x").status_code == 404
    from console.session import user_of

    assert user_of(session, ctx, "é.x") is None
    page = client.get("/console/", headers={"Cookie": "crm_console=é.x".encode()}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/console/login")


def test_the_unsubscribe_page_cannot_be_framed(client, session, ctx, shop):
    customer = customer_by_external_id(session, "C1")
    link = unsubscribe_url(ctx, customer.id)
    page = client.get(link[len(ctx.settings.public_base_url):])
    assert page.status_code == 200 and page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
