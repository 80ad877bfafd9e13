"""Two people talk through a Parley server with the high-level Python API (ParleyClient).

Run a server with two test numbers (their codes are fixed, no SMS is sent):

    parley-server --test-number +15550001111=111111 --test-number +15550002222=222222

then:

    python examples/high_level.py --server localhost:50051

Each person is one ParleyClient on its own profile directory (a temporary one here; an app
keeps it, as it holds the device's keys, sessions and history). The client uploads and tops
up prekeys, builds sessions, encrypts once per device and acknowledges what it received.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

from client.api import DeliveryUpdate, ParleyClient, QueueEmpty, TextMessage
from client.errors import ParleyError, RateLimited


def test_number(text: str) -> tuple[str, str]:
    """``+15550001111=111111``: a test number and its fixed code."""
    phone, _, code = text.partition("=")
    if not phone.startswith("+") or not code:
        raise argparse.ArgumentTypeError("expected NUMBER=CODE, e.g. +15550001111=111111")
    return phone, code


async def register(profile: Path, args: argparse.Namespace, phone: str, code: str) -> ParleyClient:
    """Open a profile and register a test number on it (one step: its code is known).

    A real number takes two steps instead: ``start_registration(phone)`` sends the code by
    SMS, ``complete_registration(code)`` finishes once the person typed it in.
    """
    client = ParleyClient.open(profile, server=args.server, ca_file=args.ca_file)
    try:
        verification_id = await client.request_code(phone)
        await client.register(phone, verification_id, code)
    except RateLimited as exc:  # typed errors: catch what you can handle
        await client.close()
        raise SystemExit(f"too many attempts for {phone}; retry in {exc.retry_after} s") from exc
    except BaseException:
        await client.close()
        raise
    return client


async def show_events(name: str, client: ParleyClient) -> None:
    """Everything waiting for ``client``, up to the end of the stored queue."""
    async for event in client.receive(until_empty=True):
        if isinstance(event, TextMessage):
            sender = event.sender_phone_number or event.sender_account_id
            print(f"{name} received from {sender}: {event.text}")
        elif isinstance(event, DeliveryUpdate):
            recipient = event.recipient_phone_number or event.recipient_account_id
            state = "delivered" if event.delivered else f"failed ({event.reason})"
            print(f"{name}'s message {event.message_id} to {recipient}: {state}")
        elif isinstance(event, QueueEmpty):
            print(f"{name} is up to date")


async def main(args: argparse.Namespace) -> None:
    (alice_phone, alice_code), (bob_phone, bob_code) = args.alice, args.bob
    with tempfile.TemporaryDirectory(prefix="parley-example-") as tmp:
        alice = await register(Path(tmp) / "alice", args, alice_phone, alice_code)
        bob = await register(Path(tmp) / "bob", args, bob_phone, bob_code)
        async with alice, bob:
            print(f"Alice is account {alice.account_id}, Bob is account {bob.account_id}")
            # Bob adds Alice as a contact, so her messages come with her number.
            await bob.lookup(alice_phone)

            sent = await alice.send(bob_phone, "Hello Bob, this is Alice")
            print(f"Alice sent message {sent.message_id} to Bob's devices {sent.device_ids}")
            await show_events("Bob", bob)

            await bob.send(alice_phone, "Hi Alice!")
            await show_events("Alice", alice)  # Bob's reply, and the delivery of her message

            # Both see the same safety number: compared in person, it proves no one is between.
            number = await alice.safety_number(bob_phone)
            assert number == await bob.safety_number(alice_phone)
            print(f"safety number:\n{number.formatted}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--server",
        default=os.environ.get("PARLEY_SERVER", "localhost:50051"),
        help="HOST:PORT [env PARLEY_SERVER; default localhost:50051]",
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        default=os.environ.get("PARLEY_CA_FILE") or None,
        help="for a TLS server: the CA (or self-signed) certificate to trust [env PARLEY_CA_FILE]",
    )
    parser.add_argument("--alice", type=test_number, default=test_number("+15550001111=111111"))
    parser.add_argument("--bob", type=test_number, default=test_number("+15550002222=222222"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    try:
        asyncio.run(main(parse_args()))
    except ParleyError as exc:  # every refusal by the server: code + the server's message
        sys.exit(f"the server refused: {exc}")
