"""Crash test: SIGKILL the server with thousands of messages in flight.

After the restart, every message whose send was acknowledged is delivered exactly once to the
application (redelivered envelopes are removed by envelope id, as a client does), nothing that
was never sent appears, and retrying the unacknowledged sends with their request ids stores no
duplicate.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc import aio
from parley.v1 import account_pb2 as apb
from parley.v1 import account_pb2_grpc, key_pb2_grpc, messaging_pb2_grpc
from parley.v1 import messaging_pb2 as mpb

from tests.keys_helper import DeviceKeyMaker
from tests.tools import server_process

MESSAGES = 5000
BATCH = 50
IN_FLIGHT = 4
KILL_AFTER_ACKED = 1500
NUMBERS = {"+15550000001": "111111", "+15550000002": "222222"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(database: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    numbers = ",".join(f"{n}={c}" for n, c in NUMBERS.items())
    with server_process(
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database",
        str(database),
        "--send-rate",
        "1000000/60s",
        env={"PARLEY_TEST_NUMBERS": numbers},
    ) as (proc, _):
        yield proc


async def register(channel: aio.Channel, number: str) -> tuple[str, tuple[tuple[str, str]], int]:
    accounts = account_pb2_grpc.AccountServiceStub(channel)
    started = await accounts.StartVerification(apb.StartVerificationRequest(phone_number=number))
    done = await accounts.CompleteVerification(
        apb.CompleteVerificationRequest(
            verification_id=started.verification_id,
            code=NUMBERS[number],
            device_name="d",
            account_kind=apb.ACCOUNT_KIND_PERSON,
        )
    )
    metadata = (("authorization", f"Bearer {done.auth_token}"),)
    maker = DeviceKeyMaker()
    await key_pb2_grpc.KeyServiceStub(channel).UploadPreKeys(
        maker.first_upload(pre_keys=1, kyber=1), metadata=metadata
    )
    return done.account_id, metadata, maker.registration_id


def request(i: int, request_id: str, to: str, registration_id: int) -> mpb.SendMessageRequest:
    return mpb.SendMessageRequest(
        request_id=request_id,
        recipient_account_id=to,
        messages=[
            mpb.OutgoingMessage(
                device_id=1,
                registration_id=registration_id,
                content_type=mpb.CONTENT_TYPE_WHISPER,
                content=f"payload-{i:05d}".encode(),
            )
        ],
    )


class Receiver:
    """The application side: keeps each message once, keyed by envelope id, then acks."""

    def __init__(self) -> None:
        self.by_envelope: dict[int, bytes] = {}

    async def drain(
        self,
        channel: aio.Channel,
        metadata: tuple[tuple[str, str]],
        stop: asyncio.Event | None = None,
    ) -> None:
        messaging = messaging_pb2_grpc.MessagingServiceStub(channel)
        call = messaging.ReceiveMessages(mpb.ReceiveMessagesRequest(), metadata=metadata)
        try:
            async for event in call:
                if event.HasField("queue_empty") and stop is None:
                    return
                envelopes = event.envelopes.envelopes
                for e in envelopes:
                    self.by_envelope.setdefault(e.envelope_id, e.content)  # stored, then acked
                if envelopes:
                    await messaging.AcknowledgeMessages(
                        mpb.AcknowledgeMessagesRequest(
                            envelope_ids=[e.envelope_id for e in envelopes]
                        ),
                        metadata=metadata,
                    )
        except aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        finally:
            call.cancel()


async def send_all(
    messaging: messaging_pb2_grpc.MessagingServiceAsyncStub,
    metadata: tuple[tuple[str, str]],
    to: str,
    registration_id: int,
    request_ids: list[str],
    acked: set[int],
    kill: subprocess.Popen[bytes],
    kill_after: int,
) -> None:
    """Send message i with request_ids[i] for every i, BATCH per call from IN_FLIGHT workers;
    record in `acked` the ones whose call was answered, and SIGKILL `kill` once `kill_after` are.
    A worker stops at its first failed call (the server died under it: not acknowledged)."""
    queue = list(range(0, len(request_ids), BATCH))

    async def sender() -> None:
        while queue:
            first = queue.pop(0)
            batch = [
                request(i, request_ids[i], to, registration_id)
                for i in range(first, min(first + BATCH, len(request_ids)))
            ]
            try:
                reply = await messaging.SendMessages(
                    mpb.SendMessagesRequest(requests=batch), metadata=metadata
                )
            except aio.AioRpcError:
                return
            assert all(r.code == 0 for r in reply.results)
            acked.update(range(first, first + len(batch)))
            if len(acked) >= kill_after and kill.poll() is None:
                kill.send_signal(signal.SIGKILL)

    await asyncio.gather(*(sender() for _ in range(IN_FLIGHT)))


async def resend_missing(
    messaging: messaging_pb2_grpc.MessagingServiceAsyncStub,
    metadata: tuple[tuple[str, str]],
    to: str,
    registration_id: int,
    request_ids: list[str],
    acked: set[int],
) -> None:
    """Retry every send that was not acknowledged, with its request id: the server stores what
    it never committed and answers the rest with their first result."""
    missing = [i for i in range(len(request_ids)) if i not in acked]
    for first in range(0, len(missing), 500):
        chunk = missing[first : first + 500]
        reply = await messaging.SendMessages(
            mpb.SendMessagesRequest(
                requests=[request(i, request_ids[i], to, registration_id) for i in chunk]
            ),
            metadata=metadata,
        )
        assert all(r.code == 0 for r in reply.results), reply.results[0].message


def test_sigkill_with_messages_in_flight(tmp_path: Path) -> None:
    database = tmp_path / "crash.db"
    port = free_port()
    target = f"127.0.0.1:{port}"
    request_ids = [str(uuid.uuid4()) for _ in range(MESSAGES)]
    acked: set[int] = set()
    receiver = Receiver()

    async def before_crash(
        proc: subprocess.Popen[bytes],
    ) -> tuple[str, tuple[tuple[str, str]], int, tuple[tuple[str, str]]]:
        async with aio.insecure_channel(target) as channel:
            _, alice_md, _ = await register(channel, "+15550000001")
            bob, bob_md, bob_reg = await register(channel, "+15550000002")
            messaging = messaging_pb2_grpc.MessagingServiceStub(channel)
            receiving = asyncio.ensure_future(receiver.drain(channel, bob_md, stop=asyncio.Event()))
            await send_all(
                messaging, alice_md, bob, bob_reg, request_ids, acked, proc, KILL_AFTER_ACKED
            )
            await receiving
            return bob, bob_md, bob_reg, alice_md

    async def after_restart(
        bob: str, bob_md: tuple[tuple[str, str]], bob_reg: int, alice_md: tuple[tuple[str, str]]
    ) -> None:
        async with aio.insecure_channel(target) as channel:
            await receiver.drain(channel, bob_md)
            delivered = sorted(receiver.by_envelope.values())
            sent = {f"payload-{i:05d}".encode() for i in range(MESSAGES)}
            # Every acknowledged send is there, exactly once; nothing unsent appears.
            assert {f"payload-{i:05d}".encode() for i in acked} <= set(delivered)
            assert set(delivered) <= sent
            assert len(delivered) == len(set(delivered)), "a message was stored twice"
            # Retrying what was not acknowledged, with the same request ids, completes the set
            # without duplicating what had been committed before the crash.
            messaging = messaging_pb2_grpc.MessagingServiceStub(channel)
            await resend_missing(messaging, alice_md, bob, bob_reg, request_ids, acked)
            await receiver.drain(channel, bob_md)
            delivered = sorted(receiver.by_envelope.values())
            assert len(delivered) == MESSAGES
            assert set(delivered) == sent

    with server(database, port) as proc:
        bob, bob_md, bob_reg, alice_md = asyncio.run(before_crash(proc))
        assert proc.wait(10) == -signal.SIGKILL
    assert KILL_AFTER_ACKED <= len(acked) < MESSAGES, "the kill came too late to test anything"
    with server(database, port):
        asyncio.run(after_restart(bob, bob_md, bob_reg, alice_md))
