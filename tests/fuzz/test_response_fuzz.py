"""Fuzzing back-office answers through each connector's parsing (HTTP faked with `responses`).

Whatever comes back — garbage, truncated or hostile XML, JSON of the wrong shape, the wrong content
type or status — a connector either returns a proper result or raises one of the project's
ConnectorError subclasses with a message naming the instance; never a raw exception.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubbridge.config.models import ConnectorInstance, Timeouts
from hubbridge.connectors.base import Connector, CreateResult, Delivery, UpdatePage, connector_class
from hubbridge.connectors.simulator import BILLION_LAUGHS_BODY, XXE_BODY
from hubbridge.errors import ConnectorError

FUZZ = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
HOST = "http://backoffice.invalid"
ENV = {"USER_VAR": "user", "PASS_VAR": "password", "KEY_VAR": "api-key", "TOKEN_VAR": "token"}

SOAP_OK = (
    b'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
    b"<soap:Body><Response><Result><Code>0</Code></Result><Token>abc</Token></Response></soap:Body></soap:Envelope>"
)
QUADRATIC_BLOWUP = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "' + b"x" * 5000 + b'">]><r>' + b"&a;" * 200 + b"</r>"
EXTERNAL_DTD = b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://attacker.invalid/evil.dtd"><r>1</r>'

INSTANCES = {
    "bartec": dict(credentials={"username": "USER_VAR", "password": "PASS_VAR"}),
    "revenues": dict(credentials={"username": "USER_VAR", "password": "PASS_VAR"}),
    "open311-json": dict(credentials={"api_key": "KEY_VAR"}, options={"format": "json"}),
    "open311-xml": dict(credentials={"api_key": "KEY_VAR"}, options={"format": "xml"}),
    "planning": dict(credentials={"token": "TOKEN_VAR"}),
}


def make(kind: str) -> Connector:
    plugin = kind.split("-")[0]
    inst = ConnectorInstance(name=f"fuzz-{kind}", plugin=plugin, endpoint=f"{HOST}/tenant/",
                             timeouts=Timeouts(connect=1, read=1), **INSTANCES[kind])
    return connector_class(plugin)(inst, env=ENV)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(
        ["id", "service_request_id", "enquiries", "changes", "status", "error", "token", "sequence", "x"]), c,
        max_size=4),
    max_leaves=10,
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.integers(1, len(SOAP_OK) - 1).map(lambda n: SOAP_OK[:n]),
    st.sampled_from([XXE_BODY, BILLION_LAUGHS_BODY, QUADRATIC_BLOWUP, EXTERNAL_DTD, SOAP_OK, b"", b"null",
                     b"<html><body>502 Bad Gateway</body></html>", b'{"enquiries": [{"id": {"x": 1}}]}']),
)
content_types = st.sampled_from(["application/json", "text/xml; charset=utf-8", "application/soap+xml",
                                 "text/html", "application/octet-stream", "application/json; charset=latin-1"])
statuses = st.sampled_from([200, 200, 200, 201, 400, 401, 404, 409, 422, 500, 502])


def delivery() -> Delivery:
    return Delivery(hub_ref="WH-2026-000001", authority="worcester", service="x.y", payload={"description": "x"})


CALLS: dict[str, Callable[[Connector], Any]] = {
    "find": lambda c: c.find("WH-2026-000001"),
    "updates": lambda c: c.updates_since(None, 50),
    "create": lambda c: c.create(delivery()),
}


def exercise(kind: str, call: str, body: bytes, ctype: str, status: int) -> None:
    conn = make(kind)
    try:
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            for method in ("GET", "POST"):
                rsps.add(method, re.compile(re.escape(HOST) + ".*"), body=body, status=status, content_type=ctype)
            try:
                result = CALLS[call](conn)
            except ConnectorError as exc:
                text = str(exc)
                assert text and conn.name in text and len(text) < 3000, text
                return
        assert result is None or isinstance(result, CreateResult | UpdatePage), result
    finally:
        conn.close()


@pytest.mark.parametrize("kind", sorted(INSTANCES))
@pytest.mark.parametrize("call", sorted(CALLS))
@FUZZ
@given(body=bodies, ctype=content_types, status=statuses)
def test_any_answer_is_a_result_or_a_connector_error(kind: str, call: str, body: bytes, ctype: str,
                                                     status: int) -> None:
    exercise(kind, call, body, ctype, status)


@pytest.mark.parametrize("kind", sorted(INSTANCES))
@pytest.mark.parametrize("body", [XXE_BODY, BILLION_LAUGHS_BODY, QUADRATIC_BLOWUP, EXTERNAL_DTD],
                         ids=["xxe", "billion-laughs", "quadratic-blowup", "external-dtd"])
def test_hostile_xml_is_refused_not_expanded(kind: str, body: bytes) -> None:
    for call in CALLS:
        for ctype in ("text/xml", "application/json"):
            exercise(kind, call, body, ctype, 200)
