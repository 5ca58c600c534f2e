"""Every shipped mapping fits its connector, translates generated cases, and reads every back-office status."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hubbridge.case import HubCase, HubStatus
from hubbridge.config.loader import Config, ResolvedRoute, load_config
from hubbridge.config.settings import SHIPPED_CONFIG_DIR, Settings
from hubbridge.connectors.base import BackOfficeUpdate, Connector, Delivery, connector_class
from hubbridge.mappings.cli import mapping_files
from hubbridge.mappings.compile import CompiledMapping, load_mapping
from hubbridge.workflows.casegen import generate_cases
from hubbridge.workflows.simulated import demo_secret

SHIPPED = Path(__file__).resolve().parents[2] / "mappings" / "shipped"
FILES = mapping_files([SHIPPED])
CASES_PER_MAPPING = 200


def _statuses(plugin: str) -> set[str]:
    """Every status code the plugin's simulator can put in an update (`BackOfficeUpdate.status_code`)."""
    if plugin == "bartec":
        from hubbridge.connectors.bartec.simulator import STATUSES

        return set(STATUSES)
    if plugin == "revenues":
        from hubbridge.connectors.revenues.connector import STATUS_CODES, xsd_facets
        from hubbridge.connectors.revenues.simulator import LIFECYCLE

        codes = set(xsd_facets()["StatusCodeType"].enum)
        assert set(LIFECYCLE) | {"REJECTED", "WITHDRAWN"} <= codes == set(STATUS_CODES)
        return codes
    if plugin == "open311":
        from hubbridge.connectors.open311.simulator import STATUS_CODES

        # the connector passes external_status_code, else the FixMyStreet status; both must be mapped
        return set(STATUS_CODES) | {fms for fms, _ in STATUS_CODES.values()}
    if plugin == "planning":
        from hubbridge.connectors.planning.models import EnquiryStatus

        return {s.value for s in EnquiryStatus}
    raise AssertionError(plugin)


def _service_codes(plugin: str) -> set[str]:
    """The job types the plugin's simulator knows (what `BackOfficeUpdate.service_code` can be)."""
    if plugin == "bartec":
        from hubbridge.connectors.bartec.simulator import SERVICE_TYPES

        return {str(t) for t in SERVICE_TYPES}
    if plugin == "revenues":
        from hubbridge.connectors.revenues.simulator import WORK_ITEM_TYPES

        return set(WORK_ITEM_TYPES)
    if plugin == "open311":
        from hubbridge.connectors.open311.simulator import SERVICES

        return set(SERVICES)
    if plugin == "planning":
        from hubbridge.connectors.planning.models import EnquiryType

        return {t.value for t in EnquiryType}
    raise AssertionError(plugin)


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(SHIPPED_CONFIG_DIR, Settings(config_dir=SHIPPED_CONFIG_DIR))


def _connector(route: ResolvedRoute) -> Connector:
    env = {name: demo_secret(name) for name in route.connector.credentials.values()}
    return connector_class(route.connector.plugin)(route.connector, env=env)


def _routes(config: Config, path: Path) -> list[ResolvedRoute]:
    return [r for r in config.routes.values() if Path(r.mapping_path).resolve() == path.resolve()]


def _compiled(config: Config, path: Path) -> tuple[CompiledMapping, list[ResolvedRoute]]:
    routes = _routes(config, path)
    assert routes, f"{path} is shipped but no route uses it"
    conn = _connector(routes[0])
    try:
        return load_mapping(path, conn.target_fields()), routes
    finally:
        conn.close()


def _update(code: str, service_code: str) -> BackOfficeUpdate:
    return BackOfficeUpdate(backoffice_ref="X1", update_id="1", occurred_at=datetime(2026, 3, 2, 10, tzinfo=UTC),
                            status_code=code, note="officer's note", hub_ref="WH-2026-000001",
                            service_code=service_code)


