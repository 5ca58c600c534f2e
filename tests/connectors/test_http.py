"""The shared HTTP client reads proxies and the CA bundle from the environment once, not per request."""

from __future__ import annotations

import pytest
import responses

from hubbridge.connectors.http import HttpClient


def test_proxies_come_from_the_environment_and_honour_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.council.example:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,internal.council.example")
    http = HttpClient(name="t")
    assert http.proxies_for("https://bartec.example/soap")["https"] == "http://proxy.council.example:3128"
    assert "https" not in http.proxies_for("https://internal.council.example/api")
    assert "https" not in http.proxies_for("https://127.0.0.1:8443/api")


def test_proxies_are_read_once_per_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    http = HttpClient(name="t")
    assert "https" not in http.proxies_for("https://bartec.example/a")
    monkeypatch.setenv("HTTPS_PROXY", "http://late.example:3128")
    assert "https" not in http.proxies_for("https://bartec.example/b")  # same host: the answer was kept
    assert http.proxies_for("https://other.example/")["https"] == "http://late.example:3128"


def test_the_ca_bundle_from_the_environment_is_used_when_tls_is_verified(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/council/ca.pem")
    assert HttpClient(name="t").session.verify == "/etc/council/ca.pem"
    assert HttpClient(name="t", verify=False).session.verify is False


def test_netrc_credentials_are_never_sent(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine bo.example login alice password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with responses.RequestsMock() as rsps:
        rsps.get("https://bo.example/ping", body="ok")
        HttpClient(name="t").request("GET", "https://bo.example/ping")
        assert "Authorization" not in rsps.calls[0].request.headers
