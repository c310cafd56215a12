"""Senders that need no provider: the console (demo and development) and phone-call tasks for VIP agents."""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from campaigns.delivery.channels.base import SENT, Outgoing, Reconciled, SendResult


class ConsoleSender:
    """Prints one line per message (the customer id, never contact data); for the demo and development."""

    provider, can_reconcile = "console", False

    def __init__(self, channel: str, stream: TextIO | None = None, show: int | None = None) -> None:
        self.channel, self._stream, self._show = channel, stream or sys.stdout, show
        self._lock = threading.Lock()
        self.sent = 0

    def send(self, message: Outgoing) -> SendResult:
        """Print the message's first part (only the first `show` messages, when set)."""
        with self._lock:
            self.sent += 1
            if self._show is None or self.sent <= self._show:
                text = message.parts.get("subject") or message.parts.get("title") or message.parts.get("body", "")
                self._stream.write(f"[{self.channel}] #{message.message_id} → customer {message.customer_id}: "
                                   f"{text[:80]}\n")
        return SendResult(SENT, provider_id=f"console-{message.message_id}")

    def reconcile(self, message: Outgoing, since, known_provider_ids: frozenset[str] = frozenset()) -> Reconciled:  # pragma: no cover - can_reconcile is False
        """The console keeps nothing."""
        raise NotImplementedError


class CallTaskSender:
    """VIP calls: the dispatcher writes a call task in the same transaction that records the message as sent.

    Nothing leaves the process, so a lost fate is simply not found (the task and the status commit together).
    """

    channel, provider, can_reconcile = "phone", "tasks", True

    def send(self, message: Outgoing) -> SendResult:
        """Accept the message; the task row is written with the result."""
        return SendResult(SENT, provider_id=f"task-{message.message_id}")

    def reconcile(self, message: Outgoing, since, known_provider_ids: frozenset[str] = frozenset()) -> Reconciled:
        """A task committed with its message would not be in doubt: not found, safe to create again."""
        return Reconciled(False)
