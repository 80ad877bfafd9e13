"""Issue 10's live-support story, end to end: a user and two agents of a business (linked
devices of the business account), real ParleyClient instances on a live server.

The user opens a support conversation; agents A and B claim it at the same moment and exactly
one wins; messages flow end to end between the user and that agent only (the other agent's
device gets nothing, and none of its one-time prekeys is spent); the conversation is
transferred, and the next message reaches the new agent and not the earlier one; the
conversation closes and messages go to every device again, reusing the sessions the user's
client kept. A queue stream watching from the start shows each step in order, and streams
resumed from any cursor continue without gap or duplicate.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from parley.v1 import support_pb2 as spb

from client.api import Event, ParleyClient, TextMessage
from client.errors import FailedPrecondition
from tests.client_helpers import closing, drain, linked, registered
from tests.conftest import LiveServer, ServerFactory

SHOP = "+15550007777"
USER = "+15550008888"
CODES = {SHOP: "777777", USER: "888888"}


@pytest.fixture
def story_server(make_server: ServerFactory) -> LiveServer:
    return make_server(test_numbers=CODES)


def texts_from(events: list[Event], sender: ParleyClient) -> list[str]:
    """The texts `sender`'s account wrote us (sync copies and receipts left out)."""
    return [
        e.text
        for e in events
        if isinstance(e, TextMessage) and e.sender_account_id == sender.account_id
    ]


def kinds(events: list[spb.SupportQueueEvent]) -> list[str]:
    return [spb.SupportEventKind.Name(e.kind).removeprefix("SUPPORT_EVENT_KIND_") for e in events]


async def follow(client: ParleyClient, cursor: int, into: list[spb.SupportQueueEvent]) -> None:
    async for event in client.support.queue(cursor, follow=True):
        into.append(event)


async def until(condition: list[spb.SupportQueueEvent], count: int) -> None:
    for _ in range(500):
        if len(condition) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the queue stream showed {len(condition)} events, not {count}")


def test_live_support_with_two_agents(story_server: LiveServer, tmp_path: Path) -> None:
    async def body() -> None:
        shop = await registered(story_server, tmp_path / "shop", SHOP, business=True)
        a = await linked(story_server, shop, tmp_path / "agent-a")
        b = await linked(story_server, shop, tmp_path / "agent-b")
        user = await registered(story_server, tmp_path / "user", USER)
        clients = [shop, a, b, user]
        await closing(clients, lambda: story(shop, a, b, user))

    asyncio.run(body())


