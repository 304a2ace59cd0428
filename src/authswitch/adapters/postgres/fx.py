"""Where currency conversion is kept (migration 0044, docs/fx.md): the rates of asset pairs,
the products' conversion settings, and what each converted message converted."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from authswitch.adapters.postgres.audit import audit
from authswitch.adapters.postgres.errors import translated_methods
from authswitch.domain.fx import Conversion, FxRate, ProductFx
from authswitch.errors import NotFound

__all__ = ["FxStore"]


def _rate(row: Any) -> FxRate:
    return FxRate(row[0], row[1], row[2], row[3], row[4])


@translated_methods
class FxStore:
    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self.pool = pool

    async def rates_usable(self, now: datetime) -> list[FxRate]:
        """The rates that are or will be in force from ``now`` on: of each pair, the latest
        that has begun, and every one that begins later."""
        rows = await self.pool.fetch(
            """SELECT base_asset, quote_asset, rate, effective_from, max_age_s
               FROM fx_rates WHERE effective_from > $1
               UNION ALL
               (SELECT DISTINCT ON (base_asset, quote_asset)
                       base_asset, quote_asset, rate, effective_from, max_age_s
                FROM fx_rates WHERE effective_from <= $1
                ORDER BY base_asset, quote_asset, effective_from DESC, id DESC)""",
            now,
        )
        return [_rate(r) for r in rows]

    async def set_rate(self, rate: FxRate, actor: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO fx_rates (base_asset, quote_asset, rate, effective_from, max_age_s)
                   VALUES ($1, $2, $3, $4, $5)""",
                rate.base, rate.quote, rate.rate_text, rate.effective_from, rate.max_age_s,
            )  # fmt: skip
            await audit(
                conn, actor, "set_fx_rate", f"{rate.base}/{rate.quote}",
                {"rate": rate.rate_text, "effective_from": rate.effective_from.isoformat(),
                 "max_age_s": rate.max_age_s},
            )  # fmt: skip

    async def list_rates(
        self, base: str, quote: str, *, limit: int, before_id: int | None
    ) -> list[tuple[int, FxRate]]:
        """Rates of a pair (both empty: of every pair), newest first, after ``before_id``."""
        rows = await self.pool.fetch(
            """SELECT base_asset, quote_asset, rate, effective_from, max_age_s, id
               FROM fx_rates
               WHERE ($1 = '' OR (base_asset = $1 AND quote_asset = $2))
                 AND ($3::bigint IS NULL OR id < $3)
               ORDER BY id DESC LIMIT $4""",
            base, quote, before_id, limit,
        )  # fmt: skip
        return [(r["id"], _rate(r)) for r in rows]

    async def set_product_fx(self, product_id: str, fx: ProductFx | None, actor: str) -> None:
        try:
            ident = uuid.UUID(product_id)
        except ValueError:
            raise NotFound(f"product {product_id!r} does not exist") from None
        async with self.pool.acquire() as conn, conn.transaction():
            updated = await conn.execute(
                "UPDATE products SET fx_enabled = $2, fx_markup_bps = $3 WHERE id = $1",
                ident, fx is not None, fx.markup_bps if fx else 0,
            )  # fmt: skip
            if updated == "UPDATE 0":
                raise NotFound(f"product {product_id} does not exist")
            await audit(
                conn, actor, "set_product_fx", product_id,
                {"enabled": fx is not None, "markup_bps": fx.markup_bps if fx else 0},
            )  # fmt: skip

    async def conversion(self, source: str, message_id: str) -> Conversion | None:
        """What the message under this key converted, if it converted anything."""
        row = await self.pool.fetchrow(
            """SELECT billing_asset, billing_minor, account_asset, account_minor, markup_minor,
                      rate, rate_effective_from
               FROM fx_conversions WHERE source = $1 AND message_id = $2""",
            source, message_id,
        )  # fmt: skip
        return None if row is None else Conversion(*row)

    async def conversions(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Conversion]:
        """What the messages under these keys converted, by key (those that did)."""
        if not keys:
            return {}
        rows = await self.pool.fetch(
            """SELECT x.source, x.message_id, x.billing_asset, x.billing_minor,
                      x.account_asset, x.account_minor, x.markup_minor, x.rate,
                      x.rate_effective_from
               FROM fx_conversions x
               JOIN unnest($1::text[], $2::text[]) AS k(source, message_id)
                 ON (x.source, x.message_id) = (k.source, k.message_id)""",
            [k[0] for k in keys], [k[1] for k in keys],
        )  # fmt: skip
        return {(r[0], r[1]): Conversion(*r[2:]) for r in rows}
