"""TensorFlow Serving's and TensorFlow's generated protobuf modules, loaded without TensorFlow.

The official `tensorflow-serving-api` package imports `tensorflow.core.*_pb2`, and importing
any `tensorflow.*` submodule normally runs `tensorflow/__init__.py`, which loads the whole TF
runtime (~3 s, hundreds of MB) into the gateway. The gateway only needs the message classes,
so while importing them we stand a bare package module in for `tensorflow` whose __path__
points at the installed package: the generated *_pb2 files load, TF's runtime does not.
The stand-in is removed afterwards, so a later real `import tensorflow` (tests, `tfgate inspect`)
still works and reuses the same already-imported *_pb2 modules.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def _import_without_tf_runtime() -> None:
    if "tensorflow" in sys.modules:
        return  # TF is already loaded in this process (tests): nothing to avoid
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the tensorflow package is not installed")
    stand_in = types.ModuleType("tensorflow")
    stand_in.__path__ = list(spec.submodule_search_locations)
    sys.modules["tensorflow"] = stand_in
    try:
        import tensorflow.core.example.example_pb2
        import tensorflow.core.framework.tensor_pb2
        import tensorflow.core.framework.types_pb2
        import tensorflow.core.protobuf.config_pb2
        import tensorflow.core.protobuf.meta_graph_pb2
        import tensorflow.core.protobuf.named_tensor_pb2  # noqa: F401
        import tensorflow_serving.apis.classification_pb2
        import tensorflow_serving.apis.get_model_metadata_pb2
        import tensorflow_serving.apis.get_model_status_pb2
        import tensorflow_serving.apis.inference_pb2
        import tensorflow_serving.apis.model_service_pb2
        import tensorflow_serving.apis.model_service_pb2_grpc
        import tensorflow_serving.apis.predict_pb2
        import tensorflow_serving.apis.prediction_log_pb2
        import tensorflow_serving.apis.prediction_service_pb2
        import tensorflow_serving.apis.prediction_service_pb2_grpc
        import tensorflow_serving.apis.regression_pb2
        import tensorflow_serving.config.model_server_config_pb2
        import tensorflow_serving.config.platform_config_pb2  # noqa: F401
    finally:
        if sys.modules.get("tensorflow") is stand_in:
            del sys.modules["tensorflow"]


_import_without_tf_runtime()

from tensorflow.core.example import example_pb2, feature_pb2  # noqa: E402
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2  # noqa: E402
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, named_tensor_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2, platform_config_pb2  # noqa: E402

# TF's messages that tfgate's own protos import (proto/session_bundle_config.proto);
# scripts/gen_protos.py hands their descriptors to protoc.
TF_IMPORTED_BY_TFGATE = (config_pb2, named_tensor_pb2)

__all__ = [
    "TF_IMPORTED_BY_TFGATE",
    "classification_pb2",
    "config_pb2",
    "example_pb2",
    "feature_pb2",
    "get_model_metadata_pb2",
    "get_model_status_pb2",
    "inference_pb2",
    "input_pb2",
    "meta_graph_pb2",
    "model_management_pb2",
    "model_pb2",
    "model_server_config_pb2",
    "model_service_pb2",
    "model_service_pb2_grpc",
    "named_tensor_pb2",
    "platform_config_pb2",
    "predict_pb2",
    "prediction_log_pb2",
    "prediction_service_pb2",
    "prediction_service_pb2_grpc",
    "regression_pb2",
    "tensor_pb2",
    "tensor_shape_pb2",
    "types_pb2",
]
