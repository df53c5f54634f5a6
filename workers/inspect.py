"""`python -m workers.inspect DIR`: shows a SavedModel's signatures and runs one prediction.

A developer tool beside the data path: it reads the SavedModel proto the way the worker
loads it and prints tags, signatures, inputs and outputs in `saved_model_cli show --all`'s
layout; with --run it feeds one JSON request through workers.runner.SavedModelRunner
in-process, exactly as a worker would run it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from workers.runner import RunnerError, SavedModelRunner, read_saved_model

_DTYPE_NAMES: dict[int, str] = {value: name for name, value in types_pb2.DataType.items()}


class _UsageError(Exception):
    """A bad command line; reported as one line with exit code 1, like every other error."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def main(argv: list[str] | None = None) -> int:
    """Runs the tool; returns the exit code (0 ok, 1 bad input or broken model)."""
    try:
        args = _parse_args(argv)
    except _UsageError as e:
        print(f"error: {e} (see --help)", file=sys.stderr)
        return 1
    except SystemExit as e:  # --help
        return int(e.code or 0)
    # Keep the Python loader's deprecation notices out of the tool's output.
    tf.get_logger().setLevel("ERROR")
    try:
        export_dir = resolve_export_dir(args.dir)
        tags = [tag.strip() for tag in args.tag_set.split(",") if tag.strip()]
        if args.run:
            run_and_print(export_dir, tags, args.signature_def, _read_inputs(args.inputs))
        elif args.signature_def:
            show_signature(export_dir, tags, args.signature_def)
        else:
            show_all(export_dir, tags if args.tag_set_given else None)
    except RunnerError as e:
        return _fail(e.message)
    except (ValueError, OSError) as e:
        return _fail(str(e))
    except Exception as e:  # a model too broken for the checks above: still one line
        return _fail(f"{type(e).__name__}: {e}")
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog="python -m workers.inspect",
        description="Show a SavedModel's signatures (like `saved_model_cli show --all`) "
        "or run one prediction through tfgate's runner.",
    )
    parser.add_argument("dir", nargs="?", help="SavedModel (version) directory or base path")
    parser.add_argument(
        "--dir", dest="dir_flag", metavar="DIR", help="same as DIR (saved_model_cli spelling)"
    )
    parser.add_argument("--tag_set", default=None, help="comma-separated tags (default serve)")
    parser.add_argument("--signature_def", default=None, help="signature key to show or run")
    parser.add_argument("--run", action="store_true", help="run one prediction and print it")
    parser.add_argument(
        "--inputs",
        default="{}",
        help='JSON: {"alias": value, ...}, {"inputs": ...} or {"instances": [...]}; '
        "@FILE reads it from FILE",
    )
    args = parser.parse_args(argv)
    args.dir = args.dir or args.dir_flag
    if not args.dir:
        parser.error("a SavedModel directory is required")
    args.tag_set_given = args.tag_set is not None
    args.tag_set = args.tag_set or "serve"
    if args.run and not args.signature_def:
        args.signature_def = "serving_default"
    return args


def _fail(message: str) -> int:
    # TF messages carry "\n\t [[{{node ...}}]]" context: keep the error on one line.
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return 1


def resolve_export_dir(path: str) -> str:
    """`path` itself if it holds a SavedModel, else its highest numeric version directory.

    Lets the tool take a model base path as TF Serving does (latest version); the choice is
    reported on stderr so stdout keeps saved_model_cli's layout.
    """
    if _has_saved_model(path) or not os.path.isdir(path):
        return path
    versions = [name for name in os.listdir(path) if name.isascii() and name.isdigit()]
    if not versions:
        return path
    latest = max(versions, key=int)
    print(f"# {path} is a model base path: using version {int(latest)}", file=sys.stderr)
    return os.path.join(path, latest)


def _has_saved_model(path: str) -> bool:
    return any(
        os.path.exists(os.path.join(path, n)) for n in ("saved_model.pb", "saved_model.pbtxt")
    )


# ---------------------------------------------------------------------------- show


def show_all(export_dir: str, tags: Sequence[str] | None) -> None:
    """Prints every MetaGraph (or the one tagged `tags`) as `saved_model_cli show --all` does.

    Differences: the ops set is printed sorted (saved_model_cli prints a Python set, in no
    stable order), and the "Concrete Functions" section is left out (it needs the TF2
    object graph loaded eagerly, which has nothing to do with how tfgate serves).
    """
    meta_graphs = _select_meta_graphs(export_dir, tags)
    for meta_graph in sorted(meta_graphs, key=lambda m: list(m.meta_info_def.tags)):
        tag_list = meta_graph.meta_info_def.tags
        print(
            f"\nMetaGraphDef with tag-set: '{', '.join(tag_list)}' "
            "contains the following SignatureDefs:"
        )
        for key in sorted(meta_graph.signature_def):
            print(f"\nsignature_def['{key}']:")
            _print_signature(meta_graph.signature_def[key], indent=1)
        ops = sorted(ops_used_by_graph_def(meta_graph.graph_def))
        ops_text = "{" + ", ".join(repr(op) for op in ops) + "}" if ops else "set()"
        print(f"The MetaGraph with tag set {list(tag_list)} contains the following ops: {ops_text}")


