"""The receiving stream read ahead: what arrives while the client decrypts and commits is
already read when it comes back, and consecutive envelope batches go on as one.

The client commits a batch of envelopes (one fsync) before acknowledging it (``client.api``,
rule 2). Read one stream message at a time, a stream of small batches (the server sends what
each of its commits made) costs an fsync per message. :class:`ReadAhead` keeps reading into a
bounded buffer while the client works, and :meth:`ReadAhead.next` hands out every envelope
batch that has arrived since, in order, as one list: one transaction, one commit, one
acknowledgement message for all of them (``client.group_commit`` spaces the commits while
they keep coming).

Rules kept here:
1. Order is the stream's: envelopes keep their order, and a status or marker message is
   never moved across an envelope batch.
2. Memory is bounded: at most ``MAX_READ_AHEAD`` stream messages wait in the buffer. Past
   that the reader stops, and HTTP/2 flow control holds the server back.
3. The stream's error is raised where the client reads, after what came before it.
4. :meth:`ReadAhead.drain` reads the stream to its end and drops what it reads. That is what a
   receiver that stops does after half-closing: what was not acknowledged comes again.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Final

import grpc
from grpc import aio
from parley.v1 import messaging_pb2 as mpb

MAX_READ_AHEAD: Final = 16
"""Stream messages read ahead of the client (each at most 500 envelopes, about 1 MiB)."""
MAX_MERGED: Final = 2000
"""Envelopes handed out together at most: one transaction stays short."""

Call = aio.StreamStreamCall[mpb.ReceiveMessageStreamRequest, mpb.ReceiveMessageStreamResponse]


class ReadAhead:
    def __init__(self, call: Call) -> None:
        self._call = call
        self._buffer: collections.deque[mpb.ReceiveMessageStreamResponse] = collections.deque()
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._error: grpc.RpcError | None = None
        self._ended = False
        self._dropping = False
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self._call:
                if self._dropping:
                    continue
                self._buffer.append(response)
                self._arrived.set()
                if len(self._buffer) >= MAX_READ_AHEAD:  # rule 2
                    self._room.clear()
                    await self._room.wait()
        except grpc.RpcError as exc:
            self._error = exc
        finally:
            self._ended = True
            self._arrived.set()

    async def next(self) -> list[mpb.Envelope] | mpb.ReceiveMessageStreamResponse | None:
        """The envelopes of every envelope batch in the buffer up to the first other message
        (rule 1), or that other message, or None at the stream's end.

        Raises:
            grpc.RpcError: what ended the stream, once everything before it was handed out.
        """
        while not self._buffer:
            if self._ended:
                if self._error is not None:
                    raise self._error  # rule 3
                return None
            self._arrived.clear()
            await self._arrived.wait()
        first = self._buffer.popleft()
        if first.WhichOneof("event") != "envelopes":
            self._room.set()
            return first
        envelopes = list(first.envelopes.envelopes)
        while self._buffer and self._buffer[0].WhichOneof("event") == "envelopes":
            more = self._buffer[0].envelopes.envelopes
            if len(envelopes) + len(more) > MAX_MERGED:
                break
            envelopes.extend(more)
            self._buffer.popleft()
        self._room.set()
        return envelopes

    async def drain(self) -> None:
        """Read the stream to its end, dropping what comes (rule 4); raises its error."""
        self._dropping = True
        self._buffer.clear()
        self._room.set()
        await self._task
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        """Stop reading (the call is being cancelled)."""
        self._task.cancel()
