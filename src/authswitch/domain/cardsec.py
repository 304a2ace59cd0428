"""Card secrets: the keyed values that stand in for a PAN, a PIN and a CVV2.

A PAN is stored only as an HMAC-SHA256 under the server's PAN key (plus BIN and last four).
A PIN is verified against a PIN verification value (PVV) derived from PAN and PIN with the
PIN verification key, as an HSM derives a PVV; a CVV2 is derived from PAN and expiry with the
card verification key, as an HSM derives a CVV, and never stored. Pure functions of keys and
inputs: no I/O, no clock.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from hashlib import sha256

__all__ = ["KEY_BYTES_MIN", "CardKeys"]

KEY_BYTES_MIN = 32


@dataclass(frozen=True, slots=True)
class CardKeys:
    """The server-held keys. Never logged: ``repr`` shows nothing of them."""

    pan_key: bytes
    pin_key: bytes
    cvv_key: bytes
    # HMAC states keyed once: each digest copies one instead of keying from scratch.
    _pan: hmac.HMAC = field(init=False, repr=False, compare=False)
    _pin: hmac.HMAC = field(init=False, repr=False, compare=False)
    _cvv: hmac.HMAC = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("pan_key", "pin_key", "cvv_key"):
            if len(getattr(self, name)) < KEY_BYTES_MIN:
                raise ValueError(f"{name} must be at least {KEY_BYTES_MIN} bytes")
        if len({self.pan_key, self.pin_key, self.cvv_key}) != 3:
            raise ValueError("the PAN, PIN and CVV keys must differ")
        object.__setattr__(self, "_pan", hmac.new(self.pan_key, digestmod=sha256))
        object.__setattr__(self, "_pin", hmac.new(self.pin_key, digestmod=sha256))
        object.__setattr__(self, "_cvv", hmac.new(self.cvv_key, digestmod=sha256))

    def __repr__(self) -> str:
        return "CardKeys(<redacted>)"

    def pan_hmac(self, pan: str) -> bytes:
        """The lookup key of a card: HMAC-SHA256(pan_key, PAN)."""
        return _digest(self._pan, b"pan:" + pan.encode())

    def token_hmac(self, token: str) -> bytes:
        """The lookup key of a network token (DPAN): HMAC-SHA256(pan_key, "token:" + DPAN),
        apart from every PAN's."""
        return _digest(self._pan, b"token:" + token.encode())

    def pin_verification_value(self, pan_hmac: bytes, pin: str) -> bytes:
        """16 bytes that verify a PIN for this card without storing the PIN.

        Derived from the card's PAN HMAC rather than the PAN, so that an operator can set a
        PIN knowing only the card id, and the PAN never has to be available again.
        """
        return _digest(self._pin, b"pvv:" + pan_hmac + b":" + pin.encode())[:16]

    def cvv2(self, pan: str, expiry_yymm: str) -> str:
        """The three-digit CVV2 of a card (service code 000, as for CVV2)."""
        mac = _digest(self._cvv, f"cvv2:{pan}:{expiry_yymm}:000".encode())
        return f"{int.from_bytes(mac[:8], 'big') % 1000:03d}"

    def cvv2_matches(self, pan: str, expiry_yymm: str, cvv2: str) -> bool:
        return hmac.compare_digest(self.cvv2(pan, expiry_yymm), cvv2)

    def fingerprint(self, canonical_request: bytes) -> bytes:
        """Keyed digest of a request payload for idempotency comparison.

        Keyed, because the payload contains the PAN and an unkeyed hash of a PAN can be
        reversed by enumeration.
        """
        return _digest(self._pan, b"fp:" + canonical_request)[:16]


def _digest(keyed: hmac.HMAC, message: bytes) -> bytes:
    mac = keyed.copy()
    mac.update(message)
    return mac.digest()
