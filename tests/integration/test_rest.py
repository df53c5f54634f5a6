"""TF Serving's REST API contract (a.1-a.7) against a real `tensorflow_model_server` process.

One server serves TF Serving's own test models and tfgate's exported ones through a model
config file; each test checks status code and exact JSON (bytes where the format matters).
"""

from __future__ import annotations

import base64
import gzip
import json
import pathlib

import httpx
import pytest

from tests.serverproc import ServerProcess

CONFIG = """
model_config_list {{
  config {{ name: "half_plus_two" base_path: "{tfs}/saved_model_half_plus_two_cpu" model_platform: "tensorflow" }}
  config {{ name: "default" base_path: "{tfs}/saved_model_half_plus_two_cpu" model_platform: "tensorflow" }}
  config {{ name: "half_plus_three" base_path: "{tfs}/saved_model_half_plus_three" model_platform: "tensorflow" }}
  config {{ name: "tf2" base_path: "{tfs}/saved_model_half_plus_two_tf2_cpu" model_platform: "tensorflow" }}
  config {{ name: "matrix" base_path: "{tfs}/matrix_half_plus_two" model_platform: "tensorflow" }}
  config {{ name: "counter" base_path: "{tfs}/saved_model_counter" model_platform: "tensorflow" }}
  config {{
    name: "saved_model_half_plus_two_2_versions"
    base_path: "{tfs}/saved_model_half_plus_two_2_versions"
    model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 123 }}
    version_labels {{ key: "canary" value: 124 }}
  }}
  config {{ name: "multi_io" base_path: "{zoo}/multi_io" model_platform: "tensorflow" }}
  config {{ name: "int_ops" base_path: "{zoo}/int_ops" model_platform: "tensorflow" }}
  config {{ name: "strings" base_path: "{zoo}/strings" model_platform: "tensorflow" }}
  config {{ name: "bools" base_path: "{zoo}/bools" model_platform: "tensorflow" }}
  config {{ name: "classifier" base_path: "{zoo}/classifier" model_platform: "tensorflow" }}
  config {{ name: "a%2Fb" base_path: "{zoo}/half_plus_two" model_platform: "tensorflow" }}
}}
"""


