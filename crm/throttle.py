"""Failed-credential throttling: after `limit` failed API-key attempts from one client within `window`, that client
is refused (429 with Retry-After) until its oldest failure leaves the window. Kept in the process's memory, so
each API worker counts for itself (a limit of N allows at most N × workers guesses per window)."""

from __future__ import annotations

import threading
from collections import deque
from datetime import datetime, timedelta


class FailureThrottle:
    """Sliding-window counts of failed attempts per client address."""

    def __init__(self, limit: int, window: timedelta) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[datetime]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: datetime) -> deque[datetime]:
        failures = self._failures.setdefault(client, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[client]  # forget quiet clients: memory stays bounded by active attackers
            return deque()
        return failures

    def wait_seconds(self, client: str, now: datetime) -> int:
        """0 when the client may try; otherwise how long until it may."""
        with self._lock:
            failures = self._recent(client, now)
            if len(failures) < self.limit:
                return 0
            return max(1, int((failures[0] + self.window - now).total_seconds()) + 1)

    def failed(self, client: str, now: datetime) -> None:
        """Count one failed attempt."""
        with self._lock:
            self._recent(client, now)
            self._failures.setdefault(client, deque()).append(now)
