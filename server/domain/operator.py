"""The operator: whoever holds the admin token the server was started with (--admin-token).

Operator calls (AdminService) authenticate with that token and nothing else; devices' tokens
are never accepted for them, and the operator token is never a device's (it is not in the
devices table, so a device RPC presenting it is refused like any unknown token). The token is
compared in constant time (`hmac.compare_digest`) so response timing tells nothing about it.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from server.domain.errors import FailedPrecondition, Unauthenticated

NOT_CONFIGURED = (
    "operator RPCs are disabled on this server: the operator must set --admin-token "
    "(or PARLEY_ADMIN_TOKEN) when starting it"
)


@dataclass(frozen=True)
class Operator:
    """Proof that the current call presented the operator token."""


class OperatorGate:
    """Authenticates operator calls against the configured admin token."""

    def __init__(self, admin_token: str | None) -> None:
        self._token = admin_token.encode() if admin_token else None

    async def authenticate(self, token: str) -> Operator:
        if self._token is None:
            raise FailedPrecondition(NOT_CONFIGURED)
        if not token:
            raise Unauthenticated(
                "missing credentials: operator RPCs need metadata "
                "'authorization: Bearer <admin token>' with the server's --admin-token"
            )
        if not hmac.compare_digest(token.encode(), self._token):
            raise Unauthenticated(
                "the admin token is wrong: operator RPCs accept only the token the server was "
                "started with (--admin-token); a device's auth token is not accepted here"
            )
        return Operator()
