"""In-process caches of the catalogue: assets, programs, products and card routes.

Catalogue rows change rarely and are read on every decision, so they are cached here. What
must be exact at decision time (card status, PIN tries, balances) is not cached here but in
Redis, where decisions change it atomically. Admin changes invalidate entries in this process
at once; other processes drop them within AUTHSWITCH_CATALOG_POLL_MS, from the
``catalog_changes`` rows the change adds (``catalog_watch.py``).
"""

from __future__ import annotations

import collections
import enum
import time
from datetime import datetime
from typing import Literal

from authswitch.adapters.postgres.cards import CardStore
from authswitch.adapters.postgres.catalog import CatalogStore
from authswitch.adapters.postgres.fx import FxStore
from authswitch.domain.authorization import CardFacts
from authswitch.domain.catalog import ProductRow, ProgramRow
from authswitch.domain.controls import ControlVersion
from authswitch.domain.fees import FeeSchedule
from authswitch.domain.fx import FxRate, by_pair
from authswitch.domain.limits import Limit
from authswitch.domain.money import Asset

__all__ = ["NOT_CACHED", "Catalog"]

# An unknown PAN is remembered briefly so that a flood of them does not each cost a query.
UNKNOWN_CARD_TTL_S = 5.0


class _NotCached(enum.Enum):
    NOT_CACHED = "not cached"


# What ``Catalog.peek_card`` says of a card this process has not looked up (recently).
NOT_CACHED: Literal[_NotCached.NOT_CACHED] = _NotCached.NOT_CACHED


class Catalog:
    def __init__(self, store: CatalogStore, cards: CardStore, *, cards_max: int) -> None:
        assert cards_max > 0
        self.store = store
        self.card_store = cards
        self.assets: dict[str, Asset] = {}
        self._programs: dict[str, ProgramRow] = {}
        self._products: dict[str, ProductRow] = {}
        self._fees: dict[str, list[FeeSchedule]] = {}
        self._limits: dict[str, list[Limit]] = {}
        # Spend control versions by card or account id (cards with controls only).
        self._controls: dict[str, list[ControlVersion]] = {}
        self._cards: collections.OrderedDict[bytes, CardFacts | float] = collections.OrderedDict()
        self._cards_max = cards_max
        self.fx_store = FxStore(store.pool)
        # Rates by (base, quote), loaded at first use (service/fx.py, docs/fx.md).
        self._fx_rates: dict[tuple[str, str], list[FxRate]] | None = None

    async def load(self) -> None:
        self.assets = await self.store.assets()

    def peek_card(self, pan_hmac: bytes) -> CardFacts | Literal[_NotCached.NOT_CACHED] | None:
        """The cached card (None: known not to exist), or NOT_CACHED; no I/O."""
        entry = self._cards.get(pan_hmac)
        if isinstance(entry, CardFacts):
            self._cards.move_to_end(pan_hmac)
            return entry
        if entry is not None and time.monotonic() < entry:
            return None
        return NOT_CACHED

    def peek_program(self, program_id: str) -> ProgramRow | None:
        """The cached program, or None when not cached; no I/O."""
        return self._programs.get(program_id)

    def peek_product(self, product_id: str) -> ProductRow | None:
        """The cached product, or None when not cached; no I/O."""
        return self._products.get(product_id)

    def peek_fees_and_limits(self, product_id: str) -> tuple[list[FeeSchedule], list[Limit]] | None:
        """The cached fee schedules and limits of a product, or None when either is not
        cached; no I/O."""
        fees = self._fees.get(product_id)
        limits = self._limits.get(product_id)
        if fees is None or limits is None:
            return None
        return fees, limits

    async def card(self, pan_hmac: bytes) -> CardFacts | None:
        cached = self.peek_card(pan_hmac)
        if cached is not NOT_CACHED:
            return cached
        facts = await self.card_store.card_by_pan_hmac(pan_hmac)
        self._cards[pan_hmac] = (
            facts if facts is not None else time.monotonic() + UNKNOWN_CARD_TTL_S
        )
        if len(self._cards) > self._cards_max:
            self._cards.popitem(last=False)
        return facts

    async def program(self, program_id: str) -> ProgramRow:
        row = self._programs.get(program_id)
        if row is None:
            row = self._programs[program_id] = await self.store.program(program_id)
        return row

    async def product(self, product_id: str) -> ProductRow:
        row = self._products.get(product_id)
        if row is None:
            row = self._products[product_id] = await self.store.product(product_id)
        return row

    async def fee_schedules(self, product_id: str) -> list[FeeSchedule]:
        schedules = self._fees.get(product_id)
        if schedules is None:
            schedules = self._fees[product_id] = await self.store.fee_schedules(product_id)
        return schedules

    async def limits(self, product_id: str) -> list[Limit]:
        limits = self._limits.get(product_id)
        if limits is None:
            limits = self._limits[product_id] = await self.store.limits(product_id)
        return limits

    def peek_controls(self, subject_id: str) -> list[ControlVersion] | None:
        """The cached spend control versions of a card or an account, or None; no I/O."""
        return self._controls.get(subject_id)

    def keep_controls(self, subject_id: str, versions: list[ControlVersion]) -> None:
        if len(self._controls) >= self._cards_max:  # bounded like the cards
            self._controls.pop(next(iter(self._controls)))
        self._controls[subject_id] = versions

    def peek_fx_rates(self) -> dict[tuple[str, str], list[FxRate]] | None:
        """The cached rates by pair, or None when not cached; no I/O."""
        return self._fx_rates

    async def fx_rates(self, now: datetime) -> dict[tuple[str, str], list[FxRate]]:
        """The rates by pair: those in force at ``now`` and every later one, so the cache
        stays right as time passes until a rate is set (which drops it)."""
        rates = self._fx_rates
        if rates is None:
            rates = self._fx_rates = by_pair(await self.fx_store.rates_usable(now))
        return rates

    def forget_card(self, pan_hmac: bytes) -> None:
        self._cards.pop(pan_hmac, None)

    def forget_all(self) -> None:
        """Drop every cached entry (another process changed the catalogue)."""
        self._programs.clear()
        self._products.clear()
        self._fees.clear()
        self._limits.clear()
        self._controls.clear()
        self._cards.clear()
        self._fx_rates = None

    def forget(self, kind: str, ident: str) -> None:
        if kind == "program":
            self._programs.pop(ident, None)
        elif kind == "product":
            self._products.pop(ident, None)
            self._fees.pop(ident, None)
            self._limits.pop(ident, None)
        elif kind == "card":
            self._controls.pop(ident, None)
            for key, facts in list(self._cards.items()):
                if isinstance(facts, CardFacts) and facts.card_id == ident:
                    del self._cards[key]
        elif kind == "account":  # an account's spend controls: its cards' flags change
            self._controls.pop(ident, None)
            for key, facts in list(self._cards.items()):
                if isinstance(facts, CardFacts) and facts.account_id == ident:
                    del self._cards[key]
        elif kind == "fx":
            self._fx_rates = None
        else:
            self.forget_all()
