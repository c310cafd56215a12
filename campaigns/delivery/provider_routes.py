"""Webhook routes of the sender providers (registered with them in campaigns.delivery.channels): Twilio's status
callbacks and inbound SMS, SendGrid's event webhook; every request's signature is checked first."""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from campaigns.delivery import webhooks
from campaigns.schemas import TwilioStatusResult
from crm.api import ContextDep, SessionDep
from kit import http
from kit.errors import InvalidInput

twilio_routes = APIRouter()
sendgrid_routes = APIRouter()


def _public_url(request: Request, ctx) -> str:
    """The URL the provider called, as configured (behind a proxy the request's own host is not it)."""
    query = f"?{request.url.query}" if request.url.query else ""
    return f"{ctx.settings.public_base_url.rstrip('/')}{request.url.path}{query}"


async def _form(request: Request) -> dict[str, str]:
    """Twilio posts application/x-www-form-urlencoded; every field counts for the signature."""
    return dict(parse_qsl((await request.body()).decode(errors="replace"), keep_blank_values=True))


TWILIO_FORM = "application/x-www-form-urlencoded"
TWILIO_STATUS_BODY = http.raw_body_doc(
    {TWILIO_FORM: {"MessageSid": "SM1f0e8ae6ade43cb3c0ce4525424e404f", "MessageStatus": "delivered",
                   "AccountSid": "AC00000000000000000000000000000000", "To": "+8613800138000"}},
    "Twilio's status callback fields, signed in X-Twilio-Signature",
    {"type": "object", "properties": {"MessageSid": {"type": "string"}, "MessageStatus": {"type": "string"},
                                      "ErrorCode": {"type": "string"}}})
TWILIO_INBOUND_BODY = http.raw_body_doc(
    {TWILIO_FORM: {"MessageSid": "SM2a0e8ae6ade43cb3c0ce4525424e4050", "From": "+8613800138000", "Body": "TD"}},
    "an inbound SMS, signed in X-Twilio-Signature",
    {"type": "object", "properties": {"MessageSid": {"type": "string"}, "From": {"type": "string"},
                                      "Body": {"type": "string"}}})
SENDGRID_BODY = http.raw_body_doc(
    {"application/json": [{"email": "ana.li@example.com", "event": "delivered", "timestamp": 1796360400,
                           "sg_event_id": "ZGVsaXZlcmVkLTAtMjQ", "message_id": "1842"}]},
    "SendGrid's event batch, signed (ECDSA) in X-Twilio-Email-Event-Webhook-Signature",
    {"type": "array", "items": {"type": "object", "properties": {"event": {"type": "string"},
                                                                 "sg_event_id": {"type": "string"}}}})


@twilio_routes.post("/webhooks/twilio/status", tags=["webhooks"], response_model=TwilioStatusResult,
                    response_model_exclude_unset=True, openapi_extra=TWILIO_STATUS_BODY)
async def twilio_status(request: Request, session: SessionDep, ctx: ContextDep,
                        message_id: Annotated[str | None, Query(max_length=40, description="ours, set on the "
                                                                "callback URL when the message was sent")] = None
                        ) -> dict[str, Any]:
    """Twilio's message status callback (X-Twilio-Signature checked; a repeat changes nothing)."""
    params = await _form(request)
    webhooks.verify_twilio(ctx, _public_url(request, ctx), params, request.headers.get("X-Twilio-Signature"))
    return await run_in_threadpool(webhooks.twilio_status, session, ctx, params, message_id)


@twilio_routes.post("/webhooks/twilio/inbound", tags=["webhooks"], response_class=Response,
                    openapi_extra=TWILIO_INBOUND_BODY | {"responses": {"200": {
                        "description": "TwiML: the reply to send, if any",
                        "content": {"application/xml": {"schema": {"type": "string"}, "example":
                                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>"
                                    "You are unsubscribed.</Message></Response>"}}}}})
async def twilio_inbound(request: Request, session: SessionDep, ctx: ContextDep) -> Response:
    """Inbound SMS: STOP and synonyms (退订, TD) opt out, START/UNSTOP/YES opt in, HELP/INFO answers (TwiML)."""
    from twilio.twiml.messaging_response import MessagingResponse

    params = await _form(request)
    webhooks.verify_twilio(ctx, _public_url(request, ctx), params, request.headers.get("X-Twilio-Signature"))
    reply = await run_in_threadpool(webhooks.twilio_inbound, session, ctx, params)
    twiml = MessagingResponse()
    if reply:
        twiml.message(reply)
    return Response(str(twiml), media_type="application/xml")


@sendgrid_routes.post("/webhooks/sendgrid/events", tags=["webhooks"], openapi_extra=SENDGRID_BODY)
async def sendgrid_events(request: Request, session: SessionDep, ctx: ContextDep) -> dict[str, int]:
    """SendGrid's signed event webhook (ECDSA over timestamp + body; stale batches refused)."""
    payload = await request.body()
    webhooks.verify_sendgrid(ctx, payload, request.headers.get("X-Twilio-Email-Event-Webhook-Signature"),
                             request.headers.get("X-Twilio-Email-Event-Webhook-Timestamp"))
    try:
        events = json.loads(payload)
    except (ValueError, RecursionError) as error:  # a body nested 100k deep exhausts the parser's stack
        raise InvalidInput("the body is not JSON", errors=[{"field": "body", "reason": type(error).__name__}]
                           ) from error
    if not isinstance(events, list):
        raise InvalidInput("expected a JSON array of events", errors=[{"field": "body", "reason": "not an array"}])
    return await run_in_threadpool(webhooks.sendgrid_events, session, ctx, events)
