"""Email through the real `sendgrid` SDK: our message id in custom args, List-Unsubscribe headers, an ASM group."""

from __future__ import annotations

import logging
import socket
import urllib.error

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Asm, CustomArg, Header, Mail

from campaigns.delivery.channels.base import (
    AMBIGUOUS,
    RETRY,
    SENT,
    Outgoing,
    Reconciled,
    SendResult,
    classify_status,
    parse_retry_after,
)

# The SDK's HTTP client logs every request payload at DEBUG — the recipient's address and the whole message. Never
# below INFO, whatever the root logger says (a test scans DEBUG logs for contact data).
logging.getLogger("python_http_client.client").setLevel(logging.INFO)


class SendGridEmailSender:
    """Sends email with SendGrid's v3 Mail Send API. SendGrid offers no lookup by our id: lost fates stay unknown."""

    channel, provider, can_reconcile = "email", "sendgrid", False

    def __init__(self, *, api_key: str, from_email: str, base_url: str = "https://api.sendgrid.com",
                 unsubscribe_group_id: int | None = None, timeout: float = 10.0) -> None:
        self._client = SendGridAPIClient(api_key=api_key, host=base_url)
        # Read by every request the SDK builds from this client (python_http_client copies it down).
        self._client.client.timeout = timeout
        self._from, self._group = from_email, unsubscribe_group_id

    def mail(self, message: Outgoing) -> Mail:
        """The SendGrid mail for one message: both parts, our id as a custom arg, one-click unsubscribe headers."""
        mail = Mail(from_email=self._from, to_emails=message.to[0], subject=message.parts["subject"],
                    plain_text_content=message.parts["text"], html_content=message.parts["html"])
        mail.custom_arg = [CustomArg("message_id", str(message.message_id)), CustomArg("campaign", message.campaign)]
        if message.unsubscribe_url:
            # RFC 8058: mail clients offer a one-click unsubscribe that POSTs to the link.
            mail.header = [Header("List-Unsubscribe", f"<{message.unsubscribe_url}>"),
                           Header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]
        if self._group is not None:
            mail.asm = Asm(self._group)
        return mail

    def send(self, message: Outgoing) -> SendResult:
        """Post the mail; 202 carries SendGrid's id in X-Message-Id."""
        try:
            response = self._client.send(self.mail(message))
        except HTTPError as error:
            headers = dict(error.headers or {})
            body = error.body.decode(errors="replace") if isinstance(error.body, bytes) else str(error.body)
            return classify_status(error.status_code, parse_retry_after(headers.get("Retry-After")),
                                   f"sendgrid {error.status_code}: {body}"[:500])
        except urllib.error.URLError as error:
            if isinstance(error.reason, ConnectionRefusedError | socket.gaierror):
                return SendResult(RETRY, error=f"sendgrid unreachable: {error.reason}")
            return SendResult(AMBIGUOUS, error=f"sendgrid connection lost: {error.reason}")
        except (TimeoutError, ConnectionError) as error:
            return SendResult(AMBIGUOUS, error=f"sendgrid {type(error).__name__}")
        headers = {k.lower(): v for k, v in dict(response.headers or {}).items()}
        return SendResult(SENT, provider_id=headers.get("x-message-id"))

    def reconcile(self, message: Outgoing, since, known_provider_ids: frozenset[str] = frozenset()) -> Reconciled:  # pragma: no cover - can_reconcile is False
        """SendGrid cannot be asked about a message by our id."""
        raise NotImplementedError
