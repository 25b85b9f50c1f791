"""The committed stubs in plotarmour/rpc/ match protos/ (regenerate: python -m plotarmour.rpc.generate)."""

from __future__ import annotations

import pytest

pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) compiles the protos")

from google.protobuf import descriptor_pb2  # noqa: E402

from plotarmour.rpc import generate  # noqa: E402
from plotarmour.rpc import language_model_pb2 as pb  # noqa: E402
from plotarmour.rpc import language_model_pb2_grpc as pb_grpc  # noqa: E402

HINT = "stubs are stale: run `python -m plotarmour.rpc.generate` and commit plotarmour/rpc/"


def _compiled_descriptor(tmp_path) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path / "set.pb"
    generate.compile_protos(tmp_path, descriptor_set=out)
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (fd,) = [f for f in fds.file if f.name == pb.DESCRIPTOR.name]
    # protoc writes derived json_name fields into descriptor sets, not into _pb2 files.
    messages = list(fd.message_type)
    while messages:
        message = messages.pop()
        messages.extend(message.nested_type)
        for f in message.field:
            f.ClearField("json_name")
    return fd


def test_committed_stubs_describe_the_current_proto(tmp_path):
    # Compared as descriptors, not text, so another grpcio-tools version (which words
    # the generated files differently) does not count as stale; a changed .proto does.
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    assert committed == _compiled_descriptor(tmp_path), HINT


def test_service_stub_has_every_rpc_of_the_proto(tmp_path):
    methods = [m.name for m in _compiled_descriptor(tmp_path).service[0].method]
    assert methods, "the proto defines no RPCs"
    for name in methods:
        assert hasattr(pb_grpc.LanguageModelServicer, name), HINT


def test_stubs_import_from_plotarmour_rpc():
    text = (generate.HERE / "language_model_pb2_grpc.py").read_text()
    assert "from plotarmour.v1 import" not in text
    assert "from plotarmour.rpc import language_model_pb2" in text


def test_stub_text_is_what_the_generator_writes():
    # Regenerated with whatever grpcio-tools is installed and compared but for the version
    # stamps, so the check never skips: an edited stub or a changed proto fails it.
    assert generate.stale_files(ignore_versions=True) == [], HINT


def test_the_version_stamps_are_all_that_is_ignored():
    text = (generate.HERE / "language_model_pb2.py").read_text(encoding="utf-8")
    restamped = text.replace("# Protobuf Python Version: ", "# Protobuf Python Version: 99.")
    assert generate.unstamped(restamped) == generate.unstamped(text)
    assert "99." not in generate.unstamped(restamped) and "DESCRIPTOR" in generate.unstamped(text)
    edited = text.replace("_sym_db = _symbol_database.Default()", "_sym_db = None")
    assert generate.unstamped(edited) != generate.unstamped(text)
