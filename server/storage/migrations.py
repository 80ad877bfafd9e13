"""Versioned schema migrations, applied in order on start.

The schema version is SQLite's `user_version`. A database made by an older Parley is upgraded
step by step, each step in its own transaction, and never recreated: data is kept. A database
from a *newer* Parley is refused rather than guessed at.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

import sqlite_utils


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[sqlite3.Connection], None]


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run DDL statements inside the caller's transaction (executescript would commit it)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _v1_accounts(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        CREATE TABLE accounts (
            account_id     TEXT PRIMARY KEY,          -- UUID, opaque to clients
            phone_number   TEXT NOT NULL UNIQUE,      -- E.164
            kind           INTEGER NOT NULL,          -- AccountKind enum value
            created_at     REAL NOT NULL,
            next_device_id INTEGER NOT NULL DEFAULT 2 -- device ids are never reused
        );
        CREATE TABLE devices (
            account_id  TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
            device_id   INTEGER NOT NULL,
            name        TEXT NOT NULL,
            token_hash  BLOB NOT NULL UNIQUE,         -- SHA-256 of the bearer token
            created_at  REAL NOT NULL,
            PRIMARY KEY (account_id, device_id)
        ) WITHOUT ROWID;
        CREATE TABLE verifications (
            verification_id TEXT PRIMARY KEY,
            phone_number    TEXT NOT NULL,
            code_hash       BLOB NOT NULL,
            created_at      REAL NOT NULL,
            expires_at      REAL NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 0,
            completed       INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX verifications_by_expiry ON verifications(expires_at);
        """,
    )


def _v2_linking_and_last_seen(conn: sqlite3.Connection) -> None:
    db = sqlite_utils.Database(conn)
    db["devices"].add_column("last_seen_at", float)  # type: ignore[union-attr]
    conn.execute("UPDATE devices SET last_seen_at = created_at")
    _run_script(
        conn,
        """
        CREATE TABLE linking_codes (
            code_hash  BLOB PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
            expires_at REAL NOT NULL
        );
        """,
    )


