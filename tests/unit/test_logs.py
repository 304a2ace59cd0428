from __future__ import annotations

import json
import logging

from authswitch.logs import REQUEST_ID, JsonFormatter, RedactingFilter, redact


def test_redact_masks_pan_shaped_digits() -> None:
    assert redact("card 4111111111111111 declined") == "card 411111******1111 declined"
    assert redact("amount 100, id 12345") == "amount 100, id 12345"


def test_json_lines_are_redacted_and_carry_the_request_id() -> None:
    record = logging.LogRecord(
        "authswitch.x", logging.INFO, "f", 1, "pan %s", ("4111111111111111",), None
    )
    record.__dict__["field"] = "5500000000000004"
    RedactingFilter().filter(record)
    token = REQUEST_ID.set("req-1")
    try:
        line = JsonFormatter().format(record)
    finally:
        REQUEST_ID.reset(token)
    entry = json.loads(line)
    assert entry["msg"] == "pan 411111******1111"
    assert entry["field"] == "550000******0004"
    assert entry["request_id"] == "req-1"
    assert "4111111111111111" not in line
