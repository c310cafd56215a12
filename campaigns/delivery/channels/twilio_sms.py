"""SMS through the real `twilio` SDK: messaging service or sender number, a status callback per message."""

from __future__ import annotations

import logging
import threading
import unicodedata
from datetime import datetime, timedelta

import requests
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from campaigns.delivery.channels.base import (
    AMBIGUOUS,
    FAILED,
    OPTED_OUT,
    RETRY,
    SENT,
    Outgoing,
    Reconciled,
    SendResult,
    classify_status,
    parse_retry_after,
)

# The SDK logs each request's URL, query and headers at INFO (the body is not, today); kept to warnings so a future
# SDK that logs more cannot put phone numbers into our logs.
logging.getLogger("twilio.http_client").setLevel(logging.WARNING)

INVALID_NUMBER, OPTED_OUT_NUMBER = 21211, 21610  # Twilio's codes: not a valid 'To'; the number replied STOP


class _HeaderKeepingHttpClient(TwilioHttpClient):
    """Twilio's HTTP client, keeping the last response's headers (its exceptions drop Retry-After)."""

    last_headers: dict | None = None

    def request(self, *args, **kwargs):
        response = super().request(*args, **kwargs)
        self.last_headers = dict(response.headers or {})
        return response


class TwilioSmsSender:
    """Sends SMS with Twilio's Programmable Messaging API; one SDK client per thread (they keep state)."""

    channel, provider, can_reconcile = "sms", "twilio", True

    def __init__(self, *, account_sid: str, auth_token: str, messaging_service_sid: str = "", from_number: str = "",
                 base_url: str = "", status_callback: str = "", timeout: float = 10.0,
                 clock_skew: timedelta = timedelta(minutes=15)) -> None:
        if not (messaging_service_sid or from_number):
            raise ValueError("twilio needs a messaging service sid or a from number")
        self._account_sid, self._auth_token = account_sid, auth_token
        self._service, self._from = messaging_service_sid, from_number
        self._base_url, self._callback, self._timeout = base_url, status_callback, timeout
        self._skew = clock_skew
        self._local = threading.local()

    def _client(self) -> Client:
        client = getattr(self._local, "client", None)
        if client is None:
            http = _HeaderKeepingHttpClient(timeout=self._timeout)
            client = Client(self._account_sid, self._auth_token, http_client=http)
            if self._base_url:
                client.api.base_url = self._base_url  # the documented way to aim the SDK at another host
            self._local.client = client
        return client

    def send(self, message: Outgoing) -> SendResult:
        """Create the message at Twilio; classify Twilio's error codes and transport faults."""
        client = self._client()
        options = {"to": message.to[0], "body": message.parts["body"]}
        options |= {"messaging_service_sid": self._service} if self._service else {"from_": self._from}
        if self._callback:
            options["status_callback"] = f"{self._callback}?message_id={message.message_id}"
        try:
            created = client.messages.create(**options)
        except TwilioRestException as error:
            if error.code == OPTED_OUT_NUMBER:
                return SendResult(OPTED_OUT, error=f"twilio {error.code}: the number has opted out")
            if error.code == INVALID_NUMBER:
                return SendResult(FAILED, error=f"twilio {error.code}: invalid 'To' number")
            headers = client.http_client.last_headers or {}
            return classify_status(error.status, parse_retry_after(headers.get("Retry-After")),
                                   f"twilio {error.code or error.status}: {error.msg}"[:500])
        except requests.exceptions.ConnectionError as error:
            # Refused or unreachable: the request never reached Twilio. A reset while reading the answer may
            # have been taken: requests names that a ConnectionError too, so look for the read side.
            if isinstance(error, requests.exceptions.ConnectTimeout) or "NewConnectionError" in str(error) \
                    or "Connection refused" in str(error):
                return SendResult(RETRY, error=f"twilio unreachable: {type(error).__name__}")
            return SendResult(AMBIGUOUS, error=f"twilio connection lost: {type(error).__name__}")
        except requests.exceptions.Timeout as error:
            return SendResult(AMBIGUOUS, error=f"twilio timed out: {type(error).__name__}")
        return SendResult(SENT, provider_id=created.sid)

    def reconcile(self, message: Outgoing, since: datetime, known_provider_ids: frozenset[str] = frozenset()
                  ) -> Reconciled:
        """Find the message Twilio took, if it did: among the messages to the recipient created since `since`
        (less the clock-skew margin — our host's clock may run ahead of Twilio's), the one with our body (also
        when Twilio rewrote it: smart encoding, an appended opt-out footer), else any that none of our messages
        claims. `known_provider_ids`: the sids our other messages to this customer already hold."""
        earliest = since - self._skew
        listed = self._client().messages.list(to=message.to[0], limit=100)
        candidates = [item for item in listed if item.sid not in known_provider_ids
                      and ((item.date_created or item.date_sent) is None
                           or (item.date_created or item.date_sent) >= earliest)]
        ours = _comparable(message.parts["body"])
        for item in candidates:
            theirs = _comparable(item.body or "")
            if theirs == ours or theirs.startswith(ours) or (ours.startswith(theirs) and len(theirs) > 20):
                return Reconciled(True, item.sid)
        # Unclaimed by any message of ours yet sent to this number in the window: ours, rewritten beyond
        # recognition. Claiming it can at worst miss a send; resending could send twice.
        return Reconciled(True, candidates[-1].sid) if candidates else Reconciled(False)


def _comparable(body: str) -> str:
    """A body as compared after Twilio may have re-encoded it: NFKC, smart quotes and dashes plain, no spaces."""
    plain = unicodedata.normalize("NFKC", body).translate(SMART_CHARACTERS)
    return "".join(plain.split())


SMART_CHARACTERS = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"', "–": "-", "—": "-", "…": "..."})
