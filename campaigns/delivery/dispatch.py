"""The outbox dispatcher: claim due messages, check them again at send time, send, record — never twice.

A message moves planned → sending → sent → delivered / failed, or to dead (attempts used up), unknown (the
provider may have it and cannot be asked), skipped (opted out, capped or no contact at send time) or expired.

No duplicates, by construction:
- the claim (`FOR UPDATE SKIP LOCKED` on PostgreSQL; one writer on SQLite) commits `sending` before any
  provider call, so two workers never hold one message;
- a worker killed between the provider call and recording its answer leaves `sending` rows whose lease runs
  out; they become `unknown`, and are resent only when the provider can tell us it never took them (Twilio's
  message list; our own call tasks). Otherwise they wait for an admin: a duplicate is worse than a miss.
- caps are checked again at claim time against what was really sent, under a per-customer advisory lock on
  PostgreSQL, so concurrent workers cannot both take a customer's last slot.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import polars as pl
from sqlalchemy import and_, bindparam, func, select, text, update
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from campaigns.authoring import rendering
from campaigns.authoring.templates import find_template, message_context, offer_for_template
from campaigns.delivery.channels.base import (
    AMBIGUOUS,
    FAILED,
    OPTED_OUT,
    RETRY,
    SENT,
    Outgoing,
    RateLimiter,
    Sender,
    SendResult,
)
from campaigns.models import CallTask, Campaign, Journey, Message
from campaigns.planning.caps import COUNTED_STATUSES, LEDGER_SCHEMA, check_at_send
from campaigns.planning.guardrails import guard_rails
from campaigns.planning.quiet_hours import defer_out_of_quiet_hours
from crm.models import Channel, ConsentStatus
from crm.service import consents_of, contacts_of, phone_sharers, record_consent, time_zones_of
from kit import metrics
from kit.channels import CHANNELS
from kit.clock import ensure_utc
from kit.context import Context
from kit.db import is_postgres, session_scope, writer_engine
from kit.locks import try_lock
from segmentation.service import segments_frame

log = logging.getLogger(__name__)
CALL_TASKS = "tasks"  # the provider whose sends become call tasks for agents
ADVISORY_NAMESPACE = 7007  # pg_advisory_xact_lock(namespace, customer_id): customers being admitted
M = Message.__table__
CLAIMED = tuple(M.c[name] for name in (
    "id", "campaign_id", "occurrence", "customer_id", "channel", "priority", "transactional", "send_at", "expires_at",
    "template", "locale", "offer", "coupon_code", "valid_until", "attempts"))


def backoff_seconds(attempt: int, base: float, cap: float, rng: random.Random, retry_after: float | None = None
                    ) -> float:
    """Exponential backoff with equal jitter; a provider's Retry-After is a floor, never shortened."""
    exponential = min(cap, base * 2 ** max(0, attempt - 1))
    delay = exponential / 2 + rng.uniform(0, exponential / 2)
    return max(delay, retry_after or 0.0)


@dataclass
class BatchReport:
    """What one pass of the dispatcher did, counted by outcome."""

    counts: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)  # where the time went, per phase

    def add(self, key: str, value: int = 1) -> None:
        """Count one outcome."""
        if value:
            self.counts[key] += value

    def merge(self, other: BatchReport) -> None:
        """Add another report's counts and times to this one."""
        self.counts.update(other.counts)
        self.seconds.update(other.seconds)


def worker_name() -> str:
    """A name for this worker process (host and pid), stored on the messages it holds."""
    return f"{socket.gethostname()}:{os.getpid()}"[:64]


# ---------------------------------------------------------------- claim and admit (one transaction)


def _rows(result) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in result]


def _set(session: Session, message_id: int, **values: Any) -> None:
    session.connection().execute(update(M).where(M.c.id == message_id).values(**values))


def recover_orphans(session: Session, now: datetime) -> int:
    """Messages held by a worker whose lease ran out: their fate is unknown (the worker may have sent them)."""
    result = session.connection().execute(update(M).where(M.c.status == "sending", M.c.lease_until < now).values(
        status="unknown", reason="worker_lost", lease_until=None, updated_at=now))
    return result.rowcount or 0


