"""The settlement position's arithmetic (pure): signs, the net per network, fees apart, and
the reconciliation to the clearing account."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authswitch.domain.settlement import Line, MessageTotal, SettlementRow, settlement_rows

pytestmark = pytest.mark.timeout(30)


def test_lines_signs_and_the_net_per_network() -> None:
    rows = settlement_rows(
        [
            MessageTotal(Line.CLEARED_PURCHASES, "visa", "GBP", 3, 10_000),
            MessageTotal(Line.REFUNDS, "visa", "GBP", 1, 500),
            MessageTotal(Line.ORIGINAL_CREDITS, "visa", "GBP", 2, 1_200),
            MessageTotal(Line.CHARGEBACKS, "visa", "GBP", 1, 2_000),
            MessageTotal(Line.REPRESENTMENTS, "visa", "GBP", 1, 2_000),
            MessageTotal(Line.DISPUTE_ARBITRATION, "visa", "GBP", 1, 2_000),
            MessageTotal(Line.CLEARED_PURCHASES, "mastercard", "GBP", 1, 700),
        ],
        [MessageTotal(Line.FEES, "visa", "GBP", 2, 60)],
    )
    assert rows == [
        SettlementRow("mastercard", "GBP", Line.CLEARED_PURCHASES, 1, 700),
        SettlementRow("mastercard", "GBP", Line.NET_SETTLEMENT, 1, 700),
        SettlementRow("visa", "GBP", Line.CLEARED_PURCHASES, 3, 10_000),
        SettlementRow("visa", "GBP", Line.REFUNDS, 1, -500),
        SettlementRow("visa", "GBP", Line.ORIGINAL_CREDITS, 2, -1_200),
        SettlementRow("visa", "GBP", Line.CHARGEBACKS, 1, -2_000),
        SettlementRow("visa", "GBP", Line.REPRESENTMENTS, 1, 2_000),
        SettlementRow("visa", "GBP", Line.DISPUTE_ARBITRATION, 1, -2_000),
        SettlementRow("visa", "GBP", Line.NET_SETTLEMENT, 9, 6_300),
        SettlementRow("visa", "GBP", Line.FEES, 2, 60),  # apart: not in the net
    ]


def test_the_clearing_account_reconciles_or_shows_the_difference() -> None:
    messages = [MessageTotal(Line.CLEARED_PURCHASES, "visa", "GBP", 2, 5_000)]
    rows = settlement_rows(
        messages, [],
        clearing_by_kind={("CLEARING", "GBP"): (2, 5_000), ("LOAD", "GBP"): (1, -20_000)},
        clearing_closing={"GBP": -40_000},
    )  # fmt: skip
    assert rows[2:] == [
        SettlementRow("", "GBP", Line.CLEARING_ACCOUNT_OPENING, 0, -25_000),
        SettlementRow("", "GBP", Line.CLEARING_ACCOUNT_NETWORK, 2, 5_000),
        SettlementRow("", "GBP", Line.CLEARING_ACCOUNT_OTHER, 1, -20_000, "LOAD"),
        SettlementRow("", "GBP", Line.CLEARING_ACCOUNT_CLOSING, 0, -40_000),
        SettlementRow("", "GBP", Line.UNRECONCILED, 0, 0),
    ]
    # A clearing on the journal that no message accounts for is a difference.
    broken = settlement_rows(
        messages, [], clearing_by_kind={("CLEARING", "GBP"): (3, 5_100)},
        clearing_closing={"GBP": 5_100},
    )  # fmt: skip
    assert broken[-1] == SettlementRow("", "GBP", Line.UNRECONCILED, 0, 100)


_line = st.sampled_from(
    [Line.CLEARED_PURCHASES, Line.REFUNDS, Line.ORIGINAL_CREDITS, Line.CHARGEBACKS,
     Line.REPRESENTMENTS, Line.DISPUTE_ARBITRATION]
)  # fmt: skip


@given(
    st.lists(
        st.tuples(_line, st.sampled_from(["visa", "mastercard"]), st.sampled_from(["GBP", "EUR"]),
                  st.integers(0, 10**12)),
        max_size=30,
    ),
    st.dictionaries(st.sampled_from(["GBP", "EUR"]), st.integers(-(10**12), 10**12)),
)  # fmt: skip
def test_a_journal_that_follows_the_messages_always_reconciles(
    messages: list[tuple[Line, str, str, int]], opening: dict[str, int]
) -> None:
    totals = [MessageTotal(line, network, asset, 1, amount) for line, network, asset, amount in
              messages]  # fmt: skip
    by_kind: dict[tuple[str, str], tuple[int, int]] = {}
    kinds = {Line.CLEARED_PURCHASES: "CLEARING", Line.REFUNDS: "REFUND",
             Line.ORIGINAL_CREDITS: "CREDIT", Line.CHARGEBACKS: "DISPUTE_CHARGEBACK",
             Line.REPRESENTMENTS: "DISPUTE_REPRESENTMENT",
             Line.DISPUTE_ARBITRATION: "DISPUTE_CARDHOLDER_WON"}  # fmt: skip
    for total in totals:
        count, amount = by_kind.get((kinds[total.line], total.asset), (0, 0))
        by_kind[(kinds[total.line], total.asset)] = (
            count + 1, amount + total.line.sign * total.amount_minor
        )  # fmt: skip
    closing = {
        asset: opening.get(asset, 0) + sum(v for (_, a), (_, v) in by_kind.items() if a == asset)
        for asset in ("GBP", "EUR")
    }
    rows = settlement_rows(totals, [], clearing_by_kind=by_kind, clearing_closing=closing)
    for row in rows:
        if row.line is Line.UNRECONCILED:
            assert row.amount_minor == 0
        if row.line is Line.CLEARING_ACCOUNT_OPENING:
            assert row.amount_minor == opening.get(row.asset, 0)
    nets = sum(r.amount_minor for r in rows if r.line is Line.NET_SETTLEMENT)
    network = sum(r.amount_minor for r in rows if r.line is Line.CLEARING_ACCOUNT_NETWORK)
    assert nets == network
