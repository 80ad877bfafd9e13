"""Server reflection that serves the contract *with its .proto comments*.

grpcio-reflection answers from a descriptor pool, and turns each file into a
FileDescriptorProto with ``CopyToProto``, which never includes ``source_code_info``; the
generated ``_pb2`` modules do not carry it either. Without it ``grpcurl describe`` prints bare
signatures, so a tester exploring the API sees none of the rules written in the .proto files.

``make protos`` therefore also writes ``parley/v1/descriptor_set.binpb`` (protoc
``--include_source_info``), and :class:`CommentedPool` hands grpcio-reflection a view of the
default pool in which those files serialize from that set. Everything else (lookups by symbol,
the health and reflection services' own files, extensions) is the default pool's answer.

A file is served from the set only when it describes exactly what the server runs (same
descriptor once the comments and JSON names are set aside), so a stale set can cost comments
but never make reflection lie about the wire contract.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from grpc import aio
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

DESCRIPTOR_SET = "descriptor_set.binpb"
"""Written by protos/generate.py next to the stubs, shipped as package data of parley.v1."""


def commented_files(pool: Any | None = None) -> dict[str, bytes]:
    """File name -> serialized FileDescriptorProto with comments, for every file of the set
    that matches the descriptor the server actually runs."""
    pool = pool or descriptor_pool.Default()
    try:
        data = resources.files("parley.v1").joinpath(DESCRIPTOR_SET).read_bytes()
    except OSError as exc:
        # An install without the package data still serves the contract, only uncommented.
        log.warning("no %s (%s): reflection serves no comments", DESCRIPTOR_SET, exc)
        return {}
    out: dict[str, bytes] = {}
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        try:
            running = pool.FindFileByName(file.name)
        except KeyError:
            continue  # a file the server never imported has nothing to describe
        compiled = descriptor_pb2.FileDescriptorProto()
        running.CopyToProto(compiled)
        if _without_docs(file) != _without_docs(compiled):
            log.warning(
                "descriptor set is stale, serving %s without comments (run `make protos`)",
                file.name,
            )
            continue
        out[file.name] = file.SerializeToString()
    return out


def _without_docs(file: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """The file minus what does not change the contract: comments and protoc's JSON names."""
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(file)
    copy.ClearField("source_code_info")
    for message in _messages(copy.message_type):
        for fld in (*message.field, *message.extension):
            fld.ClearField("json_name")
    for fld in copy.extension:
        fld.ClearField("json_name")
    return copy


def _messages(
    messages: Iterable[descriptor_pb2.DescriptorProto],
) -> Iterable[descriptor_pb2.DescriptorProto]:
    for message in messages:
        yield message
        yield from _messages(message.nested_type)


class _CommentedFile:
    """A FileDescriptor stand-in whose CopyToProto includes the comments.

    Exactly the three members grpcio-reflection reads: name, dependencies, CopyToProto.
    """

    def __init__(self, file: Any, pool: CommentedPool) -> None:
        self._file = file
        self._pool = pool
        self.name: str = file.name

    @property
    def dependencies(self) -> list[Any]:
        return [self._pool.wrap(d) for d in self._file.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:
        serialized = self._pool.files.get(self.name)
        if serialized is None:
            self._file.CopyToProto(proto)
        else:
            proto.Clear()
            proto.MergeFromString(serialized)


class CommentedPool:
    """The default descriptor pool, as grpcio-reflection uses it, with commented files."""

    def __init__(self, files: Mapping[str, bytes], pool: Any | None = None) -> None:
        self.files = dict(files)
        self._pool = pool or descriptor_pool.Default()

    def wrap(self, file: Any) -> _CommentedFile:
        return _CommentedFile(file, self)

    def FindFileByName(self, name: str) -> _CommentedFile:
        return self.wrap(self._pool.FindFileByName(name))

    def FindFileContainingSymbol(self, symbol: str) -> _CommentedFile:
        """Also finds methods (``parley.v1.KeyService.UploadPreKeys``), which the pool itself
        does not index but ``grpcurl describe SERVICE.METHOD`` asks for."""
        try:
            return self.wrap(self._pool.FindFileContainingSymbol(symbol))
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                raise KeyError(symbol) from None
            if method not in service.methods_by_name:
                raise
            return self.wrap(service.file)

    def FindMessageTypeByName(self, name: str) -> Any:
        return self._pool.FindMessageTypeByName(name)

    def FindExtensionByNumber(self, message: Any, number: int) -> Any:
        return self._pool.FindExtensionByNumber(message, number)

    def FindAllExtensions(self, message: Any) -> Any:
        return self._pool.FindAllExtensions(message)


def enable_reflection(server: aio.Server, service_names: Iterable[str]) -> None:
    """Add the reflection service (listing ``service_names`` and itself) to ``server``."""
    names = (*service_names, reflection.SERVICE_NAME)
    # Duck-typed: grpcio-reflection calls only the Find* methods CommentedPool provides.
    pool: Any = CommentedPool(commented_files())
    reflection.enable_server_reflection(names, server, pool=pool)
