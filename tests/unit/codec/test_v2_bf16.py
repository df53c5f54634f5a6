"""BF16 (TF's DT_BFLOAT16) through the V2 codec: JSON numbers rounded the way TF casts a double
to bfloat16, binary data / raw contents as 2-byte little-endian bit patterns, outputs back as
JSON numbers or raw bytes, and every size charged to the request's budget at 2 bytes each."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import orjson
import pytest

from app.codec import v2_json, v2_proto, v2_response
from app.codec.tensor import TensorBudget, unlimited_budget
from app.codec.v2_binary import decode_raw, encode_raw
from app.codec.v2_datatypes import wire_dtype
from app.core.errors import Code, ServingError
from app.core.types import DT_BFLOAT16, DT_RESOURCE, DT_STRING, SignatureSpec, TensorSpec
from proto import open_inference_pb2 as pb

BF16 = np.dtype(ml_dtypes.bfloat16)
SIGNATURE = SignatureSpec(
    key="serving_default",
    method_name="tensorflow/serving/predict",
    inputs={"x": TensorSpec("x", "x:0", DT_BFLOAT16, (-1,))},
    outputs={"y": TensorSpec("y", "y:0", DT_BFLOAT16, (-1,))},
)
# JSON number -> the bfloat16 bit pattern TF's Cast (double -> float -> bfloat16, round to
# nearest even) gives it.
ROUNDING = [
    (1.0, 0x3F80),
    (-2, 0xC000),  # a JSON integer
    (0.1, 0x3DCD),  # float 0x3DCCCCCD: the low half is above the tie, rounds up
    (3.14159, 0x4049),  # float 0x40490FD0: below the tie, rounds down
    (1.00390625, 0x3F80),  # float 0x3F808000: a tie, to even (down)
    (1.01171875, 0x3F82),  # float 0x3F818000: a tie, to even (up)
    # Just above the tie as a double, but exactly the tie as a float: TF rounds to float
    # first, so this is 0x3F80 (a direct double -> bfloat16 rounding would give 0x3F81).
    (1.00390625 + 2**-40, 0x3F80),
    (1e39, 0x7F80),  # beyond range: +inf, as TF's cast, no error
    (-0.0, 0x8000),
]


def bits(array: np.ndarray) -> list[int]:
    return array.reshape(-1).view(np.uint16).tolist()


def parse(document: dict, *parts: bytes) -> v2_json.V2InferRequest:
    header = orjson.dumps(document)
    return v2_json.parse_infer_request(header + b"".join(parts), len(header) if parts else None)


def decode(document: dict, *parts: bytes, budget_bytes: int = 1 << 30) -> np.ndarray:
    request = parse(document, *parts)
    return v2_json.decode_inputs(request, SIGNATURE, "m", TensorBudget(budget_bytes))["x"]


def json_input(data: list, shape: list[int] | None = None) -> dict:
    return {"inputs": [{"name": "x", "datatype": "BF16", "shape": shape or [len(data)],
                        "data": data}]}  # fmt: skip


def test_wire_dtype_is_two_byte_bfloat16() -> None:
    dtype = wire_dtype(DT_BFLOAT16)
    assert dtype == BF16 and dtype.itemsize == 2


@pytest.mark.parametrize("dtype", [DT_STRING, DT_RESOURCE])
def test_a_dtype_without_numpy_form_is_still_a_clear_error(dtype: int) -> None:
    with pytest.raises(ServingError, match="tfgate cannot carry") as info:
        wire_dtype(dtype)
    assert info.value.code is Code.UNIMPLEMENTED


@pytest.mark.parametrize(("number", "expected"), ROUNDING)
def test_json_numbers_round_like_tensorflows_cast(number: float, expected: int) -> None:
    tensor = decode(json_input([number]))
    assert tensor.dtype == BF16 and bits(tensor) == [expected]


def test_json_nested_data_and_the_dense_path_agree() -> None:
    numbers = [n for n, _ in ROUNDING]
    expected = [b for _, b in ROUNDING]
    nested = decode(json_input([numbers[:3], numbers[3:6], numbers[6:]], [3, 3]))
    assert nested.shape == (3, 3) and bits(nested) == expected
    # Enough numbers for simdjson's dense path (codec/json_dense.py): same bits.
    many = numbers * 40
    dense = decode(json_input(many))
    assert dense.dtype == BF16 and bits(dense) == expected * 40


@pytest.mark.parametrize("data", [["1"], [True], [None]])
def test_json_data_that_is_not_numbers_is_refused(data: list) -> None:
    with pytest.raises(ServingError, match="'data' does not hold BF16 values") as info:
        decode(json_input(data))
    assert info.value.code is Code.INVALID_ARGUMENT


def test_binary_data_is_two_byte_little_endian() -> None:
    payload = bytes([0x80, 0x3F, 0xCD, 0x3D, 0x00, 0xC0])  # 1.0, 0.1 (rounded), -2.0
    document = {"inputs": [{"name": "x", "datatype": "BF16", "shape": [3],
                            "parameters": {"binary_data_size": len(payload)}}]}  # fmt: skip
    tensor = decode(document, payload)
    assert tensor.dtype == BF16 and bits(tensor) == [0x3F80, 0x3DCD, 0xC000]
    assert tensor.astype(np.float32).tolist() == [1.0, 0.10009765625, -2.0]


def test_binary_data_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ServingError) as info:
        decode_raw(b"\x80\x3f\x00", "BF16", DT_BFLOAT16, [2], "input 'x'", unlimited_budget())
    assert info.value.code is Code.INVALID_ARGUMENT
    assert info.value.message == (
        "input 'x': unexpected size 3 bytes of BF16 data for shape [2], expecting 4 bytes"
    )


@pytest.mark.parametrize("kind", ["json", "binary"])
def test_elements_are_charged_two_bytes_before_allocation(kind: str) -> None:
    def document(count: int) -> tuple[dict, bytes]:
        if kind == "json":
            return json_input([1.0] * count), b""
        entry = {"name": "x", "datatype": "BF16", "shape": [count],
                 "parameters": {"binary_data_size": 2 * count}}  # fmt: skip
        return {"inputs": [entry]}, b"\x80\x3f" * count

    doc, payload = document(50)
    assert decode(doc, *([payload] if payload else []), budget_bytes=100).size == 50
    doc, payload = document(51)
    with pytest.raises(ServingError, match="needs 102 bytes; a request's tensors may take at most"
                                           " 100 bytes"):  # fmt: skip
        decode(doc, *([payload] if payload else []), budget_bytes=100)
    # A huge declared shape is refused by its size alone.
    with pytest.raises(ServingError, match="needs 2199023255552 bytes"):
        decode(json_input([1.0], [1 << 40]), budget_bytes=1 << 20)


def test_outputs_as_json_numbers_and_as_binary() -> None:
    y = np.array([0x4020, 0x3DCD, 0xFF80], np.uint16).view(BF16)  # 2.5, 0.1 rounded, -inf
    request = parse({"inputs": json_input([1.0])["inputs"]})
    body, header_length = v2_response.encode_infer_response(request, "m", 1, [("y", DT_BFLOAT16, y[:2])])
    assert header_length is None
    output = orjson.loads(body)["outputs"][0]
    assert output["datatype"] == "BF16" and output["shape"] == [2]
    # The JSON number is the bfloat16's value (printed at float precision): parsed back and
    # rounded as an input, it is the same bit pattern.
    assert output["data"][0] == 2.5 and abs(output["data"][1] - 0.10009765625) < 1e-8
    assert bits(decode(json_input(output["data"]))) == [0x4020, 0x3DCD]

    binary = parse({"inputs": json_input([1.0])["inputs"],
                    "parameters": {"binary_data_output": True}})  # fmt: skip
    body, header_length = v2_response.encode_infer_response(binary, "m", 1, [("y", DT_BFLOAT16, y)])
    assert header_length is not None
    header = orjson.loads(body[:header_length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 6}
    assert body[header_length:] == bytes([0x20, 0x40, 0xCD, 0x3D, 0x80, 0xFF])
    assert encode_raw(y, DT_BFLOAT16) == bytes([0x20, 0x40, 0xCD, 0x3D, 0x80, 0xFF])


def test_grpc_raw_contents_round_trip() -> None:
    request = pb.ModelInferRequest(
        model_name="m",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="BF16", shape=[2])],
        raw_input_contents=[bytes([0x80, 0x3F, 0x49, 0x40])],
    )
    x = v2_proto.decode_infer_inputs(request, SIGNATURE, unlimited_budget())["x"]
    assert x.dtype == BF16 and bits(x) == [0x3F80, 0x4049]
    response = v2_proto.encode_infer_response("m", 1, "id", [("y", DT_BFLOAT16, x)])
    assert response.outputs[0].datatype == "BF16" and list(response.outputs[0].shape) == [2]
    assert response.raw_output_contents[0] == bytes([0x80, 0x3F, 0x49, 0x40])


def test_grpc_typed_contents_cannot_carry_bf16() -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="BF16", shape=[1])
    tensor.contents.fp32_contents.append(1.0)
    request = pb.ModelInferRequest(model_name="m", inputs=[tensor])
    with pytest.raises(ServingError, match="BF16 data must be sent in raw_input_contents"):
        v2_proto.decode_infer_inputs(request, SIGNATURE, unlimited_budget())


def test_grpc_raw_contents_are_charged_two_bytes_per_element() -> None:
    request = pb.ModelInferRequest(
        model_name="m",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="BF16", shape=[3])],
        raw_input_contents=[b"\0" * 6],
    )
    with pytest.raises(ServingError, match="needs 6 bytes"):
        v2_proto.decode_infer_inputs(request, SIGNATURE, TensorBudget(5))
