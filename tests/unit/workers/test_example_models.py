"""workers.example_models: each example SavedModel has the promised signatures and math.

Exports go into the session's shared model zoo (tests/conftest.py), once per model, and are
checked through workers.runner.SavedModelRunner, the way a worker serves them.
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Callable, Iterator

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

from workers import example_models
from workers.runner import SavedModelRunner

F, S, I32, I64, B = tf.float32, tf.string, tf.int32, tf.int64, tf.bool
Spec = dict[str, tuple[tf.DType, tuple[int, ...]]]

# name -> signature key -> (inputs, outputs), each alias -> (dtype, shape; -1 = any size).
SIGNATURES: dict[str, dict[str, tuple[Spec, Spec]]] = {
    "half_plus_two": {
        "serving_default": ({"x": (F, (-1, 1))}, {"y": (F, (-1, 1))}),
        "classify_x_to_y": ({"inputs": (S, (-1,))}, {"scores": (F, (-1, 1))}),
        "regress_x_to_y": ({"inputs": (S, (-1,))}, {"outputs": (F, (-1, 1))}),
    },
    "multi_io": {
        "serving_default": (
            {"a": (F, (-1, 2)), "b": (F, (-1, 2))},
            {"sum": (F, (-1, 2)), "product": (F, (-1, 2))},
        ),
    },
    "int_ops": {
        "serving_default": (
            {"i32": (I32, (-1,)), "i64": (I64, (-1,))},
            {"out32": (I32, (-1,)), "out64": (I64, (-1,))},
        ),
    },
    "strings": {
        "serving_default": (
            {"s": (S, (-1,))},
            {"length": (I32, (-1,)), "upper": (S, (-1,)), "echo_bytes": (S, (-1,))},
        ),
    },
    "bools": {"serving_default": ({"flag": (B, (-1,))}, {"not_flag": (B, (-1,))})},
    "half_precision": {
        "serving_default": (
            {"h": (tf.float16, (-1, 2))},
            {"doubled": (tf.float16, (-1, 2)), "as_float": (F, (-1, 2))},
        ),
    },
    "half_plus_two_bf16": {
        "serving_default": ({"x": (tf.bfloat16, (-1, 1))}, {"y": (tf.bfloat16, (-1, 1))}),
    },
    "classifier": {
        "serving_default": (
            {"x": (F, (-1, 4))},
            {"classes": (S, (-1, 3)), "scores": (F, (-1, 3))},
        ),
        "classify": ({"inputs": (S, (-1,))}, {"classes": (S, (-1, 3)), "scores": (F, (-1, 3))}),
        "regress": ({"inputs": (S, (-1,))}, {"outputs": (F, (-1,))}),
    },
    "slow": {"serving_default": ({"x": (F, (-1, 1))}, {"y": (F, (-1, 1))})},
    "half_plus_three": {"serving_default": ({"x": (F, (-1, 1))}, {"y": (F, (-1, 1))})},
    "tiny": {"serving_default": ({"x": (F, (-1, 1))}, {"y": (F, (-1, 1))})},
    "dnn": {"serving_default": ({"x": (F, (-1, 256))}, {"y": (F, (-1, 1))})},
    "cnn": {"serving_default": ({"x": (F, (-1, 28, 28, 1))}, {"logits": (F, (-1, 10))})},
    "image": {"serving_default": ({"x": (F, (-1, 224, 224, 3))}, {"logits": (F, (-1, 10))})},
}


@pytest.fixture(scope="session")
def zoo_root(model_zoo) -> pathlib.Path:  # type: ignore[no-untyped-def]
    return model_zoo.root


@pytest.fixture(scope="session")
def loaded(zoo_root: pathlib.Path) -> Iterator[Callable[[str], SavedModelRunner]]:
    """Exports (once, shared with the other test modules) and loads an example model."""
    runners: dict[str, SavedModelRunner] = {}

    def get(name: str) -> SavedModelRunner:
        if name not in runners:
            path = example_models.export(name, str(zoo_root / name), exist_ok=True)
            runners[name] = SavedModelRunner(path)
        return runners[name]

    yield get
    for runner in runners.values():
        runner.close()


def test_every_model_is_listed() -> None:
    assert sorted(example_models.MODEL_NAMES) == sorted(SIGNATURES)


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_signatures_match_the_spec(loaded: Callable[[str], SavedModelRunner], name: str) -> None:
    signature_defs = loaded(name).signature_defs
    served = {key: sig for key, sig in signature_defs.items() if not key.startswith("__")}
    assert sorted(served) == sorted(SIGNATURES[name])
    for key, (inputs, outputs) in SIGNATURES[name].items():
        for side, expected in (("inputs", inputs), ("outputs", outputs)):
            infos = getattr(served[key], side)
            actual = {
                alias: (
                    tf.dtypes.as_dtype(info.dtype),
                    tuple(dim.size for dim in info.tensor_shape.dim),
                )
                for alias, info in infos.items()
            }
            assert actual == expected, f"{name} {key} {side}"


def test_export_writes_a_version_directory_atomically(tmp_path: pathlib.Path) -> None:
    base = tmp_path / "tiny"
    path = example_models.export("tiny", str(base), version=7)
    assert path == str(base / "7")
    assert (base / "7" / "saved_model.pb").is_file()
    assert (base / "7" / "variables").is_dir()
    assert os.listdir(base) == ["7"]  # no staging directory left behind


def test_export_refuses_to_overwrite_unless_exist_ok(tmp_path: pathlib.Path) -> None:
    path = example_models.export("bools", str(tmp_path))
    with pytest.raises(FileExistsError):
        example_models.export("bools", str(tmp_path))
    assert example_models.export("bools", str(tmp_path), exist_ok=True) == path


@pytest.mark.parametrize(
    ("name", "options", "text"),
    [
        ("nope", {}, "unknown example model 'nope'"),
        ("tiny", {"delay_ms": 5}, "delay_ms applies only to the 'slow' model"),
        ("tiny", {"version": -1}, "version must be a non-negative integer"),
    ],
)
def test_export_rejects_bad_arguments(
    tmp_path: pathlib.Path, name: str, options: dict[str, int], text: str
) -> None:
    with pytest.raises(ValueError, match=text):
        example_models.export(name, str(tmp_path), **options)
    assert not any(tmp_path.iterdir())


def test_cli_exports_and_prints_the_path(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "slow"
    assert example_models.main(["slow", str(base), "--version", "3", "--delay_ms", "10"]) == 0
    assert capsys.readouterr().out.strip() == str(base / "3")
    assert example_models.main(["slow", str(base), "--version", "3"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: version directory already exists: {base / '3'}"


def test_weights_are_deterministic(tmp_path: pathlib.Path) -> None:
    x = np.random.default_rng(1).normal(size=(4, 256)).astype(np.float32)
    results = []
    for copy in ("a", "b"):
        with SavedModelRunner(example_models.export("dnn", str(tmp_path / copy))) as runner:
            results.append(runner.run("serving_default", {"x": x}, ["y"])["y"])
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize(
    ("name", "row_shape", "output", "output_row_shape"),
    [
        ("tiny", (1,), "y", (1,)),
        ("dnn", (256,), "y", (1,)),
        ("cnn", (28, 28, 1), "logits", (10,)),
        ("image", (224, 224, 3), "logits", (10,)),
    ],
)
def test_bench_workloads_run_batches(
    loaded: Callable[[str], SavedModelRunner],
    name: str,
    row_shape: tuple[int, ...],
    output: str,
    output_row_shape: tuple[int, ...],
) -> None:
    x = np.random.default_rng(2).uniform(size=(3, *row_shape)).astype(np.float32)
    y = loaded(name).run("serving_default", {"x": x}, [output])[output]
    assert y.shape == (3, *output_row_shape) and y.dtype == np.float32
    assert np.isfinite(y).all()
    # Rows are independent: row 1 alone gives what it gave inside the batch.
    alone = loaded(name).run("serving_default", {"x": x[1:2]}, [output])[output]
    np.testing.assert_allclose(alone[0], y[1], rtol=1e-5, atol=1e-6)


def test_tiny_is_half_plus_two(loaded: Callable[[str], SavedModelRunner]) -> None:
    x = np.array([[0.0], [2.0], [-4.0]], np.float32)
    np.testing.assert_array_equal(
        loaded("tiny").run("serving_default", {"x": x}, [])["y"], 0.5 * x + 2
    )


def test_half_plus_two_bf16_computes_in_bfloat16(
    loaded: Callable[[str], SavedModelRunner],
) -> None:
    # Fed and fetched as ml_dtypes' bfloat16 (workers/ipc.py's DT_BFLOAT16) through the
    # runner's session callable. 0.1 is 0x3DCD as bfloat16; 0.5x + 2 rounds to 2.046875.
    x = np.array([[1.0], [3.0], [0.1]], ml_dtypes.bfloat16)
    y = loaded("half_plus_two_bf16").run("serving_default", {"x": x}, ())["y"]
    assert y.dtype == np.dtype(ml_dtypes.bfloat16) and y.shape == (3, 1)
    assert y.reshape(-1).view(np.uint16).tolist() == [0x4020, 0x4060, 0x4003]  # 2.5, 3.5


def test_half_plus_three_answers_differently(loaded: Callable[[str], SavedModelRunner]) -> None:
    x = np.array([[0.0], [2.0]], np.float32)
    np.testing.assert_array_equal(
        loaded("half_plus_three").run("serving_default", {"x": x}, [])["y"], 0.5 * x + 3
    )


def test_classifier_labels_and_missing_features(
    loaded: Callable[[str], SavedModelRunner],
) -> None:
    empty = tf.train.Example().SerializeToString()  # every feature defaults to 0.0
    outputs = loaded("classifier").run("classify", {"inputs": np.array([empty], object)}, [])
    assert outputs["classes"].tolist() == [[b"class_0", b"class_1", b"class_2"]]
    zeros = loaded("classifier").run("serving_default", {"x": np.zeros((1, 4), np.float32)}, [])
    np.testing.assert_allclose(outputs["scores"], zeros["scores"], rtol=1e-6)
    regress = loaded("classifier").run("regress", {"inputs": np.array([empty], object)}, [])
    assert regress["outputs"].tolist() == [0.0]  # no bias on the regression head


def test_slow_model_default_delay(loaded: Callable[[str], SavedModelRunner]) -> None:
    assert example_models.DEFAULT_SLOW_DELAY_MS == 300
    runner = loaded("slow")
    x = {"x": np.array([[1.0]], np.float32)}
    runner.run("serving_default", x, ["y"])  # builds the callable
    started = time.perf_counter()
    y = runner.run("serving_default", x, ["y"])["y"]
    assert time.perf_counter() - started >= 0.3
    np.testing.assert_array_equal(y, [[2.5]])
