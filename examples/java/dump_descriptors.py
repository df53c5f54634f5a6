"""Write TF Serving's gRPC API as a FileDescriptorSet, for protoc --descriptor_set_in.

The tensorflow-serving-api wheel ships generated *_pb2 modules but no .proto files, so the
Java build takes the descriptors from the installed modules instead: prediction_service and
model_service plus every file they import (TensorFlow's tensor/example/meta_graph protos,
google/protobuf well-known types), dependencies first. Loaded through app.core.protos, so the
TensorFlow runtime is never imported.

usage: python examples/java/dump_descriptors.py OUT.pb   (prints the .proto file names)
"""

from __future__ import annotations

import importlib
import pathlib
import sys

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor

ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVICE_FILES = (
    "tensorflow_serving/apis/prediction_service.proto",
    "tensorflow_serving/apis/model_service.proto",
)


def load_service_files() -> list[FileDescriptor]:
    sys.path.insert(0, str(ROOT))
    importlib.import_module("app.core.protos")  # message modules, without the TF runtime
    files = []
    for name in SERVICE_FILES:
        module = name.removesuffix(".proto").replace("/", ".") + "_pb2"
        files.append(importlib.import_module(module).DESCRIPTOR)
    return files


def with_dependencies(roots: list[FileDescriptor]) -> list[FileDescriptor]:
    """Every file reachable from `roots`, each after all of its imports (post-order)."""
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()

    def visit(file: FileDescriptor) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            visit(dependency)
        ordered.append(file)

    for root in roots:
        visit(root)
    return ordered


def descriptor_set(files: list[FileDescriptor]) -> descriptor_pb2.FileDescriptorSet:
    result = descriptor_pb2.FileDescriptorSet()
    for file in files:
        result.file.add().MergeFromString(file.serialized_pb)
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    files = with_dependencies(load_service_files())
    pathlib.Path(argv[0]).write_bytes(descriptor_set(files).SerializeToString())
    for file in files:
        print(file.name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
