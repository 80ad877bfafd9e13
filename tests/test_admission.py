"""The send path's admission rules over a live server: deferred writes are applied only when
every rule passed, in the transaction that stores the envelopes; a request_id race rolls the
whole job back and runs it again; the domain's enums are the proto's numbers.

Extra rules are added to the running server's rule list, the way the business rules will be;
they write through the real SQLite transaction, so what they leave behind is read back from the
database file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import cast

import pytest
from parley.v1 import account_pb2 as apb
from parley.v1 import messaging_pb2 as mpb

from server.domain.admission import (
    RULES,
    AdmissionRule,
    DeferredWrite,
    Draft,
    SendJob,
)
from server.domain.errors import FailedPrecondition
from server.domain.model import (
    AccountKind,
    ContentType,
    MessageCategory,
    MessageRow,
    MessageState,
    VerificationRow,
)
from server.domain.ports import Transaction
from tests.conftest import LiveServer
from tests.test_messaging import ALICE, BOB, Stream, failure, member, send_request, stub

REFUSED_TS = 13  # client_timestamp_ms that the refusing test rule refuses
NOTE_PHONE = "+1"  # the verification rows of NoteSend, apart from registrations' own
NOTED = f"SELECT verification_id FROM verifications WHERE phone_number = '{NOTE_PHONE}'"


@dataclass(frozen=True)
class NoteSend:
    """A deferred write with an effect the test can read back: a verification row named after
    the send's request id (any table would do; no business table exists yet)."""

    request_id: str

    def apply(self, tx: Transaction) -> None:
        tx.insert_verification(
            VerificationRow(self.request_id, NOTE_PHONE, b"", 0.0, 0.0, 0, False)
        )


class AskForWrite:
    def prepare(self, job: SendJob, drafts: Sequence[Draft]) -> None:
        pass

    def check(self, draft: Draft, job: SendJob) -> Sequence[DeferredWrite]:
        return [NoteSend(draft.request.request_id)]


class RefuseMarked:
    def prepare(self, job: SendJob, drafts: Sequence[Draft]) -> None:
        pass

    def check(self, draft: Draft, job: SendJob) -> Sequence[DeferredWrite]:
        if draft.request.client_ts_ms == REFUSED_TS:
            raise FailedPrecondition("refused by the test rule")
        return ()


@dataclass
class RaceOnce:
    """Plays another replica: after the idempotency lookup of the first run, a row with the
    same (sender, request_id) appears, so the job's insert finds its request id taken."""

    runs: int = 0
    raced: set[str] = field(default_factory=set)

    def prepare(self, job: SendJob, drafts: Sequence[Draft]) -> None:
        self.runs += 1
        if self.runs > 1:
            return
        tx = cast(Transaction, job.tx)  # a rule reads; the test writes through it anyway
        for d in drafts:
            taken = d.message._replace(message_id=d.message.message_id - 1)
            tx.insert_messages([taken])
            self.raced.add(d.request.request_id)

    def check(self, draft: Draft, job: SendJob) -> Sequence[DeferredWrite]:
        return ()


def use_rules(server: LiveServer, rules: Sequence[AdmissionRule]) -> None:
    live = server._server
    assert live is not None
    live.mailbox.admission.rules = tuple(rules)


def rows(server: LiveServer, sql: str) -> list[tuple[object, ...]]:
    return list(server.sql(sql))


def with_extra(*extra: AdmissionRule) -> list[AdmissionRule]:
    """The built-in rules with `extra` where business rules go: after the probe."""
    return [*RULES, *extra]


