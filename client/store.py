"""The client's own persistent store: one SQLite file per profile (docs/architecture.md, "Layers").

Everything a device must remember between runs lives here, and every SQL statement of the
client lives in this module: the local identity and credentials, our prekeys (private parts),
sessions (``SessionRecord.to_bytes``), the peers' identity keys (trust on first use), the ids
of envelopes already processed, and the message history the CLI shows.

Rules this module keeps:

1. **Versioned schema.** ``PRAGMA user_version`` is the schema version; migrations run in
   order, each in its own transaction, and a file from a newer client is refused rather than
   guessed at (the same scheme as ``server/storage/migrations.py``).
2. **WAL, synchronous=FULL.** A commit is on disk before the caller goes on; the receive path
   acknowledges an envelope only after the transaction holding its session state and its
   message committed, so a crash can redeliver an envelope but never lose one.
3. **One transaction per logical step.** :meth:`ClientStore.transaction` groups writes; the
   methods below also work on their own (autocommit) outside one. Sends share their commit
   (``transaction(durable=False)`` and ``client.group_commit``): while such a commit is
   pending, a write made outside a transaction joins it and is committed with it.
4. **Trust on first use.** The first identity key seen for a peer device is recorded; a
   different key later raises :class:`UntrustedIdentityError` until :meth:`trust_identity`
   accepts it explicitly.
5. **Secrets stay here.** Private keys and the auth token are stored in the profile file
   (protect the profile directory like an SSH key directory); they are never logged.
6. **Private file modes.** A new profile directory is created 0700 and the SQLite file 0600
   (SQLite gives its ``-wal`` and ``-shm`` files the database file's mode). An existing
   directory or file that others may read is used, with a logged warning saying how to fix
   it: refusing would lock a person out of their messages over a chmod.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, Self, TypeVar

__all__ = [
    "DB_FILENAME",
    "LATEST_VERSION",
    "ClientStore",
    "Connection",
    "LocalIdentity",
    "MessageRow",
    "PendingVerification",
    "SchemaTooNewError",
    "SignedPreKeyRow",
    "StoreError",
    "UntrustedIdentityError",
]

log = logging.getLogger("parley.client")


class SavedRecord(Protocol):
    """What the store keeps decoded between a save and the next load (``SessionRecord``):
    the store holds bytes and does not import the crypto core."""

    def to_bytes(self) -> bytes: ...

    @classmethod
    def from_bytes(cls, data: bytes) -> Self: ...


_Record = TypeVar("_Record", bound=SavedRecord)

DB_FILENAME: Final = "parley-client.db"
"""Name of the SQLite file inside a profile directory."""
SQLITE_SIDE_FILES: Final = ("-wal", "-shm")
"""Suffixes of the files SQLite keeps next to a WAL-mode database (they hold its data too)."""
DIRECTORY_MODE: Final = 0o700
FILE_MODE: Final = 0o600
BUSY_TIMEOUT_MS: Final = 10_000
"""A second process on the same profile (``parley send`` while ``parley listen`` runs) waits
this long for the write lock instead of failing at once."""


class StoreError(Exception):
    """The profile's store cannot be used as asked (not registered, already registered...)."""


class SchemaTooNewError(StoreError):
    """The profile was written by a newer client; opening it with older code could lose data."""


class UntrustedIdentityError(StoreError):
    """A peer device presented an identity key different from the one we trusted first.

    Either the peer re-installed (or re-registered) Parley, or someone is in the middle. The
    message says how to accept the new key after comparing safety numbers out of band.
    """

    def __init__(
        self,
        account_id: str,
        device_id: int,
        identity_key: bytes | None = None,
        phone_number: str | None = None,
    ) -> None:
        self.account_id = account_id
        self.device_id = device_id
        self.identity_key = identity_key
        """The new, refused key (public), when known."""
        self.phone_number = phone_number
        """The peer's number when it is a contact (see :attr:`who`)."""
        super().__init__(
            f"the identity key of {self.who} (device {device_id}) changed since you first"
            " talked to it. Compare safety numbers with that person in person or on a call"
            f" (`await client.safety_number({self.who!r})`), then accept the new key with"
            f" `client.trust_identity({account_id!r})`"
        )

    @property
    def who(self) -> str:
        """The peer as a person knows it: the phone number if known, else the account id."""
        return self.phone_number or self.account_id


