"""Signed session cookies, CSRF tokens and the per-address attempt limiter of the console.

A session is a small JSON document in an HttpOnly cookie, signed with HMAC-SHA256 under the key in the
environment: who is logged in (or nobody yet), the CSRF token every form posts back, when it was issued,
and a fingerprint of the user's password hash, so changing a password ends that user's sessions. Logging out
revokes the session in the store (`console_revoked_sessions`), so a cookie copied before logout is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from hubbridge.store import RevokedSessionRow, session_scope, utcnow

COOKIE_NAME = "hubbridge_console"
SIGNING_CONTEXT = b"hubbridge-console-session-v1."
MIN_SECRET_CHARS = 32


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_fingerprint(stored_hash: str) -> str:
    """A short digest of a password hash: enough to notice it changed, useless for guessing the password."""
    return hashlib.sha256(stored_hash.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Session:
    """One browser's session: `user` is None before login."""

    user: str | None
    csrf: str
    issued: float
    fingerprint: str | None = None

    @classmethod
    def anonymous(cls) -> Session:
        return cls(user=None, csrf=secrets.token_urlsafe(32), issued=time.time())

    @classmethod
    def for_user(cls, user: str, fingerprint: str) -> Session:
        # a fresh CSRF token at login, so a token planted before login is worth nothing after it
        return cls(user=user, csrf=secrets.token_urlsafe(32), issued=time.time(), fingerprint=fingerprint)

    def csrf_matches(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(self.csrf.encode(), str(given).encode())


def session_digest(session: Session) -> str:
    """The session's identity in the store: a digest of its CSRF token (random per login) and issue time."""
    return hashlib.sha256(f"{session.csrf}|{session.issued:.3f}".encode()).hexdigest()


def revoke_session(url: str, session: Session, max_age_seconds: float) -> None:
    """End a logged-in session for good: its cookie is refused from now until it would have expired anyway."""
    if session.user is None:
        return
    expires = datetime.fromtimestamp(session.issued, UTC) + timedelta(seconds=max_age_seconds)
    try:
        with session_scope(url) as s:
            # revocations past their cookie's expiry protect nothing: dropped here, so the table stays small
            s.execute(delete(RevokedSessionRow).where(RevokedSessionRow.expires_at < utcnow()))
            s.add(RevokedSessionRow(session_digest=session_digest(session), user=session.user[:64],
                                    revoked_at=utcnow(), expires_at=expires))
    except IntegrityError:  # logged out twice (two tabs): already revoked
        pass


def is_revoked(url: str, session: Session) -> bool:
    """Whether this session was ended by a logout."""
    with session_scope(url) as s:
        digest = session_digest(session)
        return s.scalar(select(RevokedSessionRow.session_digest).where(
            RevokedSessionRow.session_digest == digest)) is not None


class SessionCodec:
    """Turns sessions into signed cookie values and back, refusing anything tampered with or too old."""

    def __init__(self, secret: str, max_age_seconds: float) -> None:
        if len(secret) < MIN_SECRET_CHARS:
            raise ValueError(f"the console session secret must be at least {MIN_SECRET_CHARS} characters")
        self._key = hashlib.sha256(SIGNING_CONTEXT + secret.encode()).digest()
        self.max_age = max_age_seconds

    def _sign(self, body: str) -> str:
        return _b64e(hmac.new(self._key, SIGNING_CONTEXT + body.encode(), hashlib.sha256).digest())

    def dumps(self, session: Session) -> str:
        doc = {"u": session.user, "c": session.csrf, "t": round(session.issued, 3), "f": session.fingerprint}
        body = _b64e(json.dumps(doc, separators=(",", ":")).encode())
        return f"{body}.{self._sign(body)}"

    def loads(self, value: str | None, now: float | None = None) -> Session | None:
        """The session in a cookie value, or None when it is missing, forged, malformed or expired."""
        if not value or value.count(".") != 1 or len(value) > 4096:
            return None
        body, sig = value.split(".")
        if not hmac.compare_digest(sig.encode(), self._sign(body).encode()):
            return None
        try:
            doc = json.loads(_b64d(body))
            session = Session(user=doc["u"], csrf=str(doc["c"]), issued=float(doc["t"]), fingerprint=doc.get("f"))
        except (ValueError, KeyError, TypeError):
            return None
        age = (now if now is not None else time.time()) - session.issued
        if age < -60 or age > self.max_age:
            return None
        return session


class AttemptLimiter:
    """At most `attempts` per key (a client address) in any `window` seconds; in memory, per process.

    Memory is bounded: past `max_keys` addresses the least recently seen are forgotten.
    """

    def __init__(self, attempts: int, window: float, max_keys: int = 10_000) -> None:
        self.attempts = attempts
        self.window = window
        self.max_keys = max_keys
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def hit(self, key: str, now: float | None = None) -> float | None:
        """Count one attempt; returns None when allowed, else the seconds until the next is allowed."""
        now = time.monotonic() if now is None else now
        with self._lock:
            hits = self._hits.pop(key, None) or deque()
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            self._hits[key] = hits
            while len(self._hits) > self.max_keys:
                self._hits.popitem(last=False)
            if len(hits) >= self.attempts:
                return max(hits[0] + self.window - now, 1.0)
            hits.append(now)
            return None

    def blocked(self, key: str, now: float | None = None) -> float | None:
        """Like `hit` without counting: the seconds to wait if `key` is over its limit, else None."""
        now = time.monotonic() if now is None else now
        with self._lock:
            hits = [t for t in self._hits.get(key, ()) if t > now - self.window]
            if len(hits) >= self.attempts:
                return max(hits[0] + self.window - now, 1.0)
            return None

    def reset(self, key: str) -> None:
        with self._lock:
            self._hits.pop(key, None)
