from __future__ import annotations

import pytest

from authswitch.domain.cardsec import CardKeys

KEYS = CardKeys(b"p" * 32, b"i" * 32, b"c" * 32)


def test_keys_must_be_long_and_distinct() -> None:
    with pytest.raises(ValueError, match="at least"):
        CardKeys(b"short", b"i" * 32, b"c" * 32)
    with pytest.raises(ValueError, match="differ"):
        CardKeys(b"k" * 32, b"k" * 32, b"c" * 32)


def test_repr_shows_no_key() -> None:
    assert "ppp" not in repr(KEYS)
    assert "redacted" in repr(KEYS)


def test_pan_hmac_is_keyed_and_stable() -> None:
    other = CardKeys(b"q" * 32, b"i" * 32, b"c" * 32)
    assert KEYS.pan_hmac("4111111111111111") == KEYS.pan_hmac("4111111111111111")
    assert KEYS.pan_hmac("4111111111111111") != other.pan_hmac("4111111111111111")
    assert len(KEYS.pan_hmac("4111111111111111")) == 32


def test_pvv_depends_on_card_and_pin() -> None:
    card = KEYS.pan_hmac("4111111111111111")
    other_card = KEYS.pan_hmac("4000000000000002")
    assert KEYS.pin_verification_value(card, "1234") != KEYS.pin_verification_value(card, "1235")
    assert KEYS.pin_verification_value(card, "1234") != KEYS.pin_verification_value(
        other_card, "1234"
    )


def test_cvv2_is_three_digits_per_pan_and_expiry() -> None:
    cvv = KEYS.cvv2("4111111111111111", "3012")
    assert len(cvv) == 3
    assert cvv.isdigit()
    assert KEYS.cvv2_matches("4111111111111111", "3012", cvv)
    assert not KEYS.cvv2_matches("4111111111111111", "3012", f"{(int(cvv) + 1) % 1000:03d}")
    cvvs = {KEYS.cvv2("4111111111111111", f"30{m:02d}") for m in range(1, 13)}
    assert len(cvvs) > 6  # varies with expiry


def test_values_are_plain_hmac_sha256_of_their_keys() -> None:
    """Pre-keyed HMAC states give exactly HMAC-SHA256: PAN HMACs stored by earlier versions
    still find their cards."""
    import hashlib
    import hmac

    pan = "4111111111111111"
    assert KEYS.pan_hmac(pan) == hmac.digest(b"p" * 32, b"pan:" + pan.encode(), hashlib.sha256)
    assert KEYS.fingerprint(b"req") == hmac.digest(b"p" * 32, b"fp:req", hashlib.sha256)[:16]
    card = KEYS.pan_hmac(pan)
    assert (
        KEYS.pin_verification_value(card, "1234")
        == hmac.digest(b"i" * 32, b"pvv:" + card + b":1234", hashlib.sha256)[:16]
    )
    mac = hmac.digest(b"c" * 32, f"cvv2:{pan}:2912:000".encode(), hashlib.sha256)
    assert KEYS.cvv2(pan, "2912") == f"{int.from_bytes(mac[:8], 'big') % 1000:03d}"
