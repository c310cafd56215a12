"""HTTP for delivery: the unsubscribe link, VIP call tasks, retries, message counts, and the providers' webhooks."""

from __future__ import annotations

import html
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query
from fastapi.responses import HTMLResponse

from campaigns.delivery import outbox, tasks, webhooks
from campaigns.delivery.channels import PROVIDERS
from campaigns.schemas import MessageCounts, MessageRead, TaskOutcome, TaskRead
from crm.api import ContextDep, SessionDep
from crm.auth import Principal, require
from crm.models import Role
from kit.http import Page, PageDep

router = APIRouter()
AGENTS = (Role.admin, Role.support)


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


@router.get("/tasks", tags=["tasks"], response_model=Page[TaskRead])
def get_tasks(session: SessionDep, ctx: ContextDep, page: PageDep,
              status: str | None = Query(None, pattern="^(open|claimed|done)$", description="only tasks in it"),
              principal: Principal = Depends(require(*AGENTS))) -> dict[str, Any]:
    """VIP call tasks, oldest first (the number is shown in full only to the agent holding the task)."""
    rows = tasks.list_tasks(session, ctx, principal.actor, status, page.limit, after=page.after())
    return {"items": rows, "next_cursor": page.next_after(rows, lambda task: task["id"])}


@router.post("/tasks/{task_id}/claim", tags=["tasks"], response_model=TaskRead)
def claim_task(task_id: int, session: SessionDep, ctx: ContextDep,
               principal: Principal = Depends(require(*AGENTS))) -> dict[str, Any]:
    """Take a call task (audited: it reveals the number)."""
    return tasks.claim_task(session, ctx, task_id, principal.actor)


@router.post("/tasks/{task_id}/outcome", tags=["tasks"], response_model=TaskRead)
def task_outcome(task_id: int, body: TaskOutcome, session: SessionDep, ctx: ContextDep,
                 principal: Principal = Depends(require(*AGENTS))) -> dict[str, Any]:
    """Record the call's outcome; it is the message's delivery (declined also opts out of calls)."""
    return tasks.record_outcome(session, ctx, task_id, body.outcome, body.notes, principal.actor)


@router.post("/messages/{message_id}/retry", tags=["campaigns"], response_model=MessageRead)
def retry_message(message_id: int, session: SessionDep, ctx: ContextDep,
                  principal: Principal = Depends(require(Role.admin))) -> dict[str, Any]:
    """Send a dead, failed or unknown message again (admin; audited)."""
    return outbox.messages_json(session, [tasks.retry_message(session, ctx, message_id, principal.actor)])[0]


@router.get("/messages/counts", tags=["campaigns"], response_model=MessageCounts)
def message_counts(session: SessionDep,
                   campaign_id: Annotated[int | None, Query(description="only this campaign's messages")] = None,
                   _: Principal = Depends(require(Role.admin, Role.marketer, Role.scheduler, Role.support))
                   ) -> dict[str, dict[str, int]]:
    """Messages per channel and status."""
    return webhooks.delivery_counts(session, campaign_id)


def install(app: FastAPI) -> None:
    """Wire delivery routes into the app, with every registered provider's webhook routes."""
    app.include_router(router)
    for provider in PROVIDERS.values():
        if provider.routes is not None:
            app.include_router(provider.routes())