def test_deferred_writes_are_applied_only_for_sends_every_rule_passed(
    server: LiveServer,
) -> None:
    alice, bob = member(server, ALICE), member(server, BOB)
    use_rules(server, with_extra(AskForWrite(), RefuseMarked()))
    passed = send_request([bob], b"passes")
    refused = send_request([bob], b"refused")
    refused.client_timestamp_ms = REFUSED_TS
    mismatched = send_request([bob], b"wrong device list")
    mismatched.messages[0].registration_id += 1  # stale: the device rule refuses it
    batch = stub(server).SendMessages(
        mpb.SendMessagesRequest(requests=[passed, refused, mismatched]),
        metadata=alice.device.metadata,
    )
    failed_precondition = 9
    assert [r.code for r in batch.results] == [0, failed_precondition, failed_precondition]
    assert batch.results[1].message == "refused by the test rule"
    assert batch.results[2].mismatched_devices.stale_devices
    noted = {r[0] for r in rows(server, NOTED)}
    # The refused send's rule-requested write is gone with it; so is everything of the send
    # the device rule refused before the extra rules ran.
    assert noted == {passed.request_id}
    stored = {r[0] for r in rows(server, "SELECT request_id FROM messages")}
    assert stored == {passed.request_id}
    stream = Stream(server, bob)
    assert [e.content for e in stream.until_empty()] == [b"passes"]
    stream.close()


def test_a_retry_and_a_probe_are_answered_before_later_rules(server: LiveServer) -> None:
    """A retried request_id gets its first result and a probe its "not stored", without the
    later rules (limits, billing) seeing them: no second deferred write."""
    alice, bob = member(server, ALICE), member(server, BOB)
    use_rules(server, with_extra(AskForWrite()))
    first = send_request([bob], b"once")
    sent = stub(server).SendMessage(first, metadata=alice.device.metadata)
    retried = stub(server).SendMessage(first, metadata=alice.device.metadata)
    assert retried.message_id == sent.message_id
    probe = mpb.SendMessageRequest(
        request_id="6f1c2a3b-0000-4000-8000-000000000001",
        recipient_account_id=alice.device.account_id,
    )
    assert not stub(server).SendMessage(probe, metadata=alice.device.metadata).stored
    noted = [r[0] for r in rows(server, NOTED)]
    assert noted == [first.request_id]


def test_a_request_id_race_rolls_the_job_back_and_runs_it_again(server: LiveServer) -> None:
    alice, bob = member(server, ALICE), member(server, BOB)
    racer = RaceOnce()
    use_rules(server, [*RULES[:2], racer, *RULES[2:], AskForWrite()])
    request = send_request([bob], b"raced")
    sent = stub(server).SendMessage(request, metadata=alice.device.metadata)
    assert racer.runs == 2 and racer.raced == {request.request_id}
    assert sent.stored
    # The first run left nothing (its deferred write included); the second stored the send once.
    assert rows(server, "SELECT message_id, request_id FROM messages") == [
        (sent.message_id, request.request_id)
    ]
    assert [r[0] for r in rows(server, NOTED)] == [request.request_id]


def test_insert_messages_skips_a_taken_request_id_instead_of_failing(server: LiveServer) -> None:
    """Storage guarantee 3: UNIQUE (sender, request_id) with ON CONFLICT DO NOTHING."""
    alice = member(server, ALICE)
    row = MessageRow(10, alice.device.account_id, 1, "x", "r", b"h", 0.0, 0)

    def job(tx: Transaction) -> None:
        assert tx.insert_messages([row]) == 1
        again = [row._replace(message_id=11), row._replace(message_id=12, request_id="s")]
        assert tx.insert_messages(again) == 1
        assert tx.find_messages(alice.device.account_id, ["r", "s"]).keys() == {"r", "s"}
        assert tx.find_messages(alice.device.account_id, ["r"])["r"].message_id == 10

    server.run(lambda s: s.db.write(job))


