"""workers.runner: SavedModels load as TF Serving loads them and run as its C++ session runs them.

TF Serving's own test models (tests/conftest.py `tfs_testdata`, skipped when absent) and
tfgate's example models (exported once per session) go through SavedModelRunner.
"""

from __future__ import annotations

import pathlib
import pickle
import shutil
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from workers import example_models
from workers.runner import RunnerError, SavedModelRunner, plan_feeds, read_saved_model

HALF_PLUS_TWO = "saved_model_half_plus_two_cpu/00000123"
HALF_PLUS_THREE = "saved_model_half_plus_three/00000123"
HALF_PLUS_TWO_TF2 = "saved_model_half_plus_two_tf2_cpu/00000123"
COUNTER = "saved_model_counter/00000123"

RunnerFactory = Callable[[str], SavedModelRunner]


@pytest.fixture(scope="session")
def export_model(model_zoo) -> Callable[..., str]:  # type: ignore[no-untyped-def]
    """Exports an example model in-process into the session's shared model zoo, once."""

    def export(name: str, subdir: str | None = None, **options: int) -> str:
        base = model_zoo.root / (subdir or name)
        return example_models.export(name, str(base), exist_ok=True, **options)

    return export


@pytest.fixture(scope="session")
def runner_for() -> Iterator[RunnerFactory]:
    """One SavedModelRunner per export directory for the whole session, closed at the end."""
    runners: dict[str, SavedModelRunner] = {}

    def get(path: str) -> SavedModelRunner:
        if path not in runners:
            runners[path] = SavedModelRunner(path)
        return runners[path]

    yield get
    for runner in runners.values():
        runner.close()


@pytest.fixture(scope="session")
def half_plus_two(tfs_testdata: pathlib.Path, runner_for: RunnerFactory) -> SavedModelRunner:
    return runner_for(str(tfs_testdata / HALF_PLUS_TWO))


def example(**features: float | list[float]) -> bytes:
    """A serialized tf.Example with float features, as a Classify/Regress request carries."""
    feature = {
        name: tf.train.Feature(
            float_list=tf.train.FloatList(value=value if isinstance(value, list) else [value])
        )
        for name, value in features.items()
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def strings(*values: bytes) -> np.ndarray:
    return np.array(values, dtype=object)


def f32(value: object) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


# ------------------------------------------------------------ TF Serving's test models


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        ([[2.0]], [[3.0]]),
        ([[80.0]], [[42.0]]),
        # Not the declared [-1,1] shape: fed as built, like TF Serving's C++ session.
        ([2.0, 3.0, 4.0], [3.0, 3.5, 4.0]),
        ([[1.0, 2.0], [3.0, 4.0]], [[2.5, 3.0], [3.5, 4.0]]),
        (2.0, 3.0),
    ],
)
def test_half_plus_two_feeds_any_shape(
    half_plus_two: SavedModelRunner, x: object, expected: object
) -> None:
    outputs = half_plus_two.run("serving_default", {"x": f32(x)}, ["y"])
    assert list(outputs) == ["y"]
    assert outputs["y"].dtype == np.float32
    np.testing.assert_array_equal(outputs["y"], f32(expected))


@pytest.mark.parametrize(
    ("array", "actual"),
    [
        (np.array([[2.0]]), "double"),
        (np.array([[2]], np.int32), "int32"),
        (strings(b"2"), "string"),
    ],
)
def test_dtype_mismatch_is_tfs_type_error(
    half_plus_two: SavedModelRunner, array: np.ndarray, actual: str
) -> None:
    with pytest.raises(RunnerError) as info:
        half_plus_two.run("serving_default", {"x": array}, ["y"])
    assert info.value.code == 3
    assert f"Type mismatch: actual {actual} vs. expect float" in info.value.message


@pytest.mark.parametrize(
    ("signature", "output", "expected"),
    [
        ("regress_x_to_y", "outputs", [[42.0], [3.0]]),
        ("regress_x_to_y2", "outputs", [[43.0], [4.0]]),
        ("classify_x_to_y", "scores", [[42.0], [3.0]]),
    ],
)
def test_half_plus_two_example_signatures(
    half_plus_two: SavedModelRunner, signature: str, output: str, expected: list[list[float]]
) -> None:
    examples = strings(example(x=80.0), example(x=2.0))
    outputs = half_plus_two.run(signature, {"inputs": examples}, [output])
    np.testing.assert_array_equal(outputs[output], f32(expected))


