"""With TLS on the gRPC port, probes that cannot speak TLS (Kubernetes' native gRPC probes)
read grpc.health.v1 on a plaintext health-only port (AUTHSWITCH_HEALTH_LISTEN)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authswitch.app import Application
from authswitch.v1 import ledger_admin_pb2, ledger_admin_pb2_grpc
from tests.conftest import TEST_KEYS, settings_for
from tests.support.certs import TestCA
from tests.support.server import free_port
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(60)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _status(target: str, service: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(response.status)


async def test_plaintext_health_port_beside_a_tls_grpc_port(
    stores: Stores, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("health-tls")
    cert, key = TestCA().issue("localhost", server=True).write(directory, "server")
    health_target = f"127.0.0.1:{free_port()}"
    app = Application(
        settings_for(
            stores, redis_key_prefix=stores.redis_prefix + "h", tls_cert_file=str(cert),
            tls_key_file=str(key), health_listen=health_target,
        ),
        keys=TEST_KEYS,
    )  # fmt: skip
    await app.start()
    try:
        # What the chart's startup, readiness and liveness probes ask.
        assert await _status(health_target, "") == SERVING
        assert await _status(health_target, "liveness") == SERVING
        # The main port needs TLS: a plaintext probe there never succeeds.
        with pytest.raises(grpc.aio.AioRpcError):
            await _status(f"127.0.0.1:{app.grpc_port}", "")
        # The health port serves health only.
        async with grpc.aio.insecure_channel(health_target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await ledger_admin_pb2_grpc.LedgerAdminServiceStub(channel).ListAssets(
                    ledger_admin_pb2.ListAssetsRequest(), timeout=5
                )
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await app.stop()
    with pytest.raises(grpc.aio.AioRpcError):
        await _status(health_target, "")


async def test_health_port_is_off_by_default(app: Application) -> None:
    assert app.settings.health_listen == ""
    assert app.health_server is None


async def test_a_taken_health_port_fails_the_start(stores: Stores) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        app = Application(
            settings_for(
                stores, redis_key_prefix=stores.redis_prefix + "h2",
                health_listen=f"127.0.0.1:{taken.getsockname()[1]}",
            ),
            keys=TEST_KEYS,
        )  # fmt: skip
        with pytest.raises(OSError, match="AUTHSWITCH_HEALTH_LISTEN"):
            await app.start()
