"""Click-to-chat's rows and storage operations: links, number-link settings, entry windows.

Kept apart from `server.domain.model` and `server.domain.ports` (as consent and the sending
rules are) so the area is one module each backend implements (`server.storage.links`), mixed
into the transaction protocols of `server.domain.ports`.

What every backend guarantees here (on top of `server.domain.ports`):
L1. Nothing records who opened a link. `count_open` and `count_number_link_open` bump a
    counter in one UPDATE (resp. upsert) of the owner's row and write nothing else; the
    entry window names (business, user) but never the link.
L2. `open_entry_window` is one conditional upsert on (business, user): it opens a window
    only when the pair has none still open at `at`, and reports whether it did, so of
    concurrent first messages from a link exactly one opens the window and counts the chat.
L3. `insert_link` is one INSERT whose SELECT counts the owner's links (`< max`): the cap on
    links per account holds with one writer and may be passed by at most one link per
    concurrent writer elsewhere (a cap on storage, not a rule anyone relies on); the code
    is the primary key, so a (96-bit, never expected) collision fails instead of replacing.
L4. Every read is indexed: a link by its code (primary key), an account's links by
    `chat_links_by_account`, settings and entry windows by primary key.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol


class LinkRow(NamedTuple):
    code: str
    account_id: str
    prefilled_text: str
    label: str
    created_at: float
    opens: int
    chats_started: int


class LinkSettingsRow(NamedTuple):
    account_id: str
    number_links: bool | None  # None: the default of the account's kind
    number_link_opens: int


class EntryWindowRow(NamedTuple):
    business_account_id: str
    user_account_id: str
    opened_at: float
    closes_at: float


class LinkReads(Protocol):
    def get_link(self, code: str) -> LinkRow | None:
        """One link by its code (primary key, L4)."""
        ...

    def links_of(self, account_id: str) -> list[LinkRow]:
        """The account's links, oldest first (L4)."""
        ...

    def link_settings(self, account_id: str) -> LinkSettingsRow | None: ...

    def entry_window(self, business_account_id: str, user_account_id: str) -> EntryWindowRow | None:
        """The latest entry window of the pair, open or closed (primary key, L4)."""
        ...


class LinkWrites(Protocol):
    def insert_link(self, row: LinkRow, max_links: int) -> bool:
        """Insert unless the owner has `max_links` already; whether it did (L3)."""
        ...

    def delete_link(self, account_id: str, code: str) -> bool:
        """Delete the owner's link; whether there was one."""
        ...

    def count_open(self, code: str) -> LinkRow | None:
        """Add one open to the link and return it; None when there is no such link (L1)."""
        ...

    def count_chat_started(self, code: str) -> None:
        """Add one chat started to the link (a no-op if it was deleted meanwhile)."""
        ...

    def set_number_links(self, account_id: str, enabled: bool) -> LinkSettingsRow: ...

    def count_number_link_open(self, account_id: str) -> None:
        """Add one open to the account's number link (an upsert, L1)."""
        ...

    def open_entry_window(
        self, business_account_id: str, user_account_id: str, at: float, closes_at: float
    ) -> bool:
        """Open the pair's entry window unless one is still open at `at`; whether it did (L2)."""
        ...
