"""The shared zeep plumbing: fault classification, the classifying transport and WSDL field introspection."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import responses
from zeep import Client
from zeep import exceptions as zx

from hubbridge.config.models import ConnectorInstance, Timeouts
from hubbridge.connectors.http import HttpClient
from hubbridge.connectors.soap import ClassifyingTransport, call, facet_index, make_client, target_fields_of
from hubbridge.errors import (
    BadResponseError,
    PermanentError,
    TransientError,
    UnknownOutcomeError,
)

URL = "http://backoffice.invalid/soap"


def _http() -> HttpClient:
    instance = ConnectorInstance(name="soap-test", plugin="x", endpoint=URL, timeouts=Timeouts(connect=1, read=1))
    return HttpClient(instance)


@pytest.mark.parametrize(("exc", "expected"), [
    (zx.Fault("bad UPRN", code="soap:Client"), PermanentError),
    (zx.Fault("bad UPRN", code="{http://www.w3.org/2003/05/soap-envelope}Sender"), PermanentError),
    (zx.Fault("database timeout", code="soap:Server"), TransientError),
    (zx.DTDForbidden("x", "y", "z"), BadResponseError),
    (zx.EntitiesForbidden("x", "y"), BadResponseError),
    (zx.TransportError("busy", status_code=503), TransientError),
    (zx.TransportError("slow down", status_code=429), TransientError),
    (zx.TransportError("no such path", status_code=404), PermanentError),
    (zx.TransportError("junk", status_code=200), BadResponseError),
    (zx.XMLSyntaxError("broken"), BadResponseError),
    (zx.XMLParseError("Unexpected element"), BadResponseError),
    (ValueError("invalid literal for int()"), BadResponseError),
])
def test_call_classifies(exc: Exception, expected: type[Exception]) -> None:
    def boom() -> None:
        raise exc

    with pytest.raises(expected) as info:
        call("soap-test", "Op", boom)
    assert info.value.instance == "soap-test"
    assert "Op" in info.value.message
    if expected is PermanentError:
        assert not isinstance(info.value, TransientError)


def test_call_passes_hubbridge_errors_through() -> None:
    def boom() -> None:
        raise UnknownOutcomeError("sent, no answer", instance="soap-test")

    with pytest.raises(UnknownOutcomeError):
        call("soap-test", "Op", boom)


@pytest.mark.parametrize(("headers", "op"), [
    ({"SOAPAction": '"http://bartec-systems.com/ServiceRequests_Get"'}, "ServiceRequests_Get"),
    ({"SOAPAction": "urn:council#Create"}, "Create"),
    ({"Content-Type": 'application/soap+xml; charset=utf-8; action="http://x.org/Svc/Update"'}, "Update"),
    ({}, ""),
])
def test_operation_of(headers: dict[str, str], op: str) -> None:
    assert ClassifyingTransport.operation_of(headers) == op


@responses.activate
def test_timeout_on_a_read_is_transient_but_on_a_write_unknown() -> None:
    responses.add(responses.POST, URL, body=requests.exceptions.ReadTimeout("timed out"))
    transport = ClassifyingTransport(_http(), safe_operations={"Get"})
    with pytest.raises(TransientError) as info:
        transport.post(URL, b"<x/>", {"SOAPAction": '"urn:x/Get"'})
    assert not isinstance(info.value, UnknownOutcomeError)
    with pytest.raises(UnknownOutcomeError):
        transport.post(URL, b"<x/>", {"SOAPAction": '"urn:x/Create"'})


@responses.activate
def test_429_keeps_retry_after_and_html_5xx_is_transient() -> None:
    responses.add(responses.POST, URL, status=429, body="slow down", headers={"Retry-After": "7"})
    responses.add(responses.POST, URL, status=502, body="<html>Bad gateway</html>", content_type="text/html")
    transport = ClassifyingTransport(_http())
    with pytest.raises(TransientError) as info:
        transport.post(URL, b"<x/>", {"SOAPAction": "urn:x/Get"})
    assert info.value.retry_after == 7
    with pytest.raises(TransientError, match="HTTP 502"):
        transport.post(URL, b"<x/>", {"SOAPAction": "urn:x/Get"})


def test_transport_never_fetches_remote_documents() -> None:
    transport = ClassifyingTransport(_http())
    with pytest.raises(PermanentError, match="loaded from the repo only"):
        transport.load("http://evil.invalid/schema.xsd")


WSDL = """<?xml version="1.0"?>
<wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/" xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
    xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:tns="urn:t" targetNamespace="urn:t">
  <wsdl:types>
    <xsd:schema targetNamespace="urn:t" elementFormDefault="qualified">
      <xsd:simpleType name="stShort">
        <xsd:restriction base="xsd:string"><xsd:maxLength value="10"/></xsd:restriction>
      </xsd:simpleType>
      <xsd:complexType name="ctLine">
        <xsd:sequence>
          <xsd:element name="Code">
            <xsd:simpleType><xsd:restriction base="xsd:string">
              <xsd:enumeration value="A"/><xsd:enumeration value="B"/>
            </xsd:restriction></xsd:simpleType>
          </xsd:element>
          <xsd:element name="Text" type="tns:stShort" minOccurs="0"/>
        </xsd:sequence>
      </xsd:complexType>
      <xsd:element name="Create">
        <xsd:complexType>
          <xsd:sequence>
            <xsd:element name="Name" type="tns:stShort"/>
            <xsd:element name="Count" type="xsd:int" minOccurs="0"/>
            <xsd:element name="Line" type="tns:ctLine" minOccurs="0" maxOccurs="unbounded"/>
            <xsd:element name="Note" minOccurs="0">
              <xsd:simpleType>
                <xsd:restriction base="xsd:string"><xsd:length value="4"/></xsd:restriction>
              </xsd:simpleType>
            </xsd:element>
          </xsd:sequence>
        </xsd:complexType>
      </xsd:element>
      <xsd:element name="CreateResponse"><xsd:complexType><xsd:sequence/></xsd:complexType></xsd:element>
    </xsd:schema>
  </wsdl:types>
  <wsdl:message name="In"><wsdl:part name="parameters" element="tns:Create"/></wsdl:message>
  <wsdl:message name="Out"><wsdl:part name="parameters" element="tns:CreateResponse"/></wsdl:message>
  <wsdl:portType name="P"><wsdl:operation name="Create"><wsdl:input message="tns:In"/><wsdl:output message="tns:Out"/>
  </wsdl:operation></wsdl:portType>
  <wsdl:binding name="B" type="tns:P"><soap:binding transport="http://schemas.xmlsoap.org/soap/http"/>
    <wsdl:operation name="Create"><soap:operation soapAction="urn:t/Create"/>
      <wsdl:input><soap:body use="literal"/></wsdl:input><wsdl:output><soap:body use="literal"/></wsdl:output>
    </wsdl:operation>
  </wsdl:binding>
  <wsdl:service name="S"><wsdl:port name="P" binding="tns:B"><soap:address location="http://127.0.0.1:1/"/></wsdl:port></wsdl:service>
