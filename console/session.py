"""Console sign-in: an API key exchanged for a signed session cookie (HttpOnly, SameSite=Strict), and the CSRF
token forms carry. The cookie names the key, not the secret: revoking the key ends every session made with it."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session

from crm.auth import Principal
from crm.context import Context
from crm.models import ApiKey, Role

COOKIE = "crm_console"
LANG_COOKIE = "crm_lang"
LIFETIME = timedelta(hours=8)
SESSION_PURPOSE = "console-session"
CSRF_PURPOSE = "console-csrf"


@dataclass(frozen=True)
class ConsoleUser:
    """Who is signed in to the console, and the CSRF token their forms must carry."""

    principal: Principal
    csrf: str

    @property
    def role(self) -> Role:
        """The key's role."""
        return self.principal.role


def session_cookie(ctx: Context, principal: Principal) -> str:
    """The session cookie for a principal that just proved its API key."""
    subject = f"{principal.key_id}:{int(ctx.clock.now().timestamp())}:{secrets.token_hex(8)}"
    return ctx.cipher.sign_link(SESSION_PURPOSE, subject)


def user_of(session: Session, ctx: Context, cookie: str | None) -> ConsoleUser | None:
    """The signed-in user behind a cookie: None when it is missing, forged, expired or its key was revoked."""
    subject = ctx.cipher.verify_link(SESSION_PURPOSE, cookie) if cookie else None
    if subject is None:
        return None
    key_id, issued, _ = subject.split(":")
    issued_at = datetime.fromtimestamp(int(issued), tz=ctx.clock.now().tzinfo)
    if not timedelta(0) <= ctx.clock.now() - issued_at <= LIFETIME:
        return None
    record = session.get(ApiKey, int(key_id))
    if record is None or record.revoked_at is not None:
        return None
    principal = Principal(key_id=record.id, name=record.name, role=Role(record.role))
    return ConsoleUser(principal, csrf_token(ctx, cookie))


def csrf_token(ctx: Context, cookie: str) -> str:
    """The form token bound to one session cookie."""
    return ctx.cipher.sign_link(CSRF_PURPOSE, cookie.replace(".", "~")).rpartition(".")[2]


def csrf_ok(user: ConsoleUser, presented: str | None) -> bool:
    """Whether a form's token is this session's."""
    return bool(presented) and hmac.compare_digest(user.csrf, presented)
