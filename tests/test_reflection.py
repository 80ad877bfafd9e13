"""The commented descriptor set that reflection serves: it must describe what the server runs."""

from __future__ import annotations

from importlib import resources

from google.protobuf import descriptor_pb2, descriptor_pool
from parley.v1 import account_pb2, messaging_pb2

from server.rpc.reflection import DESCRIPTOR_SET, CommentedPool, commented_files


def _descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    data = resources.files("parley.v1").joinpath(DESCRIPTOR_SET).read_bytes()
    return descriptor_pb2.FileDescriptorSet.FromString(data)


def test_every_contract_file_is_served_with_comments() -> None:
    files = commented_files()
    for module in (account_pb2, messaging_pb2):
        proto = descriptor_pb2.FileDescriptorProto.FromString(files[module.DESCRIPTOR.name])
        assert proto.source_code_info.location, module.DESCRIPTOR.name
    pool = CommentedPool(files)
    served = descriptor_pb2.FileDescriptorProto()
    pool.FindFileContainingSymbol("parley.v1.KeyService.GetPreKeyBundles").CopyToProto(served)
    comments = " ".join(loc.leading_comments for loc in served.source_code_info.location)
    assert "one-time" in comments and served.name == "parley/v1/key.proto"
    # The file's imports come through the same view, with comments where the set has them.
    (timestamp,) = pool.FindFileByName("parley/v1/account.proto").dependencies
    assert timestamp.name == "google/protobuf/timestamp.proto"


def test_a_file_that_differs_from_the_running_one_loses_only_its_comments() -> None:
    """A stale set (a .proto edited without `make protos`) must not make reflection describe a
    contract other than the one the server runs."""
    pool = descriptor_pool.DescriptorPool()
    for file in _descriptor_set().file:
        if file.name == "parley/v1/account.proto":
            file.message_type[0].field.add(
                name="added_later", number=99, type=9, label=1, json_name="addedLater"
            )
        pool.Add(file)
    files = commented_files(pool)
    assert "parley/v1/account.proto" not in files
    assert "parley/v1/key.proto" in files
    served = descriptor_pb2.FileDescriptorProto()
    CommentedPool(files, pool).FindFileByName("parley/v1/account.proto").CopyToProto(served)
    assert not served.HasField("source_code_info")
    assert any(f.name == "added_later" for f in served.message_type[0].field)
