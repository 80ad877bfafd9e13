"""Domain errors. Each names whose fault it is and how to fix it; rpc/ maps them to statuses.

The servicers never choose status codes themselves: one table in `server.rpc.errors` turns these
classes into canonical gRPC codes, so the same rule gives the same status everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DomainError(Exception):
    """Base class. `message` is shown to the caller: it says what was wrong and how to fix it."""

    message: str
    # Structured details a client must act on (e.g. google.rpc messages); mapped by rpc/errors.
    details: list[Any] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message


class InvalidArgument(DomainError):
    """The request itself is malformed (bad format, missing or oversized field)."""


class NotFound(DomainError):
    """A named entity does not exist (or is not visible to the caller)."""


class AlreadyExists(DomainError):
    """The entity the request would create exists already."""


class FailedPrecondition(DomainError):
    """The request is well-formed but the system is not in a state that allows it."""


class PermissionDenied(DomainError):
    """The caller is authenticated but may not do this."""


class Aborted(DomainError):
    """The operation was cut short by a concurrent one (e.g. a newer stream replaced this one)."""


class Unauthenticated(DomainError):
    """No valid credentials."""


@dataclass
class ResourceExhausted(DomainError):
    """A quota or rate limit was hit; `retry_after` seconds until it is worth retrying."""

    retry_after: float | None = None


class Unavailable(DomainError):
    """The service cannot do this right now for a transient reason of its own (e.g. its storage
    fails); the same request may succeed when retried later."""
