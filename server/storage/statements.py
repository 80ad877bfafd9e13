"""Every area's storage SQL in one class: what a backend's transaction is made of.

Each backend subclasses it with its connection (`server.storage.transaction.SqliteTransaction`,
`server.storage.postgres.transaction.PostgresTransaction`) and overrides the few methods whose
SQL its dialect spells differently; the rest is written once, here and in the area modules.
"""

from __future__ import annotations

from server.storage.accounts import SqlAccounts
from server.storage.billing import SqlBilling
from server.storage.consent import SqlConsent
from server.storage.directory import SqlDirectory
from server.storage.keys import SqlKeys
from server.storage.limits import SqlLimits
from server.storage.links import SqlLinks
from server.storage.messages import SqlMessages
from server.storage.sending import SqlSending
from server.storage.support import SqlSupport
from server.storage.usage import SqlUsage


class Statements(
    SqlAccounts,
    SqlKeys,
    SqlMessages,
    SqlDirectory,
    SqlConsent,
    SqlSending,
    SqlSupport,
    SqlLinks,
    SqlBilling,
    SqlUsage,
    SqlLimits,
):
    """The storage methods of every area (server.domain.ports), over `connection`."""
