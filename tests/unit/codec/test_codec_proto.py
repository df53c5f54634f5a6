"""app/codec/tensor_proto.py: TensorProto <-> numpy, checked against TensorFlow's own converters."""

from __future__ import annotations

import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from app.codec.tensor_proto import (
    fill_tensor_proto,
    ndarray_to_tensor_proto,
    tensor_proto_to_ndarray,
    varint,
)
from app.core.errors import Code, ServingError
from app.core.protos import predict_pb2, tensor_pb2
from app.core.types import DT_BFLOAT16, DT_FLOAT, DT_INT8, DT_STRING

RNG = np.random.default_rng(0)
ARRAYS = {
    "float32": RNG.standard_normal((3, 4)).astype(np.float32),
    "float64": RNG.standard_normal(5),
    "int32": RNG.integers(-(2**31), 2**31 - 1, (2, 3)).astype(np.int32),
    "int16": RNG.integers(-(2**15), 2**15 - 1, 6).astype(np.int16),
    "int8": RNG.integers(-128, 127, 7).astype(np.int8),
    "uint8": RNG.integers(0, 255, 7).astype(np.uint8),
    "uint16": RNG.integers(0, 65535, 4).astype(np.uint16),
    "int64": np.array([-(2**63), 2**63 - 1, 0, -1], np.int64),
    "uint32": np.array([0, 2**32 - 1], np.uint32),
    "uint64": np.array([2**64 - 1, 0], np.uint64),
    "bool": np.array([[True, False], [False, True]]),
    "float16": np.array([1.5, -2.25, np.inf, 65504.0], np.float16),
    "bfloat16": np.array([1.5, -2.25, np.inf, 3.0e38, 0.1], ml_dtypes.bfloat16),
    "complex64": (RNG.standard_normal(3) + 1j * RNG.standard_normal(3)).astype(np.complex64),
    "complex128": RNG.standard_normal(2) + 1j,
    "string": np.array([[b"a\x00b", b""], [b"\xff", "é".encode()]], dtype=object),
    "scalar": np.array(5.0, np.float32),
    "empty": np.zeros((0, 3), np.float32),
    "nan": np.array([np.nan, -0.0], np.float32),
}


@pytest.mark.parametrize("use_tensor_content", [False, True])
@pytest.mark.parametrize("name", list(ARRAYS))
def test_round_trip(name: str, use_tensor_content: bool) -> None:
    array = ARRAYS[name]
    proto = ndarray_to_tensor_proto(array, use_tensor_content=use_tensor_content)
    back = tensor_proto_to_ndarray(proto)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes() if array.dtype != object else back.tolist() == array.tolist()
    if array.dtype == object or not use_tensor_content:
        assert not proto.tensor_content
    else:
        assert proto.tensor_content == array.tobytes()


@pytest.mark.parametrize("name", list(ARRAYS))
def test_agrees_with_tensorflow(name: str) -> None:
    tf = pytest.importorskip("tensorflow")
    array = ARRAYS[name]
    for use_tensor_content in (False, True):
        ours = ndarray_to_tensor_proto(array, use_tensor_content=use_tensor_content)
        theirs = tf.make_ndarray(ours)
        assert theirs.shape == array.shape
        if array.dtype == object:
            assert theirs.tolist() == array.tolist()
        else:
            assert theirs.tobytes() == array.tobytes()
    # What TF's Python client sends decodes to the same array.
    sent = tf.make_tensor_proto(array if array.dtype != object else array.tolist())
    decoded = tensor_proto_to_ndarray(sent)
    assert decoded.tolist() == array.tolist() or np.array_equal(decoded, array, equal_nan=True)


