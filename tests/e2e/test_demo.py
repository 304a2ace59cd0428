"""The README's walkthroughs run against a real server and say what the README says."""

from __future__ import annotations

import pytest

from authswitch.app import Application
from authswitch.demo import run_demo

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("card", ["Demo card ready", "balance GBP 100.00"]),
        ("lifecycle", ["cleared 45.00 (matched: True)", "reversed it"]),
        ("fees", ["fee"]),
        (
            "dispute",
            [
                "disputed: not received (provisional credit) actual GBP 100.00",
                "merchant won: provisional credit taken back actual GBP 40.00 "
                "available GBP -40.00 authorised GBP 80.00",
                "OPEN -> CHARGEBACK -> REPRESENTMENT -> MERCHANT_WON",
            ],
        ),
    ],
)
async def test_walkthrough(
    app: Application, capsys: pytest.CaptureFixture[str], scenario: str, expected: list[str]
) -> None:
    assert await run_demo(f"127.0.0.1:{app.grpc_port}", scenario) == 0
    out = " ".join(capsys.readouterr().out.split())
    for line in expected:
        assert line in out, out