def test_half_plus_two_regress_float_input(half_plus_two: SavedModelRunner) -> None:
    outputs = half_plus_two.run("regress_x2_to_y3", {"inputs": f32([[2.0]])}, ["outputs"])
    np.testing.assert_array_equal(outputs["outputs"], f32([[4.0]]))


def test_half_plus_three_regress_feeds_examples_despite_float_tensor_info(
    tfs_testdata: pathlib.Path, runner_for: RunnerFactory
) -> None:
    runner = runner_for(str(tfs_testdata / HALF_PLUS_THREE))
    signature = runner.signature_defs["tensorflow/serving/regress"]
    assert signature.inputs["inputs"].dtype == tf.float32.as_datatype_enum  # the lie
    outputs = runner.run(
        "tensorflow/serving/regress", {"inputs": strings(example(x=2.0))}, ["outputs"]
    )
    np.testing.assert_array_equal(outputs["outputs"], f32([[4.0]]))
    predict = runner.run("serving_default", {"x": f32([1.0, 2.0, 5.0])}, ["y"])
    np.testing.assert_array_equal(predict["y"], f32([3.5, 4.0, 5.5]))


def test_tf2_export_defaults_and_init_op(
    tfs_testdata: pathlib.Path, runner_for: RunnerFactory
) -> None:
    runner = runner_for(str(tfs_testdata / HALF_PLUS_TWO_TF2))
    assert "__saved_model_init_op" in runner.signature_defs
    # x has a default ([0.0]) in the SignatureDef: it may be omitted.
    np.testing.assert_array_equal(runner.run("serving_default", {}, [])["y"], f32([2.0]))
    fed = runner.run("serving_default", {"x": f32([2.0, 3.0, 4.0])}, [])
    np.testing.assert_array_equal(fed["y"], f32([3.0, 3.5, 4.0]))
    classify = runner.run("classify_x_to_y", {"inputs": strings(example(x=20.0))}, ["scores"])
    np.testing.assert_array_equal(classify["scores"], f32([[12.0]]))
    regress = runner.run("regress_x2_to_y3", {"inputs": f32([2.0])}, ["outputs"])
    np.testing.assert_array_equal(regress["outputs"], f32([4.0]))


@pytest.mark.parametrize("version", ["00000123", "00000124"])
def test_two_versions_load_side_by_side(
    tfs_testdata: pathlib.Path, runner_for: RunnerFactory, version: str
) -> None:
    runner = runner_for(str(tfs_testdata / "saved_model_half_plus_two_2_versions" / version))
    outputs = runner.run("classify_x2_to_y3", {"inputs": f32([[2.0]])}, ["scores"])
    np.testing.assert_array_equal(outputs["scores"], f32([[4.0]]))
    regress = runner.run("regress_x_to_y", {"inputs": strings(example(x=80.0))}, [])
    np.testing.assert_array_equal(regress["outputs"], f32([[42.0]]))


def test_matrix_half_plus_two(tfs_testdata: pathlib.Path, runner_for: RunnerFactory) -> None:
    runner = runner_for(str(tfs_testdata / "matrix_half_plus_two/1"))
    x = np.arange(18, dtype=np.float32).reshape(2, 3, 3)
    np.testing.assert_array_equal(runner.run("serving_default", {"x": x}, [])["y"], 0.5 * x + 2)


def test_counter_keeps_state_and_returns_scalars(tfs_testdata: pathlib.Path) -> None:
    # Its own runner: the counter's state must not leak into other tests.
    with SavedModelRunner(str(tfs_testdata / COUNTER)) as runner:
        start = runner.run("get_counter", {}, [])["output"]
        assert isinstance(start, np.ndarray) and start.shape == ()
        assert float(start) == 0.0
        assert float(runner.run("incr_counter", {}, [])["output"]) == 1.0
        assert float(runner.run("incr_counter", {}, [])["output"]) == 2.0
        assert float(runner.run("incr_counter_by", {"delta": f32(3.0)}, [])["output"]) == 5.0
        assert float(runner.run("reset_counter", {}, [])["output"]) == 0.0
        assert float(runner.run("get_counter", {}, ["output"])["output"]) == 0.0


def test_signature_defs_are_tf_protos(half_plus_two: SavedModelRunner) -> None:
    assert sorted(half_plus_two.signature_defs) == [
        "classify_x_to_y",
        "regress_x2_to_y3",
        "regress_x_to_y",
        "regress_x_to_y2",
        "serving_default",
    ]
    signature = half_plus_two.signature_defs["serving_default"]
    assert isinstance(signature, meta_graph_pb2.SignatureDef)
    assert signature.inputs["x"].name == "x:0"
    assert signature.method_name == "tensorflow/serving/predict"


