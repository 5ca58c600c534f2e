"""Bartec Collective (refuse and street scene): the SOAP connector and its loopback simulator."""

from hubbridge.connectors.bartec.connector import BartecConnector
from hubbridge.connectors.bartec.simulator import BartecSimulator, serve

__all__ = ["BartecConnector", "BartecSimulator", "serve"]
