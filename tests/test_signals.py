"""Signals between replicas: the wire format round-trips, and the dispatcher routes each kind to
the part that acts on it, skipping the replica's own and anything it does not understand."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from server.domain.replicas_model import (
    ALL_DEVICES,
    RESYNC,
    STATUS_EVENTS,
    SUPPORT_QUEUE,
    Kind,
    Signal,
)
from server.domain.signals import Dispatcher


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def on_rows(self, account_id: str, device_id: int) -> None:
        self.calls.append(("rows", account_id, device_id))

    def on_stream(self, account_id: str, device_id: int, epoch: int) -> None:
        self.calls.append(("stream", account_id, device_id, epoch))

    def resync(self) -> None:
        self.calls.append(("resync",))

    def forget_device(self, account_id: str, device_id: int) -> None:
        self.calls.append(("forget", account_id, device_id))

    def forget_account(self, account_id: str) -> None:
        self.calls.append(("forget all", account_id))

    def notify(self, key: str) -> None:
        self.calls.append(("feed", key))

    def notify_all(self) -> None:
        self.calls.append(("feed all",))


ACCOUNT = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


@given(st.sampled_from(Kind), st.integers(0, 63), st.integers(0, 2**31), st.integers(0, 2**62))
def test_the_wire_format_round_trips(kind: Kind, node: int, device: int, epoch: int) -> None:
    signal = Signal(kind, node, ACCOUNT, device, epoch)
    assert Signal.decode(signal.encode()) == signal


def test_each_kind_goes_to_the_part_that_acts_on_it() -> None:
    streams, credentials, statuses, queue = Recorder(), Recorder(), Recorder(), Recorder()
    dispatch = Dispatcher(3, streams, credentials, {STATUS_EVENTS: statuses, SUPPORT_QUEUE: queue})
    for signal in (
        Signal(Kind.ROWS, 1, ACCOUNT, 2),
        Signal(Kind.STREAM, 1, ACCOUNT, 2, 9),
        Signal(Kind.REVOKE, 1, ACCOUNT, 2),
        Signal(Kind.REVOKE, 1, ACCOUNT, ALL_DEVICES),
        Signal(Kind.FEED, 1, ACCOUNT, STATUS_EVENTS),
        Signal(Kind.FEED, 1, ACCOUNT, SUPPORT_QUEUE),
        Signal(Kind.FEED, 1, ACCOUNT, 99),  # a feed this version does not have
        Signal(Kind.ROWS, 3, ACCOUNT, 2),  # this replica's own: acted on in process already
    ):
        dispatch(signal.encode())
    dispatch("shiny|1|x|2|0")  # a newer replica's kind
    dispatch("garbage")
    assert streams.calls == [("rows", ACCOUNT, 2), ("stream", ACCOUNT, 2, 9)]
    assert credentials.calls == [("forget", ACCOUNT, 2), ("forget all", ACCOUNT)]
    assert statuses.calls == [("feed", ACCOUNT)] and queue.calls == [("feed", ACCOUNT)]
    dispatch(RESYNC)  # signals may have been lost: everything reads again
    assert streams.calls[-1] == ("resync",)
    assert statuses.calls[-1] == ("feed all",) and queue.calls[-1] == ("feed all",)