def claim(session: Session, now: datetime, worker: str, lease: timedelta, limit: int) -> list[dict[str, Any]]:
    """Take up to `limit` due planned messages for this worker (skipping rows other workers hold)."""
    live = select(Campaign.__table__.c.id).where(Campaign.__table__.c.status == "active")
    # A journey's messages carry its id negated (campaigns.models.journey_sender).
    live_journeys = select(-Journey.__table__.c.id).where(Journey.__table__.c.status == "active")
    # A paused or archived campaign's (or journey's) messages wait (paused) or lapse (archived): never sent behind
    # its back.
    picked = select(M.c.id).where(M.c.status == "planned", M.c.send_at <= now,
                                  M.c.campaign_id.in_(live) | M.c.campaign_id.in_(live_journeys)).order_by(
        M.c.priority.desc(), M.c.send_at, M.c.id).limit(limit)
    if is_postgres(session):
        picked = picked.with_for_update(skip_locked=True)
    result = session.connection().execute(update(M).where(M.c.id.in_(picked)).values(
        status="sending", worker=worker, lease_until=now + lease, attempts=M.c.attempts + 1, updated_at=now
    ).returning(*CLAIMED))
    return sorted(_rows(result), key=lambda r: (-r["priority"], r["id"]))


def _lock_customers(session: Session, customer_ids: list[int]) -> None:
    """Serialise admission per customer across workers (sorted, so two workers never wait on each other)."""
    if is_postgres(session) and customer_ids:
        session.connection().execute(text(
            "SELECT pg_advisory_xact_lock(:ns, k) FROM (SELECT unnest(CAST(:ids AS int[])) AS k ORDER BY 1) s"),
            {"ns": ADVISORY_NAMESPACE, "ids": sorted(set(customer_ids))})


def _send_time_ledger(session: Session, customer_ids: list[int], exclude: list[int], start: datetime
                      ) -> pl.DataFrame:
    """The cap ledger of the trailing window for a batch's customers: messages whose status counts against a cap
    (caps.COUNTED_STATUSES) at their send time (sent, else planned) after `start`, the claimed batch excluded. A
    planned message never attempted is provisional; one waiting out a retry's backoff keeps its slot."""
    at = func.coalesce(M.c.sent_at, M.c.send_at)
    query = select(M.c.customer_id, M.c.channel, at, M.c.priority, M.c.id,
                   and_(M.c.status == "planned", M.c.attempts == 0)).where(
        M.c.customer_id.in_(customer_ids), M.c.status.in_(COUNTED_STATUSES), M.c.transactional.is_(False),
        at > start, M.c.id.not_in(exclude))
    rows = session.connection().execute(query).all()
    return pl.DataFrame(rows, schema=LEDGER_SCHEMA, orient="row")


def _provider_ids(session: Session, customer_ids: list[int]) -> dict[int, set[str]]:
    """The provider ids our messages already hold, per customer: theirs and those of every customer sharing their
    phone number (a household's number gets both their SMS) — a reconciled message never claims one of them."""
    if not customer_ids:
        return {}
    sharers = phone_sharers(session, customer_ids)
    holders = sorted({other for group in sharers.values() for other in group})
    query = text("SELECT customer_id, provider_id FROM message WHERE provider_id IS NOT NULL "
                 "AND customer_id IN :ids").bindparams(bindparam("ids", expanding=True))
    held: dict[int, set[str]] = {}
    for holder, provider_id in session.connection().execute(query, {"ids": holders}):
        held.setdefault(holder, set()).add(provider_id)
    out = {customer_id: set().union(*(held.get(other, set()) for other in group))
           for customer_id, group in sharers.items()}
    return {customer_id: ids for customer_id, ids in out.items() if ids}


def consent_allows(status: str | None, transactional: bool) -> bool:
    """Marketing needs an opt-in; a transactional notice goes unless the customer opted out of the channel."""
    return status != "opted_out" if transactional else status == "opted_in"