def test_signature_defs_bytes_is_a_meta_graph_with_only_signatures(
    half_plus_two: SavedModelRunner,
) -> None:
    meta_graph = meta_graph_pb2.MetaGraphDef.FromString(half_plus_two.signature_defs_bytes())
    assert dict(meta_graph.signature_def) == half_plus_two.signature_defs
    assert [field.name for field, _ in meta_graph.ListFields()] == ["signature_def"]


# ------------------------------------------------------------------- load failures


def test_bad_half_plus_two_fails_cleanly(tfs_testdata: pathlib.Path) -> None:
    path = str(tfs_testdata / "bad_half_plus_two/00000123")
    with pytest.raises(RunnerError) as info:
        SavedModelRunner(path)
    assert info.value.code == 5
    assert info.value.message == (
        f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}. "
        "Check that the directory exists and that you have the right permissions for "
        "accessing it."
    )


def test_missing_directory_is_not_found(tmp_path: pathlib.Path) -> None:
    with pytest.raises(RunnerError) as info:
        SavedModelRunner(str(tmp_path / "nope"))
    assert info.value.code == 5
    assert str(tmp_path / "nope") in info.value.message


def test_wrong_tags_use_the_cpp_loader_text(tfs_testdata: pathlib.Path) -> None:
    path = str(tfs_testdata / HALF_PLUS_TWO)
    with pytest.raises(RunnerError) as info:
        SavedModelRunner(path, tags=["serve", "gpu"])
    assert info.value.code == 5
    assert info.value.message.startswith(
        "Could not find meta graph def matching supplied tags: { serve gpu }."
    )
    assert path in info.value.message


def test_corrupt_saved_model_is_data_loss(tmp_path: pathlib.Path) -> None:
    (tmp_path / "saved_model.pb").write_bytes(b"\xff not a protobuf \x00")
    for load in (SavedModelRunner, read_saved_model):
        with pytest.raises(RunnerError) as info:
            load(str(tmp_path))
        assert info.value.code == 15
        assert info.value.message == f"Can't parse {tmp_path}/saved_model.pb as binary proto"


def test_missing_variables_is_not_found(tfs_testdata: pathlib.Path, tmp_path: pathlib.Path) -> None:
    shutil.copy(tfs_testdata / HALF_PLUS_TWO / "saved_model.pb", tmp_path)
    with pytest.raises(RunnerError) as info:
        SavedModelRunner(str(tmp_path))
    assert info.value.code == 5
    assert str(tmp_path) in info.value.message


# -------------------------------------------------------------------- run failures


@pytest.mark.parametrize(
    ("signature", "inputs", "outputs", "code", "message"),
    [
        ("nope", {"x": [[1.0]]}, [], 9, 'Serving signature key "nope" not found.'),
        (
            "serving_default",
            {},
            [],
            3,
            "input size does not match signature: 0!=1 len({}) != len({x}). "
            "Sent extra: {}. Missing but required: {x}.",
        ),
        (
            "serving_default",
            {"x": [[1.0]], "z": [[1.0]]},
            [],
            3,
            "input size does not match signature: 2!=1 len({x,z}) != len({x}). "
            "Sent extra: {z}. Missing but required: {}.",
        ),
        (
            "serving_default",
            {"z": [[1.0]]},
            [],
            3,
            "Signature input alias: x(feed name: x:0) not found in request and no default "
            "value provided. Inputs expected to be in the request {z}, or default input "
            "alias set: ",
        ),
        (
            "serving_default",
            {"x": [[1.0]]},
            ["y", "q"],
            3,
            "output tensor alias not found in signature: q Outputs expected to be in the set {y}.",
        ),
        ("serving_default", {"x": [[1.0]]}, ["y", "y"], 3, "duplicate output tensor alias: y"),
    ],
)
def test_bad_requests_get_tfs_texts(
    half_plus_two: SavedModelRunner,
    signature: str,
    inputs: dict[str, list[list[float]]],
    outputs: list[str],
    code: int,
    message: str,
) -> None:
    with pytest.raises(RunnerError) as info:
        half_plus_two.run(signature, {k: f32(v) for k, v in inputs.items()}, outputs)
    assert (info.value.code, info.value.message) == (code, message)


