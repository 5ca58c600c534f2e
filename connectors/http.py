"""One HTTP client for every connector: timeouts, TLS on, size limits and fault classification."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from lxml import etree

from hubbridge.config.models import ConnectorInstance, Timeouts
from hubbridge.errors import BadResponseError, PermanentError, TransientError, UnknownOutcomeError

MAX_RESPONSE_BYTES = 10 * 1024 * 1024

SAFE_XML_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_blank_text=True,
)


def parse_xml(body: bytes, instance: str, what: str = "response") -> etree._Element:
    """Parse XML from a back office, refusing DTDs and entities outright (XXE, billion laughs)."""
    if b"<!DOCTYPE" in body[:4096] or b"<!ENTITY" in body:
        raise BadResponseError(
            f"{what} carries a DTD or entity declarations, refused",
            instance=instance,
            hint="the back office (or something in between) sent hostile or broken XML",
        )
    try:
        root = etree.fromstring(body, SAFE_XML_PARSER)
    except etree.XMLSyntaxError as exc:
        raise BadResponseError(f"{what} is not well-formed XML: {exc.msg}", instance=instance) from None
    if root is None:
        raise BadResponseError(f"{what} is empty", instance=instance)
    return root


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            from datetime import UTC, datetime

            return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            return None


class HttpClient:
    """A requests session bound to one connector instance, raising only hubbridge errors."""

    def __init__(
        self,
        instance: ConnectorInstance | None = None,
        *,
        name: str | None = None,
        timeouts: Timeouts | None = None,
        verify: bool = True,
    ) -> None:
        self.name = name or (instance.name if instance else "http")
        self.timeouts = timeouts or (instance.timeouts if instance else Timeouts())
        self.session = requests.Session()
        # requests re-reads the whole environment (proxies, CA bundle, .netrc) on every request: about 2 ms of
        # CPU each, a tenth of a delivery. Read proxies and the CA bundle once per host instead; .netrc is never
        # read (credentials come only from hubbridge's own environment variables).
        self.session.trust_env = False
        self.session.verify = instance.verify_tls if instance else verify
        if self.session.verify is True:
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            if bundle:
                self.session.verify = bundle
        self.session.headers["User-Agent"] = "hubbridge/0.1"
        self._proxies: dict[str, dict[str, str]] = {}

    def proxies_for(self, url: str) -> dict[str, str]:
        """The proxies the environment (HTTP(S)_PROXY, NO_PROXY) gives for `url`'s host, read once per host."""
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        found = self._proxies.get(key)
        if found is None:
            found = self._proxies[key] = requests.utils.get_environ_proxies(url)
        return found

    def request(self, method: str, url: str, *, sending: bool = False, **kwargs: Any) -> requests.Response:
        """Send one request; `sending=True` marks a request with effects, whose timeout means unknown outcome."""
        kwargs.setdefault("timeout", (self.timeouts.connect, self.timeouts.read))
        kwargs.setdefault("proxies", self.proxies_for(url))
        try:
            resp = self.session.request(method, url, stream=True, **kwargs)
        except requests.exceptions.ConnectTimeout as exc:
            raise TransientError(f"connect timeout to {url}: {exc}", instance=self.name) from None
        except requests.exceptions.ReadTimeout:
            if sending:
                raise UnknownOutcomeError(
                    f"no answer from {url} within {self.timeouts.read}s after sending",
                    instance=self.name,
                    hint="the request may have been done; it will be looked up before being sent again",
                ) from None
            raise TransientError(f"read timeout from {url}", instance=self.name) from None
        except requests.exceptions.ConnectionError as exc:
            if sending and "Connection aborted" in str(exc):
                raise UnknownOutcomeError(f"connection dropped by {url} after sending", instance=self.name) from None
            raise TransientError(f"cannot connect to {url}: {type(exc).__name__}", instance=self.name) from None
        except requests.exceptions.RequestException as exc:
            raise TransientError(f"request to {url} failed: {exc}", instance=self.name) from None
        self._read_limited(resp, url, sending)
        return resp

    def _read_limited(self, resp: requests.Response, url: str, sending: bool) -> None:
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
            resp.close()
            raise BadResponseError(f"response from {url} is {declared} bytes, over the limit", instance=self.name)
        chunks, size = [], 0
        try:
            for chunk in resp.iter_content(65536):
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    resp.close()
                    raise BadResponseError(
                        f"response from {url} exceeds {MAX_RESPONSE_BYTES} bytes", instance=self.name
                    )
                chunks.append(chunk)
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError) as exc:
            err = UnknownOutcomeError if sending else BadResponseError
            raise err(f"response from {url} was cut off: {type(exc).__name__}", instance=self.name) from None
        except requests.exceptions.ReadTimeout:
            err = UnknownOutcomeError if sending else TransientError
            raise err(f"response from {url} stalled", instance=self.name) from None
        resp._content = b"".join(chunks)  # type: ignore[attr-defined]
        if declared and declared.isdigit() and int(declared) != len(resp._content):  # type: ignore[attr-defined]
            raise BadResponseError(
                f"response from {url} truncated ({len(resp.content)} of {declared} bytes)", instance=self.name
            )

    @staticmethod
    def raise_for_status(resp: requests.Response, name: str, body_hint: str | None = None) -> None:
        """Classify an HTTP error status: 429 and 5xx are transient, other 4xx permanent."""
        code = resp.status_code
        if code < 400:
            return
        snippet = body_hint or resp.text[:200].replace("\n", " ")
        if code == 429:
            raise TransientError(
                f"rate limited (429): {snippet}",
                instance=name,
                retry_after=retry_after_seconds(resp.headers.get("Retry-After")),
            )
        if code >= 500 or code in (408, 425):
            raise TransientError(f"HTTP {code} from back office: {snippet}", instance=name)
        raise PermanentError(
            f"HTTP {code} refused: {snippet}",
            instance=name,
            hint="the request itself was refused; fix the mapping or the case and replay",
        )

    def json(self, resp: requests.Response, url: str) -> Any:
        ctype = resp.headers.get("Content-Type", "")
        if "json" not in ctype:
            raise BadResponseError(
                f"expected JSON from {url}, got content type {ctype or 'none'!r}", instance=self.name
            )
        try:
            return resp.json()
        except ValueError as exc:
            raise BadResponseError(f"response from {url} is not valid JSON: {exc}", instance=self.name) from None

    def close(self) -> None:
        self.session.close()


def headers_with(base: Mapping[str, str], **extra: str | None) -> dict[str, str]:
    out = dict(base)
    out.update({k: v for k, v in extra.items() if v is not None})
    return out
