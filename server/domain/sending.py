"""The sending rules of businesses: templates, opt-in, the 24-hour window, limits, quality.

Checked on every send by a BUSINESS account, as the last admission rule
(`server.domain.admission`), from metadata the server has: who sends to whom, when, and the
cleartext template id. None needs the plaintext. The rules, in the order they are checked:

1. **Category from the template.** A business send naming `template_id` must name an
   APPROVED, unpaused template of the sending business (else FAILED_PRECONDITION saying which:
   unknown, not yours, pending, rejected, paused); its category is the template's, so a
   client-given category that differs is INVALID_ARGUMENT. A send without a template is
   free-form, category SERVICE. The stored envelope carries the server's category, the
   template's id and name (the recipient's client renders the message from that template).
2. **The 24-hour customer-service window.** Every message of a person to a business opens or
   refreshes the window of (business, person) (a deferred write of the person's send; an
   upsert keeping the latest time). Free-form sends need an open window: outside it they fail
   FAILED_PRECONDITION saying that a template is needed and when the window closed. An open
   72-hour *entry window* (a chat the user started from one of the business's chat links,
   `server.domain.links`) counts as an open window for every rule here.
3. **Starting a conversation needs consent.** A template send needs `consent.may_start`: the
   user's opt-in covering the template's category, no opt-out of it, no block. One exception,
   as on WhatsApp: inside an open window (the user is talking to the business now) UTILITY
   and AUTHENTICATION templates need no opt-in (an order update or a login code the user is
   waiting for); MARKETING always needs it. A block always refuses (admission's BlockRule).
4. **Messaging limits.** A template send to a user with no open window *starts a
   conversation*; a business may start conversations with at most its tier's number of unique
   users per rolling 24 h (a user counts once per 24 h: a second template the same day is not
   a new start). The ladder is a setting (default 250, 2,000, 10,000, 100,000, unlimited); a
   business moves up one step when, over the last 7 days, it started conversations with at
   least half its limit and its quality is not RED. At most `marketing_per_user` MARKETING
   templates per user per 24 h from one business; at most `business_send_rate` sends per
   business (the in-memory token bucket). Refusals are RESOURCE_EXHAUSTED with retry_after.
5. **Quality** GREEN / YELLOW / RED (`rate_quality`), from the blocks and opt-outs of the last
   7 days relative to users contacted. When it turns RED (re-rated after every block and
   opt-out of the business, and on GetBusinessStatus) every approved template is paused
   (`pause_templates`, reason "quality") and the business is marked RED, so it neither sends
   templates (even ones approved later) nor gets promoted; it recovers when the signals of the
   last 7 days fall below the threshold.

A person's messages are never limited by these rules (they open windows), and sends between
persons are untouched: for them the rule costs one memoised account lookup per job.

Counting with concurrent writers (`sending_model` S1-S3): a start is one conditional upsert
on (business, user), and only the writer whose upsert changed the row bumps the hour bucket,
so a user is counted once. The limit itself is checked before the write, so concurrent
writers on several replicas may overshoot it by at most one start each; the usage is summed
from hour buckets, so a start counts for 24 h to 25 h (never less). The marketing cap per user
is counted the same way (the times of the last 24 h, read in the send's transaction, then one
row recorded per send): two replicas sending to the same user at the same moment may each see
room for one more, so it too may be overshot by at most one send per concurrent writer. A
strict cap with several writers needs a per-(business, user) slot row taken by a conditional
write; the PostgreSQL backend is where that becomes worth its cost.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import TYPE_CHECKING, NamedTuple, cast

from server.domain import validation
from server.domain.auth import Principal
from server.domain.clock import Clock
from server.domain.consent import BLOCKED_MESSAGE, StartVerdict, may_start
from server.domain.directory_model import (
    DirectoryReadTransaction,
    DirectoryStore,
    DirectoryTransaction,
    PauseReason,
    ReviewStatus,
)
from server.domain.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from server.domain.links import entry_window_open
from server.domain.model import AccountKind, MessageCategory
from server.domain.ports import ReadTransaction, Transaction
from server.domain.profiles import as_business, require_business_kind
from server.domain.ratelimit import Buckets, Grant, Rate, RateLimiter
from server.domain.sending_model import TemplateFacts

if TYPE_CHECKING:  # admission imports this module; only its types are needed here
    from server.domain.admission import DeferredWrite, Draft, SendJob, Stamp

HOUR = 3600
DAY = 86_400.0
WEEK = 7 * DAY
_STATUS_NAMES: dict[int, str] = {
    ReviewStatus.PENDING: "pending review",
    ReviewStatus.REJECTED: "rejected",
}
# Quality thresholds. The share is (blocks + opt-outs in 7 days) / users contacted in 7 days,
# with at least QUALITY_MIN_SAMPLE users in the denominator so that one unhappy user of a new
# business does not stop it: 1 in 20 (5 %) is a warning, 2 in 20 (10 %) stops its templates.
# Blocks and opt-outs are deliberate acts (unlike an ignored message), and a business that
# messages only people who asked for it sees far fewer than one in twenty; at one in ten the
# messages are plainly unwanted, and pausing protects the users before more are sent.
QUALITY_MIN_SAMPLE = 20
YELLOW_SHARE = 0.05
RED_SHARE = 0.10
FREE_FORM_CATEGORY = MessageCategory.SERVICE
NO_OPT_IN_INSIDE_WINDOW = frozenset({MessageCategory.UTILITY, MessageCategory.AUTHENTICATION})


def parse_tiers(text: str) -> tuple[int | None, ...]:
    """Parse a ladder "250,2000,10000,100000,unlimited": increasing counts, optionally ending
    with "unlimited" (None)."""
    parts = [p.strip().lower() for p in text.split(",")]
    out: list[int | None] = []
    for i, part in enumerate(parts):
        if part == "unlimited" and i == len(parts) - 1 and i > 0:
            out.append(None)
        elif re.fullmatch(r"[0-9][0-9_]*", part) and int(part) > 0:
            out.append(int(part))
        else:
            raise ValueError(
                f"tier ladder {text!r} must be increasing positive counts separated by commas,"
                " optionally ending with 'unlimited', e.g. 250,2000,10000,100000,unlimited"
            )
    counts = [n for n in out if n is not None]
    if counts != sorted(set(counts)):
        raise ValueError(f"tier ladder {text!r} must increase from step to step")
    return tuple(out)


def format_tiers(tiers: Sequence[int | None]) -> str:
    return ",".join("unlimited" if n is None else str(n) for n in tiers)


@dataclass(frozen=True)
class SendingPolicy:
    # Unique users a business may start conversations with per rolling 24 h, step by step:
    # WhatsApp's ladder, so a business moving here keeps the limits it knows.
    tiers: tuple[int | None, ...] = (250, 2_000, 10_000, 100_000, None)
    # Marketing templates one business may send one user per 24 h: a user hears at most
    # twice a day from a shop, however many campaigns it runs.
    marketing_per_user: int = 2
    # Sends per business: WhatsApp Cloud API's default throughput, and a ceiling on how fast
    # a hijacked business account can spray messages.
    business_send_rate: Rate = Rate(80, 1.0)

    def limit(self, tier: int) -> int | None:
        return self.tiers[min(tier, len(self.tiers) - 1)]


class Quality(IntEnum):
    """proto `QualityRating`."""

    UNSPECIFIED = 0
    GREEN = 1
    YELLOW = 2
    RED = 3


@dataclass(frozen=True)
class QualityRating:
    quality: Quality
    blocks: int
    opt_outs: int
    contacted: int
    reason: str


def _hour(t: float) -> int:
    return int(t // HOUR)


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def rate_quality(tx: ReadTransaction, business: str, now: float) -> QualityRating:
    """The quality of the last 7 days: two index-range counts and at most 169 hour buckets."""
    blocks, opt_outs = tx.negative_signals_since(business, now - WEEK)
    contacted = sum(n for _, n in tx.starts_by_hour(business, _hour(now - WEEK)))
    negatives = blocks + opt_outs
    share = negatives / max(contacted, QUALITY_MIN_SAMPLE)
    quality = (
        Quality.RED
        if share >= RED_SHARE
        else Quality.YELLOW
        if share >= YELLOW_SHARE
        else Quality.GREEN
    )
    counted = (
        f"{blocks} blocks and {opt_outs} opt-outs in the last 7 days against {contacted} users"
        f" contacted (counted as at least {QUALITY_MIN_SAMPLE}): {share:.0%}"
    )
    reason = {
        Quality.GREEN: f"{counted}, below the {YELLOW_SHARE:.0%} warning level",
        Quality.YELLOW: (
            f"{counted}, at or above {YELLOW_SHARE:.0%}; at {RED_SHARE:.0%} your templates are"
            " paused: message only users who asked for it"
        ),
        Quality.RED: (
            f"{counted}, at or above {RED_SHARE:.0%}: your templates are paused and your limit"
            " is not raised until it falls below that"
        ),
    }[quality]
    return QualityRating(quality, blocks, opt_outs, contacted, reason)


def usage(tx: ReadTransaction, business: str, now: float, span: float) -> tuple[int, float | None]:
    """(conversations started in the last `span` seconds, when the oldest counted hour stops
    counting — None when there is none)."""
    buckets = tx.starts_by_hour(business, _hour(now - span))
    if not buckets:
        return 0, None
    return sum(n for _, n in buckets), (buckets[0][0] + 1) * HOUR + span


# -- deferred writes -----------------------------------------------------------------------


class OpenWindow(NamedTuple):
    business: str
    user: str
    at: float

    def apply(self, tx: Transaction) -> None:
        tx.open_window(self.business, self.user, self.at)


class StartConversation(NamedTuple):
    business: str
    user: str
    at: float
    policy: SendingPolicy

    def apply(self, tx: Transaction) -> None:
        if tx.start_conversation(self.business, self.user, self.at, DAY):
            maybe_promote(tx, self.business, self.at, self.policy)


class RecordMarketing(NamedTuple):
    business: str
    user: str
    message_id: int
    at: float

    def apply(self, tx: Transaction) -> None:
        tx.record_marketing(self.business, self.user, self.message_id, self.at)


def maybe_promote(tx: Transaction, business: str, now: float, policy: SendingPolicy) -> bool:
    """Move the business one step up when it started conversations with at least half its
    limit over the last 7 days and its quality is not RED (checked after each counted start)."""
    tier, red_since = tx.business_standing(business)
    limit = policy.limit(tier)
    if limit is None or tier >= len(policy.tiers) - 1 or red_since is not None:
        return False
    used, _ = usage(tx, business, now, WEEK)
    if used * 2 < limit:
        return False
    if rate_quality(tx, business, now).quality == Quality.RED:
        return False
    return tx.promote_tier(business, tier, now)


# -- the rule ------------------------------------------------------------------------------


def _template_refusal(template_id: str, facts: TemplateFacts | None, business: str) -> str | None:
    """Why the template cannot be sent by `business`, or None when it can."""
    if facts is None:
        return (
            f"template {template_id} does not exist; list your templates (ListTemplates) and"
            " send one that is approved"
        )
    if facts.business_account_id != business:
        return f"template {template_id} is not yours; send one of your own approved templates"
    if facts.status != ReviewStatus.APPROVED:
        state = _STATUS_NAMES.get(facts.status, "not approved")
        return (
            f"template {facts.name!r} ({template_id}) is {state}; only an APPROVED template can"
            " be sent (see GetTemplate for its review)"
        )
    if facts.pause_reason == PauseReason.QUALITY:
        return (
            f"template {facts.name!r} ({template_id}) is paused because your quality rating"
            " turned RED; GetBusinessStatus says why and re-rates it"
        )
    if facts.pause_reason:
        return (
            f"template {facts.name!r} ({template_id}) is paused; unpause it (UnpauseTemplate)"
            " to send it"
        )
    return None


class _Verdict(NamedTuple):
    category: MessageCategory
    facts: TemplateFacts | None
    window_open: bool


def _try(compute: Callable[[], _Verdict]) -> _Verdict | DomainError:
    """The verdict, or the refusal as a value (so a job memoises refusals too)."""
    try:
        return compute()
    except DomainError as exc:
        return exc


class BusinessRule:
    """Admission rule 8: the sending rules above, for sends by a business; a person's send to
    a business opens the window. The last rule, so once it passes the draft is admitted."""

    def __init__(
        self, policy: SendingPolicy, clock: Clock, *, shared: Buckets | None = None
    ) -> None:
        """`shared`: replicas share the database, and the send rate's buckets live in it."""
        self.policy = policy
        self._rate = RateLimiter(
            policy.business_send_rate, clock, "messages sent by this business", shared=shared
        )

    def prepare(self, job: SendJob, drafts: Sequence[Draft]) -> None:
        job.remember("drafts", "", drafts)  # counted only if a business's draft needs a token

    def check(self, draft: Draft, job: SendJob) -> Sequence[DeferredWrite]:
        if draft.to_self:
            return ()
        r = draft.request
        if job.caller_kind() != AccountKind.BUSINESS:
            if r.template_id:
                raise InvalidArgument(
                    "business.template_id is set, but only business accounts send templates;"
                    " leave it empty"
                )
            if r.online_only or job.account_kind(r.recipient_account_id) != AccountKind.BUSINESS:
                return ()
            sender = job.caller.account_id
            return (OpenWindow(r.recipient_account_id, sender, draft.message.server_ts),)
        return self._business_send(draft, job)

    def _admissible(self, draft: Draft, job: SendJob) -> _Verdict:
        """Rules 1-3 (template, window, consent) for a draft: the same for every draft of the
        job with the same recipient and metadata, so `_business_send` asks once per job."""
        r = draft.request
        business, user = job.caller.account_id, r.recipient_account_id
        now = draft.message.server_ts
        tx = job.tx
        # 1. The category, from the template.
        if r.template_id:
            facts = job.memo("template", r.template_id, lambda: tx.template_facts(r.template_id))
            refusal = _template_refusal(r.template_id, facts, business)
            if refusal is not None or facts is None:
                raise FailedPrecondition(refusal or "")
            category = MessageCategory(facts.category)
            if r.category and r.category != category:
                raise InvalidArgument(
                    f"business.category is {MessageCategory(r.category).name}, but template"
                    f" {facts.name!r} is {category.name}: the category comes from the approved"
                    " template; leave business.category unset"
                )
            if r.template_name and r.template_name != facts.name:
                raise InvalidArgument(
                    f"business.template_name is {r.template_name!r}, but template_id names"
                    f" {facts.name!r}; leave template_name empty (the server fills it)"
                )
            _, red_since = job.memo("standing", "", lambda: tx.business_standing(business))
            if red_since is not None:
                raise FailedPrecondition(
                    f"your templates are paused: your quality rating has been RED since"
                    f" {_when(red_since)}; GetBusinessStatus says why and re-rates it"
                )
        else:
            facts = None
            if r.template_name:
                raise InvalidArgument(
                    "business.template_name is set without business.template_id: give the"
                    " approved template's id"
                )
            category = FREE_FORM_CATEGORY
            if r.category and r.category != category:
                raise InvalidArgument(
                    f"business.category is {MessageCategory(r.category).name}, but a message"
                    " without a template is SERVICE: send an approved template (template_id)"
                    " for other categories"
                )
        # 2. The window: the customer-service window, or the entry window of a chat the user
        # started from one of the business's chat links (server.domain.links).
        opened = job.memo("window", user, lambda: tx.window_opened_at(business, user))
        window_open = opened is not None and now < opened + DAY
        if not window_open:
            entry = job.memo("entry", user, lambda: entry_window_open(tx, business, user, now))
            window_open = entry is not None
        if not window_open and (facts is None or r.online_only):
            what = "an online-only message" if r.online_only else "a free-form message"
            if opened is None:
                when = "this user has never written to you"
            else:
                when = f"the window closed at {_when(opened + DAY)}, 24 h after their last message"
            raise FailedPrecondition(
                f"{what} needs an open customer-service window, and {when}; send an approved"
                " template (template_id) to start a conversation"
            )
        # 3. Consent.
        if facts is not None and not (window_open and category in NO_OPT_IN_INSIDE_WINDOW):
            verdict = job.memo(
                "may_start", f"{user}/{category}", lambda: may_start(tx, business, user, category)
            )
            if verdict == StartVerdict.BLOCKED:
                raise PermissionDenied(BLOCKED_MESSAGE)
            if verdict == StartVerdict.NO_OPT_IN:
                raise FailedPrecondition(
                    f"the user has not opted in to {category.name} messages from you; a"
                    f" {category.name} template needs their opt-in (they OptIn, or you"
                    " RecordOptIn where they gave their number)"
                )
            if verdict == StartVerdict.OPTED_OUT:
                raise FailedPrecondition(
                    f"the user opted out of {category.name} messages from you; only they can"
                    " opt in again"
                )
        return _Verdict(category, facts, window_open)

    def _business_send(self, draft: Draft, job: SendJob) -> Sequence[DeferredWrite]:
        r = draft.request
        business, user = job.caller.account_id, r.recipient_account_id
        now = draft.message.server_ts
        key = (user, r.template_id, r.category, r.template_name, r.online_only, now)
        # Drafts like one admitted before in this job without a deferred write (the usual
        # batch: one template to one person) take only a token: the verdict and the
        # conversation's start are what they were for that draft.
        quiet: dict[Hashable, Stamp] = job.memo("quiet", "", dict)
        stamp = quiet.get(key)
        if stamp is not None:
            self._token(job, business)
            job.stamps[draft.message.message_id] = stamp
            return ()
        verdict = job.memo("verdict", key, lambda: _try(lambda: self._admissible(draft, job)))
        if isinstance(verdict, DomainError):
            raise verdict
        category, facts, window_open = verdict
        writes: list[DeferredWrite] = []
        if not r.online_only:
            if facts is not None and not window_open:
                writes.extend(self._start(job, business, user, now))
            if category == MessageCategory.MARKETING:
                writes.append(self._marketing(job, business, user, draft.message.message_id, now))
        # 4. The business's send rate: last, so a refused send takes no token.
        # Online-only sends run in a read transaction and store nothing, so they are counted
        # in this replica's memory.
        if r.online_only:
            self._rate.check(business)
        else:
            self._token(job, business)
        job.stamp(draft, int(category), facts.name if facts else "", r.template_id)
        if not writes and not r.online_only and category != MessageCategory.MARKETING:
            # Nothing this draft asked for changes the next one's answer: a conversation
            # needed no start (or its start is remembered), and only MARKETING records each
            # message.
            quiet[key] = job.stamps[draft.message.message_id]
        # The job's deferred writes are applied after every draft was checked, so what this
        # draft counts is added to the job's memos: its later drafts see it without a read.
        for write in writes:
            if isinstance(write, StartConversation):
                job.remember("started", user, now)
                job.memo("usage", "", lambda: [0])[0] += 1
            elif isinstance(write, RecordMarketing):
                self._marketing_sent(job, business, user, now).append(now)
        return writes

    def _token(self, job: SendJob, business: str) -> None:
        """One of the business's send tokens for a stored draft, or its refusal. The job takes
        the tokens its stored drafts could need at once, at the first one that needs a token
        (a shared bucket is written in the job's own transaction, so a rolled-back job gives
        them back), and gives back the unused when its drafts are checked: one bucket update
        per job rather than per message, and a draft refused by an earlier step spends none."""
        grant = job.memo("tokens", "", lambda: self._grant(job, business))
        if not grant.held:
            raise self._rate.refusal(grant)
        grant.held -= 1

    def _grant(self, job: SendJob, business: str) -> Grant:
        drafts: Sequence[Draft] = job.memo("drafts", "", tuple)
        wanted = sum(1 for d in drafts if not d.to_self and not d.request.online_only)
        tx = cast(Transaction, job.tx)
        grant = self._rate.take_up_to(tx, business, max(1, wanted))

        def give_back() -> None:
            if grant.held:
                self._rate.give_back_in(tx, business, grant.held)
                grant.held = 0

        job.at_end(give_back)
        return grant

    def _start(self, job: SendJob, business: str, user: str, now: float) -> list[DeferredWrite]:
        started = job.memo("started", user, lambda: job.tx.conversation_started_at(business, user))
        if started is not None and started > now - DAY:
            return []  # the same conversation, started less than 24 h ago: not a new user
        tier, _ = job.memo("standing", "", lambda: job.tx.business_standing(business))
        limit = self.policy.limit(tier)
        if limit is not None:
            count, frees_at = job.memo("usage-read", "", lambda: usage(job.tx, business, now, DAY))
            extra = job.memo("usage", "", lambda: [0])[0]
            if count + extra >= limit:
                wait = max(1.0, (frees_at or now + DAY) - now)
                raise ResourceExhausted(
                    f"messaging limit reached: at tier {tier + 1} you may start conversations"
                    f" with {limit} unique users per 24 h, and you have (the limit rises as you"
                    f" use it with good quality); try again in {math.ceil(wait)} s",
                    retry_after=wait,
                )
        return [StartConversation(business, user, now, self.policy)]

    def _marketing(
        self, job: SendJob, business: str, user: str, message_id: int, now: float
    ) -> DeferredWrite:
        cap = self.policy.marketing_per_user
        sent = self._marketing_sent(job, business, user, now)
        if len(sent) >= cap:
            wait = max(1.0, sent[0] + DAY - now)
            raise ResourceExhausted(
                f"marketing limit reached: at most {cap} marketing templates per user per 24 h"
                f" from one business; try again in {math.ceil(wait)} s",
                retry_after=wait,
            )
        return RecordMarketing(business, user, message_id, now)

    def _marketing_sent(self, job: SendJob, business: str, user: str, now: float) -> list[float]:
        """Times of the marketing templates to the user in the last 24 h, oldest first: read
        once per job (at most `cap` rows), then added to as the job admits more."""
        cap = self.policy.marketing_per_user
        return job.memo(
            "marketing", user, lambda: job.tx.marketing_sent_since(business, user, now - DAY, cap)
        )