async def story(shop: ParleyClient, a: ParleyClient, b: ParleyClient, user: ParleyClient) -> None:
    await shop.support.set_agent(a.device_id, True, "Ann")
    agents = await shop.support.set_agent(b.device_id, True, "Bob")
    assert [(x.device_id, x.display_name) for x in agents] == [(2, "Ann"), (3, "Bob")]
    names = {a.device_id: "Ann", b.device_id: "Bob"}

    # The primary device watches the queue live from the start.
    watched: list[spb.SupportQueueEvent] = []
    watcher = asyncio.create_task(follow(shop, 0, watched))

    opened = await user.support.open(SHOP, "My order never arrived")
    assert opened.created and opened.conversation.state == spb.SUPPORT_STATE_WAITING
    cid = opened.conversation.conversation_id
    # While it waits, the user's messages go to the primary device only.
    waiting = await user.send(SHOP, "Hello? Order A-17.")
    assert waiting.device_ids == (1,)
    assert texts_from(await drain(shop), user) == ["Hello? Order A-17."]

    # A and B claim at the same moment: exactly one wins, the other is told who has it.
    results = await asyncio.gather(
        a.support.claim(cid), b.support.claim(cid), return_exceptions=True
    )
    won = [r for r in results if isinstance(r, spb.SupportConversation)]
    lost = [r for r in results if isinstance(r, FailedPrecondition)]
    assert len(won) == 1 and len(lost) == 1, results
    first, second = (a, b) if won[0].agent_device_id == a.device_id else (b, a)
    assert f"already claimed by agent {names[first.device_id]!r}" in lost[0].message
    status = await user.support.status(SHOP)
    assert status.state == spb.SUPPORT_STATE_ASSIGNED
    assert status.agent_display_name == names[first.device_id]
    assert list(status.device_ids) == [1, first.device_id]

    # End to end, user <-> the first agent only; the second agent's prekeys are not touched.
    untouched = (await second.prekey_count()).pre_key_count
    sent = await user.send(SHOP, "Can you check where it is?")
    assert sent.device_ids == (1, first.device_id)  # the client followed the new set itself
    assert texts_from(await drain(first), user) == ["Can you check where it is?"]
    assert texts_from(await drain(shop), user) == ["Can you check where it is?"]
    assert texts_from(await drain(second), user) == []
    assert (await second.prekey_count()).pre_key_count == untouched
    await first.send(user.account_id, "It is at the depot; it ships today.")
    (reply,) = [e for e in await drain(user) if isinstance(e, TextMessage)]
    assert reply.text == "It is at the depot; it ships today."
    assert (reply.sender_device_id, reply.category) == (first.device_id, "service")

    # Transfer: the next message reaches the second agent, and not the first.
    moved = await first.support.transfer(cid, second.device_id)
    assert moved.agent_display_name == names[second.device_id]
    sent = await user.send(SHOP, "Thanks. Can I change the address?")
    assert sent.device_ids == (1, second.device_id)
    assert texts_from(await drain(second), user) == ["Thanks. Can I change the address?"]
    assert texts_from(await drain(first), user) == []
    # The user's client kept the first agent's session and identity: it still exists.
    assert user.store.identity(shop.account_id, first.device_id) is not None
    assert user.store.load_session(shop.account_id, first.device_id) is not None

    # The second agent closes it; the user's messages go to every device again, and the first
    # agent's session is reused (none of its one-time prekeys spent).
    closed = await second.support.close(cid)
    assert closed.state == spb.SUPPORT_STATE_CLOSED and not closed.device_ids
    assert (await user.support.status(SHOP)).state == spb.SUPPORT_STATE_CLOSED
    kept = (await first.prekey_count()).pre_key_count
    sent = await user.send(SHOP, "All sorted, bye!")
    assert sent.device_ids == (1, a.device_id, b.device_id)
    assert (await first.prekey_count()).pre_key_count == kept
    for device in (shop, a, b):
        assert texts_from(await drain(device), user)[-1:] == ["All sorted, bye!"]

    # The queue stream showed each step, in order, numbered without gaps.
    await until(watched, 4)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    assert kinds(watched) == ["OPENED", "CLAIMED", "TRANSFERRED", "CLOSED"]
    assert [e.sequence for e in watched] == [1, 2, 3, 4]
    assert {e.conversation_id for e in watched} == {cid}
    claimed, transferred, ended = watched[1:]
    assert claimed.agent_device_id == first.device_id
    assert (transferred.from_agent_device_id, transferred.agent_device_id) == (
        first.device_id,
        second.device_id,
    )
    assert (ended.closed_by, ended.agent_device_id) == ("agent", second.device_id)
    # Resumed from any cursor (by either agent), a stream continues without gap or duplicate.
    for cursor in range(5):
        resumed = [e async for e in second.support.queue(cursor)]
        assert [e.sequence for e in resumed] == list(range(cursor + 1, 5))
        assert resumed == watched[cursor:]

    # A live stream resumed from its cursor picks up what happened while it was away.
    live: list[spb.SupportQueueEvent] = []
    resumed_task = asyncio.create_task(follow(first, watched[-1].sequence, live))
    again = await user.support.open(SHOP, "Another question")
    await until(live, 1)
    resumed_task.cancel()
    await asyncio.gather(resumed_task, return_exceptions=True)
    assert [(e.sequence, e.conversation_id) for e in live] == [
        (5, again.conversation.conversation_id)
    ]
