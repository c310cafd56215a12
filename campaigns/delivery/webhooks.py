"""Provider webhooks, each verified and idempotent: Twilio status and inbound SMS, SendGrid events; the unsubscribe link.

A repeated event changes nothing: each is recorded once by the provider's own id (`webhook_receipt`), and a
message's status only ever moves forward (a late `sent` never undoes `delivered`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from campaigns.authoring import compliance
from campaigns.authoring.guard_rail_settings import KeywordSetting, current_settings
from campaigns.models import Message, WebhookReceipt
from crm.models import Channel, ConsentStatus
from crm.service import customer_ids_by_email, customers_by_phone, get_customer, record_consent
from crm.validation import normalise_email, normalise_phone
from kit.context import Context
from kit.errors import DomainError

log = logging.getLogger(__name__)
# How far along a message is; a status only replaces one of lower rank.
RANK = {"planned": 0, "sending": 1, "unknown": 1, "sent": 2, "delivered": 3, "failed": 3}
TWILIO_STATUS = {"sent": "sent", "delivered": "delivered", "undelivered": "failed", "failed": "failed"}


class Rejected(DomainError):
    """A webhook whose signature or timestamp does not check out (403, logged)."""

    status = 403
    title = "Forbidden"


def first_time(session: Session, provider: str, event_id: str, now: datetime) -> bool:
    """Record an event id; False when it was seen before (the event is then ignored)."""
    try:
        with session.begin_nested():
            session.add(WebhookReceipt(provider=provider, event_id=event_id[:120], received_at=now))
            session.flush()
    except IntegrityError:
        return False
    return True


def our_message_id(value: Any) -> int | None:
    """Our message id as a provider hands it back (text, maybe forged): digits within a database id, else None."""
    if value is None or not str(value).isdigit() or int(value) >= 2**63:
        return None
    return int(value)


def advance(session: Session, message: Message, status: str, now: datetime, reason: str | None = None) -> bool:
    """Move a message forward to `status` (never back); returns whether it moved."""
    if RANK.get(status, 0) <= RANK.get(message.status, 0):
        return False
    message.status, message.updated_at = status, now
    if status == "delivered":
        message.delivered_at = message.delivered_at or now
    if reason:
        message.reason = reason[:40]
    session.add(message)
    return True


# ---------------------------------------------------------------- Twilio


def verify_twilio(ctx: Context, url: str, params: dict[str, str], signature: str | None) -> None:
    """Check X-Twilio-Signature with the SDK's validator over the public URL Twilio called."""
    from twilio.request_validator import RequestValidator

    if not ctx.settings.twilio_auth_token or not signature or \
            not RequestValidator(ctx.settings.twilio_auth_token).validate(url, params, signature):
        log.warning("twilio webhook rejected: bad signature for %s", url.split("?")[0])
        raise Rejected("the Twilio signature does not match")


def twilio_status(session: Session, ctx: Context, params: dict[str, str], message_id: str | None = None
                  ) -> dict[str, Any]:
    """A status callback: sent / delivered / undelivered / failed for the message Twilio names.

    The callback URL carries our own message id (signed with it by Twilio): a message whose answer a dispatcher
    lost (a crash between Twilio taking it and our recording it) is recognised by it and recorded as sent with
    Twilio's sid — before a reconciliation could mistake a rewritten body for "never taken" and send it again."""
    now = ctx.clock.now()
    sid, status = params.get("MessageSid", ""), params.get("MessageStatus", "")
    if not first_time(session, "twilio", f"{sid}:{status}", now):
        return {"duplicate": True}
    message = session.exec(select(Message).where(Message.provider_id == sid)).first()
    if message is None and sid and (ours := our_message_id(message_id)) is not None:
        message = _lost_message(session, ours, sid, now)
    target = TWILIO_STATUS.get(status)
    if message is None or target is None:
        return {"ignored": True}
    code = params.get("ErrorCode")
    moved = advance(session, message, target, now, f"twilio_{status}" + (f"_{code}" if code else ""))
    if target == "failed" and code == "21610":
        record_consent(session, ctx, customer_id=message.customer_id, channel=Channel.sms,
                       status=ConsentStatus.opted_out, source="twilio:21610", actor="twilio")
    return {"message_id": message.id, "status": message.status, "changed": moved}