def show_signature(export_dir: str, tags: Sequence[str], signature_key: str) -> None:
    """Prints one signature as `saved_model_cli show --tag_set T --signature_def S` does."""
    (meta_graph,) = _select_meta_graphs(export_dir, tags)
    _print_signature(_find_signature(meta_graph.signature_def, signature_key), indent=0)


def _select_meta_graphs(
    export_dir: str, tags: Sequence[str] | None
) -> list[meta_graph_pb2.MetaGraphDef]:
    meta_graphs = list(read_saved_model(export_dir).meta_graphs)
    if tags is None:
        return meta_graphs
    chosen = [m for m in meta_graphs if set(m.meta_info_def.tags) == set(tags)]
    if not chosen:
        available = "; ".join(repr(",".join(m.meta_info_def.tags)) for m in meta_graphs)
        raise ValueError(
            f"no MetaGraphDef with tag-set {','.join(tags)!r} in {export_dir}; "
            f"available tag-sets: {available or 'none'}"
        )
    return chosen[:1]


def _find_signature(signatures: Any, signature_key: str) -> meta_graph_pb2.SignatureDef:
    if signature_key not in signatures:
        raise ValueError(
            f"signature_def {signature_key!r} not found; available: "
            f"{', '.join(sorted(signatures)) or 'none'}"
        )
    return signatures[signature_key]


def _print_signature(signature: meta_graph_pb2.SignatureDef, indent: int) -> None:
    pad = "  " * indent
    print(f"{pad}The given SavedModel SignatureDef contains the following input(s):")
    for alias, info in sorted(signature.inputs.items()):
        print(f"{pad}  inputs['{alias}'] tensor_info:")
        _print_tensor_info(info, pad + "  ")
    print(f"{pad}The given SavedModel SignatureDef contains the following output(s):")
    for alias, info in sorted(signature.outputs.items()):
        print(f"{pad}  outputs['{alias}'] tensor_info:")
        _print_tensor_info(info, pad + "  ")
    print(f"{pad}Method name is: {signature.method_name}")


def _print_tensor_info(info: meta_graph_pb2.TensorInfo, pad: str) -> None:
    if info.tensor_shape.unknown_rank:
        shape = "unknown_rank"
    else:
        shape = "(" + ", ".join(str(dim.size) for dim in info.tensor_shape.dim) + ")"
    print(f"{pad}    dtype: {_DTYPE_NAMES.get(info.dtype, str(info.dtype))}")
    print(f"{pad}    shape: {shape}")
    print(f"{pad}    name: {info.name}")


def ops_used_by_graph_def(graph_def: Any) -> set[str]:
    """The op types a graph uses, following (Stateful)PartitionedCall into its functions.

    Same traversal as TF's meta_graph.ops_used_by_graph_def, which saved_model_cli prints.
    """
    functions = {f.signature.name: f for f in graph_def.library.function}
    used: set[str] = set()
    pending: list[Any] = []

    def mark(op: str) -> None:
        if op not in used and op in functions:
            pending.append(functions[op])
        used.add(op)

    def visit(node: Any) -> None:
        mark(node.op)
        if node.op in ("PartitionedCall", "StatefulPartitionedCall"):
            mark(node.attr["f"].func.name)

    for node in graph_def.node:
        visit(node)
    while pending:
        for node in pending.pop().node_def:
            visit(node)
    return {op for op in used if op not in functions}


# ----------------------------------------------------------------------------- run


def run_and_print(export_dir: str, tags: Sequence[str], signature_key: str, body: object) -> None:
    """Loads the SavedModel, runs one request through SavedModelRunner, prints the outputs."""
    with SavedModelRunner(export_dir, tags) as runner:
        signature = _find_signature(runner.signature_defs, signature_key)
        inputs = request_to_arrays(body, signature)
        outputs = runner.run(signature_key, inputs, ())
    result = {alias: to_json_value(alias, value) for alias, value in outputs.items()}
    print(json.dumps({"outputs": result}, sort_keys=True))


def _read_inputs(text: str) -> object:
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as f:
            text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--inputs is not valid JSON: {e}") from None


def request_to_arrays(
    body: object, signature: meta_graph_pb2.SignatureDef
) -> dict[str, np.ndarray]:
    """A JSON body -> {alias: array} converted with the signature's dtypes.

    Accepts {"alias": value, ...}, TF Serving's columnar {"inputs": value | {...}} and row
    {"instances": [...]} bodies. Values may use {"b64": "..."} for bytes.
    """
    if not isinstance(body, dict):
        raise ValueError("--inputs must be a JSON object")
    aliases = sorted(signature.inputs)
    if "instances" in body:
        values = _rows_to_columns(body["instances"], aliases)
    elif "inputs" in body:
        values = _columnar(body["inputs"], aliases)
    else:
        values = body
    arrays = {}
    for alias, value in values.items():
        if alias not in signature.inputs:
            raise ValueError(
                f"unknown input {alias!r}; the signature takes: {', '.join(aliases) or 'nothing'}"
            )
        arrays[alias] = to_array(value, signature.inputs[alias].dtype, alias)
    return arrays


