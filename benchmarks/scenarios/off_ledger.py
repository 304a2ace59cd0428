"""Off-ledger scenarios: placeholders until off-ledger routing is built.

To wire one up: in ``server`` run ``authswitch serve`` (``authswitch_env`` in on_ledger.py)
and, in ``setup`` or ``workload``, start the client's DecisionService stub (a small server
under benchmarks/servers/, started and stopped by pid like the others, with its own CPU
added to the report), create an off-ledger program whose routing points at it, issue cards,
and return the Workload; then make ``unavailable`` return None.
"""

from __future__ import annotations

from benchmarks.scenarios.base import Scenario

__all__ = ["OffLedgerForward", "StandIn"]

NOT_BUILT = "not available yet: off-ledger routing (DecisionService) is not built"


class OffLedgerForward(Scenario):
    name = "off_ledger_forward"
    description = (
        "The real server forwarding each decision to the client's DecisionService after the "
        "core checks (an off-ledger program)."
    )

    def unavailable(self) -> str | None:
        return NOT_BUILT


class StandIn(Scenario):
    name = "stand_in"
    description = (
        "Off-ledger with the client unavailable: every decision made by the program's "
        "stand-in policy."
    )

    def unavailable(self) -> str | None:
        return NOT_BUILT
