"""PQXDH key agreement (Signal "The PQXDH Key Agreement Protocol", rev. 3, §3.3/§3.4;
libsignal ``rust/protocol/src/ratchet.rs`` and ``session.rs``).

``IKM = 0xFF*32 || DH(IK_A, SPK_B) || DH(EK_A, IK_B) || DH(EK_A, SPK_B) [|| DH(EK_A, OPK_B)]
|| SS_kem`` and ``HKDF-SHA256(salt = 32 zero bytes, IKM,
"WhisperText_X25519_SHA-256_CRYSTALS-KYBER-1024", 96)`` → root key | chain key | SPQR auth
key. The 32 ``0xFF`` bytes are the spec's "F" (§2.5): they make the IKM never a valid X25519
input, for domain separation from XEdDSA.

The initiator verifies both prekey signatures before doing anything else and refuses the
bundle if either fails (§3.3 "Alice verifies the prekey signatures"). The responder refuses
a non-canonical base key (see :meth:`PublicKey.is_canonical`).

The random parts (ephemeral key, KEM encapsulation) are separated from the pure derivation
(:func:`initiator_secrets`, :func:`responder_secrets`) so that known-answer tests can pin
every byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from client.crypto.errors import InvalidKeyError, InvalidMessageError, InvalidSignatureError
from client.crypto.kdf import hkdf_sha256
from client.crypto.keys import (
    IdentityKeyPair,
    KeyPair,
    KyberKeyPair,
    KyberPublicKey,
    PublicKey,
    Rng,
    default_rng,
)
from client.crypto.trace import NO_TRACE, EventKind, TraceEvent, Tracer

__all__ = [
    "PQXDH_INFO",
    "X3DH_INFO",
    "InitiatorResult",
    "PqxdhSecrets",
    "PreKeyBundle",
    "derive_secrets",
    "initiate",
    "initiator_secrets",
    "respond",
    "responder_agreements",
    "responder_secrets",
]

PQXDH_INFO: Final = b"WhisperText_X25519_SHA-256_CRYSTALS-KYBER-1024"
X3DH_INFO: Final = b"WhisperText"
"""libsignal's pre-Kyber (X3DH, version 3) label: not spoken by Parley, kept for test vectors."""
DISCONTINUITY_BYTES: Final = b"\xff" * 32
"""PQXDH §2.5 "F": 32 0xFF bytes prefixed to the IKM for Curve25519."""
SECRETS_LENGTH: Final = 96
MAX_PREKEY_ID: Final = 0xFFFFFFFF
"""Prekey ids are u32, as in libsignal's records and the wire protobufs."""


@dataclass(frozen=True)
class PreKeyBundle:
    """What the server hands out for one device of the peer (libsignal ``PreKeyBundle``).

    ``pre_key_id``/``pre_key`` are both set or both ``None`` (one-time EC prekeys may run
    out). The Kyber prekey is one-time or the last-resort key; PQXDH always has one.
    """

    registration_id: int
    device_id: int
    pre_key_id: int | None
    pre_key: PublicKey | None
    signed_pre_key_id: int
    signed_pre_key: PublicKey
    signed_pre_key_signature: bytes
    kyber_pre_key_id: int
    kyber_pre_key: KyberPublicKey
    kyber_pre_key_signature: bytes
    identity_key: PublicKey

    def __post_init__(self) -> None:
        if (self.pre_key_id is None) != (self.pre_key is None):
            raise InvalidKeyError("pre_key_id and pre_key must both be set or both be None")
        for key_id in (self.pre_key_id, self.signed_pre_key_id, self.kyber_pre_key_id):
            if key_id is not None and not 0 <= key_id <= MAX_PREKEY_ID:
                raise InvalidKeyError("prekey ids are unsigned 32-bit integers")

    def verify_signatures(self) -> None:
        """Check both XEdDSA signatures over the *serialized* prekeys.

        Raises:
            InvalidSignatureError: either signature is invalid; the bundle must not be used.
        """
        ik = self.identity_key
        if not ik.verify_signature(self.signed_pre_key.serialize(), self.signed_pre_key_signature):
            raise InvalidSignatureError("signed prekey signature does not verify")
        if not ik.verify_signature(self.kyber_pre_key.serialize(), self.kyber_pre_key_signature):
            raise InvalidSignatureError("Kyber prekey signature does not verify")


class PqxdhSecrets:
    """The three 32-byte outputs of PQXDH. Never printed."""

    __slots__ = ("chain_key", "pqr_auth_key", "root_key")

    def __init__(self, root_key: bytes, chain_key: bytes, pqr_auth_key: bytes) -> None:
        self.root_key = root_key
        self.chain_key = chain_key
        self.pqr_auth_key = pqr_auth_key

    def __repr__(self) -> str:
        return "PqxdhSecrets(<secret>)"


