"""Every RPC the server serves, read from the server's own service descriptors.

The fuzz and authorization tests iterate over this list, so an RPC added to a served service
(or a service added to `server.app.SERVICE_NAMES`) is covered without touching them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, MethodDescriptor
from google.protobuf.message import Message

from server.app import ADMIN_SERVICE, SERVICE_NAMES
from server.rpc.account_servicer import OPEN_METHODS
from server.rpc.billing_servicer import OPERATOR_METHODS as BILLING_OPERATOR_METHODS


@dataclass(frozen=True)
class Rpc:
    method: MethodDescriptor

    @property
    def path(self) -> str:
        """The HTTP/2 path, e.g. /parley.v1.AccountService/ListDevices."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def name(self) -> str:
        return f"{self.method.containing_service.name}.{self.method.name}"

    @property
    def input(self) -> Descriptor:
        return self.method.input_type

    @property
    def output(self) -> Descriptor:
        return self.method.output_type

    @property
    def client_streaming(self) -> bool:
        return bool(self.method.client_streaming)

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def open(self) -> bool:
        """Callable without a token (registration)."""
        return self.path in OPEN_METHODS

    @property
    def operator(self) -> bool:
        """Only the operator's admin token opens it (AdminService, BillingService's TopUp and
        SetPriceTable)."""
        service = self.method.containing_service.full_name
        return service == ADMIN_SERVICE or self.path in BILLING_OPERATOR_METHODS

    def request(self) -> Message:
        return message_class(self.input)()

    def __str__(self) -> str:
        return self.name


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


@cache
def all_rpcs() -> tuple[Rpc, ...]:
    pool = descriptor_pool.Default()
    return tuple(
        Rpc(method)
        for service in SERVICE_NAMES
        for method in pool.FindServiceByName(service).methods
    )
