"""SLA gauges served from the store at scrape time, for a process (the API) that does not run the sweep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from hubbridge.sla import metrics
from hubbridge.sla.engine import SlaEngine
from hubbridge.store import engine_for, migrate
from tests.sla.conftest import add_case


def test_store_collector_reports_at_risk_and_breached_per_service_and_authority(
        sla: SlaEngine, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    migrate(url)
    now = datetime.now(UTC)
    with Session(engine_for(url)) as s:
        # 24/7 dangerous defect: acknowledge 30 min (warn 22.5), resolve 2 h (warn 1.5 h)
        add_case(s, "WH-2026-000001", service="highways.dangerous-defect", authority="worcestershire")
        sla.start(s, "WH-2026-000001", "highways.dangerous-defect", "worcestershire", "normal",
                  now - timedelta(minutes=100))  # acknowledge breached, resolve at risk
        add_case(s, "WH-2026-000002", service="highways.dangerous-defect", authority="worcestershire")
        sla.start(s, "WH-2026-000002", "highways.dangerous-defect", "worcestershire", "normal",
                  now - timedelta(minutes=25))  # acknowledge at risk
        add_case(s, "WH-2026-000003", service="highways.dangerous-defect", authority="worcestershire")
        sla.start(s, "WH-2026-000003", "highways.dangerous-defect", "worcestershire", "normal", now)
        s.commit()
    registry = CollectorRegistry()
    metrics.collect_from_store(url, registry)
    labels = {"service": "highways.dangerous-defect", "authority": "worcestershire"}
    assert registry.get_sample_value("hubbridge_sla_clocks_at_risk", labels) == 2
    assert registry.get_sample_value("hubbridge_sla_clocks_breached", labels) == 1
    text = generate_latest(registry).decode()
    assert "# TYPE hubbridge_sla_clocks_breached gauge" in text
    engine_for(url).dispose()


def test_collect_from_store_replaces_the_in_process_gauges(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    registry.register(metrics.AT_RISK)
    registry.register(metrics.BREACHED)
    stale = {"service": "x", "authority": "y"}
    metrics.AT_RISK.labels(*stale.values()).set(3)  # a figure only this process knows, possibly stale
    try:
        assert registry.get_sample_value("hubbridge_sla_clocks_at_risk", stale) == 3
        url = f"sqlite:///{tmp_path / 'store.sqlite'}"
        migrate(url)
        metrics.collect_from_store(url, registry)  # would raise on a duplicate metric name if not replaced
        assert registry.get_sample_value("hubbridge_sla_clocks_at_risk", stale) is None
        engine_for(url).dispose()
    finally:
        metrics.AT_RISK.remove(*stale.values())


def test_collect_from_store_twice_keeps_one_collector(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    first = metrics.collect_from_store("sqlite:///first.sqlite", registry)
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    migrate(url)
    assert metrics.collect_from_store(url, registry) is first and first.database_url == url
    assert registry.get_sample_value("hubbridge_sla_clocks_breached", {"service": "x", "authority": "y"}) is None
    engine_for(url).dispose()


def test_the_api_metrics_endpoint_serves_the_stores_sla_gauges(
        sla: SlaEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from hubbridge.config.settings import get_settings
    from hubbridge.workflows.api import create_app
    from hubbridge.workflows.runtime import Runtime

    url = f"sqlite:///{tmp_path / 'api.sqlite'}"
    migrate(url)
    with Session(engine_for(url)) as s:
        add_case(s, "WH-2026-000011", service="highways.dangerous-defect", authority="wychavon")
        sla.start(s, "WH-2026-000011", "highways.dangerous-defect", "wychavon", "normal",
                  datetime.now(UTC) - timedelta(minutes=100))
        s.commit()
    monkeypatch.setenv("HUBBRIDGE_DATABASE_URL", url)
    monkeypatch.setenv("HUBBRIDGE_API_TOKEN", "metrics-token")  # /metrics is not open to the world by default
    get_settings.cache_clear()
    body = TestClient(create_app(Runtime(), enqueue=False)).get(
        "/metrics", headers={"Authorization": "Bearer metrics-token"}).text
    assert 'hubbridge_sla_clocks_breached{authority="wychavon",service="highways.dangerous-defect"} 1.0' in body
    engine_for(url).dispose()


def test_scraping_the_api_leaves_this_processs_own_gauges_alone(tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    url = f"sqlite:///{tmp_path / 'scrape.sqlite'}"
    migrate(url)
    labels = {"service": "refuse.bulky-waste", "authority": "redditch"}
    metrics.BREACHED.labels(*labels.values()).set(7)
    try:
        text = generate_latest(metrics.scrape_registry(url)).decode()
        # the store's figure, not this process's gauge (other counters of this process, which earlier tests may
        # have moved, are in the scrape too)
        breached = [m for m in text_string_to_metric_families(text) if m.name == "hubbridge_sla_clocks_breached"]
        assert len(breached) == 1
        assert [s.labels for s in breached[0].samples if s.labels.get("service") == "refuse.bulky-waste"] == []
        assert text.count("# TYPE hubbridge_sla_clocks_breached gauge") == 1
        assert REGISTRY.get_sample_value("hubbridge_sla_clocks_breached", labels) == 7
    finally:
        metrics.BREACHED.remove(*labels.values())
    engine_for(url).dispose()
