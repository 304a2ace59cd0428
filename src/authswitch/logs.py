"""Structured logging: one JSON object per line, with a request id where there is one.

Card data never reaches a log: nothing in authswitch logs a PAN, PIN or CVV2, and as a last
line of defence :class:`RedactingFilter` masks any run of 12 to 19 digits in a message or
field (a PAN-shaped value) before it is written. The end-to-end suite captures every log
line and searches it for its test PANs.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["REQUEST_ID", "JsonFormatter", "RedactingFilter", "configure_logging", "redact"]

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_PAN_LIKE = re.compile(r"(?<!\d)\d{12,19}(?!\d)")
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


def redact(text: str) -> str:
    """Mask PAN-shaped digit runs, keeping the first six and last four digits."""
    return _PAN_LIKE.sub(lambda m: m[0][:6] + "*" * (len(m[0]) - 10) + m[0][-4:], text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and isinstance(value, str):
                record.__dict__[key] = redact(value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pgserver narrates every command it runs at INFO; its warnings are what matter.
    logging.getLogger("pgserver").setLevel(max(logging.WARNING, root.level))
