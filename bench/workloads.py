"""The benchmark workloads: which model, its input shape, and the request bytes per protocol.

Data path position: the load generator's input. Every server gets byte-identical REST bodies
(TF Serving's row format, {"instances": [...]}) and tfgate's gRPC port gets a
PredictRequest with tensor_content (what tf.make_tensor_proto produces from numpy).
Values are deterministic (fixed seed) and printed with 6 significant digits, as a client
serialising float32 values would.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from app.core.protos import model_pb2, predict_pb2, tensor_pb2, tensor_shape_pb2, types_pb2

INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "tiny": (1,),
    "dnn": (256,),
    "cnn": (28, 28, 1),
    "image": (224, 224, 3),
}
MODELS = ("tiny", "dnn", "cnn")


@dataclasses.dataclass(frozen=True)
class Workload:
    model: str
    rows: int = 1

    @property
    def name(self) -> str:
        return self.model if self.rows == 1 else f"{self.model}x{self.rows}"

    def array(self) -> np.ndarray:
        rng = np.random.default_rng(7)
        return rng.random((self.rows, *INPUT_SHAPES[self.model]), dtype=np.float32)

    def rest_body(self) -> bytes:
        return rest_body(self.array())

    def grpc_request(self) -> bytes:
        return grpc_request(self.model, self.array())


# The large-request workload: 64-row dnn requests at concurrency 8 (suite levels, docs
# tables and targets all read these).
LARGE = Workload("dnn", 64)
LARGE_CONCURRENCY = 8


def _nested_text(array: np.ndarray) -> str:
    if array.ndim == 1:
        return "[" + ",".join(f"{v:.6g}" for v in array.tolist()) + "]"
    return "[" + ",".join(_nested_text(sub) for sub in array) + "]"


def rest_body(array: np.ndarray) -> bytes:
    return ('{"instances": ' + _nested_text(array) + "}").encode()


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
