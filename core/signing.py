"""HMAC-SHA256 webhook signing for everything hubbridge sends or receives over HTTP.

The signature covers `f"{timestamp}.".encode() + body`, so neither the body nor the timestamp can be
changed without breaking it, and the timestamp bounds how long a captured request can be replayed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping

from hubbridge.errors import SecurityError

TIMESTAMP_HEADER = "X-Hubbridge-Timestamp"
SIGNATURE_HEADER = "X-Hubbridge-Signature"
SCHEME = "sha256"
DEFAULT_WINDOW_SECONDS = 300

# ASCII digits only: int() would also accept "+5", " 5", "1_000" and non-ASCII digits.
_TIMESTAMP_RE = re.compile(r"[0-9]{1,15}")
_HEX_RE = re.compile(r"[0-9a-f]{64}")

_HINT_SIGN = "the sender must sign with the shared secret (hubbridge.signing.sign) and send both headers"


def _digest(body: bytes, secret: str, timestamp: int) -> str:
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def _check_secret(secret: str) -> None:
    if not isinstance(secret, str) or not secret:
        # An empty key makes every signature forgeable, so it is a misconfiguration, never a valid secret.
        raise SecurityError("signing secret is empty", hint="set the signing secret environment variable")


def sign(body: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    """Headers that authenticate `body`: the timestamp (now, unless given) and its HMAC-SHA256 signature."""
    _check_secret(secret)
    ts = int(time.time()) if timestamp is None else int(timestamp)
    if ts < 0:
        raise SecurityError(f"cannot sign with a negative timestamp {ts}")
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: f"{SCHEME}={_digest(body, secret, ts)}"}


def _lookup(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == wanted:
            return value
    return None


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secret: str,
    *,
    now: float | None = None,
    window_seconds: int = DEFAULT_WINDOW_SECONDS,
) -> None:
    """Raise `SecurityError` unless `headers` carry a valid, fresh signature of `body` under `secret`."""
    _check_secret(secret)
    if window_seconds < 0:
        raise ValueError("window_seconds must not be negative")
    ts_text = _lookup(headers, TIMESTAMP_HEADER)
    sig_text = _lookup(headers, SIGNATURE_HEADER)
    if ts_text is None or sig_text is None:
        missing = [n for n, v in ((TIMESTAMP_HEADER, ts_text), (SIGNATURE_HEADER, sig_text)) if v is None]
        raise SecurityError(f"request is not signed: missing header {' and '.join(missing)}", hint=_HINT_SIGN)
    ts_clean = ts_text.strip()
    if not _TIMESTAMP_RE.fullmatch(ts_clean):
        raise SecurityError(
            f"malformed {TIMESTAMP_HEADER} {ts_text[:40]!r}: expected whole seconds since the Unix epoch",
            hint=_HINT_SIGN,
        )
    ts = int(ts_clean)

    scheme, sep, given = sig_text.strip().partition("=")
    if not sep or scheme.lower() != SCHEME:
        raise SecurityError(
            f"bad signature: {SIGNATURE_HEADER} must look like '{SCHEME}=<64 hex digits>'", hint=_HINT_SIGN
        )
    given = given.lower()
    expected = _digest(body, secret, ts)
    # compare_digest on bytes: constant time, and a non-ASCII header cannot raise TypeError.
    matches = hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8", "replace"))
    if not matches or not _HEX_RE.fullmatch(given):
        raise SecurityError(
            "bad signature: the body or timestamp was changed, or it was signed with a different secret",
            hint="check both sides use the same signing secret and the body is sent byte for byte",
        )

    # Checked after the signature so the answer only tells a genuine sender that its request is too old.
    current = time.time() if now is None else now
    if ts < current - window_seconds:
        raise SecurityError(
            f"stale {TIMESTAMP_HEADER}: signed {int(current - ts)}s ago, more than the {window_seconds}s allowed"
            " (a replay, or a delayed request)",
            hint="re-sign the request when sending it; check the sender's clock",
        )
    if ts > current + window_seconds:
        raise SecurityError(
            f"future {TIMESTAMP_HEADER}: signed {int(ts - current)}s ahead, more than the {window_seconds}s allowed",
            hint="check the sender's clock (NTP)",
        )
