"""A trivial grpc.aio server for the ceilings: what bare gRPC in Python does on this machine
with the very messages Parley's calls carry.

Run as a process (`python -m bench.echo_server`), it prints its port and serves two generic
methods. `Stream` writes N copies of a `ReceiveMessagesResponse` holding one full stream batch
(BATCH envelopes of PAYLOAD_BYTES, as Parley's stream sends under load), serialised per write
as any protobuf server must. `Unary` parses a `SendMessagesRequest` and answers a
`SendMessagesResponse` with one result per request, as `SendMessages` does. Neither touches a
database or runs a rule: the difference to Parley's figures is what Parley itself costs.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from parley.v1 import messaging_pb2 as mpb

from bench.sizes import BATCH, PAYLOAD_BYTES

SERVICE = "bench.Echo"


def stream_batch() -> mpb.ReceiveMessagesResponse:
    """One stream write as Parley's server makes it under load: BATCH envelopes."""
    sender = str(uuid.uuid4())
    now = Timestamp(seconds=1_800_000_000, nanos=123_456_789)
    return mpb.ReceiveMessagesResponse(
        envelopes=mpb.EnvelopeBatch(
            envelopes=[
                mpb.Envelope(
                    envelope_id=(1 << 40) + 2 * i + 1,
                    message_id=(1 << 40) + 2 * i,
                    sender_account_id=sender,
                    sender_device_id=1,
                    server_timestamp=now,
                    client_timestamp_ms=1_800_000_000_000,
                    content_type=mpb.CONTENT_TYPE_WHISPER,
                    content=os.urandom(PAYLOAD_BYTES),
                )
                for i in range(BATCH)
            ]
        )
    )


def send_results(count: int) -> bytes:
    """The answer to a SendMessages call of `count` sends, serialised once."""
    now = Timestamp(seconds=1_800_000_000, nanos=123_456_789)
    return mpb.SendMessagesResponse(
        results=[
            mpb.SendResult(
                request_id=str(uuid.uuid4()),
                response=mpb.SendMessageResponse(
                    message_id=(1 << 40) + i, server_timestamp=now, stored=True
                ),
            )
            for i in range(count)
        ]
    ).SerializeToString()


_BATCH = stream_batch()
_RESULTS = send_results(BATCH)


async def _unary(request: bytes, context: Any) -> bytes:
    mpb.SendMessagesRequest.FromString(request)
    return _RESULTS


async def _stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    (count,) = struct.unpack(">I", request[:4])
    for _ in range(count):
        yield _BATCH.SerializeToString()


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
