"""A third-party connector plugin found through its entry point and passing the conformance suite.

The example distribution lives in tests/connectors/example_plugin/ (with its own pyproject.toml). Rather
than pip-installing it, each test writes the `.dist-info` that installing would create into a temporary
directory on sys.path, so discovery goes through importlib.metadata exactly as for an installed plugin.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hubbridge.connectors.base import Delivery, connector_class
from hubbridge.connectors.conformance import conformance_tests
from hubbridge.connectors.simulator import Simulator
from hubbridge.errors import ConfigError

PLUGIN_DIR = Path(__file__).parent / "example_plugin"
TENANT = "malvern-hills"


@pytest.fixture
def example_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[type]:
    """Make `example-json` discoverable, as `pip install tests/connectors/example_plugin` would."""
    dist = tmp_path / "hubbridge_example_json-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hubbridge-example-json\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(
        "[hubbridge.connectors]\nexample-json = hubbridge_example_json:ExampleJsonConnector\n")
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = connector_class("example-json")
    yield cls
    for name in [m for m in sys.modules if m.startswith("hubbridge_example_json")]:
        sys.modules.pop(name, None)


def test_plugin_is_unknown_until_installed() -> None:
    with pytest.raises(ConfigError, match="unknown connector plugin 'example-json'"):
        connector_class("example-json")


def test_plugin_is_discovered_through_its_entry_point(example_plugin: type) -> None:
    assert example_plugin.__name__ == "ExampleJsonConnector"
    assert example_plugin.plugin == "example-json"


def _delivery(i: int, uprn: str = "100120000001") -> Delivery:
    return Delivery(hub_ref=f"WH-2026-{i + 1:06d}", authority=TENANT, service="refuse.bulky-waste",
                    payload={"description": f"Sofa and two chairs, case {i}", "uprn": uprn})


def _simulator() -> Simulator:
    from hubbridge_example_json import ExampleJsonSimulator  # importable once the plugin is "installed"

    return ExampleJsonSimulator()


TestExamplePluginConformance = conformance_tests(
    connector="example-json", simulator=_simulator, delivery=_delivery, tenant=TENANT,
    refused_delivery=lambda i: _delivery(900 + i, uprn="0"), name="example", read_timeout=5.0,
    fixtures=["example_plugin"])
