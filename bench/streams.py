"""Idle connected devices: what each open ReceiveMessages stream costs the server in memory,
and whether a unary call stays fast while thousands are open.

The devices are prefilled into the database (bench.accounts) and their streams are held by
`Holders`: a few client processes (one core cannot also drive 10,000 streams and measure a
unary call), each with a channel (one TCP connection) per STREAMS_PER_CHANNEL streams. A holder
acknowledges whatever its streams receive and remembers how many envelopes arrived and when the
last one did, which is all the fan-out needs of its recipients too.

RSS is the server process's resident set from /proc (VmRSS): the increase over the server with
no stream open (after a warm-up), divided by the streams open. The unary call is
KeyService.GetPreKeyCount of a device that holds no stream: authenticated, one indexed read.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from grpc import aio
from parley.v1 import key_pb2 as kpb
from parley.v1 import key_pb2_grpc, messaging_pb2_grpc

from bench.delivery import Ack, close_all, recipient_stream
from bench.messaging_bench import Account, Server
from bench.stats import latency_summary

STREAMS_PER_CHANNEL = 500
OPENING_AT_ONCE = 200  # streams a holder opens concurrently
PROCESSES = 4
OPEN_TIMEOUT = 300.0


def _hold(target: str, pipe: Connection) -> None:
    asyncio.run(_holding(target, pipe))


async def _holding(target: str, pipe: Connection) -> None:
    """A holder process: obeys ("open", accounts), ("report", None), ("close", None)."""
    loop = asyncio.get_running_loop()
    channels: list[aio.Channel] = []
    streams: list[asyncio.Task[None]] = []
    acks: list[Ack] = []
    received = [0, 0.0]  # envelopes, monotonic time of the last arrival

    def arrived(count: int) -> None:
        received[0] += count
        received[1] = time.monotonic()

    async def open_one(
        stub: messaging_pb2_grpc.MessagingServiceAsyncStub, me: Account, gate: asyncio.Semaphore
    ) -> None:
        async with gate:
            ready = asyncio.Event()
            task = asyncio.ensure_future(recipient_stream(stub, me, ready, acks, arrived))
            streams.append(task)
            waiter = asyncio.ensure_future(ready.wait())
            await asyncio.wait([waiter, task], return_when=asyncio.FIRST_COMPLETED)
            if not ready.is_set():
                waiter.cancel()
                raise RuntimeError(f"a stream failed to open: {task.exception()!r}")

    while True:
        command, argument = await loop.run_in_executor(None, pipe.recv)
        if command == "open":
            accounts: list[Account] = argument
            gate = asyncio.Semaphore(OPENING_AT_ONCE)
            jobs = []
            for first in range(0, len(accounts), STREAMS_PER_CHANNEL):
                channels.append(aio.insecure_channel(target))
                stub = messaging_pb2_grpc.MessagingServiceStub(channels[-1])
                jobs += [
                    open_one(stub, a, gate) for a in accounts[first : first + STREAMS_PER_CHANNEL]
                ]
            try:
                await asyncio.wait_for(asyncio.gather(*jobs), OPEN_TIMEOUT)
                pipe.send(("opened", len(streams)))
            except Exception as exc:
                pipe.send(("error", repr(exc)))
        elif command == "report":
            await asyncio.gather(*acks)
            pipe.send(("report", (received[0], received[1])))
        else:
            await close_all(streams, channels)
            pipe.send(("closed", None))
            return


class Holders:
    """PROCESSES holder processes; `open` spreads new streams over them evenly."""

    def __init__(self, server: Server, processes: int = PROCESSES) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._procs = []
        for _ in range(processes):
            ours, theirs = context.Pipe()
            proc = context.Process(target=_hold, args=(server.target, theirs), daemon=True)
            proc.start()
            self._pipes.append(ours)
            self._procs.append(proc)
        self.open_streams = 0

    def _ask(self, pipe: Connection, timeout: float = OPEN_TIMEOUT + 30) -> Any:
        try:
            if not pipe.poll(timeout):
                raise RuntimeError("a stream holder did not answer")
            kind, value = pipe.recv()
        except (EOFError, OSError) as exc:
            raise RuntimeError(f"a stream holder went away: {exc!r}") from None
        if kind == "error":
            raise RuntimeError(value)
        return value

    def open(self, accounts: Sequence[Account]) -> None:
        """Open a stream for each account; returns once every one got its QueueEmpty."""
        n = len(self._pipes)
        for i, pipe in enumerate(self._pipes):
            pipe.send(("open", list(accounts[i::n])))
        for pipe in self._pipes:
            self._ask(pipe)
        self.open_streams += len(accounts)

    def received(self) -> tuple[int, float]:
        """Envelopes received by all streams, and the monotonic time of the last arrival."""
        for pipe in self._pipes:
            pipe.send(("report", None))
        reports = [self._ask(pipe) for pipe in self._pipes]
        return sum(r[0] for r in reports), max(r[1] for r in reports)

    def close(self) -> None:
        for pipe in self._pipes:
            try:
                pipe.send(("close", None))
                self._ask(pipe, 30)
            except (OSError, RuntimeError):
                pass  # it went away already: nothing left to close
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()

    def __enter__(self) -> Holders:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rss_kib(pid: int) -> int:
    """Resident set of a process, in KiB (/proc/PID/status, VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


async def unary_latency(server: Server, caller: Account, samples: int) -> dict[str, Any]:
    """GetPreKeyCount called `samples` times one after another: its latency percentiles."""
    async with aio.insecure_channel(server.target) as channel:
        keys = key_pb2_grpc.KeyServiceStub(channel)
        timings = []
        for _ in range(samples):
            started = time.perf_counter()
            await keys.GetPreKeyCount(kpb.GetPreKeyCountRequest(), metadata=caller.metadata)
            timings.append(time.perf_counter() - started)
    summary = latency_summary(timings)
    del summary["cdf_ms"]
    return summary


def connected_devices(
    server: Server, devices: Sequence[Account], caller: Account, levels: Sequence[int], samples: int
) -> dict[str, Any]:
    """At each level of open streams: the server's RSS, its increase per stream over no
    streams, and the unary call's latency meanwhile."""
    asyncio.run(unary_latency(server, caller, samples))  # warm-up: caches, code paths
    base = rss_kib(server.pid)
    figures: dict[str, Any] = {"baseline_rss_kib": base, "levels": {}}
    with Holders(server) as holders:
        for level in levels:
            started = time.perf_counter()
            holders.open(devices[holders.open_streams : level])
            opened = time.perf_counter() - started
            time.sleep(1.0)  # let the allocator settle after the burst of opens
            rss = rss_kib(server.pid)
            figures["levels"][str(level)] = {
                "rss_kib": rss,
                "rss_per_stream_kib": (rss - base) / level,
                "open_seconds": opened,
                "unary": asyncio.run(unary_latency(server, caller, samples)),
            }
    return figures
