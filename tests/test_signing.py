"""HMAC webhook signing: round trips, every refusal with its own message, and tamper-evidence properties."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from hubbridge.errors import SecurityError
from hubbridge.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify

SECRET = "s3cret-for-tests"
BODY = b'{"ref":"WH-2026-000123","status":"received"}'
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z


def test_sign_returns_both_headers_with_the_documented_digest() -> None:
    headers = sign(BODY, SECRET, timestamp=NOW)
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert headers == {TIMESTAMP_HEADER: str(NOW), SIGNATURE_HEADER: f"sha256={expected}"}
    assert TIMESTAMP_HEADER == "X-Hubbridge-Timestamp"
    assert SIGNATURE_HEADER == "X-Hubbridge-Signature"


def test_sign_defaults_to_now_and_verifies() -> None:
    headers = sign(BODY, SECRET)
    verify(headers, BODY, SECRET)


@pytest.mark.parametrize("transform", [str.lower, str.upper, lambda k: k], ids=["lower", "upper", "as-sent"])
def test_header_lookup_is_case_insensitive(transform) -> None:
    headers = {transform(k): v for k, v in sign(BODY, SECRET, timestamp=NOW).items()}
    verify(headers, BODY, SECRET, now=NOW)


def test_works_with_requests_headers() -> None:
    verify(CaseInsensitiveDict(sign(BODY, SECRET, timestamp=NOW)), BODY, SECRET, now=NOW)


def test_upper_case_hex_is_accepted() -> None:
    headers = sign(BODY, SECRET, timestamp=NOW)
    headers[SIGNATURE_HEADER] = "sha256=" + headers[SIGNATURE_HEADER].split("=", 1)[1].upper()
    verify(headers, BODY, SECRET, now=NOW)


@pytest.mark.parametrize("drop", [TIMESTAMP_HEADER, SIGNATURE_HEADER])
def test_missing_header_is_named(drop: str) -> None:
    headers = sign(BODY, SECRET, timestamp=NOW)
    del headers[drop]
    with pytest.raises(SecurityError, match=f"missing header {drop}"):
        verify(headers, BODY, SECRET, now=NOW)


def test_no_headers_at_all_names_both() -> None:
    with pytest.raises(SecurityError, match=f"missing header {TIMESTAMP_HEADER} and {SIGNATURE_HEADER}"):
        verify({}, BODY, SECRET, now=NOW)


@pytest.mark.parametrize("bad", ["", "abc", "-5", "1.5", "+1767225600", "1_767_225_600", "١٢٣", "1e9",
                                 "9" * 16])
def test_malformed_timestamp_is_refused(bad: str) -> None:
    headers = sign(BODY, SECRET, timestamp=NOW)
    headers[TIMESTAMP_HEADER] = bad
    with pytest.raises(SecurityError, match="malformed X-Hubbridge-Timestamp"):
        verify(headers, BODY, SECRET, now=NOW)


def test_stale_timestamp_is_a_replay() -> None:
    headers = sign(BODY, SECRET, timestamp=NOW - 301)
    with pytest.raises(SecurityError, match=r"stale X-Hubbridge-Timestamp: signed 301s ago.*replay"):
        verify(headers, BODY, SECRET, now=NOW)


def test_future_timestamp_is_refused() -> None:
    headers = sign(BODY, SECRET, timestamp=NOW + 301)
    with pytest.raises(SecurityError, match=r"future X-Hubbridge-Timestamp: signed 301s ahead"):
        verify(headers, BODY, SECRET, now=NOW)


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_window_edges_are_accepted(offset: int) -> None:
    verify(sign(BODY, SECRET, timestamp=NOW + offset), BODY, SECRET, now=NOW)


def test_window_is_configurable() -> None:
    headers = sign(BODY, SECRET, timestamp=NOW - 20)
    verify(headers, BODY, SECRET, now=NOW, window_seconds=30)
    with pytest.raises(SecurityError, match="stale"):
        verify(headers, BODY, SECRET, now=NOW, window_seconds=10)


def test_wrong_secret_is_a_bad_signature() -> None:
    with pytest.raises(SecurityError, match="bad signature"):
        verify(sign(BODY, SECRET, timestamp=NOW), BODY, "another-secret", now=NOW)


def test_signature_is_checked_before_freshness() -> None:
    # A forged old request learns nothing about the window: it is simply a bad signature.
    headers = sign(BODY, "attacker", timestamp=NOW - 10_000)
    with pytest.raises(SecurityError, match="bad signature"):
        verify(headers, BODY, SECRET, now=NOW)


@pytest.mark.parametrize("value", ["md5=abcd", "abcdef", "sha256", "sha256=", "sha256=zz", "sha256=é" * 3,
                                   "sha256=" + "0" * 64])
def test_malformed_or_foreign_signature_is_refused(value: str) -> None:
    headers = sign(BODY, SECRET, timestamp=NOW)
    headers[SIGNATURE_HEADER] = value
    with pytest.raises(SecurityError, match="bad signature"):
        verify(headers, BODY, SECRET, now=NOW)


def test_empty_secret_is_refused_both_ways() -> None:
    with pytest.raises(SecurityError, match="secret is empty"):
        sign(BODY, "")
    with pytest.raises(SecurityError, match="secret is empty"):
        verify(sign(BODY, SECRET), BODY, "")


def test_timestamp_change_breaks_the_signature() -> None:
    headers = sign(BODY, SECRET, timestamp=NOW)
    headers[TIMESTAMP_HEADER] = str(NOW + 1)
    with pytest.raises(SecurityError, match="bad signature"):
        verify(headers, BODY, SECRET, now=NOW)


secrets = st.text(min_size=1, max_size=64)
bodies = st.binary(max_size=2048)


@settings(max_examples=200, deadline=None)
@given(body=bodies, secret=secrets, ts=st.integers(min_value=0, max_value=10**12))
def test_property_any_body_and_secret_round_trip(body: bytes, secret: str, ts: int) -> None:
    verify(sign(body, secret, timestamp=ts), body, secret, now=ts)


@st.composite
def single_byte_changes(draw: st.DrawFn) -> tuple[bytes, bytes]:
    body = draw(bodies)
    kind = draw(st.sampled_from(["replace", "insert", "delete"] if body else ["insert"]))
    if kind == "insert":
        i = draw(st.integers(0, len(body)))
        return body, body[:i] + bytes([draw(st.integers(0, 255))]) + body[i:]
    i = draw(st.integers(0, len(body) - 1))
    if kind == "delete":
        return body, body[:i] + body[i + 1:]
    new = draw(st.integers(0, 255).filter(lambda b: b != body[i]))
    return body, body[:i] + bytes([new]) + body[i + 1:]


@settings(max_examples=300, deadline=None)
@given(change=single_byte_changes(), secret=secrets)
def test_property_any_single_byte_change_is_refused(change: tuple[bytes, bytes], secret: str) -> None:
    body, changed = change
    assert body != changed
    headers = sign(body, secret, timestamp=NOW)
    with pytest.raises(SecurityError, match="bad signature"):
        verify(headers, changed, secret, now=NOW)


@settings(max_examples=200, deadline=None)
@given(body=bodies, secret=secrets, pos=st.integers(0, 63), data=st.data())
def test_property_any_signature_digit_change_is_refused(
    body: bytes, secret: str, pos: int, data: st.DataObject
) -> None:
    headers = sign(body, secret, timestamp=NOW)
    digest = headers[SIGNATURE_HEADER].split("=", 1)[1]
    new = data.draw(st.sampled_from("0123456789abcdef").filter(lambda c: c != digest[pos]))
    headers[SIGNATURE_HEADER] = "sha256=" + digest[:pos] + new + digest[pos + 1:]
    with pytest.raises(SecurityError, match="bad signature"):
        verify(headers, body, secret, now=NOW)
