"""The Redis cache of on-ledger state: balances and card state, one hash per account.

Postgres is the truth; this is a cache of it that decisions can change atomically. Every key
of an account carries the account id as its hash tag, so one decision touches one hash slot
and the scripts also run on Redis Cluster.

Key layout (``<p>`` is the configured prefix)::

    <p>:{<account>}:s                    hash: g (generation), e (epoch of this load),
                                         a:<ASSET> actual, h:<ASSET> held (authorised),
                                         c:<card> status decline reason (0 = active),
                                         t:<card> PIN tries, m:<card> tries max, p:<card> PVV,
                                         r (cluster, sentinel) the data set it was loaded into
                                         L, Lt: a reload's barrier token and when it was set
    <p>:{<account>}:f                    sorted set: the in-flight marks of operations whose
                                         Redis step is made and whose write is not yet known
                                         durable or not, by when (lua/begin_load.lua)
    <p>:{<account>}:m:<source>:<msg id>  idempotency marker: the request's fingerprint
    <p>:gen                              the generation every process must load at or above
    <p>:alive:<process>                  a process's heartbeat (expires a few seconds after
                                         it dies): whose in-flight marks are still live

A reload in any process waits for every in-flight mark on the account to go before it reads
Postgres, and new operations wait for the reload (their scripts answer MISS while the barrier
is set), so a reload never loses a reservation another process is still committing
(lua/begin_load.lua; service/cache_sync.py).

The generation is raised when a process starts: every account is then reloaded from Postgres
on its next use, so state left by a crashed process never decides anything.

On a Redis Cluster, and behind Sentinel (:mod:`authswitch.adapters.redis.client`,
``needs_node_fence``), the state hash also records, as
``r``, the data set it was loaded into: the replication id of the primary that ran the load.
Every script compares it with the replication id of the node it runs on and treats a
different one as not loaded, so the account is reloaded from Postgres before its next
decision. A replica gets a new replication id when it is promoted, so after a failover no
state the old primary wrote — possibly missing its last writes, lost by asynchronous
replication — decides anything on the new one; the same holds after a fail-back and for an
account whose slot was migrated to another node. Every process learns of it from the data
itself, with no extra round trip, and nothing depends on the generation key (which lives on
one node and may itself lose a write: each process keeps its own generation as a floor, and a
starting one raises it at least to the clock in milliseconds). Postgres still refuses an
overspend at commit (``admit_in_order``); this makes the cache right before it is used. Cost:
``INFO replication`` inside each script, a few microseconds; one server skips it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError, RedisError

from authswitch.adapters.redis.errors import UNREACHABLE, translated, unavailable
from authswitch.adapters.redis.pipeline import Pipelined, PipelinedCluster, Reply
from authswitch.domain.authorization import (
    NO_CHARGES,
    CardState,
    Charges,
    CounterCheck,
    FeeMode,
    PreChecks,
)
from authswitch.domain.codes import Reason
from authswitch.domain.controls import VelocityCheck
from authswitch.domain.ledger import Balance
from authswitch.futures import Detached, outlive_cancel

__all__ = [
    "AccountSnapshot",
    "ApplyResult",
    "AuthorizeOutcome",
    "Duplicate",
    "LedgerCache",
    "Miss",
    "RedisKeys",
]

MARKER_TTL_S_DEFAULT = 7 * 24 * 3600

log = logging.getLogger(__name__)

# Prepended to every script: NODE names the data set the script runs on (see the module doc).
_NODE_CLUSTER = (
    "local NODE = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')\n"
)
_NODE_SINGLE = "local NODE = ''\n"


class RedisKeys:
    """Key names; the account id is the hash tag of all its keys."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.generation = f"{prefix}:gen"

    def state(self, account_id: str) -> str:
        return f"{self.prefix}:{{{account_id}}}:s"

    def marker(self, account_id: str, source: str, message_id: str) -> str:
        return f"{self.prefix}:{{{account_id}}}:m:{source}:{message_id}"

    def marks(self, account_id: str) -> str:
        return f"{self.prefix}:{{{account_id}}}:f"

    def alive(self, process: str) -> str:
        return f"{self.prefix}:alive:{process}"


