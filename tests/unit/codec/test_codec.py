"""app/codec/tensor_json.py: TF Serving's REST JSON tensors, byte for byte and message for message.

Expected texts come from tensorflow_serving/util/json_tensor.cc (+ json_tensor_test.cc) and
rapidjson's reader/PrettyWriter; "upstream" marks cases taken from TF Serving's own tests.
"""

from __future__ import annotations

import json
import math

import ml_dtypes
import numpy as np
import pytest

from app.codec import json_read as codec_json_read
from app.codec import json_text as codec_json_text
from app.codec import predict_response
from app.codec import tensor_json as codec
from app.core.errors import Code, ServingError
from app.core.types import (
    DT_BFLOAT16,
    DT_BOOL,
    DT_DOUBLE,
    DT_FLOAT,
    DT_HALF,
    DT_INT8,
    DT_INT16,
    DT_INT32,
    DT_INT64,
    DT_STRING,
    DT_UINT8,
    DT_UINT16,
    DT_UINT32,
    DT_UINT64,
    SignatureSpec,
    TensorSpec,
)


def signature(defaults: frozenset[str] = frozenset(), **dtypes: int) -> SignatureSpec:
    inputs = {name: TensorSpec(name, f"{name}:0", dtype, None) for name, dtype in dtypes.items()}
    return SignatureSpec("serving_default", "tensorflow/serving/predict", inputs, {}, defaults)


def decode(body: bytes, sig: SignatureSpec) -> dict[str, np.ndarray]:
    return codec.decode_predict_inputs(codec.parse_predict_json(body), sig)


def error_of(call, *args) -> ServingError:
    with pytest.raises(ServingError) as info:
        call(*args)
    return info.value


FLOAT_X = signature(x=DT_FLOAT)


# --- JSON parse errors (rapidjson's texts and offsets) ---------------------------------------

PARSE_ERRORS = [
    (b"", "JSON Parse error: The document is empty"),
    (b"  \n", "JSON Parse error: The document is empty. at offset: 3"),
    (b"instances = [1, 2]", "JSON Parse error: Invalid value. at offset: 0"),  # upstream
    (b"]", "JSON Parse error: The document is empty. at offset: 0"),  # iterative reader
    (b'{"instances": [1.0', "JSON Parse error: Missing a comma or ']' after an array element. at offset: 18"),
    (b'{"instances": [1 2]}', "JSON Parse error: Missing a comma or ']' after an array element. at offset: 17"),
    (b'{"instances": [1,]}', "JSON Parse error: Invalid value. at offset: 17"),
    (b'{"a": 1,}', "JSON Parse error: Missing a name for object member. at offset: 8"),
    (b'{"a" 1}', "JSON Parse error: Missing a colon after a name of object member. at offset: 5"),
    (b'{"a": 1 "b": 2}', "JSON Parse error: Missing a comma or '}' after an object member. at offset: 8"),
    (b'{"a": ]}', "JSON Parse error: Invalid value. at offset: 6"),
    (b'{"a": "abc', "JSON Parse error: Missing a closing quotation mark in string. at offset: 10"),
    (b'{"a": "a\x01b"}', "JSON Parse error: Invalid encoding in string. at offset: 8"),
    (b'{"a": "\\q"}', "JSON Parse error: Invalid escape character in string. at offset: 7"),
    (b'{"a": "\\u12G4"}', "JSON Parse error: Incorrect hex digit after \\u escape in string. at offset: 7"),
    (b'{"a": "\\ud800x"}', "JSON Parse error: The surrogate pair in string is invalid. at offset: 7"),
    (b'{"a": "\\udc00"}', "JSON Parse error: The surrogate pair in string is invalid. at offset: 7"),
    (b'{"a": 1.}', "JSON Parse error: Miss fraction part in number. at offset: 8"),
    (b'{"a": 1e+}', "JSON Parse error: Miss exponent in number. at offset: 9"),
    (b'{"a": -}', "JSON Parse error: Invalid value. at offset: 7"),
    (b'{"a": 1e400}', "JSON Parse error: Number too big to be stored in double. at offset: 6"),
    (b'{"a": -1' + b"0" * 400 + b"}", "JSON Parse error: Number too big to be stored in double. at offset: 6"),
    (b'{"a": tru}', "JSON Parse error: Invalid value. at offset: 9"),
    (b'{"a": NaX}', "JSON Parse error: Invalid value. at offset: 8"),
    (b'{"a": Infinit}', "JSON Parse error: Invalid value. at offset: 13"),
    (b'{NaN: 1}', "JSON Parse error: Missing a name for object member. at offset: 1"),
    (b'{"a": "\xff"}', "JSON Parse error: Invalid encoding in string. at offset: 7"),
    (b'{"a": \xff}', "JSON Parse error: Invalid value. at offset: 6"),
    # The offset counts the skipped byte-order mark, as rapidjson's MemoryStream does.
    (b'\xef\xbb\xbf{"a" 1}', "JSON Parse error: Missing a colon after a name of object member. at offset: 8"),
    # The real-world report in tensorflow/serving#... ("Invalid escape character ... 48").
    (
        b'{"signature_name": "serving_default","input":"\\n\\033\\n\\031"}',
        "JSON Parse error: Invalid escape character in string. at offset: 48",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("body", "message"), PARSE_ERRORS)
def test_parse_errors(body: bytes, message: str) -> None:
    error = error_of(codec.parse_predict_json, body)
    assert (error.code, error.message) == (Code.INVALID_ARGUMENT, message)


NOT_OBJECT = [
    (b"[1, 2]", "JSON Value: [\n    1,\n    2\n] Is not object"),
    (b"NaN", "JSON Value: NaN Is not object"),
    (b"0.1", "JSON Value: 0.1 Is not object"),
    (b'"x"', 'JSON Value: "x" Is not object'),
    (b"null", "JSON Value: null Is not object"),
    (b"-Inf", "JSON Value: -Infinity Is not object"),
]


@pytest.mark.parametrize(("body", "message"), NOT_OBJECT)
def test_top_level_must_be_an_object(body: bytes, message: str) -> None:
    assert error_of(codec.parse_predict_json, body).message == message


def test_signature_name_must_be_a_string() -> None:  # upstream
    error = error_of(codec.parse_predict_json, b'{"signature_name": 5, "instances": [[1, 2]]}')
    assert error.message == (
        'JSON Value: {\n    "signature_name": 5,\n    "instances": [\n        [\n            1,\n'
        "            2\n        ]\n    ]\n} not formatted correctly. 'signature_name' key must be a"
        " string value."
    )


def test_signature_name_and_format_are_read_first() -> None:
    parsed = codec.parse_predict_json(b'{"signature_name": "sig", "instances": [1]}')
    assert (parsed.signature_name, parsed.format) == ("sig", "row")
    parsed = codec.parse_predict_json(b'{"inputs": {"x": 1}}')
    assert (parsed.signature_name, parsed.format) == ("", "columnar")


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [1.5]} trailing garbage',  # rapidjson kParseStopWhenDoneFlag
        b'{"instances": [1.5]}\x00{',  # a NUL ends rapidjson's input
        b'\xef\xbb\xbf{"instances": [1.5]}',  # UTF-8 byte-order mark
        b'  {"instances": [1.5]}\n',
    ],
)
def test_lenient_framing_like_rapidjson(body: bytes) -> None:
    assert decode(body, FLOAT_X)["x"].tolist() == [1.5]


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    body = b'{"instances": ' + b"[" * 10_000 + b"0.5" + b"]" * 10_000 + b"}"
    error = error_of(codec.parse_predict_json, body)
    assert error.code == Code.INVALID_ARGUMENT
    assert error.message == (
        "JSON Parse error: The document is nested deeper than 1024 levels. at offset: 1037"
    )