def _lost_message(session: Session, message_id: int, sid: str, now: datetime) -> Message | None:
    """Our SMS whose provider id we never recorded (unknown, still sending, or waiting to be sent again)."""
    message = session.get(Message, message_id)
    if message is None or message.channel != "sms" or message.provider_id is not None or \
            message.status not in ("sending", "unknown", "planned") or (message.status == "planned"
                                                                        and not message.attempts):
        return None
    message.status, message.provider, message.provider_id = "sent", "twilio", sid
    message.sent_at, message.reason, message.worker, message.lease_until = now, "callback_recovered", None, None
    message.updated_at = now
    session.add(message)
    return message


def sms_keyword(body: str, keywords: KeywordSetting | None = None) -> str | None:
    """'stop', 'start' or 'help' for a reply made of one keyword (NFKC, case, surrounding punctuation and spaces
    ignored; the guard rails' lists, or their defaults), else None."""
    words = keywords or KeywordSetting()
    return compliance.reply_keyword(body, words.stop, words.start, words.help)


REPLIES = {
    ("stop", "zh"): "您已退订{shop}的短信，回复START可重新订阅。",
    ("stop", "en"): "You have been unsubscribed from {shop} texts. Reply START to subscribe again.",
    ("start", "zh"): "您已重新订阅{shop}的短信，回复TD退订。",
    ("start", "en"): "You are subscribed to {shop} texts again. Reply STOP to unsubscribe.",
    ("help", "zh"): "{shop}客服：回复TD退订，回复START重新订阅。",
    ("help", "en"): "{shop} help: reply STOP to unsubscribe, START to subscribe again.",
}


def twilio_inbound(session: Session, ctx: Context, params: dict[str, str]) -> str | None:
    """An SMS reply: STOP and its synonyms (TD, 退订 …) opt every holder of the number out at once, START/订阅 opt
    back in, HELP/帮助 answers.

    Returns the text to answer with (None: say nothing).
    """
    now = ctx.clock.now()
    if not first_time(session, "twilio", f"inbound:{params.get('MessageSid', '')}", now):
        return None
    keyword = sms_keyword(params.get("Body", ""), current_settings(session, ctx)[1].sms_keywords)
    phone = normalise_phone(params.get("From", ""), ctx.settings.default_phone_region)
    # Every customer holding the number: a number shared by a household opts all of them out, never just one.
    holders = customers_by_phone(session, ctx, phone) if phone else []
    locale = holders[0].locale if holders else ctx.settings.default_locale
    language = "zh" if locale.startswith("zh") else "en"
    if keyword is None:
        return None
    if holders and keyword in ("stop", "start"):
        status = ConsentStatus.opted_out if keyword == "stop" else ConsentStatus.opted_in
        word = compliance.normalise_reply(params.get("Body", "")).upper()[:20]
        for customer in holders:
            record_consent(session, ctx, customer_id=customer.id, channel=Channel.sms, status=status,
                           source=f"sms_reply:{word}", actor="twilio")
    elif not holders:
        log.info("inbound SMS keyword %s from a number no customer has", keyword)
    return REPLIES[(keyword, language)].format(shop=ctx.settings.shop_name)


# ---------------------------------------------------------------- SendGrid


def verify_sendgrid(ctx: Context, payload: bytes, signature: str | None, timestamp: str | None) -> None:
    """Check the signed event webhook's ECDSA signature over timestamp + body, and that the timestamp is fresh."""
    from sendgrid.helpers.eventwebhook import EventWebhook

    key = ctx.settings.sendgrid_webhook_public_key.strip()
    if not key or not signature or not timestamp:
        raise _reject("missing SendGrid signature headers or no verification key configured")
    try:
        age = ctx.clock.now().timestamp() - int(timestamp)
    except ValueError:
        raise _reject("the SendGrid timestamp is not a number") from None
    if abs(age) > ctx.settings.webhook_max_age_seconds:
        raise _reject(f"stale SendGrid event batch ({int(age)} s old)")
    pem_body = "".join(line for line in key.splitlines() if "PUBLIC KEY" not in line)
    try:
        valid = EventWebhook(pem_body).verify_signature(payload.decode(), signature, timestamp)
    except (ValueError, TypeError, UnicodeDecodeError):
        valid = False
    if not valid:
        raise _reject("the SendGrid signature does not match")


def _reject(reason: str) -> Rejected:
    log.warning("sendgrid webhook rejected: %s", reason)
    return Rejected(reason)


