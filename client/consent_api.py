"""The consent calls of :class:`client.api.ParleyClient`: opt-in, opt-out, block, the list of
businesses that may message us, and a business's record of an opt-in it collected.

A mixin of ``ParleyClient`` (it uses the client's channel, credentials and number lookup), kept
in its own module so the business calls of other areas live beside it, not in one file.
Businesses and people are named by phone number (``+...``, resolved with LookupAccount) or by
account id; categories and sources by their lower-case names (``marketing``, ``website``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, TypeVar

import grpc
from grpc import aio
from parley.v1 import business_pb2 as bpb
from parley.v1 import business_pb2_grpc
from parley.v1 import messaging_pb2 as mpb

from client.errors import from_rpc_error

if TYPE_CHECKING:
    from client.api import ParleyClient

T = TypeVar("T")

CATEGORIES = ("marketing", "utility", "authentication", "service")
SOURCES = ("website", "app", "in_store", "phone_call", "paper_form", "other")


class ConsentUsageError(ValueError):
    """A category or source name the client does not know (nothing was sent)."""


@dataclass(frozen=True)
class CategoryConsent:
    """One category of one business: opted out, or who opted in and why."""

    category: str
    opted_out: bool
    kind: str  # "user_verified", "business_asserted", or "" (only an opt-out)
    source: str  # for business_asserted: "website", "app"...
    evidence: str
    opted_in_at: float | None
    opted_out_at: float | None


@dataclass(frozen=True)
class BusinessConsent:
    """What we allowed one business."""

    business_account_id: str
    phone_number: str
    categories: list[CategoryConsent]
    blocked: bool
    blocked_at: float | None


def _name(enum_name: str, prefix: str) -> str:
    return "" if enum_name.endswith("_UNSPECIFIED") else enum_name.removeprefix(prefix).lower()


def _seconds(message: bpb.CategoryConsent | bpb.BusinessConsent, field: str) -> float | None:
    if not message.HasField(field):  # type: ignore[arg-type]
        return None
    value = getattr(message, field)
    return float(value.seconds + value.nanos / 1e9)


def business_consent(m: bpb.BusinessConsent) -> BusinessConsent:
    return BusinessConsent(
        business_account_id=m.business_account_id,
        phone_number=m.phone_number,
        categories=[
            CategoryConsent(
                category=_name(mpb.MessageCategory.Name(c.category), "MESSAGE_CATEGORY_"),
                opted_out=c.opted_out,
                kind=_name(bpb.OptInKind.Name(c.kind), "OPT_IN_KIND_"),
                source=_name(bpb.OptInSource.Name(c.source), "OPT_IN_SOURCE_"),
                evidence=c.evidence,
                opted_in_at=_seconds(c, "opted_in_at"),
                opted_out_at=_seconds(c, "opted_out_at"),
            )
            for c in m.categories
        ],
        blocked=m.blocked,
        blocked_at=_seconds(m, "blocked_at"),
    )


def categories(names: Iterable[str]) -> list[mpb.MessageCategory.ValueType]:
    out = []
    for name in names:
        key = name.strip().lower()
        if key not in CATEGORIES:
            raise ConsentUsageError(f"unknown category {name!r}: use {', '.join(CATEGORIES)}")
        out.append(mpb.MessageCategory.Value(f"MESSAGE_CATEGORY_{key.upper()}"))
    return out


def source(name: str) -> bpb.OptInSource.ValueType:
    key = name.strip().lower().replace("-", "_")
    if key not in SOURCES:
        raise ConsentUsageError(f"unknown source {name!r}: use {', '.join(SOURCES)}")
    return bpb.OptInSource.Value(f"OPT_IN_SOURCE_{key.upper()}")


async def _unary(call: Awaitable[T]) -> T:
    """As ``client.api._rpc`` (which this module cannot import: client.api imports it)."""
    try:
        return await call
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from exc


class ConsentCalls:
    """Consent calls of a :class:`client.api.ParleyClient` (mixed into it)."""

    _channel: aio.Channel

    @cached_property
    def _business_stub(self) -> business_pb2_grpc.BusinessServiceAsyncStub:
        return business_pb2_grpc.BusinessServiceStub(self._channel)

    def _client(self) -> ParleyClient:
        return self  # type: ignore[return-value]  # only ever mixed into ParleyClient

    async def opt_in(self, business: str, category_names: Iterable[str]) -> BusinessConsent:
        """Accept messages of these categories from a business (a user-verified opt-in; it
        also lifts our opt-out of them)."""
        client = self._client()
        wanted = categories(category_names)
        reply = await _unary(
            self._business_stub.OptIn(
                bpb.OptInRequest(
                    business_account_id=await client.resolve(business), categories=wanted
                ),
                metadata=client._metadata(),
            )
        )
        return business_consent(reply.business)

    async def opt_out(
        self, business: str, category_names: Iterable[str] = (), *, everything: bool = False
    ) -> BusinessConsent:
        """Stop a business's messages of these categories, or of all (``everything``): this
        wins over any opt-in until we opt in again."""
        client = self._client()
        wanted = categories(category_names)
        reply = await _unary(
            self._business_stub.OptOut(
                bpb.OptOutRequest(
                    business_account_id=await client.resolve(business),
                    categories=wanted,
                    all=everything,
                ),
                metadata=client._metadata(),
            )
        )
        return business_consent(reply.business)

    async def block(self, who: str) -> float:
        """Refuse every later message of an account (business or person); returns since when
        it is blocked."""
        client = self._client()
        reply = await _unary(
            self._business_stub.BlockAccount(
                bpb.BlockAccountRequest(account_id=await client.resolve(who)),
                metadata=client._metadata(),
            )
        )
        return float(reply.blocked_at.seconds + reply.blocked_at.nanos / 1e9)

    async def unblock(self, who: str) -> bool:
        """Lift a block; False when the account was not blocked."""
        client = self._client()
        reply = await _unary(
            self._business_stub.UnblockAccount(
                bpb.UnblockAccountRequest(account_id=await client.resolve(who)),
                metadata=client._metadata(),
            )
        )
        return reply.was_blocked

    async def my_businesses(self) -> list[BusinessConsent]:
        """Every business we opted in to or out of, or blocked: who may message us and why."""
        client = self._client()
        reply = await _unary(
            self._business_stub.ListMyBusinesses(
                bpb.ListMyBusinessesRequest(), metadata=client._metadata()
            )
        )
        for b in reply.businesses:  # remembered, so later commands show numbers, not ids
            client.store.save_contact(b.phone_number, b.business_account_id)
        return [business_consent(b) for b in reply.businesses]

    async def record_opt_in(
        self, phone_number: str, source_name: str, evidence: str, category_names: Iterable[str]
    ) -> None:
        """As a business: record that the person with this number opted in (where, and what
        shows it). The server's answer is the same whether or not the number is on Parley."""
        client = self._client()
        await _unary(
            self._business_stub.RecordOptIn(
                bpb.RecordOptInRequest(
                    phone_number=phone_number,
                    source=source(source_name),
                    evidence=evidence,
                    categories=categories(category_names),
                ),
                metadata=client._metadata(),
            )
        )
