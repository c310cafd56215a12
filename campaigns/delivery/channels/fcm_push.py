"""App push through Firebase Cloud Messaging's HTTP v1 API, authorised by a service account (google-auth)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import requests
from google.auth.transport.requests import AuthorizedSession
from google.oauth2 import service_account

from campaigns.delivery.channels.base import (
    AMBIGUOUS,
    FAILED,
    RETRY,
    SENT,
    Outgoing,
    Reconciled,
    SendResult,
    classify_status,
    parse_retry_after,
)

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


def _fcm_error(response: requests.Response) -> str:
    try:
        error = response.json().get("error", {})
    except ValueError:
        return f"HTTP {response.status_code}"
    codes = [d.get("errorCode") for d in error.get("details", []) if d.get("errorCode")]
    return codes[0] if codes else error.get("status") or f"HTTP {response.status_code}"


class FcmPushSender:
    """One FCM message per registration token; the message counts as sent when any token took it."""

    channel, provider, can_reconcile = "push", "fcm", False

    def __init__(self, *, project_id: str, service_account_file: Path, base_url: str = "https://fcm.googleapis.com",
                 timeout: float = 10.0) -> None:
        info = json.loads(Path(service_account_file).read_text())
        # token_uri comes from the service account file, so a local fake can stand in for Google's token server.
        self._credentials = service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
        self._url = f"{base_url.rstrip('/')}/v1/projects/{project_id}/messages:send"
        self._timeout = timeout
        self._local = threading.local()

    def _session(self) -> AuthorizedSession:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = AuthorizedSession(self._credentials)
        return session

    def send(self, message: Outgoing) -> SendResult:
        """Send to each token; UNREGISTERED and INVALID_ARGUMENT tokens fail, QUOTA_EXCEEDED/UNAVAILABLE retry."""
        results = []
        for token in message.to:
            body = {"message": {"token": token, "notification": {"title": message.parts.get("title", ""),
                                                                 "body": message.parts["body"]},
                                "data": {"message_id": str(message.message_id), "campaign": message.campaign}}}
            try:
                response = self._session().post(self._url, json=body, timeout=self._timeout)
            except requests.exceptions.ConnectTimeout:
                results.append(SendResult(RETRY, error="fcm unreachable"))
                continue
            except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as error:
                refused = "Connection refused" in str(error) or "NewConnectionError" in str(error)
                results.append(SendResult(RETRY if refused else AMBIGUOUS, error=f"fcm {type(error).__name__}"))
                continue
            if response.status_code == 200:
                results.append(SendResult(SENT, provider_id=response.json().get("name")))
            else:
                results.append(classify_status(response.status_code,
                                               parse_retry_after(response.headers.get("Retry-After")),
                                               f"fcm {_fcm_error(response)}"))
        for outcome in (SENT, AMBIGUOUS, RETRY):  # any token taken wins; then the most cautious reading
            for result in results:
                if result.outcome == outcome:
                    return result
        return results[0] if results else SendResult(FAILED, error="no push token")

    def reconcile(self, message: Outgoing, since, known_provider_ids: frozenset[str] = frozenset()) -> Reconciled:  # pragma: no cover - can_reconcile is False
        """FCM cannot be asked about a message after the fact."""
        raise NotImplementedError
