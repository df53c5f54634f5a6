"""workers.inspect: saved_model_cli's `show --all` layout, and one prediction via --run."""

from __future__ import annotations

import ast
import base64
import contextlib
import io
import json
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from workers import example_models, inspect

ROOT = pathlib.Path(__file__).resolve().parents[3]
HALF_PLUS_TWO = "saved_model_half_plus_two_cpu/00000123"

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Run:
    """Runs inspect.main in-process; returns (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = inspect.main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def zoo(model_zoo) -> Callable[[str], str]:  # type: ignore[no-untyped-def]
    """An example model's version directory, exported once per session."""
    return lambda name: example_models.export(name, str(model_zoo.root / name), exist_ok=True)


def example(**features: float) -> bytes:
    feature = {
        k: tf.train.Feature(float_list=tf.train.FloatList(value=[v])) for k, v in features.items()
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def saved_model_cli_show_all(export_dir: str) -> str:
    """What `saved_model_cli show --dir DIR --all` prints, minus its Concrete Functions part."""
    saved_model_cli = pytest.importorskip("tensorflow.python.tools.saved_model_cli")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        saved_model_cli._show_all(export_dir)
    return out.getvalue().split("\nConcrete Functions:")[0]


def sort_ops_line(text: str) -> str:
    """saved_model_cli prints the ops as a Python set, in no stable order."""

    def sort(match: re.Match[str]) -> str:
        return match.group(1) + repr(sorted(ast.literal_eval(match.group(2))))

    return re.sub(r"(contains the following ops: )(\{.*\})", sort, text)


# ----------------------------------------------------------------------------- show


@pytest.mark.parametrize(
    "fixture",
    [
        HALF_PLUS_TWO,
        "saved_model_half_plus_three/00000123",
        "saved_model_counter/00000123",
        "matrix_half_plus_two/1",
        "saved_model_half_plus_two_2_versions/00000124",
        "saved_model_half_plus_two_tf2_cpu/00000123",
    ],
)
def test_show_matches_saved_model_cli_on_tfs_models(
    cli: Run, tfs_testdata: pathlib.Path, fixture: str
) -> None:
    path = str(tfs_testdata / fixture)
    code, out, err = cli(path)
    assert (code, err) == (0, "")
    assert sort_ops_line(out) == sort_ops_line(saved_model_cli_show_all(path))


@pytest.mark.parametrize("name", ["classifier", "strings", "multi_io", "cnn"])
def test_show_matches_saved_model_cli_on_own_models(
    cli: Run, zoo: Callable[[str], str], name: str
) -> None:
    path = zoo(name)
    code, out, _ = cli(path)
    assert code == 0
    assert sort_ops_line(out) == sort_ops_line(saved_model_cli_show_all(path))


def test_show_layout(cli: Run, tfs_testdata: pathlib.Path) -> None:
    code, out, _ = cli(str(tfs_testdata / HALF_PLUS_TWO), "--tag_set", "serve")
    assert code == 0
    assert out.startswith(
        "\nMetaGraphDef with tag-set: 'serve' contains the following SignatureDefs:\n"
        "\nsignature_def['classify_x_to_y']:\n"
        "  The given SavedModel SignatureDef contains the following input(s):\n"
        "    inputs['inputs'] tensor_info:\n"
        "        dtype: DT_STRING\n"
        "        shape: unknown_rank\n"
        "        name: tf_example:0\n"
    )
    assert out.endswith(
        "The MetaGraph with tag set ['serve'] contains the following ops: {'Add', 'Assign', "
        "'Const', 'Identity', 'MergeV2Checkpoints', 'Mul', 'NoOp', 'Pack', 'ParseExample', "
        "'Placeholder', 'PlaceholderWithDefault', 'Reshape', 'RestoreV2', 'SaveV2', "
        "'ShardedFilename', 'StringJoin', 'VariableV2'}\n"
    )


def test_show_one_signature(cli: Run, tfs_testdata: pathlib.Path) -> None:
    code, out, _ = cli(str(tfs_testdata / HALF_PLUS_TWO), "--signature_def", "serving_default")
    assert code == 0
    assert out == (
        "The given SavedModel SignatureDef contains the following input(s):\n"
        "  inputs['x'] tensor_info:\n"
        "      dtype: DT_FLOAT\n"
        "      shape: (-1, 1)\n"
        "      name: x:0\n"
        "The given SavedModel SignatureDef contains the following output(s):\n"
        "  outputs['y'] tensor_info:\n"
        "      dtype: DT_FLOAT\n"
        "      shape: (-1, 1)\n"
        "      name: y:0\n"
        "Method name is: tensorflow/serving/predict\n"
    )


def test_base_path_uses_the_highest_version(cli: Run, tfs_testdata: pathlib.Path) -> None:
    base = tfs_testdata / "saved_model_half_plus_two_2_versions"
    code, out, err = cli("--dir", str(base), "--signature_def", "serving_default")
    assert code == 0 and "Method name is: tensorflow/serving/predict" in out
    assert err == f"# {base} is a model base path: using version 124\n"


def test_resolve_export_dir_orders_versions_numerically(tmp_path: pathlib.Path) -> None:
    for version in ("9", "10", "notes"):
        (tmp_path / version).mkdir()
    assert inspect.resolve_export_dir(str(tmp_path)) == str(tmp_path / "10")


# ----------------------------------------------------------------------------- run


@pytest.mark.parametrize(
    ("fixture", "args", "outputs"),
    [
        (HALF_PLUS_TWO, ["--inputs", '{"instances": [2.0, 3.0, 4.0]}'], {"y": [3.0, 3.5, 4.0]}),
        (HALF_PLUS_TWO, ["--inputs", '{"x": [[80]]}'], {"y": [[42.0]]}),
        (HALF_PLUS_TWO, ["--inputs", '{"inputs": {"x": [[2]]}}'], {"y": [[3.0]]}),
        (
            HALF_PLUS_TWO,
            ["--signature_def", "regress_x_to_y", "--inputs", "EXAMPLE_X_80"],
            {"outputs": [[42.0]]},
        ),
        (
            "saved_model_half_plus_three/00000123",
            ["--signature_def", "tensorflow/serving/regress", "--inputs", "EXAMPLE_X_80"],
            {"outputs": [[43.0]]},
        ),
        ("saved_model_half_plus_two_tf2_cpu/00000123", [], {"y": [2.0]}),
        ("saved_model_counter/00000123", ["--signature_def", "incr_counter"], {"output": 1.0}),
    ],
)
def test_run_tfs_models(
    cli: Run, tfs_testdata: pathlib.Path, fixture: str, args: list[str], outputs: object
) -> None:
    encoded = base64.b64encode(example(x=80.0)).decode()
    args = [a.replace("EXAMPLE_X_80", f'{{"inputs": [{{"b64": "{encoded}"}}]}}') for a in args]
    code, out, err = cli(str(tfs_testdata / fixture), "--run", *args)
    assert (code, err) == (0, "")
    assert json.loads(out) == {"outputs": outputs}


@pytest.mark.parametrize(
    ("name", "inputs", "outputs"),
    [
        (
            "multi_io",
            {"instances": [{"a": [1, 2], "b": [3, 4]}, {"a": [0, 1], "b": [1, 1]}]},
            {"sum": [[4.0, 6.0], [1.0, 2.0]], "product": [[3.0, 8.0], [0.0, 1.0]]},
        ),
        (
            "strings",
            {"s": ["ab", {"b64": base64.b64encode(b"\xff").decode()}]},
            {
                "length": [2, 1],
                "upper": ["AB", {"b64": "/w=="}],  # not UTF-8: printed as base64
                "echo_bytes": [{"b64": "YWI="}, {"b64": "/w=="}],  # the `_bytes` rule
            },
        ),
        ("int_ops", {"i32": [1, 2], "i64": [2**40]}, {"out32": [2, 4], "out64": [2**40 + 1]}),
        ("bools", {"instances": [True, False]}, {"not_flag": [False, True]}),
        ("tiny", {"inputs": [[0.1]]}, {"y": [[2.05]]}),  # float32 printed at float32 precision
        # bfloat16 printed as its exact value: 0.1 -> 0x3DCD, 0.5x + 2 -> 2.046875
        ("half_plus_two_bf16", {"inputs": [[1.0], [0.1]]}, {"y": [[2.5], [2.046875]]}),
    ],
)
def test_run_own_models(
    cli: Run, zoo: Callable[[str], str], name: str, inputs: object, outputs: object
) -> None:
    code, out, err = cli(zoo(name), "--run", "--inputs", json.dumps(inputs))
    assert (code, err) == (0, "")
    assert json.loads(out) == {"outputs": outputs}


def test_run_reads_inputs_from_a_file(
    cli: Run, tfs_testdata: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    request = tmp_path / "request.json"
    request.write_text('{"instances": [[1.0]]}')
    code, out, _ = cli(str(tfs_testdata / HALF_PLUS_TWO), "--run", "--inputs", f"@{request}")
    assert code == 0 and json.loads(out) == {"outputs": {"y": [[2.5]]}}


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("fixture", "args", "message"),
    [
        ("bad_half_plus_two/00000123", [], "Could not find SavedModel .pb or .pbtxt"),
        ("bad_half_plus_two", ["--run"], "Could not find SavedModel .pb or .pbtxt"),
        ("nope", ["--run"], "Could not find SavedModel .pb or .pbtxt"),
        (HALF_PLUS_TWO, ["--run", "--inputs", '{"x": [[1]'], "--inputs is not valid JSON"),
        (HALF_PLUS_TWO, ["--run", "--inputs", "[1]"], "--inputs must be a JSON object"),
        (HALF_PLUS_TWO, ["--run", "--inputs", '{"z": [1]}'], "unknown input 'z'"),
        (HALF_PLUS_TWO, ["--run", "--inputs", '{"x": [[1], [2, 3]]}'], "ragged"),
        (HALF_PLUS_TWO, ["--run", "--inputs", '{"x": [true]}'], "expects float"),
        (HALF_PLUS_TWO, ["--run", "--inputs", '{"x": "a"}'], "Type mismatch"),
        (HALF_PLUS_TWO, ["--run", "--inputs", '{"instances": []}'], "non-empty"),
        (HALF_PLUS_TWO, ["--run", "--signature_def", "nope"], "signature_def 'nope' not found"),
        (HALF_PLUS_TWO, ["--run"], "input size does not match signature"),
        (HALF_PLUS_TWO, ["--tag_set", "gpu"], "no MetaGraphDef with tag-set 'gpu'"),
        (HALF_PLUS_TWO, ["--run", "--tag_set", "gpu"], "Could not find meta graph def"),
        (HALF_PLUS_TWO, ["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_errors_are_one_line_and_exit_1(
    cli: Run, tfs_testdata: pathlib.Path, fixture: str, args: list[str], message: str
) -> None:
    code, out, err = cli(str(tfs_testdata / fixture), *args)
    assert code == 1 and out == ""
    error_lines = [line for line in err.splitlines() if not line.startswith("# ")]
    assert len(error_lines) == 1 and error_lines[0].startswith("error: ")
    assert message in error_lines[0]


def test_usage(cli: Run) -> None:
    assert cli()[0] == 1
    code, out, _ = cli("--help")
    assert code == 0 and out.startswith("usage: python -m workers.inspect")


def test_module_entry_point_exit_code(tfs_testdata: pathlib.Path) -> None:
    path = str(tfs_testdata / "bad_half_plus_two/00000123")
    result = subprocess.run(
        [sys.executable, "-m", "workers.inspect", path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        timeout=120,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(
        f"error: Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}"
    )


# ----------------------------------------------------------------- pure conversions


def signature(**inputs: tf.DType) -> meta_graph_pb2.SignatureDef:
    sig = meta_graph_pb2.SignatureDef()
    for alias, dtype in inputs.items():
        sig.inputs[alias].name = f"{alias}:0"
        sig.inputs[alias].dtype = dtype.as_datatype_enum
    return sig


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"x": [1, 2]}, {"x": np.array([1, 2], np.float32)}),
        ({"inputs": [1, 2]}, {"x": np.array([1, 2], np.float32)}),
        ({"instances": [[1], [2]]}, {"x": np.array([[1], [2]], np.float32)}),
        ({"inputs": {"b64": "YQ=="}}, {"x": np.array(b"a", object)}),
    ],
)
def test_request_to_arrays_single_input(body: object, expected: dict[str, np.ndarray]) -> None:
    arrays = inspect.request_to_arrays(body, signature(x=tf.float32))
    assert arrays.keys() == expected.keys()
    for alias, array in expected.items():
        assert arrays[alias].dtype == array.dtype
        np.testing.assert_array_equal(arrays[alias], array)


def test_bfloat16_inputs_round_as_tensorflow_casts() -> None:
    # Above the tie as a double, exactly the tie as a float: TF's cast (via float) gives 0x3F80
    # where a direct double -> bfloat16 rounding would give 0x3F81.
    array = inspect.to_array([1.00390625 + 2**-40, 0.1], tf.bfloat16.as_datatype_enum, "x")
    assert array.dtype == tf.bfloat16.as_numpy_dtype
    assert array.view(np.uint16).tolist() == [0x3F80, 0x3DCD]


def test_request_to_arrays_rows_with_named_inputs() -> None:
    sig = signature(n=tf.int64, s=tf.string, f=tf.bool)
    rows = [{"n": 1, "s": "a", "f": True}, {"n": 2, "s": {"b64": "Yg=="}, "f": False}]
    arrays = inspect.request_to_arrays({"instances": rows}, sig)
    assert arrays["n"].dtype == np.int64 and arrays["n"].tolist() == [1, 2]
    assert arrays["s"].dtype == object and arrays["s"].tolist() == [b"a", b"b"]
    assert arrays["f"].dtype == np.bool_ and arrays["f"].tolist() == [True, False]
    with pytest.raises(ValueError, match="differ from the signature's inputs"):
        inspect.request_to_arrays({"instances": [{"n": 1}]}, sig)
    with pytest.raises(ValueError, match="each instance must be an object"):
        inspect.request_to_arrays({"instances": [1]}, sig)
    with pytest.raises(ValueError, match="expects int64"):
        inspect.request_to_arrays({"n": [1.5]}, sig)


@pytest.mark.parametrize(
    ("alias", "array", "expected"),
    [
        ("y", np.array([0.1, 1e-8], np.float32), [0.1, 1e-8]),
        ("y", np.array([0.1], np.float64), [0.1]),
        ("y", np.array(3, np.int32), 3),
        ("y", np.array([True]), [True]),
        ("text", np.array([b"hi", b"\xff"], object), ["hi", {"b64": "/w=="}]),
        ("img_bytes", np.array([[b"hi"]], object), [[{"b64": "aGk="}]]),
    ],
)
def test_to_json_value(alias: str, array: np.ndarray, expected: object) -> None:
    assert inspect.to_json_value(alias, array) == expected
