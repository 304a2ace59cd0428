"""Webhook signatures, pure: HMAC-SHA256 over the timestamp and the body.

The header is ``X-Authswitch-Signature: t=<unix seconds>,v1=<hex digest>`` where the digest
is HMAC-SHA256(secret, "<t>." + body). A receiver recomputes it, compares in constant time,
and refuses a timestamp outside its replay window (default five minutes), so a captured
request cannot be replayed later.
"""

from __future__ import annotations

import hmac
from hashlib import sha256

__all__ = ["SIGNATURE_HEADER", "sign", "verify"]

SIGNATURE_HEADER = "X-Authswitch-Signature"


def _digest(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, str(timestamp).encode() + b"." + body, sha256).hexdigest()


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp`` (unix seconds)."""
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def verify(secret: bytes, header: str, body: bytes, *, now: int, tolerance_s: int = 300) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` within the replay window."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(_digest(secret, timestamp, body), parts.get("v1", ""))
