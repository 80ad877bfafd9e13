"""`make instructions` (`python -m bench.instructions`): the server's work per delivered
message, plain and template, counted in CPU instructions rather than timed.

`make bench`'s templates / plain ratio is a throughput measured on a shared VM, whose speed
drifts by 10-20% within a minute: a change worth 2% to the template path cannot be seen in one
run. This counts it instead. The server's send and acknowledgement path runs in one process
without gRPC (the servicer's conversions, the mailbox, every admission rule, the writer and its
SQL, on a real SQLite file), under valgrind's cachegrind, which counts the instructions every
thread of the process executed. Batching is fixed (sends of BATCH as the bench sends,
acknowledgements of ACK, the sender's statuses acknowledged after each batch), so runs of the
same code differ by about 1% at most (five runs of one commit's template path: 580,800 to
587,100; the writer's group commits and the checkpoint thread still follow the clock). A
message's instructions are the difference between a run of SMALL and one of LARGE messages,
divided by the difference: start-up, imports and migrations cancel out.

The database is made first by a real server (`bench.messaging_bench`): a pair of persons, and a
business with an approved UTILITY template and a user opted in to it, topped up, exactly as the
bench's template section sends (every template send billed: reserved, captured on the first
acknowledgement, with its status events). Needs valgrind (`apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from parley.v1 import messaging_pb2 as mpb

from bench import messaging_bench as mb
from bench.sizes import BATCH, PAYLOAD_BYTES
from server import config
from server.app import ParleyServer, build_server
from server.domain.auth import Principal, hash_token
from server.domain.fanout import Envelopes
from server.domain.model import EnvelopeRow, StatusRow
from server.domain.ports import ReadTransaction
from server.rpc.messaging_servicer import _event, _request

ACK = 250  # ids per acknowledgement
SMALL, LARGE = 1_000, 4_000
KINDS = ("plain", "template")


def _principal(account: dict[str, Any]) -> Principal:
    token = dict(account["metadata"])["authorization"].split()[1]
    return Principal(account["account_id"], 1, hash_token(token))


async def prepare(folder: Path) -> Path:
    """A database with both pairs ready, and the accounts beside it (accounts.json)."""
    database = folder / "bench.db"
    with mb.server_process(database, 4, *mb.BUSINESS_FLAGS) as server:
        (plain,) = await mb.make_pairs(server, 1)
        business, template_id = await mb.business_pair(server, 2)

    def account(a: mb.Account) -> dict[str, Any]:
        return {
            "account_id": a.account_id,
            "metadata": a.metadata,
            "registration": a.registration_id,
        }

    accounts = {
        "plain": [account(plain.sender), account(plain.receiver)],
        "template": [account(business.sender), account(business.receiver)],
        "template_id": template_id,
    }
    (folder / "accounts.json").write_text(json.dumps(accounts))
    return database


def deliver(database: Path, kind: str, messages: int, *, count_events: bool = False) -> int:
    """Send `messages` of `kind` (in whole batches of BATCH: rounded up) from the pair's
    sender and acknowledge them: the recipient its envelopes, the sender its DELIVERED
    statuses. Works on a copy of `database`. With `count_events`, returns the number of the
    sender's status events (billing's: none for plain, SENT and DELIVERED for each template
    message), read after the measured work."""
    accounts = json.loads((database.parent / "accounts.json").read_text())
    work = Path(tempfile.mkdtemp(prefix="parley-instructions-"))
    try:
        for suffix in ("", "-wal"):  # the preparing server's commits may still be in its WAL
            if Path(f"{database}{suffix}").exists():
                shutil.copy(f"{database}{suffix}", f"{work / 'bench.db'}{suffix}")
        argv = ["--database", str(work / "bench.db"), "--port", "0", *mb.LOAD_FLAGS]
        settings = config.load([*argv, *mb.BUSINESS_FLAGS], environ={})
        return asyncio.run(_deliver(settings, accounts, kind, messages, count_events))
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _deliver(
    settings: config.Settings,
    accounts: dict[str, Any],
    kind: str,
    messages: int,
    count_events: bool,
) -> int:
    parley = await build_server(settings)
    try:
        sender = await _exchange(parley, accounts, kind, messages)
        if not count_events:
            return 0
        events = await parley.db.read(lambda tx: tx.status_events_after(sender, 0, 10**7))
        return len(events)
    finally:
        parley.db.close()


async def _exchange(
    parley: ParleyServer, accounts: dict[str, Any], kind: str, messages: int
) -> str:
    """The measured work; the sender's account id."""
    sender_account, receiver_account = accounts[kind]
    sender, receiver = _principal(sender_account), _principal(receiver_account)
    template_id = accounts["template_id"] if kind == "template" else ""
    to = mb.Account(receiver.account_id, (), receiver_account["registration"])
    payloads = [os.urandom(PAYLOAD_BYTES) for _ in range(BATCH)]
    mailbox, db = parley.mailbox, parley.db
    envelopes_seen = statuses_seen = sent = 0
    while sent < messages:
        requests = [mb.send_request(to, p, template_id) for p in payloads]
        results = await mailbox.send_many(sender, [_request(r) for r in requests])
        refused = [r for r in results if isinstance(r, Exception)]
        if refused:
            raise RuntimeError(f"a {kind} send was refused: {refused[0]}")
        sent += len(requests)
        envelopes = await db.read(_envelopes_after(receiver.account_id, envelopes_seen))
        envelopes_seen = envelopes[-1].seq
        for k in range(0, len(envelopes), ACK):
            batch = envelopes[k : k + ACK]
            _event(Envelopes(batch), mpb.ReceiveMessagesResponse).SerializeToString()
            await mailbox.acknowledge(receiver, [e.envelope_id for e in batch], [])
        statuses = await db.read(_statuses_after(sender.account_id, statuses_seen))
        statuses_seen = statuses[-1].seq
        for k in range(0, len(statuses), ACK):
            await mailbox.acknowledge(sender, [], [s.status_id for s in statuses[k : k + ACK]])
    return sender.account_id