def derive_secrets(parts: list[bytes], info: bytes = PQXDH_INFO) -> PqxdhSecrets:
    """``HKDF(0xFF*32 || parts..., salt = zeros, info, 96)`` split in three (PQXDH §3.3 "KDF").

    ``info`` is fixed to the PQXDH label in the protocol; it is a parameter only so that
    libsignal's pre-Kyber X3DH known-answer vectors (label ``X3DH_INFO``) can test the same
    code.
    """
    okm = hkdf_sha256(DISCONTINUITY_BYTES + b"".join(parts), None, info, SECRETS_LENGTH)
    return PqxdhSecrets(okm[:32], okm[32:64], okm[64:96])


def responder_agreements(
    our_identity: IdentityKeyPair,
    signed_pre_key: KeyPair,
    one_time_pre_key: KeyPair | None,
    their_identity: PublicKey,
    their_base_key: PublicKey,
) -> list[bytes]:
    """Bob's DH outputs in IKM order: DH(SPK, IK_A), DH(IK_B, EK_A), DH(SPK, EK_A) [, DH(OPK,
    EK_A)] — the same values Alice computes with the roles swapped."""
    parts = [
        signed_pre_key.private_key.agree(their_identity),
        our_identity.private_key.agree(their_base_key),
        signed_pre_key.private_key.agree(their_base_key),
    ]
    if one_time_pre_key is not None:
        parts.append(one_time_pre_key.private_key.agree(their_base_key))
    return parts


def initiator_secrets(
    our_identity: IdentityKeyPair,
    base_key: KeyPair,
    bundle: PreKeyBundle,
    kem_shared_secret: bytes,
    tracer: Tracer = NO_TRACE,
    *,
    kyber_ciphertext: bytes = b"",
) -> PqxdhSecrets:
    """Alice's side of the derivation, given the already-encapsulated KEM secret (pure).

    ``kyber_ciphertext`` is only reported to the tracer (the derivation does not use it)."""
    parts = [
        our_identity.private_key.agree(bundle.signed_pre_key),
        base_key.private_key.agree(bundle.identity_key),
        base_key.private_key.agree(bundle.signed_pre_key),
    ]
    if bundle.pre_key is not None:
        parts.append(base_key.private_key.agree(bundle.pre_key))
    parts.append(kem_shared_secret)
    secrets = derive_secrets(parts)
    if tracer is not NO_TRACE:
        tracer(
            TraceEvent(
                EventKind.PQXDH_INITIATOR,
                {
                    "our_identity": our_identity.public_key.serialize(),
                    "base_key": base_key.public_key.serialize(),
                    "their_identity": bundle.identity_key.serialize(),
                    "signed_pre_key_id": bundle.signed_pre_key_id,
                    "signed_pre_key": bundle.signed_pre_key.serialize(),
                    "pre_key_id": bundle.pre_key_id,
                    "pre_key": bundle.pre_key.serialize() if bundle.pre_key else None,
                    "kyber_pre_key_id": bundle.kyber_pre_key_id,
                    "kyber_pre_key": bundle.kyber_pre_key.serialize(),
                    "kyber_ciphertext": kyber_ciphertext,
                    "info": PQXDH_INFO,
                },
                {
                    "our_identity_private": our_identity.private_key.serialize(),
                    "base_key_private": base_key.private_key.serialize(),
                    **_secret_parts(parts, secrets),
                },
            )
        )
    return secrets


def responder_secrets(
    our_identity: IdentityKeyPair,
    signed_pre_key: KeyPair,
    one_time_pre_key: KeyPair | None,
    kem_shared_secret: bytes,
    their_identity: PublicKey,
    their_base_key: PublicKey,
    tracer: Tracer = NO_TRACE,
    *,
    kyber_pre_key: KyberKeyPair | None = None,
    kyber_ciphertext: bytes = b"",
) -> PqxdhSecrets:
    """Bob's side of the derivation, given the decapsulated KEM secret (pure).

    ``kyber_pre_key`` and ``kyber_ciphertext`` are only reported to the tracer."""
    parts = responder_agreements(
        our_identity, signed_pre_key, one_time_pre_key, their_identity, their_base_key
    )
    parts.append(kem_shared_secret)
    secrets = derive_secrets(parts)
    if tracer is not NO_TRACE:
        tracer(
            TraceEvent(
                EventKind.PQXDH_RESPONDER,
                {
                    "our_identity": our_identity.public_key.serialize(),
                    "signed_pre_key": signed_pre_key.public_key.serialize(),
                    "pre_key": (
                        one_time_pre_key.public_key.serialize() if one_time_pre_key else None
                    ),
                    "kyber_pre_key": (
                        kyber_pre_key.public_key.serialize() if kyber_pre_key else None
                    ),
                    "kyber_ciphertext": kyber_ciphertext,
                    "their_identity": their_identity.serialize(),
                    "their_base_key": their_base_key.serialize(),
                    "used_one_time_pre_key": one_time_pre_key is not None,
                    "info": PQXDH_INFO,
                },
                {
                    "our_identity_private": our_identity.private_key.serialize(),
                    "signed_pre_key_private": signed_pre_key.private_key.serialize(),
                    **(
                        {"pre_key_private": one_time_pre_key.private_key.serialize()}
                        if one_time_pre_key
                        else {}
                    ),
                    **(
                        {"kyber_pre_key_seed": kyber_pre_key.serialize_secret()}
                        if kyber_pre_key
                        else {}
                    ),
                    **_secret_parts(parts, secrets),
                },
            )
        )
    return secrets