</wsdl:definitions>
"""


@pytest.fixture
def wsdl_file(tmp_path: Path) -> Path:
    path = tmp_path / "t.wsdl"
    path.write_text(WSDL)
    return path


def test_target_fields_carry_wsdl_facets(wsdl_file: Path) -> None:
    client, _ = make_client(wsdl_file, _http(), "http://127.0.0.1:1/", "{urn:t}B")
    fields = target_fields_of(client, "{urn:t}Create")
    assert list(fields) == ["Name", "Count", "Line", "Note"]
    assert fields["Name"].max_length == 10 and fields["Name"].required and fields["Name"].type == "string"
    assert fields["Count"].type == "int" and not fields["Count"].required
    line = fields["Line"]
    assert line.repeated and line.type == "object"
    assert line.children["Code"].enum == ("A", "B")
    assert line.children["Text"].max_length == 10
    assert fields["Note"].max_length == 4


def test_facet_index_reads_named_and_anonymous_types(wsdl_file: Path) -> None:
    index = facet_index(str(wsdl_file))
    assert index["{urn:t}stShort"].max_length == 10
    assert index["{urn:t}Code"].enum == ("A", "B")


def test_zeep_settings_refuse_dtds(wsdl_file: Path) -> None:
    client, _ = make_client(wsdl_file, _http(), "http://127.0.0.1:1/", "{urn:t}B")
    assert isinstance(client, Client)
    assert client.settings.forbid_dtd and client.settings.forbid_entities and client.settings.forbid_external