def admit(session: Session, ctx: Context, claimed: list[dict[str, Any]], now: datetime
          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Check claimed messages again at send time; returns (to send, decided now: expired/skipped/deferred).

    Consent (an opt-out since planning wins, for transactional notices too), expiry, quiet hours in the customer's zone (a late dispatcher must
    not text at night: the message is deferred, not dropped) and the frequency caps against what was really
    sent, highest priority first within the batch.
    """
    if not claimed:
        return [], []
    customer_ids = sorted({r["customer_id"] for r in claimed})
    _lock_customers(session, customer_ids)
    consents, zones = consents_of(session, customer_ids), time_zones_of(session, customer_ids)
    rails = guard_rails(session, ctx)
    frame = pl.DataFrame({"id": [r["id"] for r in claimed], "customer_id": [r["customer_id"] for r in claimed],
                          "channel": [r["channel"] for r in claimed],
                          "time_zone": [zones.get(r["customer_id"], ctx.settings.default_time_zone) for r in claimed],
                          "send_at": [now] * len(claimed)},
                         schema_overrides={"send_at": pl.Datetime("us", "UTC")})
    marketing = frame.filter(~pl.Series([bool(r["transactional"]) for r in claimed]))
    deferred = defer_out_of_quiet_hours(marketing, rails.quiet).filter(pl.col("deferred_quiet"))
    defer_to = dict(zip(deferred["id"].to_list(), deferred["send_at"].to_list(), strict=True))
    to_send, decided, to_check = [], [], []
    for row in claimed:
        reason = None
        if row["expires_at"] is not None and row["expires_at"] <= now:
            reason = "expired"
        elif not consent_allows(consents.get((row["customer_id"], CHANNELS.get(row["channel"]).consent)),
                                bool(row["transactional"])):
            reason = "no_consent"
        elif row["id"] in defer_to:
            decided.append(row | {"decision": "deferred", "new_send_at": defer_to[row["id"]]})
            continue
        elif not row["transactional"]:
            to_check.append(row)
            continue
        if reason is None:
            to_send.append(row)
        else:
            decided.append(row | {"decision": "expired" if reason == "expired" else "skipped", "reason": reason})
    if to_check:
        longest = max((c.window_days for c in rails.caps), default=0)
        ledger = _send_time_ledger(session, customer_ids, [r["id"] for r in claimed], now - timedelta(days=longest))
        batch = pl.DataFrame({"id": [r["id"] for r in to_check],
                              "customer_id": [r["customer_id"] for r in to_check],
                              "channel": [r["channel"] for r in to_check],
                              "priority": [r["priority"] for r in to_check],
                              "send_at": [now] * len(to_check)},
                             schema_overrides={"send_at": pl.Datetime("us", "UTC"), "priority": pl.Int64})
        verdicts = {r["id"]: r["cap_label"] if r["capped"] else None
                    for r in check_at_send(batch, ledger, list(rails.caps)).iter_rows(named=True)}
        for row in to_check:
            label = verdicts[row["id"]]
            if label is None:
                to_send.append(row)
            else:
                decided.append(row | {"decision": "skipped", "reason": f"capped_at_send ({label})"})
        to_send.sort(key=lambda r: (-r["priority"], r["id"]))  # the order the batch was claimed in
    _write_decisions(session, decided, now)
    return to_send, decided


def _write_decisions(session: Session, decided: list[dict[str, Any]], now: datetime) -> None:
    """Record what was decided without a provider: deferred back to planned, or skipped/expired/failed."""
    for row in decided:
        if row["decision"] == "deferred":  # not an attempt: give it back
            _set(session, row["id"], status="planned", send_at=row["new_send_at"], attempts=M.c.attempts - 1,
                 worker=None, lease_until=None, reason="deferred_quiet_hours", updated_at=now)
        else:
            _set(session, row["id"], status=row["decision"], reason=row["reason"][:40], last_error=row.get("error"),
                 worker=None, lease_until=None, updated_at=now)


# ---------------------------------------------------------------- render


class Renderer:
    """Renders claimed messages with the customer's contact data, tier and offer (templates cached per batch)."""

    def __init__(self, session: Session, ctx: Context) -> None:
        self.session, self.ctx = session, ctx
        self._templates: dict[tuple[str, str, str], rendering.TemplateSource | None] = {}
        self._campaigns: dict[int, str] = {}

    def _template(self, name: str, channel: str, locale: str) -> rendering.TemplateSource | None:
        key = (name, channel, locale)
        if key not in self._templates:
            self._templates[key] = find_template(self.session, self.ctx, name, channel, locale)
        return self._templates[key]

    def _campaign_name(self, campaign_id: int) -> str:
        if campaign_id not in self._campaigns:
            table = "campaign" if campaign_id > 0 else "journey"
            self._campaigns[campaign_id] = self.session.connection().execute(
                text(f"SELECT name FROM {table} WHERE id = :id"), {"id": abs(campaign_id)}).scalar_one()
        return self._campaigns[campaign_id]

    def contacts(self, customer_ids: list[int]) -> dict[int, dict[str, Any]]:
        """Decrypted contact data and facts of a few customers (only for the send, never logged)."""
        return contacts_of(self.session, self.ctx, customer_ids)

    def render(self, rows: list[dict[str, Any]]) -> tuple[list[tuple[dict, Outgoing]], list[dict[str, Any]]]:
        """(row, outgoing) pairs ready to send, and rows that cannot go (no contact data, no template)."""
        if not rows:
            return [], []
        ids = sorted({r["customer_id"] for r in rows})
        contacts = self.contacts(ids)
        tiers = dict(segments_frame(self.session, customer_ids=ids).select("customer_id", "tier").iter_rows())
        ready, unsendable = [], []
        for row in rows:
            contact = contacts.get(row["customer_id"])
            to = _recipients(row["channel"], contact)
            if not to:
                unsendable.append(row | {"decision": "skipped", "reason": "no_contact"})
                continue
            source = self._template(row["template"], row["channel"], row["locale"])
            if source is None:
                unsendable.append(row | {"decision": "failed", "reason": "no_template"})
                continue
            context = message_context(self.ctx, row["customer_id"], contact["external_id"], row["locale"],
                                      contact["time_zone"], tiers.get(row["customer_id"]),
                                      offer=_offer(row, source.locale), campaign=self._campaign_name(row["campaign_id"]))
            try:
                parts = rendering.render(source, context)
            except rendering.TemplateProblem as problem:
                unsendable.append(row | {"decision": "failed", "reason": "render_failed", "error": str(problem)})
                continue
            ready.append((row, Outgoing(message_id=row["id"], customer_id=row["customer_id"],
                                        campaign=context["campaign"]["name"], channel=row["channel"], to=to,
                                        parts=parts, unsubscribe_url=context["unsubscribe_url"])))
        return ready, unsendable


