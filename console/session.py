"""Console sign-in: an API key exchanged for a signed session cookie (HttpOnly, SameSite=Strict), and the CSRF
token forms carry. The cookie names a server-side session row: signing out revokes it (a copied cookie dies with
it), and revoking the key ends every session made with it. The sign-in form carries a token of its own, matched
against a cookie set with the form (login CSRF: another site cannot sign a browser in to its own key)."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlmodel import Session

from crm.auth import Principal, console_session_principal, open_console_session, revoke_console_session
from crm.models import Role
from kit.context import Context

COOKIE = "crm_console"
LANG_COOKIE = "crm_lang"
LIFETIME = timedelta(hours=8)
SESSION_PURPOSE = "console-session"
LOGIN_PURPOSE = "console-login"
LOGIN_COOKIE = "crm_login"
LOGIN_FORM_LIFETIME = timedelta(hours=1)
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


def session_cookie(session: Session, ctx: Context, principal: Principal) -> str:
    """Open a session for a principal that just proved its API key; returns its cookie."""
    return ctx.cipher.sign_link(SESSION_PURPOSE, open_console_session(session, ctx, principal, LIFETIME))


def end_session(session: Session, ctx: Context, cookie: str | None) -> None:
    """Sign out: the session row is revoked, so the cookie stops working wherever a copy of it is."""
    subject = ctx.cipher.verify_link(SESSION_PURPOSE, cookie) if cookie else None
    if subject:
        revoke_console_session(session, ctx, subject)


def user_of(session: Session, ctx: Context, cookie: str | None) -> ConsoleUser | None:
    """The signed-in user behind a cookie: None when it is missing, forged, expired, signed out or its key was
    revoked."""
    subject = ctx.cipher.verify_link(SESSION_PURPOSE, cookie) if cookie else None
    if subject is None or len(subject) != 32:
        return None
    principal = console_session_principal(session, ctx, subject)
    return ConsoleUser(principal, csrf_token(ctx, cookie)) if principal is not None else None


def login_token(ctx: Context) -> str:
    """A fresh sign-in form token (also set as the LOGIN_COOKIE the form's post must bring back)."""
    return ctx.cipher.sign_link(LOGIN_PURPOSE, f"{int(ctx.clock.now().timestamp())}~{secrets.token_hex(8)}")


def login_token_ok(ctx: Context, form_token: str | None, cookie_token: str | None) -> bool:
    """The form's token is ours, recent, and the one this browser was given with the form."""
    if not form_token or not cookie_token or not hmac.compare_digest(form_token.encode(), cookie_token.encode()):
        return False
    subject = ctx.cipher.verify_link(LOGIN_PURPOSE, form_token)
    if subject is None or not subject.split("~")[0].isdigit():
        return False
    age = ctx.clock.now().timestamp() - int(subject.split("~")[0])
    return 0 <= age <= LOGIN_FORM_LIFETIME.total_seconds()


def csrf_token(ctx: Context, cookie: str) -> str:
    """The form token bound to one session cookie."""
    return ctx.cipher.sign_link(CSRF_PURPOSE, cookie.replace(".", "~")).rpartition(".")[2]


def csrf_ok(user: ConsoleUser, presented: str | None) -> bool:
    """Whether a form's token is this session's."""
    return bool(presented) and hmac.compare_digest(user.csrf.encode(), presented.encode())
