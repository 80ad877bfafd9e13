"""What replicas sharing one database tell apart and tell each other: their numbers, and the
signals' wire format (`server.domain.signals` says what each signal means and who acts on it).
A model module: the storage backend that sends the signals and claims the numbers imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

# Replica numbers live in the ids (server.domain.ids): 6 bits, so 64 replicas at once.
NODE_BITS = 6
NODES = 1 << NODE_BITS

CHANNEL = "parley"
ALL_DEVICES = 0  # in a REVOKE: every device of the account
RESYNC = "resync"  # not sent: handed to the handler when the signal connection (re)starts


class Kind(Enum):
    ROWS = "rows"
    STREAM = "stream"
    REVOKE = "revoke"
    FEED = "feed"
    PRICES = "prices"


# The feeds a FEED signal names (in the device_id place).
STATUS_EVENTS = 1
SUPPORT_QUEUE = 2


@dataclass(frozen=True)
class Signal:
    kind: Kind
    node: int
    account_id: str
    device_id: int
    epoch: int = 0

    def encode(self) -> str:
        return f"{self.kind.value}|{self.node}|{self.account_id}|{self.device_id}|{self.epoch}"

    @staticmethod
    def decode(payload: str) -> Signal | None:
        """The signal, or None for a payload this version does not know (a newer replica's)."""
        try:
            kind, node, account_id, device_id, epoch = payload.split("|")
            return Signal(Kind(kind), int(node), account_id, int(device_id), int(epoch))
        except ValueError:
            return None
