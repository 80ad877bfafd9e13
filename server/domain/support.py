"""Live support: agents, support conversations, the queue, and who a user's messages reach.

A business marks some of its devices as agents (by its primary device). A user opens a
support conversation; it waits in the business's queue until an agent claims it, may be
transferred to another agent, and is closed by the agent, the primary device or the user.
Agents (and the primary device) watch the queue as a stream of numbered events.

Rules kept here, and what enforces each with concurrent writers (`server.domain.support_model`
lists the backend's guarantees U1-U4):
1. One open conversation per (business, user); opening again returns the open one (U1: a
   partial unique index, the insert's conflict skipped and the winner read).
2. Every state change is a conditional update naming the state it expects (U2): of two agents
   claiming at once exactly one wins, the other is told who has it (FAILED_PRECONDITION).
3. Each queue event is numbered from the business's counter in the transaction that makes the
   change (U3), so the stream's numbers increase without gaps in commit order: a watcher that
   resumes from the last number it saw misses nothing and repeats nothing.
4. **End to end to the agent.** While a conversation is open, the user's messages to the
   business may reach the business's primary device and the assigned agent's device only
   (the primary only while WAITING): `support_device_set` is the expected device set of the
   send's device check (`server.domain.admission.DeviceListRule`) and the device set
   GetPreKeyBundles returns to that user, so no other agent can read them and none of their
   one-time prekeys is spent. After a transfer the new agent gets the new messages only: the
   earlier ones were encrypted to the earlier agent and the server never had their plaintext
   to hand over.
5. Opening a conversation counts as the user contacting the business: it opens (or refreshes)
   the 24-hour customer-service window, so agents' replies are SERVICE messages inside it.
6. A watcher learns of new events from an in-process notifier (`QueueNotifier`) and reads them
   from the database, from its cursor (`server.domain.feeds.follow`): a wake-up lost (another
   replica's write, a notify between two reads) costs at most one keep-alive interval of
   latency, never an event. A stream holds one page of events and one wake-up flag, whatever
   the queue's length.
7. Only the primary device sets agents; agents and the primary device see the queue and
   conversations; the user sees their own conversations. Anything else is NOT_FOUND (a
   conversation id says nothing to whoever may not see it) or PERMISSION_DENIED (a device of
   the business that is not an agent).
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from server.domain import validation
from server.domain.auth import Principal, ensure_current
from server.domain.clock import Clock
from server.domain.consent import BLOCKED_MESSAGE
from server.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from server.domain.feeds import CaughtUp, KeepAlive, Wakeups, follow
from server.domain.model import AccountKind
from server.domain.ports import ReadTransaction, Store, Transaction
from server.domain.profiles import require_business_kind
from server.domain.support_model import (
    AgentRow,
    ConversationRow,
    EventRow,
    SupportEventKind,
    SupportState,
    support_device_set,
)

T = TypeVar("T")

MAX_TOPIC_CHARS = 200
# Events per database read of a queue stream: what one stream holds in memory at most.
QUEUE_PAGE = 100
_AGENT_HINT = "the business's primary device makes a device an agent (SetAgent)"


@dataclass(frozen=True)
class ConversationView:
    row: ConversationRow
    agent_display_name: str
    device_ids: tuple[int, ...]  # where the user's messages go while it is open; () when closed


QueueItem = EventRow | CaughtUp | KeepAlive


class QueueNotifier(Wakeups):
    """Wakes this server's queue streams of a business after a change commits (rule 6)."""


def _topic(value: str) -> str:
    value = value.strip()
    if len(value) > MAX_TOPIC_CHARS:
        raise InvalidArgument(
            f"topic is {len(value)} characters long; at most {MAX_TOPIC_CHARS} are allowed"
        )
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in value):
        raise InvalidArgument("topic must not contain control or unassigned characters")
    return value


def _agent_name(tx: ReadTransaction, account_id: str, device_id: int) -> str:
    if not device_id:
        return ""
    agent = tx.get_agent(account_id, device_id)
    return agent.display_name if agent is not None else ""


def _view(tx: ReadTransaction, row: ConversationRow) -> ConversationView:
    devices = support_device_set(tx, row.business_account_id, row.user_account_id)
    open_now = row.state != SupportState.CLOSED
    return ConversationView(
        row,
        _agent_name(tx, row.business_account_id, row.agent_device_id),
        devices if open_now and devices is not None else (),
    )


