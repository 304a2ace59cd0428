"""The operators' catalogue and adjustment operations (``LedgerAdminService``).

Every input is validated before anything is written; every change is audited.
"""

from __future__ import annotations

import uuid
import zoneinfo
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from authswitch.adapters.postgres.audit import AuditStore
from authswitch.adapters.postgres.cards import CardStore
from authswitch.adapters.postgres.catalog import CatalogStore
from authswitch.adapters.postgres.controls import ControlStore
from authswitch.adapters.postgres.holds import HoldStore
from authswitch.adapters.postgres.ledger import LedgerStore
from authswitch.adapters.postgres.outbox import OutboxStore
from authswitch.adapters.redis.cache import ApplyResult
from authswitch.domain import postings
from authswitch.domain.authorization import (
    CardStatus,
    Channel,
    PinTriesExceededAction,
    ProductRules,
    TransactionType,
    identifier_ok,
)
from authswitch.domain.bounds import FIELD_LEN_MAX
from authswitch.domain.cards import (
    bin_of,
    expiry_valid_format,
    last_four,
    pan_valid,
    pin_valid_format,
)
from authswitch.domain.cardsec import CardKeys
from authswitch.domain.codes import Reason
from authswitch.domain.controls import ControlSubject, ControlVersion, SpendControls
from authswitch.domain.controls import problem as controls_problem
from authswitch.domain.credits import ORIGINAL_CREDIT
from authswitch.domain.fees import FeeRule, Stage
from authswitch.domain.ledger import Balance
from authswitch.domain.limits import Limit
from authswitch.domain.messages.admin import Adjustment, AdjustmentAnswer
from authswitch.domain.money import AMOUNT_MAX_MINOR, Asset, AssetCategory
from authswitch.domain.networkdata import PosEntryMode
from authswitch.domain.offledger import ClientRouting, StandInPolicy
from authswitch.domain.records import LedgerWrite, Notification, StoredDecision
from authswitch.domain.writes import admin as writes
from authswitch.domain.writes.admin import ADMIN_SOURCE
from authswitch.errors import AlreadyExists, PreconditionFailed, RequestError
from authswitch.secrets import SecretStore
from authswitch.service.cache_sync import CacheSync
from authswitch.service.catalog import Catalog
from authswitch.service.catalog_watch import note_change
from authswitch.service.clock import Clock
from authswitch.service.fx import FxAdmin
from authswitch.service.posting import Posted, Poster, PostStatus
from authswitch.service.tokens import TokenService

__all__ = ["ADMIN_SOURCE", "AdjustmentReplies", "AdminService", "CreatedCard"]

CREDIT_PURPOSES = frozenset({"LOAD", "CREDIT_ADJUSTMENT", "DEBIT_REVERSAL", "WRITE_OFF"})
DEBIT_PURPOSES = frozenset({"FEE", "DEBIT_ADJUSTMENT", "CREDIT_REVERSAL", "WRITE_ON", "UNLOAD"})
ACCOUNT_TYPES = frozenset({"SINGLE", "MULTI_CURRENCY"})
NAME_LEN_MAX = 200
# Notification sinks an on-ledger programme can deliver to. The client sink calls the
# programme's DecisionService, which only off-ledger programmes have; a webhook delivers the
# notifications on-ledger programmes emit (clearings, refunds, fees, card status changes,
# disputes). Add "client" here once on-ledger programmes can have a client endpoint.
ON_LEDGER_SINKS = frozenset({"webhook"})
FEE_RULES_MAX = 100
WEBHOOK_URL_LEN_MAX = 2_000
IDEMPOTENCY_KEY_LEN_MAX = FIELD_LEN_MAX["idempotency_key"]


def admin_write(
    movement: postings.Movement, decision_id: str, key: str, kind: str, fingerprint: bytes,
    account_id: str, asset: str, amount_minor: int, now: datetime,
    respond: Callable[[Balance], bytes],
) -> Callable[[ApplyResult], LedgerWrite]:  # fmt: skip
    """How the group commit's write of an admin call that moves money on ``account_id`` (an
    adjustment, a transfer) is built from the cache's step (domain/writes/admin.py): answered
    ``respond(balance)``, the balance being the cached one after the change."""

    def build(applied: ApplyResult) -> LedgerWrite:
        assert applied.balance is not None
        return writes.admin_write(
            movement=movement, decision_id=decision_id, key=key, kind=kind,
            fingerprint=fingerprint, account_id=account_id, asset=asset,
            amount_minor=amount_minor, at=now, response=respond(applied.balance),
        )  # fmt: skip

    return build


