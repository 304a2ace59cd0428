"""The answer to an authorisation, as the service decides it (the codec makes its bytes)."""

from __future__ import annotations

from dataclasses import dataclass

from authswitch.domain.codes import Reason
from authswitch.domain.fx import Conversion
from authswitch.domain.ledger import Balance

__all__ = ["AuthorizeAnswer"]


@dataclass(slots=True)  # not frozen: made once per decision, and a frozen one costs 4x
class AuthorizeAnswer:
    """What goes back to the network for one authorisation.

    ``asset`` empty: no amounts are shown (a format error, a system error). The decision
    and response code follow from ``reason`` (domain/codes.py) unless ``response_code``
    names the client's own code (an off-ledger client's answer). ``stand_in_reason``: the
    StandInReason number when authswitch answered for the client, else 0. ``conversion``:
    the currency conversion of a converted request (docs/fx.md); an approval of one shows
    the network's amount approved whole."""

    reason: Reason
    asset: str = ""
    approved_minor: int = 0
    fee_minor: int = 0
    balance: Balance | None = None
    authorization_code: str = ""
    decision_id: str = ""
    detail: str = ""
    response_code: str = ""
    stand_in_reason: int = 0
    conversion: Conversion | None = None
