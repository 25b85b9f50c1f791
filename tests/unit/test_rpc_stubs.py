"""The committed stubs in plotarmour/rpc/ match protos/ (regenerate: python -m plotarmour.rpc.generate)."""

from __future__ import annotations

import re

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
    # Exact text only means something with the grpcio-tools version that wrote it, which the
    # dev extra pins: a different one installed is a failure to fix, not a reason to skip.
    import grpc_tools

    made_by = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", pb_grpc.__loader__.get_source(pb_grpc.__name__))
    installed = getattr(grpc_tools, "__version__", None)
    if installed is None:
        from importlib.metadata import version

        installed = version("grpcio-tools")
    assert made_by is not None and made_by.group(1) == installed, (
        f"the stubs were written by grpcio-tools {made_by and made_by.group(1)}, {installed} is installed: install "
        "the pinned one (pyproject.toml's dev extra), or regenerate the stubs with this one and move the pin")
    assert generate.stale_files() == [], HINT
