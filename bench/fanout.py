"""Fan-out: one business sends a template to N opted-in users, each connected.

The users are prefilled (bench.accounts) and opt in through OptIn; their streams are held by
`bench.streams.Holders`, which acknowledge what arrives. The business sends one billed
template message to every user, in SendMessages calls of BATCH, and acknowledges the
DELIVERED statuses coming back on its own stream. Two times from the first send, on the
shared monotonic clock: until the last user received its message, and until the business
acknowledged the last DELIVERED status (the delivered definition of bench.delivery).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

from grpc import aio
from parley.v1 import messaging_pb2 as mpb
from parley.v1 import messaging_pb2_grpc

from bench.delivery import Ack, Tally, Timeline, request_id, run_prefix, status_stream
from bench.messaging_bench import Account, Server, ready_business, send_request
from bench.sizes import BATCH, PAYLOAD_BYTES
from bench.streams import Holders


def fan_out(server: Server, business: Account, users: Sequence[Account]) -> dict[str, Any]:
    async def prepare() -> str:
        async with aio.insecure_channel(server.target) as channel:
            return await ready_business(channel, business, users)

    template_id = asyncio.run(prepare())
    with Holders(server, processes=2) as holders:
        holders.open(users)
        started, delivered_at = asyncio.run(_send(server, business, users, template_id))
        received, last_arrival = holders.received()
    if received != len(users):
        raise RuntimeError(f"{received} of {len(users)} users received the message")
    return {
        "users": len(users),
        "all_received_s": last_arrival - started,
        "all_delivered_s": delivered_at - started,
        "delivered_per_s": len(users) / (delivered_at - started),
    }


async def _send(
    server: Server, business: Account, users: Sequence[Account], template_id: str
) -> tuple[float, float]:
    """Send to every user; return the monotonic times of the first send and of the last
    acknowledged DELIVERED status."""
    prefix = run_prefix()
    content = os.urandom(PAYLOAD_BYTES)
    requests = []
    for i, user in enumerate(users):
        request = send_request(user, content, template_id)
        request.request_id = request_id(prefix, i)
        requests.append(request)
    async with aio.insecure_channel(server.target) as channel:
        stub = messaging_pb2_grpc.MessagingServiceStub(channel)
        tally = Tally(Timeline())
        acks: list[Ack] = []
        ready = asyncio.Event()
        statuses = asyncio.ensure_future(status_stream(stub, business, prefix, ready, tally, acks))
        try:
            await asyncio.wait_for(ready.wait(), 60)
            started = time.monotonic()
            replies = await asyncio.gather(
                *(
                    stub.SendMessages(
                        mpb.SendMessagesRequest(requests=requests[i : i + BATCH]),
                        metadata=business.metadata,
                    )
                    for i in range(0, len(requests), BATCH)
                )
            )
            bad = [r for reply in replies for r in reply.results if r.code != 0]
            if bad:
                raise RuntimeError(f"{len(bad)} sends failed: {bad[0].message}")
            tally.all_sent(len(requests))
            await asyncio.wait_for(tally.done.wait(), 120)
            delivered_at = time.monotonic()
            if tally.failures:
                raise RuntimeError(tally.failures[0])
            await asyncio.gather(*acks)
        finally:
            statuses.cancel()
            await asyncio.gather(statuses, return_exceptions=True)
    return started, delivered_at