def test_there_is_a_mapping_for_every_service(config: Config) -> None:
    services = {load_mapping(f).service for f in FILES}
    assert services == set(config.services)
    assert len(FILES) == len(config.services) == 15


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SHIPPED)))
def test_mapping_validates_against_its_connectors_target_fields(config: Config, path: Path) -> None:
    mapping, routes = _compiled(config, path)
    area, _, name = mapping.service.partition(".")
    assert path.parent.name == area
    assert path.name == f"{name}.{mapping.plugin}.yaml"
    assert {r.connector.plugin for r in routes} == {mapping.plugin}
    assert {r.service for r in routes} == {mapping.service}


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SHIPPED)))
def test_mapping_translates_generated_cases_into_requests_the_connector_accepts(config: Config, path: Path) -> None:
    """200 generated cases of the mapping's service, from every authority routed to it, render without error."""
    mapping, routes = _compiled(config, path)
    connectors = {r.connector.name: _connector(r) for r in routes}
    by_authority = {r.authority: r for r in routes}
    seen_authorities: set[str] = set()
    fallbacks: list[str] = []
    try:
        for data in generate_cases(CASES_PER_MAPPING, services=[mapping.service], seed=11):
            case = HubCase.model_validate(data)
            route = by_authority[case.authority]  # casegen only picks authorities the service is routed for
            seen_authorities.add(case.authority)
            translation = mapping.outbound(case)
            fallbacks += [w for w in translation.warnings if "fallback" in w]
            delivery = Delivery(hub_ref=case.ref, authority=case.authority, service=case.service,
                                payload=translation.payload, mapping_version=mapping.version)
            # render runs the connector's own checks (WSDL/XSD facets, pydantic request model) and sends nothing
            assert connectors[route.connector.name].render(delivery)
            if mapping.service_codes:
                code = _job_type(mapping.plugin, translation.payload)
                assert code in mapping.service_codes, f"{case.ref}: outbound type {code} not in inbound service_codes"
    finally:
        for c in connectors.values():
            c.close()
    # generated values are all ones the mapping knows: a fallback here means the mapping misses a Hub value
    assert fallbacks == []
    assert seen_authorities == set(by_authority)


def _job_type(plugin: str, payload: dict[str, Any]) -> str:
    key = {"bartec": "ServiceTypeID", "revenues": "WorkItemType", "open311": "service_code",
           "planning": "enquiry_type"}[plugin]
    return str(payload[key])


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SHIPPED)))
def test_inbound_maps_every_status_the_back_office_can_send(config: Config, path: Path) -> None:
    mapping, _ = _compiled(config, path)
    assert mapping.service_codes, "inbound.service_codes lets jobs raised in the back office be recognised"
    assert mapping.service_codes <= _service_codes(mapping.plugin)
    code = sorted(mapping.service_codes)[0]
    for status in sorted(_statuses(mapping.plugin)):
        tr = mapping.inbound(_update(status, code))
        assert isinstance(tr.status, HubStatus), status
        assert tr.warnings == [], f"{status}: {tr.warnings}"  # mapped, not a fallback
        assert tr.note == "officer's note"
        if tr.status in (HubStatus.RESOLVED, HubStatus.CLOSED, HubStatus.REJECTED):
            assert tr.resolution, f"{status} ends the case but gives the Hub no resolution text"


@pytest.mark.parametrize("path", [f for f in FILES if f.parent.name in ("revenues", "planning", "highways")],
                         ids=lambda p: str(p.relative_to(SHIPPED)))
def test_inbound_refuses_an_unknown_status_rather_than_guessing(config: Config, path: Path) -> None:
    """Closed status lists have no fallback: a new status is dead-lettered for an admin to map, never misread."""
    from hubbridge.errors import MappingError

    mapping, _ = _compiled(config, path)
    with pytest.raises(MappingError, match=r"(?i)no lookup .statuses. entry for .new_status"):
        mapping.inbound(_update("NEW_STATUS", sorted(mapping.service_codes)[0]))


def test_back_office_statuses_land_on_the_right_hub_statuses(config: Config) -> None:
    def hub(path: str, code: str) -> HubStatus | None:
        mapping, _ = _compiled(config, SHIPPED / path)
        return mapping.inbound(_update(code, sorted(mapping.service_codes)[0])).status

    assert hub("revenues/single-person-discount.revenues.yaml", "AWAITING_EVIDENCE") is HubStatus.AWAITING_CUSTOMER
    assert hub("revenues/payment-arrangement.revenues.yaml", "WITHDRAWN") is HubStatus.CANCELLED
    assert hub("highways/pothole.open311.yaml", "NCR") is HubStatus.REJECTED
    assert hub("highways/pothole.open311.yaml", "FIX") is HubStatus.RESOLVED
    assert hub("highways/street-light-fault.open311.yaml", "fixed") is HubStatus.RESOLVED  # case-insensitive
    assert hub("planning/breach-report.planning.yaml", "CLOSED_NO_BREACH") is HubStatus.CLOSED
    assert hub("planning/pre-application-advice.planning.yaml", "AWAITING_INFORMATION") is HubStatus.AWAITING_CUSTOMER
    assert hub("refuse/bulky-waste.bartec.yaml", "UNABLE TO COMPLETE") is HubStatus.CLOSED
