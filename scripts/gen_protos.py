"""Compile proto/*.proto into proto/*_pb2.py (+ _grpc) with grpcio-tools.

Run after editing a .proto: `.venv/bin/python scripts/gen_protos.py`.
tests/unit/test_protos_fresh.py fails when the checked-in modules are stale.

TensorFlow's wheel ships its generated *_pb2 modules but not the .proto sources, so the
TF messages tfgate's protos import (tensorflow.ConfigProto) reach protoc as a descriptor
set built from the installed modules (`--descriptor_set_in`).
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.core import protos  # noqa: E402  (TF's message modules, without the TF runtime)


def tensorflow_descriptor_set() -> bytes:
    """The .proto files behind protos.TF_IMPORTED_BY_TFGATE, with everything they import."""
    files = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(file_descriptor) -> None:  # type: ignore[no-untyped-def]
        if file_descriptor.name in seen:
            return
        seen.add(file_descriptor.name)
        for dependency in file_descriptor.dependencies:
            add(dependency)  # dependencies first, as protoc expects
        file_descriptor.CopyToProto(files.file.add())

    for module in protos.TF_IMPORTED_BY_TFGATE:
        add(module.DESCRIPTOR)
    return files.SerializeToString()


def generate(out_dir: pathlib.Path) -> None:
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    with tempfile.NamedTemporaryFile(suffix=".pb") as descriptor_set:
        descriptor_set.write(tensorflow_descriptor_set())
        descriptor_set.flush()
        for proto in sorted((ROOT / "proto").glob("*.proto")):
            source = proto.read_text()
            args = [
                "protoc",
                f"-I{ROOT}",
                f"-I{include}",
                f"--python_out={out_dir}",
                str(proto.relative_to(ROOT)),
            ]
            if "import \"tensorflow/" in source:
                args.insert(1, f"--descriptor_set_in={descriptor_set.name}")
            if "\nservice " in source:
                args.insert(-1, f"--grpc_python_out={out_dir}")
            if protoc.main(args) != 0:
                raise SystemExit(f"protoc failed for {proto}")


if __name__ == "__main__":
    # optional argument: an output root other than the repository (the freshness test)
    generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
    sys.exit(0)