def _v3_keys(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        CREATE TABLE device_keys (
            account_id               TEXT NOT NULL,
            device_id                INTEGER NOT NULL,
            identity_key             BLOB NOT NULL,  -- 0x05 || X25519
            registration_id          INTEGER NOT NULL,
            signed_pre_key_id        INTEGER NOT NULL,
            signed_pre_key           BLOB NOT NULL,
            signed_pre_key_signature BLOB NOT NULL,
            signed_pre_key_at        REAL NOT NULL,
            last_resort_kyber_id     INTEGER NOT NULL,
            last_resort_kyber_key    BLOB NOT NULL,  -- 0x08 || Kyber1024
            last_resort_kyber_signature BLOB NOT NULL,
            PRIMARY KEY (account_id, device_id),
            FOREIGN KEY (account_id, device_id) REFERENCES devices(account_id, device_id)
                ON DELETE CASCADE
        ) WITHOUT ROWID;
        CREATE TABLE one_time_pre_keys (
            account_id TEXT NOT NULL,
            device_id  INTEGER NOT NULL,
            key_id     INTEGER NOT NULL,
            public_key BLOB NOT NULL,
            PRIMARY KEY (account_id, device_id, key_id),
            FOREIGN KEY (account_id, device_id) REFERENCES devices(account_id, device_id)
                ON DELETE CASCADE
        ) WITHOUT ROWID;
        CREATE TABLE kyber_pre_keys (
            account_id TEXT NOT NULL,
            device_id  INTEGER NOT NULL,
            key_id     INTEGER NOT NULL,
            public_key BLOB NOT NULL,
            signature  BLOB NOT NULL,
            PRIMARY KEY (account_id, device_id, key_id),
            FOREIGN KEY (account_id, device_id) REFERENCES devices(account_id, device_id)
                ON DELETE CASCADE
        ) WITHOUT ROWID;
        """,
    )


def _v4_messaging(conn: sqlite3.Connection) -> None:
    # Ids are time-ordered integers (ms << 20 | sequence), so new rows append at the right edge
    # of every B-tree instead of landing at random pages (docs/architecture.md, "Storage").
    _run_script(
        conn,
        """
        CREATE TABLE messages (
            message_id           INTEGER PRIMARY KEY,
            sender_account_id    TEXT NOT NULL,
            sender_device_id     INTEGER NOT NULL,
            recipient_account_id TEXT NOT NULL,
            request_id           TEXT NOT NULL,
            request_hash         BLOB NOT NULL,   -- detects a reused request_id with a new body
            server_ts            REAL NOT NULL,
            state                INTEGER NOT NULL, -- 0 pending, 1 delivered, 2 failed, 3 sync
            category             INTEGER NOT NULL DEFAULT 0,
            template_name        TEXT NOT NULL DEFAULT '',
            settled_at           REAL,
            UNIQUE (sender_account_id, request_id)
        );
        CREATE TABLE envelopes (
            envelope_id       INTEGER PRIMARY KEY,
            account_id        TEXT NOT NULL,
            device_id         INTEGER NOT NULL,
            message_id        INTEGER NOT NULL,
            sender_account_id TEXT NOT NULL,
            sender_device_id  INTEGER NOT NULL,
            server_ts         REAL NOT NULL,
            client_ts_ms      INTEGER NOT NULL,
            content_type      INTEGER NOT NULL,
            content           BLOB NOT NULL,
            category          INTEGER NOT NULL DEFAULT 0,
            template_name     TEXT NOT NULL DEFAULT '',
            FOREIGN KEY (account_id, device_id) REFERENCES devices(account_id, device_id)
                ON DELETE CASCADE
        );
        -- Expiry needs no index of its own: ids are time-ordered, so "older than the TTL" is
        -- a range of the primary key.
        CREATE INDEX envelopes_by_device ON envelopes(account_id, device_id, envelope_id);
        CREATE TABLE delivery_statuses (
            status_id            INTEGER PRIMARY KEY,
            account_id           TEXT NOT NULL,   -- the sender, told what became of its message
            device_id            INTEGER NOT NULL,
            message_id           INTEGER NOT NULL,
            request_id           TEXT NOT NULL,
            recipient_account_id TEXT NOT NULL,
            state                INTEGER NOT NULL,
            at                   REAL NOT NULL,
            reason               TEXT NOT NULL DEFAULT '',
            FOREIGN KEY (account_id, device_id) REFERENCES devices(account_id, device_id)
                ON DELETE CASCADE
        );
        CREATE INDEX delivery_statuses_by_device
            ON delivery_statuses(account_id, device_id, status_id);
        """,
    )


def _v5_business_directory(conn: sqlite3.Connection) -> None:
    # Review statuses: 1 pending, 2 approved, 3 rejected (directory_model.ReviewStatus). The
    # review queues are partial indexes over PENDING rows only, so they stay small.
    _run_script(
        conn,
        """
        CREATE TABLE business_profiles (
            account_id        TEXT PRIMARY KEY
                              REFERENCES accounts(account_id) ON DELETE CASCADE,
            display_name      TEXT NOT NULL,             -- the name submitted last
            about             TEXT NOT NULL DEFAULT '',
            description       TEXT NOT NULL DEFAULT '',
            address           TEXT NOT NULL DEFAULT '',
            email             TEXT NOT NULL DEFAULT '',
            websites          TEXT NOT NULL DEFAULT '[]', -- JSON array, at most 2
            vertical          INTEGER NOT NULL DEFAULT 0,
            name_status       INTEGER NOT NULL,          -- review of display_name
            name_reason       TEXT NOT NULL DEFAULT '',  -- why it was rejected
            verified_name     TEXT NOT NULL DEFAULT '',  -- the last approved name
            name_submitted_at REAL NOT NULL,
            updated_at        REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX business_names_pending ON business_profiles(name_submitted_at)
            WHERE name_status = 1;
        CREATE TABLE templates (
            template_id         TEXT PRIMARY KEY,        -- UUID, by which sends name it
            business_account_id TEXT NOT NULL
                                REFERENCES accounts(account_id) ON DELETE CASCADE,
            name                TEXT NOT NULL,
            language            TEXT NOT NULL,
            category            INTEGER NOT NULL,        -- MessageCategory, frozen at approval
            header              TEXT NOT NULL DEFAULT '',
            body                TEXT NOT NULL,
            footer              TEXT NOT NULL DEFAULT '',
            buttons             TEXT NOT NULL DEFAULT '[]', -- JSON array of labels
            parameter_count     INTEGER NOT NULL,
            status              INTEGER NOT NULL,
            reason              TEXT NOT NULL DEFAULT '',
            pause_reason        TEXT NOT NULL DEFAULT '', -- '', 'business' or 'quality'
            created_at          REAL NOT NULL,
            reviewed_at         REAL,
            UNIQUE (business_account_id, name, language)
        ) WITHOUT ROWID;
        CREATE INDEX templates_pending ON templates(created_at) WHERE status = 1;
        """,
    )
    # Triggers have ';' inside BEGIN ... END, so each is one execute (D4 of directory_model).
    conn.execute(
        """
        CREATE TRIGGER templates_frozen_once_approved
            BEFORE UPDATE OF name, language, category, header, body, footer, buttons,
                parameter_count, business_account_id ON templates
            WHEN OLD.status = 2
            BEGIN
                SELECT RAISE(ABORT, 'an approved template never changes; create a new one');
            END
        """
    )
    conn.execute(
        """
        CREATE TRIGGER templates_review_is_final
            BEFORE UPDATE OF status ON templates
            WHEN OLD.status != 1 AND NEW.status != OLD.status
            BEGIN
                SELECT RAISE(ABORT, 'a reviewed template keeps its status');
            END
        """
    )


def _v6_consent(conn: sqlite3.Connection) -> None:
    # Consent is keyed by the user's number, so a business's record for a number with no
    # account yet applies once it registers (server.domain.consent_model). The primary key
    # serves the user's list (a prefix) and the sending rules' probe; the partial index serves
    # the quality rating (a business's opt-outs over the last days), as blocks_by_blocked does
    # for blocks.
    _run_script(
        conn,
        """
        CREATE TABLE consents (
            user_phone          TEXT NOT NULL,     -- E.164, perhaps of no account yet
            business_account_id TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
            category            INTEGER NOT NULL,  -- MessageCategory
            kind                INTEGER NOT NULL,  -- OptInKind: 0 none, 1 user, 2 business
            source              INTEGER NOT NULL DEFAULT 0,  -- OptInSource
            evidence            TEXT NOT NULL DEFAULT '',
            opted_in_at         REAL,
            opted_out_at        REAL,              -- not NULL: opted out, whatever kind says
            PRIMARY KEY (user_phone, business_account_id, category)
        ) WITHOUT ROWID;
        CREATE INDEX consents_opt_outs ON consents(business_account_id, opted_out_at)
            WHERE opted_out_at IS NOT NULL;
        CREATE TABLE blocks (
            blocker_account_id TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
            blocked_account_id TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
            blocked_at         REAL NOT NULL,
            PRIMARY KEY (blocker_account_id, blocked_account_id)
        ) WITHOUT ROWID;
        CREATE INDEX blocks_by_blocked ON blocks(blocked_account_id, blocked_at);
        """,
    )
    # A deleted account's consents go with it (its number may register again as someone else).
    conn.execute(
        "CREATE TRIGGER consents_of_deleted_account AFTER DELETE ON accounts BEGIN"
        " DELETE FROM consents WHERE user_phone = OLD.phone_number; END"
    )


def _v7_sending_rules(conn: sqlite3.Connection) -> None:
    # The sending rules' state (server.domain.sending): every table is keyed so that one
    # upsert per send keeps it right with concurrent writers (sending_model S1-S3), and every
    # read is a primary-key probe or a short primary-key range. The envelope gains the template
    # id the server checked, as cleartext metadata for the recipient.
    _run_script(
        conn,
        """
        ALTER TABLE envelopes ADD COLUMN template_id TEXT NOT NULL DEFAULT '';
        CREATE TABLE service_windows (
            business_account_id TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
            user_account_id     TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
            opened_at           REAL NOT NULL,   -- the user's latest message to the business
            PRIMARY KEY (business_account_id, user_account_id)
        ) WITHOUT ROWID;
        CREATE TABLE conversation_starts (
            business_account_id TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
            user_account_id     TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
            started_at          REAL NOT NULL,   -- the latest counted start
            PRIMARY KEY (business_account_id, user_account_id)
        ) WITHOUT ROWID;
        CREATE TABLE conversation_hours (
            business_account_id TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
            hour                INTEGER NOT NULL,  -- unix time // 3600
            started             INTEGER NOT NULL,  -- unique users started that hour
            PRIMARY KEY (business_account_id, hour)
        ) WITHOUT ROWID;
        CREATE TABLE business_tiers (
            business_account_id TEXT PRIMARY KEY REFERENCES accounts(account_id) ON DELETE CASCADE,
            tier                INTEGER NOT NULL,  -- step on the ladder, 0 = the first
            promoted_at         REAL NOT NULL,
            red_since           REAL               -- quality RED since then, NULL: not RED
        ) WITHOUT ROWID;
        CREATE TABLE marketing_sends (
            business_account_id TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
            user_account_id     TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
            sent_at             REAL NOT NULL,
            message_id          INTEGER NOT NULL,
            PRIMARY KEY (business_account_id, user_account_id, sent_at, message_id)
        ) WITHOUT ROWID;
        """,
    )


def _v8_device_count(conn: sqlite3.Connection) -> None:
    """Each account counts its devices, so the device limit is one conditional UPDATE (ports
    guarantee 11) instead of a count read before the insert. Existing accounts start from the
    devices they have."""
    _run_script(
        conn,
        """
        ALTER TABLE accounts ADD COLUMN device_count INTEGER NOT NULL DEFAULT 0;
        UPDATE accounts SET device_count =
            (SELECT count(*) FROM devices WHERE devices.account_id = accounts.account_id)
        """,
    )


def _v9_live_support(conn: sqlite3.Connection) -> None:
    """Live support (server.domain.support): agents, conversations and each business's queue
    of events. At most one open conversation per (business, user) is a partial unique index;
    state changes are conditional UPDATEs; event sequence numbers come from one counter row
    per business, taken by an upsert, so writers on a business's queue commit in sequence
    order (support_model U1-U4)."""
    _run_script(
        conn,
        """
        CREATE TABLE support_agents (
            account_id   TEXT NOT NULL,
            device_id    INTEGER NOT NULL,
            display_name TEXT NOT NULL,
            since        REAL NOT NULL,
            PRIMARY KEY (account_id, device_id),
            FOREIGN KEY (account_id, device_id) REFERENCES devices(account_id, device_id)
                ON DELETE CASCADE
        ) WITHOUT ROWID;
        CREATE TABLE support_conversations (
            conversation_id     TEXT PRIMARY KEY,
            business_account_id TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
            user_account_id     TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
            topic               TEXT NOT NULL,
            state               INTEGER NOT NULL,  -- SupportState: 1 waiting, 2 assigned, 3 closed
            agent_device_id     INTEGER NOT NULL DEFAULT 0,  -- 0: none
            opened_at           REAL NOT NULL,
            updated_at          REAL NOT NULL
        );
        CREATE UNIQUE INDEX support_open_per_pair
            ON support_conversations(business_account_id, user_account_id) WHERE state != 3;
        CREATE INDEX support_latest_per_pair
            ON support_conversations(business_account_id, user_account_id, opened_at);
        CREATE TABLE support_queues (
            business_account_id TEXT PRIMARY KEY REFERENCES accounts(account_id) ON DELETE CASCADE,
            last_sequence       INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE support_events (
            business_account_id  TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
            sequence             INTEGER NOT NULL,
            kind                 INTEGER NOT NULL,  -- SupportEventKind
            conversation_id      TEXT NOT NULL,
            user_account_id      TEXT NOT NULL,
            topic                TEXT NOT NULL,
            agent_device_id      INTEGER NOT NULL,
            agent_display_name   TEXT NOT NULL,
            from_agent_device_id INTEGER NOT NULL,
            closed_by            TEXT NOT NULL,
            at                   REAL NOT NULL,
            PRIMARY KEY (business_account_id, sequence)
        ) WITHOUT ROWID;
        """,
    )


def _v10_chat_links(conn: sqlite3.Connection) -> None:
    """Click-to-chat (server.domain.links): the links with their counters, each account's
    number-link setting, and the 72-hour entry windows. No table names who opened a link: a
    link holds counters only, and an entry window names the business and the user but not the
    link (links_model L1-L4)."""
    _run_script(
        conn,
        """
        CREATE TABLE chat_links (
            code           TEXT PRIMARY KEY,   -- 16 URL-safe characters, 96 random bits
            account_id     TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
            prefilled_text TEXT NOT NULL,
            label          TEXT NOT NULL,
            created_at     REAL NOT NULL,
            opens          INTEGER NOT NULL DEFAULT 0,
            chats_started  INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID;
        CREATE INDEX chat_links_by_account ON chat_links(account_id, created_at);
        CREATE TABLE chat_link_settings (
            account_id        TEXT PRIMARY KEY REFERENCES accounts(account_id) ON DELETE CASCADE,
            number_links      INTEGER,            -- 0 or 1, NULL: the default of its kind
            number_link_opens INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID;
        CREATE TABLE entry_windows (
            business_account_id TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
            user_account_id     TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
            opened_at           REAL NOT NULL,
            closes_at           REAL NOT NULL,
            PRIMARY KEY (business_account_id, user_account_id)
        ) WITHOUT ROWID;
        """,
    )


def _v11_billing(conn: sqlite3.Connection) -> None:
    """Billing (server.domain.billing_model): price table versions, balances that cannot go
    below zero, the append-only ledger with its exactly-once keys, one charge per business
    message, and the month's usage for allowances and volume tiers."""
    _run_script(
        conn,
        """
        CREATE TABLE price_tables (
            version      INTEGER PRIMARY KEY,
            effective_at REAL NOT NULL UNIQUE,    -- a message is priced by the one in force
            body         TEXT NOT NULL,           -- canonical JSON of the table
            created_at   REAL NOT NULL,
            source       TEXT NOT NULL DEFAULT '' -- the file it came from, or "rpc"
        );
        CREATE TABLE balances (
            business_account_id TEXT PRIMARY KEY,
            available INTEGER NOT NULL DEFAULT 0 CHECK (available >= 0), -- micro-units
            reserved  INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0)
        ) WITHOUT ROWID;
        CREATE TABLE ledger (
            entry_id            INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused
            business_account_id TEXT NOT NULL,
            kind                INTEGER NOT NULL,  -- EntryKind
            amount              INTEGER NOT NULL,
            available_after     INTEGER NOT NULL,
            reserved_after      INTEGER NOT NULL,
            message_id          INTEGER,           -- reserve, capture, release
            reference           TEXT,              -- top-up, adjustment
            at                  REAL NOT NULL,
            note                TEXT NOT NULL DEFAULT ''
        );
        -- Exactly once: one reservation, one capture or release per message (B2), one top-up
        -- per reference (B3).
        CREATE UNIQUE INDEX ledger_once_per_message ON ledger(message_id, kind)
            WHERE message_id IS NOT NULL;
        CREATE UNIQUE INDEX ledger_once_per_reference ON ledger(business_account_id, reference)
            WHERE reference IS NOT NULL;
        CREATE INDEX ledger_by_business ON ledger(business_account_id, entry_id);
        CREATE TABLE charges (
            message_id           INTEGER PRIMARY KEY,
            business_account_id  TEXT NOT NULL,
            recipient_account_id TEXT NOT NULL,
            category             INTEGER NOT NULL,
            country              TEXT NOT NULL,
            amount               INTEGER NOT NULL CHECK (amount >= 0),
            reason               INTEGER NOT NULL,  -- FreeReason, 0 = billable
            table_version        INTEGER NOT NULL,
            state                INTEGER NOT NULL,  -- ChargeState
            sent_at              REAL NOT NULL,
            settled_at           REAL,
            reserve_entry        INTEGER,
            settle_entry         INTEGER,
            explanation          TEXT NOT NULL DEFAULT ''  -- why it costs what it costs
        );
        CREATE INDEX charges_by_business ON charges(business_account_id, sent_at);
        -- A block releases the business's messages still on their way to the blocker.
        CREATE INDEX charges_pending_by_pair ON charges(business_account_id, recipient_account_id)
            WHERE state = 0;
        -- Status events of each business, numbered without gaps by a counter row per business
        -- (bumped by an upsert that holds the row until commit, so a business's events commit
        -- in sequence order with any number of writers). The pricing is the charge's, the
        -- ledger entry of a DELIVERED event the message's CAPTURE (read by its unique key).
        CREATE TABLE status_event_counters (
            business_account_id TEXT PRIMARY KEY,
            last_sequence       INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE status_events (
            business_account_id TEXT NOT NULL,
            sequence            INTEGER NOT NULL,
            kind                INTEGER NOT NULL,   -- StatusEventKind
            message_id          INTEGER NOT NULL,
            at                  REAL NOT NULL,
            detail              TEXT NOT NULL DEFAULT '',  -- FAILED, EXPIRED: why
            PRIMARY KEY (business_account_id, sequence)
        ) WITHOUT ROWID;
        -- One event of each kind per message: a retried job cannot report twice.
        CREATE UNIQUE INDEX status_events_once ON status_events(message_id, kind);
        CREATE TABLE usage_months (
            business_account_id TEXT NOT NULL,
            month               TEXT NOT NULL,      -- "2026-11", UTC
            category            INTEGER NOT NULL,
            country             TEXT NOT NULL,
            count               INTEGER NOT NULL,
            PRIMARY KEY (business_account_id, month, category, country)
        ) WITHOUT ROWID;
        """,
    )


def _v12_stream_positions(conn: sqlite3.Connection) -> None:
    """Each device's envelopes and delivery statuses get a position from a counter of the
    device, bumped by the transaction that inserts them (ports guarantee 15): with several
    writers, ids no longer grow in commit order, positions still do. Rows on file keep their
    id as their position (one writer made them, in id order), and each counter starts above
    them."""
    _run_script(
        conn,
        """
        CREATE TABLE device_streams (
            account_id TEXT NOT NULL,
            device_id  INTEGER NOT NULL,
            last_seq   INTEGER NOT NULL,
            epoch      INTEGER NOT NULL DEFAULT 0,  -- of the device's newest stream
            PRIMARY KEY (account_id, device_id),
            FOREIGN KEY (account_id, device_id) REFERENCES devices(account_id, device_id)
                ON DELETE CASCADE
        ) WITHOUT ROWID;
        ALTER TABLE envelopes ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE delivery_statuses ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
        UPDATE envelopes SET seq = envelope_id;
        UPDATE delivery_statuses SET seq = status_id;
        INSERT INTO device_streams (account_id, device_id, last_seq)
            SELECT account_id, device_id, max(last) FROM (
                SELECT account_id, device_id, max(envelope_id) AS last FROM envelopes
                GROUP BY account_id, device_id
                UNION ALL
                SELECT account_id, device_id, max(status_id) FROM delivery_statuses
                GROUP BY account_id, device_id
            ) GROUP BY account_id, device_id;
        DROP INDEX envelopes_by_device;
        CREATE UNIQUE INDEX envelopes_by_device ON envelopes(account_id, device_id, seq);
        DROP INDEX delivery_statuses_by_device;
        CREATE UNIQUE INDEX delivery_statuses_by_device
            ON delivery_statuses(account_id, device_id, seq);
        """,
    )


def _v13_rate_buckets(conn: sqlite3.Connection) -> None:
    """Rate limits shared by replicas (server.domain.ratelimit): one token bucket per limit
    and key, with the time after which it is full again and may be forgotten."""
    _run_script(
        conn,
        """
        CREATE TABLE rate_buckets (
            bucket     TEXT NOT NULL,  -- the limit, by its description
            key        TEXT NOT NULL,  -- whose: a number, an address, an account
            tokens     REAL NOT NULL,
            updated_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            PRIMARY KEY (bucket, key)
        ) WITHOUT ROWID;
        CREATE INDEX rate_buckets_by_expiry ON rate_buckets(expires_at);
        """,
    )


def _v14_reservations_per_send(conn: sqlite3.Connection) -> None:
    """A send's reservation is one ledger entry for all its priced messages (each charge names
    it in reserve_entry): the entry says how many. NULL on every other entry, and on the
    reservations of one message each written before."""
    _run_script(conn, "ALTER TABLE ledger ADD COLUMN message_count INTEGER")


def _v15_sent_events_are_charges(conn: sqlite3.Connection) -> None:
    """A business message's SENT status event is its charge: the charge keeps the event's
    sequence, instead of a status_events row of its own (NULL on the charges of before)."""
    _run_script(
        conn,
        """
        ALTER TABLE charges ADD COLUMN sent_sequence INTEGER;
        CREATE UNIQUE INDEX charges_by_sent_sequence
            ON charges(business_account_id, sent_sequence) WHERE sent_sequence IS NOT NULL;
        """,
    )


def _v16_fewer_indexes_per_charge(conn: sqlite3.Connection) -> None:
    """Two indexes that cost every metered message a write and guarded nothing else: a block
    finds the pending charges to the blocker through the blocker's queued envelopes (the
    partial index by pair was written at each send and deleted from at each capture), and a
    status event of a kind is appended once per message because it is written by the one
    transaction that moves its charge out of RESERVED (billing_model B2, B5)."""
    _run_script(
        conn,
        """
        DROP INDEX charges_pending_by_pair;
        DROP INDEX status_events_once;
        """,
    )


def _v17_charge_days(conn: sqlite3.Connection) -> None:
    """The usage report finds a period's charges through their SENT event sequences instead of
    an index by send time that every metered message wrote: per business and UTC day, the
    first and last sequence of the charges sent that day (one upsert per send job), and a
    range of `charges_by_sent_sequence` between them. The charges of before schema 15 have no
    sequence; a partial index by send time keeps them found, and no new charge enters it."""
    _run_script(
        conn,
        """
        CREATE TABLE charge_days (
            business_account_id TEXT NOT NULL,
            day                 INTEGER NOT NULL,  -- UTC days since 1970-01-01 of sent_at
            first_sequence      INTEGER NOT NULL,
            last_sequence       INTEGER NOT NULL,
            PRIMARY KEY (business_account_id, day)
        ) WITHOUT ROWID;
        INSERT INTO charge_days
            SELECT business_account_id, CAST(sent_at / 86400 AS INTEGER),
                min(sent_sequence), max(sent_sequence)
            FROM charges WHERE sent_sequence IS NOT NULL GROUP BY 1, 2;
        CREATE INDEX charges_before_sequences ON charges(business_account_id, sent_at)
            WHERE sent_sequence IS NULL;
        DROP INDEX charges_by_business;
        """,
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "accounts, devices and phone verifications", _v1_accounts),
    Migration(2, "device linking codes and last-seen times", _v2_linking_and_last_seen),
    Migration(3, "identity keys, signed, one-time and Kyber prekeys", _v3_keys),
    Migration(4, "messages, envelopes and delivery statuses", _v4_messaging),
    Migration(
        5, "business profiles, display-name review and message templates", _v5_business_directory
    ),
    Migration(6, "consent: opt-ins, opt-outs and blocks", _v6_consent),
    Migration(
        7, "sending rules: windows, conversation starts, tiers, marketing caps", _v7_sending_rules
    ),
    Migration(
        8,
        "accounts count their devices (the device limit as one conditional write)",
        _v8_device_count,
    ),
    Migration(9, "live support: agents, support conversations and queue events", _v9_live_support),
    Migration(
        10, "click-to-chat links, number-link settings, 72-hour entry windows", _v10_chat_links
    ),
    Migration(
        11, "billing: price tables, balances, the ledger, charges, monthly usage", _v11_billing
    ),
    Migration(
        12,
        "stream positions: each device's envelopes and statuses numbered in commit order",
        _v12_stream_positions,
    ),
    Migration(13, "rate limits shared by replicas: token buckets", _v13_rate_buckets),
    Migration(
        14,
        "a send's reservation is one ledger entry with its message count",
        _v14_reservations_per_send,
    ),
    Migration(
        15, "a SENT status event is its charge, numbered in it", _v15_sent_events_are_charges
    ),
    Migration(
        16,
        "no index of pending charges by pair, none of status events by message",
        _v16_fewer_indexes_per_charge,
    ),
    Migration(
        17,
        "the usage report finds a period's charges by sequence: first and last of each day",
        _v17_charge_days,
    ),
)
LATEST_VERSION = MIGRATIONS[-1].version


class SchemaTooNewError(RuntimeError):
    """The database was written by a newer Parley; running older code on it could lose data."""


def current_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, target: int = LATEST_VERSION) -> list[int]:
    """Bring the schema up to `target`; return the versions applied (empty when up to date)."""
    version = current_version(conn)
    if version > LATEST_VERSION:
        raise SchemaTooNewError(
            f"database schema version {version} is newer than this server supports "
            f"({LATEST_VERSION}); upgrade Parley or use another database file"
        )
    applied = []
    for migration in MIGRATIONS:
        if version < migration.version <= target:
            conn.execute("BEGIN IMMEDIATE")
            try:
                migration.apply(conn)
                conn.execute(f"PRAGMA user_version = {migration.version}")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            applied.append(migration.version)
    return applied
