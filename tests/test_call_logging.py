"""The server logs every call that ends abnormally at WARNING, one line with the method, the
peer, the caller and the status; normal ends and refusals stay below WARNING."""

from __future__ import annotations

import logging
import threading
import time

import grpc
import pytest
from parley.v1 import messaging_pb2 as mpb

from tests.conftest import LiveServer
from tests.test_messaging import ALICE, BOB, Stream, member, stub
from tests.test_receive_stream import AckStream, _hold_acknowledgements

RPC_LOG = "parley.rpc"


def _warnings(caplog: pytest.LogCaptureFixture, method: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == RPC_LOG and r.levelno >= logging.WARNING and method in r.getMessage()
    ]


def _logged(caplog: pytest.LogCaptureFixture, method: str) -> list[logging.LogRecord]:
    """The WARNING lines about `method`, once there is one: the server hears of a client's
    cancellation a moment after the client made it, and there is no event to await for it."""
    deadline = time.monotonic() + 10
    while not (found := _warnings(caplog, method)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return found


def test_a_call_past_its_deadline_is_logged(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    bob = member(server, BOB)
    gate = _hold_acknowledgements(server)  # the acknowledgement's write stalls
    with pytest.raises(grpc.RpcError) as info:
        stub(server).AcknowledgeMessages(
            mpb.AcknowledgeMessagesRequest(envelope_ids=[1]),
            metadata=bob.device.metadata,
            timeout=0.5,
        )
    assert isinstance(info.value, grpc.Call)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server's own timer for that deadline can fire a moment after the client's: the write
    # is held until it did, or the handler would end normally and have nothing to log.
    (record,) = _logged(caplog, "AcknowledgeMessages")
    server.run(lambda s: gate())
    server.stop()
    assert _warnings(caplog, "AcknowledgeMessages") == [record]
    assert record.levelno == logging.WARNING
    assert "DEADLINE_EXCEEDED" in record.getMessage() and "deadline" in record.getMessage()
    assert record.__dict__["account_id"] == bob.device.account_id
    assert record.__dict__["device_id"] == bob.device.device_id
    assert record.__dict__["peer"]


def test_a_client_stream_cancelled_mid_call_is_logged_a_receive_stream_is_not(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The client cancels while the server writes its acknowledgement. grpc.aio ends the
    server's reading of a client stream the same way for a half-close and for a cancel, and a
    cancel that reached the reading first, while nothing else was pending, ended the call as a
    half-close (OK, nothing logged): one clean-clone CI run failed so (ack_stream rule 5)."""
    alice, bob = member(server, ALICE), member(server, BOB)
    stream = AckStream(server, bob)
    assert stream.until_empty() == []
    writing = threading.Event()
    gate = _hold_acknowledgements(server, writing)
    stream.ack(envelope_ids=[1])  # unknown: its write still runs, and waits at the gate
    assert writing.wait(10)
    stream.call.cancel()  # type: ignore[no-untyped-call]  # a bidirectional stream ends by half-closing: this is abnormal
    plain = Stream(server, alice)
    assert plain.until_empty() == []
    plain.close()  # ReceiveMessages ends only this way: its normal end
    with pytest.raises(grpc.RpcError) as info:  # a refusal with a domain status
        stub(server).AcknowledgeMessages(mpb.AcknowledgeMessagesRequest(), metadata=())
    assert isinstance(info.value, grpc.Call)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    (record,) = _logged(caplog, "ReceiveMessageStream")
    server.run(lambda s: gate())
    server.stop()
    assert "CANCELLED" in record.getMessage()
    assert record.__dict__["account_id"] == bob.device.account_id
    assert _warnings(caplog, "/ReceiveMessages ") == []
    assert _warnings(caplog, "AcknowledgeMessages") == []
