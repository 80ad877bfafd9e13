"""Real key material for server tests: X25519 and ML-KEM-1024 keys signed with XEdDSA."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from parley.v1 import key_pb2 as kpb

from client.crypto import xeddsa


def ec_public(private: bytes) -> bytes:
    return (
        b"\x05"
        + x25519.X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    )


def kyber_public() -> bytes:
    return b"\x08" + mlkem.MLKEM1024PrivateKey.generate().public_key().public_bytes_raw()


@dataclass
class DeviceKeyMaker:
    """Makes keys the way a client would: one identity, ids counting up."""

    identity_private: bytes = field(default_factory=lambda: os.urandom(32))
    registration_id: int = 4242
    next_id: int = 1

    @property
    def identity_key(self) -> bytes:
        return ec_public(self.identity_private)

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def sign(self, data: bytes) -> bytes:
        return xeddsa.sign(self.identity_private, data)

    def signed_pre_key(self) -> kpb.SignedEcPreKey:
        pub = ec_public(os.urandom(32))
        return kpb.SignedEcPreKey(key_id=self._id(), public_key=pub, signature=self.sign(pub))

    def kyber(self) -> kpb.KyberPreKey:
        pub = kyber_public()
        return kpb.KyberPreKey(key_id=self._id(), public_key=pub, signature=self.sign(pub))

    def pre_keys(self, n: int) -> list[kpb.EcPreKey]:
        return [
            kpb.EcPreKey(key_id=self._id(), public_key=ec_public(os.urandom(32))) for _ in range(n)
        ]

    def first_upload(self, pre_keys: int = 5, kyber: int = 2) -> kpb.UploadPreKeysRequest:
        return kpb.UploadPreKeysRequest(
            identity_key=self.identity_key,
            registration_id=self.registration_id,
            signed_pre_key=self.signed_pre_key(),
            pre_keys=self.pre_keys(pre_keys),
            kyber_pre_keys=[self.kyber() for _ in range(kyber)],
            last_resort_kyber_pre_key=self.kyber(),
        )