def posted_decision(
    posted: Posted, fingerprint: bytes, *, no_balance: str, insufficient: str, reused: str
) -> StoredDecision:
    """The decision of an admin call's posting, once it is found approved and the call's
    own; otherwise PreconditionFailed (``no_balance``: the account holds no balance in the
    asset; ``insufficient``: the funds were refused, by the cache or by Postgres) or
    AlreadyExists (``reused``: the key holds another call's decision). A committed or
    refused posting's decision is the one just written, so only a duplicate's fingerprint
    can differ."""
    if posted.status is PostStatus.NO_BALANCE:
        raise PreconditionFailed(no_balance)
    if posted.status is PostStatus.INSUFFICIENT_FUNDS:
        raise PreconditionFailed(insufficient)
    decision = posted.decision
    assert decision is not None
    if decision.fingerprint != fingerprint:
        raise AlreadyExists(reused)
    if decision.reason != Reason.APPROVED:
        raise PreconditionFailed(insufficient)
    return decision


def require_idempotency_key(key: str) -> None:
    """An admin call's idempotency key: required, printable without spaces, bounded (it is
    stored as the message id of the call's decision under ADMIN_SOURCE)."""
    if not identifier_ok(key, IDEMPOTENCY_KEY_LEN_MAX, required=True):
        raise RequestError(
            f"idempotency_key is required (printable, up to {IDEMPOTENCY_KEY_LEN_MAX} characters)"
        )


class AdjustmentReplies(Protocol):
    """How an approved adjustment's reply is encoded, to be stored with its decision (and
    sent again as it is to a retry)."""

    def credit(self, answer: AdjustmentAnswer) -> bytes: ...

    def debit(self, answer: AdjustmentAnswer) -> bytes: ...


@dataclass(frozen=True, slots=True)
class CreatedCard:
    card_id: str
    bin: str
    last_four: str
    cvv2: str


def _name(value: str, what: str, *, required: bool = True) -> str:
    value = value.strip()
    if required and not value:
        raise RequestError(f"{what} is required")
    if len(value) > NAME_LEN_MAX:
        raise RequestError(f"{what} is longer than {NAME_LEN_MAX} characters")
    if any(ord(char) < 32 or 0x7F <= ord(char) < 0xA0 for char in value):
        raise RequestError(f"{what} has control characters")
    return value


