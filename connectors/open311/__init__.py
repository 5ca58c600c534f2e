"""The highways connector plugin `open311` (GeoReport v2) and its loopback simulator."""

from hubbridge.connectors.open311.connector import Open311Connector
from hubbridge.connectors.open311.simulator import Open311Simulator

__all__ = ["Open311Connector", "Open311Simulator"]
