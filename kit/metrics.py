"""Prometheus metrics for every process, served by the API's /v1/metrics.

The API's workers, the scheduler, the dispatcher and the journey worker each write their counters and histograms
into one directory (prometheus_client's multiprocess mode, CRM_METRICS_DIR, by default <data dir>/metrics); the API
adds up every process's files at each scrape, so N workers answer one consistent total, and the numbers of the
processes that serve no HTTP are scraped too. Gauges that describe the database (outbox depth, journey backlog,
ingestion lag) are read from it at scrape time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
JOB_BUCKETS = (0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)


def configure(directory: Path | None) -> None:
    """Make this process write its metrics into `directory` (multiprocess mode). Call before any metric is made:
    at the start of `crm serve`, `crm scheduler`, `crm dispatch run` and `crm journeys run`."""
    if directory is None:
        return
    from prometheus_client import values

    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROCESS_ENV] = str(directory)  # uvicorn's worker processes inherit it
    values.ValueClass = values.MultiProcessValue()


def multiprocess_dir() -> Path | None:
    """The directory the processes share, when this process was configured for it."""
    value = os.environ.get(MULTIPROCESS_ENV)
    return Path(value) if value else None


class _Business:
    """The counters and histograms processes record (made once per process, after `configure`)."""

    def __init__(self) -> None:
        # Registered here for a single process; in multiprocess mode the files are what is read.
        self.registry = CollectorRegistry()
        r = self.registry
        self.sends = Counter("crm_sends_total", "Messages accepted by a provider", ["channel", "provider"], registry=r)
        self.send_failures = Counter("crm_send_failures_total", "Send attempts that did not go out, by error class "
                                     "(retry, failed, opted_out, ambiguous)", ["channel", "provider", "error_class"],
                                     registry=r)
        self.retries = Counter("crm_send_retries_total", "Sends put back with backoff", ["channel"], registry=r)
        self.dead_letters = Counter("crm_dead_letters_total", "Messages that used up their attempts", ["channel"],
                                    registry=r)
        self.job_steps = Histogram("crm_job_step_seconds", "Duration of each job step", ["job", "step", "outcome"],
                                   buckets=JOB_BUCKETS, registry=r)
        self.ingested = Counter("crm_ingested_items_total", "Items written by the ingestion API and webhooks",
                                ["kind", "outcome"], registry=r)
        self.ingestion_lag = Histogram("crm_ingestion_lag_seconds", "From an event's time to its arrival",
                                       buckets=(1, 5, 15, 60, 300, 900, 3600, 21600, 86400), registry=r)
        self.enrollments = Counter("crm_journey_enrollments_total", "Customers entering a journey", ["journey"],
                                   registry=r)
        self.journey_steps = Counter("crm_journey_steps_total", "Journey steps taken, by outcome", ["kind", "outcome"],
                                     registry=r)


@cache
def business() -> _Business:
    """This process's metrics."""
    return _Business()


class DatabaseGauges(Collector):
    """Gauges read from the database at each scrape (any process's work shows, whoever did it)."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """The outbox by status and channel, the journeys' backlog, the event-driven path's lag."""
        try:
            found = self.read()
        except Exception:  # noqa: BLE001 - a scrape must answer even when the database does not
            found = {}
        outbox = GaugeMetricFamily("crm_outbox_messages", "Messages in the outbox by status and channel",
                                   labels=["status", "channel"])
        for (status, channel), count in sorted(found.get("outbox", {}).items()):
            outbox.add_metric([status, channel], count)
        yield outbox
        backlog = GaugeMetricFamily("crm_journey_due_backlog", "Active enrollments whose next step is due")
        backlog.add_metric([], found.get("journey_due", 0))
        yield backlog
        active = GaugeMetricFamily("crm_journey_active_enrollments", "Enrollments in progress")
        active.add_metric([], found.get("journey_active", 0))
        yield active
        lag = GaugeMetricFamily("crm_activity_lag_seconds", "Age of the oldest customer activity (event, order, "
                                "tier move) no consumer has claimed yet: the event-driven path's lag")
        lag.add_metric([], found.get("activity_lag_seconds", 0))
        yield lag
        up = GaugeMetricFamily("crm_database_up", "Whether the scrape could read the database")
        up.add_metric([], 1 if found else 0)
        yield up


class _Merged(Collector):
    """Several registries read as one."""

    def __init__(self, registries: list[CollectorRegistry]) -> None:
        self.registries = registries

    def collect(self) -> Iterable[Any]:
        """Every metric of every registry."""
        for registry in self.registries:
            yield from registry.collect()


def scrape_registry(process_registries: list[CollectorRegistry], database: Collector | None) -> CollectorRegistry:
    """What /metrics serves: every process's files (multiprocess) or this process's registries, plus the
    database's gauges."""
    registry = CollectorRegistry()
    directory = multiprocess_dir()
    if directory is not None:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, path=str(directory))
    else:
        registry.register(_Merged(process_registries))
    if database is not None:
        registry.register(database)
    return registry