def _recipients(channel: str, contact: dict[str, Any] | None) -> tuple[str, ...]:
    if contact is None:
        return ()
    value = contact.get(CHANNELS.get(channel).contact_field)
    if isinstance(value, tuple):  # push tokens: one message to every device
        return value
    return (value,) if value else ()


def _offer(row: dict[str, Any], locale: str) -> dict[str, Any] | None:
    stored = row.get("offer")
    offer = json.loads(stored) if isinstance(stored, str) else stored
    if not offer:
        return None
    return offer_for_template({"offer_decision": offer.get("decision"), "offer_amount_off": offer.get("amount_off"),
                               "offer_percent_off": offer.get("percent_off"), "min_spend": offer.get("min_spend"),
                               "max_discount": offer.get("max_discount"),
                               "offer_free_shipping": offer.get("free_shipping"), "coupon_code": row["coupon_code"],
                               "valid_until": row["valid_until"], "locale": locale})


# ---------------------------------------------------------------- record


def record_results(session: Session, ctx: Context, results: list[tuple[dict, Outgoing | None, SendResult]],
                   senders: dict[str, Sender], now: datetime, rng: random.Random, report: BatchReport) -> None:
    """Write each answer: sent (and the call task), retry with backoff, dead, failed, opted out, unknown."""
    s = ctx.settings
    sent = [(row, outgoing, result) for row, outgoing, result in results if result.outcome == SENT]
    if sent:  # the common case, in one pipelined executemany
        session.connection().execute(
            update(M).where(M.c.id == bindparam("message_id")).values(
                status="sent", provider=bindparam("provider_name"), provider_id=bindparam("pid"), sent_at=now,
                last_error=None, reason=None, worker=None, lease_until=None, updated_at=now),
            [{"message_id": row["id"], "provider_name": senders[row["channel"]].provider, "pid": result.provider_id}
             for row, _, result in sent])
    measured = metrics.business()
    for row, outgoing, _ in sent:
        if senders[row["channel"]].provider == CALL_TASKS and outgoing is not None:
            _call_task(session, row, outgoing, now)
        report.add(f"sent_{row['channel']}")
        measured.sends.labels(row["channel"], senders[row["channel"]].provider).inc()
    for row, _, result in results:
        sender = senders[row["channel"]]
        common = {"provider": sender.provider, "worker": None, "lease_until": None, "updated_at": now}
        if result.outcome == SENT:
            continue
        measured.send_failures.labels(row["channel"], sender.provider, result.outcome).inc()
        if result.outcome == RETRY and row["attempts"] < s.dispatch_max_attempts:
            delay = backoff_seconds(row["attempts"], s.dispatch_backoff_seconds, s.dispatch_backoff_max_seconds, rng,
                                    result.retry_after)
            _set(session, row["id"], status="planned", send_at=now + timedelta(seconds=delay),
                 last_error=(result.error or "")[:2000], reason="retry", **common)
            report.add("retry")
            measured.retries.labels(row["channel"]).inc()
            continue
        status, reason = {RETRY: ("dead", "attempts_exhausted"), FAILED: ("failed", "provider_refused"),
                          OPTED_OUT: ("failed", "opted_out"),
                          AMBIGUOUS: ("unknown", "ambiguous")}[result.outcome]
        _set(session, row["id"], status=status, reason=reason, last_error=(result.error or "")[:2000], **common)
        if status == "dead":
            measured.dead_letters.labels(row["channel"]).inc()
        if result.outcome == OPTED_OUT:
            record_consent(session, ctx, customer_id=row["customer_id"], channel=Channel(row["channel"]),
                           status=ConsentStatus.opted_out, source=f"{sender.provider}:opted_out", actor="dispatcher")
        report.add(status)


