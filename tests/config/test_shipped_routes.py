"""The shipped config routes every service for every authority that provides it, to a real connector and mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubbridge.config.loader import Config, load_config
from hubbridge.config.models import AuthorityKind, ConnectorInstance, ServiceArea
from hubbridge.config.settings import SHIPPED_CONFIG_DIR, Settings
from hubbridge.connectors.base import connector_class
from hubbridge.errors import PermanentError
from hubbridge.mappings.compile import load_mapping
from hubbridge.sla.policy import load_sla_config
from hubbridge.workflows.simulated import demo_secret, simulator_for


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(SHIPPED_CONFIG_DIR, Settings(config_dir=SHIPPED_CONFIG_DIR))


def expected_authorities(config: Config, area: ServiceArea) -> set[str]:
    """Highways is the County's service for the whole county; the other three areas are district services."""
    if area is ServiceArea.HIGHWAYS:
        return set(config.authorities)
    return {code for code, a in config.authorities.items() if a.kind is AuthorityKind.DISTRICT}


def test_the_partnership_is_the_county_and_six_districts(config: Config) -> None:
    kinds = [a.kind for a in config.authorities.values()]
    assert kinds.count(AuthorityKind.COUNTY) == 1
    assert kinds.count(AuthorityKind.DISTRICT) == 6
    assert {s.area for s in config.services.values()} == set(ServiceArea)


def test_every_service_is_routed_for_exactly_the_authorities_that_provide_it(config: Config) -> None:
    for key, service in config.services.items():
        routed = {authority for (authority, svc) in config.routes if svc == key}
        assert routed == expected_authorities(config, service.area), key


def test_district_services_are_not_routed_for_the_county(config: Config) -> None:
    county = next(c for c, a in config.authorities.items() if a.kind is AuthorityKind.COUNTY)
    for key, service in config.services.items():
        if service.area is not ServiceArea.HIGHWAYS:
            assert (county, key) not in config.routes, key


def test_every_route_names_an_existing_connector_mapping_and_sla_policy(config: Config) -> None:
    sla = load_sla_config(config.config_dir)
    for (authority, service), route in config.routes.items():
        assert route.connector.name in config.connectors
        assert Path(route.mapping_path).is_file(), route.mapping_path
        mapping = load_mapping(route.mapping_path)
        assert mapping.service == service, f"{authority}/{service} -> {route.mapping_path}"
        assert mapping.plugin == route.connector.plugin, f"{authority}/{service}"
        assert route.sla_policy == service  # each service has its own policy, named on the route
        sla.policy(route.sla_policy)  # raises if missing


def test_each_area_goes_to_its_back_office_kind(config: Config) -> None:
    plugin_of = {ServiceArea.REFUSE: "bartec", ServiceArea.REVENUES: "revenues",
                 ServiceArea.HIGHWAYS: "open311", ServiceArea.PLANNING: "planning"}
    for (_, service), route in config.routes.items():
        assert route.connector.plugin == plugin_of[config.services[service].area], service


def test_district_systems_serve_only_their_own_district(config: Config) -> None:
    for (authority, service), route in config.routes.items():
        area = config.services[service].area
        if area in (ServiceArea.REFUSE, ServiceArea.PLANNING):
            assert route.connector.name == f"{area.value}-{authority}"
        if area is ServiceArea.HIGHWAYS:
            assert route.connector.name == "highways-county"


def test_revenues_shared_service_bills_its_three_councils(config: Config) -> None:
    from hubbridge.connectors.revenues.connector import AUTHORITY_CODES
    from hubbridge.connectors.revenues.simulator import TENANT_AUTHORITIES

    for (authority, service), route in config.routes.items():
        if config.services[service].area is not ServiceArea.REVENUES:
            continue
        expected = ("revenues-shared-services" if authority in ("malvern-hills", "worcester", "wychavon")
                    else f"revenues-{authority}")
        assert route.connector.name == expected, f"{authority}/{service}"
        # the system at that endpoint must bill this council, or it refuses the work item
        tenant = route.connector.endpoint.rstrip("/").rsplit("/", 1)[-1]
        assert AUTHORITY_CODES[authority] in TENANT_AUTHORITIES[tenant], f"{authority} on {tenant}"


def test_every_instance_is_used_by_some_route(config: Config) -> None:
    used = {r.connector.name for r in config.routes.values()}
    assert used == set(config.connectors)


def _connector(instance: ConnectorInstance):  # type: ignore[no-untyped-def]
    env = {name: demo_secret(name) for name in instance.credentials.values()}
    return connector_class(instance.plugin)(instance, env=env)


def test_every_instance_names_the_credentials_its_plugin_needs(config: Config) -> None:
    needs = {"bartec": {"username", "password"}, "revenues": {"username", "password"},
             "open311": {"api_key"}, "planning": {"token"}}
    for inst in config.connectors.values():
        assert set(inst.credentials) == needs[inst.plugin], inst.name
        conn = _connector(inst)
        assert conn.target_fields()
        conn.close()
    names = [v for inst in config.connectors.values() for v in inst.credentials.values()]
    assert len(names) == len(set(names)), "two instances share a credential variable"


@pytest.mark.parametrize("plugin", ["bartec", "revenues", "open311", "planning"])
def test_demo_simulators_accept_the_demo_credentials_of_every_instance(config: Config, plugin: str) -> None:
    """Each instance, pointed at its plugin's demo simulator, gets an answer (not an authentication refusal)."""
    sim = simulator_for(plugin, 0, config).start()
    try:
        for inst in (i for i in config.connectors.values() if i.plugin == plugin):
            path = inst.endpoint.split("/", 3)[3]
            moved = inst.model_copy(update={"endpoint": f"{sim.url.rstrip('/')}/{path}"})
            conn = _connector(moved)
            try:
                assert conn.find("WH-2026-999999") is None, inst.name
                page = conn.updates_since(None, 10)
                assert page.updates == [], inst.name
            finally:
                conn.close()
    finally:
        sim.stop()


@pytest.mark.parametrize("plugin", ["revenues", "open311", "planning"])
def test_demo_simulators_refuse_a_wrong_credential(config: Config, plugin: str) -> None:
    sim = simulator_for(plugin, 0, config).start()
    try:
        inst = next(i for i in config.connectors.values() if i.plugin == plugin)
        path = inst.endpoint.split("/", 3)[3]
        moved = inst.model_copy(update={"endpoint": f"{sim.url.rstrip('/')}/{path}"})
        env = {name: "wrong-secret" for name in inst.credentials.values()}
        conn = connector_class(plugin)(moved, env=env)
        try:
            refused = {"revenues": "username or password", "open311": "api_key", "planning": "token"}[plugin]
            with pytest.raises(PermanentError, match=refused):
                if plugin == "open311":  # reads are public in GeoReport v2; the key is checked on writes
                    conn.cancel("200001", "test")
                else:
                    conn.find("WH-2026-999999")
        finally:
            conn.close()
    finally:
        sim.stop()
