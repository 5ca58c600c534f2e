"""Console password hashes: scrypt from the standard library (memory-hard, no extra dependency).

A hash reads `scrypt$<log2 n>$<r>$<p>$<salt, base64>$<key, base64>`, so its cost can be raised later
without invalidating hashes already given out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from functools import lru_cache

HASH_PATTERN = r"^scrypt\$\d{1,2}\$\d{1,2}\$\d{1,2}\$[A-Za-z0-9+/=]{16,}\$[A-Za-z0-9+/=]{32,}$"

LOG2_N, R, P = 15, 8, 1
"""OWASP's scrypt minimum (N=2^17 there) is traded down to 2^15 to keep a login under ~100 ms on 2 cores."""

KEY_BYTES = 32
MAX_MEM = 256 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str, *, log2_n: int = LOG2_N, r: int = R, p: int = P) -> str:
    """A new salted scrypt hash of `password` in the console's format."""
    if not password:
        raise ValueError("an empty password cannot be hashed")
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=2**log2_n, r=r, p=p, maxmem=MAX_MEM, dklen=KEY_BYTES)
    return f"scrypt${log2_n}${r}${p}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches the stored hash; a malformed hash never matches."""
    try:
        scheme, log2_n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt" or not 10 <= int(log2_n) <= 20:
            return False
        want = base64.b64decode(key, validate=True)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt, validate=True), n=2 ** int(log2_n),
                             r=int(r), p=int(p), maxmem=MAX_MEM, dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


@lru_cache(maxsize=1)
def dummy_hash() -> str:
    """Checked against for unknown users, so a login takes as long whether or not the name exists."""
    return hash_password(secrets.token_urlsafe(16))