def test_typed_fields_match_tensorflows_as_proto_field() -> None:
    tf = pytest.importorskip("tensorflow")
    for name in ("float32", "int8", "int64", "bool", "float16", "bfloat16", "complex64", "uint64",
                 "string"):
        array = ARRAYS[name]
        value = tf.constant(array if array.dtype != object else array.tolist())
        # tf.make_tensor_proto of a tf.Tensor goes through Tensor::AsProtoField in C++.
        expected = tf.make_tensor_proto(value)
        expected_typed = tensor_pb2.TensorProto.FromString(expected.SerializeToString())
        ours = ndarray_to_tensor_proto(array, use_tensor_content=False)
        assert np.array_equal(tf.make_ndarray(expected_typed), tf.make_ndarray(ours))


def _proto(dtype: int, shape: list[int], **fields) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype, **fields)
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


@pytest.mark.parametrize(
    ("values", "shape", "expected"),
    [
        ([7.0], [2, 3], [[7.0] * 3] * 2),  # a single value broadcasts (tf.make_ndarray too)
        ([7.0, 1.0, 2.0], [2, 3], [[7.0, 1.0, 2.0], [2.0, 2.0, 2.0]]),  # the last one repeats
        ([], [2], [0.0, 0.0]),  # no values: zeros
        ([1.0, 2.0, 3.0], [2], [1.0, 2.0]),  # extra values are ignored (Tensor::FromProto)
        ([1.0], [], 1.0),
    ],
)
def test_typed_values_follow_tensor_from_proto(values: list, shape: list, expected) -> None:
    proto = _proto(DT_FLOAT, shape, float_val=values)
    assert tensor_proto_to_ndarray(proto).tolist() == expected


def test_bfloat16_travels_in_half_val_as_bit_patterns() -> None:
    # TF's tensor.cc: DT_BFLOAT16 values are the 16-bit patterns, in half_val's int32s.
    proto = _proto(DT_BFLOAT16, [3], half_val=[0x3F80, 0xC000, 0x3DCD])
    array = tensor_proto_to_ndarray(proto)
    assert array.dtype == np.dtype(ml_dtypes.bfloat16)
    assert array.astype(np.float32).tolist() == [1.0, -2.0, 0.10009765625]
    typed = ndarray_to_tensor_proto(array, use_tensor_content=False)
    assert typed.dtype == DT_BFLOAT16 and list(typed.half_val) == [0x3F80, 0xC000, 0x3DCD]
    packed = ndarray_to_tensor_proto(array, use_tensor_content=True)
    assert packed.tensor_content == bytes([0x80, 0x3F, 0x00, 0xC0, 0xCD, 0x3D])
    assert tensor_proto_to_ndarray(packed).view(np.uint16).tolist() == [0x3F80, 0xC000, 0x3DCD]


def test_int_val_wraps_for_narrow_types() -> None:
    proto = _proto(DT_INT8, [2], int_val=[200, -1])
    assert tensor_proto_to_ndarray(proto).tolist() == [-56, -1]


def test_strings_broadcast_and_keep_bytes() -> None:
    proto = _proto(DT_STRING, [3], string_val=[b"a", b"\xff"])
    assert tensor_proto_to_ndarray(proto).tolist() == [b"a", b"\xff", b"\xff"]
    assert tensor_proto_to_ndarray(_proto(DT_STRING, [2])).tolist() == [b"", b""]


def test_str_elements_are_encoded() -> None:
    proto = ndarray_to_tensor_proto(np.array(["é", "x"], dtype=object), use_tensor_content=True)
    assert list(proto.string_val) == ["é".encode(), b"x"] and not proto.tensor_content


