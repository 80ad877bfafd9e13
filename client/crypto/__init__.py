"""Parley's sans-IO Signal protocol core (docs/architecture.md, "The protocol core").

PQXDH, the Double Ratchet, XEdDSA, keys and the Signal wire format, byte-compatible with
libsignal. Pure functions and small state objects: no network, no database, no files; a
session's state is handed back to the caller as bytes (``SessionRecord.to_bytes``).

Imports only the standard library, ``cryptography`` and ``xeddsa``.
"""

from client.crypto.errors import (
    CryptoError,
    DuplicateMessageError,
    InvalidKeyError,
    InvalidMacError,
    InvalidMessageError,
    InvalidSignatureError,
    InvalidStateError,
    MessageTooFarAheadError,
    MissingPreKeyError,
    NoSessionError,
    UnsupportedVersionError,
)
from client.crypto.keys import (
    IdentityKeyPair,
    KeyPair,
    KyberKeyPair,
    KyberPublicKey,
    PrivateKey,
    PublicKey,
)
from client.crypto.pqxdh import PreKeyBundle
from client.crypto.session import (
    CiphertextMessage,
    PreKeyDecryptResult,
    PreKeySource,
    SessionRecord,
    SessionState,
)
from client.crypto.wire import CiphertextMessageType, PreKeySignalMessage, SignalMessage

__all__ = [
    "CiphertextMessage",
    "CiphertextMessageType",
    "CryptoError",
    "DuplicateMessageError",
    "IdentityKeyPair",
    "InvalidKeyError",
    "InvalidMacError",
    "InvalidMessageError",
    "InvalidSignatureError",
    "InvalidStateError",
    "KeyPair",
    "KyberKeyPair",
    "KyberPublicKey",
    "MessageTooFarAheadError",
    "MissingPreKeyError",
    "NoSessionError",
    "PreKeyBundle",
    "PreKeyDecryptResult",
    "PreKeySignalMessage",
    "PreKeySource",
    "PrivateKey",
    "PublicKey",
    "SessionRecord",
    "SessionState",
    "SignalMessage",
    "UnsupportedVersionError",
]