@pytest.fixture(scope="module")
def server(tfs_testdata, model_zoo, tmp_path_factory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("rest")
    for name in ("multi_io", "int_ops", "strings", "bools", "classifier", "half_plus_two"):
        model_zoo.base_path(name)
    config = tmp / "models.config"
    config.write_text(CONFIG.format(tfs=tfs_testdata, zoo=model_zoo.root).replace("a%2Fb", "a/b"))
    proc = ServerProcess(
        [f"--model_config_file={config}", "--file_system_poll_wait_seconds=0"], tmp / "server.log"
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess):  # type: ignore[no-untyped-def]
    with server.client() as client:
        yield client


def post(http: httpx.Client, path: str, body: object | bytes, **kw) -> httpx.Response:  # type: ignore[no-untyped-def]
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(path, content=data, **kw)


def err(response: httpx.Response) -> str:
    return response.json()["error"]


# --- predict: happy paths -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        (
            "/v1/models/half_plus_two:predict",
            {"instances": [2.0, 3.0, 4.0]},
            {"predictions": [3.0, 3.5, 4.0]},
        ),
        (
            "/v1/models/half_plus_two:predict",
            {"instances": [[1.0], [2.0]]},
            {"predictions": [[2.5], [3.0]]},
        ),
        (
            "/v1/models/half_plus_two:predict",
            {"inputs": [[1.0, 2.0], [3.0, 4.0]]},
            {"outputs": [[2.5, 3.0], [3.5, 4.0]]},
        ),
        ("/v1/models/half_plus_two:predict", {"inputs": {"x": [1.0]}}, {"outputs": [2.5]}),
        ("/v1/models/half_plus_two:predict", {"instances": [2, 3]}, {"predictions": [3.0, 3.5]}),
        ("/v1/models/default:predict", {"instances": [80.0]}, {"predictions": [42.0]}),
        (
            "/v1/models/half_plus_three:predict",
            {"instances": [1.0, 2.0, 5.0]},
            {"predictions": [3.5, 4.0, 5.5]},
        ),
        (
            "/v1/models/half_plus_two/versions/123:predict",
            {"instances": [2.0]},
            {"predictions": [3.0]},
        ),
        (
            "/v1/models/saved_model_half_plus_two_2_versions/labels/stable:predict",
            {"instances": [2.0]},
            {"predictions": [3.0]},
        ),
        (
            "/v1/models/saved_model_half_plus_two_2_versions/versions/124:predict",
            {"instances": [2.0]},
            {"predictions": [3.0]},
        ),
        ("/V1/MODELS/half_plus_two:PREDICT", {"instances": [2.0]}, {"predictions": [3.0]}),
        (
            "/v1/models/half_plus_two:predict",
            {"signature_name": "regress_x2_to_y3", "instances": [[2.0]]},
            {"predictions": [[4.0]]},
        ),
        ("/v1/models/tf2:predict", {"instances": [2.0]}, {"predictions": [3.0]}),
        (
            "/v1/models/matrix:predict",
            {"instances": [[[1, 2, 3], [4, 5, 6], [7, 8, 9]]]},
            {"predictions": [[[2.5, 3.0, 3.5], [4.0, 4.5, 5.0], [5.5, 6.0, 6.5]]]},
        ),
        (
            "/v1/models/multi_io:predict",
            {"instances": [{"a": [1.0, 2.0], "b": [3.0, 4.0]}]},
            {"predictions": [{"product": [3.0, 8.0], "sum": [4.0, 6.0]}]},
        ),
        (
            "/v1/models/multi_io:predict",
            {"inputs": {"a": [[1.0, 2.0]], "b": [[3.0, 4.0]]}},
            {"outputs": {"product": [[3.0, 8.0]], "sum": [[4.0, 6.0]]}},
        ),
        (
            "/v1/models/int_ops:predict",
            {"instances": [{"i32": 2, "i64": 9007199254740993}]},
            {"predictions": [{"out32": 4, "out64": 9007199254740994}]},
        ),
        ("/v1/models/bools:predict", {"instances": [True, False]}, {"predictions": [False, True]}),
        ("/v1/models/a%2Fb:predict", {"instances": [2.0]}, {"predictions": [3.0]}),
        (
            "/v1/models/half_plus_two:predict",
            {"instances": [2.0], "extra_key": 1},
            {"predictions": [3.0]},
        ),
        (
            "/v1/models/counter:predict",
            {"signature_name": "incr_counter_by", "inputs": 0.0},
            None,
        ),
    ],
)
def test_predict(http: httpx.Client, path: str, body: dict, expected: dict | None) -> None:
    response = post(http, path, body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    if expected is not None:
        assert response.json() == expected


def test_predict_float32_formatting_is_tf_servings(http: httpx.Client) -> None:
    # 0.5 * 0.2 + 2 in float32 is 2.0999999; TF Serving prints the shortest round-trip text
    body = post(
        http, "/v1/models/half_plus_two:predict", {"instances": [0.2, -4.0, 19999996.0, 1e7]}
    ).content
    assert body == b'{\n    "predictions": [2.1, 0.0, 1e+07, 5000002.0\n    ]\n}'


def test_large_float_bodies_answer_like_small_ones(http: httpx.Client) -> None:
    """Bodies of many numbers take the simdjson lane (app/codec/json_dense.py): same answers, same
    errors, and bodies it stands aside for (ragged, gzip, ints) still work."""
    values = [i / 8 for i in range(1500)]  # exact in float32
    body = json.dumps({"instances": values}).encode()
    assert len(body) >= 8 * 1024
    response = post(http, "/v1/models/half_plus_two:predict", body)
    assert response.json() == {"predictions": [v * 0.5 + 2 for v in values]}
    gzipped = http.post(
        "/v1/models/half_plus_two:predict",
        content=gzip.compress(body),
        headers={"Content-Encoding": "gzip"},
    )
    assert gzipped.content == response.content
    ragged = {"instances": [[1.0, 2.0], [3.0, 4.0, 5.0], [6.0]] * 400}
    response = post(http, "/v1/models/half_plus_two:predict", ragged)
    assert response.status_code == 400
    assert err(response) == (
        "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT:"
        " Expecting tensor size: 2 but got: 3"
    )
    # Plain number arrays, but int inputs: the lane reads them, then hands over to orjson.
    ints = {"inputs": {"i32": list(range(1000)), "i64": list(range(1000))}}
    response = post(http, "/v1/models/int_ops:predict", ints)
    assert response.status_code == 200, response.text
    small = post(http, "/v1/models/int_ops:predict", {"inputs": {"i32": [999], "i64": [999]}})
    outputs = response.json()["outputs"]
    assert {k: v[-1:] for k, v in outputs.items()} == small.json()["outputs"]


def test_predict_nan_and_infinity_in_and_out(http: httpx.Client) -> None:
    response = post(
        http, "/v1/models/half_plus_two:predict", b'{"instances": [NaN, Infinity, -Infinity]}'
    )
    assert response.status_code == 200
    assert b"NaN" in response.content and b"-Infinity" in response.content


def test_predict_strings_and_bytes_outputs(http: httpx.Client) -> None:
    response = post(
        http,
        "/v1/models/strings:predict",
        {"instances": ["ab", {"b64": base64.b64encode(b"xyz").decode()}]},
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert predictions[0]["upper"] == "AB"
    assert predictions[0]["length"] == 2
    assert predictions[1]["echo_bytes"] == {"b64": base64.b64encode(b"xyz").decode()}


def test_predict_scalar_string_outputs(http: httpx.Client) -> None:
    """A scalar fed to the [None] string input gives scalar string outputs (TF returns them
    as plain bytes); columnar answers carry each output's natural value."""
    response = post(http, "/v1/models/strings:predict", {"inputs": "abc"})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "outputs": {"echo_bytes": {"b64": "YWJj"}, "length": 3, "upper": "ABC"}
    }


def test_predict_gzip_body(http: httpx.Client) -> None:
    body = gzip.compress(json.dumps({"instances": [2.0]}).encode())
    response = http.post(
        "/v1/models/half_plus_two:predict", content=body, headers={"Content-Encoding": "gzip"}
    )
    assert response.json() == {"predictions": [3.0]}


def test_trailing_garbage_after_document_is_ignored(http: httpx.Client) -> None:
    response = post(http, "/v1/models/half_plus_two:predict", b'{"instances": [2.0]} trailing')
    assert response.status_code == 200


# --- predict: errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        (
            "/v1/models/nope:predict",
            {"instances": [1.0]},
            404,
            "Servable not found for request: Latest(nope)",
        ),
        (
            "/v1/models/half_plus_two/versions/50:predict",
            {"instances": [1.0]},
            404,
            "Servable not found for request: Specific(half_plus_two, 50)",
        ),
        (
            "/v1/models/half_plus_two/labels/nolabel:predict",
            {"instances": [1.0]},
            400,
            "Unrecognized servable version label: nolabel",
        ),
        (
            "/v1/models/nope/labels/nolabel:predict",
            {"instances": [1.0]},
            400,
            "Unrecognized servable version label: nolabel",
        ),
        (
            "/v1/models/half_plus_two:predict",
            {"signature_name": "nosig", "instances": [1.0]},
            400,
            'Serving signature name: "nosig" not found in signature def',
        ),
        ("/v1/models/half_plus_two:predict", b"", 400, "JSON Parse error: The document is empty"),
        (
            "/v1/models/half_plus_two:predict",
            {"instances": [1.0], "inputs": [1.0]},
            400,
            "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist",
        ),
        (
            "/v1/models/half_plus_two:predict",
            {"foo": 1},
            400,
            "Missing 'inputs' or 'instances' key",
        ),
        (
            "/v1/models/half_plus_two:predict",
            {"instances": 1.0},
            400,
            "Expecting 'instances' to be an list/array",
        ),
        (
            "/v1/models/half_plus_two:predict",
            {"instances": []},
            400,
            "No values in 'instances' array",
        ),
        (
            "/v1/models/half_plus_two:predict",
            {"instances": ["x"]},
            400,
            'JSON Value: "x" Type: String is not of expected type: float',
        ),
        (
            "/v1/models/half_plus_two:predict",
            {"signature_name": 5, "instances": [1.0]},
            400,
            "'signature_name' key must be a string value.",
        ),
        (
            "/v1/models/half_plus_two:predict",
            {"instances": [[1.0], [1.0, 2.0]]},
            400,
            "Failed to process element: 1 of 'instances' list.",
        ),
        (
            "/v1/models/multi_io:predict",
            {"instances": [[1.0, 2.0]]},
            400,
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map",
        ),
        (
            "/v1/models/multi_io:predict",
            {"instances": [{"a": [1.0, 2.0]}]},
            400,
            "keys must be equal to: a,b",
        ),
        (
            "/v1/models/multi_io:predict",
            {"inputs": {"a": [[1.0, 2.0]]}},
            400,
            "Missing named input: b in 'inputs' object.",
        ),
        (
            "/v1/models/multi_io:predict",
            {"inputs": [[1.0, 2.0]]},
            400,
            "inputs is a plain value/list, but expecting an object as multiple input tensors "
            "required as per tensorinfo_map",
        ),
        (
            "/v1/models/int_ops:predict",
            {"instances": [{"i32": 1.5, "i64": 1}]},
            400,
            "is not of expected type: int32",
        ),
        ("/v1/models/bools:predict", {"instances": [1]}, 400, "is not of expected type: bool"),
        (
            "/v1/models/counter:predict",
            {"signature_name": "get_counter", "instances": [1.0]},
            400,
            "Failed to get input map for signature: get_counter",
        ),
        ("/v1/models/strings:predict", {"instances": [{"b64": "!!!"}]}, 400, "base64"),
    ],
)
def test_predict_errors(
    http: httpx.Client, path: str, body: dict | bytes, status: int, message: str
) -> None:
    response = post(http, path, body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert message in err(response)


def test_bad_json_on_unknown_model_reports_json_error_first(http: httpx.Client) -> None:
    response = post(http, "/v1/models/nope:predict", b"{not json")
    assert response.status_code == 400
    assert err(response).startswith("JSON Parse error")


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 10000 + b"]" * 10000,
        b'{"instances": ' + b"[" * 10000 + b"1.0" + b"]" * 10000 + b"}",
        b'{"instances": ["\xff\xfe"]}',
        b'{"instances": [1.0',
        b"\x00\x01\x02",
    ],
)
def test_hostile_bodies_get_4xx_and_server_keeps_serving(http: httpx.Client, body: bytes) -> None:
    response = post(http, "/v1/models/half_plus_two:predict", body)
    assert 400 <= response.status_code < 500
    assert "error" in response.json()
    assert post(http, "/v1/models/half_plus_two:predict", {"instances": [2.0]}).status_code == 200


