"""High-level async Parley client over the generated grpc.aio stubs (see docs/architecture.md).

:class:`ParleyClient` ties the sans-IO protocol core (:mod:`client.crypto`) to the server's
AccountService, KeyService and MessagingService and to the profile's :class:`ClientStore`.

Rules this module keeps:

1. **Session state is saved before the network sees a ciphertext.** Encrypting advances the
   ratchet; if the new state were saved only after SendMessage returned, a crash in between
   would reuse a message key for the next message. Saving first costs at most a skipped key
   on the peer's side. The sends of a moment share the commit (``client.group_commit``).
2. **Persist, then acknowledge.** A received envelope's session state, the message and the
   envelope id are committed in one transaction, and only then acknowledged, on the receiving
   stream itself (ReceiveMessageStream), at most ``MAX_UNSENT_ACKS`` messages of ids ahead of
   what the stream has sent. An envelope redelivered after a crash is recognised by its id and
   acknowledged without being shown twice.
3. **One request_id per logical send.** Retries after a MismatchedDevices answer or a lost
   connection reuse it, so the server queues the message at most once (AIP-155).
4. **Trust on first use.** A peer device's first identity key is recorded; a changed one stops
   sending to (and decrypting from) that device with :class:`UntrustedIdentityError` until the
   user accepts it with :meth:`ParleyClient.trust_identity`.
5. **No user data in logs at INFO and above**: no phone numbers, tokens, keys or plaintext.
6. **Typed errors.** A call the server refuses raises a :class:`client.errors.ParleyError`
   subclass (``NotFound``, ``RateLimited``...), never a bare ``grpc.aio.AioRpcError``;
   :class:`ParleyClientError` is for what the client itself refuses to do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
import os
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc import aio
from parley.v1 import account_pb2 as apb
from parley.v1 import account_pb2_grpc, key_pb2_grpc, messaging_pb2_grpc
from parley.v1 import business_pb2 as bpb
from parley.v1 import content_pb2 as cpb
from parley.v1 import key_pb2 as kpb
from parley.v1 import messaging_pb2 as mpb

from client.chat_link_api import ChatLinkCalls
from client.consent_api import ConsentCalls
from client.crypto import (
    CryptoError,
    DuplicateMessageError,
    IdentityKeyPair,
    KeyPair,
    KyberKeyPair,
    KyberPublicKey,
    MissingPreKeyError,
    PreKeyBundle,
    PreKeySignalMessage,
    PublicKey,
    SessionRecord,
)
from client.crypto.keys import Rng
from client.errors import (
    InvalidArgument,
    MismatchedDevices,
    NotFound,
    ParleyError,
    Unavailable,
    from_rpc_error,
)
from client.group_commit import GroupCommit
from client.inbox import ReadAhead
from client.outbox import Outbox
from client.request_ids import time_ordered_request_id
from client.store import (
    ClientStore,
    Connection,
    LocalIdentity,
    PendingVerification,
    StoreError,
    UntrustedIdentityError,
)
from client.templates import (
    EnvelopeLabel,
    TemplateRecord,
    TemplateRefused,
    category_name,
    check_free_text,
    check_parameters,
    check_template_message,
    render,
)

if TYPE_CHECKING:  # client.business_api imports this module
    from client.billing_api import BillingCalls
    from client.business_api import AdminCalls, BusinessCalls
    from client.sending_api import SendingCalls
    from client.support_api import SupportCalls

__all__ = [
    "DEFAULT_SERVER",
    "MAX_SIGNED_PRE_KEY_AGE",
    "ONE_TIME_KEYS_PER_UPLOAD",
    "Clock",
    "DecryptionFailed",
    "DeliveryUpdate",
    "DeviceInfo",
    "Event",
    "IdentityChanged",
    "NoRecipientDevices",
    "ParleyClient",
    "ParleyClientError",
    "PendingVerification",
    "QueueEmpty",
    "ReceiptEvent",
    "RejectedTemplateMessage",
    "RenderedTemplateMessage",
    "SafetyNumber",
    "SentMessage",
    "SyncedMessage",
    "SystemClock",
    "TextMessage",
    "TypingEvent",
    "UntrustedIdentityError",
    "channel_credentials",
    "format_safety_number",
    "safety_number_for",
]

log = logging.getLogger("parley.client")

DEFAULT_SERVER: Final = "localhost:50051"
ONE_TIME_KEYS_PER_UPLOAD: Final = 100
"""One-time EC and Kyber prekeys per upload: the server's per-call maximum, and enough that a
device is rarely contacted by more new peers than that between two of its own connections."""
MAX_SIGNED_PRE_KEY_AGE: Final = 7 * 24 * 3600.0
"""Rotate the signed prekey weekly (Signal's cadence): it bounds how long a compromised signed
prekey helps an attacker who also holds old PreKeySignalMessages."""
REPLACED_KEY_GRACE: Final = 30 * 24 * 3600.0
"""Keep a replaced signed / last-resort key this long: a peer may have fetched our bundle just
before the rotation and send its first message (built on the old key) much later."""
PROCESSED_ENVELOPE_RETENTION: Final = 7 * 24 * 3600.0
"""Remember processed envelope ids this long. An acknowledged envelope is deleted by the
server at once, so only a crash between commit and ack can bring one back, within seconds."""
MAX_SEND_ATTEMPTS: Final = 4
# How long "we have no other device" is believed after the server said so: a device that
# another of our devices links gets our sync copies at the latest this much later.
ALONE_RECHECK: Final = 60.0
"""A send whose device list is wrong is retried after fixing it; more rounds than this means
the account's devices keep changing under us, and the caller should hear about it."""
MAX_ACK_IDS: Final = 1000
"""An acknowledgement (a call, or a message of ReceiveMessageStream) takes at most this many ids
of each kind."""
MAX_UNSENT_ACKS: Final = 16
"""Acknowledgement messages waiting to go out on the receiving stream before the client stops
reading events: a server that stops reading acknowledgements stops the client too, instead of
growing its memory."""
ACK_FLUSH_TIMEOUT: Final = 10.0
"""Seconds a receiver that stops waits for its last acknowledgements to be applied (it half-
closes the stream and reads to its end); past that they are left to a redelivery."""
REGISTRATION_ID_MAX: Final = 16380
"""libsignal registration ids are 14 bits; 16380 is the largest value it generates."""
FINGERPRINT_ITERATIONS: Final = 5200
"""Signal's numeric fingerprint hashes 5200 times, to make a second-preimage search for a
matching safety number expensive."""
FINGERPRINT_VERSION: Final = b"\x00\x00"
SAFETY_NUMBER_GROUP: Final = 5
"""Digits per group of a displayed safety number (12 groups of 5, as Signal shows them)."""
TEMPLATE_SEND_RECHECK: Final = 60.0
"""A sender refetches its own template after this many seconds, to learn of a pause or a
quality stop before the server refuses the send (the server checks every send anyway)."""

T = TypeVar("T")


class Clock(Protocol):
    """Seconds since the Unix epoch; injectable so tests control key ages and timestamps."""

    def now(self) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class ParleyClientError(Exception):
    """Something the client cannot do as asked; the message says what to do instead."""


class _TemplateNeeded(Exception):
    """Raised inside the receive transaction (rolling it back) when a template message names a
    template the store lacks or holds unapproved: fetch it, then decrypt the envelope again."""

    def __init__(self, template_id: str) -> None:
        super().__init__(template_id)
        self.template_id = template_id


class NoRecipientDevices(ParleyClientError):
    """Nothing was sent: the recipient has no device (or, sending to ourselves, we have no
    other device). Not a server refusal: there was nobody to encrypt for."""


async def _rpc(call: Awaitable[T]) -> T:
    """Await a unary call, turning a refusal into a typed :class:`client.errors.ParleyError`
    (rule 6) that keeps the original ``AioRpcError`` as its ``__cause__``."""
    try:
        return await call
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from exc


def channel_credentials(*, ca_file: Path | str | None = None) -> grpc.ChannelCredentials:
    """TLS credentials for a Parley server: trust the PEM certificates of ``ca_file`` (a
    private CA or a self-signed server certificate), or the system's roots when None.

    Raises:
        ParleyClientError: the file cannot be read or holds no PEM certificate.
    """
    if ca_file is None:
        return grpc.ssl_channel_credentials()
    path = Path(ca_file).expanduser()
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ParleyClientError(
            f"cannot read the CA file {path}: {exc.strerror or exc}; pass the PEM file of the"
            " certificate authority (or self-signed certificate) the server's TLS certificate"
            " was issued by"
        ) from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise ParleyClientError(
            f"{path} holds no PEM certificate (no '-----BEGIN CERTIFICATE-----' line)"
        )
    return grpc.ssl_channel_credentials(root_certificates=pem)


# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextMessage:
    """A message a person sent us, decrypted and saved."""

    envelope_id: int
    sender_account_id: str
    sender_device_id: int
    timestamp_ms: int
    server_time: float
    text: str
    sender_phone_number: str | None = None
    """The sender's number when it is a contact (looked up or written to before)."""
    category: str = ""
    """The envelope's cleartext business category (``service`` for a business's free-form
    reply), empty for a person's message."""

    kind: str = field(default="message", init=False)


@dataclass(frozen=True)
class RenderedTemplateMessage:
    """A business message made from an approved template, rendered from the approved text
    and the parameters after every check of :func:`client.templates.check_template_message`."""

    envelope_id: int
    sender_account_id: str
    sender_device_id: int
    timestamp_ms: int
    server_time: float
    template_id: str
    template_name: str
    language: str
    category: str
    """``marketing``, ``utility`` or ``authentication``: the template's, which the envelope
    (the category the server checked) was verified to carry."""
    parameters: tuple[str, ...]
    header: str
    body: str
    footer: str
    buttons: tuple[str, ...]
    text: str
    """Header, body, footer and buttons as one text (what the history keeps)."""
    sender_phone_number: str | None = None
    business_name: str = ""
    """The business's display name if the operator verified it, else empty."""

    kind: str = field(default="template", init=False)


@dataclass(frozen=True)
class RejectedTemplateMessage:
    """A business message the client refuses to show: a template message that fails a check
    of :mod:`client.templates`, or free text sent under a template category. It is
    acknowledged (so it does not block the queue) and not kept in the history."""

    envelope_id: int
    sender_account_id: str
    sender_device_id: int
    timestamp_ms: int
    server_time: float
    template_id: str
    """The template the encrypted message named (empty for free text)."""
    category: str
    """The category the envelope claimed."""
    reason: str
    """A :class:`client.templates.Refusal` value, e.g. ``category_mismatch``."""
    detail: str
    """What was wrong, in words."""
    sender_phone_number: str | None = None

    kind: str = field(default="template_refused", init=False)


@dataclass(frozen=True)
class SyncedMessage:
    """A message this account sent from another of its devices (a SyncMessage copy)."""

    envelope_id: int
    sender_device_id: int
    destination_account_id: str
    timestamp_ms: int
    server_time: float
    text: str
    destination_phone_number: str | None = None

    kind: str = field(default="sync", init=False)


@dataclass(frozen=True)
class ReceiptEvent:
    """A delivery or read receipt for our messages, named by their timestamps."""

    envelope_id: int
    sender_account_id: str
    sender_device_id: int
    read: bool
    timestamps_ms: tuple[int, ...]
    sender_phone_number: str | None = None

    kind: str = field(default="receipt", init=False)


@dataclass(frozen=True)
class TypingEvent:
    """The peer started or stopped typing."""

    envelope_id: int
    sender_account_id: str
    sender_device_id: int
    started: bool
    timestamp_ms: int
    sender_phone_number: str | None = None

    kind: str = field(default="typing", init=False)


@dataclass(frozen=True)
class DeliveryUpdate:
    """What the server says became of a message we sent (delivered or failed)."""

    message_id: int
    request_id: str
    recipient_account_id: str
    delivered: bool
    at: float
    reason: str
    recipient_phone_number: str | None = None

    kind: str = field(default="delivery", init=False)

    @classmethod
    def from_proto(
        cls, status: mpb.DeliveryStatus, recipient_phone_number: str | None = None
    ) -> DeliveryUpdate:
        return cls(
            message_id=status.message_id,
            request_id=status.request_id,
            recipient_account_id=status.recipient_account_id,
            delivered=status.state == mpb.DELIVERY_STATE_DELIVERED,
            at=status.at.ToDatetime().timestamp() if status.HasField("at") else 0,
            reason=status.reason,
            recipient_phone_number=recipient_phone_number,
        )


@dataclass(frozen=True)
class DecryptionFailed:
    """An envelope that can never be decrypted (acknowledged so it does not block the queue)."""

    envelope_id: int
    sender_account_id: str
    sender_device_id: int
    reason: str
    sender_phone_number: str | None = None

    kind: str = field(default="undecryptable", init=False)


@dataclass(frozen=True)
class IdentityChanged:
    """A sender's identity key changed; its envelopes stay on the server (not acknowledged)
    until the user trusts the new key, then they are decrypted on the next receive."""

    envelope_id: int
    sender_account_id: str
    sender_device_id: int
    reason: str
    sender_phone_number: str | None = None

    kind: str = field(default="identity_changed", init=False)


@dataclass(frozen=True)
class QueueEmpty:
    """Every envelope stored when the stream opened has been processed."""

    kind: str = field(default="queue_empty", init=False)


Event = (
    TextMessage
    | RenderedTemplateMessage
    | RejectedTemplateMessage
    | SyncedMessage
    | ReceiptEvent
    | TypingEvent
    | DeliveryUpdate
    | DecryptionFailed
    | IdentityChanged
    | QueueEmpty
)


@dataclass(frozen=True)
class SentMessage:
    """The outcome of :meth:`ParleyClient.send`."""

    request_id: str
    message_id: int
    recipient_account_id: str
    timestamp_ms: int
    device_ids: tuple[int, ...]
    synced_device_ids: tuple[int, ...]
    sync_error: str | None = None
    """Why the copy for this account's other devices could not be sent (the message was)."""


@dataclass(frozen=True)
class _Sent:
    reply: mpb.SendMessageResponse
    request_id: str
    device_ids: tuple[int, ...]


@dataclass(frozen=True)
class SafetyNumber:
    """The number two people compare to be sure nobody is in between (see
    :func:`safety_number_for`). ``str()`` gives the 12 groups of 5 digits on one line;
    :attr:`formatted` gives them 4 per line, as Signal shows them."""

    digits: str
    """The 60 digits, without spaces: what to compare programmatically."""

    @property
    def groups(self) -> tuple[str, ...]:
        """The 12 groups of 5 digits."""
        size = SAFETY_NUMBER_GROUP
        return tuple(self.digits[i : i + size] for i in range(0, len(self.digits), size))

    @property
    def formatted(self) -> str:
        """Three lines of four groups."""
        return format_safety_number(self.digits)

    def __str__(self) -> str:
        return " ".join(self.groups)


@dataclass(frozen=True)
class DeviceInfo:
    device_id: int
    name: str
    created_at: float
    last_seen_at: float
    this_device: bool


# --- helpers ---------------------------------------------------------------------------------


class _StorePreKeys:
    """The crypto core's :class:`~client.crypto.PreKeySource` over the profile's store."""

    def __init__(self, store: ClientStore) -> None:
        self._store = store

    def signed_pre_key(self, key_id: int) -> KeyPair:
        secret = self._store.signed_pre_key(key_id)
        if secret is None:
            raise MissingPreKeyError(f"no signed prekey {key_id} (it may have expired)")
        return KeyPair.from_private_bytes(secret)

    def kyber_pre_key(self, key_id: int) -> KyberKeyPair:
        found = self._store.kyber_pre_key(key_id)
        if found is None:
            raise MissingPreKeyError(f"no Kyber prekey {key_id} (already used?)")
        return KyberKeyPair(found[0])

    def one_time_pre_key(self, key_id: int) -> KeyPair:
        secret = self._store.one_time_pre_key(key_id)
        if secret is None:
            raise MissingPreKeyError(f"no one-time prekey {key_id} (already used?)")
        return KeyPair.from_private_bytes(secret)


def _fingerprint_half(stable_id: bytes, keys: bytes) -> str:
    digest = hashlib.sha512(FINGERPRINT_VERSION + keys + stable_id).digest()
    for _ in range(FINGERPRINT_ITERATIONS - 1):
        digest = hashlib.sha512(digest + keys).digest()
    return "".join(
        f"{int.from_bytes(digest[i : i + 5], 'big') % 100_000:05d}" for i in range(0, 30, 5)
    )


def safety_number_for(
    local_account_id: str,
    local_keys: dict[int, bytes],
    remote_account_id: str,
    remote_keys: dict[int, bytes],
) -> str:
    """The 60-digit safety number of two accounts (Signal's numeric fingerprint, extended to
    accounts whose devices each have their own identity key).

    For each account: ``keys`` = the serialized identity keys (``0x05 || X25519``, 33 bytes)
    of all its devices, concatenated in ascending device-id order; ``id`` = the 16 bytes of
    the account's UUID. ``h = SHA-512(0x00 0x00 || keys || id)``, then 5199 times
    ``h = SHA-512(h || keys)`` (5200 hashes in all). The first 30 bytes of ``h`` make six
    5-byte big-endian integers, each reduced mod 100000 and written as 5 digits: 30 digits.
    The safety number is both accounts' 30 digits, the numerically smaller first, so both
    people see the same 60 digits. With one device per account this is Signal's construction
    (version-2 "ACI" stable identifiers).
    """
    halves = []
    for account_id, keys in ((local_account_id, local_keys), (remote_account_id, remote_keys)):
        material = b"".join(keys[d] for d in sorted(keys))
        halves.append(_fingerprint_half(uuid.UUID(account_id).bytes, material))
    return "".join(sorted(halves))


def _bundle_from_proto(bundle: kpb.PreKeyBundle) -> PreKeyBundle:
    has_one_time = bundle.HasField("pre_key")
    return PreKeyBundle(
        registration_id=bundle.registration_id,
        device_id=bundle.device_id,
        pre_key_id=bundle.pre_key.key_id if has_one_time else None,
        pre_key=PublicKey.deserialize(bundle.pre_key.public_key) if has_one_time else None,
        signed_pre_key_id=bundle.signed_pre_key.key_id,
        signed_pre_key=PublicKey.deserialize(bundle.signed_pre_key.public_key),
        signed_pre_key_signature=bundle.signed_pre_key.signature,
        kyber_pre_key_id=bundle.kyber_pre_key.key_id,
        kyber_pre_key=KyberPublicKey.deserialize(bundle.kyber_pre_key.public_key),
        kyber_pre_key_signature=bundle.kyber_pre_key.signature,
        identity_key=PublicKey.deserialize(bundle.identity_key),
    )


def _chunks(ids: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


async def _finish(
    call: aio.StreamStreamCall[mpb.ReceiveMessageStreamRequest, mpb.ReceiveMessageStreamResponse],
    reader: ReadAhead,
    acks: asyncio.Queue[mpb.ReceiveMessageStreamRequest | None],
) -> None:
    """Half-close a receiving stream and read it to its end, so that the server applies every
    acknowledgement sent (events after the half-close are left to a redelivery); cancel it
    when that fails or takes longer than ACK_FLUSH_TIMEOUT."""
    if call.done():
        reader.cancel()
        return
    try:
        async with asyncio.timeout(ACK_FLUSH_TIMEOUT):
            await acks.put(None)
            await reader.drain()
    except (grpc.RpcError, TimeoutError):
        log.info("the receiving stream did not end cleanly; unapplied acks are redelivered")
    finally:
        reader.cancel()
        call.cancel()


# --- the client ------------------------------------------------------------------------------


class ParleyClient(ConsentCalls, ChatLinkCalls):
    """One device of one account: registration, keys, sending and receiving.

    Use as ``async with ParleyClient.open(profile_dir) as client: ...``. The clock and the
    random generator are parameters so that tests can control key ages and key material.

    The connection (server address, TLS, CA file) is remembered in the profile when it is
    first bound to a server (registration or linking), so later opens need no arguments;
    arguments given explicitly win over what the profile remembers. Credentials passed as
    a ``grpc.ChannelCredentials`` object cannot be remembered: pass them on every open.
    """

    def __init__(
        self,
        store: ClientStore,
        *,
        server: str | None = None,
        clock: Clock | None = None,
        rng: Rng = os.urandom,
        credentials: grpc.ChannelCredentials | None = None,
        tls: bool | None = None,
        ca_file: Path | str | None = None,
    ) -> None:
        """Args:
        store: the profile's store.
        server: ``host:port``; default: the profile's, else ``localhost:50051``.
        credentials: TLS credentials built by the caller (client certificates, custom
            verification...). Implies TLS.
        tls: True for TLS with the system's roots, False for plaintext; default: the
            profile's setting, else plaintext (a development server).
        ca_file: a PEM file of the CA (or self-signed certificate) to trust. Implies TLS.
        """
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.rng = rng
        self.connection = self._resolve_connection(store, server, credentials, tls, ca_file)
        self.server = self.connection.server
        if credentials is None and self.connection.tls:
            credentials = channel_credentials(ca_file=self.connection.ca_file)
        self._channel = (
            aio.secure_channel(self.server, credentials)
            if credentials is not None
            else aio.insecure_channel(self.server)
        )
        self._accounts = account_pb2_grpc.AccountServiceStub(self._channel)
        self._keys = key_pb2_grpc.KeyServiceStub(self._channel)
        self._messaging = messaging_pb2_grpc.MessagingServiceStub(self._channel)
        self._outbox = Outbox(self._messaging, self._metadata)
        self._commits = GroupCommit(store, self._outbox.busy)
        self._identity_pair: tuple[bytes, IdentityKeyPair] | None = None
        self._prekeys = _StorePreKeys(store)
        # Until when we take "no other device of ours" for granted after the server said so
        # (an empty sync send): saves a round trip per message on single-device accounts.
        self._alone_until = 0.0
        self._is_business: bool | None = None  # learnt from GetAccount on the first send
        self._business_names: dict[str, str] = {}  # verified names, per business, per run
        # Devices of a business our messages must leave out while our live-support
        # conversation with it is open (learnt from the MismatchedDevices detail's
        # support_devices); their sessions and identities are kept for when it closes.
        self._outside_support: dict[str, set[int]] = {}
        # One session setup per peer at a time: concurrent first sends to a peer would each
        # fetch its bundles (spending a one-time prekey of every device, and the bundle rate).
        self._setups: dict[str, asyncio.Lock] = {}

    @staticmethod
    def _resolve_connection(
        store: ClientStore,
        server: str | None,
        credentials: grpc.ChannelCredentials | None,
        tls: bool | None,
        ca_file: Path | str | None,
    ) -> Connection:
        saved = store.connection()
        identity = store.local_identity()
        address = server or (
            saved.server if saved else identity.server if identity else DEFAULT_SERVER
        )
        if tls is False and (ca_file is not None or credentials is not None):
            raise ParleyClientError(
                "a CA file or TLS credentials were given with tls=False: drop one of them"
            )
        if credentials is not None or ca_file is not None or tls is not None:
            ca = str(Path(ca_file).expanduser().resolve()) if ca_file is not None else None
            return Connection(address, credentials is not None or ca is not None or bool(tls), ca)
        if saved is not None:
            return Connection(address, saved.tls, saved.ca_file)
        return Connection(address, False, None)

    @classmethod
    def open(
        cls,
        profile: Path | str,
        *,
        server: str | None = None,
        clock: Clock | None = None,
        rng: Rng = os.urandom,
        credentials: grpc.ChannelCredentials | None = None,
        tls: bool | None = None,
        ca_file: Path | str | None = None,
    ) -> ParleyClient:
        """Open the client of a profile directory (created, mode 0700, on first use).

        For a TLS server pass ``ca_file`` (a private CA or self-signed certificate),
        ``tls=True`` (a certificate from a public CA) or ready-made ``credentials``; see
        :meth:`__init__`.
        """
        clock = clock or SystemClock()
        store = ClientStore.open_profile(profile, clock=clock.now)
        try:
            return cls(
                store,
                server=server,
                clock=clock,
                rng=rng,
                credentials=credentials,
                tls=tls,
                ca_file=ca_file,
            )
        except BaseException:
            store.close()
            raise

    async def close(self) -> None:
        await self._outbox.close()
        await self._channel.close(None)
        try:
            self._commits.flush()
        finally:
            self.store.close()

    async def __aenter__(self) -> ParleyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- identity ------------------------------------------------------------------------

    @property
    def identity(self) -> LocalIdentity:
        """This device's identity; :class:`StoreError` if the profile is not registered."""
        return self.store.require_identity()

    @property
    def account_id(self) -> str:
        return self.identity.account_id

    @property
    def device_id(self) -> int:
        return self.identity.device_id

    def _identity_key_pair(self) -> IdentityKeyPair:
        """Our identity key pair, derived once per identity (its public half costs two
        curve operations, and every PreKeySignalMessage received asks for it)."""
        private = self.identity.identity_private
        if self._identity_pair is None or self._identity_pair[0] != private:
            self._identity_pair = (private, IdentityKeyPair.from_private_bytes(private))
        return self._identity_pair[1]

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.identity.auth_token}"),)

    @functools.cached_property
    def business(self) -> BusinessCalls:
        """Business profiles and templates (``client.business_api``)."""
        from client.business_api import BusinessCalls

        return BusinessCalls(self._channel, self._metadata)

    @functools.cached_property
    def support(self) -> SupportCalls:
        """Live support: agents, conversations, the queue (``client.support_api``)."""
        from client.support_api import SupportCalls

        return SupportCalls(self._channel, self._metadata, self.resolve)

    @functools.cached_property
    def sending(self) -> SendingCalls:
        """The business's window and status under the sending rules (``client.sending_api``)."""
        from client.sending_api import SendingCalls

        return SendingCalls(self._channel, self._metadata, self.resolve)

    @functools.cached_property
    def billing(self) -> BillingCalls:
        """Prices, balance, ledger, usage, status events (``client.billing_api``)."""
        from client.billing_api import BillingCalls

        return BillingCalls(self._channel, self._metadata, self.resolve)

    def admin(self, admin_token: str) -> AdminCalls:
        """The operator's reviews over this client's connection, with the server's admin
        token instead of this device's (``client.business_api``)."""
        from client.business_api import AdminCalls

        return AdminCalls(self._channel, admin_token)

    def _now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    def _new_request_id(self) -> str:
        return time_ordered_request_id(self._now_ms(), self.rng(10))

    # --- registration and linking ------------------------------------------------------------

    async def request_code(self, phone_number: str) -> str:
        """StartVerification: the server sends a code to the number. Returns the verification
        id to pass to :meth:`register`."""
        if self.store.local_identity() is not None:
            raise StoreError(
                f"profile {self.store.path.parent} is already registered; use another --profile"
            )
        reply = await _rpc(
            self._accounts.StartVerification(
                apb.StartVerificationRequest(phone_number=phone_number)
            )
        )
        return reply.verification_id

    async def start_registration(
        self, phone_number: str, *, business: bool = False, device_name: str = "parley"
    ) -> PendingVerification:
        """Step 1 of registering a real number: the server sends a code to it.

        The verification is saved in the profile (with the connection), so that
        :meth:`complete_registration` can finish it later, in another process, once the
        person has read the code. Starting again replaces a pending verification.
        """
        verification_id = await self.request_code(phone_number)
        pending = PendingVerification(
            phone_number=phone_number,
            verification_id=verification_id,
            business=business,
            device_name=device_name,
            started_at=self.clock.now(),
        )
        with self.store.transaction():
            self.store.save_connection(self.connection)
            self.store.save_pending_verification(pending)
        return pending

    def pending_registration(self) -> PendingVerification | None:
        """The verification :meth:`start_registration` started and nothing completed yet."""
        return self.store.pending_verification()

    async def complete_registration(self, code: str) -> LocalIdentity:
        """Step 2: finish the pending verification with the code the person received.

        A wrong code leaves the verification pending (try again); an expired one raises
        :class:`client.errors.NotFound` (start again).

        Raises:
            ParleyClientError: no verification is pending in this profile.
        """
        pending = self.store.pending_verification()
        if pending is None:
            raise ParleyClientError(
                "no registration is in progress in this profile: start one with"
                " start_registration(phone_number) first"
            )
        return await self.register(
            pending.phone_number,
            pending.verification_id,
            code,
            business=pending.business,
            device_name=pending.device_name,
        )

    async def register(
        self,
        phone_number: str,
        verification_id: str,
        code: str,
        *,
        business: bool = False,
        device_name: str = "parley",
    ) -> LocalIdentity:
        """CompleteVerification, then a fresh identity and the first key upload (in one step,
        for a test number whose code is known in advance, or after :meth:`request_code`).

        The identity is saved before the upload, so a failed upload can be repeated with
        :meth:`ensure_prekeys` without registering again.
        """
        kind = apb.ACCOUNT_KIND_BUSINESS if business else apb.ACCOUNT_KIND_PERSON
        reply = await _rpc(
            self._accounts.CompleteVerification(
                apb.CompleteVerificationRequest(
                    verification_id=verification_id,
                    code=code,
                    device_name=device_name,
                    account_kind=kind,
                )
            )
        )
        return await self._adopt(reply.account_id, reply.device_id, reply.auth_token, phone_number)

    async def create_linking_code(self) -> str:
        """On the primary device: a single-use code for :meth:`link` on a new device."""
        reply = await _rpc(
            self._accounts.CreateLinkingCode(
                apb.CreateLinkingCodeRequest(), metadata=self._metadata()
            )
        )
        self._alone_until = 0.0  # a device may join any moment now
        return reply.linking_code

    async def link(self, linking_code: str, *, device_name: str = "parley") -> LocalIdentity:
        """On a new profile: join an account with a linking code; the device gets its own
        identity key and prekeys (each device of an account has its own identity)."""
        if self.store.local_identity() is not None:
            raise StoreError(
                f"profile {self.store.path.parent} is already registered; use another --profile"
            )
        reply = await _rpc(
            self._accounts.LinkDevice(
                apb.LinkDeviceRequest(linking_code=linking_code, device_name=device_name)
            )
        )
        identity = await self._adopt(reply.account_id, reply.device_id, reply.auth_token, "")
        try:
            account = await _rpc(
                self._accounts.GetAccount(apb.GetAccountRequest(), metadata=self._metadata())
            )
            self.store.set_phone_number(account.account.phone_number)
        except ParleyError:
            log.debug("could not read the account's phone number after linking")
        return identity

    async def _adopt(
        self, account_id: str, device_id: int, auth_token: str, phone_number: str
    ) -> LocalIdentity:
        identity = self.create_identity(account_id, device_id, auth_token, phone_number)
        await self._first_upload()
        log.info("device registered and keys published")
        return identity

    def create_identity(
        self, account_id: str, device_id: int, auth_token: str, phone_number: str
    ) -> LocalIdentity:
        """Give this profile a fresh identity key and registration id for a device the server
        just created, and save it. :meth:`register` and :meth:`link` call it; so do tools that
        make the RPCs themselves (``parley grpcurl keys``)."""
        identity_key = IdentityKeyPair.generate(self.rng)
        identity = LocalIdentity(
            identity_private=identity_key.private_key.serialize(),
            registration_id=int.from_bytes(self.rng(2), "big") % REGISTRATION_ID_MAX + 1,
            account_id=account_id,
            device_id=device_id,
            auth_token=auth_token,
            server=self.server,
            phone_number=phone_number,
            created_at=self.clock.now(),
        )
        with self.store.transaction():
            self.store.save_identity(identity)
            self.store.save_connection(self.connection)
            self.store.clear_pending_verification()
        return identity

    # --- keys ----------------------------------------------------------------------------------

    def _key_ids(self, kind: str, count: int) -> list[int]:
        # Random starting points (like libsignal's clients), then counting up: ids stay
        # unique on this device and do not reveal how many keys it has used.
        first = int.from_bytes(self.rng(3), "big") + 1
        return self.store.allocate_key_ids(kind, count, first)

    def _new_signed_pre_key(self, identity: IdentityKeyPair) -> kpb.SignedEcPreKey:
        (key_id,) = self._key_ids("signed", 1)
        pair = KeyPair.generate(self.rng)
        public = pair.public_key.serialize()
        self.store.add_signed_pre_key(key_id, pair.private_key.serialize())
        return kpb.SignedEcPreKey(
            key_id=key_id, public_key=public, signature=identity.sign(public, self.rng(64))
        )

    def _new_kyber_keys(
        self, identity: IdentityKeyPair, count: int, *, last_resort: bool
    ) -> list[kpb.KyberPreKey]:
        out, secrets = [], []
        for key_id in self._key_ids("kyber", count):
            pair = KyberKeyPair.generate(self.rng)
            public = pair.public_key.serialize()
            secrets.append((key_id, pair.serialize_secret()))
            out.append(
                kpb.KyberPreKey(
                    key_id=key_id, public_key=public, signature=identity.sign(public, self.rng(64))
                )
            )
        self.store.add_kyber_pre_keys(secrets, last_resort=last_resort)
        return out

    def _new_one_time_keys(self, count: int) -> list[kpb.EcPreKey]:
        out, secrets = [], []
        for key_id in self._key_ids("ec", count):
            pair = KeyPair.generate(self.rng)
            secrets.append((key_id, pair.private_key.serialize()))
            out.append(kpb.EcPreKey(key_id=key_id, public_key=pair.public_key.serialize()))
        self.store.add_one_time_pre_keys(secrets)
        return out

    def first_upload_request(
        self, one_time_keys: int = ONE_TIME_KEYS_PER_UPLOAD
    ) -> kpb.UploadPreKeysRequest:
        """New signed, one-time and last-resort prekeys, signed with this device's identity;
        their private parts are saved in the profile, the request that publishes them is
        returned (the first upload of a device: identity key and registration id included)."""
        identity = self._identity_key_pair()
        with self.store.transaction():
            return kpb.UploadPreKeysRequest(
                identity_key=identity.public_key.serialize(),
                registration_id=self.identity.registration_id,
                signed_pre_key=self._new_signed_pre_key(identity),
                pre_keys=self._new_one_time_keys(one_time_keys),
                kyber_pre_keys=self._new_kyber_keys(identity, one_time_keys, last_resort=False),
                last_resort_kyber_pre_key=self._new_kyber_keys(identity, 1, last_resort=True)[0],
            )

    async def _first_upload(self) -> kpb.PreKeyCount:
        request = self.first_upload_request()
        reply = await _rpc(self._keys.UploadPreKeys(request, metadata=self._metadata()))
        return reply.count

    async def prekey_count(self) -> kpb.PreKeyCount:
        """What the server holds for this device (GetPreKeyCount)."""
        reply = await _rpc(
            self._keys.GetPreKeyCount(kpb.GetPreKeyCountRequest(), metadata=self._metadata())
        )
        return reply.count

    async def ensure_prekeys(self) -> kpb.PreKeyCount:
        """Upload a fresh batch of one-time keys when the server says ``replenish``.

        Private parts are saved before the upload: a key the server never got is harmless,
        a key handed out whose private part we lost would break that peer's first message.
        """
        count = await self.prekey_count()
        if count.signed_pre_key_id == 0:
            # Registration stopped before the first upload went through: do it now.
            return await self._first_upload()
        if not count.replenish:
            return count
        identity = self._identity_key_pair()
        with self.store.transaction():
            request = kpb.UploadPreKeysRequest(
                pre_keys=self._new_one_time_keys(
                    max(0, ONE_TIME_KEYS_PER_UPLOAD - count.pre_key_count)
                ),
                kyber_pre_keys=self._new_kyber_keys(
                    identity,
                    max(0, ONE_TIME_KEYS_PER_UPLOAD - count.kyber_pre_key_count),
                    last_resort=False,
                ),
            )
        reply = await _rpc(self._keys.UploadPreKeys(request, metadata=self._metadata()))
        log.info(
            "replenished one-time prekeys",
            extra={"ec": len(request.pre_keys), "kyber": len(request.kyber_pre_keys)},
        )
        return reply.count

    async def rotate_signed_prekey(self, max_age: float = MAX_SIGNED_PRE_KEY_AGE) -> bool:
        """Replace the signed prekey (and the last-resort Kyber key) once older than
        ``max_age`` seconds. The old keys stay usable for ``REPLACED_KEY_GRACE``.

        Returns:
            True if a new signed prekey was uploaded.
        """
        current = self.store.current_signed_pre_key()
        self.store.prune_replaced_keys(REPLACED_KEY_GRACE)
        if current is not None and self.clock.now() - current.created_at < max_age:
            return False
        identity = self._identity_key_pair()
        with self.store.transaction():
            request = kpb.UploadPreKeysRequest(
                signed_pre_key=self._new_signed_pre_key(identity),
                last_resort_kyber_pre_key=self._new_kyber_keys(identity, 1, last_resort=True)[0],
            )
        await _rpc(self._keys.UploadPreKeys(request, metadata=self._metadata()))
        log.info("rotated the signed prekey")
        return True

    async def maintain_keys(self) -> None:
        """Housekeeping before a session of use: replenish, rotate, forget old envelope ids."""
        await self.ensure_prekeys()
        await self.rotate_signed_prekey()
        self.store.prune_processed(PROCESSED_ENVELOPE_RETENTION)

    # --- accounts --------------------------------------------------------------------------

    async def lookup(self, phone_number: str) -> str:
        """The account id of a phone number (LookupAccount), remembered as a contact."""
        reply = await _rpc(
            self._accounts.LookupAccount(
                apb.LookupAccountRequest(phone_number=phone_number), metadata=self._metadata()
            )
        )
        self.store.save_contact(phone_number, reply.account_id)
        return reply.account_id

    async def resolve(self, who: str) -> str:
        """An account id from a phone number (``+...``, looked up once) or an account id."""
        if who.startswith("+"):
            return self.store.contact_account(who) or await self.lookup(who)
        try:
            return str(uuid.UUID(who))
        except ValueError:
            raise ParleyClientError(
                f"{who!r} is neither a phone number in E.164 form (+ then country code and"
                " number) nor an account id (UUID)"
            ) from None

    def phone_number_of(self, account_id: str) -> str | None:
        """The phone number of an account if this client knows it: its own, or a contact's
        (a number it looked up or sent to). The server tells no one else's number."""
        if account_id == self.identity.account_id and self.identity.phone_number:
            return self.identity.phone_number
        return self.store.contact_phone(account_id)

    def display_name(self, account_id: str) -> str:
        """A contact's phone number if we know it, else the account id."""
        return self.phone_number_of(account_id) or account_id

    async def devices(self) -> list[DeviceInfo]:
        reply = await _rpc(
            self._accounts.ListDevices(apb.ListDevicesRequest(), metadata=self._metadata())
        )
        me = self.device_id
        return [
            DeviceInfo(
                d.device_id,
                d.name,
                d.created_at.ToDatetime().timestamp() if d.HasField("created_at") else 0.0,
                d.last_seen_at.ToDatetime().timestamp() if d.HasField("last_seen_at") else 0.0,
                d.device_id == me,
            )
            for d in reply.devices
        ]

    async def remove_device(self, device_id: int) -> None:
        """Unlink a device of this account (the primary may remove any linked device)."""
        await _rpc(
            self._accounts.RemoveDevice(
                apb.RemoveDeviceRequest(device_id=device_id), metadata=self._metadata()
            )
        )

    async def _account_devices(self, account_id: str) -> list[int]:
        """The current device ids of an account (ours: all but this device)."""
        if account_id == self.account_id:
            return [d.device_id for d in await self.devices() if not d.this_device]
        reply = await _rpc(
            self._accounts.GetAccount(
                apb.GetAccountRequest(account_id=account_id), metadata=self._metadata()
            )
        )
        return list(reply.account.device_ids)

    # --- sessions --------------------------------------------------------------------------

    def _load_record(self, account_id: str, device_id: int) -> SessionRecord | None:
        return self.store.session(account_id, device_id, SessionRecord)

    def _usable_record(self, account_id: str, device_id: int) -> SessionRecord | None:
        """A session we may encrypt with: current, and with the identity we trust."""
        record = self._load_record(account_id, device_id)
        if record is None or record.current is None:
            return None
        trusted = self.store.identity(account_id, device_id)
        if trusted is not None and trusted != record.current.remote_identity.serialize():
            return None  # the user trusted a new key since: start over with a fresh bundle
        return record

    async def _fetch_sessions(self, account_id: str, device_id: int) -> dict[int, SessionRecord]:
        """Fetch bundles (one device, or 0 for all) and start new sessions from them.

        Raises:
            UntrustedIdentityError: a device presented a changed identity key (nothing saved
                for that device; the new key is remembered as pending).
        """
        reply = await _rpc(
            self._keys.GetPreKeyBundles(
                kpb.GetPreKeyBundlesRequest(account_id=account_id, device_id=device_id),
                metadata=self._metadata(),
            )
        )
        return self.sessions_from_bundles(reply)

    def sessions_from_bundles(
        self, reply: kpb.GetPreKeyBundlesResponse
    ) -> dict[int, SessionRecord]:
        """Start (and save) a session with each device of a GetPreKeyBundles answer, however
        it was fetched (``parley grpcurl encrypt`` takes one that grpcurl printed).

        Raises:
            UntrustedIdentityError: as for :meth:`_fetch_sessions`.
        """
        account_id = reply.account_id
        identity = self._identity_key_pair()
        out: dict[int, SessionRecord] = {}
        for pb in reply.bundles:
            if account_id == self.account_id and pb.device_id == self.device_id:
                continue
            bundle = _bundle_from_proto(pb)
            try:
                with self.store.transaction():
                    self.store.check_identity(account_id, pb.device_id, pb.identity_key)
                    record = self._load_record(account_id, pb.device_id) or SessionRecord()
                    record.process_prekey_bundle(
                        bundle,
                        our_identity=identity,
                        our_registration_id=self.identity.registration_id,
                        rng=self.rng,
                    )
                    self.store.save_session(account_id, pb.device_id, record)
            except UntrustedIdentityError:
                self.store.record_pending_identity(account_id, pb.device_id, pb.identity_key)
                raise
            out[pb.device_id] = record
        return out

    async def start_sessions(self, peer: str) -> list[int]:
        """Fetch fresh bundles for every device of ``peer`` and start new sessions with them
        (each consumes one of the peer's one-time prekeys). Returns the device ids.

        Raises:
            UntrustedIdentityError: a device's identity key changed since first use.
        """
        account_id = await self.resolve(peer)
        return sorted(await self._fetch_sessions(account_id, 0))

    def trust_identity(self, account_id: str) -> list[int]:
        """Accept the changed identity keys of ``account_id`` (after comparing safety
        numbers); returns the devices whose key is now trusted. Their old sessions end."""
        devices = self.store.trust_pending(account_id)
        with self.store.transaction():
            for device_id in devices:
                self.store.delete_session(account_id, device_id)
        return devices

    # --- sending -----------------------------------------------------------------------------

    def _encrypt(
        self, account_id: str, device_ids: Iterable[int], plaintext: bytes
    ) -> dict[int, mpb.OutgoingMessage]:
        """Encrypt for each device and save every advanced session (rule 1: the caller
        awaits ``self._commits.wait()`` before the ciphertext leaves this process).

        Load, encrypt and save happen in one write transaction, so that a ``parley listen``
        decrypting on the same profile in another process cannot interleave and lose a
        ratchet step; its commit is shared with the other sends of the moment
        (``client.group_commit``). A device whose session vanished meanwhile is left out
        (the server then reports it missing and the send repairs it).
        """
        out: dict[int, mpb.OutgoingMessage] = {}
        device_ids = list(device_ids)
        if not device_ids:  # a sync copy with no other device: no transaction to open
            return out
        with self.store.transaction(durable=False):
            for device_id in device_ids:
                record = self._usable_record(account_id, device_id)
                if record is None or record.current is None:
                    continue
                message = record.encrypt(plaintext)
                out[device_id] = mpb.OutgoingMessage(
                    device_id=device_id,
                    registration_id=record.current.remote_registration_id,
                    content_type=message.type,  # type: ignore[arg-type]
                    content=message.serialized,
                )
                self.store.save_session(account_id, device_id, record)
        return out

    async def record_sent(self, account_id: str, timestamp_ms: int, text: str) -> None:
        """Keep a message this device sent in the history, and return once it is on disk
        with everything written before it: the sessions ``_encrypt`` advanced too (rule 1),
        for a caller that hands the ciphertext out itself (``parley grpcurl encrypt``)."""
        with self.store.transaction(durable=False):
            self.store.add_message(
                incoming=False,
                peer_account_id=account_id,
                sender_account_id=self.account_id,
                sender_device_id=self.device_id,
                timestamp_ms=timestamp_ms,
                text=text,
            )
        await self._commits.wait()

    def _session_devices(self, account_id: str) -> list[int]:
        """The devices of ``account_id`` we hold a session with and send to: not this device,
        not those a live-support conversation leaves out (``_encrypt`` skips the sessions
        that are not usable)."""
        own = account_id == self.account_id
        left_out = self._outside_support.get(account_id, set())
        return [
            d
            for d in self.store.session_devices(account_id)
            if not (own and d == self.device_id) and d not in left_out
        ]

    async def _send_content(
        self,
        account_id: str,
        content: cpb.Content,
        timestamp_ms: int,
        *,
        online_only: bool = False,
        business: mpb.BusinessMetadata | None = None,
        chat_link_code: str = "",
    ) -> _Sent | None:
        """Encrypt ``content`` for every device of ``account_id`` and send it, fixing the
        device list as the server asks (rule 3). None when there is no device to send to
        (a sync copy on a single-device account). ``business`` is the envelope's cleartext
        business metadata (a business's sends)."""
        own = account_id == self.account_id
        plaintext = content.SerializeToString()
        # Encrypting tells which sessions are usable (it loads each record once, in its
        # transaction): only when none is, the sessions are set up, once per peer at a time.
        messages = self._encrypt(account_id, self._session_devices(account_id), plaintext)
        if not messages and not own:
            async with self._setups.setdefault(account_id, asyncio.Lock()):
                # A concurrent send may have set the sessions up while this one waited.
                messages = self._encrypt(account_id, self._session_devices(account_id), plaintext)
                if not messages:
                    if not await self._account_devices(account_id):
                        return None
                    fresh = await self._fetch_sessions(account_id, 0)
                    messages = self._encrypt(account_id, fresh, plaintext)
        # To our own account an empty list is sent as it is: the server either confirms we have
        # no other device (nothing stored) or names the devices we did not know of.
        if not messages and (not own or self.clock.now() < self._alone_until):
            return None
        request_id = self._new_request_id()
        for attempt in range(1, MAX_SEND_ATTEMPTS + 1):
            await self._commits.wait()  # the sessions these ciphertexts advanced (rule 1)
            request = mpb.SendMessageRequest(
                request_id=request_id,
                recipient_account_id=account_id,
                messages=[messages[d] for d in sorted(messages)],
                client_timestamp_ms=timestamp_ms,
                online_only=online_only,
                business=business,
                chat_link_code=chat_link_code,
            )
            try:
                reply = await self._outbox.send(request)
                if not messages:  # a sync copy with no other device to go to
                    self._alone_until = self.clock.now() + ALONE_RECHECK
                    return None
                return _Sent(reply, request_id, tuple(sorted(messages)))
            except MismatchedDevices as exc:
                if attempt == MAX_SEND_ATTEMPTS:
                    raise
                await self._fix_devices(account_id, exc.detail, messages, plaintext)
                if not messages and not own:
                    return None  # every device went away
            except Unavailable:
                if attempt == MAX_SEND_ATTEMPTS:
                    raise
                # Same request_id, same ciphertexts: the server queues it at most once.
                await asyncio.sleep(0.2 * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fix_devices(
        self,
        account_id: str,
        mismatch: mpb.MismatchedDevices,
        messages: dict[int, mpb.OutgoingMessage],
        plaintext: bytes,
    ) -> None:
        """Drop extra devices, start new sessions with missing and stale ones.

        While a live-support conversation limits the business's devices (the detail's
        ``support_devices``), the extra devices outside that set still exist: they are left
        out of this and later sends, but their sessions and identities are kept, and a missing
        device we still have a session with (the earlier agent, once the conversation closes)
        reuses it instead of spending one of its one-time prekeys."""
        log.debug(
            "device list mismatch",
            extra={
                "missing": list(mismatch.missing_devices),
                "extra": list(mismatch.extra_devices),
                "stale": list(mismatch.stale_devices),
                "support": list(mismatch.support_devices),
            },
        )
        support = set(mismatch.support_devices)
        if support:
            kept = self._outside_support.get(account_id, set()) | set(mismatch.extra_devices)
            self._outside_support[account_id] = kept - support
        else:
            self._outside_support.pop(account_id, None)
        gone = [d for d in mismatch.extra_devices if not support]
        with self.store.transaction():
            for device_id in (*mismatch.extra_devices, *mismatch.stale_devices):
                messages.pop(device_id, None)
            for device_id in (*gone, *mismatch.stale_devices):
                self.store.delete_session(account_id, device_id)
            for device_id in gone:
                self.store.forget_identity(account_id, device_id)
        stale = set(mismatch.stale_devices)
        reuse = [
            d
            for d in mismatch.missing_devices
            if d not in stale and self._usable_record(account_id, d) is not None
        ]
        fresh: list[int] = []
        for device_id in sorted({*mismatch.missing_devices, *stale} - set(reuse)):
            fresh.extend(await self._fetch_sessions(account_id, device_id))
        messages.update(self._encrypt(account_id, [*reuse, *fresh], plaintext))

    async def send(self, recipient: str, text: str, *, chat_link_code: str = "") -> SentMessage:
        """Send a text message to every device of ``recipient`` (account id or +phone), and a
        sync copy to this account's other devices.

        Raises:
            UntrustedIdentityError: a recipient device's identity key changed.
            NoRecipientDevices: nobody to send to (sending to ourselves: no other device).
            client.errors.ParleyError: the server refused the send (e.g. ``NotFound``).
        """
        account_id = await self.resolve(recipient)
        timestamp_ms = self._now_ms()
        data = cpb.DataMessage(text=text, timestamp_ms=timestamp_ms)
        # A business's free text is a service reply: the one category without a template.
        business = (
            mpb.BusinessMetadata(category=mpb.MESSAGE_CATEGORY_SERVICE)
            if account_id != self.account_id and await self.is_business()
            else None
        )
        return await self._send_and_record(
            account_id,
            cpb.Content(data=data),
            cpb.SyncMessage(destination_account_id=account_id, message=data),
            timestamp_ms,
            text,
            business,
            chat_link_code=chat_link_code,
        )

    async def _send_and_record(
        self,
        account_id: str,
        content: cpb.Content,
        sync_copy: cpb.SyncMessage,
        timestamp_ms: int,
        text: str,
        business: mpb.BusinessMetadata | None,
        *,
        chat_link_code: str = "",
    ) -> SentMessage:
        """Send a message a person reads, then its sync copy to our other devices, and keep
        ``text`` (what it shows) in the history. ``chat_link_code`` goes on the message to the
        recipient only (the chat link it was started from), never on the sync copy."""
        sent = await self._send_content(
            account_id, content, timestamp_ms, business=business, chat_link_code=chat_link_code
        )
        if sent is None:
            raise self._nobody(account_id)
        synced: tuple[int, ...] = ()
        sync_error: str | None = None
        if account_id != self.account_id:
            sync = cpb.Content(sync=sync_copy)
            try:
                sync_sent = await self._send_content(self.account_id, sync, timestamp_ms)
                synced = sync_sent.device_ids if sync_sent else ()
            except (ParleyError, UntrustedIdentityError, ParleyClientError) as exc:
                # The message itself went out; failing the call now would invite a resend.
                sync_error = exc.message if isinstance(exc, ParleyError) else str(exc)
                log.warning("the sync copy to our other devices failed")
        await self.record_sent(account_id, timestamp_ms, text)
        return SentMessage(
            request_id=sent.request_id,
            message_id=sent.reply.message_id,
            recipient_account_id=account_id,
            timestamp_ms=timestamp_ms,
            device_ids=sent.device_ids,
            synced_device_ids=synced,
            sync_error=sync_error,
        )

    def _nobody(self, account_id: str) -> NoRecipientDevices:
        if account_id == self.account_id:
            return NoRecipientDevices("you have no other device; nothing was sent")
        return NoRecipientDevices(
            f"{self.display_name(account_id)} has no device to send to; nothing was sent"
        )

    async def is_business(self) -> bool:
        """Whether this account is a BUSINESS account (asked once per client)."""
        if self._is_business is None:
            reply = await _rpc(
                self._accounts.GetAccount(apb.GetAccountRequest(), metadata=self._metadata())
            )
            self._is_business = reply.account.kind == apb.ACCOUNT_KIND_BUSINESS
        return self._is_business

    # --- templates ---------------------------------------------------------------------------

    def cached_template(self, template_id: str) -> TemplateRecord | None:
        """The template as last fetched, from the store (no network)."""
        found = self.store.template(template_id)
        if found is None:
            return None
        return TemplateRecord.from_proto(bpb.Template.FromString(found[0]))

    async def fetch_template(
        self, template_id: str = "", *, name: str = "", language: str = ""
    ) -> TemplateRecord:
        """GetTemplate (by id, or by this account's template name and language), kept in the
        store for rendering and sending.

        Raises:
            client.errors.NotFound: no such template, or not approved and not ours.
        """
        owner = self.account_id if name else ""
        template = await self.business.template(
            template_id, business_account_id=owner, name=name, language=language
        )
        self.store.save_template(template.template_id, template.SerializeToString())
        return TemplateRecord.from_proto(template)

    async def _sendable_template(self, template: str, language: str) -> TemplateRecord:
        """Our own approved, unpaused template, by id or (with ``language``) by name; a kept
        copy younger than TEMPLATE_SEND_RECHECK saves the round trip."""
        if language:
            record = await self.fetch_template(name=template, language=language)
        else:
            found = self.store.template(template)
            fresh = found is not None and self.clock.now() - found[1] < TEMPLATE_SEND_RECHECK
            cached = self.cached_template(template) if fresh else None
            record = cached if cached and cached.approved else await self.fetch_template(template)
        shown = f"{record.name!r} ({record.language})"
        if record.business_account_id != self.account_id:
            raise ParleyClientError(
                f"template {shown} belongs to another business; send one of your own"
                " (`parley business templates list`)"
            )
        if not record.approved:
            raise ParleyClientError(
                f"template {shown} is not approved; it can be sent once the operator approves it"
            )
        if record.paused:
            raise ParleyClientError(
                f"template {shown} is paused; unpause it (`parley business templates unpause"
                f" {record.template_id}`) before sending it"
            )
        return record

    async def send_template(
        self,
        recipient: str,
        template: str,
        parameters: Sequence[str] = (),
        *,
        language: str = "",
    ) -> SentMessage:
        """Send a message made from one of this business's approved templates: ``template``
        is its id, or its name when ``language`` is given; ``parameters`` fill ``{{1}}``...

        The plaintext carries only the template id, language and parameters (a
        ``TemplateMessage``); the envelope's cleartext metadata names the template and its
        category, so the server can apply its rules and the recipient's client can check the
        category against the approved template before rendering it.

        Raises:
            ParleyClientError: the template is not ours, not approved, paused, or the
                parameters do not fit it (count, length, one line).
            client.errors.NotFound: no such template.
            NoRecipientDevices, UntrustedIdentityError, client.errors.ParleyError: as
                :meth:`send`.
        """
        account_id = await self.resolve(recipient)
        record = await self._sendable_template(template, language)
        try:
            check_parameters(record, parameters)
        except TemplateRefused as exc:
            raise ParleyClientError(exc.message) from None
        timestamp_ms = self._now_ms()
        message = cpb.TemplateMessage(
            template_id=record.template_id,
            language=record.language,
            parameters=list(parameters),
            timestamp_ms=timestamp_ms,
        )
        business = mpb.BusinessMetadata(
            category=record.category,  # type: ignore[arg-type]
            template_name=record.name,
            template_id=record.template_id,
        )
        return await self._send_and_record(
            account_id,
            cpb.Content(template=message),
            cpb.SyncMessage(destination_account_id=account_id, template=message),
            timestamp_ms,
            render(record, parameters).text,
            business,
        )

    async def _verified_name(self, account_id: str) -> str:
        """A business's display name if the operator verified it; empty otherwise or when the
        profile cannot be read now (a name is a nicety, never a reason to hold a message)."""
        if account_id not in self._business_names:
            try:
                profile = await self.business.profile(account_id)
            except NotFound:  # no profile: no name to show (asked again in the next run)
                self._business_names[account_id] = ""
                return ""
            except ParleyError:
                return ""
            name = profile.fields.display_name if profile.name_verified else ""
            self._business_names[account_id] = name
        return self._business_names[account_id]

    async def send_receipt(
        self, recipient: str, timestamps_ms: Sequence[int], *, read: bool = True
    ) -> None:
        """Tell the sender we got (or read) its messages, named by their timestamps."""
        account_id = await self.resolve(recipient)
        kind = cpb.RECEIPT_TYPE_READ if read else cpb.RECEIPT_TYPE_DELIVERY
        content = cpb.Content(
            receipt=cpb.ReceiptMessage(type=kind, timestamps_ms=list(timestamps_ms))
        )
        await self._send_content(account_id, content, self._now_ms())

    async def send_typing(self, recipient: str, *, started: bool = True) -> bool:
        """A typing indicator, online-only (never stored). True if a device got it."""
        account_id = await self.resolve(recipient)
        now = self._now_ms()
        action = cpb.TYPING_ACTION_STARTED if started else cpb.TYPING_ACTION_STOPPED
        content = cpb.Content(typing=cpb.TypingMessage(action=action, timestamp_ms=now))
        sent = await self._send_content(account_id, content, now, online_only=True)
        return sent is not None and sent.reply.stored

    # --- receiving -------------------------------------------------------------------------

    async def receive(self, *, until_empty: bool = False) -> AsyncGenerator[Event, None]:
        """Open a ReceiveMessageStream and yield decoded events as they arrive.

        Each envelope is decrypted and its session state and message committed; the batch's
        ids are then acknowledged on the same stream (rule 2) before its events are yielded.
        The stream is read ahead (``client.inbox``): the batches that arrived meanwhile are
        decrypted, committed and acknowledged together.
        With ``until_empty`` the stream ends after the QueueEmpty marker (scripts, tests).
        However the reading ends, the stream is half-closed and read to its end (at most
        ``ACK_FLUSH_TIMEOUT``), so every acknowledgement sent is applied by then.

        Raises:
            client.errors.ParleyError: the stream failed (``Unavailable``: the server went
                away, retry; ``Aborted``: another receiver of this device took over).
        """
        acks: asyncio.Queue[mpb.ReceiveMessageStreamRequest | None] = asyncio.Queue(MAX_UNSENT_ACKS)

        async def outgoing() -> AsyncGenerator[mpb.ReceiveMessageStreamRequest, None]:
            while (ack := await acks.get()) is not None:
                yield ack

        call = self._messaging.ReceiveMessageStream(outgoing(), metadata=self._metadata())
        reader = ReadAhead(call)
        held: set[tuple[str, int]] = set()
        finished = False
        try:
            while (response := await reader.next()) is not None:
                if isinstance(response, list):  # envelopes, of one or more stream messages
                    events: list[Event] = []
                    processed: list[int] = []
                    for envelope, event, ack in await self._process_batch(response, held):
                        if ack:
                            processed.append(envelope.envelope_id)
                        if event is not None:
                            events.append(event)
                    for chunk in _chunks(processed, MAX_ACK_IDS):
                        await acks.put(mpb.ReceiveMessageStreamRequest(envelope_ids=chunk))
                    for event in events:
                        yield event
                    continue
                which = response.WhichOneof("event")
                if which == "statuses":
                    statuses = list(response.statuses.statuses)
                    for chunk in _chunks([s.status_id for s in statuses], MAX_ACK_IDS):
                        await acks.put(mpb.ReceiveMessageStreamRequest(status_ids=chunk))
                    for status in statuses:
                        yield DeliveryUpdate.from_proto(
                            status, self.phone_number_of(status.recipient_account_id)
                        )
                elif which == "queue_empty":
                    yield QueueEmpty()
                    if until_empty:
                        break
            await _finish(call, reader, acks)
            finished = True
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        finally:
            if not finished:
                await _finish(call, reader, acks)

    async def _process_batch(
        self, envelopes: list[mpb.Envelope], held: set[tuple[str, int]]
    ) -> list[tuple[mpb.Envelope, Event | None, bool]]:
        """``_process`` for a stream batch, with one commit (one fsync) for the envelopes that
        need no call to the server, instead of one each.

        The block spans no ``await``, so no other task of this client writes inside it; its
        commit is shared with this client's other writers of the moment and awaited before
        the batch is acknowledged (``client.group_commit``). Each envelope keeps its own
        savepoint (``_process_once``), so one that fails rolls back alone. An envelope
        naming a template to fetch ends the run: what came before commits, that one goes
        through ``_process`` (which fetches), the rest go on.
        A template message shows its business's verified name (asked after the commits).
        """
        out: list[tuple[mpb.Envelope, Event | None, bool]] = []
        i = 0
        while i < len(envelopes):
            with self.store.transaction(durable=False):
                while i < len(envelopes):
                    try:
                        event, ack = self._process_once(envelopes[i], held, set())
                    except _TemplateNeeded:
                        break
                    out.append((envelopes[i], event, ack))
                    i += 1
            # On disk before any of it is acknowledged (rule 2); while envelopes keep coming,
            # at most one commit per interval, the stream read ahead meanwhile.
            await self._commits.wait(spaced=True)
            if i < len(envelopes):
                event, ack = await self._process(envelopes[i], held)
                out.append((envelopes[i], event, ack))
                i += 1
        for k, (envelope, event, ack) in enumerate(out):
            if isinstance(event, RenderedTemplateMessage):
                name = await self._verified_name(event.sender_account_id)
                out[k] = (envelope, dataclasses.replace(event, business_name=name), ack)
        return out

    async def _process(
        self, envelope: mpb.Envelope, held: set[tuple[str, int]]
    ) -> tuple[Event | None, bool]:
        """Decrypt and persist one envelope. Returns ``(event or None, acknowledge?)``.

        A template message naming a template the store lacks (or holds unapproved) rolls its
        transaction back; the template is fetched (GetTemplate) and the envelope decrypted
        again, from the unchanged session, with what the server said — at most once per
        template, so an unknown one ends in a :class:`RejectedTemplateMessage`.
        """
        refetched: set[str] = set()
        while True:
            try:
                event, ack = self._process_once(envelope, held, refetched)
            except _TemplateNeeded as need:
                refetched.add(need.template_id)
                await self._refetch_template(need.template_id)
                continue
            return event, ack

    async def _refetch_template(self, template_id: str) -> None:
        """Fetch a template a received message names; one the server does not show (unknown,
        not approved) or cannot parse as an id stays as it was in the store."""
        try:
            await self.fetch_template(template_id)
        except (NotFound, InvalidArgument):
            log.info("a received template message names a template the server does not show")

    def _process_once(
        self, envelope: mpb.Envelope, held: set[tuple[str, int]], refetched: set[str]
    ) -> tuple[Event | None, bool]:
        sender = (envelope.sender_account_id, envelope.sender_device_id)
        if envelope.sender_account_id == self.account_id:
            self._alone_until = 0.0  # another device of ours exists
        if self.store.is_processed(envelope.envelope_id):
            log.debug("skipping an envelope processed before", extra={"id": envelope.envelope_id})
            return None, True
        if sender in held:
            return None, False
        try:
            with self.store.transaction():
                return self._decrypt_and_save(envelope, refetched), True
        except UntrustedIdentityError as exc:
            held.add(sender)
            if exc.identity_key is not None:
                self.store.record_pending_identity(*sender, exc.identity_key)
            event = IdentityChanged(
                envelope.envelope_id, *sender, str(exc), self.phone_number_of(sender[0])
            )
            return event, False
        except DuplicateMessageError:
            # Already decrypted (the key is used up): nothing new to show.
            with self.store.transaction():
                self.store.mark_processed(envelope.envelope_id)
            return None, True
        except (CryptoError, DecodeError, ParleyClientError) as exc:
            log.warning(
                "envelope could not be decrypted",
                extra={"id": envelope.envelope_id, "error": type(exc).__name__},
            )
            with self.store.transaction():
                self.store.mark_processed(envelope.envelope_id)
            reason = f"{type(exc).__name__}: {exc}"
            phone = self.phone_number_of(sender[0])
            return DecryptionFailed(envelope.envelope_id, *sender, reason, phone), True

    def _decrypt_and_save(self, envelope: mpb.Envelope, refetched: set[str]) -> Event | None:
        """Decrypt one envelope and save everything it changes; the caller holds the write
        transaction, so the session is read and written under one lock (see _encrypt)."""
        account_id, device_id = envelope.sender_account_id, envelope.sender_device_id
        record = self._load_record(account_id, device_id) or SessionRecord()
        new_identity: bytes | None = None
        used_pre_key: int | None = None
        used_kyber: int | None = None
        if envelope.content_type == mpb.CONTENT_TYPE_PREKEY:
            message = PreKeySignalMessage.parse(envelope.content)
            new_identity = message.identity_key.serialize()
            trusted = self.store.identity(account_id, device_id)
            if trusted is not None and trusted != new_identity:
                raise UntrustedIdentityError(
                    account_id, device_id, new_identity, self.store.contact_phone(account_id)
                )
            result = record.decrypt_prekey_message(
                message,
                our_identity=self._identity_key_pair(),
                our_registration_id=self.identity.registration_id,
                prekeys=self._prekeys,
                rng=self.rng,
            )
            plaintext = result.plaintext
            used_pre_key, used_kyber = result.used_pre_key_id, result.used_kyber_pre_key_id
        elif envelope.content_type == mpb.CONTENT_TYPE_WHISPER:
            plaintext = record.decrypt(envelope.content, rng=self.rng)
        else:
            raise ParleyClientError(f"unsupported content type {envelope.content_type}")
        content = cpb.Content.FromString(plaintext)
        event = self._event(envelope, content, refetched)
        with self.store.transaction():
            if new_identity is not None:
                self.store.check_identity(account_id, device_id, new_identity)
            self.store.save_session(account_id, device_id, record)
            if used_pre_key is not None:
                self.store.remove_one_time_pre_key(used_pre_key)
            if used_kyber is not None:
                self.store.remove_one_time_kyber_pre_key(used_kyber)
            self.store.mark_processed(envelope.envelope_id)
            if isinstance(event, TextMessage | RenderedTemplateMessage):
                self.store.add_message(
                    incoming=True,
                    peer_account_id=account_id,
                    sender_account_id=account_id,
                    sender_device_id=device_id,
                    timestamp_ms=event.timestamp_ms,
                    text=event.text,
                    envelope_id=envelope.envelope_id,
                )
            elif isinstance(event, RejectedTemplateMessage):
                log.warning(
                    "refused to show a business message",
                    extra={"id": envelope.envelope_id, "reason": event.reason},
                )
            elif isinstance(event, SyncedMessage):
                self.store.add_message(
                    incoming=False,
                    peer_account_id=event.destination_account_id,
                    sender_account_id=account_id,
                    sender_device_id=device_id,
                    timestamp_ms=event.timestamp_ms,
                    text=event.text,
                    envelope_id=envelope.envelope_id,
                )
        return event

    def _event(
        self, envelope: mpb.Envelope, content: cpb.Content, refetched: set[str]
    ) -> Event | None:
        server_time = (
            envelope.server_timestamp.ToDatetime().timestamp()
            if envelope.HasField("server_timestamp")
            else 0.0
        )
        eid, sender, device = (
            envelope.envelope_id,
            envelope.sender_account_id,
            envelope.sender_device_id,
        )
        body = content.WhichOneof("body")
        phone = self.phone_number_of(sender)
        label = EnvelopeLabel.from_proto(envelope)
        claimed = category_name(label.category) if label.category else ""
        if body == "data":
            try:
                check_free_text(label)
            except TemplateRefused as exc:
                return RejectedTemplateMessage(
                    eid,
                    sender,
                    device,
                    content.data.timestamp_ms,
                    server_time,
                    "",
                    claimed,
                    exc.reason.value,
                    exc.message,
                    phone,
                )
            return TextMessage(
                eid,
                sender,
                device,
                content.data.timestamp_ms,
                server_time,
                content.data.text,
                phone,
                claimed,
            )
        if body == "template":
            return self._template_event(envelope, content.template, server_time, refetched)
        if body == "sync":
            if sender != self.account_id:
                raise ParleyClientError("a sync message from another account")
            sync = content.sync
            if sync.HasField("template"):
                timestamp_ms = sync.template.timestamp_ms
                text = self._own_template_text(sync.template, refetched)
            else:
                timestamp_ms, text = sync.message.timestamp_ms, sync.message.text
            return SyncedMessage(
                eid,
                device,
                sync.destination_account_id,
                timestamp_ms,
                server_time,
                text,
                self.phone_number_of(sync.destination_account_id),
            )
        if body == "receipt":
            return ReceiptEvent(
                eid,
                sender,
                device,
                content.receipt.type == cpb.RECEIPT_TYPE_READ,
                tuple(content.receipt.timestamps_ms),
                phone,
            )
        if body == "typing":
            return TypingEvent(
                eid,
                sender,
                device,
                content.typing.action == cpb.TYPING_ACTION_STARTED,
                content.typing.timestamp_ms,
                phone,
            )
        return None

    def _own_template_text(self, message: cpb.TemplateMessage, refetched: set[str]) -> str:
        """What another device of ours sent from one of our templates, rendered (our own
        template: no checks to make, it is fetched like any other when not kept)."""
        record = self.cached_template(message.template_id) if message.template_id else None
        if record is None and message.template_id and message.template_id not in refetched:
            raise _TemplateNeeded(message.template_id)
        if record is None:
            return f"(template {message.template_id or '?'}, no longer known to the server)"
        return render(record, message.parameters).text

    def _template_event(
        self,
        envelope: mpb.Envelope,
        message: cpb.TemplateMessage,
        server_time: float,
        refetched: set[str],
    ) -> RenderedTemplateMessage | RejectedTemplateMessage:
        """Check a template message against the approved template (client.templates) and
        render it, or say why it is refused. A template the store lacks or holds unapproved
        is fetched first (via _TemplateNeeded), once."""
        eid, sender, device = (
            envelope.envelope_id,
            envelope.sender_account_id,
            envelope.sender_device_id,
        )
        record = self.cached_template(message.template_id) if message.template_id else None
        if (
            message.template_id
            and (record is None or not record.approved)
            and message.template_id not in refetched
        ):
            raise _TemplateNeeded(message.template_id)
        label = EnvelopeLabel.from_proto(envelope)
        phone = self.phone_number_of(sender)
        try:
            rendered = check_template_message(
                record, message, sender_account_id=sender, label=label
            )
        except TemplateRefused as exc:
            return RejectedTemplateMessage(
                eid,
                sender,
                device,
                message.timestamp_ms,
                server_time,
                message.template_id,
                category_name(label.category) if label.category else "",
                exc.reason.value,
                exc.message,
                phone,
            )
        assert record is not None  # check_template_message refuses an unknown template
        return RenderedTemplateMessage(
            envelope_id=eid,
            sender_account_id=sender,
            sender_device_id=device,
            timestamp_ms=message.timestamp_ms,
            server_time=server_time,
            template_id=record.template_id,
            template_name=record.name,
            language=record.language,
            category=category_name(record.category),
            parameters=tuple(message.parameters),
            header=rendered.header,
            body=rendered.body,
            footer=rendered.footer,
            buttons=rendered.buttons,
            text=rendered.text,
            sender_phone_number=phone,
        )

    # --- safety numbers ----------------------------------------------------------------------

    async def _known_keys(self, account_id: str, device_ids: Iterable[int]) -> dict[int, bytes]:
        """Identity keys of the devices (pending ones first: that is what the user must
        compare before trusting), fetching a bundle for any device we never talked to."""
        keys = self.store.identities(account_id)
        keys.update(self.store.pending_identities(account_id))
        out: dict[int, bytes] = {}
        for device_id in device_ids:
            if account_id == self.account_id and device_id == self.device_id:
                out[device_id] = self._identity_key_pair().public_key.serialize()
                continue
            if device_id not in keys:
                await self._fetch_sessions(account_id, device_id)
                known = self.store.identity(account_id, device_id)
                if known is None:
                    raise ParleyClientError(f"no identity key for device {device_id}")
                keys[device_id] = known
            out[device_id] = keys[device_id]
        return out

    async def safety_number(self, peer: str) -> SafetyNumber:
        """The safety number with ``peer`` (see :func:`safety_number_for`), over the identity
        keys of every current device of both accounts. ``str()`` of it is what to show."""
        peer_id = await self.resolve(peer)
        own_devices = [d.device_id for d in await self.devices()]
        peer_devices = await self._account_devices(peer_id)
        local = await self._known_keys(self.account_id, own_devices)
        remote = await self._known_keys(peer_id, peer_devices)
        return SafetyNumber(safety_number_for(self.account_id, local, peer_id, remote))


def format_safety_number(number: str) -> str:
    """Twelve groups of five digits, four per line, as Signal shows them."""
    size = SAFETY_NUMBER_GROUP
    groups = [number[i : i + size] for i in range(0, len(number), size)]
    return "\n".join(" ".join(groups[i : i + 4]) for i in range(0, len(groups), 4))
