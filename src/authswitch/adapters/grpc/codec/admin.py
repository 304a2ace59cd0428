"""The admin API's requests as domain values and its replies as protobuf: adjustments and
transfers (service/admin.py, service/accounts.py), whose replies are stored with their
decisions, encoded here by ``AdminReplies``."""

from __future__ import annotations

from authswitch.adapters.grpc.codec.common import balance_message
from authswitch.domain.messages.admin import (
    Adjustment,
    AdjustmentAnswer,
    Transfer,
    TransferAnswer,
)
from authswitch.v1 import ledger_admin_pb2

__all__ = ["AdminReplies", "credit_of", "debit_of", "transfer_of"]

# A purpose's name (LOAD, FEE, ...) by its wire value; an unknown or unspecified one is "".
_PURPOSES = {
    value: name.removeprefix("ADJUSTMENT_PURPOSE_")
    for name, value in ledger_admin_pb2.AdjustmentPurpose.items()
    if value
}


def credit_of(request: ledger_admin_pb2.CreditAccountRequest) -> Adjustment:
    return _adjustment_of(request, credit=True, allow_negative=False)


def debit_of(request: ledger_admin_pb2.DebitAccountRequest) -> Adjustment:
    return _adjustment_of(request, credit=False, allow_negative=request.allow_negative)


def _adjustment_of(
    request: ledger_admin_pb2.CreditAccountRequest | ledger_admin_pb2.DebitAccountRequest,
    *,
    credit: bool,
    allow_negative: bool,
) -> Adjustment:
    return Adjustment(
        account_id=request.account_id,
        amount_minor=request.amount.amount_minor,
        asset=request.amount.asset,
        purpose=_PURPOSES.get(request.purpose, ""),
        idempotency_key=request.idempotency_key,
        description=request.description,
        credit=credit,
        allow_negative=allow_negative,
    )


def transfer_of(request: ledger_admin_pb2.TransferRequest) -> Transfer:
    return Transfer(
        from_account_id=request.from_account_id,
        to_account_id=request.to_account_id,
        amount_minor=request.amount.amount_minor,
        asset=request.amount.asset,
        idempotency_key=request.idempotency_key,
        description=request.description,
    )


class AdminReplies:
    """The replies stored with admin decisions, as their bytes (service/admin.py's
    ``AdjustmentReplies``, service/accounts.py's ``TransferReplies``)."""

    def credit(self, answer: AdjustmentAnswer) -> bytes:
        return ledger_admin_pb2.CreditAccountResponse(
            entry_id=answer.entry_id, balance=balance_message(answer.asset, answer.balance)
        ).SerializeToString()

    def debit(self, answer: AdjustmentAnswer) -> bytes:
        return ledger_admin_pb2.DebitAccountResponse(
            entry_id=answer.entry_id, balance=balance_message(answer.asset, answer.balance)
        ).SerializeToString()

    def transfer(self, answer: TransferAnswer) -> bytes:
        return ledger_admin_pb2.TransferResponse(
            entry_id=answer.entry_id,
            from_balance=balance_message(answer.asset, answer.from_balance),
        ).SerializeToString()