def test_body_over_100mb_is_refused_with_413(http: httpx.Client) -> None:
    body = b'{"instances": [' + b"1.0," * (26 << 20) + b"1.0]}"
    response = http.post("/v1/models/half_plus_two:predict", content=body)
    assert response.status_code == 413
    assert post(http, "/v1/models/half_plus_two:predict", {"instances": [2.0]}).status_code == 200


# --- classify / regress ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        (
            "/v1/models/half_plus_two:classify",
            {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]},
            {"results": [[["", 3.0]]]},
        ),
        (
            "/v1/models/half_plus_two:regress",
            {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}, {"x": 80.0}]},
            {"results": [3.0, 42.0]},
        ),
        (
            "/v1/models/half_plus_two:regress",
            {"signature_name": "regress_x_to_y2", "examples": [{"x": 2.0}]},
            {"results": [4.0]},
        ),
        (
            "/v1/models/half_plus_three:regress",
            {"signature_name": "tensorflow/serving/regress", "examples": [{"x": 2.0}]},
            {"results": [4.0]},
        ),
        (
            "/v1/models/tf2:regress",
            {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]},
            {"results": [3.0]},
        ),
        (
            "/v1/models/tf2:classify",
            {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]},
            {"results": [[["", 3.0]]]},
        ),
        (
            "/v1/models/saved_model_half_plus_two_2_versions/labels/stable:regress",
            {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]},
            {"results": [42.0]},
        ),
        (
            "/v1/models/half_plus_two:regress",
            {"signature_name": "regress_x_to_y", "context": {"x": 2.0}, "examples": [{}]},
            {"results": [3.0]},
        ),
    ],
)
def test_classify_regress(http: httpx.Client, path: str, body: dict, expected: dict) -> None:
    response = post(http, path, body)
    assert response.status_code == 200, response.text
    assert response.json() == expected


