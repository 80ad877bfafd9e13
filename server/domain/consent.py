"""Consent: the user decides which businesses may message them, and who may not at all.

Rules kept here, and what enforces each with concurrent writers (`server.domain.consent_model`
lists the backend's guarantees 8-10):
1. A user-verified opt-in (OptIn, from the user's own device) is never downgraded by a later
   business assertion (RecordOptIn): the business's upsert changes no user-verified row
   (guarantee 8, a condition in the upsert itself).
2. The user's opt-out wins over every opt-in, whoever recorded it, until the user opts in
   again themselves: RecordOptIn never clears `opted_out_at`; only OptIn does (guarantee 8).
3. A business-asserted opt-in for a number with no account is kept by number and applies once
   the number registers: consent is keyed by the number (see `consent_model`), so there is
   nothing to copy at registration and the lookup is the same primary key either way.
4. A block is between two accounts, any kinds, never one's own; it is enforced on every later
   send by `server.domain.admission.BlockRule` (one primary-key probe per recipient and job).
5. Every write is an idempotent upsert on a unique key: repeating a call changes nothing more
   (a repeated opt-out or block keeps its first time, which the quality rating counts).
6. Only a BUSINESS account records opt-ins; opt-ins and opt-outs name a business.

`may_start` is the question the sending rules ask ("may business B start a conversation in
category C with user U?"): three primary-key lookups, no scan (`server.domain.sending`). A
block or opt-out naming a business is followed by `after_signal(business)`, the quality
review of the sending rules (blocks and opt-outs are what the quality rating counts).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from enum import Enum

from server.domain import validation
from server.domain.auth import Principal, as_caller
from server.domain.clock import Clock
from server.domain.consent_model import BlockRow, ConsentRow, OptInKind, OptInSource
from server.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from server.domain.model import AccountKind, AccountRow, MessageCategory
from server.domain.ports import ReadTransaction, Store, Transaction

# Evidence is a pointer (a form URL and a timestamp, a receipt number), not a document.
MAX_EVIDENCE_CHARS = 512
CONSENT_CATEGORIES = tuple(c for c in MessageCategory if c != MessageCategory.UNSPECIFIED)
_CATEGORY_NAMES = ", ".join(c.name for c in CONSENT_CATEGORIES)
_SOURCES = tuple(s for s in OptInSource if s != OptInSource.UNSPECIFIED)
# What a blocked sender is told: that the send was refused, and nothing about when or why.
BLOCKED_MESSAGE = "the recipient does not accept messages from you"


class StartVerdict(Enum):
    """The answer of `may_start`, with the reason when it is no."""

    OK = "ok"
    NO_OPT_IN = "no opt-in"
    OPTED_OUT = "opted out"
    BLOCKED = "blocked"


@dataclass(frozen=True)
class BusinessConsent:
    """What one user allowed one business: rows in category order, the block if any."""

    business_account_id: str
    phone_number: str
    categories: list[ConsentRow]
    blocked_at: float | None


def categories(values: Iterable[int], *, field: str = "categories") -> list[int]:
    """The distinct categories named, in order; at least one, each a real category."""
    out: set[int] = set()
    for i, value in enumerate(values):
        if value not in CONSENT_CATEGORIES:
            raise InvalidArgument(
                f"{field}[{i}] is {value}, not a message category: use {_CATEGORY_NAMES}"
            )
        out.add(value)
    if not out:
        raise InvalidArgument(f"{field} is empty: name at least one of {_CATEGORY_NAMES}")
    return sorted(out)


def may_start(
    tx: ReadTransaction, business_account_id: str, user_account_id: str, category: int
) -> StartVerdict:
    """Whether a business may start a conversation in `category` with a user, and if not,
    why: the user's block first, then the opt-out, then the opt-in. Three primary-key
    lookups (the user's number, the block, the consent row)."""
    if tx.get_block(user_account_id, business_account_id) is not None:
        return StartVerdict.BLOCKED
    user = tx.get_account(user_account_id)
    if user is None:
        return StartVerdict.NO_OPT_IN
    row = tx.consent(user.phone_number, business_account_id, category)
    if row is None:
        return StartVerdict.NO_OPT_IN
    if row.opted_out_at is not None:
        return StartVerdict.OPTED_OUT
    if row.kind == OptInKind.NONE:
        return StartVerdict.NO_OPT_IN
    return StartVerdict.OK


def _own_account(tx: ReadTransaction, caller: Principal) -> AccountRow:
    account = tx.get_account(caller.account_id)
    if account is None:  # the credential check of the same transaction passed: cannot happen
        raise NotFound("your account no longer exists")
    return account


def _business(tx: ReadTransaction, caller: Principal, account_id: str) -> AccountRow:
    """The named account, which must be a business other than the caller."""
    if account_id == caller.account_id:
        raise InvalidArgument("business_account_id is your own account; name another business")
    account = tx.get_account(account_id)
    if account is None:
        raise NotFound(f"no account {account_id}; look the business's number up first")
    if account.kind != AccountKind.BUSINESS:
        raise FailedPrecondition(
            f"account {account_id} is a person, not a business: opt-in and opt-out apply to"
            " businesses; to stop a person's messages, block them (BlockAccount)"
        )
    return account


def _consent_for(
    tx: ReadTransaction, user_phone: str, business: AccountRow, blocker: str
) -> BusinessConsent:
    rows = [
        row
        for category in CONSENT_CATEGORIES
        if (row := tx.consent(user_phone, business.account_id, category)) is not None
    ]
    block = tx.get_block(blocker, business.account_id)
    return BusinessConsent(
        business.account_id,
        business.phone_number,
        rows,
        None if block is None else block.blocked_at,
    )


# (transaction, the user who blocks, the blocked account, now) -> what to do after the commit.
BlockHook = Callable[[Transaction, str, str, float], Callable[[], None]]


class ConsentBook:
    """The consent RPCs' domain: opt-ins, opt-outs, blocks and the user's list of them."""

    def __init__(
        self,
        db: Store,
        clock: Clock,
        test_numbers: Collection[str] = (),
        *,
        after_signal: Callable[[str], Awaitable[None]] | None = None,
        on_block: BlockHook | None = None,
    ) -> None:
        """`on_block` runs inside a block's transaction (metering: the blocked account's
        messages still on their way are settled as failed and their prices released) and
        returns what to do once it committed."""
        self._db = db
        self._clock = clock
        self._test_numbers = test_numbers
        self._after_signal = after_signal
        self._on_block = on_block

    async def _signal(self, account_id: str) -> None:
        """A block or opt-out of `account_id` was committed: let the quality review see it."""
        if self._after_signal is not None:
            await self._after_signal(account_id)

    async def opt_in(
        self, caller: Principal, business_account_id: str, wanted: Iterable[int]
    ) -> BusinessConsent:
        validation.uuid_string(business_account_id, field="business_account_id")
        chosen = categories(wanted)
        now = self._clock.now()
        return await self._change(
            caller,
            business_account_id,
            lambda tx, phone, business_id: tx.opt_in_by_user(phone, business_id, chosen, now),
        )

    async def _change(
        self,
        caller: Principal,
        business_account_id: str,
        change: Callable[[Transaction, str, str], None],
    ) -> BusinessConsent:
        """Apply `change(tx, caller's number, business id)` to the caller's consent for a
        business, and return that consent as it now stands."""

        def write(tx: Transaction) -> BusinessConsent:
            business = _business(tx, caller, business_account_id)
            phone = _own_account(tx, caller).phone_number
            change(tx, phone, business.account_id)
            return _consent_for(tx, phone, business, caller.account_id)

        return await self._db.write(as_caller(caller, write))

    async def record_opt_in(
        self,
        caller: Principal,
        phone_number: str,
        source: int,
        evidence: str,
        wanted: Iterable[int],
    ) -> None:
        phone = validation.phone_number(phone_number, allow=self._test_numbers)
        if source not in _SOURCES:
            raise InvalidArgument(
                "source must say where the person gave the number: "
                + ", ".join(s.name for s in _SOURCES)
            )
        if not evidence.strip():
            raise InvalidArgument(
                "evidence is empty: say what shows the opt-in, e.g. the form's URL and when it"
                " was submitted"
            )
        if len(evidence) > MAX_EVIDENCE_CHARS:
            raise InvalidArgument(
                f"evidence is {len(evidence)} characters; at most {MAX_EVIDENCE_CHARS} are"
                " allowed (store the document yourself and give its reference)"
            )
        chosen = categories(wanted)
        now = self._clock.now()

        def write(tx: Transaction) -> None:
            business = _own_account(tx, caller)
            if business.kind != AccountKind.BUSINESS:
                raise FailedPrecondition(
                    "only business accounts can record opt-ins; register the business's number"
                    " as a business account (account_kind BUSINESS, `parley register --business`)"
                )
            if phone == business.phone_number:
                raise InvalidArgument("phone_number is your own number; give the person's")
            tx.opt_in_by_business(phone, business.account_id, chosen, source, evidence, now)

        await self._db.write(as_caller(caller, write))

    async def opt_out(
        self, caller: Principal, business_account_id: str, wanted: Iterable[int], everything: bool
    ) -> BusinessConsent:
        validation.uuid_string(business_account_id, field="business_account_id")
        named = list(wanted)
        if everything and named:
            raise InvalidArgument("give either categories or all, not both")
        chosen = list(CONSENT_CATEGORIES) if everything else categories(named)
        now = self._clock.now()
        consent = await self._change(
            caller,
            business_account_id,
            lambda tx, phone, business_id: tx.opt_out(phone, business_id, chosen, now),
        )
        await self._signal(business_account_id)
        return consent

    def _other_account(self, caller: Principal, account_id: str, verb: str) -> str:
        account_id = validation.uuid_string(account_id, field="account_id")
        if account_id == caller.account_id:
            raise InvalidArgument(f"you cannot {verb} your own account; name another account")
        return account_id

    async def block(self, caller: Principal, account_id: str) -> BlockRow:
        blocked = self._other_account(caller, account_id, "block")
        now = self._clock.now()

        def write(tx: Transaction) -> tuple[BlockRow, Callable[[], None] | None]:
            if tx.get_account(blocked) is None:
                raise NotFound(f"no account {blocked}")
            row = tx.block(caller.account_id, blocked, now)
            hook = self._on_block
            return row, None if hook is None else hook(tx, caller.account_id, blocked, now)

        row, after_commit = await self._db.write(as_caller(caller, write))
        if after_commit is not None:
            after_commit()
        await self._signal(blocked)
        return row

    async def unblock(self, caller: Principal, account_id: str) -> bool:
        blocked = self._other_account(caller, account_id, "unblock")

        def write(tx: Transaction) -> bool:
            if tx.get_account(blocked) is None:
                raise NotFound(f"no account {blocked}")
            return tx.unblock(caller.account_id, blocked)

        return await self._db.write(as_caller(caller, write))

    async def my_businesses(self, caller: Principal) -> list[BusinessConsent]:
        """Every business the caller has a consent row or a block for, by number."""

        def read(tx: ReadTransaction) -> list[BusinessConsent]:
            phone = _own_account(tx, caller).phone_number
            rows: dict[str, list[ConsentRow]] = {}
            for row in tx.consents_of(phone):
                rows.setdefault(row.business_account_id, []).append(row)
            blocks = {b.blocked_account_id: b.blocked_at for b in tx.blocks_by(caller.account_id)}
            out = []
            for account_id in rows.keys() | blocks.keys():
                account = tx.get_account(account_id)
                if account is None or account.kind != AccountKind.BUSINESS:
                    continue  # a blocked person: not a business
                out.append(
                    BusinessConsent(
                        account_id,
                        account.phone_number,
                        sorted(rows.get(account_id, []), key=lambda r: r.category),
                        blocks.get(account_id),
                    )
                )
            return sorted(out, key=lambda b: b.phone_number)

        return await self._db.read(read)
