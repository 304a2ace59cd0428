"""The admin API's requests as domain values and its replies as protobuf: adjustments and
transfers (service/admin.py, service/accounts.py), whose replies are stored with their
decisions, encoded here by ``AdminReplies``; and the stores' typed rows that the admin
reads answer with (clients, programmes, accounts, history, cards, notification
deliveries, FX rates, joint holders)."""

from __future__ import annotations

from authswitch.adapters.grpc.codec.common import balance_message, fx_message, money_message
from authswitch.domain.accounts import AccountDetails, HistoryRow
from authswitch.domain.authorization import CardStatus
from authswitch.domain.cards import CardDetails
from authswitch.domain.catalog import ClientRow, ProgramSummary
from authswitch.domain.fx import Conversion, FxRate
from authswitch.domain.holders import Holder
from authswitch.domain.ledger import Balance
from authswitch.domain.lifecycle import HoldRow
from authswitch.domain.messages.admin import (
    Adjustment,
    AdjustmentAnswer,
    Transfer,
    TransferAnswer,
)
from authswitch.domain.offledger import (
    DEADLINE_MS_MAX,
    DEADLINE_MS_MIN,
    ClientRouting,
    StandInPolicy,
    breaker_of,
    deadline_ms_of,
    routing_problem,
)
from authswitch.domain.outbox import DeliveryRow
from authswitch.errors import RequestError
from authswitch.v1 import common_pb2, ledger_admin_pb2

__all__ = [
    "HOLD_STATUS",
    "AdminReplies",
    "account_message",
    "card_message",
    "client_message",
    "credit_of",
    "debit_of",
    "delivery_message",
    "fx_rate_message",
    "history_entry_message",
    "hold_message",
    "holder_messages",
    "program_message",
    "routing_of",
    "transfer_of",
]

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


def client_message(row: ClientRow) -> ledger_admin_pb2.Client:
    message = ledger_admin_pb2.Client(client_id=row.client_id, name=row.name)
    message.created_at.FromDatetime(row.created_at)
    return message


def program_message(row: ProgramSummary) -> ledger_admin_pb2.Program:
    message = ledger_admin_pb2.Program(
        program_id=row.program_id, client_id=row.client_id, name=row.name,
        mode=common_pb2.LedgerMode.Value(f"LEDGER_MODE_{row.mode}"),
        time_zone=row.time_zone, country=row.country,
    )  # fmt: skip
    message.created_at.FromDatetime(row.created_at)
    return message


def account_message(
    row: AccountDetails, balances: dict[str, Balance]
) -> ledger_admin_pb2.GetAccountResponse:
    message = ledger_admin_pb2.GetAccountResponse(
        account_id=row.account_id, client_id=row.client_id,
        program_id=row.program_id, product_id=row.product_id, kind=row.kind,
        account_type=common_pb2.AccountType.Value(f"ACCOUNT_TYPE_{row.account_type}"),
        name=row.name, reference=row.reference, profile_id=row.profile_id,
        balances=[balance_message(asset, b) for asset, b in balances.items()],
    )  # fmt: skip
    message.created_at.FromDatetime(row.created_at)
    return message


def history_entry_message(
    row: HistoryRow, conversion: Conversion | None
) -> ledger_admin_pb2.HistoryEntry:
    entry = ledger_admin_pb2.HistoryEntry(
        kind=row.kind,
        asset=row.asset or "",
        actual_delta_minor=row.actual_delta,
        authorized_delta_minor=row.authorized_delta,
        reference=row.reference,
        description=row.description or "",
    )
    entry.at.FromDatetime(row.at)
    if conversion is not None:
        entry.fx.CopyFrom(fx_message(conversion))
    return entry


def card_message(
    card: CardDetails, controls: list[ledger_admin_pb2.SpendControlsVersion]
) -> ledger_admin_pb2.GetCardResponse:
    return ledger_admin_pb2.GetCardResponse(
        spend_controls=controls,
        card_id=card.card_id,
        bin=card.bin,
        last_four=card.last_four,
        expiry=card.expiry_yymm,
        status=CardStatus[card.status].value,  # type: ignore[arg-type]
        spend_account_id=card.account_id,
        linked_account_ids=list(card.linked),
        pin_tries=card.pin_tries,
        client_id=card.client_id,
        program_id=card.program_id,
        product_id=card.product_id,
    )