@dataclass(frozen=True, slots=True)
class Miss:
    """The account's state, or the card's fields, are not in the cache."""

    card_only: bool = False


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The message id was seen before; ``fingerprint`` is what the first request stored."""

    fingerprint: bytes


@dataclass(frozen=True, slots=True)
class CreditOutcome:
    """An account-funding credit's atomic step: its reason, and the balance after it."""

    reason: Reason
    epoch: bytes
    balance: Balance | None  # None without a balance in the asset


@dataclass(slots=True)
class AuthorizeOutcome:
    reason: Reason
    approved_minor: int
    fee_minor: int
    balance: Balance | None  # after the decision; None without a balance in the asset
    epoch: bytes
    pin_tries: int
    pin_tries_changed: bool
    pin_blocked_now: bool
    pin_changed: bool
    fee_mode: FeeMode = FeeMode.NONE
    velocity_rule: int = 0  # with velocity rules: the 1-based rule that declined, 0: none
    velocity_blocked: int = 0  # the rule whose decline count blocked the card, 0: none

    @property
    def held_minor(self) -> int:
        """What the decision added to the authorised balance."""
        if self.reason in (Reason.APPROVED, Reason.PARTIALLY_APPROVED):
            return self.approved_minor + (self.fee_minor if self.fee_mode is FeeMode.HELD else 0)
        return 0

    @property
    def posted_fee_minor(self) -> int:
        """A fee debited from the actual balance (zero-value or declined request)."""
        return self.fee_minor if self.fee_mode is FeeMode.POSTED else 0


@dataclass(slots=True)
class ApplyResult:
    status: str  # "OK", "NSF", "NOBALANCE"
    balance: Balance | None
    epoch: bytes = b""


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """An account's state as read from Postgres, ready to load."""

    account_id: str
    balances: dict[str, Balance]
    cards: dict[str, CardState]
    usage: dict[str, tuple[int, int]] = field(default_factory=dict)  # counter -> (amount, count)


def _card_fields(card_id: str, card: CardState) -> list[bytes | str | int]:
    reason = card.status.decline_reason
    return [
        f"c:{card_id}", int(reason) if reason is not None else 0,
        f"t:{card_id}", card.pin_tries,
        f"m:{card_id}", card.pin_tries_max,
        f"p:{card_id}", card.pvv,
    ]  # fmt: skip


class _Script:
    """One Lua script, run by EVALSHA; where the server does not know it (NOSCRIPT: after a
    SCRIPT FLUSH or a restart, on a promoted replica, on the target of a migrated slot), by
    EVAL of its source, which also caches it there. EVAL goes where the keys live, so it
    needs one round trip and no node but the key's own."""

    def __init__(
        self, client: Pipelined, name: str, prelude: str, libraries: Sequence[str] = ()
    ) -> None:
        """``libraries``: files of lua/ whose functions the script uses, put before it."""
        lua = resources.files("authswitch.adapters.redis").joinpath("lua")
        self.client = client
        self.source = prelude.encode() + b"".join(
            lua.joinpath(f"{part}.lua").read_bytes() for part in (*libraries, name)
        )
        self.sha = hashlib.sha1(self.source, usedforsecurity=False).hexdigest()

    def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> asyncio.Future[Reply]:
        """Run the script on the node of ``keys[0]``; the future of its reply
        (:class:`~authswitch.futures.Detached`: a cancelled caller never abandons it)."""
        client, first = self.client, keys[0]
        try:
            tried = client.keyed(first, "EVALSHA", self.sha, len(keys), *keys, *args)
        except UNREACHABLE as exc:
            raise unavailable(exc) from exc
        outer: asyncio.Future[Reply] = Detached(loop=asyncio.get_running_loop())

        def settle(done: asyncio.Future[Reply]) -> None:
            error = done.exception()
            if error is None:
                outer.set_result(done.result())
                return
            if not isinstance(error, NoScriptError):
                outer.set_exception(translated(error))
                return
            try:  # not run: the server does not know the script
                again = client.keyed(first, "EVAL", self.source, len(keys), *keys, *args)
            except RedisError as exc:
                outer.set_exception(translated(exc))
                return
            again.add_done_callback(_copy_to(outer))

        tried.add_done_callback(settle)
        return outer


