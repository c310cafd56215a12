"""Service configuration, read from the environment with the CRM_ prefix."""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kit.channels import default_caps, quiet_hours_channels, unit_costs

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT / "var"



class Settings(BaseSettings):
    """All tunables of the service; every business number is a default a user can change."""

    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore", allow_inf_nan=False)

    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str = ""
    secret_key: str = ""
    secret_key_file: Path | None = None
    # Keys replaced by CRM_SECRET_KEY, comma-separated: they still decrypt and match until `crm secrets rotate` has
    # moved every row to the current key (then drop them).
    secret_key_previous: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("secret_key_previous", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value
    default_time_zone: str = "Asia/Shanghai"
    default_locale: str = "zh-CN"
    default_phone_region: str = "CN"
    import_block_bytes: int = Field(default=24 * 1024 * 1024, ge=1024)
    # An empty fact table on PostgreSQL is filled by COPY with its indexes rebuilt at the end (see BulkLoad).
    import_bulk_load: bool = True
    import_max_reported_errors: int = Field(default=1_000, ge=1)
    # Upload limits (memory per upload stays within import_block_bytes + import_max_record_bytes).
    import_max_bytes: int = Field(default=8 * 1024**3, ge=1024)
    import_max_record_bytes: int = Field(default=1024**2, ge=1024)
    import_max_columns: int = Field(default=200, ge=10)
    api_page_max: int = Field(default=500, ge=1)
    # Threads an API worker process runs route code on at once (FastAPI's default is 40). They share one interpreter
    # lock: forty requests interleaved each took many times longer, where four at a time keep the tail short
    # (bench_load.py at 200 requests/s: p99 0.5 s with 40, under 0.1 s with 4). Uploads have threads of their own.
    api_threads: int = Field(default=4, ge=1)
    api_import_threads: int = Field(default=4, ge=1)
    # Requests a worker process has in progress (each holds a database connection); the rest wait in arrival order.
    api_concurrency: int = Field(default=24, ge=1)
    public_base_url: str = "http://127.0.0.1:8000"
    shop_name: str = "Demo Shop"
    # Campaign guard rails (docs/domain.md); JSON in the environment, e.g. CRM_CAPS='{"sms": [2, 30]}'.
    caps: dict[str, tuple[int, int]] = Field(default_factory=default_caps)
    global_cap: tuple[int, int] | None = None
    quiet_hours: tuple[str, str] = ("21:00", "09:00")
    quiet_hours_channels: tuple[str, ...] = Field(default_factory=quiet_hours_channels)
    discount_budget_share: float = Field(default=0.15, ge=0, le=1)
    tier_max_discount_percent: dict[str, float] = Field(default_factory=lambda: {
        "VIP": 30.0, "potential": 20.0, "regular": 20.0, "lost": 25.0})
    default_max_discount_percent: float = 20.0
    shipping_value: float = 10.0
    min_offer_value: float = 5.0
    loyal_tiers: tuple[str, ...] = ("VIP", "potential")
    message_unit_cost: dict[str, float] = Field(default_factory=unit_costs)
    offer_redemption_rate: float = Field(default=0.1, ge=0, le=1)
    # Channels and dispatch. Provider per channel: console (prints) or the real provider.
    sms_provider: str = Field(default="console", pattern="^(console|twilio)$")
    email_provider: str = Field(default="console", pattern="^(console|sendgrid)$")
    push_provider: str = Field(default="console", pattern="^(console|fcm)$")
    twilio_account_sid: str = "AC00000000000000000000000000000000"
    twilio_auth_token: str = ""
    twilio_messaging_service_sid: str = ""
    twilio_from: str = ""
    twilio_base_url: str = ""  # empty: Twilio's own; tests and benchmarks point it at a local fake
    sendgrid_api_key: str = ""
    sendgrid_base_url: str = "https://api.sendgrid.com"
    sendgrid_from_email: str = "shop@example.com"
    sendgrid_unsubscribe_group_id: int | None = None
    sendgrid_webhook_public_key: str = ""  # base64 DER or PEM of the signed event webhook's ECDSA key
    shopify_webhook_secret: str = ""  # the app's webhook signing secret; empty: Shopify webhooks are refused
    fcm_project_id: str = "demo-shop"
    fcm_service_account_file: Path | None = None
    fcm_base_url: str = "https://fcm.googleapis.com"
    provider_timeout_seconds: float = Field(default=10.0, gt=0)
    provider_rate_per_second: dict[str, float] = Field(default_factory=lambda: {
        "twilio": 100.0, "sendgrid": 500.0, "fcm": 500.0, "console": 10_000.0, "tasks": 10_000.0})
    dispatch_batch_size: int = Field(default=200, ge=1)
    dispatch_concurrency: int = Field(default=16, ge=1)
    dispatch_max_attempts: int = Field(default=5, ge=1)
    dispatch_backoff_seconds: float = Field(default=30.0, gt=0)
    dispatch_backoff_max_seconds: float = Field(default=3600.0, gt=0)
    dispatch_lease_seconds: float = Field(default=120.0, gt=0)
    dispatch_poll_seconds: float = Field(default=5.0, gt=0)
    # How far our clock may run ahead of a provider's when we ask it whether it took a message we lost track of.
    provider_clock_skew_seconds: float = Field(default=900.0, ge=0)
    webhook_max_age_seconds: int = Field(default=300, ge=1)
    # Scheduler: local times are in scheduler_time_zone (empty: default_time_zone); see crm/schedules.py.
    scheduler_time_zone: str = ""
    pipeline_local_time: str = "02:00"
    retrain_weekday: str = "sun"
    retrain_local_time: str = "03:00"
    tags_every_hours: int = Field(default=6, ge=1, le=24)
    cleanup_local_time: str = "04:30"
    scheduler_catch_up: str = Field(default="latest", pattern="^(latest|all)$")
    scheduler_takeover_seconds: float = Field(default=30.0, gt=0)
    scheduler_heartbeat_seconds: float = Field(default=5.0, gt=0)
    # /v1/health/ready wants a scheduler leader that beat within the takeover bound (no leader: no nightly jobs,
    # no sends); false keeps an API whose only problem is the scheduler in its load balancer's rotation.
    ready_requires_leader: bool = True
    # How long each process may take to finish what it holds after SIGTERM (service managers wait this long, plus
    # a margin, before SIGKILL): API requests in flight; the dispatcher's batch (within its lease, after which
    # another worker may take the messages); the journey worker's pass; the scheduler's running job step (a step
    # killed past it resumes on the next leader).
    api_port: int = Field(default=8000, ge=1, le=65535)
    api_drain_seconds: float = Field(default=30.0, gt=0)
    journeys_drain_seconds: float = Field(default=120.0, gt=0)
    scheduler_drain_seconds: float = Field(default=600.0, gt=0)
    # Where the API workers, scheduler, dispatcher and journey worker write their Prometheus metrics for /v1/metrics
    # to add up (default <data dir>/metrics; every process of one deployment must share it).
    metrics_dir: Path | None = None
    idempotency_hours: float = Field(default=24.0, gt=0, le=24 * 30)  # how long a POST's answer is replayed
    scheduler_jobs: list[str] = Field(default_factory=list)  # which jobs `crm scheduler` runs; empty: all
    # A firing later than this (the process was busy or paused) is skipped by APScheduler; the job's next firing,
    # or a new leader's start, still catches the occurrence up from the recorded runs.
    scheduler_misfire_grace_seconds: int = Field(default=3600, ge=1)
    # Retention of expired data (the clean-up job): raw events, job run records, webhook receipts.
    event_retention_days: int = Field(default=730, ge=30)
    job_run_retention_days: int = Field(default=180, ge=1)
    webhook_receipt_retention_days: int = Field(default=90, ge=1)
    # Attribution: an order within the window after a sent/delivered message converts for it.
    attribution_window_days: int = Field(default=7, ge=1, le=90)
    attribution_touch: str = Field(default="last", pattern="^(last|first)$")
    # Measurement: a global control group gets no marketing at all (transactional still goes);
    # the salt fixes who is in it, so changing it reshuffles the group (do that rarely, and on purpose).
    global_control_share: float = Field(default=0.05, ge=0, le=0.5)
    global_control_salt: int = Field(default=20261125, ge=0)
    # Churn model quality over time: a sample of each scoring run's predictions kept every N days.
    churn_quality_every_days: int = Field(default=7, ge=1, le=90)
    churn_quality_sample_share: float = Field(default=0.2, gt=0, le=1)
    churn_quality_retention_days: int = Field(default=730, ge=90)
    # Who the churn model scores: "active" (an order in the look-back days) or "all" (an order in the two-year
    # history), and how the at-risk flag is chosen: precision (target, never below base rate + min lift points),
    # capacity (the k riskiest a day) or value (saved margin × P(churn) × response ≥ offer + message cost).
    churn_population: str = Field(default="active", pattern="^(active|all)$")
    churn_lookback_days: int = Field(default=365, ge=30, le=730)
    churn_flag_policy: str = Field(default="precision", pattern="^(precision|capacity|value)$")
    churn_target_precision: float = Field(default=0.75, gt=0, le=1)
    churn_min_lift_points: float = Field(default=0.10, ge=0, le=0.5)
    churn_daily_capacity: int = Field(default=1000, ge=1)
    churn_saved_margin: float = Field(default=120.0, gt=0)
    churn_response_rate: float = Field(default=0.15, gt=0, le=1)
    churn_offer_cost: float = Field(default=10.0, ge=0)
    churn_message_cost: float = Field(default=0.5, ge=0)
    # Failed API-key attempts per client address (API and console sign-in) before 429, and the window counted.
    auth_failure_limit: int = Field(default=10, ge=1)
    auth_failure_window_seconds: int = Field(default=300, ge=1)
    # Proxies whose X-Forwarded-For is believed (comma-separated addresses or networks; "*" any). Empty: none, the
    # client address is the socket's peer — uvicorn's own default trusts 127.0.0.1, so rotating X-Forwarded-For
    # headers from a local process escaped the failed-key throttle.
    forwarded_allow_ips: str = ""
    # Origins allowed to call the API from a browser (CORS); empty: none (the console is same-origin).
    cors_origins: list[str] = Field(default_factory=list)
    # Predicted lifetime value: horizon of the BG/NBD + Gamma-Gamma forecast.
    clv_horizon_days: int = Field(default=365, ge=30, le=1825)

    def scheduler_zone(self) -> str:
        """The zone the scheduler's local times are in."""
        return self.scheduler_time_zone or self.default_time_zone

    def resolved_database_url(self) -> str:
        """The configured URL, or the embedded SQLite file under the data directory."""
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.data_dir / 'crm.sqlite3'}"

    def drain_seconds(self) -> dict[str, float]:
        """Each long-running process's drain time after SIGTERM (the deployment files' stop timeouts follow)."""
        return {"api": self.api_drain_seconds, "dispatcher": self.dispatch_lease_seconds,
                "journeys": self.journeys_drain_seconds, "scheduler": self.scheduler_drain_seconds}

    def metrics_directory(self) -> Path:
        """The shared Prometheus multiprocess directory."""
        return self.metrics_dir or (self.data_dir / "metrics")

    def key_file(self) -> Path:
        """Where a locally generated secret key is kept (git-ignored)."""
        return self.secret_key_file or (self.data_dir / "secret_key")


class MissingSecretKey(RuntimeError):
    """Raised when no secret key is configured and none may be created."""


def load_secret_key(settings: Settings, *, create: bool = False) -> tuple[str, bool]:
    """Return (secret key, created_now); read CRM_SECRET_KEY or the local key file, optionally creating it."""
    if settings.secret_key:
        return settings.secret_key, False
    path = settings.key_file()
    if path.exists():
        return path.read_text().strip(), False
    if not create:
        raise MissingSecretKey(
            f"no secret key: set CRM_SECRET_KEY or run `crm demo` / `crm init` to create {path}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key, True


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (tests build their own Settings instead)."""
    return Settings()
