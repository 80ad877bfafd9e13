"""docs/api-reference.md is the rendering of the .proto comments, never a stale copy."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2

from tests.tools import REPO


@pytest.fixture
def apidoc() -> Iterator[ModuleType]:
    sys.path.insert(0, str(REPO / "protos"))
    try:
        import apidoc

        yield apidoc
    finally:
        sys.path.remove(str(REPO / "protos"))


def test_api_reference_is_up_to_date(apidoc: ModuleType) -> None:
    committed = (REPO / "docs" / "api-reference.md").read_text()
    assert committed == apidoc.render(), (
        "docs/api-reference.md is stale: run `make docs` (or `make protos`) and commit it"
    )


def test_every_rpc_message_field_and_enum_value_is_documented(apidoc: ModuleType) -> None:
    text = apidoc.render()
    files = [f for f in apidoc.load().file if f.name.startswith("parley/")]
    assert files
    for file in files:
        for service in file.service:
            for method in service.method:
                assert f"#### {service.name}.{method.name}\n" in text
                signature = f"`rpc {method.name}` ("
                assert signature in text
        for message in file.message_type:
            assert f'<a id="{file.package}.{message.name}"></a>' in text
            for field in message.field:
                assert f"| `{field.name}` = {field.number} | `{field.json_name}` |" in text
        for enum in file.enum_type:
            for value in enum.value:
                assert f"| `{value.name}` | {value.number} |" in text
    # Comments come through, with their rules (the bundle RPC says it consumes keys).
    assert "even when the caller only wants to look" in text
    assert "[PreKeyBundle](#parley.v1.PreKeyBundle)" in text
    assert "| repeated |" in text and "| oneof body |" in text


def test_a_changed_comment_changes_the_reference(apidoc: ModuleType) -> None:
    """The staleness check above can fail: the rendering follows the comments."""
    edited = descriptor_pb2.FileDescriptorSet()
    edited.CopyFrom(apidoc.load())
    for file in edited.file:
        for loc in file.source_code_info.location:
            if "GetPreKeyBundles returns" in loc.leading_comments:
                loc.leading_comments = " GetPreKeyBundles returns bundles.\n"
    assert apidoc.render(edited) != apidoc.render()
    assert "GetPreKeyBundles returns bundles." in apidoc.render(edited)
