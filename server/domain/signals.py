"""Signals between server replicas that share one database: hints, never data.

With several replicas a device's stream may be open on replica A while the sender calls
replica B. B's transaction leaves a signal for the others as it commits (the PostgreSQL backend
sends it with NOTIFY, which PostgreSQL delivers only if and when the transaction commits); A
reacts by reading the database again. A signal carries no message content and no row: a lost
one costs latency, never a message, because a stream also re-reads from its position when it
opens, when the signal connection comes back (`RESYNC`), and on a slow poll.

The signals, and what a replica does with each:
* ROWS (account, device): the device has new envelopes or statuses: its open stream re-reads
  from its position.
* STREAM (account, device, epoch): the device opened a stream with that epoch somewhere; an
  open stream of the device with a lower epoch ends (one live stream per device).
* REVOKE (account, device or every device): credentials were removed: the authentication
  cache forgets them and their open calls end (UNAUTHENTICATED).
* FEED (business, feed): a business's numbered feed grew (its status events, its support
  queue): its streams here read on from their cursors (server.domain.feeds).
* PRICES: the operator added a price table version: the price book here reads them again
  (server.domain.billing.PriceBook.refresh).
Each signal names the replica that sent it (its id node); a replica ignores its own, which it
has already acted on in process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Protocol

from server.domain.replicas_model import ALL_DEVICES, RESYNC, Kind, Signal

log = logging.getLogger(__name__)


class Streams(Protocol):
    """The fan-out's side: open streams re-read, or end."""

    def on_rows(self, account_id: str, device_id: int) -> None: ...
    def on_stream(self, account_id: str, device_id: int, epoch: int) -> None: ...
    def resync(self) -> None: ...


class Credentials(Protocol):
    """The authenticator's side: forget removed credentials, end their calls."""

    def forget_device(self, account_id: str, device_id: int) -> None: ...
    def forget_account(self, account_id: str) -> None: ...


class Feed(Protocol):
    """A feed's wake-ups (server.domain.feeds.Wakeups)."""

    def notify(self, key: str) -> None: ...
    def notify_all(self) -> None: ...


class Dispatcher:
    """Routes the payloads the backend receives, skipping this replica's own."""

    def __init__(
        self,
        node: int,
        streams: Streams,
        credentials: Credentials,
        feeds: Mapping[int, Feed],
        prices: Callable[[], None] = lambda: None,
    ) -> None:
        """`prices` starts a re-read of the price tables (it must not block)."""
        self.node = node
        self.streams = streams
        self.credentials = credentials
        self.feeds = feeds
        self.prices = prices

    def __call__(self, payload: str) -> None:
        if payload == RESYNC:
            self.streams.resync()
            for every in self.feeds.values():
                every.notify_all()
            self.prices()
            return
        signal = Signal.decode(payload)
        if signal is None:
            log.warning("ignored an unknown replica signal %r", payload[:80])
            return
        if signal.node == self.node:
            return
        if signal.kind is Kind.ROWS:
            self.streams.on_rows(signal.account_id, signal.device_id)
        elif signal.kind is Kind.STREAM:
            self.streams.on_stream(signal.account_id, signal.device_id, signal.epoch)
        elif signal.kind is Kind.PRICES:
            self.prices()
        elif signal.kind is Kind.FEED:
            feed = self.feeds.get(signal.device_id)
            if feed is not None:
                feed.notify(signal.account_id)
        elif signal.device_id == ALL_DEVICES:
            self.credentials.forget_account(signal.account_id)
        else:
            self.credentials.forget_device(signal.account_id, signal.device_id)
