"""Where the catalogue is kept: assets, clients, programs (with their routing to an
off-ledger client, notification sinks and subscriptions to movements and balance reports),
products, and the products' fee schedules and limits.

All SQL is parameterised; no value is ever formatted into a statement.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg

from authswitch.adapters.postgres.audit import audit
from authswitch.adapters.postgres.errors import (
    translated_methods,
)
from authswitch.adapters.postgres.ids import uuid_or_not_found
from authswitch.domain.authorization import (
    PinTriesExceededAction,
    ProductRules,
)
from authswitch.domain.catalog import ClientRow, ProductRow, ProgramRow, ProgramSummary
from authswitch.domain.fees import FeeRule, FeeSchedule, Region, Stage
from authswitch.domain.fx import ProductFx
from authswitch.domain.limits import Limit, Period, Subject
from authswitch.domain.money import Asset, AssetCategory
from authswitch.domain.offledger import BreakerConfig, ClientRouting, StandInPolicy
from authswitch.errors import AlreadyExists, NotFound

__all__ = ["CatalogStore"]


@translated_methods
class CatalogStore:
    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self.pool = pool

    async def assets(self) -> dict[str, Asset]:
        rows = await self.pool.fetch("SELECT code, category, exponent, numeric_code FROM assets")
        return {
            r["code"]: Asset(
                r["code"], AssetCategory(r["category"]), r["exponent"], r["numeric_code"]
            )
            for r in rows
        }

    async def program(self, program_id: str) -> ProgramRow:
        row = await self.pool.fetchrow(
            """SELECT p.id::text, p.client_id::text, p.name, p.mode, p.time_zone,
                      c.id::text AS clearing, f.id::text AS fee, p.country,
                      d.id::text AS disputes, p.movements
               FROM programs p
               JOIN accounts c ON c.program_id = p.id AND c.kind = 'CLEARING'
               JOIN accounts f ON f.program_id = p.id AND f.kind = 'FEE_INCOME'
               JOIN accounts d ON d.program_id = p.id AND d.kind = 'DISPUTES'
               WHERE p.id = $1""",
            uuid_or_not_found(program_id, "program"),
        )
        if row is None:
            raise NotFound(f"program {program_id} does not exist")
        routing_row = await self.pool.fetchrow(
            """SELECT target, tls, ca_secret, cert_secret, key_secret, token_secret,
                      deadline_ms, stand_in, stand_in_asset, stand_in_transaction_max_minor,
                      stand_in_daily_max_minor, breaker_failures, breaker_error_rate_pct,
                      breaker_window, breaker_open_ms
               FROM program_routing WHERE program_id = $1""",
            program_id,
        )
        routing = None
        if routing_row is not None:
            r = routing_row
            routing = ClientRouting(
                target=r["target"], tls=r["tls"], ca_secret=r["ca_secret"],
                cert_secret=r["cert_secret"], key_secret=r["key_secret"],
                token_secret=r["token_secret"], deadline_ms=r["deadline_ms"],
                stand_in=StandInPolicy(r["stand_in"]), stand_in_asset=r["stand_in_asset"],
                stand_in_transaction_max_minor=r["stand_in_transaction_max_minor"],
                stand_in_daily_max_minor=r["stand_in_daily_max_minor"],
                breaker=BreakerConfig(
                    r["breaker_failures"], r["breaker_error_rate_pct"], r["breaker_window"],
                    r["breaker_open_ms"],
                ),
            )  # fmt: skip
        sinks = await self.pool.fetch(
            "SELECT sink, url, secret_name FROM program_sinks WHERE program_id = $1 ORDER BY sink",
            program_id,
        )
        webhook = next((s for s in sinks if s["sink"] == "webhook"), None)
        return ProgramRow(
            id=row[0],
            client_id=row[1],
            name=row[2],
            mode=row[3],
            time_zone=row[4],
            clearing_account_id=row[5],
            fee_account_id=row[6],
            country=row[7],
            dispute_account_id=row[8],
            sinks=tuple(s["sink"] for s in sinks),
            routing=routing,
            webhook_url=webhook["url"] if webhook else "",
            webhook_secret=webhook["secret_name"] if webhook else "",
            movements=row["movements"],
        )

    async def product(self, product_id: str) -> ProductRow:
        row = await self.pool.fetchrow(
            """SELECT id::text, program_id::text, name, account_types, assets,
                      allowed_transaction_types, allowed_channels, blocked_mccs,
                      pin_tries_max, hold_validity_days, hold_validity_by_mcc,
                      pin_tries_exceeded_action, fx_enabled, fx_markup_bps
               FROM products WHERE id = $1""",
            uuid_or_not_found(product_id, "product"),
        )
        if row is None:
            raise NotFound(f"product {product_id} does not exist")
        rules = ProductRules(
            allowed_types=frozenset(row["allowed_transaction_types"]),
            allowed_channels=frozenset(row["allowed_channels"]),
            blocked_mccs=frozenset(row["blocked_mccs"]),
            pin_tries_max=row["pin_tries_max"],
            pin_tries_exceeded_action=PinTriesExceededAction[row["pin_tries_exceeded_action"]],
        )
        return ProductRow(
            row["id"],
            row["program_id"],
            row["name"],
            tuple(row["account_types"]),
            tuple(row["assets"]),
            rules,
            row["hold_validity_days"],
            {k: int(v) for k, v in json.loads(row["hold_validity_by_mcc"]).items()},
            ProductFx(row["fx_markup_bps"]) if row["fx_enabled"] else None,
        )

    async def client(self, client_id: str) -> ClientRow:
        row = await self.pool.fetchrow(
            "SELECT id::text AS client_id, name, created_at FROM clients WHERE id = $1",
            uuid_or_not_found(client_id, "client"),
        )
        if row is None:
            raise NotFound(f"client {client_id} does not exist")
        return ClientRow(**dict(row))

    async def clients(
        self, *, limit: int, after: tuple[datetime, str] | None = None
    ) -> list[ClientRow]:
        """Oldest first; ``after`` is the (created_at, id) of the last of the previous page."""
        cursor_at, cursor_id = after or (None, None)
        rows = await self.pool.fetch(
            """SELECT id::text AS client_id, name, created_at FROM clients
               WHERE $1::timestamptz IS NULL OR (created_at, id) > ($1, $2::uuid)
               ORDER BY created_at, id LIMIT $3""",
            cursor_at,
            cursor_id,
            limit,
        )
        return [ClientRow(**dict(r)) for r in rows]

    async def programs(
        self, *, client_id: str, limit: int, after: tuple[datetime, str] | None = None
    ) -> list[ProgramSummary]:
        """Oldest first, of one client or (``client_id`` empty) all; ``after`` as above."""
        if client_id:
            await self.client(client_id)
        cursor_at, cursor_id = after or (None, None)
        rows = await self.pool.fetch(
            """SELECT id::text AS program_id, client_id::text AS client_id, name, mode,
                      time_zone, country, created_at
               FROM programs
               WHERE ($1::uuid IS NULL OR client_id = $1)
                 AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid))
               ORDER BY created_at, id LIMIT $4""",
            client_id or None,
            cursor_at,
            cursor_id,
            limit,
        )
        return [ProgramSummary(**dict(r)) for r in rows]

    async def create_client(self, client_id: str, name: str, actor: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO clients (id, name) VALUES ($1, $2)", client_id, name)
            await audit(conn, actor, "create_client", client_id, {"name": name})

    async def create_program(
        self,
        *,
        program_id: str,
        client_id: str,
        name: str,
        mode: str,
        time_zone: str,
        country: str,
        clearing_account_id: str,
        fee_account_id: str,
        dispute_account_id: str,
        actor: str,
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            exists = await conn.fetchval(
                "SELECT true FROM clients WHERE id = $1", uuid_or_not_found(client_id, "client")
            )
            if not exists:
                raise NotFound(f"client {client_id} does not exist")
            await conn.execute(
                """INSERT INTO programs (id, client_id, name, mode, time_zone, country)
                   VALUES ($1, $2, $3, $4, $5, $6)""",
                program_id,
                client_id,
                name,
                mode,
                time_zone,
                country,
            )
            await conn.executemany(
                """INSERT INTO accounts (id, program_id, kind, account_type, name)
                   VALUES ($1, $2, $3, 'MULTI_CURRENCY', $4)""",
                [
                    (clearing_account_id, program_id, "CLEARING", f"{name} clearing"),
                    (fee_account_id, program_id, "FEE_INCOME", f"{name} fee income"),
                    (dispute_account_id, program_id, "DISPUTES", f"{name} disputes"),
                ],
            )
            await audit(
                conn, actor, "create_program", program_id,
                {"client_id": client_id, "name": name, "mode": mode, "time_zone": time_zone},
            )  # fmt: skip

    async def create_product(
        self,
        *,
        product_id: str,
        program_id: str,
        name: str,
        account_types: list[str],
        assets: list[str],
        rules: ProductRules,
        hold_validity_days: int,
        hold_validity_by_mcc: dict[str, int],
        actor: str,
    ) -> None:
        await self.program(program_id)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO products (id, program_id, name, account_types, assets,
                       allowed_transaction_types, allowed_channels, blocked_mccs, pin_tries_max,
                       hold_validity_days, hold_validity_by_mcc, pin_tries_exceeded_action)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)""",
                product_id,
                program_id,
                name,
                account_types,
                assets,
                sorted(rules.allowed_types),
                sorted(rules.allowed_channels),
                sorted(rules.blocked_mccs),
                rules.pin_tries_max,
                hold_validity_days,
                json.dumps(hold_validity_by_mcc, sort_keys=True),
                rules.pin_tries_exceeded_action.name,
            )
            await audit(
                conn, actor, "create_product", product_id,
                {"program_id": program_id, "name": name, "account_types": account_types,
                 "assets": assets},
            )  # fmt: skip

    async def set_movements(self, program_id: str, enabled: bool, actor: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            updated = await conn.execute(
                "UPDATE programs SET movements = $2 WHERE id = $1",
                uuid_or_not_found(program_id, "program"),
                enabled,
            )
            if updated == "UPDATE 0":
                raise NotFound(f"program {program_id} does not exist")
            await audit(conn, actor, "set_movement_subscription", program_id, {"enabled": enabled})

    async def register_asset(self, asset: Asset, actor: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                await conn.execute(
                    """INSERT INTO assets (code, category, exponent, numeric_code)
                       VALUES ($1, $2, $3, $4)""",
                    asset.code,
                    asset.category.value,
                    asset.exponent,
                    asset.numeric_code,
                )
            except asyncpg.UniqueViolationError:
                raise AlreadyExists(f"asset {asset.code} is already registered") from None
            await audit(
                conn, actor, "register_asset", asset.code,
                {"category": asset.category.value, "exponent": asset.exponent},
            )  # fmt: skip

    async def fee_schedules(self, product_id: str) -> list[FeeSchedule]:
        rows = await self.pool.fetch(
            """SELECT s.version, s.effective_from, r.id::text AS rule_id, r.name, r.stage,
                      r.transaction_types, r.channels, r.region, r.mccs, r.asset, r.flat_minor,
                      r.bps, r.min_minor, r.max_minor, r.above_minor, r.free_uses,
                      r.free_period, r.on_decline
               FROM fee_schedules s LEFT JOIN fee_rules r ON r.schedule_id = s.id
               WHERE s.product_id = $1
               ORDER BY s.version, r.position""",
            uuid_or_not_found(product_id, "product"),
        )
        by_version: dict[int, tuple[datetime, list[FeeRule]]] = {}
        for r in rows:
            _, rules = by_version.setdefault(r["version"], (r["effective_from"], []))
            if r["rule_id"] is None:
                continue
            rules.append(
                FeeRule(
                    id=r["rule_id"],
                    stage=Stage(r["stage"]),
                    asset=r["asset"],
                    flat_minor=r["flat_minor"],
                    bps=r["bps"],
                    min_minor=r["min_minor"],
                    max_minor=r["max_minor"],
                    above_minor=r["above_minor"],
                    free_uses=r["free_uses"],
                    free_period=r["free_period"],
                    on_decline=r["on_decline"],
                    transaction_types=frozenset(r["transaction_types"]),
                    channels=frozenset(r["channels"]),
                    region=Region(r["region"]),
                    mccs=frozenset(r["mccs"]),
                    name=r["name"],
                )
            )
        return [FeeSchedule(v, at, tuple(rules)) for v, (at, rules) in sorted(by_version.items())]

    async def add_fee_schedule(
        self, product_id: str, effective_from: datetime, rules: list[FeeRule], actor: str
    ) -> int:
        """Store a new version of the product's schedule; returns its version number."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT 1 FROM products WHERE id = $1 FOR UPDATE",
                uuid_or_not_found(product_id, "product"),
            )
            version = await conn.fetchval(
                "SELECT coalesce(max(version), 0) + 1 FROM fee_schedules WHERE product_id = $1",
                product_id,
            )
            schedule_id = str(uuid.uuid4())
            await conn.execute(
                """INSERT INTO fee_schedules (id, product_id, version, effective_from)
                   VALUES ($1, $2, $3, $4)""",
                schedule_id,
                product_id,
                version,
                effective_from,
            )
            await conn.executemany(
                """INSERT INTO fee_rules (id, schedule_id, position, name, stage,
                       transaction_types, channels, region, mccs, asset, flat_minor, bps,
                       min_minor, max_minor, above_minor, free_uses, free_period, on_decline)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                           $16, $17, $18)""",
                [_fee_rule_row(rule, schedule_id, n) for n, rule in enumerate(rules)],
            )
            await audit(
                conn, actor, "add_fee_schedule", product_id,
                {"version": version, "effective_from": effective_from.isoformat(),
                 "rules": len(rules)},
            )  # fmt: skip
        return int(version)

    async def limits(self, product_id: str) -> list[Limit]:
        rows = await self.pool.fetch(
            """SELECT id::text, subject, period, asset, amount_max_minor, count_max,
                      transaction_types
               FROM limits WHERE product_id = $1 ORDER BY created_at, id""",
            uuid_or_not_found(product_id, "product"),
        )
        return [
            Limit(
                id=r[0],
                subject=Subject(r[1]),
                period=Period(r[2]),
                asset=r[3],
                amount_max_minor=r[4],
                count_max=r[5],
                transaction_types=frozenset(r[6]),
            )
            for r in rows
        ]

    async def add_limit(self, product_id: str, limit: Limit, actor: str) -> None:
        await self.product(product_id)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO limits (id, product_id, subject, period, transaction_types, asset,
                       amount_max_minor, count_max)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
                limit.id,
                product_id,
                limit.subject.value,
                limit.period.value,
                sorted(limit.transaction_types),
                limit.asset,
                limit.amount_max_minor,
                limit.count_max,
            )
            await audit(
                conn, actor, "add_limit", limit.id,
                {"product_id": product_id, "subject": limit.subject.value,
                 "period": limit.period.value, "amount_max_minor": limit.amount_max_minor,
                 "count_max": limit.count_max},
            )  # fmt: skip

    async def set_routing(self, program_id: str, routing: ClientRouting, actor: str) -> None:
        await self.program(program_id)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO program_routing (program_id, target, tls, ca_secret, cert_secret,
                       key_secret, token_secret, deadline_ms, stand_in, stand_in_asset,
                       stand_in_transaction_max_minor, stand_in_daily_max_minor,
                       breaker_failures, breaker_error_rate_pct, breaker_window,
                       breaker_open_ms, updated_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                           $16, now())
                   ON CONFLICT (program_id) DO UPDATE SET
                       target = EXCLUDED.target, tls = EXCLUDED.tls,
                       ca_secret = EXCLUDED.ca_secret, cert_secret = EXCLUDED.cert_secret,
                       key_secret = EXCLUDED.key_secret, token_secret = EXCLUDED.token_secret,
                       deadline_ms = EXCLUDED.deadline_ms, stand_in = EXCLUDED.stand_in,
                       stand_in_asset = EXCLUDED.stand_in_asset,
                       stand_in_transaction_max_minor = EXCLUDED.stand_in_transaction_max_minor,
                       stand_in_daily_max_minor = EXCLUDED.stand_in_daily_max_minor,
                       breaker_failures = EXCLUDED.breaker_failures,
                       breaker_error_rate_pct = EXCLUDED.breaker_error_rate_pct,
                       breaker_window = EXCLUDED.breaker_window,
                       breaker_open_ms = EXCLUDED.breaker_open_ms, updated_at = now()""",
                program_id, routing.target, routing.tls, routing.ca_secret, routing.cert_secret,
                routing.key_secret, routing.token_secret, routing.deadline_ms,
                routing.stand_in.value, routing.stand_in_asset,
                routing.stand_in_transaction_max_minor, routing.stand_in_daily_max_minor,
                routing.breaker.failures_max, routing.breaker.error_rate_pct,
                routing.breaker.window, routing.breaker.open_ms,
            )  # fmt: skip
            await audit(
                conn, actor, "set_program_routing", program_id,
                {"target": routing.target, "tls": routing.tls, "deadline_ms": routing.deadline_ms,
                 "stand_in": routing.stand_in.value},
            )  # fmt: skip

    async def set_sink(
        self, program_id: str, sink: str, url: str, secret_name: str, remove: bool, actor: str
    ) -> None:
        await self.program(program_id)
        async with self.pool.acquire() as conn, conn.transaction():
            if remove:
                await conn.execute(
                    "DELETE FROM program_sinks WHERE program_id = $1 AND sink = $2",
                    program_id,
                    sink,
                )
            else:
                await conn.execute(
                    """INSERT INTO program_sinks (program_id, sink, url, secret_name)
                       VALUES ($1, $2, $3, $4)
                       ON CONFLICT (program_id, sink) DO UPDATE SET
                           url = EXCLUDED.url, secret_name = EXCLUDED.secret_name""",
                    program_id,
                    sink,
                    url,
                    secret_name,
                )
            await audit(
                conn, actor, "set_notification_sink", program_id,
                {"sink": sink, "url": url, "remove": remove},
            )  # fmt: skip

    async def set_report_subscription(
        self, client_id: str, prefix: str, enabled: bool, actor: str
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(
                "SELECT true FROM clients WHERE id = $1", uuid_or_not_found(client_id, "client")
            ):
                raise NotFound(f"client {client_id} does not exist")
            await conn.execute(
                """INSERT INTO report_subscriptions (client_id, prefix, enabled)
                   VALUES ($1, $2, $3)
                   ON CONFLICT (client_id) DO UPDATE SET prefix = EXCLUDED.prefix,
                       enabled = EXCLUDED.enabled, updated_at = now()""",
                client_id,
                prefix,
                enabled,
            )
            await audit(
                conn, actor, "set_balance_report", client_id, {"prefix": prefix, "enabled": enabled}
            )


def _fee_rule_row(rule: FeeRule, schedule_id: str, position: int) -> tuple[Any, ...]:
    return (
        rule.id, schedule_id, position, rule.name, rule.stage.value,
        sorted(rule.transaction_types), sorted(rule.channels), rule.region.value,
        sorted(rule.mccs), rule.asset, rule.flat_minor, rule.bps, rule.min_minor,
        rule.max_minor, rule.above_minor, rule.free_uses, rule.free_period, rule.on_decline,
    )  # fmt: skip
