"""District councils' planning back offices (REST/JSON, Idox Uniform / planning.data style) and their simulator."""

from hubbridge.connectors.planning.connector import PlanningConnector
from hubbridge.connectors.planning.simulator import PlanningSimulator

__all__ = ["PlanningConnector", "PlanningSimulator"]
