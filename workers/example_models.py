"""Exports the SavedModels that tfgate's demo, tests and benchmarks serve.

Off the request path: `tfgate serve` exports "half_plus_two" into its model base path on
first run; tests and bench/ export the rest. Every model is written with TF2 APIs
(tf.Module + tf.function signatures), with deterministic weights from a fixed seed, into
`base_dir/<version>/` exactly as TF Serving expects a model base path to look.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable

import numpy as np
import tensorflow as tf

DEFAULT_SLOW_DELAY_MS = 300

# Everything a builder hands to tf.saved_model.save: the module owning the variables and
# the signature map (signature key -> tf.function with an input_signature).
_Export = tuple[tf.Module, dict[str, tf.types.experimental.GenericFunction]]


def _spec(shape: list[int | None], dtype: tf.DType, name: str) -> tf.TensorSpec:
    return tf.TensorSpec(shape, dtype, name=name)


def _weights(rng: np.random.Generator, *shape: int) -> tf.Variable:
    """He-initialised float32 weights: fixed values for a fixed seed, sane activations."""
    # fan-in is every axis but the last, for dense [in, out] and conv [h, w, in, out] alike.
    scale = np.sqrt(2.0 / np.prod(shape[:-1])) if len(shape) > 1 else 0.1
    return tf.Variable(rng.normal(0.0, scale, size=shape).astype(np.float32))


def _parse_float_features(
    serialized: tf.Tensor, names: list[str], default: float | None
) -> tf.Tensor:
    """Serialized tf.Examples -> float32 [batch, len(names)], one scalar float per feature."""
    spec = {name: tf.io.FixedLenFeature([1], tf.float32, default_value=default) for name in names}
    parsed = tf.io.parse_example(serialized, spec)
    return tf.concat([parsed[name] for name in names], axis=1)


def _half_plus_two() -> _Export:
    """y = 0.5x + 2, with TF Serving's Example-based classify and regress signatures."""
    module = tf.Module()
    module.a = tf.Variable(0.5)
    module.b = tf.Variable(2.0)

    @tf.function(input_signature=[_spec([None, 1], tf.float32, "x")])
    def predict(x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": module.a * x + module.b}

    @tf.function(input_signature=[_spec([None], tf.string, "inputs")])
    def classify(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        x = _parse_float_features(inputs, ["x"], default=None)
        return {"scores": module.a * x + module.b}

    @tf.function(input_signature=[_spec([None], tf.string, "inputs")])
    def regress(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        x = _parse_float_features(inputs, ["x"], default=None)
        return {"outputs": module.a * x + module.b}

    signatures = {
        "serving_default": predict,
        "classify_x_to_y": classify,
        "regress_x_to_y": regress,
    }
    return module, signatures


def _half_plus_three() -> _Export:
    """y = 0.5x + 3 (as TF Serving's saved_model_half_plus_three): a second version of a
    model that answers differently from half_plus_two, to tell versions apart by output."""
    module = tf.Module()
    module.a = tf.Variable(0.5)
    module.b = tf.Variable(3.0)

    @tf.function(input_signature=[_spec([None, 1], tf.float32, "x")])
    def predict(x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": module.a * x + module.b}

    return module, {"serving_default": predict}


def _tiny() -> _Export:
    """The smallest real model: y = 0.5x + 2; measures per-request overhead."""
    module = tf.Module()
    module.a = tf.Variable(0.5)
    module.b = tf.Variable(2.0)

    @tf.function(input_signature=[_spec([None, 1], tf.float32, "x")])
    def predict(x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": module.a * x + module.b}

    return module, {"serving_default": predict}


def _multi_io() -> _Export:
    """Two inputs, two outputs: both outputs must come back."""

    @tf.function(
        input_signature=[_spec([None, 2], tf.float32, "a"), _spec([None, 2], tf.float32, "b")]
    )
    def predict(a: tf.Tensor, b: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"sum": a + b, "product": a * b}

    return tf.Module(), {"serving_default": predict}


def _int_ops() -> _Export:
    """int32 and int64 in and out (JSON integer rules, no float coercion)."""

    @tf.function(input_signature=[_spec([None], tf.int32, "i32"), _spec([None], tf.int64, "i64")])
    def predict(i32: tf.Tensor, i64: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"out32": i32 * 2, "out64": i64 + 1}

    return tf.Module(), {"serving_default": predict}


def _strings() -> _Export:
    """DT_STRING in and out; "echo_bytes" exercises TF Serving's `_bytes` -> b64 output rule."""

    @tf.function(input_signature=[_spec([None], tf.string, "s")])
    def predict(s: tf.Tensor) -> dict[str, tf.Tensor]:
        return {
            "length": tf.strings.length(s),
            "upper": tf.strings.upper(s),
            "echo_bytes": tf.identity(s),
        }

    return tf.Module(), {"serving_default": predict}


def _bools() -> _Export:
    @tf.function(input_signature=[_spec([None], tf.bool, "flag")])
    def predict(flag: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"not_flag": tf.logical_not(flag)}

    return tf.Module(), {"serving_default": predict}


def _half_precision() -> _Export:
    """DT_HALF in and out (the V2 protocol's FP16), beside a float32 output."""

    @tf.function(input_signature=[_spec([None, 2], tf.float16, "h")])
    def predict(h: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"doubled": h * tf.constant(2.0, tf.float16), "as_float": tf.cast(h, tf.float32)}

    return tf.Module(), {"serving_default": predict}


def _half_plus_two_bf16() -> _Export:
    """DT_BFLOAT16 in and out (the V2 protocol's BF16): y = 0.5x + 2, computed in bfloat16."""
    module = tf.Module()
    module.a = tf.Variable(0.5, dtype=tf.bfloat16)
    module.b = tf.Variable(2.0, dtype=tf.bfloat16)

    @tf.function(input_signature=[_spec([None, 1], tf.bfloat16, "x")])
    def predict(x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": module.a * x + module.b}

    return module, {"serving_default": predict}


def _classifier() -> _Export:
    """A 4-feature, 3-class linear model with predict, classify and regress signatures."""
    rng = np.random.default_rng(4)
    module = tf.Module()
    module.w = _weights(rng, 4, 3)
    module.b = _weights(rng, 3)
    module.w_regress = _weights(rng, 4, 1)
    labels = tf.constant([[b"class_0", b"class_1", b"class_2"]])
    features = [f"f{i}" for i in range(4)]

    def classify_rows(x: tf.Tensor) -> dict[str, tf.Tensor]:
        scores = tf.nn.softmax(tf.matmul(x, module.w) + module.b)
        return {"classes": tf.tile(labels, [tf.shape(x)[0], 1]), "scores": scores}

    @tf.function(input_signature=[_spec([None, 4], tf.float32, "x")])
    def predict(x: tf.Tensor) -> dict[str, tf.Tensor]:
        return classify_rows(x)

    @tf.function(input_signature=[_spec([None], tf.string, "inputs")])
    def classify(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return classify_rows(_parse_float_features(inputs, features, default=0.0))

    @tf.function(input_signature=[_spec([None], tf.string, "inputs")])
    def regress(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        x = _parse_float_features(inputs, features, default=0.0)
        return {"outputs": tf.squeeze(tf.matmul(x, module.w_regress), axis=1)}

    return module, {"serving_default": predict, "classify": classify, "regress": regress}


def _slow(delay_ms: int) -> _Export:
    """y = 0.5x + 2 after spinning on tf.timestamp() for delay_ms: for deadlines and kills."""
    delay_seconds = tf.constant(delay_ms / 1000.0, tf.float64)

    @tf.function(input_signature=[_spec([None, 1], tf.float32, "x")])
    def predict(x: tf.Tensor) -> dict[str, tf.Tensor]:
        start = tf.timestamp()
        # A busy loop, not a sleep op: TF has no sleep kernel in graphs, and a spin keeps the
        # delay in the session's own thread pool like a real slow model.
        (end,) = tf.while_loop(
            lambda now: now - start < delay_seconds, lambda _: (tf.timestamp(),), (start,)
        )
        with tf.control_dependencies([end]):
            return {"y": tf.identity(0.5 * x + 2.0)}

    return tf.Module(), {"serving_default": predict}


def _dense_stack(module: tf.Module, rng: np.random.Generator, sizes: list[int]) -> None:
    module.kernels = [_weights(rng, n_in, n_out) for n_in, n_out in itertools.pairwise(sizes)]
    module.biases = [tf.Variable(np.zeros(n, np.float32)) for n in sizes[1:]]


def _apply_dense_stack(module: tf.Module, x: tf.Tensor) -> tf.Tensor:
    last = len(module.kernels) - 1
    for i, (kernel, bias) in enumerate(zip(module.kernels, module.biases, strict=True)):
        x = tf.matmul(x, kernel) + bias
        if i < last:
            x = tf.nn.relu(x)
    return x


def _dnn() -> _Export:
    """Bench: x [-1,256] -> Dense 512 relu -> Dense 256 relu -> Dense 1 (compute-bound rows)."""
    module = tf.Module()
    _dense_stack(module, np.random.default_rng(256), [256, 512, 256, 1])

    @tf.function(input_signature=[_spec([None, 256], tf.float32, "x")])
    def predict(x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": _apply_dense_stack(module, x)}

    return module, {"serving_default": predict}


def _cnn() -> _Export:
    """Bench: MNIST-shaped x [-1,28,28,1] -> two conv+pool blocks -> 10 logits."""
    rng = np.random.default_rng(28)
    module = tf.Module()
    module.conv1 = _weights(rng, 3, 3, 1, 8)
    module.conv2 = _weights(rng, 3, 3, 8, 16)
    _dense_stack(module, rng, [7 * 7 * 16, 10])

    @tf.function(input_signature=[_spec([None, 28, 28, 1], tf.float32, "x")])
    def predict(x: tf.Tensor) -> dict[str, tf.Tensor]:
        for kernel in (module.conv1, module.conv2):
            x = tf.nn.relu(tf.nn.conv2d(x, kernel, strides=1, padding="SAME"))
            x = tf.nn.max_pool2d(x, ksize=2, strides=2, padding="VALID")
        flat = tf.reshape(x, [-1, 7 * 7 * 16])
        return {"logits": _apply_dense_stack(module, flat)}

    return module, {"serving_default": predict}


def _image() -> _Export:
    """Bench: x [-1,224,224,3] through a cheap net, so moving the payload dominates."""
    rng = np.random.default_rng(224)
    module = tf.Module()
    module.conv = _weights(rng, 8, 8, 3, 16)
    _dense_stack(module, rng, [16, 10])

    @tf.function(input_signature=[_spec([None, 224, 224, 3], tf.float32, "x")])
    def predict(x: tf.Tensor) -> dict[str, tf.Tensor]:
        features = tf.nn.relu(tf.nn.conv2d(x, module.conv, strides=8, padding="VALID"))
        pooled = tf.reduce_mean(features, axis=[1, 2])
        return {"logits": _apply_dense_stack(module, pooled)}

    return module, {"serving_default": predict}


# name -> builder; "slow" takes its delay, the rest take nothing.
_BUILDERS: dict[str, Callable[[], _Export]] = {
    "half_plus_two": _half_plus_two,
    "half_plus_three": _half_plus_three,
    "multi_io": _multi_io,
    "int_ops": _int_ops,
    "strings": _strings,
    "bools": _bools,
    "half_precision": _half_precision,
    "half_plus_two_bf16": _half_plus_two_bf16,
    "classifier": _classifier,
    "tiny": _tiny,
    "dnn": _dnn,
    "cnn": _cnn,
    "image": _image,
}
MODEL_NAMES: tuple[str, ...] = (*_BUILDERS, "slow")


def export(
    name: str,
    base_dir: str,
    version: int = 1,
    *,
    delay_ms: int | None = None,
    exist_ok: bool = False,
) -> str:
    """Exports model `name` as `base_dir/<version>/` and returns that version directory.

    The SavedModel is written to a hidden sibling directory and renamed into place, so a
    server polling `base_dir` never sees a half-written version. `delay_ms` applies only to
    "slow" (default 300). With `exist_ok`, an existing version directory is returned as is
    (tests share one export per session); otherwise it raises FileExistsError.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown example model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    if delay_ms is not None and name != "slow":
        raise ValueError(f"delay_ms applies only to the 'slow' model, not {name!r}")
    if version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version}")
    target = os.path.join(base_dir, str(version))
    if os.path.exists(target):
        if exist_ok:
            return target
        raise FileExistsError(f"version directory already exists: {target}")
    os.makedirs(base_dir, exist_ok=True)
    if name == "slow":
        module, signatures = _slow(DEFAULT_SLOW_DELAY_MS if delay_ms is None else delay_ms)
    else:
        module, signatures = _BUILDERS[name]()
    staging = tempfile.mkdtemp(prefix=f".{version}.partial-", dir=base_dir)
    try:
        tf.saved_model.save(module, staging, signatures=signatures)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if exist_ok and os.path.exists(target):  # lost a race with another exporter
            return target
        raise
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.example_models",
        description="Export one of tfgate's example SavedModels as BASE_DIR/<version>/.",
    )
    parser.add_argument("name", choices=MODEL_NAMES, help="which model to export")
    parser.add_argument("base_dir", help="the model base path (version dirs go under it)")
    parser.add_argument("--version", type=int, default=1, help="version number (default 1)")
    parser.add_argument(
        "--delay_ms",
        type=int,
        default=None,
        help=f"per-call delay of the 'slow' model (default {DEFAULT_SLOW_DELAY_MS})",
    )
    args = parser.parse_args(argv)
    try:
        path = export(args.name, args.base_dir, args.version, delay_ms=args.delay_ms)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