def _envelopes_after(account_id: str, seq: int) -> Callable[[ReadTransaction], list[EnvelopeRow]]:
    """All of device 1's envelopes past `seq` (the job's: at most a batch)."""
    return lambda tx: tx.envelopes_after(account_id, 1, seq, 10**6, 1 << 40)


def _statuses_after(account_id: str, seq: int) -> Callable[[ReadTransaction], list[StatusRow]]:
    return lambda tx: tx.statuses_after(account_id, 1, seq, 10**6)


def _counted(database: Path, kind: str, messages: int) -> int:
    """Instructions of one child process under cachegrind (every thread)."""
    command = [
        "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
        sys.executable, "-m", "bench.instructions", "--child", str(database), kind, str(messages),
    ]  # fmt: skip
    # One BLAS thread: numpy (imported by sqlite-utils) would otherwise start a pool whose idle
    # spinning valgrind's serialised threads count as work.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root, check=False)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"cachegrind run failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def measure() -> dict[str, int]:
    """Instructions per delivered message of each kind."""
    folder = Path(tempfile.mkdtemp(prefix="parley-instructions-"))
    try:
        database = asyncio.run(prepare(folder))
        return {
            kind: (_counted(database, kind, LARGE) - _counted(database, kind, SMALL))
            // (LARGE - SMALL)
            for kind in KINDS
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.instructions", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--child", nargs=3, metavar=("DATABASE", "KIND", "MESSAGES"))
    args = parser.parse_args(argv)
    if args.child:
        database, kind, messages = args.child
        deliver(Path(database), kind, int(messages))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    per = measure()
    plain, template = per["plain"], per["template"]
    print(f"plain     {plain:>9,} instructions per delivered message")
    print(f"template  {template:>9,} (+{template - plain:,}: billed, every sending rule)")
    print(f"plain / template {plain / template:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