def test_classify_with_classes_and_scores(http: httpx.Client) -> None:
    response = post(
        http,
        "/v1/models/classifier:classify",
        {"signature_name": "classify", "examples": [{"f0": 1.0, "f1": 0.0, "f2": 0.5, "f3": 2.0}]},
    )
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert len(result) == 3 and all(isinstance(label, str) for label, _ in result)


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        (
            "/v1/models/half_plus_two:classify",
            {"signature_name": "classify_x_to_y"},
            400,
            "key 'examples' is expected and was not found",
        ),
        (
            "/v1/models/half_plus_two:regress",
            {"signature_name": "regress_x_to_y", "examples": []},
            400,
            "'examples' value is an empty array",
        ),
        (
            "/v1/models/half_plus_two:regress",
            {"signature_name": "regress_x_to_y", "examples": [[1.0]]},
            400,
            "Example must be JSON object but got JSON Array",
        ),
        (
            "/v1/models/half_plus_two:regress",
            {"signature_name": "regress_x_to_y", "examples": [{"x": None}]},
            400,
            "Feature: x has element with unexpected JSON type: Null",
        ),
        (
            "/v1/models/half_plus_two:regress",
            {"signature_name": "nosig", "examples": [{"x": 1.0}]},
            400,
            "No signature was found with the name: nosig",
        ),
        (
            "/v1/models/nope:regress",
            {"examples": [{"x": 1.0}]},
            404,
            "Servable not found for request: Latest(nope)",
        ),
    ],
)
def test_classify_regress_errors(
    http: httpx.Client, path: str, body: dict, status: int, message: str
) -> None:
    response = post(http, path, body)
    assert response.status_code == status, response.text
    assert message in err(response)


