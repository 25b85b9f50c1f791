"""Regenerate the stubs in plotarmour/rpc/ from protos/.

    python -m plotarmour.rpc.generate          # rewrite the stubs
    python -m plotarmour.rpc.generate --check  # exit 1 if the committed stubs are stale

protoc names modules after the proto path (`from plotarmour.v1 import ...`), but the
stubs live in `plotarmour.rpc`, so the generated imports are rewritten to point here.
Needs grpcio-tools (a dev dependency); the servers and the gateway only need the output.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parents[1] / "protos"
PROTOS = ["plotarmour/v1/language_model.proto"]

# `from plotarmour.v1 import x_pb2 as ...` → `from plotarmour.rpc import x_pb2 as ...`
_IMPORT = re.compile(r"^from plotarmour\.v1 import ", re.MULTILINE)


def compile_protos(out_dir: Path, *, descriptor_set: Path | None = None) -> None:
    """Run protoc (from grpcio-tools, in-process) on PROTOS into out_dir."""
    from grpc_tools import protoc

    well_known = resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}",
            f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}"]
    if descriptor_set is not None:
        args.append(f"--descriptor_set_out={descriptor_set}")
    missing = [p for p in PROTOS if not (PROTO_ROOT / p).is_file()]
    if missing:
        raise FileNotFoundError(f"proto file(s) not found under {PROTO_ROOT}: {missing}")
    if protoc.main(args + [str(PROTO_ROOT / p) for p in PROTOS]) != 0:
        raise RuntimeError(f"protoc failed on {PROTOS} (see its message above)")


def render() -> dict[str, str]:
    """The stub files as they should be: {file name in plotarmour/rpc: text}."""
    with tempfile.TemporaryDirectory() as tmp:
        compile_protos(Path(tmp))
        files = {}
        for proto in PROTOS:
            stem = Path(proto).with_suffix("")
            for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
                text = (Path(tmp) / f"{stem}{suffix}").read_text(encoding="utf-8")
                files[stem.name + suffix] = _IMPORT.sub("from plotarmour.rpc import ", text)
        return files


# What one proto compiles to differently under another grpcio-tools: the version stamps.
_STAMPS = [
    re.compile(r"^(# Protobuf Python Version: ).*$", re.MULTILINE),
    re.compile(r"^(GRPC_GENERATED_VERSION = ).*$", re.MULTILINE),
    re.compile(r"(ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,)\s*\d+,\s*\d+,\s*\d+,\s*'[^']*',"),
]


def unstamped(text: str) -> str:
    """A stub's text without the tools' version stamps."""
    for stamp in _STAMPS:
        text = stamp.sub(r"\1 ...", text)
    return text


def stale_files(ignore_versions: bool = False) -> list[str]:
    """Names of stub files that differ from what render() produces (or are missing);
    `ignore_versions`: compared without the version stamps, so the check means the same
    under whatever grpcio-tools is installed."""
    same = (lambda a, b: unstamped(a) == unstamped(b)) if ignore_versions else str.__eq__
    return [name for name, text in render().items()
            if not (HERE / name).is_file() or not same((HERE / name).read_text(encoding="utf-8"), text)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only report stale stubs; exit 1 if any")
    args = ap.parse_args(argv)
    if args.check:
        stale = stale_files()
        for name in stale:
            print(f"stale: plotarmour/rpc/{name} (run: python -m plotarmour.rpc.generate)", file=sys.stderr)
        return 1 if stale else 0
    for name, text in render().items():
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote plotarmour/rpc/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
