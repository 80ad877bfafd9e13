"""Delivery of one-time verification codes, pluggable (SMS gateway, voice, ...)."""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger("parley.verification")


class CodeSender(Protocol):
    async def send(self, phone_number: str, code: str, verification_id: str) -> None:
        """Deliver `code` to `phone_number`; raise to make StartVerification fail."""
        ...


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
