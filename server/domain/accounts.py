"""Accounts and devices: phone verification, registration, linking, removal, lookup.

Rules kept here, and what enforces each with concurrent writers (`server.domain.ports`
lists the backend's guarantees):
1. A code is 6 digits, lives `code_ttl` seconds, allows `max_attempts` wrong guesses, works once.
   Wrong guesses are counted durably before the caller hears "wrong code". Enforced by
   conditional UPDATEs (ports guarantee 7): a guess is counted only while `attempts < max`, a
   code is used only while `completed = 0`.
2. Registering a number that has an account keeps the account id and replaces every device:
   old tokens stop working at once (the new primary device is device 1). One account per
   number: UNIQUE (phone_number), and the account is created with ON CONFLICT DO NOTHING (ports
   guarantee 13), so a registration that lost a race for a new number re-registers the account
   the winner created instead of failing.
3. Only the primary device links new devices or deletes the account; a linked device may remove
   only itself; the primary device cannot be removed (delete the account or re-register).
   A linking code works once: DELETE ... RETURNING (ports guarantee 5). An account has at most
   `max_devices` devices: each insert first takes a slot with one conditional UPDATE of the
   account's device count (ports guarantee 11), so concurrent links cannot exceed it.
4. Device ids are never reused within an account, so a stale session never meets a new device
   that happens to have the old id: the account's counter moves by one UPDATE ... RETURNING
   (ports guarantee 6), and (account_id, device_id) is the devices' primary key.
5. A code costs the operator an SMS: one is sent only within the limits per number, per client
   address and across the server, and when the `VerificationGate` allows. Failed attempts are
   limited per client address too, across all numbers, so guessing cannot spread out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from server.domain import validation
from server.domain.auth import (
    PRIMARY_DEVICE_ID,
    Authenticator,
    Principal,
    as_caller,
    hash_token,
    new_token,
    typeable_secret,
)
from server.domain.clock import Clock
from server.domain.codes import AllowAll, ClientInfo, CodeSender, VerificationGate
from server.domain.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from server.domain.model import AccountKind, AccountRow, DeviceRow, VerificationRow
from server.domain.ports import ReadTransaction, Store, Transaction
from server.domain.ratelimit import Rate, RateLimiter, take_all

CODE_LENGTH = 6
LINKING_CODE_BYTES = 12  # 96 bits: unguessable within a code's few minutes of life
# Finished or expired verifications are kept this long for support questions, then purged.
VERIFICATION_RETENTION = 86400.0


@dataclass(frozen=True)
class AccountPolicy:
    """The account rules' limits. These defaults are the server's defaults (`server.config`
    takes them from here), so each reason is written once, here."""

    code_ttl: float = 600.0
    max_attempts: int = 5
    verification_rate: Rate = Rate(5, 3600.0)
    # Codes sent per client address (IPv4 address or IPv6 /64): a household or office behind
    # one NAT registers a few phones an hour, while one attacker's address can no longer send
    # more than 20 SMS an hour (480 a day) to numbers of its choosing.
    verification_ip_rate: Rate = Rate(20, 3600.0)
    # Codes sent by the whole server: far more than a self-hosted server registers in an hour,
    # and a ceiling on the SMS bill of an attack from many addresses (at most 24,000 a day)
    # until the operator notices. A large deployment raises it.
    verification_global_rate: Rate = Rate(1000, 3600.0)
    # Wrong codes per client address, across all numbers (a correct code gives its attempt
    # back): three tries for every code an address may request, while a guesser spreading
    # guesses over many numbers tries at most 60 of the 10^6 codes an hour.
    verification_attempt_ip_rate: Rate = Rate(60, 3600.0)
    lookup_rate: Rate = Rate(100, 60.0)
    linking_code_ttl: float = 600.0
    max_devices: int = 6
    test_numbers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PendingVerification:
    verification_id: str
    expires_at: float
    code_length: int


@dataclass(frozen=True)
class Credentials:
    """What a newly registered or linked device needs; the token is shown only here."""

    account_id: str
    device_id: int
    auth_token: str
    reregistered: bool = False


@dataclass(frozen=True)
class AccountView:
    account_id: str
    kind: AccountKind
    phone_number: str | None  # only for the account itself
    created_at: float
    device_ids: list[int]


@dataclass(frozen=True)
class _WrongCode:
    attempts_left: int


def _insert_device(tx: Transaction, device: DeviceRow, token: str, max_devices: int) -> None:
    """Insert a device within the account's limit: storage takes the slot and inserts in one
    conditional step (ports guarantee 11), so the refusal holds against concurrent links."""
    if not tx.insert_device(device, hash_token(token), max_devices):
        raise ResourceExhausted(
            f"the account already has {max_devices} devices, the most allowed; remove one first"
        )


def register_number(
    tx: Transaction,
    phone: str,
    kind: AccountKind,
    device_name: str,
    token: str,
    now: float,
    max_devices: int,
) -> Credentials:
    """Register a verified number inside the caller's transaction: create its account, or
    re-register the one it has (rule 2), and make `token` the credential of its device 1.

    The lookup is only a hint: when the insert finds the number taken by a concurrent writer,
    the registration continues as a re-registration, never as an INTERNAL error."""
    existing = tx.get_account_by_phone(phone)
    if existing is None:
        account_id = str(uuid.uuid4())
        if not tx.insert_account(AccountRow(account_id, phone, kind, now)):
            # Another writer registered the number since the read above (guarantee 13):
            # the number has an account now, so this becomes its re-registration.
            existing = tx.get_account_by_phone(phone)
            if existing is None:
                raise Aborted(
                    "the number's account was deleted while this registration ran; "
                    "call CompleteVerification again"
                )
    if existing is not None:
        if existing.kind != kind:
            raise FailedPrecondition(
                f"{phone[:3]}… is registered as a {existing.kind.name.lower()} "
                f"account; register with that kind, or delete the account first"
            )
        account_id = existing.account_id
        tx.delete_all_devices(account_id)
    device = DeviceRow(account_id, PRIMARY_DEVICE_ID, device_name, now, now)
    # The count was just reset (or starts at 0), so the primary device always has a slot.
    _insert_device(tx, device, token, max_devices)
    return Credentials(account_id, PRIMARY_DEVICE_ID, token, reregistered=existing is not None)


def _code_hash(verification_id: str, code: str) -> bytes:
    return hashlib.sha256(f"{verification_id}:{code}".encode()).digest()


class AccountRegistry:
    def __init__(
        self,
        db: Store,
        clock: Clock,
        authenticator: Authenticator,
        code_sender: CodeSender,
        policy: AccountPolicy,
        gate: VerificationGate | None = None,
        *,
        shared_limits: bool = False,
    ) -> None:
        """`shared_limits`: replicas share the database, and the limits' buckets live in it."""
        self._db = db
        self._clock = clock
        self._auth = authenticator
        self._sender = code_sender
        self._gate: VerificationGate = gate or AllowAll()
        self.policy = policy
        shared = db if shared_limits else None
        self._verify_limit = RateLimiter(
            policy.verification_rate, clock, "verification codes for this number", shared=shared
        )
        self._verify_ip_limit = RateLimiter(
            policy.verification_ip_rate,
            clock,
            "verification codes requested from your address",
            shared=shared,
        )
        self._verify_global_limit = RateLimiter(
            policy.verification_global_rate,
            clock,
            "verification codes sent by this server to all numbers",
            shared=shared,
        )
        self._attempt_ip_limit = RateLimiter(
            policy.verification_attempt_ip_rate,
            clock,
            "failed verification attempts from your address",
            shared=shared,
        )
        self._lookup_limit = RateLimiter(
            policy.lookup_rate, clock, "account lookups", shared=shared
        )
        for number, code in policy.test_numbers.items():
            validation.phone_number(number, field="test number", allow=(number,))
            validation.digits(code, field=f"test code of {number}", length=CODE_LENGTH)

    # -- verification and registration ------------------------------------------------------

    async def start_verification(
        self, phone_number: str, client: ClientInfo
    ) -> PendingVerification:
        """Send a code, if every limit and the gate allow it.

        Test numbers are the operator's own demo numbers: no code is sent, so neither limits nor
        the gate apply. For other numbers the order matters: the asker's own address budget
        first (it also shields the gate's backend from floods), then the gate, and only then the
        budgets others share (the number's, the server's), taken together or not at all, so
        requests refused earlier never use up a victim's number or everyone's ceiling.
        """
        phone = validation.phone_number(phone_number, allow=self.policy.test_numbers)
        fixed_code = self.policy.test_numbers.get(phone)
        if fixed_code is None:
            await self._verify_ip_limit.take(client.address)
            await self._gate.check(phone, client)
            await take_all(((self._verify_limit, phone), (self._verify_global_limit, "")))
        code = fixed_code or f"{secrets.randbelow(10**CODE_LENGTH):0{CODE_LENGTH}d}"
        now = self._clock.now()
        vid = str(uuid.uuid4())
        row = VerificationRow(
            verification_id=vid,
            phone_number=phone,
            code_hash=_code_hash(vid, code),
            created_at=now,
            expires_at=now + self.policy.code_ttl,
            attempts=0,
            completed=False,
        )

        def save(tx: Transaction) -> None:
            tx.delete_verifications_expired_before(now - VERIFICATION_RETENTION)
            tx.insert_verification(row)

        await self._db.write(save)
        if fixed_code is None:
            await self._sender.send(phone, code, row.verification_id)
        return PendingVerification(row.verification_id, row.expires_at, CODE_LENGTH)

    async def complete_verification(
        self,
        verification_id: str,
        code: str,
        device_name: str,
        kind: AccountKind | None,
        client: ClientInfo,
    ) -> Credentials:
        """Check the code and register. Every well-formed attempt takes one of the client
        address's attempts (whatever the verification) and only a correct code gives it back,
        so guessing across many numbers from one address is bounded, typing the code is not."""
        vid = validation.uuid_string(verification_id, field="verification_id")
        code = validation.digits(code, field="code", length=CODE_LENGTH)
        name = validation.display_name(device_name, field="device_name")
        if kind is None:
            raise InvalidArgument(
                "account_kind is required: ACCOUNT_KIND_PERSON or ACCOUNT_KIND_BUSINESS"
            )
        await self._attempt_ip_limit.take(client.address)
        token = new_token()
        now = self._clock.now()
        policy = self.policy

        def complete(tx: Transaction) -> Credentials | _WrongCode:
            v = tx.get_verification(vid)
            if v is None:
                raise NotFound(f"no verification {vid}; call StartVerification first")
            if v.completed:
                raise FailedPrecondition(
                    "this verification was already used; call StartVerification for a new code"
                )
            if now >= v.expires_at:
                raise FailedPrecondition(
                    f"the code expired {now - v.expires_at:.0f} s ago (codes last "
                    f"{policy.code_ttl:.0f} s); call StartVerification for a new one"
                )
            if v.attempts >= policy.max_attempts:
                raise ResourceExhausted(
                    f"too many wrong codes ({policy.max_attempts}); call StartVerification "
                    "for a new code"
                )
            if not hmac.compare_digest(v.code_hash, _code_hash(vid, code)):
                # The check above read a snapshot; the conditional UPDATE decides (rule 1).
                attempts = tx.add_verification_attempt(vid, policy.max_attempts)
                return _WrongCode(policy.max_attempts - (attempts or policy.max_attempts))
            if not tx.complete_verification(vid):
                raise FailedPrecondition(
                    "this verification was already used; call StartVerification for a new code"
                )
            return register_number(tx, v.phone_number, kind, name, token, now, policy.max_devices)

        outcome = await self._db.write(complete)
        if isinstance(outcome, _WrongCode):
            if outcome.attempts_left == 0:
                raise ResourceExhausted(
                    "wrong code, and that was the last attempt; call StartVerification for a "
                    "new code"
                )
            raise PermissionDenied(
                f"wrong code; {outcome.attempts_left} attempt(s) left for this verification"
            )
        await self._attempt_ip_limit.give_back(client.address)
        if outcome.reregistered:
            self._auth.forget_account(outcome.account_id)
        return outcome

    # -- account and devices ---------------------------------------------------------------

    async def get_account(self, caller: Principal, account_id: str) -> AccountView:
        target = (
            caller.account_id
            if not account_id
            else validation.uuid_string(account_id, field="account_id")
        )

        def load(tx: ReadTransaction) -> tuple[AccountRow | None, list[int]]:
            row = tx.get_account(target)
            return row, [d.device_id for d in tx.list_devices(target)] if row else []

        row, device_ids = await self._db.read(load)
        if row is None:
            raise NotFound(f"no account {target}")
        own = row.account_id == caller.account_id
        return AccountView(
            row.account_id,
            row.kind,
            row.phone_number if own else None,
            row.created_at,
            device_ids,
        )

    async def list_devices(self, caller: Principal) -> list[DeviceRow]:
        return await self._db.read(lambda tx: tx.list_devices(caller.account_id))

    async def create_linking_code(self, caller: Principal) -> tuple[str, float]:
        if not caller.is_primary:
            raise PermissionDenied("only the primary device (device 1) can link new devices")
        code = typeable_secret(LINKING_CODE_BYTES)
        now = self._clock.now()
        expires_at = now + self.policy.linking_code_ttl

        def save(tx: Transaction) -> None:
            tx.delete_linking_codes_expired_before(now)
            tx.insert_linking_code(hash_token(code), caller.account_id, expires_at)

        await self._db.write(as_caller(caller, save))
        return code, expires_at

    async def link_device(self, linking_code: str, device_name: str) -> Credentials:
        if not linking_code or len(linking_code) > 64:
            raise InvalidArgument("linking_code is required: the code from CreateLinkingCode")
        name = validation.display_name(device_name, field="device_name")
        token = new_token()
        now = self._clock.now()
        max_devices = self.policy.max_devices

        def link(tx: Transaction) -> Credentials:
            taken = tx.take_linking_code(hash_token(linking_code))
            if taken is None:
                raise NotFound(
                    "unknown or already used linking code; create a new one on the primary device"
                )
            account_id, expires_at = taken
            if now >= expires_at:
                raise FailedPrecondition(
                    "the linking code expired; create a new one on the primary device"
                )
            device_id = tx.allocate_device_id(account_id)
            # A refusal rolls back the whole job, the id allocation and taken code included.
            _insert_device(tx, DeviceRow(account_id, device_id, name, now, now), token, max_devices)
            return Credentials(account_id, device_id, token)

        return await self._db.write(link)

    async def remove_device(self, caller: Principal, device_id: int) -> None:
        device_id = validation.device_id(device_id)
        if device_id == PRIMARY_DEVICE_ID:
            raise FailedPrecondition(
                "the primary device cannot be removed; use DeleteAccount, or register the "
                "number again on a new phone"
            )
        if not caller.is_primary and device_id != caller.device_id:
            raise PermissionDenied(
                "a linked device may remove only itself; ask the primary device to remove others"
            )
        removed = await self._db.write(
            as_caller(caller, lambda tx: tx.delete_device(caller.account_id, device_id))
        )
        if not removed:
            raise NotFound(f"the account has no device {device_id}; see ListDevices")
        self._auth.forget_device(caller.account_id, device_id)

    async def delete_account(self, caller: Principal) -> None:
        if not caller.is_primary:
            raise PermissionDenied("only the primary device (device 1) can delete the account")
        await self._db.write(as_caller(caller, lambda tx: tx.delete_account(caller.account_id)))
        self._auth.forget_account(caller.account_id)

    async def lookup(self, caller: Principal, phone_number: str) -> tuple[str, AccountKind]:
        await self._lookup_limit.take(caller.account_id)
        phone = validation.phone_number(phone_number, allow=self.policy.test_numbers)
        row = await self._db.read(lambda tx: tx.get_account_by_phone(phone))
        if row is None:
            raise NotFound("no account is registered with that number")
        return row.account_id, row.kind
