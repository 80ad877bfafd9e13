"""Errors raised by the protocol core.

Every error is a subclass of :class:`CryptoError`, so a caller can catch the whole family
in one place. The names say *whose fault* it is, in the spirit of h11:

* the peer (or an attacker) sent bad data: :class:`InvalidMessageError` and its subclasses,
  :class:`InvalidKeyError`, :class:`InvalidSignatureError`, :class:`DuplicateMessageError`;
* the caller misused the API or handed us bad state: :class:`NoSessionError`,
  :class:`InvalidStateError`, :class:`MissingPreKeyError`.

Messages never contain key material or plaintext (libsignal's guideline: logs must not
contain user data).
"""

from __future__ import annotations

__all__ = [
    "CryptoError",
    "DuplicateMessageError",
    "InvalidKeyError",
    "InvalidMacError",
    "InvalidMessageError",
    "InvalidSignatureError",
    "InvalidStateError",
    "MessageTooFarAheadError",
    "MissingPreKeyError",
    "NoSessionError",
    "UnsupportedVersionError",
]


class CryptoError(Exception):
    """Base class of every error raised by :mod:`client.crypto`."""


class InvalidKeyError(CryptoError):
    """A public or private key had the wrong type byte, length or was not a valid point."""


class InvalidSignatureError(CryptoError):
    """An XEdDSA signature over a prekey did not verify (the bundle must be refused)."""


class InvalidMessageError(CryptoError):
    """A ciphertext message could not be parsed or decrypted (peer's fault or an attack)."""


class InvalidMacError(InvalidMessageError):
    """The 8-byte message MAC did not match: the message was forged or tampered with."""


class UnsupportedVersionError(InvalidMessageError):
    """The message's version byte is not one this implementation speaks (we speak 0x44)."""


class MessageTooFarAheadError(InvalidMessageError):
    """The message counter jumps further than ``MAX_FORWARD_JUMPS`` past the chain.

    Deriving that many skipped keys would let a peer make us burn CPU and memory.
    """


class DuplicateMessageError(CryptoError):
    """The message's key was already used: a replay (or a duplicate delivery)."""


class NoSessionError(CryptoError):
    """There is no session to encrypt with or decrypt a ``SignalMessage`` with."""


class InvalidStateError(CryptoError):
    """Serialized session state is corrupt or of an unknown version."""


class MissingPreKeyError(CryptoError):
    """A PreKeySignalMessage names a prekey id the caller does not (or no longer) hold."""