def _staff(tx: ReadTransaction, caller: Principal, what: str) -> AgentRow | None:
    """The caller's agent row (None for the primary device that is not an agent); refuse a
    person (FAILED_PRECONDITION) and a business device that is neither (PERMISSION_DENIED)."""
    require_business_kind(tx, caller.account_id, what)
    agent = tx.get_agent(caller.account_id, caller.device_id)
    if agent is None and not caller.is_primary:
        raise PermissionDenied(
            f"device {caller.device_id} is not an agent of this business, so it cannot {what};"
            f" {_AGENT_HINT}"
        )
    return agent


def _who(tx: ReadTransaction, row: ConversationRow) -> str:
    name = _agent_name(tx, row.business_account_id, row.agent_device_id)
    label = f"{name!r} " if name else ""
    return f"agent {label}(device {row.agent_device_id})"


class SupportDesk:
    """The live-support RPCs' domain: one method per RPC."""

    def __init__(self, db: Store, clock: Clock, keepalive_interval: float) -> None:
        self._db = db
        self._clock = clock
        self.keepalive_interval = keepalive_interval
        self.notifier = QueueNotifier()

    # -- agents -------------------------------------------------------------------------------

    async def set_agent(
        self, caller: Principal, device_id: int, on: bool, display_name: str
    ) -> list[AgentRow]:
        device = validation.device_id(device_id)
        name = validation.display_name(display_name, field="display_name") if on else ""
        now = self._clock.now()

        def job(tx: Transaction) -> list[AgentRow]:
            ensure_current(tx, caller)
            require_business_kind(tx, caller.account_id, "have support agents")
            if not caller.is_primary:
                raise PermissionDenied(
                    "only the business's primary device (device 1) sets agents; call SetAgent"
                    " from it"
                )
            if all(d.device_id != device for d in tx.list_devices(caller.account_id)):
                raise NotFound(
                    f"device {device} is not a device of this business; ListDevices shows them"
                )
            if on:
                tx.put_agent(AgentRow(caller.account_id, device, name, now))
            else:
                held = tx.count_assigned(caller.account_id, device)
                if held:
                    raise FailedPrecondition(
                        f"device {device} still has {held} assigned support conversation(s);"
                        " transfer or close them first (TransferConversation,"
                        " CloseConversation)"
                    )
                tx.delete_agent(caller.account_id, device)
            return tx.list_agents(caller.account_id)

        agents = await self._db.write(job)
        # A device that stopped being an agent ends its queue stream at the stream's next read.
        self.notifier.notify(caller.account_id)
        return agents

    async def list_agents(self, caller: Principal) -> list[AgentRow]:
        def read(tx: ReadTransaction) -> list[AgentRow]:
            require_business_kind(tx, caller.account_id, "have support agents")
            return tx.list_agents(caller.account_id)

        return await self._db.read(read)

    # -- conversations ------------------------------------------------------------------------

    async def open(
        self, caller: Principal, business_account_id: str, topic: str
    ) -> tuple[ConversationView, bool]:
        business = validation.uuid_string(business_account_id, field="business_account_id")
        about = _topic(topic)
        now = self._clock.now()
        user = caller.account_id

        def job(tx: Transaction) -> tuple[ConversationView, bool]:
            ensure_current(tx, caller)
            account = tx.get_account(business)
            if account is None:
                raise NotFound(f"no account {business}; look the business's number up first")
            if business == user:
                raise FailedPrecondition(
                    "that is your own account: open a support conversation with another business"
                )
            if account.kind != AccountKind.BUSINESS:
                raise FailedPrecondition(
                    f"account {business} is not a business; live support is offered by"
                    " business accounts only (message a person directly)"
                )
            if tx.get_block(business, user) is not None:
                raise PermissionDenied(BLOCKED_MESSAGE)
            tx.open_window(business, user, now)  # rule 5
            row = ConversationRow(
                str(uuid.uuid4()), business, user, about, SupportState.WAITING, 0, now, now
            )
            created = tx.insert_conversation(row)
            if created:
                tx.append_event(
                    EventRow(business, 0, SupportEventKind.OPENED, row.conversation_id, user,
                             about, 0, "", 0, "", now)
                )  # fmt: skip
            else:
                existing = tx.open_conversation(business, user)
                assert existing is not None  # the unique index refused ours for it
                row = existing
            return _view(tx, row), created

        view, created = await self._db.write(job)
        if created:
            self.notifier.notify(business)
        return view, created

    async def get(
        self,
        caller: Principal,
        conversation_id: str,
        business_account_id: str,
        user_account_id: str,
    ) -> ConversationView:
        given = [bool(conversation_id), bool(business_account_id), bool(user_account_id)]
        if sum(given) != 1:
            raise InvalidArgument(
                "name the conversation one way: conversation_id, or business_account_id (a"
                " user asking about their conversation with a business), or user_account_id"
                " (a business asking about its conversation with a user)"
            )
        if conversation_id:
            cid = validation.uuid_string(conversation_id, field="conversation_id")

            def by_id(tx: ReadTransaction) -> ConversationView:
                return _view(tx, self._visible(tx, caller, cid, "read support conversations"))

            return await self._db.read(by_id)
        if business_account_id:
            business = validation.uuid_string(business_account_id, field="business_account_id")

            def by_business(tx: ReadTransaction) -> ConversationView:
                row = tx.latest_conversation(business, caller.account_id)
                if row is None:
                    raise NotFound(
                        f"you have no support conversation with {business}; open one"
                        " (OpenSupportConversation)"
                    )
                return _view(tx, row)

            return await self._db.read(by_business)
        user = validation.uuid_string(user_account_id, field="user_account_id")

        def by_user(tx: ReadTransaction) -> ConversationView:
            _staff(tx, caller, "read support conversations")
            row = tx.latest_conversation(caller.account_id, user)
            if row is None:
                raise NotFound(f"user {user} has no support conversation with you")
            return _view(tx, row)

        return await self._db.read(by_user)

    @staticmethod
    def _visible(
        tx: ReadTransaction, caller: Principal, conversation_id: str, what: str
    ) -> ConversationRow:
        """The conversation if the caller is its user or the business's staff; NOT_FOUND for
        everyone else (rule 7)."""
        row = tx.get_conversation(conversation_id)
        if row is not None and row.user_account_id == caller.account_id:
            return row
        if row is not None and row.business_account_id == caller.account_id:
            _staff(tx, caller, what)
            return row
        raise NotFound(
            f"no support conversation {conversation_id} that you can see; the business's"
            " queue (WatchSupportQueue) and GetSupportConversation name yours"
        )

    async def claim(self, caller: Principal, conversation_id: str) -> ConversationView:
        cid = validation.uuid_string(conversation_id, field="conversation_id")
        now = self._clock.now()

        def job(tx: Transaction) -> ConversationView:
            ensure_current(tx, caller)
            agent = self._agent(tx, caller, "claim conversations")
            row = self._business_row(tx, caller, cid)
            moved = tx.move_conversation(
                cid, SupportState.WAITING, None, SupportState.ASSIGNED, caller.device_id, now
            )
            if not moved:
                current = tx.get_conversation(cid)
                assert current is not None
                if current.state == SupportState.CLOSED:
                    raise FailedPrecondition(f"conversation {cid} is closed; nothing to claim")
                raise FailedPrecondition(
                    f"conversation {cid} is already claimed by {_who(tx, current)}; pick another"
                    " from the queue"
                )
            tx.append_event(
                EventRow(row.business_account_id, 0, SupportEventKind.CLAIMED, cid,
                         row.user_account_id, row.topic, caller.device_id, agent.display_name,
                         0, "", now)
            )  # fmt: skip
            return _view(tx, tx.get_conversation(cid) or row)

        view = await self._db.write(job)
        self.notifier.notify(caller.account_id)
        return view

    async def transfer(
        self, caller: Principal, conversation_id: str, to_device_id: int
    ) -> ConversationView:
        cid = validation.uuid_string(conversation_id, field="conversation_id")
        target = validation.device_id(to_device_id, field="to_device_id")
        now = self._clock.now()

        def job(tx: Transaction) -> ConversationView:
            ensure_current(tx, caller)
            _staff(tx, caller, "transfer conversations")
            row = self._business_row(tx, caller, cid)
            if row.state != SupportState.ASSIGNED:
                state = "closed" if row.state == SupportState.CLOSED else "waiting (claim it)"
                raise FailedPrecondition(
                    f"conversation {cid} is {state}; only an assigned conversation is transferred"
                )
            if caller.device_id != row.agent_device_id and not caller.is_primary:
                raise PermissionDenied(
                    f"conversation {cid} is assigned to {_who(tx, row)}; only that agent or the"
                    " primary device transfers it"
                )
            if all(d.device_id != target for d in tx.list_devices(caller.account_id)):
                raise NotFound(f"device {target} is not a device of this business")
            to_agent = tx.get_agent(caller.account_id, target)
            if to_agent is None:
                raise FailedPrecondition(
                    f"device {target} is not an agent; transfer to one of ListAgents, or"
                    f" {_AGENT_HINT}"
                )
            if target == row.agent_device_id:
                raise FailedPrecondition(
                    f"conversation {cid} is already assigned to device {target}"
                )
            if not tx.move_conversation(
                cid, SupportState.ASSIGNED, row.agent_device_id, SupportState.ASSIGNED, target, now
            ):
                raise FailedPrecondition(
                    f"conversation {cid} changed meanwhile; read it again"
                    " (GetSupportConversation) and retry"
                )
            tx.append_event(
                EventRow(row.business_account_id, 0, SupportEventKind.TRANSFERRED, cid,
                         row.user_account_id, row.topic, target, to_agent.display_name,
                         row.agent_device_id, "", now)
            )  # fmt: skip
            return _view(tx, tx.get_conversation(cid) or row)

        view = await self._db.write(job)
        self.notifier.notify(caller.account_id)
        return view

    async def close(self, caller: Principal, conversation_id: str) -> ConversationView:
        cid = validation.uuid_string(conversation_id, field="conversation_id")
        now = self._clock.now()

        def job(tx: Transaction) -> ConversationView:
            ensure_current(tx, caller)
            row = self._visible(tx, caller, cid, "close conversations")
            if row.state == SupportState.CLOSED:
                raise FailedPrecondition(f"conversation {cid} is closed already")
            if row.user_account_id == caller.account_id:
                closed_by = "user"
            elif caller.device_id == row.agent_device_id:
                closed_by = "agent"
            elif row.state == SupportState.WAITING and tx.get_agent(
                caller.account_id, caller.device_id
            ):
                closed_by = "agent"  # nobody owns a waiting conversation: any agent may close
            elif caller.is_primary:
                closed_by = "primary"
            else:
                raise PermissionDenied(
                    f"conversation {cid} is assigned to {_who(tx, row)}; only that agent, the"
                    " primary device or the user closes it"
                )
            if not tx.move_conversation(
                cid, row.state, row.agent_device_id, SupportState.CLOSED, row.agent_device_id, now
            ):
                raise FailedPrecondition(
                    f"conversation {cid} changed meanwhile; read it again"
                    " (GetSupportConversation) and retry"
                )
            tx.append_event(
                EventRow(row.business_account_id, 0, SupportEventKind.CLOSED, cid,
                         row.user_account_id, row.topic, row.agent_device_id,
                         _agent_name(tx, row.business_account_id, row.agent_device_id), 0,
                         closed_by, now)
            )  # fmt: skip
            return _view(tx, tx.get_conversation(cid) or row)

        view = await self._db.write(job)
        self.notifier.notify(view.row.business_account_id)
        return view

    @staticmethod
    def _agent(tx: ReadTransaction, caller: Principal, what: str) -> AgentRow:
        require_business_kind(tx, caller.account_id, what)
        agent = tx.get_agent(caller.account_id, caller.device_id)
        if agent is None:
            raise PermissionDenied(
                f"device {caller.device_id} is not an agent of this business, so it cannot"
                f" {what}; {_AGENT_HINT}"
            )
        return agent

    @staticmethod
    def _business_row(tx: ReadTransaction, caller: Principal, cid: str) -> ConversationRow:
        row = tx.get_conversation(cid)
        if row is None or row.business_account_id != caller.account_id:
            raise NotFound(f"no support conversation {cid} in your queue")
        return row

    # -- the queue stream ---------------------------------------------------------------------

    def watch(self, caller: Principal, cursor: int) -> AsyncIterator[QueueItem]:
        """Every event after `cursor`, CaughtUp once, then live events and keep-alives (rule 6).
        Each page read re-checks that the device may watch, so a device that stops being an
        agent stops receiving (PERMISSION_DENIED); revocation ends the call (its Lease)."""
        business = caller.account_id

        def page(after: int) -> Callable[[ReadTransaction], list[EventRow]]:
            def read(tx: ReadTransaction) -> list[EventRow]:
                _staff(tx, caller, "watch the support queue")
                return tx.events_after(business, after, QUEUE_PAGE)

            return read

        return follow(
            self._db, self.notifier, business, cursor, page, lambda row: row.sequence,
            QUEUE_PAGE, self.keepalive_interval,
        )  # fmt: skip

    def close_streams(self) -> None:
        """End every queue stream (UNAVAILABLE: reconnect) and refuse new ones: the server is
        stopping."""
        self.notifier.close()
