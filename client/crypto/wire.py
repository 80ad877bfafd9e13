"""Signal wire messages: ``SignalMessage`` and ``PreKeySignalMessage``.

Byte layout (libsignal ``protocol.rs`` and ``proto/wire.proto``):

* ``SignalMessage = version || protobuf || MAC(8)`` where the protobuf holds
  ``1 ratchet_key (33 B), 2 counter, 3 previous_counter, 4 ciphertext, 5 pq_ratchet
  (only if non-empty), 6 addresses (optional)`` and
  ``MAC = HMAC-SHA256(mac_key, IK_sender(33) || IK_receiver(33) || version || protobuf)[:8]``.
* ``PreKeySignalMessage = version || protobuf{1 pre_key_id?, 2 base_key, 3 identity_key,
  4 message, 5 registration_id, 6 signed_pre_key_id, 7 kyber_pre_key_id,
  8 kyber_ciphertext}`` — no MAC of its own; everything that matters is bound by the inner
  message's MAC through the derived keys.

The version byte is ``(message_version << 4) | current_version``; for PQXDH sessions both
nibbles are 4, i.e. ``0x44``. Fields are written in ascending field number, as prost does.

Rules (checked here, relied on by :mod:`client.crypto.session`):

1. A parsed message keeps its exact received bytes; the MAC is checked over those bytes,
   never over a re-encoding.
2. Parsing never touches key material; it only rejects malformed input.
"""

from __future__ import annotations

import hmac
from typing import Final

from client.crypto.errors import InvalidKeyError, InvalidMessageError, UnsupportedVersionError
from client.crypto.kdf import hmac_sha256
from client.crypto.keys import PublicKey
from client.crypto.protobuf import bytes_field, decode_fields, uint_field, varint

__all__ = [
    "CIPHERTEXT_MESSAGE_CURRENT_VERSION",
    "MAC_LENGTH",
    "VERSION_BYTE",
    "CiphertextMessageType",
    "PreKeySignalMessage",
    "SignalMessage",
    "encode_signal_message",
]

CIPHERTEXT_MESSAGE_CURRENT_VERSION: Final = 4
"""Version 4 = PQXDH (Kyber) sessions; libsignal's ``CIPHERTEXT_MESSAGE_CURRENT_VERSION``."""
VERSION_BYTE: Final = (CIPHERTEXT_MESSAGE_CURRENT_VERSION << 4) | CIPHERTEXT_MESSAGE_CURRENT_VERSION
MAC_LENGTH: Final = 8
"""libsignal truncates the HMAC-SHA256 to 8 bytes (``SignalMessage::MAC_LENGTH``)."""
ADDRESSES_LENGTH: Final = 36
"""Optional field 6: sender (0x00 || UUID) || sender device || recipient || recipient device."""

_VERSION_PREFIX: Final = bytes((VERSION_BYTE,))
_SIGNAL_MESSAGE_PREFIX: Final = _VERSION_PREFIX + b"\x0a\x21"
"""Version byte, then field 1 (ratchet key, length-delimited, always 33 bytes)."""
_compare = hmac.compare_digest


class CiphertextMessageType:
    """Envelope content types (libsignal ``CiphertextMessageType``)."""

    WHISPER: Final = 2
    PREKEY: Final = 3
    SENDER_KEY: Final = 7
    PLAINTEXT: Final = 8


def _check_version(byte: int) -> None:
    if byte != VERSION_BYTE:
        raise UnsupportedVersionError(
            f"message version byte 0x{byte:02x}; this implementation speaks 0x{VERSION_BYTE:02x}"
        )


def compute_mac(
    mac_key: bytes, sender_identity: PublicKey, receiver_identity: PublicKey, body: bytes
) -> bytes:
    """The 8-byte MAC over ``IK_sender || IK_receiver || version || protobuf``."""
    data = sender_identity._serialized + receiver_identity._serialized + body
    return hmac_sha256(mac_key, data)[:MAC_LENGTH]


def _encode_body(
    ratchet_key: PublicKey, counter: int, previous_counter: int, ciphertext: bytes
) -> bytes:
    """Version byte and protobuf fields 1-4 of a SignalMessage (tags 0x0A, 0x10, 0x18, 0x22),
    written out: this runs for every message."""
    return b"".join(
        (
            _SIGNAL_MESSAGE_PREFIX,
            ratchet_key._serialized,
            b"\x10",
            varint(counter),
            b"\x18",
            varint(previous_counter),
            b"\x22",
            varint(len(ciphertext)),
            ciphertext,
        )
    )


def encode_signal_message(
    mac_key: bytes,
    ratchet_key: PublicKey,
    counter: int,
    previous_counter: int,
    ciphertext: bytes,
    sender_identity: PublicKey,
    receiver_identity: PublicKey,
    pq_ratchet: bytes = b"",
) -> bytes:
    """The bytes of :meth:`SignalMessage.create` without addresses (the per-message encrypt
    path, which needs no message object). ``pq_ratchet`` (field 5) follows field 4, as prost
    writes it."""
    body = _encode_body(ratchet_key, counter, previous_counter, ciphertext)
    if pq_ratchet:
        body += bytes_field(5, pq_ratchet)
    data = sender_identity._serialized + receiver_identity._serialized + body
    return body + hmac_sha256(mac_key, data)[:MAC_LENGTH]


