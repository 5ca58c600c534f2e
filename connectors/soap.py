"""Shared zeep plumbing for SOAP connectors: hardened settings, our HTTP client, fault classification."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lxml import etree
from zeep import Client, Settings
from zeep import exceptions as zx
from zeep.transports import Transport

from hubbridge.connectors.base import TargetField
from hubbridge.connectors.http import MAX_RESPONSE_BYTES, SAFE_XML_PARSER, HttpClient, retry_after_seconds
from hubbridge.errors import (
    BadResponseError,
    ConnectorError,
    PermanentError,
    TransientError,
)

T = TypeVar("T")

ZEEP_SETTINGS = Settings(
    strict=True,
    forbid_dtd=True,
    forbid_entities=True,
    forbid_external=True,
    xml_huge_tree=False,
    raw_response=False,
)


class ClassifyingTransport(Transport):
    """zeep transport over `HttpClient`, so timeouts, size limits and resets raise hubbridge errors.

    Operations named in `safe_operations` have no effect in the back office, so a timeout on them is a
    plain `TransientError`; on any other operation it is an `UnknownOutcomeError`.
    """

    def __init__(self, http: HttpClient, safe_operations: Collection[str] = ()) -> None:
        super().__init__(session=http.session, timeout=http.timeouts.read,
                         operation_timeout=http.timeouts.read)
        self.http = http
        self.safe_operations = frozenset(safe_operations)

    @staticmethod
    def operation_of(headers: Mapping[str, str]) -> str:
        """The operation name from a SOAP 1.1 SOAPAction (or SOAP 1.2 action parameter)."""
        action = headers.get("SOAPAction") or ""
        if not action:
            ctype = headers.get("Content-Type", "")
            found = re.search(r'action="?([^";]+)', ctype)
            action = found.group(1) if found else ""
        return re.split(r"[/#]", action.strip('"').rstrip("/"))[-1]

    def post(self, address: str, message: bytes, headers: Mapping[str, str]) -> Any:
        op = self.operation_of(headers)
        sending = op not in self.safe_operations
        resp = self.http.request("POST", address, data=message, headers=dict(headers), sending=sending)
        ctype = resp.headers.get("Content-Type", "")
        if resp.status_code == 429:
            raise TransientError(f"{op}: rate limited by the back office (HTTP 429)", instance=self.http.name,
                                 retry_after=retry_after_seconds(resp.headers.get("Retry-After")))
        if resp.status_code >= 500 and "xml" not in ctype:
            # a SOAP fault comes as XML with a 500; anything else is a server or proxy error page
            raise TransientError(f"{op}: HTTP {resp.status_code} from back office", instance=self.http.name)
        return resp

    def load(self, url: str) -> bytes:  # WSDLs are shipped files; never fetched from the network
        if url.startswith(("http://", "https://")):
            raise PermanentError(f"refusing to fetch {url}: WSDLs and XSDs are loaded from the repo only")
        return super().load(url)


def make_client(wsdl: Path, http: HttpClient, endpoint: str, binding: str,
                safe_operations: Collection[str] = ()) -> tuple[Client, Any]:
    """A zeep client from a shipped WSDL whose service is bound to `endpoint`."""
    client = Client(str(wsdl), transport=ClassifyingTransport(http, safe_operations), settings=ZEEP_SETTINGS)
    return client, client.create_service(binding, endpoint)


def call(name: str, op: str, fn: Callable[[], T]) -> T:
    """Run one zeep call, turning every zeep / XML failure into a classified hubbridge error."""
    try:
        return fn()
    except ConnectorError:
        raise
    except zx.Fault as exc:
        code = str(exc.code or "")
        if code.endswith(("Client", "Sender")):
            raise PermanentError(
                f"{op}: SOAP client fault: {exc.message}", instance=name,
                hint="the back office refused the request; fix the case or mapping and replay",
            ) from None
        raise TransientError(f"{op}: SOAP server fault: {exc.message}", instance=name) from None
    except (zx.DTDForbidden, zx.EntitiesForbidden, zx.ExternalReferenceForbidden) as exc:
        raise BadResponseError(f"{op}: hostile XML refused ({type(exc).__name__})", instance=name) from None
    except zx.TransportError as exc:
        status = exc.status_code or 0
        if status == 429 or status >= 500:
            raise TransientError(f"{op}: HTTP {status} from back office", instance=name) from None
        if 400 <= status < 500:
            raise PermanentError(f"{op}: HTTP {status} refused", instance=name) from None
        raise BadResponseError(f"{op}: transport error {str(exc)[:300]}", instance=name) from None
    except (zx.XMLSyntaxError, etree.XMLSyntaxError) as exc:
        raise BadResponseError(f"{op}: response is not well-formed XML: {str(exc)[:300]}", instance=name) from None
    except (zx.ValidationError, zx.XMLParseError, zx.LookupError) as exc:
        raise BadResponseError(f"{op}: response does not match the WSDL: {str(exc)[:300]}", instance=name) from None
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise BadResponseError(f"{op}: response has unexpected content: {type(exc).__name__}: {exc}",
                               instance=name) from None


XSD_NS = "http://www.w3.org/2001/XMLSchema"
WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"


@dataclass(frozen=True)
class Facets:
    """The restriction facets of one simple type, which zeep itself discards."""

    base: str = "string"
    max_length: int | None = None
    enum: tuple[str, ...] = ()


def _schema_files(location: str) -> list[Path]:
    """The shipped WSDL and every local XSD it (transitively) imports or includes."""
    todo, seen = [Path(location)], []
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.append(path)
        root = etree.parse(str(path), SAFE_XML_PARSER).getroot()
        for node in root.iter(f"{{{XSD_NS}}}import", f"{{{XSD_NS}}}include", f"{{{WSDL_NS}}}import"):
            ref = node.get("schemaLocation") or node.get("location")
            if ref and not ref.startswith(("http://", "https://")):
                todo.append((path.parent / ref).resolve())
    return seen


def facet_index(location: str) -> dict[str, Facets]:
    """Facets of every simple type in the WSDL's schemas, by the qname zeep gives the type.

    zeep names an anonymous simple type after its element, so those are indexed as `{ns}element`;
    a name used by two different anonymous types is left out rather than guessed.
    """
    index: dict[str, Facets] = {}
    clashes: set[str] = set()
    for path in _schema_files(location):
        root = etree.parse(str(path), SAFE_XML_PARSER).getroot()
        for schema in root.iter(f"{{{XSD_NS}}}schema"):
            tns = schema.get("targetNamespace", "")
            for st in schema.iter(f"{{{XSD_NS}}}simpleType"):
                restriction = st.find(f"{{{XSD_NS}}}restriction")
                if restriction is None:
                    continue
                name = st.get("name") or st.getparent().get("name")
                if not name:
                    continue
                key = f"{{{tns}}}{name}"
                max_len = restriction.find(f"{{{XSD_NS}}}maxLength")
                length = restriction.find(f"{{{XSD_NS}}}length")
                limit = max_len if max_len is not None else length
                facets = Facets(
                    base=(restriction.get("base") or "string").rsplit(":", 1)[-1],
                    max_length=int(limit.get("value")) if limit is not None else None,
                    enum=tuple(e.get("value") for e in restriction.findall(f"{{{XSD_NS}}}enumeration")),
                )
                if st.get("name") is None and key in index and index[key] != facets:
                    clashes.add(key)
                index.setdefault(key, facets)
    for key in clashes:
        index.pop(key, None)
    return index


def target_fields_of(client: Client, element: str) -> dict[str, TargetField]:
    """Walk a WSDL element's XSD type into TargetFields, so mappings are checked against the WSDL.

    Types and nesting come from zeep; maxLength and enumeration facets from the shipped schema files,
    because zeep drops restriction facets when it loads a schema.
    """
    from zeep.xsd import ComplexType

    facets = facet_index(client.wsdl.location)

    def walk(xsd_type: Any) -> dict[str, TargetField]:
        fields: dict[str, TargetField] = {}
        if not isinstance(xsd_type, ComplexType):
            return fields
        for name, el in xsd_type.elements:
            t = el.type
            children = walk(t) if isinstance(t, ComplexType) else {}
            qname = getattr(t, "qname", None)
            found = facets.get(qname.text) if qname is not None else None
            if children:
                type_name = "object"
            elif found is not None:
                type_name = found.base
            else:
                type_name = qname.localname if qname is not None else "string"
            max_occurs = el.max_occurs
            fields[name] = TargetField(
                name=name, type=type_name, max_length=found.max_length if found else None,
                required=(el.min_occurs or 0) >= 1 and not getattr(el, "nillable", False),
                repeated=max_occurs == "unbounded" or (isinstance(max_occurs, int) and max_occurs > 1),
                enum=found.enum if found else (), children=children,
            )
        return fields

    return walk(client.get_element(element).type)


__all__ = [
    "MAX_RESPONSE_BYTES", "ZEEP_SETTINGS", "ClassifyingTransport", "Facets", "call", "facet_index", "make_client",
    "target_fields_of",
]
