"""TLS, mutual TLS and per-caller authorisation: the gateway identity may call
AuthorizationService only, the admin identity LedgerAdminService only."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from authswitch.app import Application
from authswitch.v1 import ledger_admin_pb2 as la
from tests.conftest import TEST_KEYS, settings_for
from tests.support.certs import Issued, TestCA
from tests.support.ledger import Ledger
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(60)

GATEWAY_TOKEN = "gateway-" + "g" * 24
ADMIN_TOKEN = "admin-" + "a" * 26
SECRETS = [GATEWAY_TOKEN, ADMIN_TOKEN]


@dataclass
class Secured:
    app: Application
    ca: TestCA
    gateway: Issued
    admin: Issued
    stranger: Issued

    def channel(self, client: Issued | None, token: str = "") -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(
            self.ca.cert_pem,
            client.key_pem if client else None,
            client.cert_pem if client else None,
        )
        if token:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(token)
            )
        return grpc.aio.secure_channel(
            f"localhost:{self.app.grpc_port}", credentials,
            options=[("grpc.ssl_target_name_override", "localhost")],
        )  # fmt: skip


@pytest.fixture(scope="module")
async def secured(
    stores: Stores, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Secured]:
    directory = tmp_path_factory.mktemp("tls")
    ca, other_ca = TestCA(), TestCA()
    cert, key = ca.issue("localhost", server=True).write(directory, "server")
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    (directory / "gateway.tokens").write_text(GATEWAY_TOKEN + "\n")
    (directory / "admin.tokens").write_text(ADMIN_TOKEN + "\n")
    app = Application(
        settings_for(
            stores,
            redis_key_prefix=stores.redis_prefix + "s",
            tls_cert_file=str(cert),
            tls_key_file=str(key),
            tls_client_ca_file=str(directory / "ca.crt"),
            gateway_subjects="gateway-1",
            admin_subjects="ops-1,ops-2",
            gateway_token_file=str(directory / "gateway.tokens"),
            admin_token_file=str(directory / "admin.tokens"),
        ),
        keys=TEST_KEYS,
    )
    await app.start()
    try:
        yield Secured(
            app, ca, ca.issue("gateway-1", server=False), ca.issue("ops-1", server=False),
            other_ca.issue("gateway-1", server=False),
        )  # fmt: skip
    finally:
        await app.stop()


async def _code(call: object) -> grpc.StatusCode | None:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return None


async def test_each_identity_may_call_its_own_service_only(secured: Secured) -> None:
    async with secured.channel(secured.admin) as admin_channel:
        admin = Ledger(admin_channel)
        card = await admin.card(10_000)
        created = await admin.admin.CreateClient(la.CreateClientRequest(name="ok"))
        assert created.client_id
        denied = await _code(admin.authorize(card, 100))
        assert denied is grpc.StatusCode.PERMISSION_DENIED
    async with secured.channel(secured.gateway) as gateway_channel:
        gateway = Ledger(gateway_channel)
        assert (await gateway.authorize(card, 100)).response_code == "00"
        denied = await _code(gateway.admin.CreateClient(la.CreateClientRequest(name="no")))
        assert denied is grpc.StatusCode.PERMISSION_DENIED


async def test_bearer_tokens_prove_a_role(secured: Secured) -> None:
    # A client certificate is still required (mutual TLS); this CN has no role of its own.
    nobody = secured.ca.issue("nobody", server=False)
    async with secured.channel(secured.admin) as admin_channel:
        card = await Ledger(admin_channel).card(10_000)
    async with secured.channel(nobody, GATEWAY_TOKEN) as channel:
        assert (await Ledger(channel).authorize(card, 100)).response_code == "00"
    async with secured.channel(nobody, ADMIN_TOKEN) as channel:
        assert (
            await _code(Ledger(channel).authorize(card, 100)) is grpc.StatusCode.PERMISSION_DENIED
        )
    async with secured.channel(nobody, "x" * 32) as channel:
        assert (
            await _code(Ledger(channel).authorize(card, 100)) is grpc.StatusCode.PERMISSION_DENIED
        )
    async with secured.channel(nobody) as channel:
        assert (
            await _code(Ledger(channel).authorize(card, 100)) is grpc.StatusCode.PERMISSION_DENIED
        )


async def test_without_a_trusted_client_certificate_nothing_connects(secured: Secured) -> None:
    for client in (secured.stranger, None):
        async with secured.channel(client, GATEWAY_TOKEN) as channel:
            code = await _code(
                Ledger(channel).admin.CreateClient(la.CreateClientRequest(name="x"), timeout=5)
            )
            assert code is grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secured.app.grpc_port}") as plain:
        code = await _code(
            Ledger(plain).admin.CreateClient(la.CreateClientRequest(name="x"), timeout=5)
        )
        assert code is grpc.StatusCode.UNAVAILABLE


async def test_admin_changes_are_audited_with_the_caller(secured: Secured) -> None:
    async with secured.channel(secured.admin) as channel:
        name = f"audited-{uuid.uuid4()}"
        created = await Ledger(channel).admin.CreateClient(
            la.CreateClientRequest(name=name), metadata=(("x-authswitch-actor", "alice"),)
        )
    assert secured.app.pool is not None
    actor = await secured.app.pool.fetchval(
        "SELECT actor FROM audit_log WHERE action = 'create_client' AND subject_id = $1",
        created.client_id,
    )
    assert actor == "cn:ops-1/alice"


def test_tokens_are_not_in_the_settings_repr(tmp_path: Path) -> None:
    from authswitch.config import Settings

    settings = Settings.from_env({"AUTHSWITCH_GATEWAY_TOKEN_FILE": str(tmp_path / "t")})
    assert GATEWAY_TOKEN not in repr(settings)