class SignalMessage:
    """A Double Ratchet message (content type 2). Immutable after construction."""

    __slots__ = (
        "addresses",
        "ciphertext",
        "counter",
        "pq_ratchet",
        "previous_counter",
        "ratchet_key",
        "serialized",
    )

    def __init__(
        self,
        ratchet_key: PublicKey,
        counter: int,
        previous_counter: int,
        ciphertext: bytes,
        pq_ratchet: bytes,
        addresses: bytes | None,
        serialized: bytes,
    ) -> None:
        self.ratchet_key = ratchet_key
        self.counter = counter
        self.previous_counter = previous_counter
        self.ciphertext = ciphertext
        self.pq_ratchet = pq_ratchet
        self.addresses = addresses
        self.serialized = serialized

    @classmethod
    def create(
        cls,
        *,
        mac_key: bytes,
        ratchet_key: PublicKey,
        counter: int,
        previous_counter: int,
        ciphertext: bytes,
        sender_identity: PublicKey,
        receiver_identity: PublicKey,
        pq_ratchet: bytes = b"",
        addresses: bytes | None = None,
    ) -> SignalMessage:
        """Encode and MAC a message, exactly as libsignal's ``SignalMessage::new``."""
        body = _encode_body(ratchet_key, counter, previous_counter, ciphertext)
        if pq_ratchet:
            body += bytes_field(5, pq_ratchet)
        if addresses is not None:
            body += bytes_field(6, addresses)
        mac = compute_mac(mac_key, sender_identity, receiver_identity, body)
        return cls(
            ratchet_key, counter, previous_counter, ciphertext, pq_ratchet, addresses, body + mac
        )

    @classmethod
    def _parse_canonical(cls, data: bytes) -> SignalMessage | None:
        """Fast path for the layout every encoder emits: fields 1-4 in order, nothing else.
        Anything unusual returns ``None`` and takes the general decoder."""
        if len(data) < 45 or data[1] != 0x0A or data[2] != 0x21 or data[36] != 0x10:
            return None
        end = len(data) - MAC_LENGTH
        pos = 37
        values = []
        for expected_tag in (0x18, 0x22, -1):
            value = 0
            shift = 0
            while True:
                if pos >= end or shift > 28:
                    return None
                b = data[pos]
                pos += 1
                value |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            values.append(value)
            if expected_tag >= 0:
                if pos >= end or data[pos] != expected_tag:
                    return None
                pos += 1
        counter, previous, length = values
        if pos + length != end or counter > 0xFFFFFFFF or previous > 0xFFFFFFFF:
            return None
        try:
            key = PublicKey.deserialize(data[3:36])
        except InvalidKeyError:
            return None
        return cls(key, counter, previous, data[pos:end], b"", None, data)

    @classmethod
    def parse(cls, data: bytes) -> SignalMessage:
        """Decode a serialized message (MAC not yet checked).

        Raises:
            UnsupportedVersionError: version byte is not 0x44.
            InvalidMessageError: too short, malformed protobuf or a required field missing.
        """
        if len(data) < 1 + MAC_LENGTH:
            raise InvalidMessageError(f"SignalMessage too short ({len(data)} bytes)")
        if data[0] != VERSION_BYTE:
            _check_version(data[0])
        data = bytes(data)
        fast = cls._parse_canonical(data)
        if fast is not None:
            return fast
        fields = decode_fields(data[1:-MAC_LENGTH])
        ratchet_key = fields.get(1)
        counter = fields.get(2)
        previous_counter = fields.get(3, 0)
        ciphertext = fields.get(4)
        pq_ratchet = fields.get(5, b"")
        addresses = fields.get(6)
        if not isinstance(ratchet_key, bytes):
            raise InvalidMessageError("SignalMessage without a ratchet key")
        if not isinstance(counter, int) or counter > 0xFFFFFFFF:
            raise InvalidMessageError("SignalMessage without a valid counter")
        if not isinstance(previous_counter, int) or previous_counter > 0xFFFFFFFF:
            raise InvalidMessageError("SignalMessage with an invalid previous counter")
        if not isinstance(ciphertext, bytes):
            raise InvalidMessageError("SignalMessage without a ciphertext")
        if not isinstance(pq_ratchet, bytes):
            raise InvalidMessageError("SignalMessage pq_ratchet must be bytes")
        if addresses is not None and not isinstance(addresses, bytes):
            raise InvalidMessageError("SignalMessage addresses must be bytes")
        try:
            key = PublicKey.deserialize(ratchet_key)
        except InvalidKeyError as exc:
            raise InvalidMessageError(f"SignalMessage ratchet key: {exc}") from exc
        return cls(key, counter, previous_counter, ciphertext, pq_ratchet, addresses, bytes(data))

    def verify_mac(
        self, mac_key: bytes, sender_identity: PublicKey, receiver_identity: PublicKey
    ) -> bool:
        """Constant-time check of the trailing MAC over the received bytes (rule 1)."""
        ours = compute_mac(
            mac_key, sender_identity, receiver_identity, self.serialized[:-MAC_LENGTH]
        )
        return _compare(ours, self.serialized[-MAC_LENGTH:])

    def __repr__(self) -> str:
        return (
            f"SignalMessage(counter={self.counter}, previous_counter={self.previous_counter},"
            f" ratchet_key={self.ratchet_key!r}, {len(self.ciphertext)} ciphertext bytes)"
        )


