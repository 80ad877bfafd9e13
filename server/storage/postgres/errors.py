"""What the PostgreSQL backend reports when the database fails, in words a caller and an operator
can act on: the same `StorageFull` / `StorageUnavailable` the SQLite backend raises (see
`server.storage.errors`), so the RPC layer maps both to RESOURCE_EXHAUSTED / UNAVAILABLE.

An error of our own SQL (a syntax error, a constraint a job violated after its retries) stays
what it is: a defect, answered INTERNAL with a logged incident.
"""

from __future__ import annotations

import psycopg
from psycopg import errors as pg
from psycopg_pool import PoolTimeout

from server.storage.errors import FULL_MESSAGE, StorageFull, StorageUnavailable

# Conflicts between concurrent transactions: the job is run again (it may run more than once,
# ports guarantee 1), and the second run sees the other writer's committed rows. A unique
# violation is one too: a row the job read as absent was inserted by another replica; and a
# foreign key violation: a row the job read as present was deleted by another replica.
RETRYABLE: tuple[type[BaseException], ...] = (
    pg.SerializationFailure,
    pg.DeadlockDetected,
    pg.UniqueViolation,
    pg.ForeignKeyViolation,
    pg.LockNotAvailable,
)

UNREACHABLE = (
    "the server cannot reach its PostgreSQL database right now, so this cannot be done; "
    "retry in a moment. Operator: check that PostgreSQL is running and reachable at the "
    "--database address, then see the server log"
)


def translate(exc: BaseException) -> BaseException:
    """The storage error for a failure of the database server or the network; else `exc`."""
    if isinstance(exc, PoolTimeout):
        return StorageUnavailable(UNREACHABLE)
    if not isinstance(exc, psycopg.Error):
        return exc
    if isinstance(exc, pg.DiskFull | pg.OutOfMemory):
        return StorageFull(FULL_MESSAGE)
    if isinstance(exc, RETRYABLE):
        return StorageUnavailable(
            "the server's database was busy with concurrent changes to the same rows; retry "
            "in a moment"
        )
    if isinstance(exc, psycopg.OperationalError | pg.AdminShutdown | pg.CannotConnectNow):
        return StorageUnavailable(UNREACHABLE)
    if isinstance(exc, pg.ReadOnlySqlTransaction | pg.InsufficientPrivilege):
        return StorageUnavailable(
            f"the server cannot write its PostgreSQL database ({exc.diag.message_primary}); "
            "retry later. Operator: the database must be a writable primary, and the role in "
            "--database must own Parley's tables"
        )
    return exc
