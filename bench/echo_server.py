"""A trivial grpc.aio server for the ceilings: what bare gRPC in Python does on this machine.

Run as a process (`python -m bench.echo_server`), it prints its port and serves two generic
methods with raw-bytes payloads: a unary echo and a server stream of N small messages.
"""

from __future__ import annotations

import asyncio
import struct
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio

SERVICE = "bench.Echo"
PAYLOAD = b"x" * 64


async def _unary(request: bytes, context: Any) -> bytes:
    return request


async def _stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    (count,) = struct.unpack(">I", request[:4])
    for _ in range(count):
        yield PAYLOAD


def _identity(b: bytes) -> bytes:
    return b


async def main() -> None:
    server = aio.server()
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(
                _unary, request_deserializer=_identity, response_serializer=_identity
            ),
            "Stream": grpc.unary_stream_rpc_method_handler(
                _stream, request_deserializer=_identity, response_serializer=_identity
            ),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
