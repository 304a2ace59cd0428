"""Partition maintenance, by the application's clock: the months ahead are made before their
rows come, and (with a retention) the months older than it are dropped when nothing in them
is still needed (adapters/postgres/partitions.py has the rules)."""

from __future__ import annotations

from authswitch.adapters.postgres.partitions import (
    PartitionStore,
    RetentionOutcome,
    add_months,
    month_of,
)
from authswitch.service.clock import Clock

__all__ = ["PartitionMaintenance"]


class PartitionMaintenance:
    def __init__(
        self, store: PartitionStore, clock: Clock, *, months_ahead: int, retention_months: int
    ) -> None:
        assert months_ahead >= 1
        assert retention_months >= 0
        self.store = store
        self.clock = clock
        self.months_ahead = months_ahead
        self.retention_months = retention_months
        self.last_retention: list[RetentionOutcome] = []

    async def create_ahead(self) -> int:
        """Make the partitions of this month and the next ``months_ahead``; returns how many
        tables were created."""
        month = month_of(self.clock.now())
        return await self.store.ensure([add_months(month, n) for n in range(self.months_ahead + 1)])

    async def retire(self) -> int:
        """Drop the months before the last ``retention_months`` full ones (this month and
        those are kept) that hold nothing still needed; returns how many families' months
        were dropped. Off (0) without a retention."""
        if not self.retention_months:
            return 0
        horizon = add_months(month_of(self.clock.now()), -self.retention_months)
        self.last_retention = await self.store.retire(horizon)
        return sum(1 for outcome in self.last_retention if outcome.dropped)
