"""Runs the ``authswitch`` command in a child process against the test stores."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import TEST_KEYS
from tests.support.stores import Stores


def run_cli(
    stores: Stores, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSWITCH_")}
    clean |= {
        "AUTHSWITCH_POSTGRES_DSN": stores.postgres_dsn,
        "AUTHSWITCH_REDIS_URL": stores.redis_url,
        "AUTHSWITCH_REDIS_KEY_PREFIX": stores.redis_prefix,
        "AUTHSWITCH_PAN_KEY_HEX": TEST_KEYS.pan_key.hex(),
        "AUTHSWITCH_PIN_KEY_HEX": TEST_KEYS.pin_key.hex(),
        "AUTHSWITCH_CVV_KEY_HEX": TEST_KEYS.cvv_key.hex(),
    }
    clean |= env or {}
    return subprocess.run(
        [sys.executable, "-m", "authswitch", *args], env=clean, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
