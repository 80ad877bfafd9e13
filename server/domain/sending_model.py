"""The sending rules' rows and storage operations: windows, conversation starts, tiers, caps.

Kept apart from `server.domain.model` and `server.domain.ports` (as consent is) so the area is
one module each backend implements (`server.storage.sending`), mixed into the transaction
protocols of `server.domain.ports`. Templates are read here through `template_facts`, the few
columns a send needs, so this module does not depend on the directory's (which imports ports).

What every backend guarantees here (on top of `server.domain.ports`):
S1. `open_window` is one upsert on (business, user) keeping the latest time (`max`), so
    concurrent user messages leave one row holding the newest.
S2. `start_conversation` is one conditional upsert on (business, user): it counts a start only
    when the pair has none within the last 24 h, and only the writer whose upsert changed the
    row bumps the hour bucket, so concurrent writers count a user once.
S3. `promote_tier` is a conditional upsert (`tier = expected`): of concurrent promotions one
    applies.
S4. Every read is indexed: windows, starts and tiers by primary key; the hour buckets and the
    marketing sends by a primary-key range of at most 7 x 24 (resp. cap) rows; the quality
    counts by the `blocks_by_blocked` and `consents_opt_outs` index ranges of the last 7 days.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol


class TemplateFacts(NamedTuple):
    """What a send needs to know of a template (one primary-key lookup)."""

    template_id: str
    business_account_id: str
    name: str
    category: int  # a MessageCategory
    status: int  # a directory_model.ReviewStatus
    pause_reason: str  # a directory_model.PauseReason, "" when not paused


class SendingReads(Protocol):
    def template_facts(self, template_id: str) -> TemplateFacts | None: ...

    def window_opened_at(self, business_account_id: str, user_account_id: str) -> float | None:
        """When the user last wrote to the business (None: never)."""
        ...

    def conversation_started_at(
        self, business_account_id: str, user_account_id: str
    ) -> float | None:
        """When the business last started a counted conversation with the user."""
        ...

    def starts_by_hour(self, business_account_id: str, since_hour: int) -> list[tuple[int, int]]:
        """(hour, conversations started) of the business's hour buckets from `since_hour`."""
        ...

    def business_standing(self, business_account_id: str) -> tuple[int, float | None]:
        """(step on the messaging-limit ladder, 0 = the first; since when its quality is RED,
        None when it is not)."""
        ...

    def marketing_sent_since(
        self, business_account_id: str, user_account_id: str, since: float, limit: int
    ) -> list[float]:
        """Times of at most `limit` marketing templates sent to the user after `since`,
        oldest first."""
        ...

    def negative_signals_since(self, business_account_id: str, since: float) -> tuple[int, int]:
        """(blocks of the business, users who opted out of any of its categories) since."""
        ...


class SendingWrites(Protocol):
    def open_window(self, business_account_id: str, user_account_id: str, at: float) -> None:
        """Open or refresh the customer-service window (S1)."""
        ...

    def start_conversation(
        self, business_account_id: str, user_account_id: str, at: float, window: float
    ) -> bool:
        """Record a conversation start unless one is younger than `window`; True when counted
        (and the hour bucket bumped) (S2)."""
        ...

    def promote_tier(self, business_account_id: str, expected: int, at: float) -> bool:
        """Move the business from tier `expected` to the next; False if it was not there (S3)."""
        ...

    def set_red(self, business_account_id: str, at: float | None) -> bool:
        """Mark the business's quality RED since `at` (an earlier time is kept), or not RED
        (None); whether that changed anything."""
        ...

    def record_marketing(
        self, business_account_id: str, user_account_id: str, message_id: int, at: float
    ) -> None:
        """Count a marketing template to the user, forgetting those older than a day."""
        ...
