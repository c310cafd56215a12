"""Failed-credential throttling: after `limit` failed API-key attempts for one bucket within `window` — a client
address and the key prefix it presented — further failures there are answered 429 (with Retry-After) until the
oldest leaves the window; an address rotating prefixes meets its own bucket at `ADDRESS_FACTOR` × the limit.
Valid keys are checked first and never refused (see crm.auth). Kept in the process's memory, so each API worker
counts for itself (a limit of N allows at most N × workers guesses per window)."""

from __future__ import annotations

import threading
from collections import deque
from datetime import datetime, timedelta

ADDRESS_FACTOR = 5  # failures one address may make across all prefixes, as a multiple of the per-prefix limit


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

    def _limit(self, bucket: str) -> int:
        return self.limit if "|" in bucket else self.limit * ADDRESS_FACTOR

    def wait_seconds(self, buckets: str | tuple[str, ...], now: datetime) -> int:
        """0 when every bucket may still fail; otherwise how long until the fullest one may."""
        with self._lock:
            waits = []
            for bucket in (buckets,) if isinstance(buckets, str) else buckets:
                failures = self._recent(bucket, now)
                if len(failures) >= self._limit(bucket):
                    waits.append(max(1, int((failures[0] + self.window - now).total_seconds()) + 1))
            return max(waits, default=0)

    def failed(self, buckets: str | tuple[str, ...], now: datetime) -> None:
        """Count one failed attempt in each bucket."""
        with self._lock:
            for bucket in (buckets,) if isinstance(buckets, str) else buckets:
                self._recent(bucket, now)
                self._failures.setdefault(bucket, deque()).append(now)
