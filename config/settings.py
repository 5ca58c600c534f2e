"""Process settings from the environment: where config, the store and the broker are."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SHIPPED_CONFIG_DIR = Path(__file__).resolve().parent
SHIPPED_MAPPINGS_DIR = SHIPPED_CONFIG_DIR.parent / "mappings" / "shipped"


class Settings(BaseSettings):
    """Everything that differs between a laptop demo and production, read from HUBBRIDGE_* variables."""

    model_config = SettingsConfigDict(env_prefix="HUBBRIDGE_", extra="ignore")

    config_dir: Path = SHIPPED_CONFIG_DIR
    mappings_dir: Path | None = None
    data_dir: Path = Path("var")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default a SQLite file in data_dir")
    broker_url: str | None = Field(None, description="Celery broker; default the embedded SQLite transport")
    metrics_dir: Path | None = Field(
        None, description="Where every process writes its Prometheus metrics for /metrics to add up; "
        "default data_dir/metrics")
    log_format: str = Field("console", pattern="^(console|json)$")
    log_level: str = "INFO"
    api_token_env: str = "HUBBRIDGE_API_TOKEN"
    intake_secret_env: str = "HUBBRIDGE_INTAKE_SECRET"
    sync_page_size: int = 200
    reconcile_after_seconds: float = Field(120.0, description="Re-queue a case whose message has not run by then")
    sweep_seconds: float = Field(2.0, description="How often beat reconciles, polls and sweeps SLAs")
    console_base_url: str = Field(
        "http://127.0.0.1:8080", pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="The console's public address, for the case links in SLA escalations")
    smtp_host: str | None = Field(None, description="SMTP server for SLA e-mail; overrides sla.yaml smtp.host")
    smtp_port: int | None = Field(None, ge=1, le=65535, description="Overrides sla.yaml smtp.port")
    queue_type: str = Field("classic", pattern="^(classic|quorum)$")
    max_body_bytes: int = 256 * 1024
    evidence_max_bytes: int = Field(
        10 * 1024 * 1024, ge=1, description="Largest evidence file (decoded) a follow-up may carry")
    evidence_types: tuple[str, ...] = Field(
        ("image/jpeg", "image/png", "image/gif", "image/heic", "image/webp", "application/pdf", "text/plain"),
        description="Content types an evidence file may have")
    worker_max_memory_mib: int = Field(
        512,
        ge=0,
        description="Replace a worker pool process once its resident memory passes this many MiB (after its "
        "task): a slow leak then costs a fork from the warmed parent, not an outage. 0 never replaces",
    )
    worker_concurrency: int | None = Field(
        None,
        ge=1,
        description="Pool processes of a delivery-lane or every-queue worker (the sync lane runs one unless told); "
        "by default one more than the CPUs the worker may run on, so a long task shares the CPU with deliveries "
        "instead of holding a process they wait for",
    )

    @property
    def resolved_mappings_dir(self) -> Path:
        if self.mappings_dir is not None:
            return self.mappings_dir
        own = self.config_dir / "mappings"
        return own if own.is_dir() else SHIPPED_MAPPINGS_DIR

    @property
    def resolved_metrics_dir(self) -> Path:
        return self.metrics_dir if self.metrics_dir is not None else self.data_dir / "metrics"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'hubbridge.sqlite').resolve()}"

    @property
    def resolved_worker_concurrency(self) -> int:
        if self.worker_concurrency is not None:
            return self.worker_concurrency
        # the CPUs this process may use (affinity, as taskset or a container's cpuset sets), not the host's
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return cpus + 1

    @property
    def resolved_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        return f"embedded+sqlite:///{(self.data_dir / 'broker.sqlite').resolve()}"

    @property
    def embedded(self) -> bool:
        return self.resolved_broker_url.startswith(("embedded+", "sqla+"))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