def test_unknown_alias_next_to_a_default(
    tfs_testdata: pathlib.Path, runner_for: RunnerFactory
) -> None:
    runner = runner_for(str(tfs_testdata / HALF_PLUS_TWO_TF2))
    signature = runner.signature_defs["serving_default"]
    assert plan_feeds(signature, ["x"]) == ()
    assert plan_feeds(signature, []) == ("x",)
    with pytest.raises(RunnerError) as info:
        runner.run("serving_default", {"z": f32([1.0])}, [])
    assert info.value.code == 3
    assert info.value.message.startswith("Inputs contains invalid name.")


def test_runtime_op_error_keeps_tf_code(export_model: Callable[..., str]) -> None:
    # a [2] + b [3] cannot broadcast: TF's own InvalidArgument, raised inside the session.
    with SavedModelRunner(export_model("multi_io")) as runner, pytest.raises(RunnerError) as info:
        runner.run("serving_default", {"a": f32([1, 2]), "b": f32([1, 2, 3])}, ["sum"])
    assert info.value.code == 3
    assert "Incompatible shapes" in info.value.message


def test_closed_runner_fails_precondition(tfs_testdata: pathlib.Path) -> None:
    runner = SavedModelRunner(str(tfs_testdata / "matrix_half_plus_two/1"))
    runner.close()
    runner.close()  # idempotent
    with pytest.raises(RunnerError) as info:
        runner.run("serving_default", {"x": f32([[[1.0]]])}, [])
    assert info.value.code == 9


def test_runner_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(RunnerError(3, "bad input")))
    assert (error.code, error.message, str(error)) == (3, "bad input", "bad input")


# ----------------------------------------------------------------- run behaviour


def test_callables_are_cached_per_feed_and_fetch_set(tfs_testdata: pathlib.Path) -> None:
    with SavedModelRunner(str(tfs_testdata / HALF_PLUS_TWO)) as runner:
        x = {"x": f32([[1.0]])}
        for _ in range(3):
            runner.run("serving_default", x, ["y"])
        runner.run("serving_default", x, [])
        runner.run("regress_x_to_y", {"inputs": strings(example(x=1.0))}, [])
        assert len(runner._plans) == 3


def test_empty_output_filter_returns_every_output_and_order_follows_request(
    export_model: Callable[..., str], runner_for: RunnerFactory
) -> None:
    runner = runner_for(export_model("multi_io"))
    inputs = {"a": f32([[1, 2]]), "b": f32([[3, 4]])}
    assert list(runner.run("serving_default", inputs, [])) == ["product", "sum"]
    assert list(runner.run("serving_default", inputs, ["sum", "product"])) == ["sum", "product"]
    reordered = runner.run("serving_default", {"b": inputs["b"], "a": inputs["a"]}, ["sum"])
    np.testing.assert_array_equal(reordered["sum"], f32([[4, 6]]))


def test_thread_options_and_concurrent_runs(export_model: Callable[..., str]) -> None:
    path = export_model("tiny")
    with SavedModelRunner(path, intra_op_threads=1, inter_op_threads=1) as runner:
        errors: list[BaseException] = []

        def hammer(seed: int) -> None:
            try:
                for i in range(50):
                    x = f32([[seed * 100 + i]])
                    np.testing.assert_array_equal(
                        runner.run("serving_default", {"x": x}, ["y"])["y"], 0.5 * x + 2
                    )
            except BaseException as e:  # collected and asserted on the main thread
                errors.append(e)

        threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []


# -------------------------------------------------------------- tfgate's own models


def test_multi_io_returns_both_outputs(
    export_model: Callable[..., str], runner_for: RunnerFactory
) -> None:
    runner = runner_for(export_model("multi_io"))
    outputs = runner.run("serving_default", {"a": f32([[1, 2]]), "b": f32([[3, 4]])}, [])
    np.testing.assert_array_equal(outputs["sum"], f32([[4, 6]]))
    np.testing.assert_array_equal(outputs["product"], f32([[3, 8]]))


def test_int_ops_keep_int_dtypes(
    export_model: Callable[..., str], runner_for: RunnerFactory
) -> None:
    runner = runner_for(export_model("int_ops"))
    big = np.int64(2**40)
    outputs = runner.run(
        "serving_default",
        {"i32": np.array([1, -2], np.int32), "i64": np.array([big], np.int64)},
        [],
    )
    assert outputs["out32"].dtype == np.int32 and outputs["out64"].dtype == np.int64
    assert outputs["out32"].tolist() == [2, -4]
    assert outputs["out64"].tolist() == [big + 1]
    with pytest.raises(RunnerError) as info:
        runner.run(
            "serving_default",
            {"i32": np.array([1], np.int64), "i64": np.array([1], np.int64)},
            [],
        )
    assert info.value.code == 3
    assert "Type mismatch: actual int64 vs. expect int32" in info.value.message


