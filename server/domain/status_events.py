"""A business's status events, streamed: SENT, DELIVERED, FAILED, EXPIRED for each message it
sent to a person, each with the pricing of its message.

The events are written by the money path, in the transaction that makes the change (the send,
the first ack, the expiry, the block), numbered per business without gaps
(`billing_model` B5). This module only reads them:
1. `StatusEventStreams.stream` follows the business's events from the client's cursor
   (`server.domain.feeds.follow`): the backlog a page at a time, a caught-up marker, then live
   events and keep-alives. Resuming from the last sequence seen misses nothing and repeats
   nothing, because sequences commit in order and the stream reads by sequence.
2. The writers call `StatusEventFeed.wake` after each commit that appended events; a wake-up
   lost costs at most one keep-alive interval, never an event (feeds rule 2).
3. Each page re-checks that the caller is a business; a removed device's stream ends
   UNAUTHENTICATED (the call's Lease), a stopping server's UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable

from server.domain.auth import Principal
from server.domain.billing_model import StatusEventView
from server.domain.feeds import CaughtUp, KeepAlive, Wakeups, follow
from server.domain.ports import ReadTransaction, Store
from server.domain.profiles import require_business_kind

# Events per database read: what one stream holds in memory at most.
EVENTS_PAGE = 100

StatusItem = StatusEventView | CaughtUp | KeepAlive


class StatusEventFeed(Wakeups):
    """This server's wake-ups of status event streams, by business account id (rule 2)."""

    def wake(self, business_account_ids: Iterable[str]) -> None:
        """Call after a commit that appended events for these businesses."""
        for business in set(business_account_ids):
            self.notify(business)


class StatusEventStreams:
    """StreamStatusEvents' domain."""

    def __init__(self, db: Store, feed: StatusEventFeed, keepalive_interval: float) -> None:
        self._db = db
        self.feed = feed
        self.keepalive_interval = keepalive_interval

    def stream(self, caller: Principal, cursor: int) -> AsyncIterator[StatusItem]:
        """The caller's events after `cursor`, CaughtUp, then live events (rule 1)."""
        business = caller.account_id

        def page(after: int) -> Callable[[ReadTransaction], list[StatusEventView]]:
            def read(tx: ReadTransaction) -> list[StatusEventView]:
                require_business_kind(tx, business, "read status events of their messages")
                return tx.status_events_after(business, after, EVENTS_PAGE)

            return read

        return follow(
            self._db, self.feed, business, cursor, page, lambda view: view.event.sequence,
            EVENTS_PAGE, self.keepalive_interval,
        )  # fmt: skip

    def close_streams(self) -> None:
        """End every stream (UNAVAILABLE: reconnect) and refuse new ones: the server stops."""
        self.feed.close()
