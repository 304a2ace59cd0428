"""Settings that could never take effect are refused, naming the field, and nothing is
written: routing of an on-ledger programme, a sink it cannot deliver to, a webhook that is
not HTTPS, TLS material without TLS, stand-in limits without an approving stand-in."""

from __future__ import annotations

import grpc
import pytest

from authswitch.app import Application
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support.ledger import Ledger

pytestmark = pytest.mark.timeout(60)


async def _refused(call: object, code: grpc.StatusCode, names: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == code, caught.value.details()
    assert names in (caught.value.details() or ""), caught.value.details()


async def _written(app: Application, program_id: str) -> tuple[int, int]:
    assert app.pool is not None
    routing = await app.pool.fetchval(
        "SELECT count(*) FROM program_routing WHERE program_id = $1", program_id
    )
    sinks = await app.pool.fetchval(
        "SELECT count(*) FROM program_sinks WHERE program_id = $1", program_id
    )
    return int(routing), int(sinks)


async def test_on_ledger_programme_refuses_routing_and_the_client_sink(
    ledger: Ledger, app: Application
) -> None:
    program_id = await ledger.program(c.LEDGER_MODE_ON_LEDGER)
    await _refused(
        ledger.admin.SetProgramRouting(
            la.SetProgramRoutingRequest(
                program_id=program_id, target="127.0.0.1:50061", tls=la.CLIENT_TLS_NONE
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "target: program",
    )
    await _refused(
        ledger.admin.SetNotificationSink(
            la.SetNotificationSinkRequest(program_id=program_id, sink=la.NOTIFICATION_SINK_CLIENT)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "sink: program",
    )
    assert await _written(app, program_id) == (0, 0)
    # A webhook delivers what an on-ledger programme notifies (clearings, fees, card status).
    await ledger.admin.SetNotificationSink(
        la.SetNotificationSinkRequest(
            program_id=program_id, sink=la.NOTIFICATION_SINK_WEBHOOK,
            url="https://hooks.example/authswitch", secret_name="hook-key",
        )
    )  # fmt: skip
    assert await _written(app, program_id) == (0, 1)


@pytest.mark.parametrize("mode", [c.LEDGER_MODE_ON_LEDGER, c.LEDGER_MODE_OFF_LEDGER])
async def test_a_webhook_must_be_https(
    ledger: Ledger, app: Application, mode: c.LedgerMode.ValueType
) -> None:
    program_id = await ledger.program(mode)
    for url in ("http://hooks.example/authswitch", "ftp://x", "hooks.example"):
        await _refused(
            ledger.admin.SetNotificationSink(
                la.SetNotificationSinkRequest(
                    program_id=program_id, sink=la.NOTIFICATION_SINK_WEBHOOK, url=url,
                    secret_name="hook-key",
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "url: a webhook URL must be https://",
        )  # fmt: skip
    assert await _written(app, program_id) == (0, 0)


async def test_routing_fields_that_would_never_be_used(ledger: Ledger, app: Application) -> None:
    program_id = await ledger.program(c.LEDGER_MODE_OFF_LEDGER)
    base = {"program_id": program_id, "target": "127.0.0.1:50061"}
    cases = [
        ({"tls": la.CLIENT_TLS_NONE, "ca_secret": "client-ca"}, "ca_secret"),
        ({"tls": la.CLIENT_TLS_TLS, "cert_secret": "c", "key_secret": "k"}, "cert_secret"),
        (
            {
                "stand_in": la.STAND_IN_POLICY_DECLINE,
                "stand_in_asset": "GBP",
                "stand_in_transaction_max_minor": 100,
            },
            "stand_in_asset",
        ),
        ({"stand_in": la.STAND_IN_POLICY_SHADOW, "stand_in_daily_max_minor": 100}, "stand_in"),
    ]
    for fields, named in cases:
        await _refused(
            ledger.admin.SetProgramRouting(la.SetProgramRoutingRequest(**base, **fields)),  # type: ignore[arg-type]
            grpc.StatusCode.INVALID_ARGUMENT,
            named,
        )
    await _refused(
        ledger.admin.SetNotificationSink(
            la.SetNotificationSinkRequest(
                program_id=program_id, sink=la.NOTIFICATION_SINK_CLIENT,
                url="https://hooks.example/x",
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "url and secret_name are for a webhook",
    )  # fmt: skip
    assert await _written(app, program_id) == (0, 0)
