"""HTTP for delivery: provider webhooks (signed), the unsubscribe link, VIP call tasks, retries and a dispatch pass."""

from __future__ import annotations

import html
import json
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from campaigns import service, tasks, webhooks
from crm.api import ContextDep, SessionDep
from crm.auth import Principal, require
from crm.errors import InvalidInput
from crm.models import Role

router = APIRouter()
AGENTS = (Role.admin, Role.support)


def _public_url(request: Request, ctx) -> str:
    """The URL the provider called, as configured (behind a proxy the request's own host is not it)."""
    query = f"?{request.url.query}" if request.url.query else ""
    return f"{ctx.settings.public_base_url.rstrip('/')}{request.url.path}{query}"


async def _form(request: Request) -> dict[str, str]:
    """Twilio posts application/x-www-form-urlencoded; every field counts for the signature."""
    return dict(parse_qsl((await request.body()).decode(errors="replace"), keep_blank_values=True))


@router.post("/webhooks/twilio/status", tags=["webhooks"])
async def twilio_status(request: Request, session: SessionDep, ctx: ContextDep) -> dict[str, Any]:
    """Twilio's message status callback (X-Twilio-Signature checked; a repeat changes nothing)."""
    params = await _form(request)
    webhooks.verify_twilio(ctx, _public_url(request, ctx), params, request.headers.get("X-Twilio-Signature"))
    return await run_in_threadpool(webhooks.twilio_status, session, ctx, params,
                                   request.query_params.get("message_id"))


@router.post("/webhooks/twilio/inbound", tags=["webhooks"], response_class=Response)
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


@router.post("/webhooks/sendgrid/events", tags=["webhooks"])
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


# The unsubscribe page takes a click: it must never be framed by another site (clickjacking).
PAGE_HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                "form-action 'self'; frame-ancestors 'none'", "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' "
                        f"content='width=device-width'><title>{html.escape(title)}</title></head>"
                        f"<body style='font-family:sans-serif;max-width:32em;margin:3em auto'>{body}</body></html>",
                        status_code=status, headers=PAGE_HEADERS)


@router.get("/unsubscribe/{token}", tags=["unsubscribe"], response_class=HTMLResponse)
def unsubscribe_page(token: str, session: SessionDep, ctx: ContextDep) -> HTMLResponse:
    """A confirmation page (a GET changes nothing: mail scanners follow links)."""
    if webhooks.unsubscribe(session, ctx, token, apply=False) is None:
        return _page("Invalid link", "<p>This unsubscribe link is not valid. / 此退订链接无效。</p>", 404)
    return _page("Unsubscribe", f"<p>Stop emails from {html.escape(ctx.settings.shop_name)}? / 退订邮件？</p>"
                 f"<form method='post'><button type='submit'>Unsubscribe / 退订</button></form>")


@router.post("/unsubscribe/{token}", tags=["unsubscribe"], response_class=HTMLResponse)
def unsubscribe(token: str, session: SessionDep, ctx: ContextDep) -> HTMLResponse:
    """Opt the link's customer out of email, no login needed (also RFC 8058 one-click from mail clients)."""
    if webhooks.unsubscribe(session, ctx, token, apply=True) is None:
        return _page("Invalid link", "<p>This unsubscribe link is not valid. / 此退订链接无效。</p>", 404)
    return _page("Unsubscribed", "<p>You will get no more marketing email from us. / 您已退订营销邮件。</p>")


@router.get("/tasks", tags=["tasks"])
def get_tasks(session: SessionDep, ctx: ContextDep, status: str | None = Query(None, pattern="^(open|claimed|done)$"),
              limit: int = Query(100, ge=1, le=1000),
              principal: Principal = Depends(require(*AGENTS))) -> list[dict[str, Any]]:
    """VIP call tasks, oldest first (the number is shown in full only to the agent holding the task)."""
    return tasks.list_tasks(session, ctx, principal.actor, status, limit)


@router.post("/tasks/{task_id}/claim", tags=["tasks"])
def claim_task(task_id: int, session: SessionDep, ctx: ContextDep,
               principal: Principal = Depends(require(*AGENTS))) -> dict[str, Any]:
    """Take a call task (audited: it reveals the number)."""
    return tasks.claim_task(session, ctx, task_id, principal.actor)


@router.post("/tasks/{task_id}/outcome", tags=["tasks"])
def task_outcome(task_id: int, session: SessionDep, ctx: ContextDep,
                 outcome: Annotated[str, Body(embed=True, description=", ".join(tasks.OUTCOMES))],
                 notes: Annotated[str | None, Body(embed=True, max_length=2000)] = None,
                 principal: Principal = Depends(require(*AGENTS))) -> dict[str, Any]:
    """Record the call's outcome; it is the message's delivery (declined also opts out of calls)."""
    return tasks.record_outcome(session, ctx, task_id, outcome, notes, principal.actor)


@router.post("/messages/{message_id}/retry", tags=["campaigns"])
def retry_message(message_id: int, session: SessionDep, ctx: ContextDep,
                  principal: Principal = Depends(require(Role.admin))) -> dict[str, Any]:
    """Send a dead, failed or unknown message again (admin; audited)."""
    return service.messages_json([tasks.retry_message(session, ctx, message_id, principal.actor)])[0]


@router.get("/messages/counts", tags=["campaigns"])
def message_counts(session: SessionDep, campaign_id: int | None = None,
                   _: Principal = Depends(require(Role.admin, Role.marketer, Role.scheduler, Role.support))
                   ) -> dict[str, dict[str, int]]:
    """Messages per channel and status."""
    return webhooks.delivery_counts(session, campaign_id)


def install(app: FastAPI) -> None:
    """Wire delivery routes into the app."""
    app.include_router(router)
