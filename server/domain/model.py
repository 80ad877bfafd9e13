"""The domain's row types and enums: what the rules reason about and storage persists.

They live here, not in `server.storage`, so that every backend stores the same types and the
domain never imports a backend (storage imports this module, never the other way round).

Enums whose value travels on the wire have the numbers of their proto enum
(`tests/test_model.py` checks that they match), so servicers convert with a plain `int()`.
Rows are NamedTuples in column order: on the send path they are built once per message and
handed to the backend as they are, with no per-row conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple


class AccountKind(IntEnum):
    """Who owns an account (proto `AccountKind`)."""

    PERSON = 1
    BUSINESS = 2


class MessageState(IntEnum):
    """Where a message stands. DELIVERED and FAILED are also the proto `DeliveryState` numbers
    of the delivery status the sender receives; SYNC (a copy for the sender's own devices) is
    never reported and has no proto number."""

    PENDING = 0
    DELIVERED = 1
    FAILED = 2
    SYNC = 3


class MessageCategory(IntEnum):
    """The pricing category of a business message, in cleartext (proto `MessageCategory`)."""

    UNSPECIFIED = 0
    MARKETING = 1
    UTILITY = 2
    AUTHENTICATION = 3
    SERVICE = 4


class ContentType(IntEnum):
    """libsignal's CiphertextMessageType of an envelope's content (proto `ContentType`)."""

    WHISPER = 2
    PREKEY = 3
    SENDER_KEY = 7
    PLAINTEXT = 8


# -- accounts and devices -------------------------------------------------------------------


@dataclass(frozen=True)
class VerificationRow:
    verification_id: str
    phone_number: str
    code_hash: bytes
    created_at: float
    expires_at: float
    attempts: int
    completed: bool


@dataclass(frozen=True)
class AccountRow:
    account_id: str
    phone_number: str
    kind: AccountKind
    created_at: float


@dataclass(frozen=True)
class DeviceRow:
    account_id: str
    device_id: int
    name: str
    created_at: float
    last_seen_at: float


# -- keys -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedKey:
    key_id: int
    public_key: bytes
    signature: bytes


@dataclass(frozen=True)
class DeviceKeys:
    account_id: str
    device_id: int
    identity_key: bytes
    registration_id: int
    signed_pre_key: SignedKey
    signed_pre_key_at: float
    last_resort_kyber: SignedKey


@dataclass(frozen=True)
class KeyCounts:
    pre_keys: int
    kyber_pre_keys: int


# -- messages -------------------------------------------------------------------------------


class MessageRow(NamedTuple):
    message_id: int
    sender_account_id: str
    sender_device_id: int
    recipient_account_id: str
    request_id: str
    request_hash: bytes
    server_ts: float
    state: int  # a MessageState
    category: int = MessageCategory.UNSPECIFIED
    template_name: str = ""


class EnvelopeRow(NamedTuple):
    envelope_id: int
    account_id: str
    device_id: int
    message_id: int
    sender_account_id: str
    sender_device_id: int
    server_ts: float
    client_ts_ms: int
    content_type: int  # a ContentType
    content: bytes
    category: int  # a MessageCategory
    template_name: str
    # The approved template it was made from (checked by the sending rules); "" = free-form.
    template_id: str = ""
    # The device's stream position: given by the storage when the row is inserted, from the
    # device's counter, so positions grow in commit order with any number of writers (ports
    # guarantee 12); 0 in a draft.
    seq: int = 0


class StatusRow(NamedTuple):
    status_id: int
    account_id: str
    device_id: int
    message_id: int
    request_id: str
    recipient_account_id: str
    state: int  # a MessageState: DELIVERED or FAILED
    at: float
    reason: str
    seq: int = 0  # the device's stream position, as EnvelopeRow.seq