ERRORS = [
    (_proto(DT_FLOAT, [2], tensor_content=b"\0" * 4), None, Code.INVALID_ARGUMENT,
     "tensor_content holds 4 bytes; shape [2] of float needs 8"),
    (_proto(DT_FLOAT, [2], tensor_content=b"\0" * 4), "x", Code.INVALID_ARGUMENT, "tensor parsing error: x"),
    (_proto(DT_FLOAT, [-1]), None, Code.INVALID_ARGUMENT, "tensor_shape [-1] has a negative dimension"),
    (_proto(DT_STRING, [1], tensor_content=b"abc"), "s", Code.INVALID_ARGUMENT, "tensor parsing error: s"),
    (_proto(11, [1]), None, Code.UNIMPLEMENTED, "tfgate does not support tensors of type qint8"),
    (_proto(0, [1]), None, Code.UNIMPLEMENTED, "tfgate does not support tensors of type INVALID"),
]  # fmt: skip


@pytest.mark.parametrize(("proto", "alias", "code", "message"), ERRORS)
def test_errors(proto: tensor_pb2.TensorProto, alias: str | None, code: Code, message: str) -> None:
    with pytest.raises(ServingError) as info:
        tensor_proto_to_ndarray(proto, alias=alias)
    assert (info.value.code, info.value.message) == (code, message)


def test_unknown_rank_is_a_parsing_error() -> None:
    proto = _proto(DT_FLOAT, [])
    proto.tensor_shape.unknown_rank = True
    with pytest.raises(ServingError, match="tensor parsing error: x"):
        tensor_proto_to_ndarray(proto, alias="x")


def test_empty_tensors_ignore_their_values() -> None:
    proto = _proto(DT_FLOAT, [0, 3], tensor_content=b"junk")
    assert tensor_proto_to_ndarray(proto).shape == (0, 3)


@pytest.mark.parametrize("use_tensor_content", [False, True])
def test_filled_in_place_in_a_response_as_built_apart(use_tensor_content: bool) -> None:
    """PredictServicer writes each output straight into its PredictResponse map entry: the
    reply's bytes are the ones a TensorProto built apart and copied in gives."""
    built_in_place = predict_pb2.PredictResponse()
    copied_in = predict_pb2.PredictResponse()
    for name, array in ARRAYS.items():
        fill_tensor_proto(
            built_in_place.outputs[name], array, use_tensor_content=use_tensor_content
        )
        copied_in.outputs[name].CopyFrom(
            ndarray_to_tensor_proto(array, use_tensor_content=use_tensor_content)
        )
    for name in ARRAYS:
        assert (
            built_in_place.outputs[name].SerializeToString()
            == copied_in.outputs[name].SerializeToString()
        )
    assert built_in_place.outputs["float32"].tensor_shape.dim[1].size == 4
    assert [d.size for d in built_in_place.outputs["empty"].tensor_shape.dim] == [0, 3]
    assert not built_in_place.outputs["scalar"].tensor_shape.dim


def test_unsupported_numpy_dtype_is_an_internal_error() -> None:
    with pytest.raises(ServingError) as info:
        ndarray_to_tensor_proto(np.array(["2020-01-01"], "datetime64[D]"), use_tensor_content=False)
    assert info.value.code == Code.INTERNAL


def test_decoded_arrays_are_writable_copies() -> None:
    proto = ndarray_to_tensor_proto(ARRAYS["float32"], use_tensor_content=True)
    array = tensor_proto_to_ndarray(proto)
    array[0, 0] = 1.0  # the service may reuse it; it must not alias the proto's bytes


def test_big_float_arrays_take_the_packed_path() -> None:
    array = RNG.standard_normal(100_000).astype(np.float32)
    proto = ndarray_to_tensor_proto(array, use_tensor_content=False)
    assert len(proto.float_val) == 100_000
    assert tensor_proto_to_ndarray(proto).tobytes() == array.tobytes()


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
     (-1, b"\xff" * 9 + b"\x01")],
)  # fmt: skip
def test_varint(value: int, encoded: bytes) -> None:
    assert varint(value) == encoded


def test_codec_modules_do_not_load_the_tensorflow_runtime() -> None:
    code = (
        "import sys, app.codec.tensor_json, app.codec.example, app.codec.tensor_proto; "
        "sys.exit(1 if 'tensorflow.python' in sys.modules else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