def test_strings_are_object_arrays_of_bytes(
    export_model: Callable[..., str], runner_for: RunnerFactory
) -> None:
    runner = runner_for(export_model("strings"))
    raw = b"\xff\x00bin"  # not UTF-8: bytes pass through untouched
    outputs = runner.run("serving_default", {"s": strings(b"ab", "héllo".encode(), raw)}, [])
    assert outputs["upper"].dtype == object
    # tf.strings.upper only maps ASCII: the UTF-8 bytes of "é" stay as they are.
    assert outputs["upper"].tolist() == [b"AB", "HéLLO".encode(), b"\xff\x00BIN"]
    assert outputs["echo_bytes"].tolist() == [b"ab", "héllo".encode(), raw]
    assert outputs["length"].dtype == np.int32
    assert outputs["length"].tolist() == [2, 6, 5]


def test_scalar_string_output_is_a_0d_object_array(
    export_model: Callable[..., str], runner_for: RunnerFactory
) -> None:
    """A scalar fed to a [None] string input (the Session does not check the rank) gives
    scalar string outputs: TF returns those as plain bytes, not as an array."""
    runner = runner_for(export_model("strings"))
    scalar = np.empty((), dtype=object)
    scalar[()] = b"abc"
    outputs = runner.run("serving_default", {"s": scalar}, [])
    for alias, expected in (("upper", b"ABC"), ("echo_bytes", b"abc")):
        assert outputs[alias].dtype == object and outputs[alias].shape == ()
        assert outputs[alias][()] == expected
    assert outputs["length"].shape == () and int(outputs["length"]) == 3


def test_bools(export_model: Callable[..., str], runner_for: RunnerFactory) -> None:
    runner = runner_for(export_model("bools"))
    outputs = runner.run("serving_default", {"flag": np.array([True, False])}, [])
    assert outputs["not_flag"].dtype == np.bool_
    assert outputs["not_flag"].tolist() == [False, True]


def test_classifier_classify_and_regress_take_examples(
    export_model: Callable[..., str], runner_for: RunnerFactory
) -> None:
    runner = runner_for(export_model("classifier"))
    examples = strings(example(f0=1.0, f1=2.0, f2=3.0, f3=4.0), example(f0=-1.0))
    classify = runner.run("classify", {"inputs": examples}, ["classes", "scores"])
    assert classify["classes"].tolist() == [[b"class_0", b"class_1", b"class_2"]] * 2
    assert classify["scores"].shape == (2, 3) and classify["scores"].dtype == np.float32
    np.testing.assert_allclose(classify["scores"].sum(axis=1), [1.0, 1.0], rtol=1e-6)
    # The predict signature on the same features gives the same scores.
    x = f32([[1, 2, 3, 4], [-1, 0, 0, 0]])
    predict = runner.run("serving_default", {"x": x}, ["scores"])
    np.testing.assert_allclose(predict["scores"], classify["scores"], rtol=1e-6)
    regress = runner.run("regress", {"inputs": examples}, ["outputs"])
    assert regress["outputs"].shape == (2,) and regress["outputs"].dtype == np.float32


def test_half_plus_two_demo_model(
    export_model: Callable[..., str], runner_for: RunnerFactory
) -> None:
    runner = runner_for(export_model("half_plus_two"))
    np.testing.assert_array_equal(
        runner.run("serving_default", {"x": f32([2.0, 3.0])}, ["y"])["y"], f32([3.0, 3.5])
    )
    examples = strings(example(x=80.0))
    scores = runner.run("classify_x_to_y", {"inputs": examples}, ["scores"])["scores"]
    outputs = runner.run("regress_x_to_y", {"inputs": examples}, ["outputs"])["outputs"]
    np.testing.assert_array_equal(scores, f32([[42.0]]))
    np.testing.assert_array_equal(outputs, f32([[42.0]]))


def test_slow_model_takes_its_delay(export_model: Callable[..., str]) -> None:
    path = export_model("slow", subdir="slow_120ms", delay_ms=120)
    with SavedModelRunner(path) as runner:
        x = {"x": f32([[2.0]])}
        runner.run("serving_default", x, ["y"])  # first call also builds the callable
        started = time.perf_counter()
        y = runner.run("serving_default", x, ["y"])["y"]
        assert time.perf_counter() - started >= 0.12
    np.testing.assert_array_equal(y, f32([[3.0]]))