class AdminService:
    def __init__(
        self,
        *,
        keys: CardKeys,
        catalog_store: CatalogStore,
        ledger: LedgerStore,
        holds: HoldStore,
        cards: CardStore,
        audit: AuditStore,
        outbox: OutboxStore,
        catalog: Catalog,
        sync: CacheSync,
        poster: Poster,
        clock: Clock,
        replies: AdjustmentReplies,
    ) -> None:
        self.keys = keys
        self.catalog_store = catalog_store
        self.ledger = ledger
        self.holds = holds
        self.cards = cards
        self.audit = audit
        self.outbox = outbox
        self.catalog = catalog
        self.sync = sync
        self.poster = poster
        self.clock = clock
        self.replies = replies
        self.tokens = TokenService(keys=keys, catalog=catalog, cards=cards, clock=clock)
        self.fx = FxAdmin(catalog)

    async def create_client(self, name: str, *, actor: str) -> str:
        client_id = str(uuid.uuid4())
        await self.catalog_store.create_client(client_id, _name(name, "name"), actor)
        return client_id

    async def create_program(
        self, client_id: str, name: str, mode: str, time_zone: str, country: str = "", *, actor: str
    ) -> str:
        if mode not in ("ON_LEDGER", "OFF_LEDGER"):
            raise RequestError("mode must be ON_LEDGER or OFF_LEDGER")
        time_zone = time_zone or "UTC"
        try:
            zoneinfo.ZoneInfo(time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise RequestError(f"unknown time zone {time_zone!r}") from None
        if country and not (len(country) == 2 and country.isalpha() and country.isupper()):
            raise RequestError("country must be an ISO 3166-1 alpha-2 code such as GB")
        program_id = str(uuid.uuid4())
        await self.catalog_store.create_program(
            program_id=program_id,
            client_id=client_id,
            name=_name(name, "name"),
            mode=mode,
            time_zone=time_zone,
            country=country,
            clearing_account_id=str(uuid.uuid4()),
            fee_account_id=str(uuid.uuid4()),
            dispute_account_id=str(uuid.uuid4()),
            actor=actor,
        )
        return program_id

    async def create_product(
        self,
        program_id: str,
        name: str,
        *,
        account_types: list[str],
        assets: list[str],
        allowed_transaction_types: list[int],
        allowed_channels: list[int],
        blocked_mccs: list[str],
        pin_tries_max: int,
        hold_validity_days: int,
        pin_tries_exceeded_action: PinTriesExceededAction = PinTriesExceededAction.BLOCK_CARD,
        hold_validity_by_mcc: dict[str, int],
        actor: str,
    ) -> str:
        account_types = account_types or ["SINGLE"]
        if not set(account_types) <= ACCOUNT_TYPES or len(set(account_types)) != len(account_types):
            raise RequestError("account_types must be distinct SINGLE / MULTI_CURRENCY")
        _check_assets(assets, self.catalog.assets.keys())
        known_types = {*TransactionType.__members__.values(), ORIGINAL_CREDIT}
        if not set(allowed_transaction_types) <= known_types:
            raise RequestError("allowed_transaction_types has an unknown transaction type")
        if not set(allowed_channels) <= {1, 2, 3, 4}:
            raise RequestError("allowed_channels has an unknown channel")
        if any(not (len(m) == 4 and m.isdigit()) for m in blocked_mccs):
            raise RequestError("blocked_mccs must be four-digit merchant category codes")
        pin_tries_max = pin_tries_max or 3
        if not 1 <= pin_tries_max <= 10:
            raise RequestError("pin_tries_max must be 1..10")
        hold_validity_days = hold_validity_days or 7
        if not 1 <= hold_validity_days <= 90:
            raise RequestError("hold_validity_days must be 1..90")
        for mcc, days in hold_validity_by_mcc.items():
            if not (len(mcc) == 4 and mcc.isdigit()) or not 1 <= days <= 90:
                raise RequestError("hold_validity_days_by_mcc maps four-digit MCCs to 1..90 days")
        product_id = str(uuid.uuid4())
        await self.catalog_store.create_product(
            product_id=product_id,
            program_id=program_id,
            name=_name(name, "name"),
            account_types=account_types,
            assets=assets,
            rules=ProductRules(
                allowed_types=frozenset(allowed_transaction_types),
                allowed_channels=frozenset(allowed_channels),
                blocked_mccs=frozenset(blocked_mccs),
                pin_tries_max=pin_tries_max,
                pin_tries_exceeded_action=pin_tries_exceeded_action,
            ),
            hold_validity_days=hold_validity_days,
            hold_validity_by_mcc=dict(hold_validity_by_mcc),
            actor=actor,
        )
        return product_id

    async def create_account(
        self,
        product_id: str,
        account_type: str,
        assets: list[str],
        *,
        name: str,
        reference: str,
        profile_id: str,
        customer_ids: list[str],
        actor: str,
    ) -> str:
        product = await self.catalog.product(product_id)
        if len(set(customer_ids)) != len(customer_ids):
            raise RequestError("customer_ids must be distinct")
        if customer_ids:
            found = await self.cards.customers_in_program(customer_ids, product.program_id)
            unknown = sorted(set(customer_ids) - found)
            if unknown:
                raise PreconditionFailed(
                    f"customers not in the product's program: {', '.join(unknown)}"
                )
        account_type = account_type or "SINGLE"
        if account_type not in ACCOUNT_TYPES:
            raise RequestError("account_type must be SINGLE or MULTI_CURRENCY")
        if account_type not in product.account_types:
            raise PreconditionFailed(
                f"product {product.name!r} does not offer {account_type} accounts "
                f"(it offers {', '.join(product.account_types)})"
            )
        assets = assets or [product.assets[0]]
        _check_assets(assets, self.catalog.assets.keys())
        if account_type == "SINGLE" and len(assets) != 1:
            raise RequestError("a single-currency account holds exactly one asset")
        outside = [a for a in assets if a not in product.assets]
        if outside:
            raise PreconditionFailed(f"product does not offer assets {', '.join(outside)}")
        if profile_id:
            try:
                profile_id = str(uuid.UUID(profile_id))
            except ValueError:
                raise RequestError("profile_id must be a UUID") from None
        account_id = str(uuid.uuid4())
        await self.ledger.create_account(
            account_id=account_id,
            product=product,
            account_type=account_type,
            assets=assets,
            name=_name(name, "name", required=False),
            reference=_name(reference, "reference", required=False),
            profile_id=profile_id or None,
            customer_ids=list(customer_ids),
            actor=actor,
        )
        return account_id

    async def create_customer(
        self, program_id: str, name: str, reference: str, *, actor: str
    ) -> str:
        customer_id = str(uuid.uuid4())
        await self.cards.create_customer(
            customer_id,
            program_id,
            _name(name, "name", required=False),
            _name(reference, "reference", required=False),
            actor,
        )
        return customer_id

    async def link_card_account(self, card_id: str, account_id: str, *, actor: str) -> None:
        await self.cards.link_card_account(card_id, account_id, actor)
        # The card's cached facts name the linked accounts it spends from.
        self.catalog.forget("card", card_id)

    async def set_fee_schedule(
        self, product_id: str, effective_from: datetime | None, rules: list[FeeRule], *, actor: str
    ) -> int:
        """Add a version of the product's fee schedule; returns the version number."""
        product = await self.catalog.product(product_id)
        if len(rules) > FEE_RULES_MAX:
            raise RequestError(f"a schedule has at most {FEE_RULES_MAX} rules")
        for index, rule in enumerate(rules):
            where = f"rule {index + 1}"
            if rule.asset not in product.assets:
                raise RequestError(f"{where}: the product has no asset {rule.asset!r}")
            if rule.max_minor is not None and rule.max_minor < rule.min_minor:
                raise RequestError(f"{where}: max_minor is below min_minor")
            if any(not (len(m) == 4 and m.isdigit()) for m in rule.mccs):
                raise RequestError(f"{where}: mccs must be four-digit codes")
            if rule.free_uses and rule.stage is not Stage.AUTHORIZATION:
                raise RequestError(f"{where}: free uses are counted at authorisation only")
            if rule.free_uses and rule.on_decline:
                raise RequestError(f"{where}: a decline fee has no free uses")
            if rule.on_decline and rule.stage is not Stage.AUTHORIZATION:
                raise RequestError(f"{where}: decline fees are charged at authorisation")
        version = await self.catalog_store.add_fee_schedule(
            product_id, effective_from or self.clock.now(), rules, actor
        )
        self.catalog.forget("product", product_id)
        await note_change(self.catalog_store.pool, "product", product_id)
        return version

    async def create_limit(self, product_id: str, limit: Limit, *, actor: str) -> str:
        product = await self.catalog.product(product_id)
        if limit.asset not in product.assets:
            raise RequestError(f"the product has no asset {limit.asset!r}")
        await self.catalog_store.add_limit(product_id, limit, actor)
        self.catalog.forget("product", product_id)
        await note_change(self.catalog_store.pool, "product", product_id)
        return limit.id

    async def set_spend_controls(
        self, subject: ControlSubject, subject_id: str, controls: SpendControls,
        effective_from: datetime | None, *, actor: str,
    ) -> int:  # fmt: skip
        """Add a version of a card's or an account's spend controls; returns its number."""
        if subject is ControlSubject.CARD:
            product_id = (await self.cards.details(subject_id)).product_id
        else:
            product_id = (await self.ledger.account_details(subject_id)).product_id
            if not product_id:
                raise RequestError("only a customer account of a product has spend controls")
        product = await self.catalog.product(product_id)
        error = controls_problem(
            controls, frozenset(product.assets),
            channels=frozenset(int(c) for c in Channel),
            transaction_types=frozenset(int(t) for t in TransactionType),
            entry_modes=frozenset(int(m) for m in PosEntryMode if m),
        )  # fmt: skip
        if error is not None:
            raise RequestError(error)
        version = await ControlStore(self.catalog_store.pool).add_version(
            subject, subject_id, effective_from or self.clock.now(), controls, actor
        )
        self.catalog.forget(subject.value.lower(), subject_id)
        await note_change(self.catalog_store.pool, subject.value.lower(), subject_id)
        return version

    async def spend_controls(self, subject_id: str) -> list[ControlVersion]:
        """Every version of a card's or an account's spend controls, oldest first."""
        return await ControlStore(self.catalog_store.pool).versions(subject_id)

    async def register_asset(
        self, code: str, category: str, exponent: int, numeric_code: str, *, actor: str
    ) -> None:
        try:
            asset = Asset(code, AssetCategory(category), exponent, numeric_code)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        await self.catalog_store.register_asset(asset, actor)
        await self.catalog.load()

    async def create_card(
        self,
        account_id: str,
        pan: str,
        expiry_yymm: str,
        status: CardStatus,
        pin: str,
        *,
        actor: str,
    ) -> CreatedCard:
        if not pan_valid(pan):
            raise RequestError("pan must be 12 to 19 digits with a valid check digit")
        if not expiry_valid_format(expiry_yymm):
            raise RequestError("expiry must be YYMM")
        if pin and not pin_valid_format(pin):
            raise RequestError("pin must be 4 to 12 digits")
        account = await self.ledger.account(account_id)
        if account.kind != "CUSTOMER" or account.product_id is None:
            raise PreconditionFailed("cards are issued on customer accounts only")
        product = await self.catalog.product(account.product_id)
        pan_hmac = self.keys.pan_hmac(pan)
        card_id = str(uuid.uuid4())
        await self.cards.create_card(
            card_id=card_id,
            account=account,
            product=product,
            pan_hmac=pan_hmac,
            bin_=bin_of(pan),
            last_four=last_four(pan),
            expiry_yymm=expiry_yymm,
            status=status,
            pvv=self.keys.pin_verification_value(pan_hmac, pin) if pin else None,
            actor=actor,
        )
        self.catalog.forget_card(pan_hmac)  # a cached "unknown card" must not outlive this
        return CreatedCard(card_id, bin_of(pan), last_four(pan), self.keys.cvv2(pan, expiry_yymm))

    async def set_card_pin(self, card_id: str, pin: str, *, actor: str) -> None:
        """Set a new PIN (the PVV is derived from the card's PAN HMAC) and reset the tries."""
        if not pin_valid_format(pin):
            raise RequestError("pin must be 4 to 12 digits")
        pan_hmac = await self.cards.card_pan_hmac(card_id)
        account_id = await self.cards.set_card_pin(
            card_id, self.keys.pin_verification_value(pan_hmac, pin), actor
        )
        await self.sync.refresh(account_id, "admin")

    async def change_card_status(
        self, card_id: str, status: CardStatus, reason: str, *, actor: str
    ) -> CardStatus:
        reason = _name(reason, "reason", required=False)
        now = self.clock.now()
        sinks: dict[str, tuple[str, ...]] = {}

        def notify(program_id: str, account_id: str, previous: CardStatus) -> Notification:
            return writes.card_status_changed(
                notification_id=str(uuid.uuid4()), program_id=program_id,
                account_id=account_id, card_id=card_id, previous=previous, status=status,
                reason=reason, at=now, sinks=sinks.get(program_id, ()),
            )  # fmt: skip

        program_id = await self.cards.card_program(card_id)
        sinks[program_id] = (await self.catalog.program(program_id)).sinks
        previous, account_id = await self.cards.change_card_status(
            card_id, status, reason, actor, notify
        )
        await self.sync.refresh(account_id, "admin")
        # Accounts the card spends from keep a copy of its status (service/linked.py).
        for linked in await self.cards.linked_accounts(card_id):
            await self.sync.refresh(linked, "admin")
        return previous

    async def expire_cards(self, *, limit: int = 1_000) -> int:
        """Set cards past their expiry month to EXPIRED (seed 000: "automatically changing a
        card to expired when the expiry date has passed"), notifying each."""
        now = self.clock.now()
        month = now.strftime("%y%m")
        programs: dict[str, tuple[str, ...]] = {}

        def notify(program_id: str, account_id: str, card_id: str) -> Notification:
            return writes.card_expired(
                notification_id=str(uuid.uuid4()), program_id=program_id,
                account_id=account_id, card_id=card_id, month=month, at=now,
                sinks=programs.get(program_id, ()),
            )  # fmt: skip

        for program_id in await self.cards.programs_with_cards_to_expire(month):
            programs[program_id] = (await self.catalog.program(program_id)).sinks
        accounts = await self.cards.expire_cards(month, notify, limit)
        for account_id in accounts:
            await self.sync.refresh(account_id, "admin")
        return len(accounts)

    async def set_routing(self, program_id: str, routing: ClientRouting, *, actor: str) -> None:
        """Point an off-ledger programme at its client's DecisionService. What could never take
        effect is refused, naming the field: routing of an on-ledger programme, TLS material
        without TLS, stand-in limits without an approving stand-in."""
        tls_secrets = (routing.ca_secret, routing.cert_secret, routing.key_secret)
        if routing.tls == "NONE" and any(tls_secrets):
            raise RequestError(
                "ca_secret, cert_secret and key_secret are used with tls CLIENT_TLS_TLS or "
                "CLIENT_TLS_MTLS only; with CLIENT_TLS_NONE they would never be read"
            )
        if routing.tls == "TLS" and (routing.cert_secret or routing.key_secret):
            raise RequestError(
                "cert_secret and key_secret are a client certificate for tls CLIENT_TLS_MTLS; "
                "with CLIENT_TLS_TLS none is sent"
            )
        stand_in = (
            routing.stand_in_asset,
            routing.stand_in_transaction_max_minor,
            routing.stand_in_daily_max_minor,
        )
        if routing.stand_in is not StandInPolicy.APPROVE and any(stand_in):
            raise RequestError(
                "stand_in_asset, stand_in_transaction_max_minor and stand_in_daily_max_minor "
                "apply to stand_in STAND_IN_POLICY_APPROVE only"
            )
        for name in (
            routing.ca_secret,
            routing.cert_secret,
            routing.key_secret,
            routing.token_secret,
        ):
            if name and not SecretStore.valid_name(name):
                raise RequestError(f"invalid secret name {name!r}")
        if routing.tls == "MTLS" and not (routing.cert_secret and routing.key_secret):
            raise RequestError("mutual TLS needs cert_secret and key_secret")
        approving = routing.stand_in is StandInPolicy.APPROVE
        if approving and routing.stand_in_asset not in self.catalog.assets:
            raise RequestError("an approving stand-in needs stand_in_asset")
        program = await self.catalog.program(program_id)
        if program.mode != "OFF_LEDGER":
            raise PreconditionFailed(
                f"target: program {program_id} is on-ledger and decides from its own ledger; "
                "a DecisionService (SetProgramRouting) is only ever called for off-ledger "
                "programs"
            )
        await self.catalog_store.set_routing(program_id, routing, actor)
        self.catalog.forget("program", program_id)
        await note_change(self.catalog_store.pool, "program", program_id)

    async def set_sink(
        self, program_id: str, sink: str, url: str, secret_name: str, remove: bool, *, actor: str
    ) -> None:
        """Subscribe (or, with ``remove``, unsubscribe) a programme to a notification sink.
        Refused, naming the field, when it could never deliver: a webhook that is not HTTPS,
        a client sink of an on-ledger programme or of one without routing."""
        if sink not in ("client", "webhook"):
            raise RequestError("sink must be NOTIFICATION_SINK_CLIENT or NOTIFICATION_SINK_WEBHOOK")
        if sink == "webhook" and not remove:
            if not url.startswith("https://") or len(url) > WEBHOOK_URL_LEN_MAX:
                raise RequestError(
                    f"url: a webhook URL must be https:// (at most {WEBHOOK_URL_LEN_MAX} "
                    "characters); notifications are signed but not encrypted, so they go over "
                    "TLS only"
                )
            if not SecretStore.valid_name(secret_name):
                raise RequestError("secret_name: a webhook needs the name of its signing secret")
        if sink == "client" and (url or secret_name):
            raise RequestError(
                "url and secret_name are for a webhook; the client sink uses the program's routing"
            )
        if not remove:
            program = await self.catalog.program(program_id)
            if program.mode != "OFF_LEDGER" and sink not in ON_LEDGER_SINKS:
                raise PreconditionFailed(
                    f"sink: program {program_id} is on-ledger: it has no DecisionService, so "
                    "NOTIFICATION_SINK_CLIENT could never deliver; use "
                    "NOTIFICATION_SINK_WEBHOOK"
                )
            if sink == "client" and program.routing is None:
                raise PreconditionFailed("set the program's routing (its client target) first")
        await self.catalog_store.set_sink(program_id, sink, url, secret_name, remove, actor)
        self.catalog.forget("program", program_id)
        await note_change(self.catalog_store.pool, "program", program_id)

    async def set_movements(self, program_id: str, enabled: bool, *, actor: str) -> None:
        """Subscribe (or unsubscribe) an on-ledger programme to MOVEMENT notifications
        (service/movements.py)."""
        program = await self.catalog.program(program_id)
        if enabled and program.mode != "ON_LEDGER":
            raise PreconditionFailed(
                f"program_id: program {program_id} is off-ledger: its client is notified of "
                "every message already, and its balances are the client's"
            )
        if enabled and not program.sinks:
            raise PreconditionFailed(
                "program_id: set a notification sink (SetNotificationSink) first: movements "
                "would have nowhere to go"
            )
        await self.catalog_store.set_movements(program_id, enabled, actor)
        self.catalog.forget("program", program_id)

    async def balances(self, account_id: str) -> dict[str, Balance]:
        return await self.ledger.balances(account_id)

    async def adjust(self, order: Adjustment, *, fingerprint: bytes, actor: str) -> bytes:
        """Credit or debit a customer account against the program's clearing account (or,
        for a fee, its fee income account); the reply's bytes, as stored with the decision."""
        asset, amount_minor, purpose = order.asset, order.amount_minor, order.purpose
        idempotency_key, credit = order.idempotency_key, order.credit
        description = self._checked_adjustment(
            asset, amount_minor, purpose, idempotency_key, order.description, credit=credit
        )
        account = await self.ledger.account(order.account_id)
        if account.kind != "CUSTOMER":
            raise PreconditionFailed("adjustments apply to customer accounts only")
        program = await self.catalog.program(account.program_id)
        now = self.clock.now()
        decision_id = str(uuid.uuid4())
        entry_id = str(uuid.uuid4())
        movement = writes.adjustment(
            account_id=account.id, program=program, asset=asset, amount_minor=amount_minor,
            credit=credit, purpose=purpose, description=description, key=idempotency_key,
            entry_id=entry_id, at=now, allow_negative=order.allow_negative,
        )  # fmt: skip
        kind = "CREDIT" if credit else "DEBIT"
        encode = self.replies.credit if credit else self.replies.debit
        build = admin_write(
            movement, decision_id, idempotency_key, kind, fingerprint, account.id, asset,
            amount_minor, now,
            lambda balance: encode(AdjustmentAnswer(entry_id, asset, balance)),
        )  # fmt: skip
        posted = await self.poster.post(
            movement.change, source=ADMIN_SOURCE, message_id=idempotency_key,
            fingerprint=fingerprint, build=build, program=program,
            movement=_ADJUSTMENT_MOVEMENTS.get(purpose, "ADJUSTMENT"),
            movement_details={
                "purpose": purpose, "entry_id": entry_id, "description": description,
            },
        )  # fmt: skip
        decision = posted_decision(
            posted, fingerprint, no_balance=f"account holds no {asset} balance",
            insufficient="insufficient available balance (set allow_negative to force)",
            reused="idempotency_key was used for a different adjustment",
        )  # fmt: skip
        await self.audit.record(
            actor, f"{kind.lower()}_account", account.id,
            {"asset": asset, "amount_minor": amount_minor, "purpose": purpose,
             "idempotency_key": idempotency_key, "entry_id": entry_id},
        )  # fmt: skip
        return decision.response

    def _checked_adjustment(
        self, asset: str, amount_minor: int, purpose: str, idempotency_key: str,
        description: str, *, credit: bool,
    ) -> str:  # fmt: skip
        """An adjustment's description, once the request is found well-formed; a bad
        request raises RequestError."""
        if credit and purpose not in CREDIT_PURPOSES:
            raise RequestError(f"purpose must be one of {', '.join(sorted(CREDIT_PURPOSES))}")
        if not credit and purpose not in DEBIT_PURPOSES:
            raise RequestError(f"purpose must be one of {', '.join(sorted(DEBIT_PURPOSES))}")
        if not 0 < amount_minor <= AMOUNT_MAX_MINOR:
            raise RequestError(f"amount must be 1..{AMOUNT_MAX_MINOR} minor units")
        if asset not in self.catalog.assets:
            raise RequestError(f"unknown asset {asset!r}")
        require_idempotency_key(idempotency_key)
        return _name(description, "description", required=False)


# The movement an adjustment is, by its purpose (the rest are ADJUSTMENT).
_ADJUSTMENT_MOVEMENTS = {"LOAD": "LOAD", "FEE": "FEE"}


def _check_assets(assets: list[str], known: Collection[str]) -> None:
    if not assets:
        raise RequestError("at least one asset is required")
    if len(set(assets)) != len(assets):
        raise RequestError("assets must be distinct")
    unknown = [a for a in assets if a not in known]
    if unknown:
        raise RequestError(f"unknown assets: {', '.join(unknown)}")
