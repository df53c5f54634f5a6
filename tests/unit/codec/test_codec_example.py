"""app/codec/example.py: classify/regress JSON -> tf.Example bytes, results -> JSON and protos.

Expected texts are json_tensor.cc's (+ json_tensor_test.cc, marked "upstream"), util.cc's,
classifier.cc's and regressor.cc's.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.codec import example as codec_example
from app.codec.example import (
    classification_result_proto,
    encode_classify_response,
    encode_regress_response,
    examples_from_input_proto,
    parse_examples_json,
    regression_result_proto,
)
from app.core.errors import Code, ServingError
from app.core.protos import example_pb2, input_pb2


def features(serialized: bytes) -> dict[str, tuple[str, list]]:
    """A serialized tf.Example as {name: (kind, values)}."""
    example = example_pb2.Example.FromString(serialized)
    out = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        out[name] = (kind, list(getattr(feature, kind).value) if kind else [])
    return out


def error_of(call, *args) -> ServingError:
    with pytest.raises(ServingError) as info:
        call(*args)
    return info.value


def test_request_without_context() -> None:  # upstream RequestNoContext
    parsed = parse_examples_json(
        b"""{"examples": [{"names": ["foo", "bar"], "ratings": [8.0, 9.0], "age": 20},
                          {"names": ["baz"], "ratings": 6.0}]}""",
        "classify",
    )
    assert parsed.signature_name == "" and parsed.context is None
    assert [features(e) for e in parsed.examples] == [
        {
            "names": ("bytes_list", [b"foo", b"bar"]),
            "ratings": ("float_list", [8.0, 9.0]),
            "age": ("int64_list", [20]),
        },
        {"names": ("bytes_list", [b"baz"]), "ratings": ("float_list", [6.0])},
    ]


def test_request_with_context_and_signature() -> None:  # upstream RequestWithContextAndSignature
    parsed = parse_examples_json(
        b"""{"signature_name": "custom_signture",
             "context": {"query": "pizza", "location": ["sfo"]},
             "examples": [
               {"names": ["foo", "bar"], "ratings": [8.0, 9.0, NaN, Infinity], "age": 20},
               {"names": ["baz", {"b64": "aGVsbG8="}], "ratings": 6.0, "intboolmix": [1, true, false]},
               {"names": "bar", "ratings": -Infinity}]}""",
        "regress",
    )
    assert parsed.signature_name == "custom_signture"
    context = {"query": ("bytes_list", [b"pizza"]), "location": ("bytes_list", [b"sfo"])}
    assert features(parsed.context) == context
    first, second, third = (features(e) for e in parsed.examples)
    assert first["ratings"][1][:2] == [8.0, 9.0] and math.isnan(first["ratings"][1][2])
    assert first["ratings"][1][3] == math.inf and first["query"] == context["query"]
    assert second["names"] == ("bytes_list", [b"baz", b"hello"])
    assert second["intboolmix"] == ("int64_list", [1, 1, 0])
    assert (
        third["ratings"] == ("float_list", [-math.inf]) and third["location"] == context["location"]
    )


def test_context_is_prepended_as_bytes() -> None:
    parsed = parse_examples_json(b'{"context": {"c": 1}, "examples": [{"x": 2}, {}]}', "classify")
    assert parsed.examples == [parsed.context + parse_examples_json(
        b'{"examples": [{"x": 2}]}', "classify").examples[0], parsed.context]  # fmt: skip


def test_context_merge_is_what_tensorflow_parses() -> None:
    tf = pytest.importorskip("tensorflow")
    parsed = parse_examples_json(
        b'{"context": {"c": [1.5], "s": "ctx"}, "examples": [{"x": [2.0]}, {"x": [3.0], "s": "own"}]}',
        "regress",
    )
    spec = {
        "x": tf.io.FixedLenFeature([1], tf.float32),
        "c": tf.io.FixedLenFeature([1], tf.float32),
        "s": tf.io.VarLenFeature(tf.string),
    }
    parsed_tf = tf.io.parse_example(tf.constant(parsed.examples), spec)
    assert parsed_tf["x"].numpy().tolist() == [[2.0], [3.0]]
    assert parsed_tf["c"].numpy().tolist() == [[1.5], [1.5]]
    # A feature in both: map entries merge by key, so the example's own value wins.
    assert parsed_tf["s"].values.numpy().tolist() == [b"ctx", b"own"]


FEATURE_KINDS = [
    (b'{"x": 2}', {"x": ("int64_list", [2])}),
    (b'{"x": 2.0}', {"x": ("float_list", [2.0])}),
    (b'{"x": 2e0}', {"x": ("float_list", [2.0])}),
    (b'{"x": [true, false]}', {"x": ("int64_list", [1, 0])}),
    (b'{"x": -9223372036854775808}', {"x": ("int64_list", [-(2**63)])}),
    (b'{"x": ["a", {"b64": "YWI="}]}', {"x": ("bytes_list", [b"a", b"ab"])}),
    (b'{"x": "caf\\u00e9"}', {"x": ("bytes_list", ["café".encode()])}),
    (b'{"x": []}', {"x": (None, [])}),  # a Feature with no kind
    (b'{"x": 0.1}', {"x": ("float_list", [np.float32(0.1)])}),
    (b"{}", {}),
]


@pytest.mark.parametrize(("example", "expected"), FEATURE_KINDS)
def test_feature_kind_follows_the_json_number_form(example: bytes, expected: dict) -> None:
    parsed = parse_examples_json(b'{"examples": [' + example + b"]}", "classify")
    assert features(parsed.examples[0]) == expected


def test_examples_bytes_are_deterministic_and_valid_protobuf() -> None:
    body = b'{"examples": [{"b": [1, -1, 300], "a": [0.5, -0.25], "c": ["x", "yy"]}]}'
    first = parse_examples_json(body, "classify").examples[0]
    assert first == parse_examples_json(body, "classify").examples[0]
    reference = example_pb2.Example()
    reference.features.feature["b"].int64_list.value.extend([1, -1, 300])
    reference.features.feature["a"].float_list.value.extend([0.5, -0.25])
    reference.features.feature["c"].bytes_list.value.extend([b"x", b"yy"])
    assert example_pb2.Example.FromString(first) == reference


PARSE_ERRORS = [
    (b'{"signature_name": ["hello"], "examples": [{"names": ["foo", "bar"]}]}',  # upstream
     "JSON Value: {\n    \"signature_name\": [\n        \"hello\"\n    ],\n    \"examples\": [\n        {\n"
     "            \"names\": [\n                \"foo\",\n                \"bar\"\n            ]\n        }\n"
     "    ]\n} not formatted correctly. 'signature_name' key must be a string value."),
    (b'{"context": [{"names": ["foo", "bar"]}]}', "Example must be JSON object but got JSON Array"),  # upstream
    (b'{"examples": {"names": ["foo", "bar"]}}',  # upstream
     "JSON Value: {\n    \"examples\": {\n        \"names\": [\n            \"foo\",\n            \"bar\"\n"
     "        ]\n    }\n} Expecting 'examples' value to be an list/array"),
    (b'{"examples": [[{"names": ["foo", "bar"]}]]}', "Example must be JSON object but got JSON Array"),  # upstream
    (b'{"examples": ["x"]}', "Example must be JSON object but got JSON String"),
    (b'{"examples": [{"names": [10, null]}]}', "Feature: names has element with unexpected JSON type: Null"),  # upstream
    (b'{"examples": [{"names": [10, 10.0]}]}', "Unexpected element type in feature: names expecting type: int64"),  # upstream
    (b'{"examples": [{"names": [1.5, "a"]}]}', "Unexpected element type in feature: names expecting type: float"),
    (b'{"examples": [{"names": ["a", true]}]}', "Unexpected element type in feature: names expecting type: bytes"),
    (b'{"examples": [{"names": [10, {"test": 10}]}]}', "Feature: names has element with unexpected JSON type: Object"),  # upstream
    (b'{"examples": [{"names": [[10], 20]}]}', "Feature: names has element with unexpected JSON type: Array"),  # upstream
    (b'{"examples": [{"names": [20, 18446744073709551603]}]}', "Feature: names has uint64_t element. Only int64_t is supported."),  # contract a.2
    # The kind is checked before the value is converted.
    (b'{"examples": [{"names": [1, 1e39]}]}', "Unexpected element type in feature: names expecting type: int64"),
    (b'{"examples": [{"names": [1, {"b64": "!"}]}]}', "Unexpected element type in feature: names expecting type: int64"),
    (b'{"examples": [{"names": {"b64": "!"}}]}', "Unable to base64 decode"),
    (b'{"signature_name": "s"}', "JSON Value: {\n    \"signature_name\": \"s\"\n} When method is classify, key 'examples' is expected and was not found"),
    (b'{"examples": []}', "JSON Value: {\n    \"examples\": []\n} 'examples' value is an empty array"),
    # The context is read before "examples" is looked at.
    (b'{"context": {"a": null}}', "Feature: a has element with unexpected JSON type: Null"),
    (b"", "JSON Parse error: The document is empty"),
    (b"[]", "JSON Value: [] Is not object"),
    (b'{"examples": [{"a": NaN]}', "JSON Parse error: Missing a comma or '}' after an object member. at offset: 23"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "message"), PARSE_ERRORS)
@pytest.mark.parametrize("method", ["classify", "regress"])
def test_parse_errors(body: bytes, message: str, method: str) -> None:
    error = error_of(parse_examples_json, body, method)
    assert (error.code, error.message) == (Code.INVALID_ARGUMENT, message)


# --- gRPC input --------------------------------------------------------------------------------


def test_examples_from_input_proto() -> None:
    request = input_pb2.Input()
    example = request.example_list.examples.add()
    example.features.feature["x"].float_list.value.append(2.0)
    assert examples_from_input_proto(request) == [example.SerializeToString()]

    request = input_pb2.Input()
    listed = request.example_list_with_context
    listed.context.features.feature["c"].int64_list.value.append(1)
    listed.examples.add().features.feature["x"].float_list.value.append(2.0)
    listed.examples.add()
    context = listed.context.SerializeToString()
    assert examples_from_input_proto(request) == [
        context + listed.examples[0].SerializeToString(),
        context,
    ]


@pytest.mark.parametrize(
    "request_input",
    [input_pb2.Input(), input_pb2.Input(example_list=input_pb2.ExampleList())],
)
def test_empty_input_is_rejected(request_input: input_pb2.Input) -> None:
    error = error_of(examples_from_input_proto, request_input)
    assert (error.code, error.message) == (Code.INVALID_ARGUMENT, "Input is empty.")


# --- responses ---------------------------------------------------------------------------------

CLASSIFY = [
    (None, np.array([[3.0]], np.float32), b'{\n    "results": [[["", 3.0]]\n    ]\n}'),  # e2e test
    (np.array([[b"car", b"bike", b"bus"], [b"car", b"bike", b"bus"]], object),  # upstream values
     np.array([[0.2, 0.7, 0.1], [0.7, 0.1, 0.2]], np.float32),
     b'{\n    "results": [[["car", 0.2], ["bike", 0.7], ["bus", 0.1]], '
     b'[["car", 0.7], ["bike", 0.1], ["bus", 0.2]]\n    ]\n}'),
    (np.array([[b"a"]], object), None, b'{\n    "results": [[["a", 0.0]]\n    ]\n}'),
    (None, np.zeros((2, 0), np.float32), b'{\n    "results": [[], []\n    ]\n}'),
    (np.array([[b'q"\xff']], object), None, b'{\n    "results": [[["q\\"\xef\xbf\xbd", 0.0]]\n    ]\n}'),
]  # fmt: skip


@pytest.mark.parametrize(("classes", "scores", "expected"), CLASSIFY)
def test_encode_classify_response(classes, scores, expected: bytes) -> None:
    assert encode_classify_response(classes, scores) == expected


def test_encode_classify_response_many_scores_uses_the_vectorised_formatter() -> None:
    scores = np.random.default_rng(0).random((30, 10)).astype(np.float32)
    body = encode_classify_response(None, scores)
    assert body.count(b'["", ') == 300
    assert body.startswith(b'{\n    "results": [[["", ') and body.endswith(b"]]\n    ]\n}")


REGRESS = [
    (np.array([3.0], np.float32), b'{\n    "results": [3.0]\n}'),  # e2e test
    (np.array([[0.2], [0.9], [1.0]], np.float32), b'{\n    "results": [0.2, 0.9, 1.0]\n}'),  # upstream
    (np.array([0.2, np.inf, 1.0, -np.inf, np.nan], np.float32),  # upstream
     b'{\n    "results": [0.2, Infinity, 1.0, -Infinity, NaN]\n}'),
]  # fmt: skip


@pytest.mark.parametrize(("outputs", "expected"), REGRESS)
def test_encode_regress_response(outputs: np.ndarray, expected: bytes) -> None:
    assert encode_regress_response(outputs) == expected


RESULT_ERRORS = [
    (encode_classify_response, (None, None), "Cannot convert empty ClassificationResults to JSON"),
    (encode_classify_response, (None, np.zeros((0, 3), np.float32)), "Cannot convert empty ClassificationResults to JSON"),
    (encode_classify_response, (np.array([b"a"], object), None), "Expected Tensor shape: [batch_size num_classes] but got [1]"),
    (encode_classify_response, (np.array([[1]], np.int32), None), "Expected classes Tensor of DT_STRING. Got: DT_INT32"),
    (encode_classify_response, (None, np.array([[1.0]])), "Expected scores Tensor of DT_FLOAT. Got: DT_DOUBLE"),
    (encode_classify_response, (np.array([[b"a"]], object), np.zeros((1, 2), np.float32)),
     "Tensors class and score should match in dim_size(1). Got 1 vs. 2"),
    (encode_regress_response, (np.zeros((2, 3), np.float32),),
     "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got [2,3]"),
    (encode_regress_response, (np.zeros((2,), np.int32),), "Expected output Tensor of DT_FLOAT.  Got: DT_INT32"),
    (encode_regress_response, (np.zeros((0,), np.float32),), "Cannot convert empty RegressionResults to JSON"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "args", "message"), RESULT_ERRORS)
def test_result_errors(call, args: tuple, message: str) -> None:
    error = error_of(call, *args)
    assert (error.code, error.message) == (Code.INVALID_ARGUMENT, message)


def test_batch_size_checks_when_the_example_count_is_given() -> None:
    error = error_of(
        lambda: encode_classify_response(None, np.zeros((2, 1), np.float32), num_examples=3)
    )
    assert error.message == "Expected scores output batch size of 3. Got: 2"
    error = error_of(lambda: encode_regress_response(np.zeros(2, np.float32), num_examples=3))
    assert error.message == "Input batch size did not match output batch size: 3 vs. 2"


def test_classification_result_proto() -> None:
    result = classification_result_proto(
        np.array([[b"a", b"\xff"], [b"c", b""]], object),
        np.array([[0.5, 0.0], [-1.5, 2.0]], np.float32),
    )
    assert [[(c.label, c.score) for c in cl.classes] for cl in result.classifications] == [
        [("a", 0.5), ("\ufffd", 0.0)],
        [("c", -1.5), ("", 2.0)],
    ]
    scores = np.random.default_rng(3).random((3, 5)).astype(np.float32)
    scores_only = classification_result_proto(None, scores)
    got = [[(c.label, c.score) for c in cl.classes] for cl in scores_only.classifications]
    assert got == [[("", float(v)) for v in row] for row in scores]


def test_regression_result_proto() -> None:
    result = regression_result_proto(np.array([[1.5], [-2.0], [np.inf]], np.float32))
    assert [r.value for r in result.regressions] == [1.5, -2.0, math.inf]


def test_method_name_does_not_change_texts() -> None:
    assert codec_example.parse_examples_json(b'{"examples": [{}]}', "regress").examples == [b""]