# -- the business's view: window and status ------------------------------------------------


class WindowKind(IntEnum):
    """proto `WindowKind`: which window lets the business send free-form now."""

    NONE = 0
    SERVICE = 1
    ENTRY = 2


@dataclass(frozen=True)
class WindowView:
    user_account_id: str
    opened_at: float | None  # the user's last message; None: never
    closes_at: float | None
    open: bool
    entry_opened_at: float | None = None  # the chat started from a chat link; None: never
    entry_closes_at: float | None = None
    entry_open: bool = False
    kind: WindowKind = WindowKind.NONE  # the open window closing last; NONE: none is open


@dataclass(frozen=True)
class BusinessStatus:
    tier: int  # 0-based step
    limit: int | None  # None: unlimited
    used_24h: int
    next_slot_at: float | None
    used_7d: int
    rating: QualityRating
    promotion: str
    tiers: tuple[int | None, ...]
    marketing_per_user: int
    send_rate: Rate


class SendingDesk:
    """The business's questions about its sending (GetConversationWindow, GetBusinessStatus)
    and the quality review after a block or opt-out."""

    def __init__(self, db: DirectoryStore, clock: Clock, policy: SendingPolicy) -> None:
        self._db = db
        self._clock = clock
        self.policy = policy

    async def window(self, caller: Principal, user_account_id: str) -> WindowView:
        user = validation.uuid_string(user_account_id, field="user_account_id")
        now = self._clock.now()

        def read(tx: DirectoryReadTransaction) -> WindowView:
            require_business_kind(tx, caller.account_id, "have customer-service windows")
            if tx.get_account(user) is None:
                raise NotFound(f"no account {user}; look the user's number up first")
            opened = tx.window_opened_at(caller.account_id, user)
            closes = None if opened is None else opened + DAY
            entry = tx.entry_window(caller.account_id, user)
            # The window open now that closes last: the one the business can count on.
            open_until = {
                kind: until
                for kind, until in (
                    (WindowKind.SERVICE, closes),
                    (WindowKind.ENTRY, entry.closes_at if entry else None),
                )
                if until is not None and now < until
            }
            kind = max(open_until, key=open_until.__getitem__, default=WindowKind.NONE)
            return WindowView(
                user,
                opened,
                closes,
                kind != WindowKind.NONE,
                entry.opened_at if entry else None,
                entry.closes_at if entry else None,
                WindowKind.ENTRY in open_until,
                kind,
            )

        return await self._db.read(read)

    async def status(self, caller: Principal) -> BusinessStatus:
        now = self._clock.now()

        def job(tx: DirectoryTransaction) -> BusinessStatus:
            rating = review_quality(tx, caller.account_id, now)
            tier, _ = tx.business_standing(caller.account_id)
            limit = self.policy.limit(tier)
            used, frees_at = usage(tx, caller.account_id, now, DAY)
            used_7d, _ = usage(tx, caller.account_id, now, WEEK)
            if limit is None or tier >= len(self.policy.tiers) - 1:
                promotion = "none: the top of the ladder"
            elif rating.quality == Quality.RED:
                promotion = "no promotion while your quality is RED"
            else:
                following = self.policy.limit(tier + 1)
                to = "unlimited" if following is None else str(following)
                promotion = (
                    f"rises to {to} once you start conversations with {(limit + 1) // 2} unique"
                    f" users within 7 days ({used_7d} so far)"
                )
            return BusinessStatus(
                tier,
                limit,
                used,
                frees_at if limit is not None and used >= limit else None,
                used_7d,
                rating,
                promotion,
                self.policy.tiers,
                self.policy.marketing_per_user,
                self.policy.business_send_rate,
            )

        # A write: the status re-rates the quality, pausing or unpausing templates.
        return await self._db.write(as_business(caller, "have a sending status", job))

    async def review(self, business_account_id: str) -> None:
        """Re-rate a business after a block or opt-out (no-op for a person)."""
        now = self._clock.now()

        def job(tx: DirectoryTransaction) -> None:
            account = tx.get_account(business_account_id)
            if account is not None and account.kind == AccountKind.BUSINESS:
                review_quality(tx, business_account_id, now)

        await self._db.write(job)


def review_quality(tx: DirectoryTransaction, business: str, now: float) -> QualityRating:
    """Rate the business and apply it: RED pauses its approved templates and marks it RED;
    otherwise the quality pause is lifted (templates the business paused stay paused)."""
    rating = rate_quality(tx, business, now)
    if rating.quality == Quality.RED:
        tx.set_red(business, now)
        tx.pause_templates(business, PauseReason.QUALITY)
    elif tx.set_red(business, None):
        tx.lift_template_pauses(business, PauseReason.QUALITY)
    return rating
