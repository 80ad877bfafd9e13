"""The mailbox's limits. These defaults are the server's defaults (`server.config` takes them
from here), so each reason is written once, here."""

from __future__ import annotations

from dataclasses import dataclass

from server.domain.ratelimit import Rate


@dataclass(frozen=True)
class MessagingPolicy:
    # One ciphertext per device: a text message or a small media key is a few KiB; larger
    # content goes as an attachment. Bounds what one send holds in memory and on disk.
    max_envelope_bytes: int = 256 * 1024
    # Ciphertexts in one send, one per recipient device: well above the devices an account may
    # have (AccountPolicy.max_devices), so raising that limit needs no change here.
    max_devices_per_send: int = 32
    # Sends per SendMessages call (one write job) and ids per AcknowledgeMessages call: large
    # enough to amortise a commit, small enough that one job never holds the writer for long.
    max_batch: int = 1000
    # Messages one device may send: 100/s sustained with bursts, far above any person, a
    # ceiling for a runaway or hostile client.
    send_rate: Rate = Rate(6000, 60.0)
    # An undelivered envelope is kept 30 days, then fails: a phone off for a month still gets
    # its messages, and the server never holds ciphertext forever.
    envelope_ttl: float = 30 * 86_400.0
    # A send's request_id is remembered this long after the send (and while the message is
    # pending): a retry within it gets the first answer, never a second copy. Retries come
    # seconds after a failure, or after a reconnect; a window of minutes, not a day, keeps what
    # delivered traffic leaves on disk bounded by the window instead of by the traffic.
    idempotency_window: float = 300.0
    # Envelopes per stream message and per page read from the database.
    stream_batch: int = 500
    # Seconds of silence before a stream gets a keep-alive: below the 60 s idle timeout of
    # common NATs and proxies, so an idle stream is not cut.
    keepalive_interval: float = 30.0
    # With several replicas on one database: how often an open stream re-reads the database
    # even without a signal (fanout rule 6). A lost signal delays a message by at most this.
    stream_poll_interval: float = 5.0
    # Bytes buffered in memory per connected device; past that its stream re-reads the
    # database, so a stalled reader costs at most this much memory.
    stream_buffer_bytes: int = 8 * 1024 * 1024
