"""AccountService: convert, one domain call, convert back."""

from __future__ import annotations

from typing import Any

from grpc import aio
from parley.v1 import account_pb2 as pb
from parley.v1 import account_pb2_grpc

from server.domain.accounts import AccountRegistry, Credentials
from server.rpc.convert import account_kind_from_proto, account_kind_to_proto, timestamp
from server.rpc.interceptors import caller
from server.rpc.peer import client_info

Context = aio.ServicerContext[Any, Any]

OPEN_METHODS = frozenset(
    f"/parley.v1.AccountService/{name}"
    for name in ("StartVerification", "CompleteVerification", "LinkDevice")
)


class AccountServicer(account_pb2_grpc.AccountServiceServicer):
    def __init__(self, registry: AccountRegistry) -> None:
        self._registry = registry

    async def StartVerification(
        self, request: pb.StartVerificationRequest, context: Context
    ) -> pb.StartVerificationResponse:
        pending = await self._registry.start_verification(
            request.phone_number, client_info(context)
        )
        return pb.StartVerificationResponse(
            verification_id=pending.verification_id,
            expires_at=timestamp(pending.expires_at),
            code_length=pending.code_length,
        )

    async def CompleteVerification(
        self, request: pb.CompleteVerificationRequest, context: Context
    ) -> pb.CompleteVerificationResponse:
        creds: Credentials = await self._registry.complete_verification(
            request.verification_id,
            request.code,
            request.device_name,
            account_kind_from_proto(request.account_kind),
            client_info(context),
        )
        return pb.CompleteVerificationResponse(
            account_id=creds.account_id,
            device_id=creds.device_id,
            auth_token=creds.auth_token,
            reregistered=creds.reregistered,
        )

    async def GetAccount(
        self, request: pb.GetAccountRequest, context: Context
    ) -> pb.GetAccountResponse:
        view = await self._registry.get_account(caller(), request.account_id)
        return pb.GetAccountResponse(
            account=pb.Account(
                account_id=view.account_id,
                kind=account_kind_to_proto(view.kind),
                phone_number=view.phone_number or "",
                created_at=timestamp(view.created_at),
                device_ids=view.device_ids,
            )
        )

    async def ListDevices(
        self, request: pb.ListDevicesRequest, context: Context
    ) -> pb.ListDevicesResponse:
        devices = await self._registry.list_devices(caller())
        return pb.ListDevicesResponse(
            devices=[
                pb.Device(
                    device_id=d.device_id,
                    name=d.name,
                    created_at=timestamp(d.created_at),
                    last_seen_at=timestamp(d.last_seen_at),
                )
                for d in devices
            ]
        )

    async def CreateLinkingCode(
        self, request: pb.CreateLinkingCodeRequest, context: Context
    ) -> pb.CreateLinkingCodeResponse:
        code, expires_at = await self._registry.create_linking_code(caller())
        return pb.CreateLinkingCodeResponse(linking_code=code, expires_at=timestamp(expires_at))

    async def LinkDevice(
        self, request: pb.LinkDeviceRequest, context: Context
    ) -> pb.LinkDeviceResponse:
        creds = await self._registry.link_device(request.linking_code, request.device_name)
        return pb.LinkDeviceResponse(
            account_id=creds.account_id, device_id=creds.device_id, auth_token=creds.auth_token
        )

    async def RemoveDevice(
        self, request: pb.RemoveDeviceRequest, context: Context
    ) -> pb.RemoveDeviceResponse:
        await self._registry.remove_device(caller(), request.device_id)
        return pb.RemoveDeviceResponse()

    async def DeleteAccount(
        self, request: pb.DeleteAccountRequest, context: Context
    ) -> pb.DeleteAccountResponse:
        await self._registry.delete_account(caller())
        return pb.DeleteAccountResponse()

    async def LookupAccount(
        self, request: pb.LookupAccountRequest, context: Context
    ) -> pb.LookupAccountResponse:
        account_id, kind = await self._registry.lookup(caller(), request.phone_number)
        return pb.LookupAccountResponse(account_id=account_id, kind=account_kind_to_proto(kind))