def test_int_feature_for_float_model_is_a_model_error(http: httpx.Client) -> None:
    # {"x": 2} is an int64 feature; the model parses a float feature x
    response = post(
        http,
        "/v1/models/half_plus_two:regress",
        {"signature_name": "regress_x_to_y", "examples": [{"x": 2}]},
    )
    assert response.status_code == 400


# --- status and metadata ---------------------------------------------------------------


def test_status_json_bytes(http: httpx.Client) -> None:
    response = http.get("/v1/models/half_plus_two")
    assert response.status_code == 200
    assert response.text == (
        '{\n "model_version_status": [\n  {\n   "version": "123",\n   "state": "AVAILABLE",\n'
        '   "status": {\n    "error_code": "OK",\n    "error_message": ""\n   }\n  }\n ]\n}\n'
    )


def test_status_all_versions_and_by_version(http: httpx.Client) -> None:
    name = "saved_model_half_plus_two_2_versions"
    versions = http.get(f"/v1/models/{name}").json()["model_version_status"]
    assert sorted(v["version"] for v in versions) == ["123", "124"]
    one = http.get(f"/v1/models/{name}/versions/124").json()["model_version_status"]
    assert [v["version"] for v in one] == ["124"]
    by_label = http.get(f"/v1/models/{name}/labels/stable").json()["model_version_status"]
    assert len(by_label) == 2  # TF Serving ignores the label for status


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v1/models/nope", 404, "Could not find any versions of model nope"),
        (
            "/v1/models/half_plus_two/versions/9",
            404,
            "Could not find version 9 of model half_plus_two",
        ),
        ("/v1/models", 400, "Missing model name in request."),
        ("/v1/models/nope/metadata", 404, "Servable not found for request: Latest(nope)"),
        (
            "/v1/models/half_plus_two/versions/99999999999999999999",
            400,
            "Failed to convert version: 99999999999999999999 to numeric.",
        ),
    ],
)
def test_status_errors(http: httpx.Client, path: str, status: int, message: str) -> None:
    response = http.get(path)
    assert response.status_code == status
    assert err(response) == message