def test_deep_nesting_with_nan_and_garbage_still_reports_the_syntax_error() -> None:
    body = b'{"instances": ' + b"[" * 2000 + b"NaN" + b"]" * 1999 + b"}"
    assert "Missing a comma or ']'" in error_of(codec.parse_predict_json, body).message


def test_deep_but_legal_nesting_reports_tf_servings_tensor_error() -> None:
    body = b'{"instances": ' + b"[" * 1000 + b"1" + b"]" * 1000 + b"}"
    error = error_of(decode, body, FLOAT_X)
    assert error.message.startswith("Failed to process element: 0 of 'instances' list. Error:")
    assert "tensors of rank above 64 are not supported" in error.message


# --- decoding: shapes, formats, dtypes ----------------------------------------------------------

DECODE_OK = [
    # (signature, body, {alias: (numpy dtype, nested values)})
    (FLOAT_X, b'{"instances": [2.0, 3.0, 4.0]}', {"x": ("float32", [2.0, 3.0, 4.0])}),
    (FLOAT_X, b'{"instances": [[1.0, 2.0], [3.0, 4.0]]}', {"x": ("float32", [[1, 2], [3, 4]])}),
    (  # upstream MixedInputForFloatTensor
        FLOAT_X,
        b'{"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}',
        {"x": ("float32", [1, 2, 3, 4, np.float32(5.003), np.float32(0.007), 0])},
    ),
    (signature(x=DT_DOUBLE), b'{"instances": [1.0, 2, 0.662, 0]}', {"x": ("float64", [1, 2, 0.662, 0])}),
    (signature(x=DT_INT32), b'{"instances": [[1,2],[3,4],[5,6]]}', {"x": ("int32", [[1, 2], [3, 4], [5, 6]])}),
    (signature(x=DT_INT32), b'{"signature_name": "s", "instances": [[1,2]]}', {"x": ("int32", [[1, 2]])}),
    (signature(x=DT_STRING), b'{"instances": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]}', {"x": ("object", [b"hello", b"world"])}),
    (signature(x=DT_STRING), b'{"instances": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}', {"x": ("object", [[b"hello"], [b"world"]])}),
    (  # upstream SingleNamedTensorBase64: a named row keeps its own nesting
        signature(default=DT_STRING),
        b'{"instances": [{"default": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}]}',
        {"default": ("object", [[[b"hello"], [b"world"]]])},
    ),
    (signature(x=DT_STRING), b'{"instances": ["caf\\u00e9", "\\u0000"]}', {"x": ("object", ["café".encode(), b"\x00"])}),
    (signature(x=DT_BOOL), b'{"instances": [true, false]}', {"x": ("bool", [True, False])}),
    (signature(x=DT_INT64), b'{"instances": [-9223372036854775808, 9223372036854775807]}', {"x": ("int64", [-(2**63), 2**63 - 1])}),
    (signature(x=DT_UINT64), b'{"instances": [18446744073709551615, 0]}', {"x": ("uint64", [2**64 - 1, 0])}),
    (signature(x=DT_UINT32), b'{"instances": [4294967295]}', {"x": ("uint32", [2**32 - 1])}),
    # INT8/INT16/UINT8 take any int32 and wrap like TF's int_val -> tensor copy.
    (signature(x=DT_UINT8), b'{"instances": [300, -1]}', {"x": ("uint8", [44, 255])}),
    (signature(x=DT_INT8), b'{"instances": [200]}', {"x": ("int8", [-56])}),
    (signature(x=DT_INT16), b'{"instances": [70000]}', {"x": ("int16", [4464])}),
    (FLOAT_X, b'{"instances": [16777215, -16777215]}', {"x": ("float32", [16777215, -16777215])}),
    (FLOAT_X, b'{"instances": [3.4028234663852886e38, 1e-50]}', {"x": ("float32", [3.4028234663852886e38, 0.0])}),
    (signature(x=DT_DOUBLE), b'{"instances": [9007199254740991, 1e300]}', {"x": ("float64", [2**53 - 1, 1e300])}),
    (FLOAT_X, b'{"instances": [[], []]}', {"x": ("float32", [[], []])}),
    (signature(x=DT_HALF), b'{"inputs": []}', {"x": ("float16", [])}),  # no value to convert
    # Columnar: natural shapes, scalars, extra keys ignored, defaults may be left out.
    (signature(x=DT_INT32), b'{"inputs": {"x": [[[1,2],[3,4],[5,6]]]}}', {"x": ("int32", [[[1, 2], [3, 4], [5, 6]]])}),
    (signature(x=DT_INT32), b'{"inputs": [[[1,2],[3,4],[5,6]]]}', {"x": ("int32", [[[1, 2], [3, 4], [5, 6]]])}),
    (FLOAT_X, b'{"inputs": 2.5}', {"x": ("float32", 2.5)}),
    (signature(s=DT_STRING), b'{"inputs": {"b64": "aGVsbG8="}}', {"s": ("object", b"hello")}),
    (signature(a=DT_INT32, b=DT_STRING), b'{"inputs": {"b": "x", "a": 1, "extra": null}}', {"a": ("int32", 1), "b": ("object", b"x")}),
    (signature(frozenset({"b"}), a=DT_INT32, b=DT_FLOAT), b'{"inputs": {"a": [1]}}', {"a": ("int32", [1])}),
    (signature(x=DT_BOOL), b'{"inputs": true}', {"x": ("bool", True)}),
]  # fmt: skip