@dataclass(frozen=True)
class LocalIdentity:
    """This device: its identity key pair (private part), ids and credentials."""

    identity_private: bytes
    registration_id: int
    account_id: str
    device_id: int
    auth_token: str
    server: str
    phone_number: str
    created_at: float

    def __repr__(self) -> str:
        # Never print the private key or the bearer token.
        return (
            f"LocalIdentity(account_id={self.account_id!r}, device_id={self.device_id},"
            f" registration_id={self.registration_id}, server={self.server!r})"
        )


@dataclass(frozen=True)
class Connection:
    """How to reach the profile's server: remembered so later runs need no options."""

    server: str
    """``host:port``."""
    tls: bool
    ca_file: str | None
    """PEM file of the CA to trust (absolute path); None: the system's roots."""


@dataclass(frozen=True)
class PendingVerification:
    """A registration whose code was sent (StartVerification) but not yet entered."""

    phone_number: str
    verification_id: str
    business: bool
    device_name: str
    started_at: float


@dataclass(frozen=True)
class SignedPreKeyRow:
    """One of our signed prekeys; ``replaced_at`` is set once a newer one is current."""

    key_id: int
    private_key: bytes
    created_at: float
    replaced_at: float | None

    def __repr__(self) -> str:
        return f"SignedPreKeyRow(key_id={self.key_id}, created_at={self.created_at})"


@dataclass(frozen=True)
class MessageRow:
    """A message of the history: received (``incoming``) or sent by this account."""

    id: int
    incoming: bool
    peer_account_id: str
    sender_account_id: str
    sender_device_id: int
    timestamp_ms: int
    recorded_at: float
    text: str
    envelope_id: int | None