def _is_b64(value: object) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _rows_to_columns(rows: object, aliases: list[str]) -> dict[str, Any]:
    if not isinstance(rows, list) or not rows:
        raise ValueError('"instances" must be a non-empty JSON array')
    named = all(isinstance(row, dict) and not _is_b64(row) for row in rows)
    if not named:
        if len(aliases) != 1:
            raise ValueError(f"each instance must be an object with keys {', '.join(aliases)}")
        return {aliases[0]: rows}
    columns: dict[str, list[Any]] = {}
    for row in rows:
        if sorted(row) != aliases:
            raise ValueError(
                f"instance keys {', '.join(sorted(row))} differ from the signature's "
                f"inputs {', '.join(aliases)}"
            )
        for alias, value in row.items():
            columns.setdefault(alias, []).append(value)
    return columns


def _columnar(value: object, aliases: list[str]) -> dict[str, Any]:
    if isinstance(value, dict) and not _is_b64(value):
        return value
    if len(aliases) != 1:
        raise ValueError(f'"inputs" must be an object with keys {", ".join(aliases)}')
    return {aliases[0]: value}


def to_array(value: object, dtype_enum: int, alias: str) -> np.ndarray:
    """One JSON value -> ndarray of the TensorInfo's dtype (object array of bytes for strings).

    JSON strings and b64 objects always make a string tensor, whatever the declared dtype:
    TF1 regress signatures sometimes declare their Example input as DT_FLOAT.
    """
    if dtype_enum == types_pb2.DT_STRING or _has_text(value):
        array = np.array(_map_leaves(value, _to_bytes), dtype=object)
        if not all(isinstance(v, bytes) for v in array.flat):
            raise ValueError(f"input {alias!r}: ragged or non-string values for a string tensor")
        return array
    try:
        target = tf.dtypes.as_dtype(dtype_enum).base_dtype
    except TypeError:
        raise ValueError(f"input {alias!r} has no dense dtype ({dtype_enum})") from None
    try:
        array = np.asarray(value)
    except ValueError:  # numpy's "inhomogeneous shape" for ragged nested lists
        raise ValueError(
            f"input {alias!r}: ragged nested lists (every row needs one shape)"
        ) from None
    kind = array.dtype.kind
    if kind not in "biuf":
        raise ValueError(f"input {alias!r}: ragged or non-numeric values")
    if (target.is_integer and kind not in "iu") or (target.is_bool and kind != "b"):
        raise ValueError(f"input {alias!r} expects {target.name} values, got {array.dtype}")
    if (target.is_floating or target.is_complex) and kind == "b":
        raise ValueError(f"input {alias!r} expects {target.name} values, got booleans")
    if target == tf.bfloat16:
        # As TF casts a double to bfloat16: to float first (a direct rounding differs at ties).
        return array.astype(np.float32).astype(target.as_numpy_dtype)
    return array.astype(target.as_numpy_dtype)


def _has_text(value: object) -> bool:
    if isinstance(value, str) or _is_b64(value):
        return True
    return isinstance(value, list) and any(_has_text(v) for v in value)


def _to_bytes(value: object) -> object:
    if isinstance(value, str):
        return value.encode("utf-8")
    if _is_b64(value):
        return base64.b64decode(value["b64"])  # type: ignore[index]
    return value


def _map_leaves(value: object, fn: Callable[[object], object]) -> object:
    if isinstance(value, list):
        return [_map_leaves(v, fn) for v in value]
    return fn(value)


def to_json_value(alias: str, array: np.ndarray) -> object:
    """An output array as JSON: TF Serving's `_bytes` suffix rule for base64 strings,
    float32 values printed at float32 precision (3.5, not 3.5000000001)."""
    if array.dtype == object:
        return _map_leaves(array.tolist(), lambda v: _bytes_to_json(alias, v))  # type: ignore[arg-type]
    if array.dtype in (np.float16, np.float32):
        return _map_leaves(array.tolist(), lambda v: float(str(array.dtype.type(v))))
    if array.dtype.kind == "c":
        return _map_leaves(array.tolist(), lambda v: [v.real, v.imag])  # type: ignore[attr-defined]
    return array.tolist()


def _bytes_to_json(alias: str, value: bytes) -> object:
    if not alias.endswith("_bytes"):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass  # not text: fall through to base64 rather than fail the whole run
    return {"b64": base64.b64encode(value).decode("ascii")}


if __name__ == "__main__":
    sys.exit(main())
