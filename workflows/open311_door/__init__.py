"""The Open311 GeoReport v2 front door: FixMyStreet (or any GeoReport v2 client) as a Hub channel.

Serves /open311/v2/ in JSON and XML: `services`, `services/{code}`, `requests` (POST, GET), `requests/{id}`,
`tokens/{token}` and FixMyStreet's `servicerequestupdates` (GET, POST). A posted request becomes a Hub case
through `accept_case` like any other, under a Hub reference of the client's prefix allocated from a store
counter; the client's own id (`attribute[fixmystreet_id]`) makes a resend answer the same reference.

Where each piece is: `wire` (JSON/XML answers, the spec's errors), `tables` (store rows, reference allocation),
`catalogue` (config, clients, services and their definitions), `service_requests` (POST and GET requests),
`updates` (servicerequestupdates) and `router` (the FastAPI routes).
"""

from hubbridge.workflows.open311_door.catalogue import DoorConfig, door_config
from hubbridge.workflows.open311_door.router import PREFIX, open311_router
from hubbridge.workflows.open311_door.service_requests import post_request
from hubbridge.workflows.open311_door.tables import Open311RequestRow, Open311SerialRow, _allocate
from hubbridge.workflows.open311_door.updates import post_update
from hubbridge.workflows.open311_door.wire import GeoReportError

__all__ = [
    "PREFIX",
    "DoorConfig",
    "GeoReportError",
    "Open311RequestRow",
    "Open311SerialRow",
    "_allocate",
    "door_config",
    "open311_router",
    "post_request",
    "post_update",
]