@pytest.mark.parametrize(("sig", "body", "expected"), DECODE_OK)
def test_decode(sig: SignatureSpec, body: bytes, expected: dict) -> None:
    tensors = decode(body, sig)
    assert list(tensors) == list(expected)
    for alias, (dtype, values) in expected.items():
        assert tensors[alias].dtype == np.dtype(dtype)
        assert tensors[alias].tolist() == np.array(values, dtype=dtype).tolist()


def test_decode_multiple_named_rows_with_nan_and_infinity() -> None:  # upstream
    sig = signature(int_tensor=DT_INT32, str_tensor=DT_STRING, float_tensor=DT_FLOAT, dbl_tensor=DT_DOUBLE)
    body = b"""{"instances": [
        {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"],
         "float_tensor": [1.0, NaN], "dbl_tensor": [NaN]},
        {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"],
         "float_tensor": [2.0, Infinity], "dbl_tensor": [2.0]}]}"""  # fmt: skip
    tensors = decode(body, sig)
    assert tensors["int_tensor"].shape == (2, 3, 2)
    assert tensors["str_tensor"].tolist() == [[b"foo", b"bar"], [b"baz", b"bat"]]
    assert tensors["float_tensor"].dtype == np.float32
    assert math.isnan(tensors["float_tensor"][0, 1]) and tensors["float_tensor"][1, 1] == np.inf
    assert tensors["dbl_tensor"].dtype == np.float64 and math.isnan(tensors["dbl_tensor"][0, 0])


@pytest.mark.parametrize("token", [b"-Inf", b"-Infinity", b"Inf", b"NaN", b"-NaN"])
def test_nonfinite_tokens(token: bytes) -> None:
    value = decode(b'{"instances": [' + token + b", 1.5]}", FLOAT_X)["x"][0]
    expected = {b"-Inf": -np.inf, b"-Infinity": -np.inf, b"Inf": np.inf}.get(token)
    assert math.isnan(value) if expected is None else value == expected


def test_nonfinite_tokens_inside_strings_stay_strings() -> None:
    body = b'{"inputs": {"a": ["NaN", "x Infinity"], "b": [NaN]}}'
    tensors = decode(body, signature(a=DT_STRING, b=DT_DOUBLE))
    assert tensors["a"].tolist() == [b"NaN", b"x Infinity"]
    assert math.isnan(tensors["b"][0])
    # A client string that looks like the parser's internal sentinel stays a string.
    body = b'{"inputs": {"a": ["\\u0000N", "-Inf"], "b": [-Infinity, 1, NaN]}} trailing'
    tensors = decode(body, signature(a=DT_STRING, b=DT_DOUBLE))
    assert tensors["a"].tolist() == [b"\x00N", b"-Inf"]
    assert tensors["b"][0] == -np.inf and tensors["b"][1] == 1 and math.isnan(tensors["b"][2])


