"""The benchmark workloads: which model, its input shape, and the request bytes per protocol.

Data path position: the load generator's input. Every server gets byte-identical REST bodies
(TF Serving's row format, {"instances": [...]}) and tfgate's gRPC port gets a
PredictRequest with tensor_content (what tf.make_tensor_proto produces from numpy).
Values are deterministic (fixed seed). How a client prints its numbers changes the body's size
and the gateway's parse cost, so a workload names its NUMBER_FORMATS entry: "6g" (6 significant
digits, the default), "4f" (4 decimals, a 28x28x1 image is about 7 KB), "int" (0-255 pixel
values), "repr" (Python's shortest round-trip repr, what json.dumps(array.tolist()) sends) or
"exp" (6-digit exponent notation).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from app.core.protos import model_pb2, predict_pb2, tensor_pb2, tensor_shape_pb2, types_pb2

INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "tiny": (1,),
    "dnn": (256,),
    "cnn": (28, 28, 1),
    "image": (224, 224, 3),
}
MODELS = ("tiny", "dnn", "cnn")
DEFAULT_FORMAT = "6g"
# name -> how one float32 value is printed in a REST body
NUMBER_FORMATS: dict[str, Callable[[float], str]] = {
    "6g": lambda v: f"{v:.6g}",
    "4f": lambda v: f"{v:.4f}",
    "int": lambda v: str(int(v * 255)),
    "repr": repr,
    "exp": lambda v: f"{v:.6e}",
}


@dataclasses.dataclass(frozen=True)
class Workload:
    model: str
    rows: int = 1
    number_format: str = DEFAULT_FORMAT

    @property
    def name(self) -> str:
        """e.g. "cnn", "dnnx64", "cnn@4f" (the default format adds no suffix)."""
        name = self.model if self.rows == 1 else f"{self.model}x{self.rows}"
        return name if self.number_format == DEFAULT_FORMAT else f"{name}@{self.number_format}"

    def array(self) -> np.ndarray:
        rng = np.random.default_rng(7)
        return rng.random((self.rows, *INPUT_SHAPES[self.model]), dtype=np.float32)

    def rest_body(self) -> bytes:
        return rest_body(self.array(), self.number_format)

    def grpc_request(self) -> bytes:
        return grpc_request(self.model, self.array())


# The large-request workload: 64-row dnn requests at concurrency 8 (suite levels, docs
# tables and targets all read these).
LARGE = Workload("dnn", 64)
LARGE_CONCURRENCY = 8
# Where the issue-21 targets are: the suite runs the stock-config server and the extra number
# formats only at this concurrency (the constant-reply ceilings only from it up), so its
# time stays about the same.
FORMAT_CONCURRENCY = 64
EXTRA_FORMATS = ("4f",)  # beside the default 6g: 4-decimal bodies


def _nested_text(array: np.ndarray, number: Callable[[float], str]) -> str:
    if array.ndim == 1:
        return "[" + ",".join(number(v) for v in array.tolist()) + "]"
    return "[" + ",".join(_nested_text(sub, number) for sub in array) + "]"


def rest_body(array: np.ndarray, number_format: str = DEFAULT_FORMAT) -> bytes:
    return ('{"instances": ' + _nested_text(array, NUMBER_FORMATS[number_format]) + "}").encode()


def tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]
    )
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=shape,
        tensor_content=np.ascontiguousarray(array, dtype="<f4").tobytes(),
    )


def grpc_request(model: str, array: np.ndarray) -> bytes:
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model, signature_name="serving_default")
    )
    request.inputs["x"].CopyFrom(tensor_proto(array))
    return request.SerializeToString()
