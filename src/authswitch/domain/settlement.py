"""A program's daily settlement position per card network (pure): what the issuer owes each
network for the day, and how it reconciles to the program's clearing account.

Seed 002: the sponsor bank "provide[s] the amount due for settlement", and the program must
"fund your network settlement accounts on time with the exact settlement amount"; seed 003:
balances are reported to "forecast settlement position". The position is built from the
network's own messages of the day, so off-ledger programs (whose clearings are only
forwarded) have one too:

=====================  ===================================================  ==========
line                   from                                                 sign
=====================  ===================================================  ==========
cleared_purchases      presentments cleared (purchases, cash, quasi-cash)   +
refunds                refunds and other credits through the network        -
original_credits       original credit transactions (push-to-card payments, -
                       payouts): the network pays the issuer what it
                       credited its cardholders
chargebacks            chargebacks the network accepted                     -
representments         representments by the acquirer                       +
dispute_arbitration    disputes won after a representment (the network       -
                       returns the amount again)
net_settlement         the sum of the lines above: owed to the network
fees                   fees charged to cardholders, shown apart: income of   (not in
                       the program, not part of the network's settlement     net)
=====================  ===================================================  ==========

A positive amount is owed by the issuer to the network, a negative one by the network to the
issuer. Where authswitch keeps the program's ledger (on-ledger programs, and off-ledger
programs with a shadow ledger) the position is reconciled to the clearing account (seed
002's implicit clearing-house subledger): its movements of the day from network messages
must equal the net settlement (``unreconciled`` is their difference, zero when it does),
and its opening balance, plus those, plus its other movements (loads, unloads, adjustments,
by entry kind), is its closing balance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "NETWORK_ENTRY_KINDS",
    "Line",
    "MessageTotal",
    "SettlementRow",
    "settlement_rows",
]

# Journal entry kinds whose postings to the clearing account settle with a network.
NETWORK_ENTRY_KINDS = frozenset(
    {"CLEARING", "REFUND", "CREDIT", "DISPUTE_CHARGEBACK", "DISPUTE_REPRESENTMENT",
     "DISPUTE_CARDHOLDER_WON"}
)  # fmt: skip


class Line(Enum):
    CLEARED_PURCHASES = "cleared_purchases"
    REFUNDS = "refunds"
    ORIGINAL_CREDITS = "original_credits"
    CHARGEBACKS = "chargebacks"
    REPRESENTMENTS = "representments"
    DISPUTE_ARBITRATION = "dispute_arbitration"
    NET_SETTLEMENT = "net_settlement"
    FEES = "fees"
    CLEARING_ACCOUNT_OPENING = "clearing_account_opening"
    CLEARING_ACCOUNT_NETWORK = "clearing_account_network"
    CLEARING_ACCOUNT_OTHER = "clearing_account_other"
    CLEARING_ACCOUNT_CLOSING = "clearing_account_closing"
    UNRECONCILED = "unreconciled"

    @property
    def sign(self) -> int:
        """How a message's amount counts towards what is owed to the network."""
        return -1 if self in _OWED_BY_THE_NETWORK else 1


_OWED_BY_THE_NETWORK = frozenset(
    {Line.REFUNDS, Line.ORIGINAL_CREDITS, Line.CHARGEBACKS, Line.DISPUTE_ARBITRATION}
)
_NETWORK_LINES = (
    Line.CLEARED_PURCHASES, Line.REFUNDS, Line.ORIGINAL_CREDITS, Line.CHARGEBACKS,
    Line.REPRESENTMENTS, Line.DISPUTE_ARBITRATION,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MessageTotal:
    """Messages of one line, network and asset: how many, and their amounts (unsigned)."""

    line: Line
    network: str
    asset: str
    count: int
    amount_minor: int


@dataclass(frozen=True, slots=True)
class SettlementRow:
    network: str  # empty on the clearing account's lines
    asset: str
    line: Line
    count: int
    amount_minor: int  # signed: positive is owed to the network (or the account's balance)
    detail: str = ""  # the entry kind of a clearing_account_other line


def settlement_rows(
    messages: Iterable[MessageTotal],
    fees: Iterable[MessageTotal],
    *,
    clearing_by_kind: Mapping[tuple[str, str], tuple[int, int]] | None = None,
    clearing_closing: Mapping[str, int] | None = None,
) -> list[SettlementRow]:
    """The file's rows: per network and asset (sorted) each network line that occurred, the
    net settlement and the fees; then, when the program's ledger is kept
    (``clearing_by_kind``: (entry kind, asset) -> (postings, amount) of the day on the
    clearing account; ``clearing_closing``: its balance per asset at the end of the day),
    the clearing account's lines per asset."""
    totals: dict[tuple[str, str], dict[Line, tuple[int, int]]] = {}
    for total in messages:
        assert total.line in _NETWORK_LINES, total.line
        assert total.count >= 0
        lines = totals.setdefault((total.network, total.asset), {})
        count, amount = lines.get(total.line, (0, 0))
        lines[total.line] = (count + total.count, amount + total.line.sign * total.amount_minor)
    fee_totals: dict[tuple[str, str], tuple[int, int]] = {}
    for fee in fees:
        count, amount = fee_totals.get((fee.network, fee.asset), (0, 0))
        fee_totals[(fee.network, fee.asset)] = (count + fee.count, amount + fee.amount_minor)
    rows: list[SettlementRow] = []
    net_by_asset: dict[str, int] = {}
    for network, asset in sorted(set(totals) | set(fee_totals)):
        lines = totals.get((network, asset), {})
        for line in _NETWORK_LINES:
            if line in lines:
                rows.append(SettlementRow(network, asset, line, *lines[line]))
        if lines:
            net = sum(amount for _, amount in lines.values())
            count = sum(c for c, _ in lines.values())
            rows.append(SettlementRow(network, asset, Line.NET_SETTLEMENT, count, net))
            net_by_asset[asset] = net_by_asset.get(asset, 0) + net
        if (network, asset) in fee_totals:
            rows.append(SettlementRow(network, asset, Line.FEES, *fee_totals[(network, asset)]))
    if clearing_by_kind is None:
        return rows
    closing = clearing_closing or {}
    assets = sorted({a for _, a in clearing_by_kind} | set(closing) | set(net_by_asset))
    for asset in assets:
        kinds = {k: v for (k, a), v in clearing_by_kind.items() if a == asset}
        network_count = sum(c for k, (c, _) in kinds.items() if k in NETWORK_ENTRY_KINDS)
        network_amount = sum(v for k, (_, v) in kinds.items() if k in NETWORK_ENTRY_KINDS)
        others = sorted((k, v) for k, v in kinds.items() if k not in NETWORK_ENTRY_KINDS)
        moved = network_amount + sum(v for _, (_, v) in others)
        end = closing.get(asset, 0)
        rows.append(SettlementRow("", asset, Line.CLEARING_ACCOUNT_OPENING, 0, end - moved))
        rows.append(
            SettlementRow("", asset, Line.CLEARING_ACCOUNT_NETWORK, network_count, network_amount)
        )
        for kind, (count, amount) in others:
            rows.append(SettlementRow("", asset, Line.CLEARING_ACCOUNT_OTHER, count, amount, kind))
        rows.append(SettlementRow("", asset, Line.CLEARING_ACCOUNT_CLOSING, 0, end))
        difference = network_amount - net_by_asset.get(asset, 0)
        rows.append(SettlementRow("", asset, Line.UNRECONCILED, 0, difference))
    return rows