@pytest.mark.parametrize(
    ("domain", "proto", "prefix"),
    [
        (AccountKind, apb.AccountKind, "ACCOUNT_KIND_"),
        (MessageCategory, mpb.MessageCategory, "MESSAGE_CATEGORY_"),
        (ContentType, mpb.ContentType, "CONTENT_TYPE_"),
    ],
)
def test_domain_enums_have_the_proto_numbers(
    domain: type[IntEnum], proto: object, prefix: str
) -> None:
    wire = {
        name.removeprefix(prefix): number
        for name, number in proto.items()  # type: ignore[attr-defined]
        if name != f"{prefix}UNSPECIFIED"
    }
    ours = {m.name: int(m) for m in domain if m.name != "UNSPECIFIED"}
    assert ours == wire


def test_message_states_reported_to_senders_are_delivery_states() -> None:
    assert int(MessageState.DELIVERED) == mpb.DELIVERY_STATE_DELIVERED
    assert int(MessageState.FAILED) == mpb.DELIVERY_STATE_FAILED


def test_an_unstored_online_send_may_not_ask_for_writes(server: LiveServer) -> None:
    alice, bob = member(server, ALICE), member(server, BOB)
    use_rules(server, with_extra(AskForWrite()))
    typing = send_request([bob], b"typing", online_only=True)
    err = failure(lambda: stub(server).SendMessage(typing, metadata=alice.device.metadata))
    assert err.code().name == "INTERNAL"


TEMPLATE_ID = "0b6d5e4c-3a10-4c1e-9f7a-2b6d5e4c3a10"
UNSTAMPED_TS = 17  # client_timestamp_ms of sends the stamping test rule leaves alone
OTHER_TS = 19  # ... and of those it stamps as another template


class StampTemplate:
    """Plays the business rule: stamps each send naming TEMPLATE_ID with the category and name
    it decides, as the server's rule does from the approved template."""

    def prepare(self, job: SendJob, drafts: Sequence[Draft]) -> None:
        pass

    def check(self, draft: Draft, job: SendJob) -> Sequence[DeferredWrite]:
        r = draft.request
        if r.template_id and r.client_ts_ms != UNSTAMPED_TS:
            if r.client_ts_ms == OTHER_TS:
                job.stamp(draft, int(MessageCategory.MARKETING), "spring_sale", r.template_id)
            else:
                job.stamp(draft, int(MessageCategory.UTILITY), "order_update", r.template_id)
        return ()


def test_the_stored_rows_carry_what_the_rules_stamped_whatever_was_predicted(
    server: LiveServer,
) -> None:
    """A draft of a template a rule stamped before is made with that stamp (so the job need not
    remake its rows); the rows stored are still what this job's rules decided: the same stamp,
    another one, or none (the request's own metadata)."""
    alice, bob = member(server, ALICE), member(server, BOB)
    use_rules(server, with_extra(StampTemplate()))
    utility, marketing = int(MessageCategory.UTILITY), int(MessageCategory.MARKETING)
    unset = int(MessageCategory.UNSPECIFIED)
    cases = [  # (client_timestamp_ms, the stamp its rows must carry)
        (1234, (utility, "order_update", TEMPLATE_ID)),  # learnt here
        (1234, (utility, "order_update", TEMPLATE_ID)),  # predicted, and right
        (UNSTAMPED_TS, (unset, "", TEMPLATE_ID)),  # predicted, but no rule stamped it
        (OTHER_TS, (marketing, "spring_sale", TEMPLATE_ID)),  # predicted otherwise
        (1234, (utility, "order_update", TEMPLATE_ID)),
    ]
    for ts, stamp in cases:
        request = send_request(
            [bob], b"templated", business=mpb.BusinessMetadata(template_id=TEMPLATE_ID)
        )
        request.client_timestamp_ms = ts
        sent = stub(server).SendMessage(request, metadata=alice.device.metadata)
        message = rows(
            server,
            f"SELECT category, template_name FROM messages WHERE message_id = {sent.message_id}",
        )
        envelope = rows(
            server,
            "SELECT category, template_name, template_id FROM envelopes"
            f" WHERE message_id = {sent.message_id}",
        )
        assert (message, envelope) == ([stamp[:2]], [stamp]), ts