def _call_task(session: Session, row: dict[str, Any], outgoing: Outgoing, now: datetime) -> None:
    session.add(CallTask(message_id=row["id"], customer_id=row["customer_id"], campaign_id=row["campaign_id"],
                         status="open", script=outgoing.parts.get("body", ""), created_at=now))
    session.flush()


# ---------------------------------------------------------------- the loop


@dataclass
class Dispatcher:
    """One worker: claims batches, sends them through the channel senders with a thread pool, records answers."""

    ctx: Context
    senders: dict[str, Sender]
    worker: str = field(default_factory=worker_name)
    rng: random.Random = field(default_factory=random.Random)
    limiters: dict[str, RateLimiter] = field(default_factory=dict)
    share: float = 1.0  # this worker's share of each provider's rate (several workers split it)

    def __post_init__(self) -> None:
        rates = self.ctx.settings.provider_rate_per_second
        for sender in self.senders.values():
            if sender.provider not in self.limiters:
                self.limiters[sender.provider] = RateLimiter(max(0.1, rates.get(sender.provider, 100.0) * self.share))
        self._pool = ThreadPoolExecutor(max_workers=self.ctx.settings.dispatch_concurrency)

    def close(self) -> None:
        """Stop the sending threads."""
        self._pool.shutdown(wait=True)

    def _send(self, outgoing: Outgoing) -> SendResult:
        sender = self.senders[outgoing.channel]
        self.limiters[sender.provider].acquire()
        try:
            return sender.send(outgoing)
        except Exception as error:  # noqa: BLE001 - an SDK bug must not lose the batch: the fate is unknown
            log.exception("sender %s raised", sender.provider)
            return SendResult(AMBIGUOUS, error=f"{type(error).__name__}: {error}"[:500])

    def reconcile(self, limit: int = 500) -> BatchReport:
        """Resolve unknown messages with providers that can be asked: found → sent; not found → planned again."""
        report = BatchReport()
        channels = [c for c, s in self.senders.items() if s.can_reconcile]
        if not channels:
            return report
        now = self.ctx.clock.now()
        # Reads, asks the provider, then writes: on SQLite it holds the write lock from the start (writer_engine).
        with session_scope(writer_engine(self.ctx.engine)) as session:
            query = select(*CLAIMED).where(M.c.status == "unknown", M.c.reason.in_(("ambiguous", "worker_lost")),
                                           M.c.channel.in_(channels)).order_by(M.c.id).limit(limit)
            rows = _rows(session.connection().execute(query))
            ready, _ = Renderer(session, self.ctx).render(rows)
            claimed = _provider_ids(session, sorted({r["customer_id"] for r in rows}))
            for row, outgoing in ready:
                found = self.senders[row["channel"]].reconcile(
                    outgoing, row["send_at"], frozenset(claimed.get(row["customer_id"], ())))
                if found.found and found.provider_id:
                    claimed.setdefault(row["customer_id"], set()).add(found.provider_id)
                if found.found:
                    _set(session, row["id"], status="sent", provider_id=found.provider_id, sent_at=now,
                         reason="reconciled", updated_at=now)
                    if self.senders[row["channel"]].provider == CALL_TASKS:
                        _call_task(session, row, outgoing, now)
                    report.add("reconciled_sent")
                elif row["attempts"] >= self.ctx.settings.dispatch_max_attempts:
                    _set(session, row["id"], status="dead", reason="attempts_exhausted", updated_at=now)
                    report.add("dead")
                else:  # never taken: safe to send again, after the usual backoff
                    s = self.ctx.settings
                    delay = backoff_seconds(row["attempts"], s.dispatch_backoff_seconds,
                                            s.dispatch_backoff_max_seconds, self.rng)
                    _set(session, row["id"], status="planned", reason="reconciled_not_found", updated_at=now,
                         send_at=now + timedelta(seconds=delay))
                    report.add("reconciled_not_found")
        return report

    def run_batch(self) -> BatchReport:
        """Claim one batch, admit, render, send concurrently and record; returns what happened."""
        s, report = self.ctx.settings, BatchReport()
        now = self.ctx.clock.now()
        started = time.perf_counter()
        with session_scope(writer_engine(self.ctx.engine)) as session:
            report.add("orphans_unknown", recover_orphans(session, now))
            claimed = claim(session, now, self.worker, timedelta(seconds=s.dispatch_lease_seconds),
                            s.dispatch_batch_size)
            report.add("claimed", len(claimed))
            admitting = time.perf_counter()
            to_send, decided = admit(session, ctx=self.ctx, claimed=claimed, now=now)
            admit_seconds = time.perf_counter() - admitting
            for row in decided:
                report.add(row["decision"] if row["decision"] != "skipped" else f"skipped_{row['reason'].split()[0]}")
        # The send-time check apart from the claim (whose transaction it shares, commit included in `claim`).
        report.seconds["admit"] += admit_seconds
        report.seconds["claim"] += time.perf_counter() - started - admit_seconds
        if not to_send:
            return report
        started = time.perf_counter()
        with session_scope(self.ctx.engine) as session:
            ready, unsendable = Renderer(session, self.ctx).render(to_send)
        report.seconds["render"] += time.perf_counter() - started
        started = time.perf_counter()
        # The provider calls happen outside any transaction: the claim is committed, the answers come after.
        answers = list(self._pool.map(self._send, [o for _, o in ready]))
        report.seconds["provider_calls"] += time.perf_counter() - started
        started = time.perf_counter()
        results = [(row, outgoing, answer) for (row, outgoing), answer in zip(ready, answers, strict=True)]
        with session_scope(writer_engine(self.ctx.engine)) as session:
            record_results(session, self.ctx, results, self.senders, self.ctx.clock.now(), self.rng, report)
            _write_decisions(session, unsendable, self.ctx.clock.now())
        report.seconds["record"] += time.perf_counter() - started
        for row in unsendable:
            report.add(f"{row['decision']}_{row['reason']}")
        return report

    def run_until_idle(self, max_batches: int | None = None) -> BatchReport:
        """Reconcile, then send batches until nothing is due (or max_batches)."""
        total = self.reconcile()
        batches = 0
        while max_batches is None or batches < max_batches:
            report = self.run_batch()
            total.merge(report)
            batches += 1
            if not report.counts.get("claimed"):
                break
        return total


