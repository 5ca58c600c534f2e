"""Revenues & benefits back offices (Civica / Northgate style SOAP work items): connector and simulator."""

from hubbridge.connectors.revenues.connector import RevenuesConnector
from hubbridge.connectors.revenues.simulator import RevenuesSimulator

__all__ = ["RevenuesConnector", "RevenuesSimulator"]
