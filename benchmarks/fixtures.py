"""Fixtures and request sequences: test PANs, funded cards created through the admin gRPC
API of a running authswitch (as tests/support/ledger.py does), Zipf-distributed card
choice, amounts."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from itertools import accumulate

import grpc

from authswitch.v1 import common_pb2, ledger_admin_pb2, ledger_admin_pb2_grpc
from benchmarks.loadgen import Card

__all__ = [
    "EXPIRY",
    "AdminFixtures",
    "amounts",
    "card_pan",
    "hot_sequence",
    "luhn_complete",
    "zipf_sequence",
]

EXPIRY = "3012"  # December 2030
ASSET = "GBP"
TEST_BIN = "99999900"  # the demo's test BIN
AMOUNT_MIN_MINOR, AMOUNT_MAX_MINOR = 100, 5_000  # GBP 1.00 to 50.00


def luhn_complete(body: str) -> str:
    """``body`` with its ISO/IEC 7812 check digit appended."""
    total = 0
    for index, char in enumerate(reversed(body)):
        value = int(char)
        if index % 2 == 0:  # doubled: every second digit from the right, check digit excluded
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return body + str((10 - total % 10) % 10)


def card_pan(index: int, bin_: str = TEST_BIN) -> str:
    """The index-th 16-digit test PAN of ``bin_``: distinct for distinct indices."""
    return luhn_complete(f"{bin_}{index:07d}")


def amounts(rng: random.Random, count: int) -> list[int]:
    return [rng.randint(AMOUNT_MIN_MINOR, AMOUNT_MAX_MINOR) for _ in range(count)]


def hot_sequence(rng: random.Random, length: int) -> list[tuple[int, int]]:
    """Every request on card 0."""
    return [(0, amount) for amount in amounts(rng, length)]


def zipf_sequence(
    rng: random.Random, cards: int, length: int, s: float = 1.1
) -> list[tuple[int, int]]:
    """Cards chosen Zipf(s)-distributed by rank (rank k with weight 1/k^s), ranks assigned
    to cards at random so the hot cards are not the first ones created."""
    cumulative = list(accumulate(1.0 / (k**s) for k in range(1, cards + 1)))
    ranks = rng.choices(range(cards), cum_weights=cumulative, k=length)
    card_of_rank = list(range(cards))
    rng.shuffle(card_of_rank)
    return [(card_of_rank[r], a) for r, a in zip(ranks, amounts(rng, length), strict=True)]


class AdminFixtures:
    """Creates a client, an on-ledger program and a GBP product, then funded accounts and
    cards, through the real LedgerAdminService."""

    def __init__(self, target: str, say: Callable[[str], None]) -> None:
        self.target = target
        self.say = say

    async def issue(
        self,
        count: int,
        *,
        balance_minor: int,
        one_account: bool = False,
        concurrency: int = 16,
    ) -> list[Card]:
        """``count`` cards, each on its own account funded with ``balance_minor`` (or all
        on one account so funded, with ``one_account``)."""
        started = time.monotonic()
        async with grpc.aio.insecure_channel(self.target) as channel:
            admin = ledger_admin_pb2_grpc.LedgerAdminServiceStub(channel)
            client = await admin.CreateClient(ledger_admin_pb2.CreateClientRequest(name="bench"))
            program = await admin.CreateProgram(
                ledger_admin_pb2.CreateProgramRequest(
                    client_id=client.client_id,
                    name="bench",
                    mode=common_pb2.LEDGER_MODE_ON_LEDGER,
                    time_zone="Europe/London",
                    country="GB",
                )
            )
            product = await admin.CreateProduct(
                ledger_admin_pb2.CreateProductRequest(
                    program_id=program.program_id,
                    name="bench GBP",
                    account_types=[common_pb2.ACCOUNT_TYPE_SINGLE],
                    assets=[ASSET],
                )
            )

            async def funded_account() -> str:
                account = await admin.CreateAccount(
                    ledger_admin_pb2.CreateAccountRequest(
                        product_id=product.product_id,
                        account_type=common_pb2.ACCOUNT_TYPE_SINGLE,
                        assets=[ASSET],
                        name="bench",
                    )
                )
                await admin.CreditAccount(
                    ledger_admin_pb2.CreditAccountRequest(
                        account_id=account.account_id,
                        amount=common_pb2.Money(amount_minor=balance_minor, asset=ASSET),
                        purpose=ledger_admin_pb2.ADJUSTMENT_PURPOSE_LOAD,
                        idempotency_key=str(uuid.uuid4()),
                    )
                )
                return str(account.account_id)

            shared = await funded_account() if one_account else None
            cards: list[Card | None] = [None] * count
            queue: asyncio.Queue[int] = asyncio.Queue()
            for index in range(count):
                queue.put_nowait(index)

            async def worker() -> None:
                while not queue.empty():
                    index = queue.get_nowait()
                    account_id = shared or await funded_account()
                    pan = card_pan(index)
                    created = await admin.CreateCard(
                        ledger_admin_pb2.CreateCardRequest(
                            account_id=account_id,
                            pan=pan,
                            expiry=EXPIRY,
                            status=common_pb2.CARD_STATUS_ACTIVE,
                        )
                    )
                    cards[index] = Card(pan, EXPIRY, created.cvv2)
                    done = index + 1
                    if done % 2_000 == 0:
                        self.say(f"  {done:,}/{count:,} cards ({time.monotonic() - started:.0f} s)")

            await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
        issued = [card for card in cards if card is not None]
        assert len(issued) == count
        return issued