def replay_until(ctx: Context, senders: dict[str, Sender], until: datetime, **options: Any) -> BatchReport:
    """Dispatch as time passes up to `until`: the clock jumps to each next due moment (demo and catch-up)."""
    from kit.clock import FixedClock

    total = BatchReport()
    while True:
        with session_scope(ctx.engine) as session:
            due = session.connection().execute(select(func.min(M.c.send_at)).where(
                M.c.status == "planned", M.c.send_at <= until)).scalar_one()
        if due is None:
            return total
        moment = ensure_utc(due)
        dispatcher = Dispatcher(replace(ctx, clock=FixedClock(moment)), senders, **options)
        try:
            report = dispatcher.run_until_idle()
        finally:
            dispatcher.close()
        total.merge(report)
        if not report.counts.get("claimed"):  # due yet not claimable (held by another worker): do not spin
            return total


class SingleWriter:
    """On SQLite only one dispatcher may write: the named `dispatch` lock (a file lock beside the database)."""

    def __init__(self, ctx: Context) -> None:
        self._lock = None
        if not is_postgres(ctx.engine):
            self._lock = try_lock(ctx.engine, ctx.settings.data_dir, "dispatch")
            if self._lock is None:
                raise RuntimeError("another dispatcher is running on this SQLite database (it has one writer)")

    def release(self) -> None:
        """Let another dispatcher in."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def serve(ctx: Context, senders: dict[str, Sender], *, once: bool, stop: threading.Event,
          max_batches: int | None = None, share: float = 1.0) -> BatchReport:
    """The dispatcher process: run until idle (once) or poll until `stop` is set; a stop finishes the batch."""
    while True:
        try:
            writer = SingleWriter(ctx)
            break
        except RuntimeError:
            # SQLite: another writer (e.g. the pipeline's dispatch step) holds the lock. A one-off pass says so;
            # the long-running dispatcher waits its turn instead of exiting.
            if once:
                raise
            if stop.wait(ctx.settings.dispatch_poll_seconds):
                return BatchReport()
    dispatcher = Dispatcher(ctx, senders, share=share)
    total = BatchReport()
    try:
        while not stop.is_set():
            try:
                total.merge(dispatcher.reconcile())
                batches = 0
                while not stop.is_set() and (max_batches is None or batches < max_batches):
                    report = dispatcher.run_batch()
                    total.merge(report)
                    batches += 1
                    if not report.counts.get("claimed"):
                        break
            except OperationalError as busy:
                # The database went away or stayed busy past the timeout: what was claimed stays leased and is
                # reconciled on the next pass (sent or not, never twice); a one-off pass reports it.
                if once:
                    raise
                log.warning("dispatch pass interrupted, retrying: %s", str(busy.orig).splitlines()[0][:200])
                total.add("retried_passes")
            if once:
                break
            stop.wait(ctx.settings.dispatch_poll_seconds)
    finally:
        dispatcher.close()
        writer.release()
    return total
