"""KeyService: convert, one domain call, convert back."""

from __future__ import annotations

from typing import Any

from grpc import aio
from parley.v1 import key_pb2 as pb
from parley.v1 import key_pb2_grpc

from server.domain.keys import KeyDirectory, KeyStatus, Upload
from server.domain.model import SignedKey
from server.rpc.convert import timestamp
from server.rpc.interceptors import caller

Context = aio.ServicerContext[Any, Any]


def _signed(key: pb.SignedEcPreKey | pb.KyberPreKey) -> SignedKey:
    return SignedKey(key.key_id, key.public_key, key.signature)


def _count(status: KeyStatus) -> pb.PreKeyCount:
    return pb.PreKeyCount(
        pre_key_count=status.pre_keys,
        kyber_pre_key_count=status.kyber_pre_keys,
        replenish=status.replenish,
        low_watermark=status.low_watermark,
        signed_pre_key_id=status.signed_pre_key_id,
        signed_pre_key_uploaded_at=timestamp(status.signed_pre_key_at),
        last_resort_kyber_pre_key_id=status.last_resort_kyber_id,
    )


class KeyServicer(key_pb2_grpc.KeyServiceServicer):
    def __init__(self, directory: KeyDirectory) -> None:
        self._directory = directory

    async def UploadPreKeys(
        self, request: pb.UploadPreKeysRequest, context: Context
    ) -> pb.UploadPreKeysResponse:
        upload = Upload(
            identity_key=request.identity_key,
            registration_id=request.registration_id,
            signed_pre_key=_signed(request.signed_pre_key)
            if request.HasField("signed_pre_key")
            else None,
            pre_keys=[(k.key_id, k.public_key) for k in request.pre_keys],
            kyber_pre_keys=[_signed(k) for k in request.kyber_pre_keys],
            last_resort_kyber=_signed(request.last_resort_kyber_pre_key)
            if request.HasField("last_resort_kyber_pre_key")
            else None,
        )
        status = await self._directory.upload(caller(), upload)
        return pb.UploadPreKeysResponse(count=_count(status))

    async def GetPreKeyBundles(
        self, request: pb.GetPreKeyBundlesRequest, context: Context
    ) -> pb.GetPreKeyBundlesResponse:
        bundles = await self._directory.bundles(caller(), request.account_id, request.device_id)
        out = pb.GetPreKeyBundlesResponse(account_id=request.account_id)
        for b in bundles:
            out.bundles.append(
                pb.PreKeyBundle(
                    device_id=b.device_id,
                    registration_id=b.registration_id,
                    identity_key=b.identity_key,
                    signed_pre_key=pb.SignedEcPreKey(
                        key_id=b.signed_pre_key.key_id,
                        public_key=b.signed_pre_key.public_key,
                        signature=b.signed_pre_key.signature,
                    ),
                    pre_key=pb.EcPreKey(key_id=b.pre_key[0], public_key=b.pre_key[1])
                    if b.pre_key
                    else None,
                    kyber_pre_key=pb.KyberPreKey(
                        key_id=b.kyber_pre_key.key_id,
                        public_key=b.kyber_pre_key.public_key,
                        signature=b.kyber_pre_key.signature,
                    ),
                    kyber_pre_key_is_last_resort=b.kyber_is_last_resort,
                )
            )
        return out

    async def GetPreKeyCount(
        self, request: pb.GetPreKeyCountRequest, context: Context
    ) -> pb.GetPreKeyCountResponse:
        return pb.GetPreKeyCountResponse(count=_count(await self._directory.status(caller())))
