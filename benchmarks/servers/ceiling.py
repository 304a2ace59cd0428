"""The ceiling: the gRPC stack of ``authswitch serve`` answering from ONE Redis Lua
reservation per request, with nothing durable.

Each Authorize runs one script on the card's account (an idempotency marker, the funds
check and the reservation, as the real Lua step does) and answers 00 or 51. Nothing else:
no card lookup in a catalogue, no PIN/CVV2/expiry checks, no Postgres. Accounts are keyed by
a hash of the PAN (never the PAN itself) and funded on first use.

    python -m benchmarks.servers.ceiling --listen 127.0.0.1:50061 \\
        --redis-url redis://127.0.0.1:6379/0 --prefix benchXYZ
"""

from __future__ import annotations

import argparse
import hashlib
import uuid

import redis.asyncio as aioredis

from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2
from benchmarks.servers.common import AuthorizeHandler, Closer, Context, run_server

# KEYS: the account's balance hash, the message's idempotency marker (same hash tag).
# ARGV: amount, marker TTL (s), the balance an unseen account starts with.
# Returns {code, actual, authorized}: code 1 approved, 0 declined, -1 a replay.
RESERVE_LUA = """
local seen = redis.call('GET', KEYS[2])
if seen then return {-1, 0, 0} end
local amount = tonumber(ARGV[1])
local figures = redis.call('HMGET', KEYS[1], 'actual', 'authorized')
local actual, authorized = tonumber(figures[1]), tonumber(figures[2])
if not actual then
  actual, authorized = tonumber(ARGV[3]), 0
  redis.call('HSET', KEYS[1], 'actual', actual, 'authorized', 0)
end
if actual - authorized < amount then
  redis.call('SET', KEYS[2], '51', 'EX', ARGV[2])
  return {0, actual, authorized}
end
authorized = redis.call('HINCRBY', KEYS[1], 'authorized', amount)
redis.call('SET', KEYS[2], '00', 'EX', ARGV[2])
return {1, actual, authorized}
"""

MARKER_TTL_S = 3600


class CeilingHandler:
    def __init__(self, redis: aioredis.Redis, prefix: str, initial_balance_minor: int) -> None:
        self.prefix = prefix
        self.initial = initial_balance_minor
        self.reserve = redis.register_script(RESERVE_LUA)

    async def authorize(
        self, request: pb.AuthorizeRequest, context: Context
    ) -> pb.AuthorizeResponse:
        account = hashlib.blake2b(request.pan.encode(), digest_size=10).hexdigest()
        tag = f"{self.prefix}:{{{account}}}"
        amount = request.billing_amount.amount_minor
        asset = request.billing_amount.asset
        code, actual, authorized = await self.reserve(
            keys=[f"{tag}:s", f"{tag}:m:{request.source}:{request.message_id}"],
            args=[amount, MARKER_TTL_S, self.initial],
        )
        if code == 1:
            return pb.AuthorizeResponse(
                decision=pb.DECISION_APPROVED,
                response_code="00",
                reason=pb.REASON_APPROVED,
                authorization_code=f"{int(authorized) % 1_000_000:06d}",
                approved_amount=common_pb2.Money(amount_minor=amount, asset=asset),
                fee=common_pb2.Money(amount_minor=0, asset=asset),
                balance=common_pb2.Balance(
                    asset=asset,
                    actual_minor=int(actual),
                    available_minor=int(actual) - int(authorized),
                    authorized_minor=int(authorized),
                ),
                decision_id=str(uuid.uuid4()),
            )
        if code == 0:
            return pb.AuthorizeResponse(
                decision=pb.DECISION_DECLINED,
                response_code="51",
                reason=pb.REASON_INSUFFICIENT_FUNDS,
                decision_id=str(uuid.uuid4()),
            )
        return pb.AuthorizeResponse(
            decision=pb.DECISION_DECLINED,
            response_code="94",
            reason=pb.REASON_DUPLICATE_MISMATCH,
            detail="replay",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--initial-balance-minor", type=int, default=10**15)
    parser.add_argument("--redis-pool-max", type=int, default=64)
    args = parser.parse_args()

    async def factory() -> tuple[AuthorizeHandler, Closer]:
        # A blocking pool: past its size a call waits for a connection rather than failing
        # with MaxConnectionsError (which a burst of over 64 calls in flight would cause).
        pool = aioredis.BlockingConnectionPool.from_url(
            args.redis_url, max_connections=args.redis_pool_max, timeout=2.0
        )
        redis = aioredis.Redis(connection_pool=pool)
        await redis.ping()
        handler = CeilingHandler(redis, args.prefix, args.initial_balance_minor)
        return handler.authorize, redis.aclose

    run_server(args.listen, factory)


if __name__ == "__main__":
    main()