def sendgrid_events(session: Session, ctx: Context, events: list[dict[str, Any]]) -> dict[str, int]:
    """Apply a batch of SendGrid events: delivery, engagement, bounces and the opt-outs they carry.

    Each event is applied on its own (a savepoint): one malformed event is counted `invalid` and logged, never a
    500 for the batch — SendGrid would retry the whole batch for ever and the unsubscribes in it would never
    apply. An event without `sg_event_id` is deduplicated by a hash of its content instead of all under ""."""
    now = ctx.clock.now()
    counts = {"applied": 0, "duplicate": 0, "ignored": 0, "invalid": 0}
    for number, event in enumerate(events):
        if not isinstance(event, dict):
            counts["ignored"] += 1
            continue
        event_id = str(event.get("sg_event_id") or "") or "content:" + hashlib.sha256(
            json.dumps(event, sort_keys=True, default=str).encode()).hexdigest()
        try:
            with session.begin_nested():
                if not first_time(session, "sendgrid", event_id, now):
                    counts["duplicate"] += 1
                    continue
                counts[_sendgrid_event(session, ctx, event, now)] += 1
        except (ValueError, TypeError, OverflowError, OSError, DomainError) as bad:
            counts["invalid"] += 1
            log.warning("sendgrid event %d of the batch refused: %s", number, type(bad).__name__)
    return counts


def _event_time(event: dict[str, Any], now: datetime) -> datetime:
    """The event's own time, never later than ours (a provider clock ahead must not date a change in our future)."""
    stamp = event.get("timestamp")
    if stamp is None:
        return now
    if isinstance(stamp, bool) or not isinstance(stamp, int | float | str):
        raise ValueError("timestamp is not a number")
    return min(datetime.fromtimestamp(int(stamp), UTC), now)


def _sendgrid_event(session: Session, ctx: Context, event: dict[str, Any], now: datetime) -> str:
    """Apply one event; returns the count it belongs to (applied / ignored)."""
    kind = event.get("event")
    message = _sendgrid_message(session, event)
    at = _event_time(event, now)
    # The address's every holder (and the message's customer): an unsubscribe is the address owner's word.
    holders = sorted({*_customers_by_email(session, ctx, event),
                      *([message.customer_id] if message is not None else [])})
    if kind in ("spamreport", "unsubscribe", "group_unsubscribe", "group_resubscribe"):
        status = ConsentStatus.opted_in if kind == "group_resubscribe" else ConsentStatus.opted_out
        for customer_id in holders:
            record_consent(session, ctx, customer_id=customer_id, channel=Channel.email, status=status,
                           source=f"sendgrid:{kind}", actor="sendgrid", at=at)
    if message is None:
        return "ignored" if not holders else "applied"
    if kind == "delivered":
        advance(session, message, "delivered", now)
    elif kind in ("open", "click"):
        advance(session, message, "delivered", now)  # an open implies delivery, whatever order events come in
        if kind == "open":
            message.opened_at = message.opened_at or at
        else:
            message.clicked_at = message.clicked_at or at
            message.opened_at = message.opened_at or at
        session.add(message)
    elif kind in ("bounce", "dropped"):
        advance(session, message, "failed", now, f"sendgrid_{kind}")
    session.flush()
    return "applied"


def _sendgrid_message(session: Session, event: dict[str, Any]) -> Message | None:
    message_id = our_message_id(event.get("message_id"))
    return session.get(Message, message_id) if message_id is not None else None


def _customers_by_email(session: Session, ctx: Context, event: dict[str, Any]) -> list[int]:
    email = normalise_email(str(event.get("email", "")))
    if email is None:
        return []
    return customer_ids_by_email(session, ctx, email)


# ---------------------------------------------------------------- unsubscribe link


def unsubscribe(session: Session, ctx: Context, token: str, *, apply: bool) -> Any:
    """The customer a signed unsubscribe token names (None when forged); with apply, opt them out of email."""
    subject = ctx.cipher.verify_link("unsubscribe", token)
    if subject is None or not subject.isdigit():
        log.warning("unsubscribe link rejected: bad signature")
        return None
    customer = get_customer(session, int(subject))
    if customer is not None and apply:
        record_consent(session, ctx, customer_id=customer.id, channel=Channel.email, status=ConsentStatus.opted_out,
                       source="unsubscribe_link", actor="customer")
    return customer


def delivery_counts(session: Session, campaign_id: int | None = None) -> dict[str, dict[str, int]]:
    """Messages per channel and status (optionally of one campaign)."""
    where = "WHERE campaign_id = :campaign_id" if campaign_id is not None else ""
    rows = session.connection().execute(text(
        f"SELECT channel, status, count(*) FROM message {where} GROUP BY channel, status ORDER BY channel, status"),
        {"campaign_id": campaign_id} if campaign_id is not None else {}).all()
    out: dict[str, dict[str, int]] = {}
    for channel, status, n in rows:
        out.setdefault(channel, {})[status] = n
    return out
