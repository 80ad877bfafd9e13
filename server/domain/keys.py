"""The key directory: what a device publishes, and the bundles others fetch to reach it.

Rules kept here:
1. A device's identity key and registration id are fixed by its first upload. A different
   identity key is refused until the device registers again (which deletes its keys). The
   check below reads a snapshot for its message; the write itself is conditional on the
   identity on file (ports guarantee 12), so a concurrent upload with another identity never
   replaces it.
2. Every signed key is verified against the device's identity key with the same XEdDSA code
   that clients sign with (`client.crypto.xeddsa`, the one import the server makes from the
   client). A bad signature refuses the whole upload: uploads are all-or-nothing.
3. A key id already on file with different key bytes is refused; the identical key is a no-op,
   so a retried upload succeeds. The inserts skip ids on file (ON CONFLICT DO NOTHING) and the
   comparison reads what is on file *after* them, in the same transaction (ports guarantee
   14), so a concurrent upload under the same id is refused rather than silently dropped.
4. A one-time key is handed out once, ever: taking it is one DELETE ... RETURNING (ports
   guarantee 5), so two callers, on one writer or several, never receive the same key.
5. Fetching is limited per caller and per (caller, target) pair, so no one caller can take all
   of a stranger's one-time keys. Once they are gone (drained by many callers, or simply used
   up), bundles carry the signed prekey and the last-resort Kyber key, which are never taken:
   sessions still start, with less forward secrecy for their first message until the target
   uploads more.
6. A user with a live-support conversation open with a business gets bundles of that
   conversation's device set only (the primary device and the assigned agent's,
   `server.domain.support`): their client never encrypts to other agents, and none of those
   agents' one-time prekeys is spent on them. A device outside the set asked by id is
   FAILED_PRECONDITION.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from client.crypto import xeddsa
from server.domain import validation
from server.domain.auth import Principal, as_caller
from server.domain.clock import Clock
from server.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from server.domain.model import AccountKind, DeviceKeys, SignedKey
from server.domain.ports import ReadTransaction, Store, Transaction
from server.domain.ratelimit import Rate, RateLimiter, take_all
from server.domain.support_model import support_device_set

EC_KEY_TYPE = 0x05
EC_KEY_LEN = 33
KYBER_KEY_TYPE = 0x08
KYBER_KEY_LEN = 1569  # 0x08 || 1568-byte Kyber1024 public key
SIGNATURE_LEN = 64
MAX_KEYS_PER_UPLOAD = 100
# Registration ids are 14 bits; libsignal generates 1..16380.
MAX_REGISTRATION_ID = 16380
MAX_KEY_ID = 0xFFFFFFFF


@dataclass(frozen=True)
class KeyPolicy:
    """The key directory's limits. These defaults are the server's defaults (`server.config`
    takes them from here), so each reason is written once, here."""

    bundle_rate: Rate = Rate(600, 60.0)
    # Fetches of one target account by one caller account. A client fetches a pair's bundles
    # when it starts a session and again when the target adds or re-registers a device (one
    # fetch per such device, a few more on retries): a handful an hour at most. At 30/h one
    # caller takes at most 30 of a device's one-time keys an hour, a fraction of the 100 a
    # client uploads and tops up, so draining them needs many registered accounts.
    bundle_pair_rate: Rate = Rate(30, 3600.0)
    low_watermark: int = 10
    # Stored one-time keys per device and type: enough for weeks of first contacts, small
    # enough that one device cannot fill the disk.
    max_stored_keys: int = 1000


@dataclass(frozen=True)
class Upload:
    identity_key: bytes = b""
    registration_id: int = 0
    signed_pre_key: SignedKey | None = None
    pre_keys: list[tuple[int, bytes]] = field(default_factory=list)
    kyber_pre_keys: list[SignedKey] = field(default_factory=list)
    last_resort_kyber: SignedKey | None = None


@dataclass(frozen=True)
class KeyStatus:
    pre_keys: int
    kyber_pre_keys: int
    replenish: bool
    low_watermark: int
    signed_pre_key_id: int
    signed_pre_key_at: float
    last_resort_kyber_id: int


@dataclass(frozen=True)
class Bundle:
    device_id: int
    registration_id: int
    identity_key: bytes
    signed_pre_key: SignedKey
    pre_key: tuple[int, bytes] | None
    kyber_pre_key: SignedKey
    kyber_is_last_resort: bool


def _check_key(value: bytes, *, field: str, kind: int, length: int) -> None:
    if len(value) != length or value[0] != kind:
        what = (
            "EC key (0x05 || 32 bytes)" if kind == EC_KEY_TYPE else "Kyber1024 key (0x08 || 1568)"
        )
        raise InvalidArgument(
            f"{field} must be a serialized {what}: {length} bytes starting with 0x{kind:02x}, "
            f"got {len(value)} bytes" + (f" starting with 0x{value[0]:02x}" if value else "")
        )


def _check_id(key_id: int, *, field: str) -> None:
    if not 0 < key_id <= MAX_KEY_ID:
        raise InvalidArgument(f"{field} must be between 1 and {MAX_KEY_ID}")


def _check_signed(
    key: SignedKey, identity_key: bytes, *, field: str, kind: int, length: int
) -> None:
    _check_id(key.key_id, field=f"{field}.key_id")
    _check_key(key.public_key, field=f"{field}.public_key", kind=kind, length=length)
    if len(key.signature) != SIGNATURE_LEN:
        raise InvalidArgument(f"{field}.signature must be a 64-byte XEdDSA signature")
    if not xeddsa.verify(identity_key, key.public_key, key.signature):
        raise InvalidArgument(
            f"{field} {key.key_id}: the signature does not verify with the device's identity key "
            "(sign the whole serialized public key, type byte included, with the identity key)"
        )


_OTHER_IDENTITY = (
    "this device already has a different identity key; register the number "
    "(or link the device) again to publish a new identity"
)


def _check_same_identity(current: DeviceKeys, identity_key: bytes, registration_id: int) -> None:
    """Refuse an identity key or registration id other than the one on file (empty or 0: the
    upload keeps the one on file)."""
    if identity_key and identity_key != current.identity_key:
        raise FailedPrecondition(_OTHER_IDENTITY)
    if registration_id and registration_id != current.registration_id:
        raise FailedPrecondition(
            f"this device's registration id is {current.registration_id}; it changes "
            "only when the device registers again"
        )


def _no_duplicates(ids: list[int], *, field: str) -> None:
    seen: set[int] = set()
    for key_id in ids:
        if key_id in seen:
            raise InvalidArgument(f"{field} has key id {key_id} more than once")
        seen.add(key_id)


class KeyDirectory:
    def __init__(
        self, db: Store, clock: Clock, policy: KeyPolicy, *, shared_limits: bool = False
    ) -> None:
        """`shared_limits`: replicas share the database, and the limits' buckets live in it."""
        self._db = db
        self._clock = clock
        self.policy = policy
        shared = db if shared_limits else None
        self._bundle_limit = RateLimiter(
            policy.bundle_rate, clock, "prekey bundle requests", shared=shared
        )
        self._pair_limit = RateLimiter(
            policy.bundle_pair_rate,
            clock,
            "prekey bundle requests for this account",
            shared=shared,
        )

    async def upload(self, caller: Principal, upload: Upload) -> KeyStatus:
        if len(upload.pre_keys) > MAX_KEYS_PER_UPLOAD:
            raise InvalidArgument(
                f"{len(upload.pre_keys)} pre_keys in one call; at most {MAX_KEYS_PER_UPLOAD} are "
                "allowed, send the rest in further calls"
            )
        if len(upload.kyber_pre_keys) > MAX_KEYS_PER_UPLOAD:
            raise InvalidArgument(
                f"{len(upload.kyber_pre_keys)} kyber_pre_keys in one call; at most "
                f"{MAX_KEYS_PER_UPLOAD} are allowed, send the rest in further calls"
            )
        if upload.identity_key:
            _check_key(
                upload.identity_key, field="identity_key", kind=EC_KEY_TYPE, length=EC_KEY_LEN
            )
        if upload.registration_id and not 0 < upload.registration_id <= MAX_REGISTRATION_ID:
            raise InvalidArgument(f"registration_id must be between 1 and {MAX_REGISTRATION_ID}")
        for key_id, pub in upload.pre_keys:
            _check_id(key_id, field="pre_keys.key_id")
            _check_key(pub, field=f"pre_keys[{key_id}]", kind=EC_KEY_TYPE, length=EC_KEY_LEN)
        _no_duplicates([k for k, _ in upload.pre_keys], field="pre_keys")
        _no_duplicates([k.key_id for k in upload.kyber_pre_keys], field="kyber_pre_keys")
        # Signatures are checked once the identity key is known (request or file): below.
        now = self._clock.now()
        policy = self.policy

        def apply(tx: Transaction) -> KeyStatus:
            current = tx.get_device_keys(caller.account_id, caller.device_id)
            identity = upload.identity_key or (current.identity_key if current else b"")
            if current is None:
                missing = [
                    name
                    for name, present in (
                        ("identity_key", bool(upload.identity_key)),
                        ("registration_id", bool(upload.registration_id)),
                        ("signed_pre_key", upload.signed_pre_key is not None),
                        ("last_resort_kyber_pre_key", upload.last_resort_kyber is not None),
                    )
                    if not present
                ]
                if missing:
                    raise FailedPrecondition(
                        "this device has published no keys yet; the first upload must include "
                        + ", ".join(missing)
                    )
            else:
                _check_same_identity(current, upload.identity_key, upload.registration_id)
            self._verify_signatures(upload, identity)
            counts = tx.count_keys(caller.account_id, caller.device_id)
            if (
                counts.pre_keys + len(upload.pre_keys) > policy.max_stored_keys
                or counts.kyber_pre_keys + len(upload.kyber_pre_keys) > policy.max_stored_keys
            ):
                raise InvalidArgument(
                    f"a device may keep at most {policy.max_stored_keys} one-time keys of each "
                    f"type on the server (it has {counts.pre_keys} EC and "
                    f"{counts.kyber_pre_keys} Kyber); upload fewer"
                )
            signed = upload.signed_pre_key or (current.signed_pre_key if current else None)
            last_resort = upload.last_resort_kyber or (
                current.last_resort_kyber if current else None
            )
            assert signed is not None and last_resort is not None  # checked above
            keys = DeviceKeys(
                caller.account_id,
                caller.device_id,
                identity,
                upload.registration_id or (current.registration_id if current else 0),
                signed,
                now
                if upload.signed_pre_key is not None or current is None
                else current.signed_pre_key_at,
                last_resort,
            )
            if not tx.put_device_keys(keys):
                # Another upload fixed a different identity since the read above: refuse as
                # if it had been on file all along (the job rolls back).
                on_file = tx.get_device_keys(caller.account_id, caller.device_id)
                assert on_file is not None  # only a row on file refuses the upsert
                _check_same_identity(on_file, keys.identity_key, keys.registration_id)
                raise FailedPrecondition(_OTHER_IDENTITY)
            tx.add_pre_keys(caller.account_id, caller.device_id, upload.pre_keys)
            tx.add_kyber_pre_keys(caller.account_id, caller.device_id, upload.kyber_pre_keys)
            # Checked after the inserts (which skip ids on file), so a key another writer
            # stored under one of these ids since any earlier read is seen too (rule 3).
            self._check_conflicts(tx, caller, upload)
            return self._status(tx, caller)

        return await self._db.write(as_caller(caller, apply))

    @staticmethod
    def _verify_signatures(upload: Upload, identity: bytes) -> None:
        if upload.signed_pre_key is not None:
            _check_signed(
                upload.signed_pre_key,
                identity,
                field="signed_pre_key",
                kind=EC_KEY_TYPE,
                length=EC_KEY_LEN,
            )
        if upload.last_resort_kyber is not None:
            _check_signed(
                upload.last_resort_kyber,
                identity,
                field="last_resort_kyber_pre_key",
                kind=KYBER_KEY_TYPE,
                length=KYBER_KEY_LEN,
            )
        for key in upload.kyber_pre_keys:
            _check_signed(
                key, identity, field="kyber_pre_keys", kind=KYBER_KEY_TYPE, length=KYBER_KEY_LEN
            )

    @staticmethod
    def _check_conflicts(tx: ReadTransaction, caller: Principal, upload: Upload) -> None:
        stored = tx.existing_pre_keys(
            caller.account_id, caller.device_id, (k for k, _ in upload.pre_keys)
        )
        for key_id, pub in upload.pre_keys:
            if key_id in stored and stored[key_id] != pub:
                raise AlreadyExists(
                    f"pre_keys: key id {key_id} is already on file with another key; "
                    "use fresh key ids"
                )
        stored = tx.existing_kyber_pre_keys(
            caller.account_id, caller.device_id, (k.key_id for k in upload.kyber_pre_keys)
        )
        for key in upload.kyber_pre_keys:
            if key.key_id in stored and stored[key.key_id] != key.public_key:
                raise AlreadyExists(
                    f"kyber_pre_keys: key id {key.key_id} is already on file with another key; "
                    "use fresh key ids"
                )

    def _status(self, tx: ReadTransaction, caller: Principal) -> KeyStatus:
        counts = tx.count_keys(caller.account_id, caller.device_id)
        keys = tx.get_device_keys(caller.account_id, caller.device_id)
        low = self.policy.low_watermark
        return KeyStatus(
            pre_keys=counts.pre_keys,
            kyber_pre_keys=counts.kyber_pre_keys,
            replenish=counts.pre_keys < low or counts.kyber_pre_keys < low,
            low_watermark=low,
            signed_pre_key_id=keys.signed_pre_key.key_id if keys else 0,
            signed_pre_key_at=keys.signed_pre_key_at if keys else 0.0,
            last_resort_kyber_id=keys.last_resort_kyber.key_id if keys else 0,
        )

    async def status(self, caller: Principal) -> KeyStatus:
        return await self._db.read(lambda tx: self._status(tx, caller))

    async def bundles(self, caller: Principal, account_id: str, device_id: int) -> list[Bundle]:
        target = validation.uuid_string(account_id, field="account_id")
        if device_id < 0:
            raise InvalidArgument("device_id must be a device id, or 0 for all devices")
        # Both or neither: a refused pair does not spend the caller's budget for other targets.
        await take_all(
            (
                (self._pair_limit, f"{caller.account_id} {target}"),
                (self._bundle_limit, caller.account_id),
            )
        )

        def take(tx: Transaction) -> list[Bundle]:
            account = tx.get_account(target)
            if account is None:
                raise NotFound(f"no account {target}")
            # A user with a live-support conversation open gets the business's support device
            # set only (server.domain.support, rule 4): no other agent's prekeys are spent.
            allowed = (
                support_device_set(tx, target, caller.account_id)
                if account.kind == AccountKind.BUSINESS and target != caller.account_id
                else None
            )
            if device_id and allowed is not None and device_id not in allowed:
                raise FailedPrecondition(
                    f"device {device_id} of this business is outside the support device set"
                    f" {list(allowed)}: while your live-support conversation with it is open,"
                    " your messages go to its primary device and the assigned agent only"
                )
            if device_id:
                one = tx.get_device_keys(target, device_id)
                if one is None:
                    raise NotFound(
                        f"device {device_id} of account {target} does not exist or has not "
                        "published keys yet"
                    )
                devices = [one]
            else:
                devices = [
                    keys
                    for keys in tx.list_device_keys(target)
                    if allowed is None or keys.device_id in allowed
                ]
                if not devices:
                    raise NotFound(f"no device of account {target} has published keys yet")
            out = []
            for keys in devices:
                kyber = tx.take_kyber_pre_key(target, keys.device_id)
                out.append(
                    Bundle(
                        device_id=keys.device_id,
                        registration_id=keys.registration_id,
                        identity_key=keys.identity_key,
                        signed_pre_key=keys.signed_pre_key,
                        pre_key=tx.take_pre_key(target, keys.device_id),
                        kyber_pre_key=kyber or keys.last_resort_kyber,
                        kyber_is_last_resort=kyber is None,
                    )
                )
            return out

        return await self._db.write(as_caller(caller, take))
