"""Several processes on one port (AUTHSWITCH_GRPC_REUSEPORT): only when each one asks."""

from __future__ import annotations

import grpc
import pytest

from authswitch.app import Application
from tests.conftest import TEST_KEYS, settings_for
from tests.support.ledger import Ledger
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(60)


async def test_a_port_is_shared_only_when_every_process_asks(stores: Stores) -> None:
    first = Application(settings_for(stores, grpc_reuseport=True), keys=TEST_KEYS)
    await first.start()
    try:
        listen = f"127.0.0.1:{first.grpc_port}"
        # The default: a taken port fails loudly, even when its holder would share it.
        alone = Application(settings_for(stores, grpc_listen=listen), keys=TEST_KEYS)
        with pytest.raises(RuntimeError):
            await alone.start()
        second = Application(
            settings_for(stores, grpc_listen=listen, grpc_reuseport=True), keys=TEST_KEYS
        )
        await second.start()
        try:
            assert second.grpc_port == first.grpc_port
            await first.stop()
            # The port still decides: the second process holds it now.
            async with grpc.aio.insecure_channel(listen) as channel:
                ledger = Ledger(channel)
                card = await ledger.card(1_000)
                response = await ledger.authorize(card, 250)
                assert response.response_code == "00"
        finally:
            await second.stop()
    finally:
        await first.stop()
