"""Verification codes: who may ask for one (the gate) and how it is delivered (the sender).

Both are pluggable and passed to `build_server`: an operator replaces `LogCodeSender` with an
SMS gateway, and `AllowAll` with the abuse controls of the deployment (a proof of work, a
captcha, a carrier lookup). The built-in rate limits (per number, per client address, across the
server) apply whatever the gate says; the gate adds what only the deployment can know.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("parley.verification")


class CodeSender(Protocol):
    async def send(self, phone_number: str, code: str, verification_id: str) -> None:
        """Deliver `code` to `phone_number`; raise to make StartVerification fail."""
        ...


@dataclass(frozen=True)
class ClientInfo:
    """Who is asking, as far as the transport tells, without gRPC types.

    `address` is the key of the per-address limits: an IPv4 address, an IPv6 /64 (one
    subscriber's whole network, so rotating addresses within it gains nothing), or the
    transport's name ("unix", ...) for clients that have no address. Behind a reverse proxy every
    client has the proxy's address. `metadata` holds the call's text headers (lower-case names)
    so a gate can read a proof it asked for, e.g. `x-captcha-token`.
    """

    address: str
    metadata: Mapping[str, str] = field(default_factory=dict)


class VerificationGate(Protocol):
    """Decides whether a verification code may be sent, before any is (test numbers excepted).

    Return to allow. To refuse, raise a `server.domain.errors.DomainError`: its class picks the
    status the client sees and its message is shown to the client, so say what to do, e.g.
    `FailedPrecondition("solve the captcha at https://... and send its token as
    x-captcha-token")`, `PermissionDenied(...)`, or `ResourceExhausted(..., retry_after=60)`.
    """

    async def check(self, phone_number: str, client: ClientInfo) -> None: ...


class AllowAll:
    """The default gate: the built-in rate limits are the only abuse control."""

    async def check(self, phone_number: str, client: ClientInfo) -> None:
        return None


def mask_phone(e164: str) -> str:
    """Enough of a number to recognise it in a log, not enough to identify a person."""
    return e164[:3] + "*" * max(len(e164) - 5, 0) + e164[-2:]


class LogCodeSender:
    """Development sender: writes the code to the server log instead of sending an SMS.

    The number is masked; the code itself must be in the log, or nobody could register.
    """

    async def send(self, phone_number: str, code: str, verification_id: str) -> None:
        log.info(
            "verification code %s for %s",
            code,
            mask_phone(phone_number),
            extra={"verification_id": verification_id},
        )
