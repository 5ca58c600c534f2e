"""SLA policies, business calendars, clocks, the breach sweep and reports."""

from hubbridge.sla import tables as tables  # registers the SLA tables on the store's metadata

__all__ = ["tables"]
