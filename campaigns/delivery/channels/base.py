"""The sender protocol every channel implements, the outcomes a send can have, and how faults are classified."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

# What a send attempt can come to. `retry` is a transient fault the provider says did not take the message
# (429, 5xx, refused connection); `ambiguous` means the provider may have taken it (a read timeout, a reset
# after the request went out): it is reconciled with the provider where its API allows, else marked unknown.
SENT, RETRY, FAILED, OPTED_OUT, AMBIGUOUS = "sent", "retry", "failed", "opted_out", "ambiguous"


@dataclass(frozen=True)
class Outgoing:
    """One rendered message ready for a provider (contact data decrypted only for this call)."""

    message_id: int
    customer_id: int
    campaign: str
    channel: str
    to: tuple[str, ...]  # phone number, email address, or push tokens
    parts: dict[str, str]
    unsubscribe_url: str | None = None


@dataclass(frozen=True)
class SendResult:
    """What one send attempt came to."""

    outcome: str
    provider_id: str | None = None
    error: str | None = None
    retry_after: float | None = None  # seconds the provider asked us to wait


@dataclass
class Reconciled:
    """What the provider knows of a message whose fate we lost: `found` with its id, or not found."""

    found: bool
    provider_id: str | None = None


class Sender(Protocol):
    """A channel's way out: send one message; reconcile one whose fate is unknown, where the provider allows."""

    channel: str
    provider: str
    can_reconcile: bool

    def send(self, message: Outgoing) -> SendResult:
        """Hand one message to the provider and classify the answer (never raises for provider faults)."""
        ...

    def reconcile(self, message: Outgoing, since: datetime, known_provider_ids: frozenset[str] = frozenset()
                  ) -> Reconciled:
        """Ask the provider whether it took this message after `since` (only when can_reconcile)."""
        ...


def classify_status(status: int, retry_after: float | None = None, error: str | None = None) -> SendResult:
    """Map an HTTP error status to an outcome: 429 and 5xx are transient, other 4xx are permanent."""
    if status == 429 or status >= 500:
        return SendResult(RETRY, error=error or f"HTTP {status}", retry_after=retry_after)
    return SendResult(FAILED, error=error or f"HTTP {status}")


def parse_retry_after(value: Any, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None when absent or unreadable."""
    if value in (None, ""):
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        pass
    try:
        moment = parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    if now is None or moment is None:
        return None
    return max(0.0, (moment - now).total_seconds())


@dataclass
class RateLimiter:
    """A token bucket shared by a process's sending threads: at most `rate` sends per second, bursts of `burst`."""

    rate: float
    burst: float = 0.0
    _tokens: float = field(default=0.0, init=False)
    _stamp: float = field(default_factory=time.monotonic, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.burst = self.burst or max(1.0, self.rate / 10)
        self._tokens = self.burst

    def acquire(self) -> None:
        """Block until a send is allowed."""
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                wait = (1 - self._tokens) / self.rate
            time.sleep(wait)
