"""The floor of the gRPC stack: the stack of ``authswitch serve`` (grpc.aio on uvloop, its
protos and server options, see common.py) answering every Authorize with one constant
AuthorizeResponse, built once. The request is still parsed and the response serialised by
grpc's (de)serialisers, as in every other row; nothing else happens.

    python -m benchmarks.servers.trivial --listen 127.0.0.1:50060
"""

from __future__ import annotations

import argparse

from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2
from benchmarks.servers.common import AuthorizeHandler, Closer, Context, run_server

RESPONSE = pb.AuthorizeResponse(
    decision=pb.DECISION_APPROVED,
    response_code="00",
    reason=pb.REASON_APPROVED,
    authorization_code="000001",
    approved_amount=common_pb2.Money(amount_minor=100, asset="GBP"),
    fee=common_pb2.Money(amount_minor=0, asset="GBP"),
    decision_id="00000000-0000-4000-8000-000000000000",
)


async def authorize(request: pb.AuthorizeRequest, context: Context) -> pb.AuthorizeResponse:
    return RESPONSE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    args = parser.parse_args()

    async def factory() -> tuple[AuthorizeHandler, Closer]:
        async def close() -> None:
            return None

        return authorize, close

    run_server(args.listen, factory)


if __name__ == "__main__":
    main()