# --- schema -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    script: str


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "identity, prekeys, sessions, peer identities, processed envelopes, history",
        """
        CREATE TABLE local_identity (
            singleton        INTEGER PRIMARY KEY CHECK (singleton = 1),
            identity_private BLOB NOT NULL,     -- 32 clamped bytes
            registration_id  INTEGER NOT NULL,  -- 14 bits
            account_id       TEXT NOT NULL,
            device_id        INTEGER NOT NULL,
            auth_token       TEXT NOT NULL,
            server           TEXT NOT NULL,     -- host:port
            phone_number     TEXT NOT NULL,
            created_at       REAL NOT NULL
        );
        -- Next key id per kind ('signed', 'ec', 'kyber'): ids are never reused on one device,
        -- so the server's ALREADY_EXISTS check can never trip over our own old keys.
        CREATE TABLE key_ids (
            kind    TEXT PRIMARY KEY,
            next_id INTEGER NOT NULL
        );
        CREATE TABLE signed_pre_keys (
            key_id      INTEGER PRIMARY KEY,
            private_key BLOB NOT NULL,
            created_at  REAL NOT NULL,
            replaced_at REAL                -- NULL for the current key
        );
        CREATE TABLE one_time_pre_keys (
            key_id      INTEGER PRIMARY KEY,
            private_key BLOB NOT NULL
        );
        CREATE TABLE kyber_pre_keys (
            key_id      INTEGER PRIMARY KEY,
            seed        BLOB NOT NULL,       -- 64-byte ML-KEM seed
            last_resort INTEGER NOT NULL,    -- 1: kept after use
            created_at  REAL NOT NULL,
            replaced_at REAL                 -- last-resort keys: set when superseded
        );
        CREATE TABLE sessions (
            account_id TEXT NOT NULL,
            device_id  INTEGER NOT NULL,
            record     BLOB NOT NULL,        -- SessionRecord.to_bytes()
            updated_at REAL NOT NULL,
            PRIMARY KEY (account_id, device_id)
        ) WITHOUT ROWID;
        CREATE TABLE identities (
            account_id   TEXT NOT NULL,
            device_id    INTEGER NOT NULL,
            identity_key BLOB NOT NULL,      -- 0x05 || X25519, the trusted key
            first_seen   REAL NOT NULL,
            pending_key  BLOB,               -- a different key seen since, not yet trusted
            PRIMARY KEY (account_id, device_id)
        ) WITHOUT ROWID;
        CREATE TABLE contacts (
            phone_number TEXT PRIMARY KEY,
            account_id   TEXT NOT NULL
        );
        CREATE TABLE processed_envelopes (
            envelope_id  INTEGER PRIMARY KEY,
            processed_at REAL NOT NULL
        );
        CREATE INDEX processed_by_time ON processed_envelopes(processed_at);
        CREATE TABLE messages (
            id                INTEGER PRIMARY KEY,
            incoming          INTEGER NOT NULL,
            peer_account_id   TEXT NOT NULL,
            sender_account_id TEXT NOT NULL,
            sender_device_id  INTEGER NOT NULL,
            timestamp_ms      INTEGER NOT NULL,
            recorded_at       REAL NOT NULL,
            text              TEXT NOT NULL,
            envelope_id       INTEGER
        );
        CREATE INDEX messages_by_peer ON messages(peer_account_id, timestamp_ms);
        """,
    ),
    Migration(
        2,
        "the server connection (TLS, CA file) and a registration waiting for its code",
        """
        CREATE TABLE connection (
            singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
            server    TEXT NOT NULL,        -- host:port
            tls       INTEGER NOT NULL,     -- 1: TLS
            ca_file   TEXT                  -- PEM of the CA to trust, NULL for the system roots
        );
        INSERT INTO connection (singleton, server, tls, ca_file)
            SELECT 1, server, 0, NULL FROM local_identity;
        CREATE TABLE pending_verification (
            singleton       INTEGER PRIMARY KEY CHECK (singleton = 1),
            phone_number    TEXT NOT NULL,
            verification_id TEXT NOT NULL,
            business        INTEGER NOT NULL,
            device_name     TEXT NOT NULL,
            started_at      REAL NOT NULL
        );
        """,
    ),
    Migration(
        3,
        "the templates of business messages, as GetTemplate returned them",
        """
        -- A received template message is rendered from the approved text kept here. An
        -- approved template never changes (a new wording is a new template id), so an entry
        -- is refetched only when it is not approved yet, or by a sender checking its pause.
        CREATE TABLE templates (
            template_id TEXT PRIMARY KEY,
            template    BLOB NOT NULL,       -- a serialized parley.v1.Template
            fetched_at  REAL NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
)
LATEST_VERSION: Final = MIGRATIONS[-1].version


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run DDL inside the caller's transaction (``executescript`` would commit it)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Bring the schema to ``LATEST_VERSION``; return the versions applied."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > LATEST_VERSION:
        raise SchemaTooNewError(
            f"this profile's schema version {version} is newer than this client supports "
            f"({LATEST_VERSION}); upgrade Parley or use another --profile"
        )
    applied = []
    for migration in MIGRATIONS:
        if version < migration.version:
            conn.execute("BEGIN IMMEDIATE")
            try:
                _run_script(conn, migration.script)
                conn.execute(f"PRAGMA user_version = {migration.version}")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            applied.append(migration.version)
    return applied


# --- file modes -----------------------------------------------------------------------------


def warn_if_exposed(path: Path) -> bool:
    """Log a warning if group or others have any access to ``path``; True if they have.

    The profile holds private keys, the device's bearer token and the message history.
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return False
    if not mode & 0o077:
        return False
    wanted = DIRECTORY_MODE if path.is_dir() else FILE_MODE
    log.warning(
        "%s is accessible by other users (mode %04o): it holds this device's private keys"
        " and token; run `chmod %o %s`",
        path,
        mode,
        wanted,
        path,
    )
    return True


def _create_private_file(path: Path) -> None:
    """Create the database file 0600 before SQLite opens it (SQLite would use 0644 and give
    the -wal and -shm files the same mode); warn about existing files that are exposed."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        for candidate in (path, *(path.with_name(path.name + s) for s in SQLITE_SIDE_FILES)):
            warn_if_exposed(candidate)
        return
    os.close(fd)
    os.chmod(path, FILE_MODE)  # os.open's mode is filtered by the umask


# --- the store ----------------------------------------------------------------------------


class ClientStore:
    """The profile's SQLite file. Not thread-safe: one store per thread (or event loop)."""

    def __init__(self, path: Path | str, *, clock: Callable[[], float]) -> None:
        """Open (creating and migrating) the store.

        Args:
            path: the SQLite file (see :meth:`open_profile` for a profile directory).
            clock: seconds since the epoch; injected so that tests control key ages.
        """
        self.path = Path(path)
        self._clock = clock
        _create_private_file(self.path)
        self._conn = sqlite3.connect(
            str(self.path), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._depth = 0
        # Session records as last saved, decoded (see :meth:`session`).
        self._decoded: dict[tuple[str, int], SavedRecord] = {}
        # The committed local identity, once read: it is asked for by every call the client
        # makes (its token) and changes only through this store's own writes below.
        self._identity: LocalIdentity | None = None
        try:
            migrate(self._conn)
        except BaseException:
            self._conn.close()
            raise
        # What another connection's commit changes (see session).
        self._data_version: int = self._conn.execute("PRAGMA data_version").fetchone()[0]

    @classmethod
    def open_profile(cls, directory: Path | str, *, clock: Callable[[], float]) -> ClientStore:
        """Open the store of a profile directory, creating the directory (mode 0700)."""
        directory = Path(directory).expanduser()
        if directory.is_dir():
            warn_if_exposed(directory)
        else:
            directory.mkdir(parents=True, exist_ok=True, mode=DIRECTORY_MODE)
            directory.chmod(DIRECTORY_MODE)  # mkdir's mode is filtered by the umask
        return cls(directory / DB_FILENAME, clock=clock)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ClientStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[None]:
        """Group writes atomically; nested use joins the outer transaction (a savepoint).

        ``durable=False`` leaves the transaction open when the block ends, for a group
        commit (``client.group_commit``): its writes are committed by the next
        :meth:`commit`, or by the next durable transaction, which commits them too. Until
        then nothing may depend on them. A block that fails rolls back its own writes
        only, never those of earlier blocks still waiting for their commit.
        """
        outer = self._depth == 0
        savepoint = None
        if outer and not self._conn.in_transaction:
            self._conn.execute("BEGIN IMMEDIATE")
        else:
            savepoint = f"sp{self._depth}"
            self._conn.execute(f"SAVEPOINT {savepoint}")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            self._decoded.clear()  # decoded sessions may hold what is being rolled back
            if savepoint is None:
                self._conn.execute("ROLLBACK")
            else:
                self._conn.execute(f"ROLLBACK TO {savepoint}")
                self._conn.execute(f"RELEASE {savepoint}")
            raise
        self._depth -= 1
        if savepoint is not None:
            self._conn.execute(f"RELEASE {savepoint}")
        if outer and durable:
            self.commit()

    @property
    def pending(self) -> bool:
        """Writes of ``transaction(durable=False)`` blocks wait for :meth:`commit`."""
        return self._depth == 0 and self._conn.in_transaction

    def commit(self) -> None:
        """Commit the writes waiting since ``transaction(durable=False)`` blocks, all of
        them with one fsync; nothing to do when none wait. If the commit fails, they are
        rolled back and the error raised: none of them may be taken as durable."""
        if not self.pending:
            return
        try:
            self._conn.execute("COMMIT")
        except BaseException:
            self._decoded.clear()
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def _now(self) -> float:
        return self._clock()

    # --- local identity ---------------------------------------------------------------

    def local_identity(self) -> LocalIdentity | None:
        if self._identity is not None:
            return self._identity
        row = self._conn.execute(
            "SELECT identity_private, registration_id, account_id, device_id, auth_token,"
            " server, phone_number, created_at FROM local_identity"
        ).fetchone()
        identity = LocalIdentity(*row) if row else None
        if not self._conn.in_transaction:  # committed: a transaction may still roll back
            self._identity = identity
        return identity

    def require_identity(self) -> LocalIdentity:
        """The local identity, or a :class:`StoreError` saying how to get one."""
        identity = self.local_identity()
        if identity is None:
            raise StoreError(
                f"profile {self.path.parent} is not registered: run `parley register <phone>`"
                " or `parley link --code=CODE` first"
            )
        return identity

    def save_identity(self, identity: LocalIdentity) -> None:
        """Store this device's identity; refuses to overwrite an existing one."""
        if self.local_identity() is not None:
            raise StoreError(
                f"profile {self.path.parent} is already registered; use another --profile"
            )
        self._identity = None
        self._conn.execute(
            "INSERT INTO local_identity (singleton, identity_private, registration_id,"
            " account_id, device_id, auth_token, server, phone_number, created_at)"
            " VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                identity.identity_private,
                identity.registration_id,
                identity.account_id,
                identity.device_id,
                identity.auth_token,
                identity.server,
                identity.phone_number,
                identity.created_at,
            ),
        )

    def set_phone_number(self, phone_number: str) -> None:
        self._identity = None
        self._conn.execute("UPDATE local_identity SET phone_number = ?", (phone_number,))

    def holds_state(self) -> bool:
        """True once anything worth keeping is stored: an identity, a pending registration
        or a remembered connection (a profile without any can be deleted safely)."""
        row = self._conn.execute(
            "SELECT (SELECT count(*) FROM local_identity) + (SELECT count(*) FROM connection)"
            " + (SELECT count(*) FROM pending_verification)"
        ).fetchone()
        return bool(row[0])

    # --- connection and pending registration -------------------------------------------

    def connection(self) -> Connection | None:
        row = self._conn.execute("SELECT server, tls, ca_file FROM connection").fetchone()
        return Connection(row[0], bool(row[1]), row[2]) if row else None

    def save_connection(self, connection: Connection) -> None:
        self._conn.execute(
            "INSERT INTO connection (singleton, server, tls, ca_file) VALUES (1, ?, ?, ?)"
            " ON CONFLICT(singleton) DO UPDATE SET server = excluded.server,"
            " tls = excluded.tls, ca_file = excluded.ca_file",
            (connection.server, int(connection.tls), connection.ca_file),
        )

    def pending_verification(self) -> PendingVerification | None:
        row = self._conn.execute(
            "SELECT phone_number, verification_id, business, device_name, started_at"
            " FROM pending_verification"
        ).fetchone()
        if row is None:
            return None
        return PendingVerification(row[0], row[1], bool(row[2]), row[3], row[4])

    def save_pending_verification(self, pending: PendingVerification) -> None:
        """Remember a started registration (replacing an older one)."""
        self._conn.execute(
            "INSERT INTO pending_verification (singleton, phone_number, verification_id,"
            " business, device_name, started_at) VALUES (1, ?, ?, ?, ?, ?)"
            " ON CONFLICT(singleton) DO UPDATE SET phone_number = excluded.phone_number,"
            " verification_id = excluded.verification_id, business = excluded.business,"
            " device_name = excluded.device_name, started_at = excluded.started_at",
            (
                pending.phone_number,
                pending.verification_id,
                int(pending.business),
                pending.device_name,
                pending.started_at,
            ),
        )

    def clear_pending_verification(self) -> None:
        self._conn.execute("DELETE FROM pending_verification")

    # --- key ids ------------------------------------------------------------------------

    def allocate_key_ids(self, kind: str, count: int, first: int) -> list[int]:
        """Reserve ``count`` consecutive ids of ``kind``; ``first`` seeds a new counter.

        Ids wrap within u32 (skipping 0, which the protocol uses for "none").
        """
        with self.transaction():
            row = self._conn.execute(
                "SELECT next_id FROM key_ids WHERE kind = ?", (kind,)
            ).fetchone()
            start = int(row[0]) if row else first
            ids = [((start - 1 + i) % 0xFFFFFFFF) + 1 for i in range(count)]
            nxt = (ids[-1] % 0xFFFFFFFF) + 1 if ids else start
            self._conn.execute(
                "INSERT INTO key_ids (kind, next_id) VALUES (?, ?)"
                " ON CONFLICT(kind) DO UPDATE SET next_id = excluded.next_id",
                (kind, nxt),
            )
        return ids

    # --- signed prekeys ---------------------------------------------------------------

    def add_signed_pre_key(self, key_id: int, private_key: bytes) -> None:
        """Make ``key_id`` the current signed prekey; the previous one enters its grace period."""
        now = self._now()
        with self.transaction():
            self._conn.execute(
                "UPDATE signed_pre_keys SET replaced_at = ? WHERE replaced_at IS NULL", (now,)
            )
            self._conn.execute(
                "INSERT INTO signed_pre_keys (key_id, private_key, created_at) VALUES (?, ?, ?)",
                (key_id, private_key, now),
            )

    def current_signed_pre_key(self) -> SignedPreKeyRow | None:
        row = self._conn.execute(
            "SELECT key_id, private_key, created_at, replaced_at FROM signed_pre_keys"
            " WHERE replaced_at IS NULL"
        ).fetchone()
        return SignedPreKeyRow(*row) if row else None

    def signed_pre_key(self, key_id: int) -> bytes | None:
        row = self._conn.execute(
            "SELECT private_key FROM signed_pre_keys WHERE key_id = ?", (key_id,)
        ).fetchone()
        return bytes(row[0]) if row else None

    def signed_pre_key_ids(self) -> list[int]:
        return [
            int(r[0]) for r in self._conn.execute("SELECT key_id FROM signed_pre_keys ORDER BY 1")
        ]

    def prune_replaced_keys(self, grace_seconds: float) -> int:
        """Forget signed and last-resort Kyber prekeys replaced more than ``grace_seconds``
        ago. Until then a PreKeySignalMessage built from an older bundle still decrypts."""
        cutoff = self._now() - grace_seconds
        with self.transaction():
            a = self._conn.execute(
                "DELETE FROM signed_pre_keys WHERE replaced_at IS NOT NULL AND replaced_at < ?",
                (cutoff,),
            ).rowcount
            b = self._conn.execute(
                "DELETE FROM kyber_pre_keys WHERE last_resort = 1 AND replaced_at IS NOT NULL"
                " AND replaced_at < ?",
                (cutoff,),
            ).rowcount
        return int(a) + int(b)

    # --- one-time prekeys -------------------------------------------------------------

    def add_one_time_pre_keys(self, keys: list[tuple[int, bytes]]) -> None:
        self._conn.executemany(
            "INSERT INTO one_time_pre_keys (key_id, private_key) VALUES (?, ?)", keys
        )

    def one_time_pre_key(self, key_id: int) -> bytes | None:
        row = self._conn.execute(
            "SELECT private_key FROM one_time_pre_keys WHERE key_id = ?", (key_id,)
        ).fetchone()
        return bytes(row[0]) if row else None

    def remove_one_time_pre_key(self, key_id: int) -> None:
        self._conn.execute("DELETE FROM one_time_pre_keys WHERE key_id = ?", (key_id,))

    def count_one_time_pre_keys(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM one_time_pre_keys").fetchone()[0])

    # --- Kyber prekeys ----------------------------------------------------------------

    def add_kyber_pre_keys(self, keys: list[tuple[int, bytes]], *, last_resort: bool) -> None:
        """Add Kyber prekeys; a new last-resort key supersedes the previous one (grace)."""
        now = self._now()
        with self.transaction():
            if last_resort:
                self._conn.execute(
                    "UPDATE kyber_pre_keys SET replaced_at = ?"
                    " WHERE last_resort = 1 AND replaced_at IS NULL",
                    (now,),
                )
            self._conn.executemany(
                "INSERT INTO kyber_pre_keys (key_id, seed, last_resort, created_at)"
                " VALUES (?, ?, ?, ?)",
                [(key_id, seed, int(last_resort), now) for key_id, seed in keys],
            )

    def kyber_pre_key(self, key_id: int) -> tuple[bytes, bool] | None:
        """``(seed, is_last_resort)`` of a Kyber prekey, or None."""
        row = self._conn.execute(
            "SELECT seed, last_resort FROM kyber_pre_keys WHERE key_id = ?", (key_id,)
        ).fetchone()
        return (bytes(row[0]), bool(row[1])) if row else None

    def remove_one_time_kyber_pre_key(self, key_id: int) -> None:
        """Delete a used one-time Kyber prekey (a last-resort key is kept)."""
        self._conn.execute(
            "DELETE FROM kyber_pre_keys WHERE key_id = ? AND last_resort = 0", (key_id,)
        )

    def count_one_time_kyber_pre_keys(self) -> int:
        return int(
            self._conn.execute(
                "SELECT count(*) FROM kyber_pre_keys WHERE last_resort = 0"
            ).fetchone()[0]
        )

    # --- sessions -----------------------------------------------------------------------

    def load_session(self, account_id: str, device_id: int) -> bytes | None:
        row = self._conn.execute(
            "SELECT record FROM sessions WHERE account_id = ? AND device_id = ?",
            (account_id, device_id),
        ).fetchone()
        return bytes(row[0]) if row else None

    def session(self, account_id: str, device_id: int, kind: type[_Record]) -> _Record | None:
        """The session with a peer device as a ``kind`` (``kind.from_bytes`` of the record),
        or None.

        Decoding a record (a few KiB, most of it SPQR's state) costs as much as a ratchet
        step, so the object :meth:`save_session` saved last is handed back as long as its
        row cannot have changed under it: no other connection committed since (``PRAGMA
        data_version``, so a ``parley listen`` on the same profile in another process is
        seen), no rollback here, no other write of the row. The caller may change the object
        in place: what it changes is saved by :meth:`save_session` or undone by a rollback,
        which drops every object kept.
        """
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._decoded.clear()
            self._data_version = version
        key = (account_id, device_id)
        kept = self._decoded.get(key)
        if isinstance(kept, kind):
            return kept
        raw = self.load_session(account_id, device_id)
        if raw is None:
            return None
        record = kind.from_bytes(raw)
        self._decoded[key] = record
        return record

    def save_session(self, account_id: str, device_id: int, record: SavedRecord) -> None:
        """Save ``record`` (its ``to_bytes``) and keep the object for :meth:`session`."""
        self.store_session(account_id, device_id, record.to_bytes())
        self._decoded[(account_id, device_id)] = record

    def store_session(self, account_id: str, device_id: int, record: bytes) -> None:
        """Save a record's bytes (an object kept for :meth:`session` is dropped)."""
        self._decoded.pop((account_id, device_id), None)
        self._conn.execute(
            "INSERT INTO sessions (account_id, device_id, record, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(account_id, device_id) DO UPDATE SET record = excluded.record,"
            " updated_at = excluded.updated_at",
            (account_id, device_id, record, self._now()),
        )

    def delete_session(self, account_id: str, device_id: int) -> None:
        self._decoded.pop((account_id, device_id), None)
        self._conn.execute(
            "DELETE FROM sessions WHERE account_id = ? AND device_id = ?", (account_id, device_id)
        )

    def session_devices(self, account_id: str) -> list[int]:
        """Device ids of ``account_id`` we hold a session with, ascending."""
        return [
            int(r[0])
            for r in self._conn.execute(
                "SELECT device_id FROM sessions WHERE account_id = ? ORDER BY device_id",
                (account_id,),
            )
        ]

    # --- peer identities (TOFU) ---------------------------------------------------------

    def identity(self, account_id: str, device_id: int) -> bytes | None:
        row = self._conn.execute(
            "SELECT identity_key FROM identities WHERE account_id = ? AND device_id = ?",
            (account_id, device_id),
        ).fetchone()
        return bytes(row[0]) if row else None

    def identities(self, account_id: str) -> dict[int, bytes]:
        """Known identity keys of an account's devices, by device id."""
        return {
            int(r[0]): bytes(r[1])
            for r in self._conn.execute(
                "SELECT device_id, identity_key FROM identities WHERE account_id = ?",
                (account_id,),
            )
        }

    def check_identity(self, account_id: str, device_id: int, identity_key: bytes) -> None:
        """Trust on first use: record a new peer device's key, accept the same key again.

        Raises:
            UntrustedIdentityError: a different key is on file for this device.
        """
        known = self.identity(account_id, device_id)
        if known is None:
            self._conn.execute(
                "INSERT INTO identities (account_id, device_id, identity_key, first_seen)"
                " VALUES (?, ?, ?, ?)",
                (account_id, device_id, identity_key, self._now()),
            )
        elif known != identity_key:
            raise UntrustedIdentityError(
                account_id, device_id, identity_key, self.contact_phone(account_id)
            )

    def record_pending_identity(self, account_id: str, device_id: int, identity_key: bytes) -> None:
        """Remember a changed key that was refused, so that :meth:`trust_pending` can accept it
        after the user compared safety numbers (without another network round trip)."""
        self._conn.execute(
            "UPDATE identities SET pending_key = ? WHERE account_id = ? AND device_id = ?",
            (identity_key, account_id, device_id),
        )

    def pending_identities(self, account_id: str) -> dict[int, bytes]:
        """Changed, not yet trusted keys of an account's devices, by device id."""
        return {
            int(r[0]): bytes(r[1])
            for r in self._conn.execute(
                "SELECT device_id, pending_key FROM identities"
                " WHERE account_id = ? AND pending_key IS NOT NULL",
                (account_id,),
            )
        }

    def trust_pending(self, account_id: str) -> list[int]:
        """Accept every pending key of ``account_id``; return the devices whose key changed."""
        with self.transaction():
            devices = sorted(self.pending_identities(account_id))
            self._conn.execute(
                "UPDATE identities SET identity_key = pending_key, pending_key = NULL,"
                " first_seen = ? WHERE account_id = ? AND pending_key IS NOT NULL",
                (self._now(), account_id),
            )
        return devices

    def trust_identity(self, account_id: str, device_id: int, identity_key: bytes) -> None:
        """Accept ``identity_key`` for the device, replacing whatever was trusted before."""
        self._conn.execute(
            "INSERT INTO identities (account_id, device_id, identity_key, first_seen)"
            " VALUES (?, ?, ?, ?) ON CONFLICT(account_id, device_id) DO UPDATE SET"
            " identity_key = excluded.identity_key, first_seen = excluded.first_seen,"
            " pending_key = NULL",
            (account_id, device_id, identity_key, self._now()),
        )

    def forget_identity(self, account_id: str, device_id: int) -> None:
        self._conn.execute(
            "DELETE FROM identities WHERE account_id = ? AND device_id = ?",
            (account_id, device_id),
        )

    # --- contacts -----------------------------------------------------------------------

    def save_contact(self, phone_number: str, account_id: str) -> None:
        self._conn.execute(
            "INSERT INTO contacts (phone_number, account_id) VALUES (?, ?)"
            " ON CONFLICT(phone_number) DO UPDATE SET account_id = excluded.account_id",
            (phone_number, account_id),
        )

    def contact_account(self, phone_number: str) -> str | None:
        row = self._conn.execute(
            "SELECT account_id FROM contacts WHERE phone_number = ?", (phone_number,)
        ).fetchone()
        return str(row[0]) if row else None

    def contact_phone(self, account_id: str) -> str | None:
        row = self._conn.execute(
            "SELECT phone_number FROM contacts WHERE account_id = ?", (account_id,)
        ).fetchone()
        return str(row[0]) if row else None

    # --- processed envelopes --------------------------------------------------------------

    def is_processed(self, envelope_id: int) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM processed_envelopes WHERE envelope_id = ?", (envelope_id,)
        ).fetchone()
        return row is not None

    def mark_processed(self, envelope_id: int) -> None:
        self._conn.execute(
            "INSERT OR IGNORE INTO processed_envelopes (envelope_id, processed_at) VALUES (?, ?)",
            (envelope_id, self._now()),
        )

    def prune_processed(self, older_than_seconds: float) -> int:
        """Forget processed ids older than ``older_than_seconds``.

        Only ids the server can no longer redeliver may go: an acknowledged envelope is
        deleted at once, so a day or more is ample.
        """
        cur = self._conn.execute(
            "DELETE FROM processed_envelopes WHERE processed_at < ?",
            (self._now() - older_than_seconds,),
        )
        return int(cur.rowcount)

    # --- templates ------------------------------------------------------------------------

    def save_template(self, template_id: str, template: bytes) -> None:
        """Keep (or replace) a template as GetTemplate returned it (serialized)."""
        self._conn.execute(
            "INSERT INTO templates (template_id, template, fetched_at) VALUES (?, ?, ?)"
            " ON CONFLICT (template_id) DO UPDATE SET template = excluded.template,"
            " fetched_at = excluded.fetched_at",
            (template_id, template, self._now()),
        )

    def template(self, template_id: str) -> tuple[bytes, float] | None:
        """A kept template (serialized) and when it was fetched."""
        row = self._conn.execute(
            "SELECT template, fetched_at FROM templates WHERE template_id = ?", (template_id,)
        ).fetchone()
        return (bytes(row[0]), float(row[1])) if row is not None else None

    # --- history ----------------------------------------------------------------------------

    def add_message(
        self,
        *,
        incoming: bool,
        peer_account_id: str,
        sender_account_id: str,
        sender_device_id: int,
        timestamp_ms: int,
        text: str,
        envelope_id: int | None = None,
    ) -> int:
        cur = self._conn.execute(
            "INSERT INTO messages (incoming, peer_account_id, sender_account_id,"
            " sender_device_id, timestamp_ms, recorded_at, text, envelope_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                int(incoming),
                peer_account_id,
                sender_account_id,
                sender_device_id,
                timestamp_ms,
                self._now(),
                text,
                envelope_id,
            ),
        )
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    def messages(self, peer_account_id: str | None = None, limit: int = 100) -> list[MessageRow]:
        """The latest ``limit`` messages (of one conversation if given), oldest first."""
        where, args = (
            ("WHERE peer_account_id = ?", [peer_account_id])
            if peer_account_id
            else (
                "",
                [],
            )
        )
        rows = self._conn.execute(
            "SELECT id, incoming, peer_account_id, sender_account_id, sender_device_id,"
            f" timestamp_ms, recorded_at, text, envelope_id FROM messages {where}"
            " ORDER BY id DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [
            MessageRow(int(r[0]), bool(r[1]), r[2], r[3], int(r[4]), int(r[5]), r[6], r[7], r[8])
            for r in reversed(rows)
        ]
