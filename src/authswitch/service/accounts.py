"""A customer's accounts (issue 17): transfers between them (pots: seed 001's "main,
savings, wallets, spending pots") and their joint holders (seed 000).

A transfer is made like an admin adjustment (service/admin.py): the source's debit is the
one atomic Redis step (funds, change, idempotency marker), then the group commit writes the
decision, the balanced journal entry (source -x, destination +x: nothing touches the
clearing account, so the program's funding total does not move) and both balance changes,
Postgres re-checking the source's funds. The destination's cached state is then reloaded
from Postgres, which already holds the credit: until then its cached balance is lower than
the truth, never higher.
"""

from __future__ import annotations

import logging
from typing import Protocol

from authswitch import metrics
from authswitch.adapters.postgres.ownership import HolderStore
from authswitch.domain import postings
from authswitch.domain.accounts import AccountRow
from authswitch.domain.catalog import ProgramRow
from authswitch.domain.codes import Reason
from authswitch.domain.holders import Holder
from authswitch.domain.messages.admin import Transfer, TransferAnswer
from authswitch.domain.money import AMOUNT_MAX_MINOR
from authswitch.domain.postings import Origin
from authswitch.errors import AlreadyExists, PreconditionFailed, RequestError
from authswitch.service.admin import (
    ADMIN_SOURCE,
    AdminService,
    admin_write,
    posted_decision,
    require_idempotency_key,
)
from authswitch.service.ids import new_id
from authswitch.service.posting import PostStatus

__all__ = ["KIND_TRANSFER", "AccountService", "TransferReplies"]

log = logging.getLogger(__name__)

KIND_TRANSFER = "TRANSFER"
DESCRIPTION_LEN_MAX = 200


class TransferReplies(Protocol):
    """How an approved transfer's reply is encoded, to be stored with its decision (and
    sent again as it is to a retry)."""

    def transfer(self, answer: TransferAnswer) -> bytes: ...


class AccountService:
    """Built on the admin service's stores, cache and poster."""

    def __init__(self, admin: AdminService, replies: TransferReplies) -> None:
        self.admin = admin
        self.replies = replies
        self.holders = HolderStore(admin.ledger.pool)

    async def transfer(self, request: Transfer, *, fingerprint: bytes, actor: str) -> bytes:
        """Move money between two accounts of one customer; the reply's bytes, as stored
        with the decision."""
        admin = self.admin
        asset, amount = request.asset, request.amount_minor
        key = request.idempotency_key
        description = self._checked_description(request)
        stored = await admin.holds.find_decision(ADMIN_SOURCE, key)
        if stored is not None:
            # A retry gets the first answer, whatever changed since (holders, balances).
            if stored.fingerprint != fingerprint:
                raise AlreadyExists("idempotency_key was used for another change")
            if stored.reason != Reason.APPROVED:
                raise PreconditionFailed("insufficient available balance in the source account")
            await self._reload(request.to_account_id)
            return stored.response
        source, target, program = await self._parties(request)

        now = admin.clock.now()
        decision_id, entry_id = new_id(), new_id()
        movement = postings.transfer(
            source.id, target.id, asset, amount, KIND_TRANSFER,
            Origin(
                entry_id, program.id, now, ADMIN_SOURCE, key,
                description or f"transfer to {target.id}",
            ),
        )  # fmt: skip

        build = admin_write(
            movement, decision_id, key, KIND_TRANSFER, fingerprint, source.id, asset, amount,
            now,
            lambda balance: self.replies.transfer(TransferAnswer(entry_id, asset, balance)),
        )  # fmt: skip
        posted = await admin.poster.post(
            movement.change, source=ADMIN_SOURCE, message_id=key, fingerprint=fingerprint,
            build=build, program=program,
        )  # fmt: skip
        decision = posted_decision(
            posted, fingerprint, no_balance=f"account {source.id} holds no {asset} balance",
            insufficient="insufficient available balance in the source account",
            reused="idempotency_key was used for another change",
        )  # fmt: skip
        if posted.status is PostStatus.COMMITTED:
            await admin.audit.record(
                actor, "transfer", source.id,
                {"to_account_id": target.id, "asset": asset, "amount_minor": amount,
                 "idempotency_key": key, "entry_id": entry_id},
            )  # fmt: skip
        await self._reload(target.id)
        return decision.response

    def _checked_description(self, request: Transfer) -> str:
        """The transfer's description, once the request is found well-formed; a bad request
        raises RequestError."""
        asset, amount = request.asset, request.amount_minor
        require_idempotency_key(request.idempotency_key)
        if not 0 < amount <= AMOUNT_MAX_MINOR:
            raise RequestError(f"amount must be 1..{AMOUNT_MAX_MINOR} minor units")
        if asset not in self.admin.catalog.assets:
            raise RequestError(f"unknown asset {asset!r}")
        description = request.description.strip()
        if len(description) > DESCRIPTION_LEN_MAX or not description.isprintable():
            raise RequestError(f"description: printable, up to {DESCRIPTION_LEN_MAX} characters")
        if request.from_account_id == request.to_account_id:
            raise RequestError("from_account_id and to_account_id are the same account")
        return description

    async def _parties(self, request: Transfer) -> tuple[AccountRow, AccountRow, ProgramRow]:
        """The source and destination accounts and their programme, once a transfer between
        them is found allowed: customer accounts of one customer in one on-ledger programme,
        the destination holding the asset."""
        ledger, asset = self.admin.ledger, request.asset
        source = await ledger.account(request.from_account_id)
        target = await ledger.account(request.to_account_id)
        if source.kind != "CUSTOMER" or target.kind != "CUSTOMER":
            raise PreconditionFailed("transfers are between customer accounts")
        if source.program_id != target.program_id:
            raise PreconditionFailed("transfers stay within one program")
        program = await self.admin.catalog.program(source.program_id)
        if program.mode != "ON_LEDGER":
            raise PreconditionFailed(
                "an off-ledger program's balances are in the client's ledger: it moves money "
                "between its accounts itself"
            )
        if not await self.holders.common_holders(source.id, target.id):
            raise PreconditionFailed("transfers are between accounts of the same customer")
        if asset not in await ledger.balances(target.id):
            raise PreconditionFailed(f"account {target.id} holds no {asset} balance")
        return source, target, program

    async def _reload(self, account_id: str) -> None:
        """The destination's cache learns of the credit from Postgres. A transfer whose
        reload failed is answered with an error, and its retry (same key) reloads again."""
        try:
            await self.admin.sync.refresh(account_id, "transfer")
        except Exception as exc:
            metrics.STORE_ERRORS.labels("redis", "transfer").inc()
            log.warning(
                "transfer committed; the destination's cache was not reloaded",
                extra={"error": type(exc).__name__},
            )
            raise

    # -- joint holders --------------------------------------------------------------------

    async def list_holders(self, account_id: str) -> list[Holder]:
        return await self.holders.holders(account_id)

    async def add_holder(
        self, account_id: str, customer_id: str, shares_bps: dict[str, int], *, actor: str
    ) -> list[Holder]:
        return await self.holders.change(
            account_id, add=customer_id, shares_bps=shares_bps, actor=actor
        )

    async def remove_holder(
        self, account_id: str, customer_id: str, shares_bps: dict[str, int], *, actor: str
    ) -> list[Holder]:
        return await self.holders.change(
            account_id, remove=customer_id, shares_bps=shares_bps, actor=actor
        )

    async def set_shares(
        self, account_id: str, shares_bps: dict[str, int], *, actor: str
    ) -> list[Holder]:
        return await self.holders.change(account_id, shares_bps=shares_bps, actor=actor)
