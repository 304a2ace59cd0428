"""Currency conversion's admin operations (docs/fx.md; the arithmetic, and how a conversion
shows in a notification, are in domain/fx.py, the records in adapters/postgres/fx.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from authswitch.domain.fx import Conversion, FxRate, ProductFx
from authswitch.errors import RequestError
from authswitch.service.catalog import Catalog
from authswitch.service.catalog_watch import note_change

__all__ = ["FxAdmin"]


class FxAdmin:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.store = catalog.fx_store

    async def set_rate(
        self, base: str, quote: str, rate_text: str, effective_from: datetime, max_age_s: int,
        *, actor: str,
    ) -> FxRate:  # fmt: skip
        for code in (base, quote):
            if code not in self.catalog.assets:
                raise RequestError(f"asset {code!r} is not registered")
        try:
            rate = FxRate(base, quote, rate_text, effective_from, max_age_s)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        await self.store.set_rate(rate, actor)
        self.catalog.forget("fx", f"{base}/{quote}")
        await note_change(self.store.pool, "fx", f"{base}/{quote}")
        return rate

    async def list_rates(
        self, base: str, quote: str, *, limit: int, before_id: int | None
    ) -> list[tuple[int, FxRate]]:
        if bool(base) != bool(quote):
            raise RequestError("give both base_asset and quote_asset, or neither")
        rates: list[tuple[int, FxRate]] = await self.store.list_rates(
            base, quote, limit=limit, before_id=before_id
        )
        return rates

    async def set_product(
        self, product_id: str, *, enabled: bool, markup_bps: int, actor: str
    ) -> None:
        try:
            fx = ProductFx(markup_bps) if enabled else None
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        if not enabled and markup_bps:
            raise RequestError("a markup needs conversion enabled")
        await self.store.set_product_fx(product_id, fx, actor)
        self.catalog.forget("product", product_id)
        await note_change(self.store.pool, "product", product_id)

    async def conversions(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Conversion]:
        """What the messages under these (source, message id) keys converted."""
        found: dict[tuple[str, str], Conversion] = await self.store.conversions(
            [k for k in keys if k[1]]
        )
        return found
