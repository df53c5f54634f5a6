"""V2 (Open Inference Protocol) codec: datatypes, JSON and binary request parsing with every
client-controlled size bounded, response encoding, and gRPC contents / raw contents."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from app.codec import json_dense, v2_json, v2_proto, v2_response
from app.codec.tensor import TensorBudget, unlimited_budget
from app.codec.v2_binary import decode_raw, encode_raw
from app.codec.v2_datatypes import V2_DATATYPE_BY_TF, v2_datatype, wire_dtype
from app.core.errors import Code, ServingError
from app.core.types import (
    DT_BFLOAT16,
    DT_BOOL,
    DT_COMPLEX64,
    DT_FLOAT,
    DT_HALF,
    DT_INT8,
    DT_INT64,
    DT_STRING,
    DT_VARIANT,
    SignatureSpec,
    TensorSpec,
)
from proto import open_inference_pb2 as pb

SIGNATURE = SignatureSpec(
    key="serving_default",
    method_name="tensorflow/serving/predict",
    inputs={
        "a": TensorSpec("a", "a:0", DT_FLOAT, (-1, 2)),
        "s": TensorSpec("s", "s:0", DT_STRING, (-1,)),
        "h": TensorSpec("h", "h:0", DT_HALF, (-1,)),
        "i8": TensorSpec("i8", "i8:0", DT_INT8, (-1,)),
        "flag": TensorSpec("flag", "flag:0", DT_BOOL, (-1,)),
    },
    outputs={"y": TensorSpec("y", "y:0", DT_INT64, None)},
)


def body(*inputs: dict, **extra: object) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def decode(raw_body: bytes, header_length: int | None = None, budget_bytes: int = 1 << 30):
    request = v2_json.parse_infer_request(raw_body, header_length)
    return v2_json.decode_inputs(request, SIGNATURE, "m", TensorBudget(budget_bytes))


def test_datatype_table_covers_the_protocol() -> None:
    assert set(V2_DATATYPE_BY_TF.values()) == {
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
        "FP16", "FP32", "FP64", "BYTES", "BF16",
    }
    assert v2_datatype(DT_STRING, "x") == "BYTES"
    assert v2_datatype(DT_HALF, "x") == "FP16"
    assert v2_datatype(DT_BFLOAT16, "x") == "BF16"


@pytest.mark.parametrize("dtype", [DT_COMPLEX64, DT_VARIANT])
def test_unmappable_dtype_is_a_clear_error(dtype: int) -> None:
    with pytest.raises(ServingError, match="has no datatype for") as info:
        v2_datatype(dtype, "output 'z'")
    assert info.value.code is Code.INVALID_ARGUMENT and "output 'z'" in info.value.message


def test_bf16_is_carried_as_two_byte_bfloat16() -> None:
    # BF16 itself: tests/unit/codec/test_v2_bf16.py.
    assert wire_dtype(DT_BFLOAT16).itemsize == 2


def test_json_inputs_flat_and_nested() -> None:
    tensors = decode(
        body(
            {"name": "a", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4.5]]},
            {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["x", "yz"]},
            {"name": "h", "datatype": "FP16", "shape": [2], "data": [1.5, -2]},
            {"name": "flag", "datatype": "BOOL", "shape": [1], "data": [True]},
            {"name": "i8", "datatype": "INT8", "shape": [2], "data": [-128, 127]},
        )
    )
    assert tensors["a"].dtype == np.float32 and tensors["a"].tolist() == [[1, 2], [3, 4.5]]
    assert tensors["s"].tolist() == [b"x", b"yz"]
    assert tensors["h"].dtype == np.float16
    assert tensors["flag"].tolist() == [True]
    assert tensors["i8"].dtype == np.int8


BAD_JSON_CASES = [
    (b"{", "failed to parse the request JSON"),
    (b"[]", "must be a JSON object"),
    (orjson.dumps({"inputs": []}), "non-empty 'inputs'"),
    (body({"name": "a", "datatype": "FP32", "shape": [1, 2]}), "neither 'data' nor"),
    (body({"name": "a", "datatype": "FP32", "shape": [-1, 2], "data": []}), "non-negative"),
    (body({"name": "a", "datatype": "FP32", "shape": [True], "data": [1]}), "non-negative"),
    (body({"name": "a", "datatype": "FP32", "shape": [1] * 65, "data": [1]}), "at most 64"),
    (body({"name": "a", "datatype": "FP99", "shape": [1, 2], "data": [1, 2]}), "invalid datatype"),
    (body({"name": "a", "datatype": "FP64", "shape": [1, 2], "data": [1, 2]}),
     "unexpected datatype FP64 for inference input 'a', expecting FP32"),
    (body({"name": "zz", "datatype": "FP32", "shape": [1], "data": [1]}),
     "unexpected inference input 'zz' for model 'm'"),
    (body({"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1, 2, 3]}),
     "holds 3 elements, shape [1,2] needs 2"),
    (body({"name": "a", "datatype": "FP32", "shape": [1, 2], "data": ["1", "2"]}),
     "does not hold FP32"),
    (body({"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [[1], 2]}), "mixes arrays"),
    (body({"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1, [2]]}), "mixes arrays"),
    (body({"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1, {}]}),
     "does not hold FP32"),
    (body({"name": "s", "datatype": "BYTES", "shape": [2], "data": ["a", ["b"]]}),
     "must hold strings"),
    (body({"name": "i8", "datatype": "INT8", "shape": [1], "data": [300]}), "outside INT8"),
    (body({"name": "i8", "datatype": "INT8", "shape": [1], "data": [1.5]}), "does not hold INT8"),
    (body({"name": "flag", "datatype": "BOOL", "shape": [1], "data": [1]}), "true/false"),
    (body({"name": "s", "datatype": "BYTES", "shape": [1], "data": [1]}), "must hold strings"),
    (body({"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]},
          {"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}), "more than once"),
    (body({"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}, id=5),
     "'id' must be a string"),
    (body({"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]},
          parameters={"binary_data_output": "yes"}), "must be a boolean"),
]


@pytest.mark.parametrize(("raw_body", "message"), BAD_JSON_CASES)
def test_bad_json_requests_are_invalid_argument(raw_body: bytes, message: str) -> None:
    with pytest.raises(ServingError) as info:
        decode(raw_body)
    assert info.value.code is Code.INVALID_ARGUMENT
    assert message in info.value.message


def test_declared_shape_is_charged_before_anything_is_allocated() -> None:
    # 2**40 x 2 floats claimed with two values: the budget refuses it by the shape alone.
    raw = body({"name": "a", "datatype": "FP32", "shape": [1 << 40, 2], "data": [1, 2]})
    with pytest.raises(ServingError, match="a request's tensors may take at most 1024 bytes"):
        decode(raw, budget_bytes=1024)


def binary_body(header: dict, *parts: bytes) -> tuple[bytes, int]:
    json_part = orjson.dumps(header)
    return json_part + b"".join(parts), len(json_part)


def bytes_elements(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def test_binary_inputs() -> None:
    floats = np.array([[1, 2], [3, 4]], np.float32).tobytes()
    strings = bytes_elements(b"ab", b"", b"\xff\x00")
    raw, length = binary_body(
        {
            "inputs": [
                {"name": "a", "datatype": "FP32", "shape": [2, 2],
                 "parameters": {"binary_data_size": len(floats)}},
                {"name": "s", "datatype": "BYTES", "shape": [3],
                 "parameters": {"binary_data_size": len(strings)}},
            ]
        },
        floats,
        strings,
    )
    tensors = decode(raw, length)
    assert tensors["a"].tolist() == [[1, 2], [3, 4]]
    assert tensors["s"].tolist() == [b"ab", b"", b"\xff\x00"]


def one_binary_input(size: int, payload: bytes, shape: list[int], datatype: str = "FP32",
                     name: str = "a") -> tuple[bytes, int]:
    return binary_body(
        {"inputs": [{"name": name, "datatype": datatype, "shape": shape,
                     "parameters": {"binary_data_size": size}}]},
        payload,
    )


BAD_BINARY_CASES = [
    # the header length is the client's claim: it must lie inside the body
    (lambda: (one_binary_input(8, b"\0" * 8, [1, 2])[0], 10**6), "outside the"),
    # sizes add up to less than the binary part
    (lambda: one_binary_input(4, b"\0" * 8, [1, 1]), "add up to 4"),
    # a size that runs past the body
    (lambda: one_binary_input(16, b"\0" * 8, [2, 2]), "runs past the end"),
    # bytes do not match shape * itemsize
    (lambda: one_binary_input(8, b"\0" * 8, [1, 1]), "expecting 4 bytes"),
    # BYTES: a length prefix that claims more than is there
    (lambda: one_binary_input(6, struct.pack("<I", 99) + b"ab", [1], "BYTES", "s"),
     "says 99 bytes but only 2 remain"),
    (lambda: one_binary_input(2, b"ab", [1], "BYTES", "s"), "ends inside the length"),
    (lambda: one_binary_input(12, bytes_elements(b"a", b"b", b"c")[:12], [1], "BYTES", "s"),
     "more than the 1 elements"),
    (lambda: one_binary_input(5, bytes_elements(b"a"), [2], "BYTES", "s"), "holds 1 elements"),
]


@pytest.mark.parametrize(("make", "message"), BAD_BINARY_CASES)
def test_bad_binary_requests_are_invalid_argument(make, message: str) -> None:  # type: ignore[no-untyped-def]
    raw, length = make()
    with pytest.raises(ServingError) as info:
        decode(raw, length)
    assert info.value.code is Code.INVALID_ARGUMENT
    assert message in info.value.message


def test_bytes_element_count_is_charged_before_parsing() -> None:
    raw, length = one_binary_input(5, bytes_elements(b"a"), [1 << 40], "BYTES", "s")
    with pytest.raises(ServingError, match="may take at most 4096 bytes"):
        decode(raw, length, budget_bytes=4096)


def test_response_json_and_binary() -> None:
    request = v2_json.parse_infer_request(
        body({"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}, id="r",
             outputs=[{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}]),
        None,
    )
    y = np.array([[1, 2]], np.int64)
    z = np.array([b"ok"], dtype=object)
    content, length = v2_response.encode_infer_response(
        request, "m", 7, [("y", DT_INT64, y), ("z", DT_STRING, z)]
    )
    assert length is not None
    header = orjson.loads(content[:length])
    assert header["model_version"] == "7" and header["id"] == "r"
    assert header["outputs"][0] == {
        "name": "y", "datatype": "INT64", "shape": [1, 2],
        "parameters": {"binary_data_size": 16},
    }
    assert header["outputs"][1]["data"] == ["ok"]
    assert np.frombuffer(content[length:], "<i8").tolist() == [1, 2]


def test_non_utf8_bytes_output_needs_binary_data() -> None:
    request = v2_json.parse_infer_request(
        body({"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}), None
    )
    with pytest.raises(ServingError, match="request it with the 'binary_data' parameter"):
        v2_response.encode_infer_response(
            request, "m", 1, [("z", DT_STRING, np.array([b"\xff"], dtype=object))]
        )


@pytest.mark.parametrize(
    ("array", "dtype"),
    [
        (np.array([[1.5, -2]], np.float16), DT_HALF),
        (np.array([True, False, True]), DT_BOOL),
        (np.array([b"", b"abc"], dtype=object), DT_STRING),
        (np.array([-5, 7], np.int64), DT_INT64),
    ],
)
def test_raw_round_trip(array: np.ndarray, dtype: int) -> None:
    datatype = v2_datatype(dtype, "t")
    back = decode_raw(encode_raw(array, dtype), datatype, dtype, array.shape, "t",
                      unlimited_budget())
    assert back.tolist() == array.tolist()


def test_metadata_maps_aliases_and_unknown_dims() -> None:
    signature = SignatureSpec("serving_default", "", {"x": TensorSpec("x", "x:0", DT_FLOAT,
                              (-1, 3))}, {"y": TensorSpec("y", "y:0", DT_STRING, None)})
    assert v2_response.model_metadata("m", [2, 3], {"serving_default": signature}) == {
        "name": "m",
        "versions": ["2", "3"],
        "platform": "tensorflow_savedmodel",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "datatype": "BYTES", "shape": [-1]}],
    }
    with pytest.raises(ServingError) as missing:
        v2_response.model_metadata("m", [2], {"other": signature})
    assert missing.value.code is Code.FAILED_PRECONDITION
    assert str(missing.value) == 'model m has no "serving_default" signature to describe'


# --- gRPC ---


def grpc_request(*inputs: pb.ModelInferRequest.InferInputTensor, raw: list[bytes] = ()):  # type: ignore[assignment]
    return pb.ModelInferRequest(model_name="m", inputs=list(inputs), raw_input_contents=raw)


def grpc_input(name: str, datatype: str, shape: list[int], **contents: list) -> object:
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    if contents:
        tensor.contents.CopyFrom(pb.InferTensorContents(**contents))
    return tensor


def test_grpc_contents_and_raw() -> None:
    tensors = v2_proto.decode_infer_inputs(
        grpc_request(
            grpc_input("a", "FP32", [1, 2], fp32_contents=[1, 2]),
            grpc_input("s", "BYTES", [1], bytes_contents=[b"q"]),
            grpc_input("i8", "INT8", [2], int_contents=[-1, 5]),
        ),
        SIGNATURE,
        unlimited_budget(),
    )
    assert tensors["a"].tolist() == [[1, 2]] and tensors["s"].tolist() == [b"q"]
    assert tensors["i8"].dtype == np.int8
    raw = v2_proto.decode_infer_inputs(
        grpc_request(grpc_input("h", "FP16", [2]), raw=[np.array([1, 2], "<f2").tobytes()]),
        SIGNATURE,
        unlimited_budget(),
    )
    assert raw["h"].dtype == np.float16 and raw["h"].tolist() == [1, 2]


BAD_GRPC_CASES = [
    (lambda: grpc_request(grpc_input("a", "FP32", [1, 2]), raw=[b"", b""]),
     "expected 1 raw_input_contents"),
    (lambda: grpc_request(grpc_input("a", "FP32", [1, 2]), raw=[b"\0" * 4]), "expecting 8 bytes"),
    (lambda: grpc_request(grpc_input("a", "FP32", [1, 2], fp32_contents=[1]), raw=[b"\0" * 8]),
     "has contents while"),
    (lambda: grpc_request(grpc_input("a", "FP32", [1, 2], fp32_contents=[1])),
     "contents hold 1 elements"),
    (lambda: grpc_request(grpc_input("h", "FP16", [1], fp32_contents=[1])),
     "must be sent in raw_input_contents"),
    (lambda: grpc_request(grpc_input("i8", "INT8", [1], int_contents=[1000])), "outside INT8"),
    (lambda: grpc_request(grpc_input("a", "INT32", [1, 2], int_contents=[1, 2])),
     "expecting FP32"),
]


@pytest.mark.parametrize(("make", "message"), BAD_GRPC_CASES)
def test_bad_grpc_requests_are_invalid_argument(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ServingError) as info:
        v2_proto.decode_infer_inputs(make(), SIGNATURE, unlimited_budget())
    assert info.value.code is Code.INVALID_ARGUMENT
    assert message in info.value.message


def test_grpc_raw_size_must_match_a_huge_declared_shape() -> None:
    request = grpc_request(grpc_input("a", "FP32", [1 << 40, 2]), raw=[b"\0" * 8])
    with pytest.raises(ServingError, match="expecting"):
        v2_proto.decode_infer_inputs(request, SIGNATURE, TensorBudget(1024))


def test_grpc_response_uses_raw_output_contents() -> None:
    response = v2_proto.encode_infer_response(
        "m", 3, "id1", [("y", DT_INT64, np.array([4, 5], np.int64))]
    )
    assert response.model_version == "3" and response.id == "id1"
    assert response.outputs[0].datatype == "INT64" and list(response.outputs[0].shape) == [2]
    assert np.frombuffer(response.raw_output_contents[0], "<i8").tolist() == [4, 5]


# --- large float bodies: simdjson reads `data` without Python lists ---


def large_body(data: object, datatype: str = "FP32", shape: list[int] | None = None,
               **extra: object) -> bytes:
    raw = body({"name": "a", "datatype": datatype, "shape": shape or [1500, 2], "data": data},
               **extra)
    assert json_dense.worth_dense(raw)
    return raw


@pytest.mark.parametrize(("count", "dense"), [(16, False), (64, False), (256, True), (784, True)])
@pytest.mark.parametrize("digits", ["%.4f", "%.6g", "%d"])
def test_the_dense_path_is_chosen_by_number_count_not_body_bytes(
    count: int, dense: bool, digits: str
) -> None:
    values = [float(digits % (v * 255)) for v in np.random.default_rng(5).random(count)]
    raw = body({"name": "a", "datatype": "FP32", "shape": [1, count], "data": values})
    assert len(raw) < 8 * 1024  # even a 784-number image in 4 decimals stays under 8 KiB
    request = v2_json.parse_infer_request(raw, None)
    assert isinstance(request.inputs[0].data, v2_json.DenseData) is dense


def test_large_float_data_takes_the_dense_path_with_the_same_values() -> None:
    values = np.random.default_rng(3).random((1500, 2)) * 1e3
    nested = [[float(f"{v:.7g}") for v in row] for row in values]
    raw = large_body(nested)
    request = v2_json.parse_infer_request(raw, None)
    assert isinstance(request.inputs[0].data, v2_json.DenseData)
    dense = decode(raw)["a"]
    flat_text = orjson.dumps([v for row in nested for v in row])
    expected = np.array(orjson.loads(flat_text), np.float64).astype(np.float32).reshape(1500, 2)
    assert dense.dtype == np.float32 and np.array_equal(dense, expected)


def test_large_body_fallbacks_keep_the_usual_errors() -> None:
    with pytest.raises(ServingError, match="does not hold FP32"):
        decode(large_body(["x"] * 3000))  # not numbers: orjson's path and its error
    with pytest.raises(ServingError, match="holds 2999 elements, shape"):
        decode(large_body([1.0] * 2999))  # dense, but the count is checked the same
    repeated = large_body([1.0] * 3000).replace(b'{"inputs"', b'{"id":"a","id":"b","inputs"')
    assert v2_json.parse_infer_request(repeated, None).id == "b"  # orjson decides (last wins)


@pytest.mark.parametrize(
    ("version_text", "version", "label"),
    [(None, None, None), ("", None, None), ("7", 7, None), ("007", 7, None),
     ("9223372036854775807", (1 << 63) - 1, None), ("stable", None, "stable")],
)
def test_v2_model_spec_reads_digits_as_a_version_and_other_text_as_a_label(
    version_text: str | None, version: int | None, label: str | None
) -> None:
    spec = v2_json.v2_model_spec("m", version_text, "sig")
    assert (spec.name, spec.version, spec.label, spec.signature_name) == ("m", version, label, "sig")


def test_v2_model_spec_refuses_an_empty_name_and_an_out_of_range_version() -> None:
    with pytest.raises(ServingError, match="model name is empty"):
        v2_json.v2_model_spec("", "1")
    with pytest.raises(ServingError, match="model version 9223372036854775808 is out of range"):
        v2_json.v2_model_spec("m", "9223372036854775808")