def _secret_parts(parts: list[bytes], secrets: PqxdhSecrets) -> dict[str, bytes]:
    names = ["dh1_ik_spk", "dh2_ek_ik", "dh3_ek_spk"]
    if len(parts) == 5:
        names.append("dh4_ek_opk")
    names.append("kem_shared_secret")
    out = dict(zip(names, parts, strict=True))
    out["ikm"] = DISCONTINUITY_BYTES + b"".join(parts)
    out.update(
        root_key=secrets.root_key, chain_key=secrets.chain_key, pqr_auth_key=secrets.pqr_auth_key
    )
    return out


@dataclass(frozen=True, repr=False)
class InitiatorResult:
    """Everything Alice needs to start her session and her first PreKeySignalMessage."""

    secrets: PqxdhSecrets
    base_key: KeyPair
    kyber_ciphertext: bytes

    def __repr__(self) -> str:
        return f"InitiatorResult(base_key={self.base_key.public_key!r}, secrets=<secret>)"


def initiate(
    bundle: PreKeyBundle,
    our_identity: IdentityKeyPair,
    *,
    rng: Rng = default_rng,
    tracer: Tracer = NO_TRACE,
) -> InitiatorResult:
    """Run PQXDH as the initiator against a bundle fetched from the server.

    Args:
        rng: randomness for the base key and, when it is not :data:`default_rng`, also for
            the KEM encapsulation (a seeded run then reproduces the ciphertext; with the
            default, OpenSSL draws the encapsulation randomness itself).
        tracer: receives the two signature checks and the derivation (see
            :mod:`client.crypto.trace`).

    Raises:
        InvalidSignatureError: a prekey signature is invalid (nothing is derived).
        InvalidKeyError: a key in the bundle is not usable.
    """
    if tracer is not NO_TRACE:
        _trace_signature_checks(bundle, tracer)
    bundle.verify_signatures()
    base_key = KeyPair.generate(rng)
    # OpenSSL draws the KEM randomness itself unless the caller injected an rng (seeded runs).
    kem_rng = None if rng is default_rng else rng
    kem_secret, kyber_ciphertext = bundle.kyber_pre_key.encapsulate(kem_rng)
    secrets = initiator_secrets(
        our_identity, base_key, bundle, kem_secret, tracer, kyber_ciphertext=kyber_ciphertext
    )
    return InitiatorResult(secrets, base_key, kyber_ciphertext)


def _trace_signature_checks(bundle: PreKeyBundle, tracer: Tracer) -> None:
    """Report both prekey signature checks (what was signed, the signature, the result)
    before :meth:`PreKeyBundle.verify_signatures` acts on them."""
    ik = bundle.identity_key
    spk, pqpk = bundle.signed_pre_key.serialize(), bundle.kyber_pre_key.serialize()
    checks = (
        ("signed_pre_key", bundle.signed_pre_key_id, spk, bundle.signed_pre_key_signature),
        ("kyber_pre_key", bundle.kyber_pre_key_id, pqpk, bundle.kyber_pre_key_signature),
    )
    for which, key_id, message, signature in checks:
        tracer(
            TraceEvent(
                EventKind.SIGNATURE_CHECK,
                {
                    "prekey": which,
                    "key_id": key_id,
                    "signer": ik.serialize(),
                    "message": message,
                    "signature": signature,
                    "valid": ik.verify_signature(message, signature),
                },
            )
        )


def respond(
    our_identity: IdentityKeyPair,
    signed_pre_key: KeyPair,
    one_time_pre_key: KeyPair | None,
    kyber_pre_key: KyberKeyPair,
    their_identity: PublicKey,
    their_base_key: PublicKey,
    kyber_ciphertext: bytes,
    tracer: Tracer = NO_TRACE,
) -> PqxdhSecrets:
    """Run PQXDH as the responder for an incoming PreKeySignalMessage.

    Raises:
        InvalidMessageError: non-canonical base key or malformed Kyber ciphertext.
    """
    if not their_base_key.is_canonical():
        raise InvalidMessageError("incoming base key is not canonically encoded")
    kem_secret = kyber_pre_key.decapsulate(kyber_ciphertext)
    return responder_secrets(
        our_identity,
        signed_pre_key,
        one_time_pre_key,
        kem_secret,
        their_identity,
        their_base_key,
        tracer,
        kyber_pre_key=kyber_pre_key,
        kyber_ciphertext=kyber_ciphertext,
    )