class PreKeySignalMessage:
    """The session-opening message (content type 3): PQXDH header plus a SignalMessage."""

    __slots__ = (
        "base_key",
        "identity_key",
        "kyber_ciphertext",
        "kyber_pre_key_id",
        "message",
        "pre_key_id",
        "registration_id",
        "serialized",
        "signed_pre_key_id",
    )

    def __init__(
        self,
        *,
        registration_id: int,
        pre_key_id: int | None,
        signed_pre_key_id: int,
        kyber_pre_key_id: int,
        kyber_ciphertext: bytes,
        base_key: PublicKey,
        identity_key: PublicKey,
        message: SignalMessage,
        serialized: bytes | None = None,
    ) -> None:
        self.registration_id = registration_id
        self.pre_key_id = pre_key_id
        self.signed_pre_key_id = signed_pre_key_id
        self.kyber_pre_key_id = kyber_pre_key_id
        self.kyber_ciphertext = kyber_ciphertext
        self.base_key = base_key
        self.identity_key = identity_key
        self.message = message
        if serialized is None:
            # One join: the Kyber ciphertext and inner message make this ~2 KB.
            serialized = b"".join(
                (
                    _VERSION_PREFIX,
                    b"" if pre_key_id is None else uint_field(1, pre_key_id),
                    bytes_field(2, base_key.serialize()),
                    bytes_field(3, identity_key.serialize()),
                    b"\x22",
                    varint(len(message.serialized)),
                    message.serialized,
                    uint_field(5, registration_id),
                    uint_field(6, signed_pre_key_id),
                    uint_field(7, kyber_pre_key_id),
                    b"\x42",
                    varint(len(kyber_ciphertext)),
                    kyber_ciphertext,
                )
            )
        self.serialized = serialized

    @classmethod
    def parse(cls, data: bytes) -> PreKeySignalMessage:
        """Decode a serialized PreKeySignalMessage and its inner SignalMessage.

        Raises:
            UnsupportedVersionError: version byte is not 0x44.
            InvalidMessageError: malformed, or a required field (base key, identity key,
                message, signed prekey id, Kyber prekey id and ciphertext) missing.
        """
        if not data:
            raise InvalidMessageError("empty PreKeySignalMessage")
        _check_version(data[0])
        f = decode_fields(data[1:])
        base_key, identity_key, message = f.get(2), f.get(3), f.get(4)
        signed_id, kyber_id, kyber_ct = f.get(6), f.get(7), f.get(8)
        pre_key_id, registration_id = f.get(1), f.get(5, 0)
        if not (
            isinstance(base_key, bytes)
            and isinstance(identity_key, bytes)
            and isinstance(message, bytes)
        ):
            raise InvalidMessageError("PreKeySignalMessage missing base key, identity or body")
        if not isinstance(signed_id, int) or signed_id > 0xFFFFFFFF:
            raise InvalidMessageError("PreKeySignalMessage without a signed prekey id")
        if not (isinstance(kyber_id, int) and isinstance(kyber_ct, bytes)):
            # Version 4 means PQXDH: a message without the Kyber part is not one we accept.
            raise InvalidMessageError("PreKeySignalMessage without Kyber prekey id/ciphertext")
        if pre_key_id is not None and not isinstance(pre_key_id, int):
            raise InvalidMessageError("PreKeySignalMessage pre_key_id must be a varint")
        if not isinstance(registration_id, int):
            raise InvalidMessageError("PreKeySignalMessage registration_id must be a varint")
        try:
            base = PublicKey.deserialize(base_key)
            identity = PublicKey.deserialize(identity_key)
        except InvalidKeyError as exc:
            raise InvalidMessageError(f"PreKeySignalMessage key: {exc}") from exc
        return cls(
            registration_id=registration_id,
            pre_key_id=pre_key_id,
            signed_pre_key_id=signed_id,
            kyber_pre_key_id=kyber_id,
            kyber_ciphertext=kyber_ct,
            base_key=base,
            identity_key=identity,
            message=SignalMessage.parse(message),
            serialized=bytes(data),
        )

    def __repr__(self) -> str:
        return (
            f"PreKeySignalMessage(registration_id={self.registration_id},"
            f" pre_key_id={self.pre_key_id}, signed_pre_key_id={self.signed_pre_key_id},"
            f" kyber_pre_key_id={self.kyber_pre_key_id}, message={self.message!r})"
        )