def delivery_message(row: DeliveryRow) -> ledger_admin_pb2.NotificationDelivery:
    entry = ledger_admin_pb2.NotificationDelivery(
        notification_id=row.notification_id,
        kind=row.kind,
        account_id=row.account_id,
        sequence=row.seq,
        sink=ledger_admin_pb2.NOTIFICATION_SINK_CLIENT
        if row.sink == "client"
        else ledger_admin_pb2.NOTIFICATION_SINK_WEBHOOK,
        status=ledger_admin_pb2.DeliveryStatus.Value(f"DELIVERY_STATUS_{row.status}"),
        attempts=row.attempts,
        last_error=row.last_error,
    )
    entry.created_at.FromDatetime(row.created_at)
    return entry


def fx_rate_message(rate: FxRate) -> ledger_admin_pb2.FxRate:
    message = ledger_admin_pb2.FxRate(
        base_asset=rate.base, quote_asset=rate.quote, rate=rate.rate_text,
        max_age_seconds=rate.max_age_s,
    )  # fmt: skip
    message.effective_from.FromDatetime(rate.effective_from)
    return message


def holder_messages(holders: list[Holder]) -> list[ledger_admin_pb2.AccountHolder]:
    return [
        ledger_admin_pb2.AccountHolder(customer_id=h.customer_id, share_bps=h.share_bps or 0)
        for h in holders
    ]


HOLD_STATUS = {
    "OPEN": ledger_admin_pb2.HOLD_STATUS_OPEN,
    "CLEARED": ledger_admin_pb2.HOLD_STATUS_CLEARED,
    "REVERSED": ledger_admin_pb2.HOLD_STATUS_REVERSED,
    "EXPIRED": ledger_admin_pb2.HOLD_STATUS_EXPIRED,
    "RELEASED": ledger_admin_pb2.HOLD_STATUS_RELEASED,
}


def hold_message(hold: HoldRow, conversion: Conversion | None) -> ledger_admin_pb2.Hold:
    asset = hold.asset or ""
    message = ledger_admin_pb2.Hold(
        hold_id=hold.id,
        account_id=hold.account_id or "",
        card_id=hold.card_id or "",
        source=hold.source,
        message_id=hold.message_id,
        network_reference=hold.network_reference,
        amount=money_message(hold.amount_minor, asset),
        original=money_message(hold.original_minor, asset),
        status=HOLD_STATUS[hold.status],
    )
    message.created_at.FromDatetime(hold.created_at)
    message.expires_at.FromDatetime(hold.expires_at)
    if hold.ended_at is not None:
        message.ended_at.FromDatetime(hold.ended_at)
    if conversion is not None:
        message.fx.CopyFrom(fx_message(conversion))
    return message


def routing_of(request: ledger_admin_pb2.SetProgramRoutingRequest) -> ClientRouting:
    """A programme's client routing from SetProgramRouting; a value the domain refuses
    (domain/offledger.py) or the wire does not define is a RequestError."""
    tls = {0: "NONE", 1: "NONE", 2: "TLS", 3: "MTLS"}.get(request.tls)
    policy = {
        0: StandInPolicy.DECLINE, 1: StandInPolicy.DECLINE, 2: StandInPolicy.APPROVE,
        3: StandInPolicy.SHADOW,
    }.get(request.stand_in)  # fmt: skip
    if tls is None or policy is None:
        raise RequestError("tls and stand_in must be known values")
    problem = routing_problem(
        request.target, request.stand_in_transaction_max_minor,
        request.stand_in_daily_max_minor,
    )  # fmt: skip
    if problem is not None:
        raise RequestError(problem)
    deadline = deadline_ms_of(request.deadline_ms)
    if deadline is None:
        raise RequestError(f"deadline_ms must be {DEADLINE_MS_MIN}..{DEADLINE_MS_MAX}")
    breaker = breaker_of(
        request.breaker_failures, request.breaker_error_rate_pct, request.breaker_window,
        request.breaker_open_ms,
    )  # fmt: skip
    if breaker is None:
        raise RequestError("breaker settings must be positive (error rate 1..100)")
    return ClientRouting(
        target=request.target, tls=tls, ca_secret=request.ca_secret,
        cert_secret=request.cert_secret, key_secret=request.key_secret,
        token_secret=request.token_secret, deadline_ms=deadline, stand_in=policy,
        stand_in_asset=request.stand_in_asset,
        stand_in_transaction_max_minor=request.stand_in_transaction_max_minor,
        stand_in_daily_max_minor=request.stand_in_daily_max_minor, breaker=breaker,
    )  # fmt: skip