DECODE_ERRORS = [
    # (signature, body, code, message)
    (FLOAT_X, b'{"instances": ["x", "y"]}', Code.INVALID_ARGUMENT,  # upstream handler test
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: \"x\" Type: String is not of expected type: float"),
    (signature(x=DT_INT32), b'{"instances": [[1,2],[3,4],[5,6,7]]}', Code.INVALID_ARGUMENT,
     "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 2 but got: 3"),
    (signature(x=DT_INT32), b'{"instances": [[1,2],[3,4],[[5,6]]]}', Code.INVALID_ARGUMENT,
     "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: Expecting shape [2] but got: [1,2]"),
    (signature(x=DT_INT32), b'{"instances": [1, [1]]}', Code.INVALID_ARGUMENT,
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting shape [] but got: [1]"),
    (signature(x=DT_INT32), b'{"instances": [[1,2],["a", "b"]]}', Code.INVALID_ARGUMENT,
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: \"a\" Type: String is not of expected type: int32"),
    (signature(x=DT_INT32), b'{"instances": [[[1, 2], [3]]]}', Code.INVALID_ARGUMENT,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
    (signature(x=DT_INT32), b'{"instances": [[1, [2]]]}', Code.INVALID_ARGUMENT,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: Encountered list at unexpected level: 1 expected < 1"),
    (signature(x=DT_INT32), b'{"instances": [[[1], 2]]}', Code.INVALID_ARGUMENT,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: 2 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"),
    # Integer strictness: a JSON number with '.' or 'e' is a double, never an int.
    (signature(x=DT_INT32), b'{"inputs": [1.0]}', Code.INVALID_ARGUMENT,
     "JSON Value: 1.0 Type: Number is not of expected type: int32"),
    (signature(x=DT_INT8), b'{"inputs": [1e2]}', Code.INVALID_ARGUMENT,
     "JSON Value: 100.0 Type: Number is not of expected type: int8"),
    (signature(x=DT_UINT8), b'{"inputs": [2.5]}', Code.INVALID_ARGUMENT,
     "JSON Value: 2.5 Type: Number is not of expected type: uint8"),
    (signature(x=DT_INT16), b'{"inputs": [true]}', Code.INVALID_ARGUMENT,
     "JSON Value: true Type: True is not of expected type: int16"),
    (signature(x=DT_INT32), b'{"inputs": [2147483648]}', Code.INVALID_ARGUMENT,
     "JSON Value: 2147483648 Type: Number is not of expected type: int32"),
    (signature(x=DT_INT64), b'{"inputs": [9223372036854775808]}', Code.INVALID_ARGUMENT,
     "JSON Value: 9223372036854775808 Type: Number is not of expected type: int64"),
    (signature(x=DT_INT64), b'{"inputs": [18446744073709551616]}', Code.INVALID_ARGUMENT,  # a double
     "JSON Value: 1.84467441e+19 Type: Number is not of expected type: int64"),
    (signature(x=DT_UINT32), b'{"inputs": [-1]}', Code.INVALID_ARGUMENT,
     "JSON Value: -1 Type: Number is not of expected type: uint32"),
    (signature(x=DT_UINT32), b'{"inputs": [4294967296]}', Code.INVALID_ARGUMENT,
     "JSON Value: 4294967296 Type: Number is not of expected type: uint32"),
    (signature(x=DT_UINT64), b'{"inputs": [-1]}', Code.INVALID_ARGUMENT,
     "JSON Value: -1 Type: Number is not of expected type: uint64"),
    (signature(x=DT_BOOL), b'{"inputs": [1]}', Code.INVALID_ARGUMENT,
     "JSON Value: 1 Type: Number is not of expected type: bool"),
    (signature(x=DT_STRING), b'{"inputs": [1]}', Code.INVALID_ARGUMENT,
     "JSON Value: 1 Type: Number is not of expected type: string"),
    (FLOAT_X, b'{"inputs": [null]}', Code.INVALID_ARGUMENT,
     "JSON Value: null Type: Null is not of expected type: float"),
    (FLOAT_X, b'{"inputs": [{"b64": "aGVsbG8="}]}', Code.INVALID_ARGUMENT,  # b64 is for strings only
     'JSON Value: {\n    "b64": "aGVsbG8="\n} Type: Object is not of expected type: float'),
    # Dtypes JSON cannot carry: 501 in columnar form, wrapped into a 400 in row form.
    (signature(x=DT_HALF), b'{"inputs": [1.0]}', Code.UNIMPLEMENTED,
     "Conversion of JSON Value: 1.0 to type: half"),
    (signature(x=DT_UINT16), b'{"inputs": 7}', Code.UNIMPLEMENTED,
     "Conversion of JSON Value: 7 to type: uint16"),
    (signature(x=DT_HALF), b'{"instances": [1.5]}', Code.INVALID_ARGUMENT,
     "Failed to process element: 0 of 'instances' list. Error: UNIMPLEMENTED: Conversion of JSON Value: 1.5 to type: half"),
    # bfloat16 likewise: json_tensor.cc's AddValueToTensor has no case for it.
    (signature(x=DT_BFLOAT16), b'{"inputs": [1.0]}', Code.UNIMPLEMENTED,
     "Conversion of JSON Value: 1.0 to type: bfloat16"),
    (signature(x=DT_BFLOAT16), b'{"instances": [1.5]}', Code.INVALID_ARGUMENT,
     "Failed to process element: 0 of 'instances' list. Error: UNIMPLEMENTED: Conversion of JSON Value: 1.5 to type: bfloat16"),
    # base64.
    (signature(x=DT_STRING), b'{"inputs": [{"b64": "!!!"}]}', Code.INVALID_ARGUMENT, "Unable to base64 decode"),
    (signature(x=DT_STRING), b'{"inputs": [{"b64": 1}]}', Code.INVALID_ARGUMENT,
     'JSON Value: {\n    "b64": 1\n} not formatted correctly for base64 data'),
    # Multiple inputs.
    (signature(a=DT_INT32, b=DT_INT32), b'{"instances": [[1, 2]]}', Code.INVALID_ARGUMENT,
     "instances is a plain list, but expecting list of objects as multiple input tensors required as per tensorinfo_map"),
    (signature(a=DT_INT32, b=DT_INT32), b'{"instances": [{"a": 1, "b": 2}, [1, 20, 30]]}', Code.INVALID_ARGUMENT,
     "Expecting object but got list at item 1 of input list"),
    (signature(s=DT_STRING), b'{"instances": [["baz", "bar"], {"s": ["baz", "bat"]}]}', Code.INVALID_ARGUMENT,
     "Expecting value/list but got object at item 1 of input list"),
    (signature(a=DT_INT32, b=DT_INT32), b'{"instances": [{"a": 1}]}', Code.INVALID_ARGUMENT,
     "Failed to process element: 0 of 'instances' list. JSON object: {\n    \"a\": 1\n} keys must be equal to: a,b"),
    (signature(a=DT_INT32, b=DT_INT32), b'{"instances": [{"a": 1, "b": 2}, {"b": 1, "a": 2, "c": 3}]}', Code.INVALID_ARGUMENT,
     "Failed to process element: 1 key: c of 'instances' list. Error: INVALID_ARGUMENT: JSON object: does not have named input: c"),
    (signature(a=DT_INT32, b=DT_INT32), b'{"instances": [{"a": [1], "b": 2}, {"a": [1, 2], "b": 3}]}', Code.INVALID_ARGUMENT,
     "Failed to process element: 1 key: a of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 1 but got: 2"),
    (signature(a=DT_INT32, b=DT_INT32), b'{"inputs": [1, 2]}', Code.INVALID_ARGUMENT,
     "inputs is a plain value/list, but expecting an object as multiple input tensors required as per tensorinfo_map"),
    (signature(a=DT_INT32, b=DT_INT32), b'{"inputs": {"b64": "aGVsbG8="}}', Code.INVALID_ARGUMENT,
     "inputs is a plain value/list, but expecting an object as multiple input tensors required as per tensorinfo_map"),
    (signature(a=DT_INT32, b=DT_INT32), b'{"inputs": {"a": 1}}', Code.INVALID_ARGUMENT,
     "Missing named input: b in 'inputs' object."),
    (signature(frozenset({"b"}), a=DT_INT32, b=DT_INT32), b'{"instances": [{"a": 1}]}', Code.INVALID_ARGUMENT,  # rows: all keys
     "Failed to process element: 0 of 'instances' list. JSON object: {\n    \"a\": 1\n} keys must be equal to: a,b"),
    # Top-level keys (checked only after the signature lookup, as TF Serving does).
    (FLOAT_X, b'{"instances": [1], "inputs": [1]}', Code.INVALID_ARGUMENT,
     "JSON Value: {\n    \"instances\": [\n        1\n    ],\n    \"inputs\": [\n        1\n    ]\n} Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "),
    (FLOAT_X, b'{"instances": {"x": 1}}', Code.INVALID_ARGUMENT,
     "JSON Value: {\n    \"instances\": {\n        \"x\": 1\n    }\n} Expecting 'instances' to be an list/array"),
    (FLOAT_X, b'{"instances": []}', Code.INVALID_ARGUMENT,
     "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array"),
    (FLOAT_X, b'{"signature_name": "s"}', Code.INVALID_ARGUMENT, "Missing 'inputs' or 'instances' key"),
    (signature(), b'{"instances": [1]}', Code.INVALID_ARGUMENT, "Failed to get input map for signature: DEFAULT"),
    (signature(), b'{"signature_name": "get_counter"}', Code.INVALID_ARGUMENT, "Failed to get input map for signature: get_counter"),
    # rapidjson's writer gives up on NaN while quoting a value: TF Serving's message is cut short.
    (FLOAT_X, b'{"instances": 5, "inputs": [NaN]}', Code.INVALID_ARGUMENT,
     "JSON Value: {\n    \"instances\": 5,\n    \"inputs\": [\n         Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "),
]  # fmt: skip


@pytest.mark.parametrize(("sig", "body", "code", "message"), DECODE_ERRORS)
def test_decode_errors(sig: SignatureSpec, body: bytes, code: Code, message: str) -> None:
    error = error_of(decode, body, sig)
    assert (error.code, error.message) == (code, message)


def test_top_level_key_errors_wait_for_the_signature_lookup() -> None:
    parsed = codec.parse_predict_json(b'{"instances": 5}')  # TF Serving answers 404 first
    assert parsed.format == "row"
    assert "Expecting 'instances'" in error_of(codec.decode_predict_inputs, parsed, FLOAT_X).message


@pytest.mark.parametrize(
    ("sig", "body", "expected"),
    [
        # Contract a.3: FLOAT/DOUBLE take any JSON number, ints too; precision loss is silent
        # and beyond float's range the value is +-inf. Exact walk (few values) and numpy path.
        (FLOAT_X, b'{"inputs": [16777217]}', [16777216.0]),
        (FLOAT_X, b'{"instances": [1.7976931348623157e308, -1e39]}', [np.inf, -np.inf]),
        (FLOAT_X, b'{"inputs": [18446744073709551615]}', [1.8446744073709552e19]),
        (FLOAT_X, b'{"inputs": [' + b", ".join([b"16777217"] * 40) + b"]}", [16777216.0] * 40),
        (FLOAT_X, b'{"inputs": [' + b", ".join([b"1e39"] * 40) + b"]}", [np.inf] * 40),
        (signature(x=DT_DOUBLE), b'{"inputs": [9007199254740993]}', [9007199254740992.0]),
    ],
)
def test_float_inputs_take_any_json_number(sig: SignatureSpec, body: bytes, expected: list) -> None:
    (tensor,) = decode(body, sig).values()
    assert tensor.dtype == (np.float64 if sig.inputs["x"].dtype == DT_DOUBLE else np.float32)
    assert tensor.tolist() == expected


def test_quoted_values_are_capped() -> None:
    body = b'{"instances": [' + b"1," * 40_000 + b'1], "inputs": 1}'
    message = error_of(decode, body, FLOAT_X).message
    assert message.endswith("...") is False and "..." in message
    assert len(message) < 80_000


# --- fast path == exact path ---------------------------------------------------------------------


def _random_value(rng: np.random.Generator, depth: int) -> object:
    """Mostly regular nested lists of mixed JSON scalars, sometimes broken."""
    if depth == 0 or rng.random() < 0.15:
        kind = rng.integers(0, 9)
        return [
            float(rng.standard_normal()), int(rng.integers(-300, 300)), True, "s",
            int(rng.integers(-(2**40), 2**40)), float(rng.integers(0, 5)), None,
            {"b64": "aGk="}, float(rng.standard_normal() * 1e30),
        ][kind]  # fmt: skip
    width = int(rng.integers(0, 4))
    if rng.random() < 0.8:  # regular: the same value repeated
        child = _random_value(rng, depth - 1)
        return [child] * width
    return [_random_value(rng, depth - 1) for _ in range(width)]


def _outcome(body: bytes, sig: SignatureSpec) -> object:
    try:
        return {k: (v.dtype, v.shape, v.tolist()) for k, v in decode(body, sig).items()}
    except ServingError as error:
        return (error.code, error.message)


@pytest.mark.parametrize(
    "dtype",
    [DT_FLOAT, DT_DOUBLE, DT_INT32, DT_INT8, DT_UINT8, DT_INT64, DT_UINT32, DT_UINT64, DT_BOOL, DT_STRING],
)  # fmt: skip
def test_fast_path_matches_exact_path(dtype: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(dtype)
    sig_one, sig_two = signature(x=dtype), signature(x=dtype, y=DT_FLOAT)
    cases = []
    for _ in range(150):
        value = _random_value(rng, 3)
        cases.append((json.dumps({"instances": [value, value]}).encode(), sig_one))
        cases.append((json.dumps({"inputs": value}).encode(), sig_one))
        rows = [{"x": value, "y": 1.5}, {"x": value, "y": 2}]
        cases.append((json.dumps({"instances": rows}).encode(), sig_two))
    monkeypatch.setattr(codec, "_EXACT_MAX", 0)  # small tensors too take the fast path
    fast = [_outcome(body, sig) for body, sig in cases]
    monkeypatch.setattr(codec, "_tensor_fast", lambda *args: None)
    exact = [_outcome(body, sig) for body, sig in cases]
    assert len(fast) == len(exact)
    for (body, _), got, want in zip(cases, fast, exact, strict=True):
        assert repr(got) == repr(want), body  # repr: NaN-safe comparison


def test_large_numbers_round_like_get_float(monkeypatch: pytest.MonkeyPatch) -> None:
    big = decode(b'{"instances": [1.0e10, 2.5]}', FLOAT_X)["x"]
    assert big.tolist() == [np.float32(1e10), 2.5]
    rounded = decode(b'{"instances": [1.5, 20000001]}', FLOAT_X)["x"]
    assert rounded.tolist() == [1.5, 20000000.0]  # float32 has 24 bits of mantissa


def test_bools_among_numbers_are_never_silently_converted() -> None:
    error = error_of(decode, b'{"instances": [1.0, true]}', FLOAT_X)
    assert "JSON Value: true Type: True is not of expected type: float" in error.message


# --- encoding: exact bytes ----------------------------------------------------------------------

F32 = np.float32
ENCODE = [
    # (outputs, format, exact body)
    ({"y": np.array([3.0, 3.5, 4.0], F32)}, "row",
     b'{\n    "predictions": [3.0, 3.5, 4.0\n    ]\n}'),  # TF Serving's well-known reply
    ({"y": np.array([[2.5, 3.0], [3.5, 4.0]], F32)}, "row",
     b'{\n    "predictions": [[2.5, 3.0], [3.5, 4.0]\n    ]\n}'),
    ({"y": np.array([[2.5, 3.0], [3.5, 4.0]], F32)}, "columnar",
     b'{\n    "outputs": [\n        [\n            2.5,\n            3.0\n        ],\n        [\n'
     b'            3.5,\n            4.0\n        ]\n    ]\n}'),
    ({"y": np.array(3.0, F32)}, "columnar", b'{\n    "outputs": 3.0\n}'),
    ({"y": np.zeros((0, 2), F32)}, "row", b'{\n    "predictions": []\n}'),
    ({"a": np.zeros((0, 2), F32), "b": np.zeros((0,), np.int32)}, "row", b'{\n    "predictions": []\n}'),
    ({"y": np.zeros((2, 0), F32)}, "row", b'{\n    "predictions": [[], []\n    ]\n}'),
    ({"y": np.zeros((2, 0), F32)}, "columnar", b'{\n    "outputs": [\n        [],\n        []\n    ]\n}'),
    ({"y": np.zeros((0,), F32)}, "columnar", b'{\n    "outputs": []\n}'),
    ({"a": np.array([[1, 2], [3, 4]], np.int32), "b": np.array([0.5, 0.1], F32)}, "row",
     b'{\n    "predictions": [\n        {\n            "a": [1, 2],\n            "b": 0.5\n        },\n'
     b'        {\n            "a": [3, 4],\n            "b": 0.1\n        }\n    ]\n}'),
    ({"a": np.array([[1, 2]], np.int32), "b": np.array([0.5], F32)}, "columnar",
     b'{\n    "outputs": {\n        "a": [\n            [\n                1,\n                2\n'
     b'            ]\n        ],\n        "b": [\n            0.5\n        ]\n    }\n}'),
    ({"s_bytes": np.array([b"hello", b"world"], object)}, "row",
     b'{\n    "predictions": [{\n            "b64": "aGVsbG8="\n        }, {\n'
     b'            "b64": "d29ybGQ="\n        }\n    ]\n}'),
    ({"s_bytes": np.array(b"hello", object)}, "columnar", b'{\n    "outputs": {\n        "b64": "aGVsbG8="\n    }\n}'),
    ({"s_bytes": np.array([b"hi"], object), "n": np.array([1], np.int64)}, "row",
     b'{\n    "predictions": [\n        {\n            "s_bytes": {\n                "b64": "aGk="\n'
     b'            },\n            "n": 1\n        }\n    ]\n}'),
    ({"s": np.array([b'a"\\\x01\x1f\t/\x7f\xc3\xa9'], object)}, "row",
     b'{\n    "predictions": ["a\\"\\\\\\u0001\\u001F\\t/\x7f\xc3\xa9"\n    ]\n}'),
    ({"s": np.array([b"\xff\xfeok"], object)}, "row",  # TF writes raw bytes; we write U+FFFD
     b'{\n    "predictions": ["\xef\xbf\xbd\xef\xbf\xbdok"\n    ]\n}'),
    ({"bytes_out": np.array([b"x"], object)}, "row", b'{\n    "predictions": ["x"\n    ]\n}'),  # suffix, not prefix
    ({"b_bytes": np.array([1], np.int32)}, "row", b'{\n    "predictions": [1\n    ]\n}'),  # strings only
    ({"y": np.array([True, False])}, "row", b'{\n    "predictions": [true, false\n    ]\n}'),
    ({"y": np.array([-(2**63), 2**63 - 1], np.int64)}, "row",
     b'{\n    "predictions": [-9223372036854775808, 9223372036854775807\n    ]\n}'),
    ({"y": np.array([2**64 - 1], np.uint64)}, "row", b'{\n    "predictions": [18446744073709551615\n    ]\n}'),
    ({"y": np.array([200], np.uint8)}, "columnar", b'{\n    "outputs": [\n        200\n    ]\n}'),
    ({"y": np.array([0.1, 1 / 3], np.float64)}, "row", b'{\n    "predictions": [0.1, 0.33333333333333331\n    ]\n}'),
    ({"y": np.zeros((0,), np.float16)}, "row", b'{\n    "predictions": []\n}'),  # nothing to write
]  # fmt: skip


@pytest.mark.parametrize(("outputs", "fmt", "expected"), ENCODE)
def test_encode(outputs: dict, fmt: str, expected: bytes) -> None:
    assert predict_response.encode_predict_response(outputs, fmt) == expected


def test_encode_keeps_output_order() -> None:
    body = predict_response.encode_predict_response(
        {"z": np.array([1], np.int32), "a": np.array([2], np.int32)}, "columnar"
    )
    assert body.index(b'"z"') < body.index(b'"a"')


ENCODE_ERRORS = [
    ({}, "row", "Cannot convert empty tensor map to JSON"),
    ({"y": np.array(3.0, F32)}, "row", "Tensor name: y has no shape information "),
    ({"a": np.zeros((2, 3), F32), "b": np.zeros((3,), F32)}, "row",
     "Tensor name: b has inconsistent batch size: 3 expecting: 2"),
    ({"a": np.zeros((0, 2), np.int32), "b": np.zeros((1, 2), object)}, "row",
     "Tensor name: b has inconsistent batch size: 1 expecting: 0"),
    ({"y": np.array([1, 2], np.float16)}, "row", "Failed to write JSON value for tensor type: half"),
    ({"y": np.array([1j], np.complex64)}, "columnar", "Failed to write JSON value for tensor type: complex64"),
    ({"y": np.array([1], np.uint16)}, "columnar", "Failed to write JSON value for tensor type: uint16"),
    # json_tensor.cc's AddSingleValueAndAdvance writes no bfloat16 either.
    ({"y": np.array([1], ml_dtypes.bfloat16)}, "columnar", "Failed to write JSON value for tensor type: bfloat16"),
    ({"y": np.array([[1, 2]], ml_dtypes.bfloat16)}, "row", "Failed to write JSON value for tensor type: bfloat16"),
]  # fmt: skip


@pytest.mark.parametrize(("outputs", "fmt", "message"), ENCODE_ERRORS)
def test_encode_errors(outputs: dict, fmt: str, message: str) -> None:
    error = error_of(predict_response.encode_predict_response, outputs, fmt)
    assert (error.code, error.message) == (Code.INVALID_ARGUMENT, message)


def test_encode_error_body() -> None:  # upstream MakeJsonFromStatus cases
    assert predict_response.encode_error('Bad key: "key"') == b'{\n    "error": "Bad key: \\"key\\""\n}'
    assert predict_response.encode_error("Bad key: 'key'") == b'{\n    "error": "Bad key: \'key\'"\n}'
    assert predict_response.encode_error("a\nb") == b'{\n    "error": "a\\nb"\n}'


# --- float formatting ---------------------------------------------------------------------------

FLOAT32_TEXT = [
    (3.0, "3.0"), (9000000.0, "9e+06"), (999999.0, "999999.0"), (0.5, "0.5"),  # upstream
    (0.0003, "0.0003"), (0.00003, "3e-05"), (555557.5, "555557.5"),  # upstream
    (0.1, "0.1"), (0.2, "0.2"), (1.23456789, "1.23456788"), (16777216.0, "16777216.0"),
    (1e10, "1e+10"), (123456.7, "123456.703"), (-2.5, "-2.5"), (0.0, "0.0"), (-0.0, "-0.0"),
    (float("nan"), "NaN"), (float("inf"), "Infinity"), (float("-inf"), "-Infinity"),
    (1e-45, "1.4013e-45"), (3.4028234663852886e38, "3.40282347e+38"), (1e-4, "0.0001"),
    (100000.0, "100000.0"), (1000000.0, "1e+06"), (12345678.0, "12345678.0"),
]  # fmt: skip


@pytest.mark.parametrize(("value", "text"), FLOAT32_TEXT)
def test_float32_text(value: float, text: str) -> None:
    assert codec_json_text.decimal_text_f32(float(np.float32(value))) == text
    assert predict_response.float32_texts(np.full(200, value, F32))[0] == text.encode()  # vectorised
    assert predict_response.float32_texts(np.full(3, value, F32))[0] == text.encode()  # inlined loop


@pytest.mark.parametrize(
    ("value", "text"),
    [(3.0, "3.0"), (0.1, "0.1"), (1 / 3, "0.33333333333333331"), (1e100, "1e+100"),
     (123456789.0, "123456789.0"), (2.0**-1074, "4.94066e-324"), (2.0**-1073, "9.88131e-324"), (1.0 + 2.0**-52, "1.0000000000000002")],
)  # fmt: skip
def test_float64_text(value: float, text: str) -> None:
    assert codec_json_text.decimal_text_f64(value) == text


def test_vectorised_float32_matches_scalar_on_random_bit_patterns() -> None:
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**32, 300_000, dtype=np.uint64).astype(np.uint32)
    values = np.concatenate([bits.view(F32), rng.standard_normal(20_000).astype(F32).round(3)])
    got = predict_response.float32_texts(values)
    want = [codec_json_text.decimal_text_f32(v).encode() for v in values.tolist()]
    assert got == want
    assert codec_json_text.float32_leaf_texts(values.tolist()) == want


@pytest.mark.parametrize("shape", [(1, 10), (3, 4), (2, 3, 4), (1, 1, 1), (4, 1, 2), (5,), (1,)])
def test_small_glue_ids_match_the_vectorised_ones(
    shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    small = list(predict_response._glue_ids(shape))
    monkeypatch.setattr(predict_response, "_VECTOR_MIN", 0)
    assert small == predict_response._glue_ids(shape).tolist()


@pytest.mark.parametrize(
    "array",
    [
        np.random.default_rng(1).standard_normal((9, 11)).astype(F32),
        np.random.default_rng(2).integers(-(2**63), 2**63 - 1, (5, 20), dtype=np.int64),
        np.random.default_rng(3).integers(0, 2**64 - 1, 100, dtype=np.uint64),
        np.random.default_rng(4).integers(-128, 127, (2, 3, 20)).astype(np.int8),
        np.random.default_rng(5).integers(0, 2, (10, 10)).astype(bool),
    ],
)
def test_vectorised_leaves_match_per_element_leaves(
    array: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    thresholds = ("_VECTOR_MIN", "_FLOAT32_MATRIX_MIN", "_INTEGER_MATRIX_MIN")
    for name in thresholds:
        monkeypatch.setattr(predict_response, name, 2)
    vectorised = [predict_response.encode_predict_response({"y": array}, fmt) for fmt in ("row", "columnar")]
    for name in thresholds:
        monkeypatch.setattr(predict_response, name, 10**9)
    assert vectorised == [predict_response.encode_predict_response({"y": array}, f) for f in ("row", "columnar")]


def test_round_trip_through_a_json_parser() -> None:
    rng = np.random.default_rng(11)
    outputs = {"a": rng.standard_normal((4, 3, 2)).astype(F32), "b": rng.integers(0, 9, (4,))}
    for fmt, key in (("row", "predictions"), ("columnar", "outputs")):
        parsed = json.loads(predict_response.encode_predict_response(outputs, fmt))[key]
        a = [row["a"] for row in parsed] if fmt == "row" else parsed["a"]
        np.testing.assert_array_equal(np.array(a, F32), outputs["a"])


def test_nan_and_infinity_round_trip_through_the_request_parser() -> None:
    values = np.array([np.nan, np.inf, -np.inf, 1.5], F32)
    body = predict_response.encode_predict_response({"x": values}, "columnar").replace(b'"outputs"', b'"inputs"')
    decoded = decode(body, FLOAT_X)["x"]
    np.testing.assert_array_equal(decoded, values)


# --- the careful (rapidjson-compatible) parser ------------------------------------------------


def _careful(data: bytes) -> object:
    try:
        return ("ok", repr(codec_json_read.CarefulParser(data, 0).parse()))
    except ServingError as error:
        return ("error", error.message)


def test_careful_parser_reads_what_orjson_reads() -> None:
    rng = np.random.default_rng(21)
    for _ in range(300):
        value = {"k": _random_value(rng, 4), "é\n": ["\u2603", "\\", 1e300, -0.0, 2**64 - 1]}
        data = json.dumps(value, ensure_ascii=bool(rng.integers(0, 2))).encode()
        assert _careful(data) == ("ok", repr(json.loads(data)))


def test_number_runs_do_not_change_the_careful_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(22)
    tokens = [b"1", b"-0", b"01", b"1.5", b"1e400", b"1e5", b",", b" ", b"[", b"]", b"NaN",
              b"-", b"2.", b"\n", b"{", b"}", b'"a"', b":", b"123456789012345678901234"]  # fmt: skip
    bodies = [
        b"[" + b"".join(tokens[i] for i in rng.integers(0, len(tokens), rng.integers(0, 12)))
        for _ in range(5000)
    ]
    with_runs = [_careful(body) for body in bodies]
    monkeypatch.setattr(codec_json_read.CarefulParser, "_number_run", lambda *args: False)
    assert with_runs == [_careful(body) for body in bodies]
