"""The PostgreSQL backend's `Transaction`: the shared storage SQL, and the few methods whose SQL
PostgreSQL needs spelled its own way.

The overrides, and why each differs:
* Rows that a statement changes come back with `RETURNING`. The SQLite code reads them first as
  one JSON value and then updates, because SQLite's RETURNING steps once per row with the GIL
  released and re-taken each time; PostgreSQL returns them in one round trip, and an
  UPDATE ... RETURNING also cannot disagree with a concurrent writer about which rows moved.
* One-time prekeys are taken with `FOR UPDATE SKIP LOCKED`: with several replicas, two
  transactions that want a key of the same device each get a different one instead of the
  second waiting for the first and then finding its row gone (ports guarantee 1).
* The UTC day of a timestamp (`day_sql`).

And it leaves signals for the other replicas (`server.domain.signals`): `pg_notify` inside the
transaction, which PostgreSQL delivers if and when it commits: new rows for a device (ROWS), a
device's new stream (STREAM), removed credentials (REVOKE).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from server.domain.billing_model import ChargeRun, ChargeState, SettledRun, StatusKind
from server.domain.model import MessageRow, SignedKey
from server.domain.replicas_model import (
    ALL_DEVICES,
    CHANNEL,
    STATUS_EVENTS,
    SUPPORT_QUEUE,
    Kind,
    Signal,
)
from server.domain.support_model import EventRow
from server.storage.messages import MESSAGE_COLUMNS, PENDING
from server.storage.postgres.connection import PgConnection
from server.storage.statements import Statements

_RESERVED = int(ChargeState.RESERVED)


class PostgresTransaction(Statements):
    connection: PgConnection

    def reclaim_free_pages(self) -> int:
        """Nothing to do here: PostgreSQL's autovacuum gives dead rows' space back."""
        return 0

    day_sql = "to_char(to_timestamp(sent_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    open_pair_index = ""
    lock_row = " FOR UPDATE"

    def __init__(self, connection: PgConnection, node: int = 0) -> None:
        self.connection = connection
        self.node = node  # this replica's, named in its signals

    def _signal(self, kind: Kind, account_id: str, device_id: int, epoch: int = 0) -> None:
        payload = Signal(kind, self.node, account_id, device_id, epoch).encode()
        self.connection.execute("SELECT pg_notify(?, ?)", (CHANNEL, payload))

    # -- signals ----------------------------------------------------------------------------

    def _bump(self, account_id: str, device_id: int, n: int) -> int:
        # The counter and the ROWS signal in one round trip.
        signal = Signal(Kind.ROWS, self.node, account_id, device_id).encode()
        row = self.connection.execute(
            f"WITH bumped AS ({self.BUMP}) SELECT last_seq, pg_notify(?, ?) FROM bumped",
            (account_id, device_id, n, CHANNEL, signal),
        ).fetchone()
        assert row is not None  # the upsert returns the row it wrote
        return int(row[0])

    def claim_stream(self, account_id: str, device_id: int) -> int:
        epoch = super().claim_stream(account_id, device_id)
        self._signal(Kind.STREAM, account_id, device_id, epoch)
        return epoch

    def append_status_events(
        self,
        business_account_id: str,
        kind: StatusKind,
        message_ids: list[int],
        at: float,
        detail: str = "",
    ) -> None:
        super().append_status_events(business_account_id, kind, message_ids, at, detail)
        if message_ids:
            self._signal(Kind.FEED, business_account_id, STATUS_EVENTS)

    def reserve_many(self, runs: Sequence[ChargeRun], at: float) -> bool:
        # Each charge is its message's SENT event: other replicas' status streams hear of it.
        accepted = super().reserve_many(runs, at)
        if accepted:
            for business in sorted({c.business_account_id for c, _ in runs}):
                self._signal(Kind.FEED, business, STATUS_EVENTS)
        return accepted

    def append_event(self, row: EventRow) -> int:
        sequence = super().append_event(row)
        self._signal(Kind.FEED, row.business_account_id, SUPPORT_QUEUE)
        return sequence

    def add_price_table(self, effective_at: float, body: str, at: float, source: str) -> int:
        version = super().add_price_table(effective_at, body, at, source)
        self._signal(Kind.PRICES, "", 0)
        return version

    def delete_device(self, account_id: str, device_id: int) -> bool:
        deleted = super().delete_device(account_id, device_id)
        if deleted:
            self._signal(Kind.REVOKE, account_id, device_id)
        return deleted

    def delete_all_devices(self, account_id: str) -> int:
        deleted = super().delete_all_devices(account_id)
        self._signal(Kind.REVOKE, account_id, ALL_DEVICES)
        return deleted

    def delete_account(self, account_id: str) -> bool:
        deleted = super().delete_account(account_id)
        if deleted:
            self._signal(Kind.REVOKE, account_id, ALL_DEVICES)
        return deleted

    # -- messages ---------------------------------------------------------------------------

    def delete_envelopes(
        self, account_id: str, device_id: int, envelope_ids: Iterable[int]
    ) -> list[int]:
        ids = list(envelope_ids)
        if not ids:
            return []
        rows = self.connection.execute(
            "DELETE FROM envelopes WHERE account_id = ? AND device_id = ?"
            " AND envelope_id = ANY(?) RETURNING message_id",
            (account_id, device_id, ids),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def settle_messages(
        self, message_ids: Iterable[int], state: int, at: float
    ) -> list[MessageRow]:
        ids = sorted(set(message_ids))
        if not ids:
            return []
        rows = self.connection.execute(
            "UPDATE messages SET state = ?, settled_at = ?"
            f" WHERE state = {PENDING} AND message_id = ANY(?) RETURNING {MESSAGE_COLUMNS}",
            (state, at, ids),
        ).fetchall()
        return sorted((MessageRow._make(r) for r in rows), key=lambda m: m.message_id)

    # -- billing ----------------------------------------------------------------------------

    # A list of ids bound as one array, with each one's position from 0 (SqlBilling._EACH).
    _EACH = (
        "(SELECT value, ordinality - 1 AS key"
        " FROM unnest(CAST(? AS BIGINT[])) WITH ORDINALITY AS ids(value, ordinality)) AS ids"
    )

    @staticmethod
    def _list(ids: list[int]) -> object:
        return ids

    def _move_charges(
        self, message_ids: list[int], state: ChargeState, at: float
    ) -> list[SettledRun]:
        rows = self.connection.execute(
            "UPDATE charges SET state = ?, settled_at = ?"
            f" WHERE state = {_RESERVED} AND message_id = ANY(?)"
            " RETURNING business_account_id, amount, message_id",
            (int(state), at, message_ids),
        ).fetchall()
        runs: dict[tuple[str, int], list[int]] = {}
        for business, amount, message_id in sorted(rows):
            runs.setdefault((business, amount), []).append(message_id)
        return [SettledRun(b, a, ids) for (b, a), ids in runs.items()]

    # -- keys -------------------------------------------------------------------------------

    def take_pre_key(self, account_id: str, device_id: int) -> tuple[int, bytes] | None:
        r = self.connection.execute(
            "DELETE FROM one_time_pre_keys WHERE (account_id, device_id, key_id) = ("
            " SELECT account_id, device_id, key_id FROM one_time_pre_keys"
            " WHERE account_id = ?1 AND device_id = ?2 ORDER BY key_id LIMIT 1"
            " FOR UPDATE SKIP LOCKED) RETURNING key_id, public_key",
            (account_id, device_id),
        ).fetchone()
        return None if r is None else (int(r[0]), bytes(r[1]))

    def take_kyber_pre_key(self, account_id: str, device_id: int) -> SignedKey | None:
        r = self.connection.execute(
            "DELETE FROM kyber_pre_keys WHERE (account_id, device_id, key_id) = ("
            " SELECT account_id, device_id, key_id FROM kyber_pre_keys"
            " WHERE account_id = ?1 AND device_id = ?2 ORDER BY key_id LIMIT 1"
            " FOR UPDATE SKIP LOCKED) RETURNING key_id, public_key, signature",
            (account_id, device_id),
        ).fetchone()
        return None if r is None else SignedKey(int(r[0]), bytes(r[1]), bytes(r[2]))
