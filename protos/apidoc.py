"""Render docs/api-reference.md from the .proto comments.

The input is `parley/v1/descriptor_set.binpb`, the FileDescriptorSet with source info that
`make protos` writes (protos/generate.py) and the server's reflection serves, so the reference,
`grpcurl describe` and the stubs all come from one protoc run. `make docs` (and `make protos`)
rewrites the file; tests/test_api_reference.py fails when it is stale.

The layout follows protoc-gen-doc's Markdown: per file its services (each RPC with request and
response types and its comment), messages (each field with label, type and comment) and enums
(each value with number and comment), with links between the types.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from google.protobuf import descriptor_pb2

PROTO_ROOT = Path(__file__).resolve().parent
DESCRIPTOR_SET = PROTO_ROOT / "parley" / "v1" / "descriptor_set.binpb"
OUTPUT = PROTO_ROOT.parent / "docs" / "api-reference.md"
DOCUMENTED_PREFIX = "parley/"

# Field numbers in descriptor.proto, which is how source_code_info paths name things.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM, MESSAGE_ONEOF = 2, 3, 4, 8
ENUM_VALUE = 2
SERVICE_METHOD = 2

FDP = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    FDP.TYPE_DOUBLE: "double",
    FDP.TYPE_FLOAT: "float",
    FDP.TYPE_INT64: "int64",
    FDP.TYPE_UINT64: "uint64",
    FDP.TYPE_INT32: "int32",
    FDP.TYPE_FIXED64: "fixed64",
    FDP.TYPE_FIXED32: "fixed32",
    FDP.TYPE_BOOL: "bool",
    FDP.TYPE_STRING: "string",
    FDP.TYPE_BYTES: "bytes",
    FDP.TYPE_UINT32: "uint32",
    FDP.TYPE_SFIXED32: "sfixed32",
    FDP.TYPE_SFIXED64: "sfixed64",
    FDP.TYPE_SINT32: "sint32",
    FDP.TYPE_SINT64: "sint64",
}

Path_ = tuple[int, ...]


def load(path: Path = DESCRIPTOR_SET) -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())


class _Comments:
    """The comments of one file, by source_code_info path."""

    def __init__(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        self._by_path = {
            tuple(loc.path): loc.leading_comments or loc.trailing_comments
            for loc in file.source_code_info.location
        }

        # Comments standing alone (a blank line before the next element) describe the file.
        self.overview = [
            _paragraphs(c) for loc in file.source_code_info.location
            for c in loc.leading_detached_comments
        ]  # fmt: skip

    def text(self, path: Path_) -> str:
        return _paragraphs(self._by_path.get(path, ""))

    def cell(self, path: Path_) -> str:
        """The comment on one line, for a table cell."""
        return self.text(path).replace("\n\n", " ").replace("|", "\\|")


def _paragraphs(raw: str) -> str:
    """A comment as Markdown paragraphs: lines joined, blank lines kept as paragraph breaks."""
    paragraphs = re.split(r"\n\s*\n", raw.strip())
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _anchor(full_name: str) -> str:
    return full_name.lstrip(".")


def _heading(full_name: str, title: str, comment: str) -> list[str]:
    """An anchor named by the full name (what type links point at), the title, the comment."""
    return [f'<a id="{_anchor(full_name)}"></a>', "", f"### {title}", "", comment, ""]


def _messages(
    messages: Iterable[descriptor_pb2.DescriptorProto], prefix: str, path: Path_
) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto, Path_]]:
    for i, message in enumerate(messages):
        name = f"{prefix}.{message.name}"
        yield name, message, (*path, i)
        yield from _messages(message.nested_type, name, (*path, i, MESSAGE_NESTED))


def _enums(
    file: descriptor_pb2.FileDescriptorProto,
) -> Iterator[tuple[str, descriptor_pb2.EnumDescriptorProto, Path_]]:
    package = f".{file.package}"
    for i, enum in enumerate(file.enum_type):
        yield f"{package}.{enum.name}", enum, (FILE_ENUM, i)
    for name, message, path in _messages(file.message_type, package, (FILE_MESSAGE,)):
        for j, enum in enumerate(message.enum_type):
            yield f"{name}.{enum.name}", enum, (*path, MESSAGE_ENUM, j)


class _Renderer:
    def __init__(self, files: list[descriptor_pb2.FileDescriptorProto]) -> None:
        self.files = files
        self.documented: set[str] = set()
        for file in files:
            package = f".{file.package}"
            messages = _messages(file.message_type, package, (FILE_MESSAGE,))
            self.documented |= {n for n, _, _ in messages}
            self.documented |= {n for n, _, _ in _enums(file)}

    def type_link(self, type_name: str) -> str:
        short = type_name.rsplit(".", 1)[-1]
        if type_name in self.documented:
            return f"[{short}](#{_anchor(type_name)})"
        return f"`{type_name.lstrip('.')}`"

    def field_type(self, field: descriptor_pb2.FieldDescriptorProto) -> str:
        if field.type in (FDP.TYPE_MESSAGE, FDP.TYPE_ENUM):
            return self.type_link(field.type_name)
        return SCALARS[field.type]

    def render(self) -> str:
        out = [
            "# API reference",
            "",
            "<!-- Generated by protos/apidoc.py from the .proto comments: do not edit by hand;",
            "     run `make docs` (a test fails when this file is stale). -->",
            "",
            "Every service, RPC, message and enum of the `parley.v1` contract, with the comments",
            "of its .proto file (`grpcurl describe` shows the same text). In JSON (grpcurl),",
            "fields take their JSON name in answers and either name in requests, bytes are",
            "base64 and 64-bit integers are strings; docs/grpcurl.md has an example per RPC.",
            "",
        ]
        out += self.contents()
        for file in self.files:
            out += self.file(file)
        return "\n".join(out).rstrip() + "\n"

    def contents(self) -> list[str]:
        out = ["## Contents", ""]
        for file in self.files:
            package = f".{file.package}"
            out.append(f"- [{file.name}](#{_anchor(file.name)})")
            for service in file.service:
                full = f"{package}.{service.name}"
                out.append(f"  - service [{service.name}](#{_anchor(full)})")
            for name, _, _ in _messages(file.message_type, package, (FILE_MESSAGE,)):
                out.append(f"  - message {self.type_link(name)}")
            for name, _, _ in _enums(file):
                out.append(f"  - enum {self.type_link(name)}")
        return [*out, ""]

    def file(self, file: descriptor_pb2.FileDescriptorProto) -> list[str]:
        comments = _Comments(file)
        package = f".{file.package}"
        out = [f'<a id="{file.name}"></a>', "", f"## {file.name}", ""]
        for paragraph in comments.overview:
            out += [paragraph, ""]
        for i, service in enumerate(file.service):
            out += self.service(f"{package}.{service.name}", service, comments, (FILE_SERVICE, i))
        for name, message, path in _messages(file.message_type, package, (FILE_MESSAGE,)):
            out += self.message(name, message, comments, path)
        for name, enum, path in _enums(file):
            out += self.enum(name, enum, comments, path)
        return out

    def service(
        self,
        name: str,
        service: descriptor_pb2.ServiceDescriptorProto,
        comments: _Comments,
        path: Path_,
    ) -> list[str]:
        out = _heading(name, f"service {service.name}", comments.text(path))
        for j, method in enumerate(service.method):
            request = ("stream " if method.client_streaming else "") + self.type_link(
                method.input_type
            )
            response = ("stream " if method.server_streaming else "") + self.type_link(
                method.output_type
            )
            out += [
                f'<a id="{_anchor(name)}.{method.name}"></a>',
                "",
                f"#### {service.name}.{method.name}",
                "",
                f"`rpc {method.name}` ({request}) returns ({response})",
                "",
                comments.text((*path, SERVICE_METHOD, j)),
                "",
            ]
        return out

    def message(
        self,
        name: str,
        message: descriptor_pb2.DescriptorProto,
        comments: _Comments,
        path: Path_,
    ) -> list[str]:
        out = _heading(name, name.removeprefix(".parley.v1."), comments.text(path))
        if not message.field:
            return [*out, "No fields.", ""]
        out += [
            "| Field | JSON name | Type | Label | Description |",
            "| --- | --- | --- | --- | --- |",
        ]
        for k, field in enumerate(message.field):
            label = "repeated" if field.label == FDP.LABEL_REPEATED else ""
            if field.HasField("oneof_index"):
                label = f"oneof {message.oneof_decl[field.oneof_index].name}"
            description = comments.cell((*path, MESSAGE_FIELD, k))
            out.append(
                f"| `{field.name}` = {field.number} | `{field.json_name}` "
                f"| {self.field_type(field)} | {label} | {description} |"
            )
        return [*out, ""]

    def enum(
        self,
        name: str,
        enum: descriptor_pb2.EnumDescriptorProto,
        comments: _Comments,
        path: Path_,
    ) -> list[str]:
        out = _heading(name, f"enum {name.removeprefix('.parley.v1.')}", comments.text(path))
        out += ["| Name | Number | Description |", "| --- | --- | --- |"]
        for k, value in enumerate(enum.value):
            description = comments.cell((*path, ENUM_VALUE, k))
            out.append(f"| `{value.name}` | {value.number} | {description} |")
        return [*out, ""]


def render(descriptor_set: descriptor_pb2.FileDescriptorSet | None = None) -> str:
    """The reference for every file of the contract (imported well-known types left out)."""
    descriptor_set = descriptor_set or load()
    files = sorted(
        (f for f in descriptor_set.file if f.name.startswith(DOCUMENTED_PREFIX)),
        key=lambda f: f.name,
    )
    return _Renderer(files).render()


def main() -> None:
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT.relative_to(PROTO_ROOT.parent)}", file=sys.stderr)


if __name__ == "__main__":
    main()