def _copy_to(outer: asyncio.Future[Reply]) -> Any:
    def copy(done: asyncio.Future[Reply]) -> None:
        error = done.exception()
        if error is not None:
            outer.set_exception(translated(error))
        else:
            outer.set_result(done.result())

    return copy


class LedgerCache:
    """Typed access to the scripts; every method is one round trip."""

    def __init__(
        self,
        client: Pipelined,
        prefix: str,
        *,
        marker_ttl_s: int,
        fenced: bool | None = None,
    ) -> None:
        """``fenced``: whether scripts check the data set they run on (module doc); by
        default on a Redis Cluster only; behind Sentinel the caller asks for it
        (``RedisClients.fenced``)."""
        self.client = client
        self.keys = RedisKeys(prefix)
        self.marker_ttl_s = marker_ttl_s
        self.generation = 0
        self.cluster = isinstance(client, PipelinedCluster)
        self.fenced = self.cluster if fenced is None else fenced
        prelude = _NODE_CLUSTER if self.fenced else _NODE_SINGLE
        self._authorize = _Script(client, "authorize", prelude, ("limits_lib",))
        self._apply = _Script(client, "apply", prelude)
        self._adjust = _Script(client, "adjust", prelude)
        self._load = _Script(client, "load", prelude)
        self._load_card = _Script(client, "load_card", prelude)
        self._counter = _Script(client, "counter", prelude)
        self._limits = _Script(client, "limits", prelude)
        self._read = _Script(client, "read", prelude)
        self._credit = _Script(client, "credit", prelude, ("limits_lib",))
        self._begin_load = _Script(client, "begin_load", prelude)
        self._admit = _Script(client, "admit", prelude)

    async def start_generation(self, floor: int) -> int:
        """Raise the shared generation to at least ``floor`` and adopt it.

        Every account loaded under an older generation is reloaded on its next use.
        """
        key = self.keys.generation
        try:
            current = await self.client.keyed(key, "GET", key)
            generation = max(int(current or 0) + 1, floor)
            await self.client.keyed(key, "SET", key, generation)
        except UNREACHABLE as exc:
            raise unavailable(exc) from exc
        self.generation = generation
        return generation

    async def refresh_generation(self) -> int:
        """Adopt a newer generation raised by another process, if any.

        Only an optimisation (state loaded under a lower generation is reloaded by the
        processes above it), so an unreachable generation key — on a cluster, a node in
        failover while the account's own node answers — keeps the current one.
        """
        try:
            key = self.keys.generation
            current = int(await self.client.keyed(key, "GET", key) or 0)
        except RedisError as exc:
            log.debug("generation not read", extra={"error": type(exc).__name__})
            return self.generation
        self.generation = max(self.generation, current)
        return self.generation

    async def authorize(
        self,
        *,
        account_id: str,
        card_id: str,
        asset: str,
        amount_minor: int,
        partial_allowed: bool,
        zero_value: bool,
        pre: PreChecks,
        source: str,
        message_id: str,
        fingerprint: bytes,
        charges: Charges = NO_CHARGES,
        checks_only: bool = False,
        velocity: Sequence[VelocityCheck] = (),
        mark: str = "",
    ) -> AuthorizeOutcome | Miss | Duplicate:
        """``mark``: the operation's in-flight mark (lua/begin_load.lua), '' for a step of an
        operation already marked on the account."""
        keys = [
            self.keys.state(account_id),
            self.keys.marker(account_id, source, message_id),
            self.keys.marks(account_id),
        ]
        args = self._authorize_args(
            card_id, asset, amount_minor, partial_allowed, zero_value, pre, fingerprint,
            charges, checks_only, velocity, mark,
        )  # fmt: skip
        # Once sent, the step's outcome must be known: a cancelled caller still makes it
        # durable or undoes it (futures.py).
        reply: Sequence[Any] = await outlive_cancel(self._authorize(keys, args))
        tag = reply[0]
        if tag == b"OK":
            if len(reply) > 13:  # with velocity rules
                outcome = self._outcome(reply[:13])
                outcome.velocity_rule, outcome.velocity_blocked = reply[13], reply[14]
                return outcome
            return self._outcome(reply)
        return _not_done(reply, "authorize.lua")

    async def credit(
        self, *, account_id: str, card_id: str, asset: str, amount_minor: int,
        product_reason: Reason | None, limits: Sequence[CounterCheck], source: str,
        message_id: str, fingerprint: bytes, mark: str = "",
    ) -> CreditOutcome | Miss | Duplicate:  # fmt: skip
        """An account-funding credit's atomic step (``credit.lua``)."""
        keys = [
            self.keys.state(account_id),
            self.keys.marker(account_id, source, message_id),
            self.keys.marks(account_id),
        ]
        args: list[Any] = [
            self.generation, card_id, asset, amount_minor, int(product_reason or 0),
            fingerprint, self.marker_ttl_s, mark, len(limits),
        ]  # fmt: skip
        for limit in limits:
            args += [limit.key, limit.previous, limit.amount_max_minor, limit.count_max]
        reply: Sequence[Any] = await outlive_cancel(self._credit(keys, args))
        tag = reply[0]
        if tag == b"OK":
            _, reason, epoch, actual, held, has = reply
            return CreditOutcome(Reason(reason), epoch, Balance(actual, held) if has else None)
        return _not_done(reply, "credit.lua")

    def _authorize_args(
        self, card_id: str, asset: str, amount_minor: int, partial_allowed: bool,
        zero_value: bool, pre: PreChecks, fingerprint: bytes, charges: Charges,
        checks_only: bool, velocity: Sequence[VelocityCheck], mark: str,
    ) -> list[Any]:  # fmt: skip
        """authorize.lua's arguments, in its order (the script reads them positionally)."""
        args: list[Any] = [
            self.generation,
            card_id,
            asset,
            amount_minor,
            charges.fixed_fee_minor,
            1 if partial_allowed else 0,
            2 if checks_only else (1 if zero_value else 0),
            int(pre.expiry_reason or 0),
            pre.pin_mode.value,
            pre.pvv,
            pre.new_pvv,
            int(pre.cvv2_reason or 0),
            int(pre.product_reason or 0),
            fingerprint,
            self.marker_ttl_s,
            charges.decline_fee_minor,
            mark,
            len(charges.limits),
        ]
        for limit in charges.limits:
            args += [limit.key, limit.previous, limit.amount_max_minor, limit.count_max]
        args.append(len(charges.free_uses))
        for free in charges.free_uses:
            args += [free.counter.key, free.counter.previous, free.free_uses, free.fee_minor]
        if velocity:  # spend controls' rolling windows; absent (not 0) without them
            args.append(len(velocity))
            for v in velocity:
                args += [
                    v.approvals_prefix, v.declines_prefix, v.first_bucket, v.last_bucket,
                    v.approvals_max, v.amount_max_minor, v.declines_max,
                ]  # fmt: skip
        return args

    @staticmethod
    def _outcome(reply: Sequence[Any]) -> AuthorizeOutcome:
        (_, reason, approved, fee, actual, held, epoch, tries, tries_changed, blocked, changed,
         has, fee_mode) = reply  # fmt: skip
        return AuthorizeOutcome(
            reason=Reason(reason), approved_minor=approved, fee_minor=fee,
            balance=Balance(actual, held) if has else None, epoch=epoch, pin_tries=tries,
            pin_tries_changed=bool(tries_changed), pin_blocked_now=bool(blocked),
            pin_changed=bool(changed), fee_mode=FeeMode(fee_mode),
        )  # fmt: skip

    async def apply(
        self,
        *,
        account_id: str,
        asset: str,
        actual_delta_minor: int,
        held_delta_minor: int,
        requires_funds: bool,
        marker: tuple[str, str, bytes] | None = None,
        usage: Sequence[tuple[str, int, int]] = (),
        mark: str = "",
    ) -> ApplyResult | Miss | Duplicate:
        """Apply one balance change and counter adjustments (key, amount, count);
        ``marker`` is (source, message id, fingerprint); ``mark`` the operation's in-flight
        mark, as :meth:`authorize`'s."""
        keys = [self.keys.state(account_id), self.keys.marks(account_id)]
        marker_value: bytes = b""
        if marker is not None:
            source, message_id, marker_value = marker
            keys.append(self.keys.marker(account_id, source, message_id))
        args: list[Any] = [
            self.generation,
            asset,
            actual_delta_minor,
            held_delta_minor,
            1 if requires_funds else 0,
            marker_value,
            self.marker_ttl_s,
            mark,
            len(usage),
        ]
        for key, amount, uses in usage:
            args += [key, amount, uses]
        reply: Sequence[Any] = await outlive_cancel(self._apply(keys, args))
        tag = reply[0]
        if tag == b"OK":
            return ApplyResult("OK", Balance(reply[2], reply[3]), reply[1])
        if tag == b"NSF":
            return ApplyResult("NSF", Balance(reply[1], reply[2]))
        if tag == b"NOBALANCE":
            return ApplyResult("NOBALANCE", None)
        if tag == b"DUP":
            return Duplicate(reply[1])
        if tag == b"MISS":
            return Miss()
        raise AssertionError(f"apply.lua answered {tag!r}")

    async def add_within(
        self, account_id: str, key: str, previous: str, amount_minor: int, cap_minor: int
    ) -> bool | Miss:
        """Add to a counter if it stays within ``cap_minor``; whether it did."""
        reply: Sequence[Any] = await self._counter(
            [self.keys.state(account_id)],
            [self.generation, key, previous, amount_minor, cap_minor],
        )
        if reply[0] == b"MISS":
            return Miss()
        return bool(reply[0] == b"OK")

    async def count_charges(
        self,
        account_id: str,
        charges: Charges,
        amount_minor: int,
        uses: int,
        *,
        check: bool,
        free_delta: int = 0,
        decline: bool = False,
    ) -> tuple[str, int, tuple[int, ...]] | Miss:
        """Off-ledger limits and free-use fees (``limits.lua``). With ``check``: the fee
        (fixed, plus each free-use fee whose free uses are used up), then "AMOUNT" or
        "COUNT" when ``amount_minor`` and the fee would exceed a limit, else "OK" with
        everything counted; returns (outcome, fee, indexes of the free-use fees charged).
        Without: ``amount_minor`` and ``uses`` added to the limit counters still cached, and
        ``free_delta`` uses to the free-use ones (an adjustment of what was counted).
        ``decline``: the decline fee and one use counted on every limit."""
        mode = "decline" if decline else ("check" if check else "adjust")
        args: list[Any] = [
            self.generation, mode, amount_minor, uses,
            charges.fixed_fee_minor, charges.decline_fee_minor, free_delta, len(charges.limits),
        ]  # fmt: skip
        for limit in charges.limits:
            args += [limit.key, limit.previous, limit.amount_max_minor, limit.count_max]
        args.append(len(charges.free_uses))
        for free in charges.free_uses:
            args += [free.counter.key, free.counter.previous, free.free_uses, free.fee_minor]
        reply: Sequence[Any] = await outlive_cancel(
            self._limits([self.keys.state(account_id)], args)
        )
        if reply[0] == b"MISS":
            return Miss()
        return reply[0].decode(), int(reply[1]), tuple(int(x) for x in reply[2:])

    async def adjust(
        self, account_id: str, epoch: bytes, asset: str, actual_delta: int, held_delta: int
    ) -> bool:
        """Apply a delta only if the state is still at ``epoch`` (an undo after a refusal)."""
        keys = [self.keys.state(account_id)]
        applied = await self._adjust(keys, [epoch, asset, actual_delta, held_delta])
        return bool(applied)

    async def begin_load(
        self, account_id: str, token: str, *, refresh: bool, stale_ms: int, mark_max_age_s: int
    ) -> tuple[int, int] | bool:
        """One step of a reload's barrier (lua/begin_load.lua): False while another
        reload's barrier is in force; True when a usable state was loaded meanwhile and
        this reload is not needed (only without ``refresh``); else (operations still in
        flight, marks of dead processes dropped) under this ``token``'s barrier."""
        keys = [self.keys.state(account_id), self.keys.marks(account_id)]
        mode = "refresh" if refresh else "miss"
        reply: Sequence[Any] = await self._begin_load(
            keys, [token, self.generation, stale_ms, mode, mark_max_age_s]
        )
        if reply[0] == b"OURS":
            return int(reply[1]), int(reply[2])
        return bool(reply[0] == b"LOADED")

    async def abandon_load(self, account_id: str, token: str) -> None:
        """Drop this ``token``'s reload barrier (the reload failed): operations go on with
        the state as it is."""
        keys = [self.keys.state(account_id), self.keys.marks(account_id)]
        await self._begin_load(keys, [token, self.generation, 0, "abandon", 0])

    async def marks_in_flight(self, account_id: str) -> list[str]:
        key = self.keys.marks(account_id)
        try:
            found: Sequence[bytes] = await self.client.keyed(key, "ZRANGE", key, 0, -1)
        except UNREACHABLE as exc:
            raise unavailable(exc) from exc
        return [mark.decode() for mark in found]

    async def drop_marks(self, account_id: str, marks: Sequence[str]) -> None:
        key = self.keys.marks(account_id)
        try:
            await self.client.keyed(key, "ZREM", key, *marks)
        except UNREACHABLE as exc:
            raise unavailable(exc) from exc

    async def beat(self, process: str, ttl_ms: int) -> None:
        """This process's heartbeat: its in-flight marks count as live for ``ttl_ms``."""
        key = self.keys.alive(process)
        try:
            await self.client.keyed(key, "SET", key, 1, "PX", ttl_ms)
        except UNREACHABLE as exc:
            raise unavailable(exc) from exc

    async def stop_beating(self, process: str) -> None:
        key = self.keys.alive(process)
        try:
            await self.client.keyed(key, "DEL", key)
        except UNREACHABLE as exc:
            raise unavailable(exc) from exc

    async def alive(self, processes: Sequence[str]) -> set[str]:
        """Which of ``processes`` have a heartbeat."""
        keys = [self.keys.alive(process) for process in processes]
        try:
            found = await asyncio.gather(*(self.client.keyed(k, "EXISTS", k) for k in keys))
        except UNREACHABLE as exc:
            raise unavailable(exc) from exc
        return {process for process, n in zip(processes, found, strict=True) if n}

    async def admit(self, account_id: str, mark: str) -> bool:
        """Mark an operation in flight whose cached change will follow its Postgres write;
        False when the state is not loaded or a reload is under way (lua/admit.lua)."""
        keys = [self.keys.state(account_id), self.keys.marks(account_id)]
        return bool(await self._admit(keys, [self.generation, mark]))

    def release(self, account_id: str, marks: Sequence[str]) -> None:
        """Remove in-flight marks (their writes are durable, or known not to be); sent
        without waiting for the reply. One that is not removed (Redis unreachable) holds a
        reload back until the reload gives up waiting for it (service/cache_sync.py)."""
        key = self.keys.marks(account_id)
        try:
            sent = self.client.keyed(key, "ZREM", key, *marks)
        except RedisError as exc:
            log.warning("in-flight marks not released", extra={"error": type(exc).__name__})
            return
        sent.add_done_callback(_released)

    async def load(self, snapshot: AccountSnapshot, token: str = "") -> bytes | None:
        """Replace the account's state with ``snapshot``; returns the new epoch. With a
        reload barrier's ``token``: only while that barrier is in force, else None and
        nothing written."""
        epoch = secrets.token_hex(8).encode()
        fields: list[Any] = []
        for asset, balance in snapshot.balances.items():
            fields += [f"a:{asset}", balance.actual_minor, f"h:{asset}", balance.authorized_minor]
        for card_id, card in snapshot.cards.items():
            fields += _card_fields(card_id, card)
        for key, (amount, uses) in snapshot.usage.items():
            fields += [f"ua:{key}", amount, f"uc:{key}", uses]
        keys = [self.keys.state(snapshot.account_id), self.keys.marks(snapshot.account_id)]
        loaded = await self._load(keys, [token, self.generation, epoch, *fields])
        return epoch if loaded else None

    async def load_card(self, account_id: str, card_id: str, card: CardState) -> bool:
        keys = [self.keys.state(account_id)]
        args: list[Any] = [self.generation, *_card_fields(card_id, card)]
        return bool(await self._load_card(keys, args))

    async def invalidate(self, account_id: str) -> None:
        """Drop the account's state; the next use reloads it from Postgres."""
        key = self.keys.state(account_id)
        try:
            await self.client.keyed(key, "DEL", key)
        except UNREACHABLE as exc:
            raise unavailable(exc) from exc

    async def usage(self, account_id: str, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
        """What the account's cached counters of ``keys`` have used (amount, count); a
        counter not cached reads (0, 0). A read for explanations only, not for decisions."""
        state = self.keys.state(account_id)
        fields = [field for key in keys for field in (f"ua:{key}", f"uc:{key}")]
        if not fields:
            return {}
        try:
            reply = await self.client.keyed(state, "HMGET", state, *fields)
        except UNREACHABLE as exc:
            raise unavailable(exc) from exc
        return {
            key: (int(reply[2 * n] or 0), int(reply[2 * n + 1] or 0)) for n, key in enumerate(keys)
        }

    async def forget_marker(self, account_id: str, source: str, message_id: str) -> None:
        """Remove an idempotency marker of a request that left nothing durable (a 96)."""
        key = self.keys.marker(account_id, source, message_id)
        try:
            await self.client.keyed(key, "DEL", key)
        except UNREACHABLE as exc:
            raise unavailable(exc) from exc

    async def read_balances(self, account_id: str) -> dict[str, Balance] | None:
        """The cached balances of an account, or None when not loaded (for reconciliation)."""
        flat: Sequence[bytes] = await self._read([self.keys.state(account_id)], [self.generation])
        if not flat:
            return None
        raw = dict(zip(flat[::2], flat[1::2], strict=True))
        actual = {k[2:].decode(): int(v) for k, v in raw.items() if k.startswith(b"a:")}
        held = {k[2:].decode(): int(v) for k, v in raw.items() if k.startswith(b"h:")}
        return {asset: Balance(value, held.get(asset, 0)) for asset, value in actual.items()}


def _released(sent: asyncio.Future[Reply]) -> None:
    error = None if sent.cancelled() else sent.exception()
    if error is not None:
        log.warning("in-flight marks not released", extra={"error": type(error).__name__})


def _not_done(reply: Sequence[Any], script: str) -> Duplicate | Miss:
    """A script's answer other than OK: the message's earlier decision, or what is missing
    from the cache (the account, or only the card)."""
    tag = reply[0]
    if tag == b"DUP":
        return Duplicate(reply[1])
    if tag == b"MISS":
        return Miss()
    if tag == b"MISSCARD":
        return Miss(card_only=True)
    raise AssertionError(f"{script} answered {tag!r}")