def _sorted(value):  # type: ignore[no-untyped-def]
    if isinstance(value, dict):
        return {k: _sorted(v) for k, v in value.items()}
    if isinstance(value, list):
        return sorted((_sorted(v) for v in value), key=json.dumps)
    return value


@pytest.mark.parametrize(
    ("model", "fixture"),
    [
        ("default", "half_plus_two_model_metadata.json"),
        (
            "saved_model_half_plus_two_2_versions/versions/123",
            "saved_model_half_plus_two_2_versions_metadata.json",
        ),
    ],
)
def test_metadata_equals_tf_serving_fixture(
    http: httpx.Client, tfs_testdata: pathlib.Path, model: str, fixture: str
) -> None:
    response = http.get(f"/v1/models/{model}/metadata")
    assert response.status_code == 200, response.text
    expected = json.loads((tfs_testdata / "fixtures" / fixture).read_text())
    assert _sorted(response.json()) == _sorted(expected)
    assert response.text.startswith('{\n"model_spec":{\n "name": ')
    assert '"metadata": {"signature_def": {\n "signature_def": {' in response.text


# --- routing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models/half_plus_two:predict"),
        ("POST", "/v1/models/half_plus_two/metadata"),
        ("GET", "/v1/models/half_plus_two/version/50"),
        ("GET", "/v1/foo"),
        ("PUT", "/v1/models/half_plus_two"),
        ("DELETE", "/v1/models/half_plus_two"),
        ("POST", "/v1/models/half_plus_two:explain"),
    ],
)
def test_malformed_requests(http: httpx.Client, method: str, path: str) -> None:
    response = http.request(method, path, content=b"{}")
    assert response.status_code == 400
    assert err(response) == f"Malformed request: {method} {path}"


def test_paths_outside_v1_and_v2_are_404(http: httpx.Client) -> None:
    # /v2 is the Open Inference Protocol's (tests/integration/test_v2_protocol.py)
    assert http.get("/v3/models/half_plus_two").status_code == 404
    assert http.get("/").status_code == 404


def test_health_and_readiness(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_cors_preflight_without_cors_flag(http: httpx.Client) -> None:
    response = http.options("/v1/models/half_plus_two:predict")
    assert response.status_code == 400
    assert err(response) == "Origin header is missing in CORS preflight"
    ok = http.options("/v1/models/half_plus_two:predict", headers={"Origin": "http://x.test"})
    assert ok.status_code == 200
    assert "access-control-allow-origin" not in ok.headers
